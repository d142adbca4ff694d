"""What an evaluation needs from a config: the Actor's engine and parameters (an HF folder, or a training workdir's
checkpoint), its retriever behind the disk cache, the eval questions, and the settings recorded beside the table."""

from __future__ import annotations

import dataclasses
import os

import jax
import ml_collections
import numpy as np

from searchr2_jax import components
from searchr2_jax.config import data_files, validate_config
from searchr2_jax.data import qa as qa_lib
from searchr2_jax.eval import evaluate as eval_lib
from searchr2_jax.retrieval.cache import CachedRetriever, describe
from searchr2_jax.retrieval.wiki import default_cache_dir
from searchr2_jax.rollout.rollout import RolloutEngine


@dataclasses.dataclass
class Agent:
    engine: RolloutEngine
    params: object
    retriever: CachedRetriever
    model: str  # what was evaluated: the HF folder, or the workdir and step
    world: object = None  # the synthetic world, when the config has one


def load_agent(config: ml_collections.ConfigDict, workdir: str | None = None, step: int | None = None,
               cache_dir: str | None = None) -> Agent:
    """The config's model (`model.hf_path`), or with `workdir` the checkpoint `step` (default: the latest) of a
    run trained with this config. Its retriever is wrapped in the disk cache (`cache_dir`, default
    `$SEARCHR2_CACHE/retrieval`)."""
    cache_dir = cache_dir or os.path.join(default_cache_dir(), "retrieval")
    if workdir:
        if not os.path.isdir(os.path.join(workdir, "checkpoints")):
            raise FileNotFoundError(f"{workdir}: no checkpoints/ (train first with launch/train.py)")
        validate_config(config)
        parts = components.build(config, workdir)
        got, params = _restore_params(config, parts, workdir, step)
        engine, retriever = parts.eval_engine, parts.retriever
        model, world = f"{workdir} step {got}", parts.world
    else:
        if not config.model.hf_path:
            raise ValueError("model.hf_path is empty: give an HF folder, or --workdir to evaluate a checkpoint")
        if not data_files(config.data.eval_files):
            raise ValueError("data.eval_files is empty: evaluating an HF model needs QA files (the synthetic world "
                             "is evaluated from a training workdir)")
        from searchr2_jax.models import sharding
        from searchr2_jax.retrieval.retriever import build_retriever

        tokenizer = components.load_tokenizer(config, None, "")
        mesh = sharding.make_mesh(config.mesh, jax.devices())
        cfg, params = components.load_model(config, len(tokenizer), mesh, jax.random.key(0))
        retriever = build_retriever(config.retrieval)
        engine = RolloutEngine(cfg, tokenizer, retriever, config.rollout, None, mesh=mesh)
        model, world = config.model.hf_path, None
    cached = CachedRetriever(retriever, cache_dir, describe(retriever, config.retrieval))
    engine.retriever = cached
    return Agent(engine, params, cached, model, world)


def _restore_params(config: ml_collections.ConfigDict, parts: components.Components, workdir: str,
                    step: int | None):
    """(step, params on this process's rollout mesh) of checkpoint `step` (default: the latest) in `workdir`,
    restored onto a state laid out as the trainer lays it out."""
    from searchr2_jax import checkpoint as ckpt_lib
    from searchr2_jax.models import sharding
    from searchr2_jax.rl import state as state_lib

    optimizer = state_lib.make_optimizer(config.optim, max(config.train.steps, 1))
    state = state_lib.init_state(parts.params, optimizer, jax.random.key(0), config.rl.loss.kl_coef > 0)
    state = sharding.put_global(state, sharding.tree_shardings(state, parts.mesh))
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints)
    try:
        got = ckpt.latest_step() if step is None else step
        if got is None:
            raise FileNotFoundError(f"{workdir}: no checkpoint to evaluate")
        state, _ = ckpt.restore(state, got)
    finally:
        ckpt.close()
    return got, sharding.to_local_mesh(state.params, parts.local_mesh)


def eval_examples(config: ml_collections.ConfigDict, limit: int = 0, world=None) -> list[qa_lib.QAExample]:
    """Every question of each `data.eval_files` file (the first `limit` of each when > 0), or of the synthetic
    world's `data.eval_split`."""
    files = data_files(config.data.eval_files)
    if files:
        return [ex for f in files for ex in (qa_lib.read_qa_file(f)[:limit] if limit else qa_lib.read_qa_file(f))]
    if world is None:
        raise ValueError("data.eval_files is empty and there is no synthetic world to evaluate on")
    split = world.splits[config.data.eval_split]
    return list(split[:limit] if limit else split)


def few_shot_examples(config: ml_collections.ConfigDict, n: int) -> tuple[tuple[str, str], ...]:
    """The baselines' `n` few-shot examples: (question, first gold answer) pairs drawn from the config's
    `data.train_files` with `config.seed`, so they never come from the split being evaluated and do not depend on
    how the file happens to be sorted."""
    if n <= 0:
        return ()
    files = data_files(config.data.train_files)
    if not files:
        raise ValueError(f"{n} shots: data.train_files is empty (few-shot examples come from the training split)")
    train = [ex for f in files for ex in qa_lib.read_qa_file(f)]
    if len(train) < n:
        raise ValueError(f"{n} shots: {files} hold only {len(train)} questions")
    pick = np.random.default_rng(int(config.get("seed", 0))).choice(len(train), n, replace=False)
    return tuple((train[i].question, train[i].golden_answers[0]) for i in sorted(pick))


def settings(config: ml_collections.ConfigDict, agent: Agent, style: str, limit: int = 0, shots: int = 0) -> dict:
    """Everything that makes two tables comparable (eval/table.EM_SETTINGS) and what was evaluated."""
    ro, desc = config.rollout, agent.retriever.description
    return {
        "model": agent.model, "dtype": config.model.dtype, "chat": bool(config.model.chat),
        "retriever": {k: v for k, v in desc.items() if k not in ("corpus", "encoder")},
        "encoder": desc.get("encoder"), "corpus": {"path": config.retrieval.corpus_path, **desc.get("corpus", {})},
        "k": int(ro.topk), "max_turns": int(ro.max_turns), "max_prompt_tokens": int(ro.max_prompt_tokens),
        "max_response_tokens": int(ro.max_response_tokens), "max_obs_tokens": int(ro.max_obs_tokens),
        "baseline_new_tokens": eval_lib.FLASHRAG_NEW_TOKENS if style == "flashrag" else int(ro.max_response_tokens),
        "decoding": "greedy", "prompt_style": style, "shots": int(shots), "eval_files": data_files(config.data.eval_files),
        "limit_per_file": limit, "refiner": "off (Actor only)"}
