"""Everything a run uses besides its training state, built from a config in one place: the questions (synthetic
world or QA files), the retrievers, the tokenizer, the meshes, the model and the rollout engines, and the reward's
judge. The trainer, evaluation and the benchmarks all build them here; nothing here compiles a train step.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

import jax
import ml_collections
from jax.experimental import multihost_utils

from searchr2_jax.config import ConfigError, data_files
from searchr2_jax.data import qa as qa_lib
from searchr2_jax.data import synthetic
from searchr2_jax.models import decoder, hf_io, sharding
from searchr2_jax.models.config import DecoderConfig
from searchr2_jax.retrieval import wiki
from searchr2_jax.retrieval.retriever import build_retriever
from searchr2_jax.retrieval.types import Retriever
from searchr2_jax.rl import judges
from searchr2_jax.rollout.refiner import MetaRefiner
from searchr2_jax.rollout.rollout import RolloutEngine
from searchr2_jax.text import tokenizer as tok_lib


@dataclasses.dataclass
class Components:
    world: synthetic.World | None  # the synthetic world; None with real QA files (`data.train_files`)
    train_examples: list[qa_lib.QAExample]
    eval_examples: list[qa_lib.QAExample]  # the first `data.eval_examples` (of each eval file)
    retriever: Retriever  # evaluation's: the whole corpus
    train_retriever: Retriever  # rollouts' and demonstrations': the world's training region only
    tokenizer: Any
    mesh: jax.sharding.Mesh  # the global mesh the train steps run on
    local_mesh: jax.sharding.Mesh  # this process's sub-mesh, where its rollouts run
    model_cfg: DecoderConfig
    params: Any  # the initial parameters (the HF folder's, or a fresh init), placed by the partition rules
    engine: RolloutEngine  # Actor + Meta-Refiner over the training retriever
    eval_engine: RolloutEngine  # the same over the evaluation retriever


class RunKeys(NamedTuple):
    data: jax.Array  # rollouts: fold_in(data, step) for steps < 2**32 - 1
    init: jax.Array  # a from-scratch model's parameters
    state: jax.Array  # the train state's own stream
    eval: jax.Array  # evaluation: fold_in(eval, step); branches off `data` past the last step


def run_keys(seed: int) -> RunKeys:
    """The PRNG keys of a run with `seed` (the trainer's, and any evaluation that must draw as the trainer does)."""
    data, init, state = jax.random.split(jax.random.key(seed), 3)
    return RunKeys(data=data, init=init, state=state, eval=jax.random.fold_in(data, 2**32 - 1))


def use_compile_cache(config: ml_collections.ConfigDict) -> str:
    """Turns on JAX's persistent compilation cache for this process when `config.compile_cache` says so (before
    anything compiles), in the folder JAX_COMPILATION_CACHE_DIR names, else $SEARCHR2_CACHE/jax; returns the folder
    in use ("" = off). Entries are keyed by the program, compiler and devices, so a hit is the same executable."""
    if config.compile_cache and not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.join(wiki.default_cache_dir(), "jax"))
        # Every program, not only those over JAX's one-second default: a run's many short compiles add up.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return jax.config.jax_compilation_cache_dir or ""


def build(config: ml_collections.ConfigDict, workdir: str, devices=None, rng: jax.Array | None = None) -> Components:
    """The config's components. `devices`: the mesh's (default: all); `rng`: the from-scratch model's init key.

    A world tokenizer (`model.tokenizer="world"`) is trained once into `workdir/tokenizer/` and read back after."""
    d = config.data
    if data_files(d.train_files):  # real QA files over a real corpus (the paper's setting)
        world = None
        train_examples = qa_lib.read_qa_files(data_files(d.train_files))
        # The first data.eval_examples of each eval file, so that every dataset gets a row in the table.
        eval_examples = [ex for f in data_files(d.eval_files) for ex in qa_lib.read_qa_file(f)[: d.eval_examples]]
        retriever = train_retriever = build_retriever(config.retrieval)
    else:
        world = synthetic.generate_world(synthetic.WorldConfig(**d.world))
        train_examples = world.splits[d.train_split]
        eval_examples = world.splits[d.eval_split][: d.eval_examples]
        # Evaluation searches the whole world; training (rollouts and demonstrations) searches its own region
        # only, so no held-out passage ever reaches a training context.
        retriever = build_retriever(config.retrieval, corpus=world.corpus())
        train_retriever = build_retriever(config.retrieval, corpus=world.corpus(d.train_split))
    tokenizer = load_tokenizer(config, world, workdir)
    mesh = sharding.make_mesh(config.mesh, list(jax.devices() if devices is None else devices))
    # Multi-host: every host rolls out its own prompts on its own devices (the engine reads its arrays back on
    # the host), with the global parameters viewed on this sub-mesh; train steps run on the global mesh.
    try:
        local_mesh = sharding.process_local_mesh(mesh)
    except sharding.ShardingError as e:
        raise ConfigError(f"multi-host rollouts: {e}") from e
    model_cfg, params = load_model(config, len(tokenizer), mesh, jax.random.key(0) if rng is None else rng)
    refiner = MetaRefiner(model_cfg, tokenizer, config.refiner, config.rollout.max_turns)
    engine = RolloutEngine(model_cfg, tokenizer, train_retriever, config.rollout, refiner, mesh=local_mesh)
    eval_engine = RolloutEngine(model_cfg, tokenizer, retriever, config.rollout, refiner, mesh=local_mesh)
    return Components(world=world, train_examples=train_examples, eval_examples=eval_examples, retriever=retriever,
                      train_retriever=train_retriever, tokenizer=tokenizer, mesh=mesh, local_mesh=local_mesh,
                      model_cfg=model_cfg, params=params, engine=engine, eval_engine=eval_engine)


def load_tokenizer(config: ml_collections.ConfigDict, world, workdir: str):
    """`model.tokenizer`'s tokenizer, or with "world" a BPE trained on the world (once per workdir)."""
    path = config.model.tokenizer
    if path != "world":
        return tok_lib.load_tokenizer(path)
    from searchr2_jax.data.world_tokenizer import train_world_tokenizer

    out = os.path.join(workdir, "tokenizer")
    if os.path.exists(os.path.join(out, "tokenizer.json")):
        return tok_lib.load_tokenizer(out)
    if jax.process_count() == 1:
        return train_world_tokenizer(world, vocab_size=config.model.vocab_size, out_dir=out)
    # Multi-host (a shared workdir): process 0 trains and writes it, every process then loads the same files.
    if jax.process_index() == 0:
        train_world_tokenizer(world, vocab_size=config.model.vocab_size, out_dir=out)
    multihost_utils.sync_global_devices("searchr2_jax world tokenizer")
    return tok_lib.load_tokenizer(out)


def run_settings(config: ml_collections.ConfigDict) -> dict:
    """The DecoderConfig fields that say how the model runs, not what it is: `model.dtype`, `remat`, `logits_chunk`,
    `attention_block`, and a value head where the algorithm is PPO."""
    m = config.model
    return dict(dtype=m.dtype, remat=m.remat, logits_chunk=m.logits_chunk, attention_block=m.attention_block,
                value_head=config.rl.algo == "ppo")


def load_model(config: ml_collections.ConfigDict, vocab_size: int, mesh, rng: jax.Array):
    """(DecoderConfig, params): `model.hf_path`'s weights placed on `mesh`, or a from-scratch model sized by
    `model.init` whose embedding matches the tokenizer's `vocab_size` exactly (never resized later)."""
    m = config.model
    if m.hf_path:
        cfg = DecoderConfig.from_pretrained(m.hf_path, **run_settings(config))
        return hf_io.load_params(m.hf_path, cfg, shardings=sharding.param_shardings(cfg, mesh))
    cfg = DecoderConfig(vocab_size=vocab_size, tie_word_embeddings=True, **run_settings(config), **dict(m.init))
    return cfg, decoder.init_params(cfg, rng)


def build_judge(config: ml_collections.ConfigDict, mesh) -> judges.Judge:
    """`reward.judge`: the LLM judge loads its model onto `mesh` (a process's rollout mesh)."""
    r = config.reward
    if r.judge == "llm" and not r.outcome_only and "generate" not in r.judge_kwargs:
        return judges.LLMJudge.from_pretrained(r.judge_model, r.judge_max_new_tokens, mesh=mesh)
    return judges.make_judge(r.judge, **dict(r.judge_kwargs))
