"""Training-step benchmark: a whole RL step (rollout + reward + train step) for the SmolLM2-135M-Instruct model on the
synthetic world, Search-R1 (refiner off) against Search-R2 (refiner on, forced to revise 30% of trajectories as
`engines.ForcedRefiner` does; meta-actions trained), same prompts, same n, in one process. Each variant is timed on
its second step so compilation is excluded.

  step_time_r1, step_time_r2   seconds per RL step
  r2_overhead                  step_time_r2 / step_time_r1 - 1 (the paper reports +5% on average, Table 5)
  train_step_overhead_r2       the jitted train step alone: train_step_s_r2 / train_step_s_r1 - 1
  train_tokens_r1, _r2         real tokens the train step reads (trajectory rows, their packed meta-actions, and
                               any meta-action rows of their own)
  train_padded_tokens_r1, _r2  the tokens it computes on: rows x their padded length (`train.pack_rows` puts several
                               trajectories in a row)
  meta_tokens_r2               of train_tokens_r2, those the meta-actions add to the trajectories (the batch's real
                               tokens minus its trajectories' prompts and responses)
  meta_new_tokens              what the meta-actions hold that their trajectories' rows do not: each refiner
                               sequence (prompt + integer) past its common prefix with its trajectory's row (a
                               discarded suffix, the follow-up prompt, the integer)
  meta_duplicate_tokens        meta_tokens_r2 - meta_new_tokens: tokens the batch holds twice (0 when the follow-up
                               meta-actions are packed into their trajectories' rows)
  attention_pairs_r1, _r2      query-key scores the step's rows compute per pass, in causal query blocks
                               (`decoder.causal_blocks`); meta-action rows of their own are not counted
  attention_allowed_r1, _r2    of those, the pairs its masks let a token read (causal, its own segment or shared
                               prefix, both tokens real): what a kernel skipping every masked pair would compute
  train_step_mfu               model FLOPs of the jitted train step / its time / the matmul peak measured here
  peak_rss_bytes               the process's peak resident memory at the end
"""

from __future__ import annotations

import copy
import resource
import time

import jax
import numpy as np

from searchr2_jax.benchmarks.engines import ForcedRefiner
from searchr2_jax.benchmarks.model import matmul_peak_gflops
from searchr2_jax.models import decoder


def _config(base, quick: bool):
    """The suite's settings on `base`, configs/smollm2_135m.py (which launch/benchmark.py passes in)."""
    c = copy.deepcopy(base)
    c.train.update(dict(steps=4, prompts_per_step=2 if quick else 4))
    c.rollout.update(dict(slots=8 if quick else 20, max_response_tokens=128 if quick else 384,
                          max_obs_tokens=192, max_prompt_tokens=256))
    c.rl.group_size = 4 if quick else 5
    c.train.update(dict(micro_batches=2, progress=False, eval_every=0))
    c.data.world = dict(seed=0, num_people=120, num_companies=30, num_cities=30, num_countries=6,
                        num_universities=8, num_distractors=10, num_questions=600) if quick else dict(seed=0)
    c.mesh.update(dict(data=1, fsdp=1, tensor=1))
    # Without remat the full suite's train step keeps every layer's attention probabilities for the backward pass,
    # more than a 24 GiB machine has (docs/performance.md).
    c.model.remat = not quick
    return c


def meta_new_tokens(traj) -> int:
    """Tokens of `traj`'s refiner sequences (prompt + integer) past each one's common prefix with the trajectory's
    prompt + response: what training its meta-actions has to add to its row."""
    row = list(traj.job.prompt_ids) + [int(i) for i in traj.response_ids]
    total = 0
    for m in traj.meta_actions:
        n = 0
        for a, b in zip(m.prompt_ids, row):
            if a != b:
                break
            n += 1
        total += len(m.prompt_ids) + len(m.action_ids) - n
    return total


def batch_tokens(sb) -> tuple[float, float]:
    """(real, padded) tokens of a StepBatch: its rows and any meta-action rows of their own."""
    rows = [sb.valid] + ([sb.meta_rows.valid] if sb.meta_rows is not None else [])
    return float(sum(np.sum(v) for v in rows)), float(sum(np.size(v) for v in rows))


def attention_pairs(sb, block: int) -> tuple[float, float]:
    """(computed, allowed) query-key pairs of a StepBatch's rows: what `decoder.causal_blocks` scores with
    `attention_block=block`, and what the masks allow. The masks are rebuilt here from the batch, not taken from the
    decoder, so that the count measures the decoder rather than repeating it."""
    valid, seg = np.asarray(sb.valid), np.asarray(sb.packing.segment_ids)
    start, end = np.asarray(sb.packing.shared_start), np.asarray(sb.packing.shared_end)
    rows, t = valid.shape
    computed = rows * sum((j - i) * j for i, j in decoder.query_blocks(t, block))
    key = np.arange(t)[None, :]
    causal = key.T >= key
    allowed = 0
    for r in range(rows):
        ok = causal & valid[r][:, None] & valid[r][None, :]
        ok &= (seg[r][:, None] == seg[r][None, :]) | ((key >= start[r][:, None]) & (key < end[r][:, None]))
        allowed += int(ok.sum())
    return float(computed), float(allowed)


def meta_tokens(sb, trajs) -> float:
    """Real tokens a StepBatch holds beyond its trajectories' prompts and responses: its meta-actions, packed as
    branches or as rows of their own."""
    return batch_tokens(sb)[0] - float(sum(len(t.job.prompt_ids) + len(t.response_ids) for t in trajs))


def run(quick: bool = False, configs: dict | None = None) -> dict:
    """`configs["smollm2_135m"]`: configs/smollm2_135m.py's config (launch/benchmark.py builds it)."""
    import tempfile

    from searchr2_jax.trainer import Trainer

    config = _config(configs["smollm2_135m"], quick)
    trainer = Trainer(config, tempfile.mkdtemp(prefix="searchr2_bench_"))
    trainer.engine.refiner = ForcedRefiner(trainer.engine.refiner, rate=0.3)  # see benchmarks/engines.py
    batch = next(trainer.iterator)
    rng = jax.random.key(0)
    n_params = trainer.model_cfg.num_params()

    def one_step(use_refiner: bool, train_meta: bool):
        trainer.config.rl.train_meta_actions = train_meta
        t0 = time.perf_counter()
        trajs, reward, _ = trainer.rollout_and_score(trainer.state.params, batch, rng, use_refiner=use_refiner)
        sb, _ = trainer.step_batch(trajs, reward)
        t1 = time.perf_counter()
        trainer.state, metrics = trainer.train_step(trainer.state, sb)
        jax.block_until_ready(metrics)
        t2 = time.perf_counter()
        return t2 - t0, t2 - t1, *batch_tokens(sb), trajs, sb

    figures = {}
    for name, (ref, meta) in {"r1": (False, False), "r2": (True, True)}.items():
        one_step(ref, meta)  # compile
        total, step_s, tokens, padded, trajs, sb = one_step(ref, meta)
        figures[f"step_time_{name}"] = total
        figures[f"train_step_s_{name}"] = step_s
        figures[f"train_tokens_{name}"] = tokens
        figures[f"train_padded_tokens_{name}"] = padded
        figures[f"attention_pairs_{name}"], figures[f"attention_allowed_{name}"] = attention_pairs(
            sb, trainer.model_cfg.attention_block)
        if name == "r2":
            figures["meta_tokens_r2"] = meta_tokens(sb, trajs)
            figures["meta_new_tokens"] = float(sum(meta_new_tokens(t) for t in trajs))
            figures["meta_duplicate_tokens"] = figures["meta_tokens_r2"] - figures["meta_new_tokens"]
            # forward + backward = 6 N per token, plus the frozen reference's forward (2 N) for the KL term,
            # counted over every real token of the padded batch (trajectories and meta-action sequences).
            use_ref = trainer.state.ref_params is not None
            flops = (6 + (2 if use_ref else 0)) * n_params * tokens
            peak = max(matmul_peak_gflops(n, repeats=3) for n in (1024, 2048)) * 1e9
            figures["train_step_mfu"] = flops / step_s / peak
            figures["matmul_peak_gflops"] = peak / 1e9
    figures["r2_overhead"] = figures["step_time_r2"] / figures["step_time_r1"] - 1.0
    figures["train_step_overhead_r2"] = figures["train_step_s_r2"] / figures["train_step_s_r1"] - 1.0
    figures["peak_rss_bytes"] = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux: KiB
    figures["rows"] = float(len(batch.examples) * batch.group_size)
    return figures
