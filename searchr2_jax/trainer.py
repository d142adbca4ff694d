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
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from searchr2_jax import checkpoint as ckpt_lib
from searchr2_jax import components
from searchr2_jax import metrics as metrics_lib
from searchr2_jax.config import ConfigError, validate_config
from searchr2_jax.data import demos as demos_lib
from searchr2_jax.data.pipeline import QAPipeline
from searchr2_jax.eval import evaluate as eval_lib
from searchr2_jax.models import sharding
from searchr2_jax.rl import batch as batch_lib
from searchr2_jax.rl import diagnostics as diag_lib
from searchr2_jax.rl import rewards, scoring
from searchr2_jax.rl import sentinel as sentinel_lib
from searchr2_jax.rl import state as state_lib
from searchr2_jax.rl.train_step import StepBatch, jit_values, make_sft_step, make_train_step
from searchr2_jax.rollout import dump as dump_lib
from searchr2_jax.rollout import types as rollout_types

__all__ = ["ConfigError", "Trainer", "validate_config"]


def _across_processes(metrics: dict) -> dict:
    """Host-local scalar metrics -> their mean over processes (counts of trajectories and tokens: their sum)."""
    if jax.process_count() == 1:
        return metrics
    keys = sorted(metrics)
    values = np.asarray(multihost_utils.process_allgather(np.asarray([float(metrics[k]) for k in keys], np.float32)))
    summed = ("rollout/trajectories", "rollout/tokens_generated")
    return {k: float(values[:, i].sum() if k in summed else values[:, i].mean()) for i, k in enumerate(keys)}


def _max_over_processes(sizes: list[int]) -> list[int]:
    """The element-wise largest of every process's `sizes` (a collective: every process calls it)."""
    return [int(v) for v in np.asarray(multihost_utils.process_allgather(np.asarray(sizes, np.int32))).max(axis=0)]


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
        keys = components.run_keys(config.seed)
        self.data_rng, self.eval_rng = keys.data, keys.eval

        # --- data, retrieval, tokenizer, meshes, model, rollout engines (Actor + Meta-Refiner share the model)
        parts = components.build(config, workdir, devices, rng=keys.init)
        self.world, self.tokenizer, self.model_cfg = parts.world, parts.tokenizer, parts.model_cfg
        self.train_examples, self.eval_examples = parts.train_examples, parts.eval_examples
        self.retriever, self.mesh, self.local_mesh = parts.retriever, parts.mesh, parts.local_mesh
        self.engine, self.eval_engine = parts.engine, parts.eval_engine
        self.num_processes, self.process_index = jax.process_count(), jax.process_index()
        self.judge = components.build_judge(config, self.local_mesh)
        self.sft_batches = demos_lib.SFTBatches(config, self.world, self.train_examples, self.tokenizer,
                                                parts.train_retriever)

        # --- optimization
        self.sft_steps, self.rl_steps = config.sft.steps, config.train.steps
        self.sft_opt = state_lib.make_optimizer(config.sft.optim, max(self.sft_steps, 1))
        self.rl_opt = state_lib.make_optimizer(config.optim, max(self.rl_steps, 1))
        self.lr_scale, self.rollbacks = 1.0, 0  # RL learning-rate factor left by collapse rollbacks (checkpointed)
        self.sentinel = sentinel_lib.Sentinel(config.train.sentinel)
        use_ref = config.rl.loss.kl_coef > 0
        state = state_lib.init_state(parts.params, self.rl_opt, keys.state, with_reference=use_ref)
        # Every parameter and optimizer leaf is placed by the partition rules; batches split over data x fsdp.
        self.state_shardings = sharding.tree_shardings(state, self.mesh)
        self.state = sharding.put_global(state, self.state_shardings)
        self.sft_step = jit_sft_step(config, self.model_cfg, self.mesh, self.state_shardings, self.sft_opt)
        self.train_step = jit_train_step(config, self.model_cfg, self.mesh, self.state_shardings, self.rl_opt)
        self._values = jit_values(self.model_cfg) if config.rl.algo == "ppo" else None  # on the rollout's params
        # Each host reads its own shard (QAPipeline splits by process index) and its share of the global batch.
        self.pipeline = QAPipeline(self.train_examples, batch_size=config.train.prompts_per_step // self.num_processes,
                                   group_size=config.rl.group_size, seed=config.seed)
        self.iterator = iter(self.pipeline)
        self.ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints)
        self.writer = metrics_lib.MetricWriter(workdir)
        self._regen_engine = None

    def local_params(self):
        """The current parameters on this process's sub-mesh (the rollout engine's); a no-op with one process."""
        return sharding.to_local_mesh(self.state.params, self.local_mesh)

    # ------------------------------------------------------------------------------------------ phases

    def rollout_and_score(self, params, batch, rng, use_refiner: bool | None = None):
        """Rollouts for one group batch, then EM, process reward and the hybrid reward per trajectory."""
        use_refiner = self.config.refiner.enabled if use_refiner is None else use_refiner
        jobs = eval_lib.make_jobs(batch.examples, self.tokenizer, self.config.model.chat, batch.group_size,
                                  batch.group_ids)
        out = self.engine.run(params, jobs, rng, use_refiner=use_refiner)
        trajs = out.trajectories
        reward, self.reward_terms, reward_metrics = scoring.score_rollouts(trajs, self.judge, self.config.reward)
        if self.config.train.sentinel.enabled:  # averaged over hosts like the rest
            out.metrics["rollout/repetition_share"] = sentinel_lib.response_repetition_share(
                trajs, self.tokenizer, self.config.train.sentinel)
        return trajs, reward, _across_processes(dict(out.metrics, **reward_metrics))

    def with_drafts(self, trajs, reward) -> tuple[list, np.ndarray]:
        """The trajectories the RL step trains on and their rewards: the rollout's, and with `refiner.train_drafts`
        the drafts the refiner revised too (as many as `rollout/revision_rate` says), each scored like any
        trajectory. The step's reward metrics stay those of the final trajectories."""
        if not self.config.refiner.train_drafts:
            return trajs, reward
        drafts = rollout_types.draft_trajectories(trajs)
        if not drafts:
            return trajs, reward
        draft_reward = scoring.score_rollouts(drafts, self.judge, self.config.reward)[0]
        return list(trajs) + drafts, np.concatenate([reward, draft_reward])

    def step_batch(self, trajs, reward, jobs: int | None = None) -> tuple[StepBatch, dict]:
        """The RL step's batch of these trajectories and its metrics (rl/batch.py; `jobs` as there)."""
        values = None
        if self.config.rl.algo == "ppo":
            params = self.local_params()
            values = lambda tokens, valid: self._values(params, tokens, valid)  # noqa: E731
        agree = _max_over_processes if self.num_processes > 1 else None
        shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        return batch_lib.step_batch(trajs, reward, self.config, shards, values=values, agree=agree, jobs=jobs)

    def diagnostics(self, step: int) -> dict:
        """The Meta-Refiner's Prop. 4.1 / 4.2 terms (`rl/diagnostics.py`) on `train.diagnostics_prompts` training
        prompts drawn for `step`: Actor-only drafts, the refiner's decisions, regenerations at its cut and at a
        uniform one. Logged as `diag/*`."""
        c = self.config
        if self._regen_engine is None:
            self._regen_engine = diag_lib.make_regen_engine(self.engine)
        rng = np.random.default_rng([c.seed, step, 0x4A1])
        n = min(c.train.diagnostics_prompts, len(self.train_examples))
        examples = [self.train_examples[i] for i in rng.choice(len(self.train_examples), size=n, replace=False)]
        return diag_lib.logged_diagnostics(
            self.engine, self.local_params(), eval_lib.make_jobs(examples, self.tokenizer, c.model.chat),
            jax.random.fold_in(self.data_rng, 2**31 + step), None if c.reward.judge == "none" else self.judge,
            c.reward.outcome_only, self._regen_engine)

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
                tokens, valid, mask = sharding.host_local_to_global(self.sft_batches(step), self.mesh)
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
                step_batch, batch_metrics = self.step_batch(*self.with_drafts(trajs, reward), jobs=len(trajs))
                step_batch = sharding.host_local_to_global(step_batch, self.mesh)
                metrics.update(batch_metrics)
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
