"""The trainer: data -> rollout (Actor + Meta-Refiner) -> hybrid reward -> advantages -> train step, with
checkpoints, metrics and periodic greedy Actor-only evaluation. The one orchestrator allowed to be long.

Phases share one step counter: steps [0, sft.steps) are the supervised warm start on the synthetic world's
demonstrations (and refiner labels), or on real QA data one-search demonstrations; steps [sft.steps, sft.steps +
train.steps) are RL. A run killed at any point resumes from its latest checkpoint (state, PRNG key and data iterator)
and continues the same streams (benchmarks/checkpoint_kill.py kills real runs to check it). A checkpoint that cannot be
read stops the run naming the earlier steps; `run(restore_step=N)` resumes from one of them.
"""

from __future__ import annotations

import json
import os
import random
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from searchr2_jax import checkpoint as ckpt_lib
from searchr2_jax.config import ConfigError, data_files, validate_config
from searchr2_jax import metrics as metrics_lib
from searchr2_jax.data import demos as demos_lib
from searchr2_jax.data import qa as qa_lib
from searchr2_jax.data import synthetic
from searchr2_jax.data.pipeline import QAPipeline
from searchr2_jax.eval import evaluate as eval_lib
from searchr2_jax.models import decoder, hf_io, sharding
from searchr2_jax.models.config import DecoderConfig
from searchr2_jax.retrieval.retriever import build_retriever
from searchr2_jax.rl import advantages as adv_lib
from searchr2_jax.rl import judges, rewards
from searchr2_jax.rl import packing as packing_lib
from searchr2_jax.rl import sentinel as sentinel_lib
from searchr2_jax.rl import state as state_lib
from searchr2_jax.rl.train_step import MetaRows, StepBatch, make_sft_step, make_train_step, token_values
from searchr2_jax.rollout import dump as dump_lib
from searchr2_jax.rollout import types as T
from searchr2_jax.rollout.refiner import MetaRefiner
from searchr2_jax.rollout.rollout import RolloutEngine
from searchr2_jax.text import tokenizer as tok_lib
from searchr2_jax.text.tokenizer import tokenize_segments

__all__ = ["ConfigError", "Trainer", "validate_config"]


# Tokens of a copy drill row: a question and one turn (data/demos.Demo.copy_drill_segments) fit with room to spare.
COPY_DRILL_LEN = 96


def _across_processes(metrics: dict) -> dict:
    """Host-local scalar metrics -> their mean over processes (counts of trajectories and tokens: their sum)."""
    if jax.process_count() == 1:
        return metrics
    keys = sorted(metrics)
    values = np.asarray(multihost_utils.process_allgather(np.asarray([float(metrics[k]) for k in keys], np.float32)))
    summed = ("rollout/trajectories", "rollout/tokens_generated")
    return {k: float(values[:, i].sum() if k in summed else values[:, i].mean()) for i, k in enumerate(keys)}


def _gather_json(obj) -> list:
    """A JSON-able object from every process, in process order (a collective: every process calls it)."""
    raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    n = int(np.asarray(multihost_utils.process_allgather(np.asarray([raw.size], np.int32))).max())
    buf = np.zeros(n, np.uint8)
    buf[:raw.size] = raw
    return [json.loads(bytes(row).rstrip(b"\0")) for row in np.asarray(multihost_utils.process_allgather(buf))]


def recompute_old_logprobs(config: ml_collections.ConfigDict, model_cfg) -> bool:
    """`rl.recompute_old_logprobs`: auto is on unless the model runs in float32."""
    recompute = config.rl.recompute_old_logprobs
    return recompute == "on" or (recompute == "auto" and model_cfg.dtype != "float32")


def jit_sft_step(config: ml_collections.ConfigDict, model_cfg, mesh, state_shardings, optimizer):
    """The jitted warm-start step: state placed by the partition rules, batches split over data x fsdp."""
    rows = sharding.batch_sharding(mesh, 2)
    return jax.jit(make_sft_step(model_cfg, optimizer, config.train.micro_batches, mesh=mesh),
                   in_shardings=(state_shardings, rows, rows, rows), out_shardings=(state_shardings, None),
                   donate_argnums=0)


def jit_train_step(config: ml_collections.ConfigDict, model_cfg, mesh, state_shardings, optimizer):
    """The jitted RL step, as the trainer runs it and the memory suite (benchmarks/memory.py) compiles it."""
    rows = sharding.batch_sharding(mesh, 2)
    step = make_train_step(model_cfg, config.rl.loss, optimizer, config.train.micro_batches,
                           use_critic=config.rl.algo == "ppo", temperature=config.rollout.temperature,
                           recompute_old=recompute_old_logprobs(config, model_cfg), mesh=mesh)
    return jax.jit(step, in_shardings=(state_shardings, rows), out_shardings=(state_shardings, None),
                   donate_argnums=0)


class Trainer:
    def __init__(self, config: ml_collections.ConfigDict, workdir: str, devices=None):
        """`devices`: the devices of the mesh (default: all); tests pass a subset of the fake CPU devices."""
        devices = list(jax.devices() if devices is None else devices)
        validate_config(config, num_devices=len(devices))
        self.config, self.workdir = config, workdir
        os.makedirs(workdir, exist_ok=True)
        if jax.process_index() == 0:  # what produced this workdir's metrics (launch/plot.py labels runs by it)
            with open(os.path.join(workdir, "config.json"), "w") as f:
                f.write(config.to_json_best_effort(indent=1, sort_keys=True))
        rng = jax.random.key(config.seed)
        self.data_rng, init_rng, state_rng = jax.random.split(rng, 3)
        # Rollout keys are fold_in(data_rng, step) for steps < 2**32 - 1; eval keys branch off the last one.
        self.eval_rng = jax.random.fold_in(self.data_rng, 2**32 - 1)

        # --- data, retrieval, tokenizer, model
        d = config.data
        if data_files(d.train_files):  # real QA files over a real corpus (the paper's setting)
            self.world = None
            self.train_examples = qa_lib.read_qadata_files(data_files(d.train_files))
            # The first data.eval_examples of each eval file, so that every dataset gets a row in the table.
            self.eval_examples = [ex for f in data_files(d.eval_files) for ex in qa_lib.read_qa_file(f)[: d.eval_examples]]
            self.retriever = build_retriever(config.retrieval)
            self.train_retriever = self.retriever
        else:
            self.world = synthetic.generate_world(synthetic.WorldConfig(**d.world))
            self.train_examples = self.world.splits[d.train_split]
            self.eval_examples = self.world.splits[d.eval_split][: d.eval_examples]
            # Evaluation searches the whole world; training (rollouts and demonstrations) searches its own region
            # only, so no held-out passage ever reaches a training context.
            self.retriever = build_retriever(config.retrieval, corpus=self.world.corpus())
            self.train_retriever = build_retriever(config.retrieval, corpus=self.world.corpus(d.train_split))
        self.tokenizer = self._tokenizer()
        self.mesh = sharding.make_mesh(config.mesh, devices)
        # Multi-host: every host rolls out its own prompts on its own devices (the engine reads its arrays back on
        # the host), with the global parameters viewed on this sub-mesh; train steps run on the global mesh.
        try:
            self.local_mesh = sharding.process_local_mesh(self.mesh)
        except sharding.ShardingError as e:
            raise ConfigError(f"multi-host rollouts: {e}") from e
        self.num_processes, self.process_index = jax.process_count(), jax.process_index()
        self.model_cfg, params = self._model(init_rng)

        # --- rollout engine (Actor + Meta-Refiner share the model)
        refiner = MetaRefiner(self.model_cfg, self.tokenizer, config.refiner, config.rollout.max_turns)
        self.engine = RolloutEngine(self.model_cfg, self.tokenizer, self.train_retriever, config.rollout, refiner,
                                    mesh=self.local_mesh)
        self.eval_engine = RolloutEngine(self.model_cfg, self.tokenizer, self.retriever, config.rollout, refiner,
                                         mesh=self.local_mesh)
        self.judge = self._judge()

        # --- optimization
        self.sft_steps, self.rl_steps = config.sft.steps, config.train.steps
        self.sft_opt = state_lib.make_optimizer(config.sft.optim, max(self.sft_steps, 1))
        self.rl_opt = state_lib.make_optimizer(config.optim, max(self.rl_steps, 1))
        self.lr_scale, self.rollbacks = 1.0, 0  # RL learning-rate factor left by collapse rollbacks (checkpointed)
        self.sentinel = sentinel_lib.Sentinel(config.train.sentinel)
        use_ref = config.rl.loss.kl_coef > 0
        state = state_lib.init_state(params, self.rl_opt, state_rng, with_reference=use_ref)
        # Every parameter and optimizer leaf is placed by the partition rules; batches split over data x fsdp.
        self.state_shardings = sharding.tree_shardings(state, self.mesh)
        self.state = sharding.put_global(state, self.state_shardings)
        self.sft_step = jit_sft_step(config, self.model_cfg, self.mesh, self.state_shardings, self.sft_opt)
        self.recompute_old = recompute_old_logprobs(config, self.model_cfg)
        self.train_step = jit_train_step(config, self.model_cfg, self.mesh, self.state_shardings, self.rl_opt)
        # Each host reads its own shard (QAPipeline splits by process index) and its share of the global batch.
        if config.rl.algo == "ppo":  # the critic's values for GAE, on the rollout engine's (per-host) parameters
            self._values = jax.jit(lambda params, tokens, valid: token_values(
                self.model_cfg, params, decoder.forward_hidden(self.model_cfg, params, tokens, mask=valid)[0]))
        self.pipeline = QAPipeline(self.train_examples, batch_size=config.train.prompts_per_step // self.num_processes,
                                   group_size=config.rl.group_size, seed=config.seed)
        self.iterator = iter(self.pipeline)
        self.ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints)
        self.writer = metrics_lib.MetricWriter(workdir)
        self._demo_writer = None
        self._regen_engine = None

    # ------------------------------------------------------------------------------------------ set-up

    def _tokenizer(self):
        path = self.config.model.tokenizer
        if path != "world":
            return tok_lib.load_tokenizer(path)
        from searchr2_jax.data.world_tokenizer import train_world_tokenizer

        out = os.path.join(self.workdir, "tokenizer")
        if os.path.exists(os.path.join(out, "tokenizer.json")):
            return tok_lib.load_tokenizer(out)
        if jax.process_count() == 1:
            return train_world_tokenizer(self.world, vocab_size=self.config.model.vocab_size, out_dir=out)
        # Multi-host (a shared workdir): process 0 trains and writes it, every process then loads the same files.
        if jax.process_index() == 0:
            train_world_tokenizer(self.world, vocab_size=self.config.model.vocab_size, out_dir=out)
        multihost_utils.sync_global_devices("searchr2_jax world tokenizer")
        return tok_lib.load_tokenizer(out)

    def _model(self, rng):
        m = self.config.model
        if m.hf_path:
            cfg = DecoderConfig.from_pretrained(m.hf_path, dtype=m.dtype, remat=m.remat, logits_chunk=m.logits_chunk,
                                                value_head=self.config.rl.algo == "ppo")
            return hf_io.load_params(m.hf_path, cfg, shardings=sharding.param_shardings(cfg, self.mesh))
        # A from-scratch model sized by config; the embedding matches the tokenizer exactly (never resized later).
        cfg = DecoderConfig(vocab_size=len(self.tokenizer), dtype=m.dtype, remat=m.remat, logits_chunk=m.logits_chunk,
                            value_head=self.config.rl.algo == "ppo", tie_word_embeddings=True, **dict(m.init))
        return cfg, decoder.init_params(cfg, rng)

    def _judge(self) -> judges.Judge:
        r = self.config.reward
        if r.judge == "llm" and not r.outcome_only and "generate" not in r.judge_kwargs:
            return judges.LLMJudge.from_pretrained(r.judge_model, r.judge_max_new_tokens, mesh=self.local_mesh)
        return judges.make_judge(r.judge, **dict(r.judge_kwargs))

    def local_params(self):
        """The current parameters on this process's sub-mesh (the rollout engine's); a no-op with one process."""
        return sharding.to_local_mesh(self.state.params, self.local_mesh)

    # ------------------------------------------------------------------------------------------ phases

    def sft_batch(self, step: int):
        """The SFT batch of `step`: demonstrations (and refiner examples), tokenized with loss masks.

        A pure function of (config.seed, step), so a run resumed mid-SFT continues the same stream of batches.
        Multi-host: this host's sft.batch_size / process_count rows, drawn with the process index in the seed."""
        c = self.config.sft
        if self.world is None:
            return self._search_demo_batch(step)
        drill = step < c.copy_steps
        if self._demo_writer is None:
            self._demo_writer = demos_lib.DemoWriter(self.world, k=self.config.rollout.topk,
                                                     retriever=self.train_retriever)
            self._name_words = self.world.name_words()
        procs = jax.process_count()
        rng = self._sft_rng(step)
        examples = self.train_examples
        L, rows = (COPY_DRILL_LEN, c.copy_batch_size // procs) if drill else (c.seq_len, c.batch_size // procs)
        idx = rng.choice(len(examples), size=rows, replace=False)
        demos = self._demo_writer.demos([examples[i] for i in idx], seed=int(rng.integers(2**31)),
                                        flawed_fraction=0.0 if drill else c.flawed_fraction,
                                        stop_early_fraction=0.0 if drill else c.stop_early_fraction)
        if c.fresh_names or drill:
            demos = [d.renamed(synthetic.Renamer(self._name_words, random.Random(int(rng.integers(2**31)))))
                     for d in demos]
        rows_segs = []
        for d in demos:
            # Sound demos (and the demonstrator's early answers) teach the Actor; a share of them and every other flawed
            # demo teach the refiner its label (the first flawed step, 0 when sound) under the rollout's prompt.
            if drill:
                rows_segs.append(d.copy_drill_segments())
            elif (d.flawed_step == 0 or d.stopped_early) and rng.random() >= c.refiner_fraction:
                rows_segs.append(d.sft_segments())
            else:
                rows_segs.append(d.refiner_segments(prompt=self.config.refiner.prompt))
        return self._pack(rows_segs, L)

    def _sft_rng(self, step: int) -> np.random.Generator:
        """The SFT batch generator of `step`; multi-host, each process draws its own rows."""
        procs = jax.process_count()
        return np.random.default_rng([self.config.seed, step] + ([jax.process_index()] if procs > 1 else []))

    def _pack(self, rows_segs, L: int):
        """(tokens, valid, loss mask) [rows, L] of tokenized segment lists, each cut to L tokens and zero-padded."""
        tokens = np.zeros((len(rows_segs), L), np.int32)
        mask = np.zeros((len(rows_segs), L), np.float32)
        valid = np.zeros((len(rows_segs), L), bool)
        for r, segs in enumerate(rows_segs):
            ids, m = tokenize_segments(self.tokenizer, segs)
            ids, m = ids[:L], m[:L]
            tokens[r, :len(ids)], mask[r, :len(ids)], valid[r, :len(ids)] = ids, m, True
        return tokens, valid, mask

    def _search_demo_batch(self, step: int):
        """Real QA data: one-search demonstrations (`demos.search_demo`) of training questions whose answer the
        training retriever finds; questions it misses are skipped, drawn in a seeded order, so the batch is again a
        pure function of (config.seed, step)."""
        c, ro = self.config.sft, self.config.rollout
        rng = self._sft_rng(step)
        rows, L = c.batch_size // jax.process_count(), c.seq_len
        order = rng.permutation(len(self.train_examples))
        demos: list = []
        for start in range(0, len(order), 2 * rows):
            exs = [self.train_examples[i] for i in order[start:start + 2 * rows]]
            found = self.train_retriever.search([ex.question.strip() for ex in exs], ro.topk)
            demos += [d for ex, ps in zip(exs, found) if (d := demos_lib.search_demo(
                ex, ps, self.tokenizer, chat=self.config.model.chat, max_obs_tokens=ro.max_obs_tokens)) is not None]
            if len(demos) >= rows:
                break
        if len(demos) < rows:
            raise ConfigError(f"sft.batch_size={c.batch_size}: the retriever finds the answer of only {len(demos)} "
                              f"training questions")
        return self._pack([d.sft_segments() for d in demos[:rows]], L)

    def rollout_and_score(self, params, batch, rng, use_refiner: bool | None = None):
        """Rollouts for one group batch, then EM, process reward and the hybrid reward per trajectory."""
        use_refiner = self.config.refiner.enabled if use_refiner is None else use_refiner
        jobs = eval_lib.make_jobs(batch.examples, self.tokenizer, self.config.model.chat, batch.group_size,
                                  batch.group_ids)
        out = self.engine.run(params, jobs, rng, use_refiner=use_refiner)
        trajs = out.trajectories
        em, f1 = eval_lib.score(trajs)
        useful = np.zeros(len(trajs), np.float32)
        if not self.config.reward.outcome_only and self.config.reward.judge != "none":
            # One batched call for the whole step (the LLM judge decodes every prompt in one engine run).
            useful = np.asarray(self.judge.count_many([judges.JudgeItem(
                t.job.question, t.job.golden_answers, [turn.passages for turn in t.searches],
                t.job.metadata.get("gold_passage_ids")) for t in trajs]), np.float32)
        searches = np.asarray([len(t.searches) for t in trajs], np.float32)
        reward = np.asarray([rewards.hybrid_reward(e, u, m, outcome_only=self.config.reward.outcome_only)
                             for e, u, m in zip(em, useful, searches)], np.float32)
        density = np.where(searches > 0, useful / np.maximum(searches, 1), 0.0)
        self.reward_terms = rewards.RewardTerms(em, useful, reward)  # for the trajectory dumps
        sentinel_cfg = self.config.train.sentinel
        if sentinel_cfg.enabled:  # generated text only (no retrieved passages), averaged over hosts like the rest
            out.metrics["rollout/repetition_share"] = sentinel_lib.repetition_share(
                (tok_lib._decode(self.tokenizer, t.response_ids[np.asarray(t.loss_mask) > 0])
                 for t in trajs[:sentinel_cfg.repetition_sample]), sentinel_cfg)
        metrics = dict(out.metrics, **{"reward/mean": reward.mean(), "reward/em": em.mean(), "reward/f1": f1.mean(),
                                       "reward/density": density.mean()}, **self.judge.stats())
        return trajs, reward, _across_processes(metrics)

    def step_batch(self, trajs, reward) -> StepBatch:
        """Advantages (GRPO by group id, or rejection sampling), broadcast onto generated and meta-action tokens.

        A `retrieval_error` row is an infrastructure fault, not a wrong answer: it and its meta-actions get zero
        loss weight and stay out of the group (or PPO whitening) statistics; `self.step_batch_metrics` counts them.
        """
        c = self.config
        ppo = c.rl.algo == "ppo"
        keep = np.asarray([t.status != T.RETRIEVAL_ERROR for t in trajs], bool)
        self.step_batch_metrics = {"train/retrieval_error_rows": float(np.sum(~keep))}
        if c.rl.rejection_sampling or not ppo:
            gid = np.unique(np.asarray([t.job.group_id for t in trajs]), return_inverse=True)[1].reshape(-1)
            seq_adv = np.asarray(adv_lib.sequence_advantages(
                jnp.asarray(reward), jnp.asarray(gid), jnp.asarray(keep), normalize_std=c.rl.normalize_std,
                rejection_sampling=c.rl.rejection_sampling))
        shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        num_meta = T.meta_rows(len(trajs), c.refiner.max_revisions, c.train.micro_batches, shards)
        # A follow-up prompt continues the trajectory: its meta-actions ride in the trajectory's row.
        pack = c.refiner.prompt == "followup"
        # Rows take the finer buckets: a trajectory with a revised draft's branch just past a power of two would
        # otherwise double every row, and the attention of a dense row grows with the square of its length.
        b = T.to_batch(trajs, num_meta=num_meta, pack_meta=pack, fine=True)
        if jax.process_count() > 1:  # every host pads to the largest lengths of any host
            lens = [b.tokens.shape[1], b.meta_rows.tokens.shape[1] if b.meta_rows is not None else 1]
            most = [int(v) for v in np.asarray(multihost_utils.process_allgather(
                np.asarray(lens, np.int32))).max(axis=0)]
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
            old_values = np.asarray(self._values(self.local_params(), b.tokens, idx < b.traj_lengths[:, None]))
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
            return sb
        where = packing_lib.plan_rows(sb, c.train.micro_batches * shards)
        rows = where.rows
        if jax.process_count() > 1:
            rows = int(np.asarray(multihost_utils.process_allgather(np.asarray(rows, np.int32))).max())
        return packing_lib.pack_rows(sb, where, rows)

    def diagnostics(self, step: int) -> dict:
        """The Meta-Refiner's Prop. 4.1 / 4.2 terms (`rl/diagnostics.py`) on `train.diagnostics_prompts` training
        prompts drawn for `step`: Actor-only drafts, the refiner's decisions, regenerations at its cut and at a
        uniform one. Logged as `diag/*`."""
        from searchr2_jax.rl import diagnostics as diag_lib

        c = self.config
        if self._regen_engine is None:
            self._regen_engine = diag_lib.make_regen_engine(self.engine)
        rng = np.random.default_rng([c.seed, step, 0x4A1])
        n = min(c.train.diagnostics_prompts, len(self.train_examples))
        examples = [self.train_examples[i] for i in rng.choice(len(self.train_examples), size=n, replace=False)]
        jobs = eval_lib.make_jobs(examples, self.tokenizer, c.model.chat)
        reward_fn = diag_lib.hybrid_reward_fn(None if c.reward.judge == "none" else self.judge, c.reward.outcome_only)
        out, _ = diag_lib.refiner_diagnostics(self.engine, self.engine.refiner, self.local_params(), jobs,
                                              jax.random.fold_in(self.data_rng, 2**31 + step), reward_fn,
                                              regen_engine=self._regen_engine)
        return {f"diag/{k}": float(v) for k, v in out.items()}

    # ------------------------------------------------------------------------------------------ loop

    def restore(self, step: int | None = None) -> int:
        """Loads checkpoint `step` (default: the latest) into the state and data iterator; returns its step (0 when
        the workdir has none and `step` is None). An unreadable checkpoint raises ckpt_lib.CheckpointError, which
        names the earlier steps to resume from with `run(restore_step=...)`."""
        step = self.ckpt.latest_step() if step is None else step
        if step is None:
            return 0
        self.ckpt.wait()  # a rollback may restore right after an asynchronous save
        self.state, data = self.ckpt.restore(self.state, step)
        self._set_lr_scale(float(data.get("lr_scale", 1.0)))
        it_state = data.get("iterator")
        if "iterators" in data:  # one per process (multi-host runs)
            if len(data["iterators"]) != self.num_processes:
                raise ValueError(f"checkpoint {step} holds the data iterators of {len(data['iterators'])} processes; "
                                 f"this run has {self.num_processes}")
            it_state = data["iterators"][self.process_index]
        if it_state:
            self.iterator.set_state(it_state)
        logging.info("resumed from step %d", step)
        return int(step)

    def restore_earlier(self, step: int) -> int:
        """Resumes from checkpoint `step` rather than the latest (0: from scratch), moving the later checkpoints into
        `checkpoints_discarded/` (never deleting them) so that the steps after `step` are saved again."""
        available = self.ckpt.all_steps()
        if step and step not in available:
            raise ckpt_lib.CheckpointError(f"restore_step={step}: no checkpoint of that step in "
                                           f"{self.ckpt.directory}. {self.ckpt.resume_hint()}")
        step = self.restore(step) if step else 0  # before moving anything: a bad `step` leaves the workdir as it was
        if self.process_index == 0:
            for path in self.ckpt.discard_after(step):
                logging.warning("restore_step=%d: moved the later checkpoint to %s", step, path)
        if self.num_processes > 1:
            multihost_utils.sync_global_devices("searchr2_jax discard later checkpoints")
            self.ckpt.reload()
        return step

    def save(self, step: int, force: bool = False):
        data = {"iterator": self.iterator.get_state(), "lr_scale": self.lr_scale}
        if self.num_processes > 1:  # orbax writes the JSON from process 0 only: gather every host's position
            data["iterators"] = _gather_json(data["iterator"])
        self.ckpt.save(step, self.state, data, force=force)

    def _set_lr_scale(self, scale: float) -> None:
        """Rebuilds the RL optimizer and jitted step with the learning rate x `scale`. The optax chain's state does
        not depend on the rate (the schedule is a closure over it), so the current optimizer state carries over."""
        if scale == self.lr_scale:
            return
        optim = ml_collections.ConfigDict(self.config.optim.to_dict())
        optim.learning_rate = self.config.optim.learning_rate * scale
        self.rl_opt = state_lib.make_optimizer(optim, max(self.rl_steps, 1))
        self.train_step = jit_train_step(self.config, self.model_cfg, self.mesh, self.state_shardings, self.rl_opt)
        self.lr_scale = scale

    def watch(self, step: int, metrics: dict) -> tuple[dict, int | None]:
        """Feeds the sentinel one RL step's metrics; returns them with `sentinel/*` added, and the step to continue
        from after a rollback (None: go on). With `train.rollback_on_collapse`, a collapse restores the latest
        checkpoint before its onset (`sentinel.rollback_target`) and multiplies the RL learning rate by
        `train.rollback_lr_factor`, at most `train.max_rollbacks` times."""
        tr = self.config.train
        metrics = jax.device_get(metrics)
        report = self.sentinel.update(step, metrics)
        metrics = dict(metrics, **report.metrics())
        if not report.fired:
            return metrics, None
        logging.warning("collapse sentinel fired at step %d: %s", step, report.describe())
        if not tr.rollback_on_collapse or self.rollbacks >= tr.max_rollbacks:
            return metrics, None
        target = sentinel_lib.rollback_target(self.ckpt.all_steps(), report.onset_step, self.sft_steps)
        if target is None:
            logging.warning("no RL checkpoint before step %d to roll back to; training on", report.onset_step)
            return metrics, None
        scale = self.lr_scale * tr.rollback_lr_factor
        self.restore_earlier(target)  # the collapsed checkpoints move aside, so the redone steps are saved again
        self._set_lr_scale(scale)  # after restore, which sets the (older) checkpoint's own scale
        self.rollbacks += 1
        self.sentinel.reset_streaks()
        logging.warning("rolled back to step %d with the learning rate x %g", target, scale)
        return dict(metrics, **{"sentinel/rollback_to": float(target), "sentinel/lr_scale": scale}), target

    def run(self, stop_at: int | None = None, restore_step: int | None = None) -> dict:
        """Trains from the latest checkpoint (or from `restore_step`, see `restore_earlier`) to the end (or, when
        `stop_at` is given, up to that step: a deliberate interruption, as preemption would do, for resume tests).
        Returns the last logged metrics."""
        c = self.config
        total = self.sft_steps + self.rl_steps
        end = total if stop_at is None else min(stop_at, total)
        step = self.restore() if restore_step is None else self.restore_earlier(restore_step)
        last = {}
        t_run = time.time()
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, desc="train", disable=not c.train.progress, dynamic_ncols=True)
        while step < end:
            t0 = time.time()
            if step < self.sft_steps:
                tokens, valid, mask = sharding.host_local_to_global(self.sft_batch(step), self.mesh)
                self.state, metrics = self.sft_step(self.state, tokens, valid, mask)
            else:
                if step == self.sft_steps and step > 0:  # phase switch: fresh RL optimizer, reference = warm start
                    self.state = self.state._replace(opt_state=self.rl_opt.init(self.state.params))
                    if self.state.ref_params is not None:
                        self.state = self.state._replace(ref_params=jax.tree.map(jnp.copy, self.state.params))
                    self.state = jax.device_put(self.state, self.state_shardings)  # eager results: back in place
                batch = next(self.iterator)
                rng = jax.random.fold_in(self.data_rng, step)
                if self.num_processes > 1:  # hosts roll out different prompts: give them different samples too
                    rng = jax.random.fold_in(rng, self.process_index)
                trajs, reward, metrics = self.rollout_and_score(self.local_params(), batch, rng)
                step_batch = sharding.host_local_to_global(self.step_batch(trajs, reward), self.mesh)
                metrics.update(self.step_batch_metrics)
                self.state, step_metrics = self.train_step(self.state, step_batch)
                metrics.update(step_metrics)
            step += 1
            rl_step = step - self.sft_steps
            rollback_to = None
            if rl_step > 0 and c.train.sentinel.enabled:
                metrics, rollback_to = self.watch(step, metrics)
            if rollback_to is not None:  # the collapsed steps are logged, not checkpointed, evaluated or dumped
                metrics["perf/step_time_s"] = time.time() - t0
                last = self.writer.write(step, metrics)
                step = rollback_to
                bar.n = step
                bar.refresh()
                continue
            every = c.train.diagnostics_every
            if every > 0 and rl_step > 0 and c.refiner.enabled and (rl_step % every == 0 or step == total):
                metrics.update(self.diagnostics(step))
            if step % c.train.log_every == 0 or step == total:
                metrics = jax.device_get(metrics)  # waits for the (asynchronous) update, so the time includes it
                metrics["perf/step_time_s"] = time.time() - t0
                last = self.writer.write(step, metrics)
                bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in last.items()
                                 if k in ("sft/nll", "train/loss", "reward/mean", "reward/em")})
            dump = c.train.dump_every > 0
            if dump and rl_step > 0 and (rl_step % c.train.dump_every == 0 or step == total):
                dump_lib.write_dump(self.workdir, "train", step, trajs, self.tokenizer, self.reward_terms,
                                    rows=c.train.dump_rows, seed=c.seed)
            if c.train.eval_every > 0 and rl_step > 0 and (rl_step % c.train.eval_every == 0 or step == total):
                eval_trajs = eval_lib.rollouts(self.eval_engine, self.local_params(), self.eval_examples,
                                               jax.random.fold_in(self.eval_rng, step), chat=c.model.chat)
                recs = eval_lib.trajectory_records(self.eval_examples, eval_trajs)
                table = eval_lib.summarize(recs)
                if dump:
                    dump_lib.write_dump(self.workdir, "eval", step, eval_trajs, self.tokenizer,
                                        rewards.RewardTerms([r["em"] for r in recs]))
                last.update(self.writer.write(step, table))
                logging.info("step %d eval\n%s", step, eval_lib.format_table(table))
            if step % c.train.ckpt_every == 0 or step == total:
                self.save(step, force=step == total)
            bar.update(1)
        bar.close()
        self.ckpt.close()
        self.writer.close()
        last["perf/wall_s"] = time.time() - t_run
        return last
