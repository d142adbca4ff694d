"""Trajectories -> the RL step's batch: advantages (GRPO by group id, rejection sampling, or PPO's GAE), broadcast onto
the generated and meta-action tokens, in rows packed several trajectories to a row (rl/packing.py).

A `retrieval_error` row is an infrastructure fault, not a wrong answer: it and its meta-actions get zero loss weight
and stay out of the group (or PPO whitening) statistics; `train/retrieval_error_rows` counts them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax.numpy as jnp
import ml_collections
import numpy as np

from searchr2_jax.models import decoder
from searchr2_jax.rl import advantages as adv_lib
from searchr2_jax.rl import packing as packing_lib
from searchr2_jax.rl.train_step import MetaRows, StepBatch
from searchr2_jax.rollout import types as T


def step_batch(trajs: Sequence[T.Trajectory], reward: np.ndarray, config: ml_collections.ConfigDict, shards: int,
               values: Callable | None = None,
               agree: Callable[[list[int]], list[int]] | None = None, jobs: int | None = None
               ) -> tuple[StepBatch, dict]:
    """(StepBatch, metrics) of one step's trajectories and their rewards [N].

    `shards`: the mesh's data x fsdp devices, which with `train.micro_batches` every row count must divide.
    `values(tokens, valid)`: the critic's values under the sampling policy (PPO only). `agree(sizes)`: the
    element-wise largest sizes over processes (multi-host: every host pads to the same shapes); None on one host.
    `jobs`: how many of `trajs` the rollout returned (default all); drafts appended after them for
    `refiner.train_drafts` carry no meta-action, so the meta rows are sized by the jobs, the same on every host."""
    c = config
    ppo = c.rl.algo == "ppo"
    keep = np.asarray([t.status != T.RETRIEVAL_ERROR for t in trajs], bool)
    metrics = {"train/retrieval_error_rows": float(np.sum(~keep))}
    if c.rl.rejection_sampling or not ppo:
        gid = np.unique(np.asarray([t.job.group_id for t in trajs]), return_inverse=True)[1].reshape(-1)
        seq_adv = np.asarray(adv_lib.sequence_advantages(
            jnp.asarray(reward), jnp.asarray(gid), jnp.asarray(keep), normalize_std=c.rl.normalize_std,
            rejection_sampling=c.rl.rejection_sampling))
    num_meta = T.meta_rows(jobs or len(trajs), c.refiner.max_revisions, c.train.micro_batches, shards)
    # A follow-up prompt continues the trajectory: its meta-actions ride in the trajectory's row.
    pack = c.refiner.prompt == "followup"
    # Rows take the finer buckets: a trajectory with a revised draft's branch just past a power of two would
    # otherwise double every row, and the attention of a dense row grows with the square of its length.
    b = T.to_batch(trajs, num_meta=num_meta, pack_meta=pack, fine=True)
    if agree is not None:
        lens = [b.tokens.shape[1], b.meta_rows.tokens.shape[1] if b.meta_rows is not None else 1]
        most = agree(lens)
        if most != lens:
            b = T.to_batch(trajs, seq_len=most[0], meta_len=most[1], num_meta=num_meta, pack_meta=pack)
    loss_mask = np.asarray(adv_lib.drop_rows(keep, b.loss_mask))
    idx = np.arange(b.tokens.shape[1])[None, :]
    valid = idx < b.lengths[:, None]
    zeros = np.zeros(b.tokens.shape, np.float32)
    old_values, returns = zeros, zeros
    if ppo and not c.rl.rejection_sampling:
        # PPO: the critic's values under the sampling policy's parameters, the reward on each trajectory's last
        # generated token, GAE across the retrieved spans, advantages whitened over the batch's loss tokens.
        old_values = np.asarray(values(b.tokens, idx < b.traj_lengths[:, None]))
        mask = jnp.asarray(loss_mask)
        adv, ret = adv_lib.gae_advantages(adv_lib.terminal_rewards(jnp.asarray(reward), mask),
                                          jnp.asarray(old_values), mask, c.rl.gamma, c.rl.lam)
        adv_tok, returns = np.asarray(adv_lib.masked_whiten(adv, mask)), np.asarray(ret)
        # A meta-action shares its trajectory's advantage: the one at the trajectory's first generated token
        # (with gamma = lam = 1, the whole return against the critic's estimate from the prompt).
        first = np.argmax(loss_mask > 0, axis=1)
        seq_adv = adv_tok[np.arange(len(trajs)), first]
        old_values = np.where(loss_mask > 0, old_values, 0.0).astype(np.float32)
    else:
        adv_tok = seq_adv[:, None] * (loss_mask > 0)
    train_meta = float(c.refiner.enabled and c.rl.train_meta_actions)
    meta_mask = np.asarray(adv_lib.drop_rows(keep, b.meta_mask)) * train_meta
    adv_tok = np.where(meta_mask > 0, seq_adv[:, None], adv_tok).astype(np.float32)
    rows = None
    if b.meta_rows is not None and train_meta:
        r = b.meta_rows
        rmask = np.asarray(adv_lib.drop_rows(keep, r.mask, r.index)) * train_meta
        radv = np.where(r.index >= 0, seq_adv[np.maximum(r.index, 0)], 0.0)[:, None] * rmask
        rows = MetaRows(r.tokens, np.arange(r.tokens.shape[1])[None, :] < r.lengths[:, None], rmask,
                        r.logprobs, radv.astype(np.float32))
    sb = StepBatch(tokens=b.tokens, valid=valid,
                   packing=decoder.Packing(b.positions, b.segment_ids, b.shared_start, b.shared_end),
                   loss_mask=loss_mask, meta_mask=meta_mask, old_logprobs=b.logprobs, advantages=adv_tok,
                   returns=returns.astype(np.float32), old_values=old_values, meta_rows=rows)
    if not c.train.pack_rows:
        return sb, metrics
    where = packing_lib.plan_rows(sb, c.train.micro_batches * shards)
    num_rows = where.rows if agree is None else agree([where.rows])[0]
    return packing_lib.pack_rows(sb, where, num_rows), metrics
