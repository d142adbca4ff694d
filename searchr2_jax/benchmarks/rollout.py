"""Rollout benchmark: the SmolLM2-135M-Instruct model, batch 32, up to 4 turns, top-3 passages from the synthetic
world (BM25), sampling at temperature 1 as in training.

Figures (all from one process, each configuration timed on its second run so compilation is excluded):
  rollout_tokens_per_s         generated tokens per wall second (chunk appends, refiner off)
  rollout_speedup_vs_reprefill wall(re-prefill the conversation at every observation) / wall(chunk appends)
  host_fraction                share of wall time outside device calls (parsing, retrieval, bookkeeping)
  tokens_after_stop            tokens generated after a stop sequence, over all turns (must be 0)
  refiner_overhead             wall(refiner on, forced to revise 30% of trajectories at a uniform step) / wall(off) - 1
"""

from __future__ import annotations

import time

import jax
import numpy as np

from searchr2_jax.data import synthetic
from searchr2_jax.eval.evaluate import make_jobs
from searchr2_jax.models import hf_io
from searchr2_jax.retrieval.retriever import build_retriever, default_retrieval_config
from searchr2_jax.rollout.refiner import MetaRefiner, default_refiner_config
from searchr2_jax.rollout.rollout import RolloutEngine, default_rollout_config
from searchr2_jax.text import protocol
from searchr2_jax.text.tokenizer import load_tokenizer


def tokens_after_stop(tokenizer, trajectories) -> int:
    """Counts generated tokens that follow a stop string inside a turn (the on-device stop must make this 0)."""
    stops = (protocol.SEARCH_CLOSE, protocol.ANSWER_CLOSE)
    extra = 0
    for t in trajectories:
        for turn in t.turns:
            ids = list(t.response_ids[turn.start:turn.end])
            for k in range(1, len(ids) + 1):
                if any(s in tokenizer.decode(ids[:k]) for s in stops):
                    extra += len(ids) - k
                    break
    return extra


def run(quick: bool = False) -> dict:
    from searchr2_jax.models.gguf_import import ensure_smollm2

    path = ensure_smollm2()
    tokenizer = load_tokenizer(path)
    cfg, params = hf_io.load_params(path)
    world = synthetic.generate_world(synthetic.WorldConfig.tiny() if quick else synthetic.WorldConfig())
    rcfg = default_retrieval_config()
    rcfg.backend = "bm25"
    retriever = build_retriever(rcfg, corpus=world.corpus())

    config = default_rollout_config()
    config.update(dict(slots=8 if quick else 32, max_turns=4, topk=3, max_prompt_tokens=256,
                       max_response_tokens=128 if quick else 512, max_obs_tokens=256, segment_steps=32,
                       temperature=1.0))
    n = config.slots
    jobs = make_jobs(world.splits["dev"][:n], tokenizer, chat=True)
    ref_cfg = default_refiner_config()
    ref_cfg.force_revise_rate = 0.3
    engine = RolloutEngine(cfg, tokenizer, retriever, config, MetaRefiner(cfg, tokenizer, ref_cfg, config.max_turns))
    key = jax.random.key(0)

    def timed(**kw):
        engine.run(params, jobs, key, **kw)  # compile every bucket this workload reaches
        t0 = time.perf_counter()
        out = engine.run(params, jobs, key, **kw)
        return out, time.perf_counter() - t0

    base, t_base = timed(use_refiner=False)
    _, t_reprefill = timed(use_refiner=False, reprefill=True)
    refined, t_refined = timed(use_refiner=True)
    m = base.metrics
    return {
        "rollout_tokens_per_s": m["rollout/tokens_generated"] / t_base,
        "rollout_wall_s": t_base,
        "rollout_speedup_vs_reprefill": t_reprefill / t_base,
        "host_fraction": m["rollout/host_fraction"],
        "tokens_after_stop": float(tokens_after_stop(tokenizer, base.trajectories + refined.trajectories)),
        "refiner_overhead": t_refined / t_base - 1.0,
        "refiner_revision_rate": refined.metrics["rollout/revision_rate"],
        "searches_per_trajectory": m["rollout/searches_per_trajectory"],
        "tokens_generated": float(m["rollout/tokens_generated"]),
        "decode_steps": float(m["rollout/decode_steps"]),
        "slots": float(n),
        "answered_share": m["rollout/status/answered"],
        "retrieval_s": m["rollout/retrieval_s"],
        "mean_turns": float(np.mean([len(t.turns) for t in base.trajectories])),
    }
