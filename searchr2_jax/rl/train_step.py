"""The policy-optimization step: `train_step(state, batch) -> (state, metrics)`, pure and jitted.

Read top to bottom:
  1. the batch: trajectory rows (prompt + response) with the loss mask (1 only on model-generated tokens), sampling
     log-probs and per-token advantages; plus the Meta-Refiner's meta-actions (the chosen integer after the refiner
     prompt) carrying the advantage of the trajectory they produced (joint optimization, paper §2.5). A follow-up
     prompt's meta-actions ride in their trajectory's row as branches (`decoder.Packing`), so one forward scores
     both; table12 prompts come as rows of their own (`MetaRows`);
  2. global denominators: the loss is a mean over the *whole* batch under `loss_agg` (trajectories and meta-actions
     together, the latter weighted by `meta_weight`), so splitting it into micro-batches never changes it;
  3. micro-batches run as a `lax.scan` inside the jit, each adding the gradient of its share of the global loss;
  4. PPO-clip + KL to the frozen reference (+ optional entropy, + the critic's clipped value loss for PPO);
  5. a non-finite loss or gradient skips the update (counted in `train/skipped`), never applied.
The supervised warm-start step (`make_sft_step`) shares steps 2, 3 and 5 with a cross-entropy loss.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from searchr2_jax.models import decoder
from searchr2_jax.models.config import DecoderConfig
from searchr2_jax.rl import losses
from searchr2_jax.rl.logprobs import chunked_token_logprobs
from searchr2_jax.rl.state import TrainState


class MetaRows(NamedTuple):
    """Meta-actions as sequences of their own (table12 refiner prompts): [M, Q] arrays, fields as in StepBatch."""

    tokens: jax.Array  # [M, Q] int32
    valid: jax.Array  # [M, Q] bool
    mask: jax.Array  # [M, Q] f32: 1 on the chosen integer's tokens (0 everywhere when meta-actions are off)
    old_logprobs: jax.Array  # [M, Q] f32
    advantages: jax.Array  # [M, Q] f32


class StepBatch(NamedTuple):
    """Device arrays with static shapes. Position i holds token i; per-token fields describe token i."""

    tokens: jax.Array  # [N, T] int32
    valid: jax.Array  # [N, T] bool: real tokens (prompt, response, packed meta-actions), False on padding
    packing: decoder.Packing  # positions, segment ids (0 the trajectory, k its k-th meta-action), shared prefixes
    loss_mask: jax.Array  # [N, T] f32: 1 on model-generated tokens only
    meta_mask: jax.Array  # [N, T] f32: 1 on packed meta-actions' integers (0 everywhere when they are off)
    old_logprobs: jax.Array  # [N, T] f32: log-probs under the sampling policy (Actor and meta-action tokens)
    advantages: jax.Array  # [N, T] f32 (Actor and meta-action tokens)
    returns: jax.Array  # [N, T] f32 (PPO critic targets; zeros for GRPO)
    old_values: jax.Array  # [N, T] f32 (PPO; zeros for GRPO)
    meta_rows: MetaRows | None = None  # unpacked meta-actions (table12 prompts)


def sequence_logprobs(cfg: DecoderConfig, params, tokens, valid, temperature=1.0, entropy: bool = False,
                      mesh=None, packing: decoder.Packing | None = None):
    """(log p(token i | tokens < i) [B, T] fp32 with 0 at i = 0, final hidden states), and with `entropy` the
    policy's entropy at each of those positions [B, T] as a third element. `temperature`: a number, or [B, T] per
    token. The LM head runs `cfg.logits_chunk` positions at a time, rematerialized in the backward pass: no
    [B, T, V] logits are held. `mesh`: keep the rows split over its data x fsdp axes (see `decoder.forward_hidden`);
    `packing`: rows holding several sequences (`decoder.Packing`)."""
    hidden, _ = decoder.forward_hidden(cfg, params, tokens, mask=valid, mesh=mesh, packing=packing)
    if not isinstance(temperature, (int, float)):
        temperature = temperature[:, 1:]
    out = chunked_token_logprobs(hidden[:, :-1], lambda h: decoder.lm_logits(cfg, params, h), tokens[:, 1:],
                                 cfg.logits_chunk, temperature, return_entropy=entropy)
    pad = lambda x: jnp.pad(x, ((0, 0), (1, 0)))  # noqa: E731
    return (pad(out[0]), hidden, pad(out[1])) if entropy else (pad(out), hidden)


def token_values(cfg: DecoderConfig, params, hidden):
    """Critic values [B, T] aligned with the log-probs: position i holds V(state before token i), read from the
    hidden state at i - 1 (the one that predicts token i); 0 at i = 0."""
    return jnp.pad(decoder.values(cfg, params, hidden[:, :-1]), ((0, 0), (1, 0)))


def jit_values(cfg: DecoderConfig):
    """The critic's values of a batch, `token_values` after a forward pass: jitted (params, tokens, valid) -> [B, T]
    (PPO's GAE reads them under the sampling policy's parameters)."""
    return jax.jit(lambda params, tokens, valid: token_values(
        cfg, params, decoder.forward_hidden(cfg, params, tokens, mask=valid)[0]))


def _split(x, n):
    """[N, ...] -> [n, N / n, ...], micro-batch j holding rows j, j + n, j + 2n, ... Strided, not contiguous: with
    the rows split over the mesh's batch axes, every device's own rows then fall evenly into every micro-batch, so
    the split moves no data; contiguous micro-batches each lie on a few devices, and XLA gathers each whole onto
    every device (a Qwen2.5-7B step on 64 devices: 1.6 TB a device against 308 GB)."""
    return jnp.swapaxes(x.reshape((x.shape[0] // n, n) + x.shape[1:]), 0, 1)


def _accumulate(loss_fn, params, micro_batches, num_micro: int):
    """Sums value, gradient and metric sums of `loss_fn(params, mb)` over micro-batches with a `lax.scan`."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (l0, m0), g0 = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro_batches))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), ((l0, m0), g0))

    def body(acc, mb):
        out = grad_fn(params, mb)
        return jax.tree.map(jnp.add, acc, out), None

    ((loss, metrics), grads), _ = jax.lax.scan(body, zeros, micro_batches, length=num_micro)
    return loss, metrics, grads


def _apply(state: TrainState, optimizer, loss, grads, metrics):
    """Applies the update unless the loss or gradient is non-finite (then the state keeps its params)."""
    finite = jnp.isfinite(loss) & jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    grads = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    metrics = dict(metrics, **{"train/loss": loss, "train/grad_norm": optax.global_norm(grads),
                               "train/skipped": (~finite).astype(jnp.float32)})
    return state._replace(step=state.step + 1, params=keep(params, state.params),
                          opt_state=keep(opt_state, state.opt_state)), metrics


def make_train_step(cfg: DecoderConfig, loss_cfg: ml_collections.ConfigDict, optimizer, num_micro: int = 1,
                    use_critic: bool = False, temperature: float = 1.0, recompute_old: bool = False, mesh=None):
    """Builds the jittable `train_step(state, batch) -> (state, metrics)` for GRPO (default) or PPO.

    `mesh`: the mesh the step is jitted on; its passes then keep each micro-batch's rows split over data x fsdp
    (`decoder.forward_hidden`), which a sharded run needs to fit (benchmarks/memory.py).

    `recompute_old`: pi_old is this program's own log-probs of the batch (stop-gradient), not the sampler's. The
    step makes one update from one set of parameters (every micro-batch sees them), so that is exactly verl's
    recomputed pi_old at no extra forward, and the ratio starts at 1 whatever the sampler's precision. Either way
    `train/ratio_deviation_at_start` logs mean |pi / pi_sampler - 1| over the loss tokens before the update."""
    losses.check_loss_config(loss_cfg)
    use_kl = loss_cfg.kl_coef > 0

    def policy_terms(params, ref_params, tokens, valid, packing, temperature, terms):
        """Each (mask, old log-probs, advantages, segments) of `terms` scored from one forward of the rows:
        [(loss sum, metrics)], and the hidden states."""
        # The entropy is logged always (its collapse is the first sign of a failing run) and trained on when
        # entropy_coef > 0; it comes out of the same LM-head blocks as the log-probs.
        logp, hidden, ent = sequence_logprobs(cfg, params, tokens, valid, temperature, entropy=True, mesh=mesh,
                                              packing=packing)
        ref_lp = None
        if use_kl:
            ref_lp = jax.lax.stop_gradient(sequence_logprobs(cfg, ref_params, tokens, valid, temperature,
                                                             mesh=mesh, packing=packing)[0])
        out = []
        for mask, old_lp, adv, segments in terms:
            live = mask > 0
            gap = jnp.abs(jnp.exp(jnp.clip(jnp.where(live, logp - old_lp, 0.0), -20.0, 20.0)) - 1.0)
            if recompute_old:
                old_lp = jax.lax.stop_gradient(logp)
            loss_sum, _, metrics = losses.policy_loss(logp, old_lp, ref_lp, adv, mask, loss_cfg, entropy=ent,
                                                      segments=segments)
            metrics["ratio_deviation_at_start"] = (jnp.sum(jnp.where(live, gap, 0.0))
                                                   / jnp.maximum(jnp.sum(mask), 1e-8))
            out.append((loss_sum, metrics))
        return out, hidden

    def loss_fn(params, mb: StepBatch, ref_params, denom, tok_denom, meta_denom):
        # The refiner scores its candidates at temperature 1 (its decision is an argmax over those log-probs), so
        # a meta-action's policy is the untempered distribution, whatever the Actor's sampling temperature.
        temps = temperature if temperature == 1.0 else jnp.where(mb.meta_mask > 0, 1.0, temperature)
        seg = mb.packing.segment_ids
        ((psum, pm), (msum, mm)), hidden = policy_terms(
            params, ref_params, mb.tokens, mb.valid, mb.packing, temps,
            [(mask, mb.old_logprobs, mb.advantages, seg) for mask in (mb.loss_mask, mb.meta_mask)])
        # Each metric of `policy_loss` is a mean over its own tokens: weight it back to a sum and divide by the
        # global count of the same tokens, so the summed micro-batch metrics are means over the whole batch.
        tok, mtok = jnp.sum(mb.loss_mask), jnp.sum(mb.meta_mask)
        metrics = {f"train/{k}": v * tok / tok_denom for k, v in pm.items()}
        metrics.update({f"train/meta_{k}": v * mtok / meta_denom for k, v in mm.items()})
        if mb.meta_rows is not None:
            r = mb.meta_rows
            ((rsum, rm),), _ = policy_terms(params, ref_params, r.tokens, r.valid, None, 1.0,
                                            [(r.mask, r.old_logprobs, r.advantages, None)])
            msum = msum + rsum
            rtok = jnp.sum(r.mask)
            for k, v in rm.items():
                metrics[f"train/meta_{k}"] = metrics[f"train/meta_{k}"] + v * rtok / meta_denom
        # Sums (of per-sequence means under seq-mean-token-mean) over the whole batch's denominator, not this part's.
        loss = (psum + loss_cfg.meta_weight * msum) / denom
        if use_critic:
            vals = token_values(cfg, params, hidden)
            vsum, _, vm = losses.value_loss(vals, mb.old_values, mb.returns, mb.loss_mask, loss_cfg)
            loss = loss + loss_cfg.vf_coef * vsum / tok_denom
            metrics.update({f"train/{k}": v * tok / tok_denom for k, v in vm.items()})
        return loss, metrics

    def train_step(state: TrainState, batch: StepBatch):
        agg, seg, rows = loss_cfg.loss_agg, batch.packing.segment_ids, batch.meta_rows
        meta_den, meta_tokens = losses.denominator(batch.meta_mask, agg, seg), jnp.sum(batch.meta_mask)
        if rows is not None:
            meta_den, meta_tokens = meta_den + losses.denominator(rows.mask, agg), meta_tokens + jnp.sum(rows.mask)
        denom = losses.denominator(batch.loss_mask, agg, seg) + loss_cfg.meta_weight * meta_den
        denom = jnp.where(denom > 0, denom, 1.0)  # not a floor of 1: meta_weight may make it fractional
        tok_denom = jnp.maximum(jnp.sum(batch.loss_mask), 1.0)
        meta_denom = jnp.maximum(meta_tokens, 1.0)
        micro = jax.tree.map(lambda x: _split(x, num_micro), batch)
        loss, metrics, grads = _accumulate(
            lambda p, mb: loss_fn(p, mb, state.ref_params, denom, tok_denom, meta_denom), state.params, micro,
            num_micro)
        metrics["train/tokens"] = jnp.sum(batch.loss_mask)
        metrics["train/meta_tokens"] = meta_tokens
        return _apply(state, optimizer, loss, grads, metrics)

    return train_step


def make_sft_step(cfg: DecoderConfig, optimizer, num_micro: int = 1, mesh=None):
    """Supervised warm start: token-mean cross-entropy on `loss_mask` tokens (demonstrations, refiner labels).
    `mesh`: as in `make_train_step`."""

    def loss_fn(params, mb, denom):
        tokens, valid, mask = mb
        logp, _ = sequence_logprobs(cfg, params, tokens, valid, mesh=mesh)
        nll = -jnp.sum(logp * mask)
        return nll / denom, {"sft/nll_sum": nll}

    def sft_step(state: TrainState, tokens, valid, loss_mask):
        denom = jnp.maximum(jnp.sum(loss_mask), 1.0)
        micro = jax.tree.map(lambda x: _split(x, num_micro), (tokens, valid, loss_mask))
        loss, metrics, grads = _accumulate(lambda p, mb: loss_fn(p, mb, denom), state.params, micro, num_micro)
        metrics = {"sft/nll": metrics["sft/nll_sum"] / denom, "sft/tokens": denom}
        return _apply(state, optimizer, loss, grads, metrics)

    return sft_step
