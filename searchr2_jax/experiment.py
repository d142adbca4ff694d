"""The learning experiment: one warm start shared by every arm, the baselines, RL arms over seeds, a greedy Actor-only
evaluation on held-out test questions with bootstrap intervals, and learning curves.

    run_experiment(config, out_dir)     # config: configs/learning.py (a trainer config plus `experiment`)

Every unit of work writes its result file last, so a re-run skips what is done and an interrupted arm resumes from
its latest checkpoint:

    out_dir/warm_start-<hash>/          the warm start's training workdir; hf/ holds the model and tokenizer
    out_dir/baselines.json              warm_start, majority, direct and rag: per-question records on test
    out_dir/arms/<arm>/seed<s>/         an RL arm's training workdir (metrics.jsonl, checkpoints/) and test.json
    out_dir/summary.json, table.md, curves.png

The warm start is cached by a hash of the settings it depends on (world, model, tokenizer, SFT, refiner prompt,
retrieval), so arms differ only in what RL does; `experiment.warm_start` names a folder built earlier instead (the
README's main job ships one), used only when its hash matches. Each arm's gain over the warm start comes with a
paired interval (the same questions resampled together). Figures on test are never used to choose anything.
The figures, table and curves are computed in `experiment_report.py`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from searchr2_jax.config import VARIANTS, ConfigError, apply_variant, validate_config

RL_ARMS = (*VARIANTS, "ppo")  # the paper's Table 3 rows, rejection sampling, and PPO (search_r1 with a critic)

# ------------------------------------------------------------------------------------------------ configs


def warm_start_key(config: ml_collections.ConfigDict) -> str:
    """A hash of everything the warm start depends on; arms with the same key share one warm start."""
    c = config
    # The query blocks of the attention change only the order of float sums, not what is computed.
    model = {k: v for k, v in c.model.to_dict().items() if k != "attention_block"}
    parts = dict(seed=c.seed, world=c.data.world, train_split=c.data.train_split, model=model,
                 sft=c.sft.to_dict(), refiner_prompt=c.refiner.prompt, retrieval=c.retrieval.to_dict(),
                 topk=c.rollout.topk, micro_batches=c.train.micro_batches)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def arm_config(config: ml_collections.ConfigDict, arm: str, seed: int, warm_dir: str) -> ml_collections.ConfigDict:
    """The trainer config of one RL arm: the experiment's settings, RL only, from the warm start's weights."""
    if arm not in RL_ARMS:
        raise ConfigError(f"experiment.arms: {arm!r} is not one of {RL_ARMS}")
    c = apply_variant(copy.deepcopy(config), "search_r1" if arm == "ppo" else arm)
    if arm == "ppo":
        c.rl.algo = "ppo"
    c.seed = seed
    c.model.hf_path = os.path.join(warm_dir, "hf")
    c.model.tokenizer = c.model.hf_path
    c.sft.steps = 0
    return c


def _warm_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    c = copy.deepcopy(config)
    c.train.steps = 0
    return c


def _eval_config(config: ml_collections.ConfigDict, warm_dir: str) -> ml_collections.ConfigDict:
    c = arm_config(config, "search_r1", config.seed, warm_dir)
    c.train.steps = 0
    return c


# ------------------------------------------------------------------------------------------------ units of work


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)  # a file that exists is a finished unit


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _release(trainer=None) -> None:
    """Ends a unit: closes its trainer's checkpointer and metric writer (a second close is harmless) and drops the
    compiled programs, so the next unit of the same process starts without the last one's."""
    if trainer is not None:
        trainer.ckpt.close()
        trainer.writer.close()
    jax.clear_caches()


def _warm_start_parts(config: ml_collections.ConfigDict, warm_dir: str, workdir: str):
    """(components, evaluation key) of the warm start as an evaluated agent: what a Trainer of `_eval_config` would
    build and draw, without its optimizer or train steps."""
    from searchr2_jax import components

    c = _eval_config(config, warm_dir)
    validate_config(c)
    return components.build(c, workdir), components.run_keys(c.seed).eval


def shipped_warm_start(path: str, key: str) -> str:
    """A warm start built earlier (by `build_warm_start`, then copied) instead of trained here: its
    warm_start.json must name the same settings key as this config, or every figure would be measured against a
    model trained on other settings."""
    done = os.path.join(path, "warm_start.json")
    if not os.path.exists(done) or not os.path.isdir(os.path.join(path, "hf")):
        raise ConfigError(f"experiment.warm_start={path!r}: expected {done} and {os.path.join(path, 'hf')}/, as "
                          "build_warm_start writes them")
    built = _read_json(done).get("key")
    if built != key:
        raise ConfigError(f"experiment.warm_start: {done} was built for settings {built}, this config's are {key}: "
                          "its world, model, SFT or retrieval settings differ. Unset experiment.warm_start to "
                          "train a warm start for these settings.")
    return path


def build_warm_start(config: ml_collections.ConfigDict, out_dir: str) -> tuple[str, float]:
    """Trains (or resumes, or reuses) the warm start; returns its directory and its training wall time."""
    from searchr2_jax.models import hf_io
    from searchr2_jax.trainer import Trainer

    key = warm_start_key(config)
    if config.experiment.get("warm_start"):
        return shipped_warm_start(config.experiment.warm_start, key), 0.0
    wdir = os.path.join(out_dir, f"warm_start-{key}")
    done = os.path.join(wdir, "warm_start.json")
    if os.path.exists(done):
        return wdir, _read_json(done)["wall_s"]
    t0 = time.time()
    trainer = Trainer(_warm_config(config), wdir)
    trainer.run()
    hf = os.path.join(wdir, "hf")
    hf_io.save_params(hf, trainer.model_cfg, jax.device_get(trainer.state.params))
    trainer.tokenizer.save_pretrained(hf)
    wall = time.time() - t0
    _release(trainer)
    _write_json(done, dict(wall_s=wall, key=warm_start_key(config), sft_steps=config.sft.steps))
    return wdir, wall


def check_prompts_fit(config: ml_collections.ConfigDict, tokenizer, examples) -> None:
    """Raises ConfigError when a question's prompt exceeds `rollout.max_prompt_tokens`: the engine would mark those
    rows `prompt_too_long`, and every figure of the experiment would silently be 0."""
    from searchr2_jax.eval.evaluate import make_jobs

    longest = max(len(j.prompt_ids) for j in make_jobs(examples, tokenizer, config.model.chat))
    if longest > config.rollout.max_prompt_tokens:
        raise ConfigError(f"rollout.max_prompt_tokens={config.rollout.max_prompt_tokens}: the longest prompt of "
                          f"the experiment's questions has {longest} tokens")


def refiner_quality(parts, config, params, examples, seed: int = 0, flawed_fraction: float = 0.5) -> dict:
    """The refiner against the world's known first flawed step, on scripted demonstrations of `examples` (half of
    them with one flaw): precision and recall of "revise", and how often a flagged flawed demo gets the exact step."""
    from searchr2_jax.data.demos import DemoWriter
    from searchr2_jax.rollout.refiner import decide
    from searchr2_jax.text.tokenizer import tokenize_segments

    refiner = parts.engine.refiner
    writer = DemoWriter(parts.world, k=config.rollout.topk, retriever=parts.retriever)
    demos = writer.demos(examples, seed=seed, flawed_fraction=flawed_fraction, max_steps=config.rollout.max_turns)
    demos = [d for d in demos if len(d.steps) <= config.rollout.max_turns]
    prompts = [list(tokenize_segments(parts.tokenizer, d.refiner_segments(prompt=refiner.config.prompt)[:-1])[0])
               for d in demos]
    steps = [len(d.steps) for d in demos]
    scores = refiner.score(params, prompts, steps, batch=8)
    choice = np.asarray([decide(s, t, refiner.config.margin) for s, t in zip(scores, steps)])
    label = np.asarray([d.flawed_step for d in demos])
    flagged, flawed = choice > 0, label > 0
    tp = float(np.sum(flagged & flawed))
    return {"refiner_precision": tp / max(flagged.sum(), 1), "refiner_recall": tp / max(flawed.sum(), 1),
            "refiner_exact_step": float(np.sum(flagged & flawed & (choice == label))) / max(flawed.sum(), 1),
            "refiner_revise_rate": float(flagged.mean()), "refiner_demos": len(demos),
            "refiner_flawed_share": float(flawed.mean())}


def rl_headroom(config: ml_collections.ConfigDict, out_dir: str, warm_dir: str) -> dict:
    """What GRPO can learn from, on dev (never test): the warm start's greedy EM, and its sampled groups (the RL
    arms' `rl.group_size` at `rollout.temperature`) on the questions greedy gets right and on those it gets wrong.

    Greedy EM moves only where greedy fails and a group holds a success: `headroom_pass_at_group` is the share of
    greedy failures with one, and `headroom_sampled_em_on_failures` how often a sample succeeds there. Failures the
    group also fails give no advantage; successes on questions greedy already answers only sharpen sampling."""
    from searchr2_jax.eval import evaluate as eval_lib

    if not config.experiment.get("headroom", True):
        return {}
    path = os.path.join(out_dir, "headroom.json")
    if os.path.exists(path):
        return _read_json(path)
    t0 = time.time()
    parts, eval_rng = _warm_start_parts(config, warm_dir, os.path.join(out_dir, "headroom_eval"))
    dev = parts.eval_examples
    params, n = parts.params, config.rl.group_size
    greedy = np.asarray([r["em"] for r in eval_lib.records(parts.eval_engine, params, dev,
                                                           jax.random.fold_in(eval_rng, 0))])
    sampled = []
    for i in range(0, len(dev), config.experiment.eval_batch_size):
        chunk = dev[i: i + config.experiment.eval_batch_size]
        jobs = eval_lib.make_jobs(chunk, parts.tokenizer, config.model.chat, n,
                                  [j // n for j in range(n * len(chunk))])
        run = parts.eval_engine.run(params, jobs, jax.random.fold_in(eval_rng, 1 + i), use_refiner=False)
        sampled.append(eval_lib.score(run.trajectories)[0].reshape(len(chunk), n))
    sampled = np.concatenate(sampled)
    fail = greedy < 1
    out = {"headroom_dev_questions": len(dev), "headroom_group_size": n,
           "headroom_temperature": float(config.rollout.temperature),
           "headroom_greedy_em": float(greedy.mean()), "headroom_sampled_em": float(sampled.mean()),
           "headroom_pass_at_group": float((sampled[fail].max(axis=1) > 0).mean()) if fail.any() else 0.0,
           "headroom_sampled_em_on_failures": float(sampled[fail].mean()) if fail.any() else 0.0,
           "headroom_sampled_em_on_successes": float(sampled[~fail].mean()) if (~fail).any() else 0.0,
           "headroom_wall_s": time.time() - t0}
    _release()
    _write_json(path, out)
    return out


def run_baselines(config: ml_collections.ConfigDict, out_dir: str, warm_dir: str) -> dict:
    """The warm start as an agent, and the baselines, on the test questions; with the refiner's quality on dev."""
    from searchr2_jax.eval import evaluate as eval_lib
    from searchr2_jax.rollout.rollout import RolloutEngine

    path = os.path.join(out_dir, "baselines.json")
    if os.path.exists(path):
        return _read_json(path)
    e = config.experiment
    parts, eval_rng = _warm_start_parts(config, warm_dir, os.path.join(out_dir, "warm_start_eval"))
    test = parts.world.splits[e.test_split][: e.test_examples]
    check_prompts_fit(config, parts.tokenizer, [*test, *parts.train_examples])
    params = parts.params
    rng = jax.random.fold_in(eval_rng, 0)
    out = {"records": {}, "wall_s": {}}
    t0 = time.time()
    out["records"]["warm_start"] = eval_lib.records(parts.eval_engine, params, test, rng, config.model.chat,
                                                    e.eval_batch_size)
    out["wall_s"]["warm_start"] = time.time() - t0
    # One answer turn after a forced prefix (up to one information block): the prompt budget grows by it.
    ro = copy.deepcopy(config.rollout)
    ro.max_turns = 1
    ro.max_prompt_tokens = config.rollout.max_prompt_tokens + config.rollout.max_obs_tokens + 64
    engine = RolloutEngine(parts.model_cfg, parts.tokenizer, parts.retriever, ro, None)
    for method in e.baselines:
        t0 = time.time()
        if method == "majority":
            out["records"][method] = eval_lib.majority_records(parts.world.splits[config.data.train_split], test)
        else:
            options = eval_lib.BaselineOptions(retriever=parts.retriever, k=config.rollout.topk,
                                               chat=config.model.chat)
            out["records"][method] = eval_lib.baseline_records(engine, params, test, method, rng, options,
                                                               e.eval_batch_size)
        out["wall_s"][method] = time.time() - t0
    if any(arm_config(config, arm, config.seed, warm_dir).refiner.enabled for arm in e.arms):
        dev = parts.world.splits[config.data.eval_split][: max(config.data.eval_examples, 64)]
        out["refiner_quality"] = refiner_quality(parts, config, params, dev)
    _release()
    _write_json(path, out)
    return out


def run_arm(config: ml_collections.ConfigDict, out_dir: str, warm_dir: str, arm: str, seed: int) -> dict:
    """Trains one RL arm (resuming from its checkpoints) and evaluates it on test; the result file is written last."""
    from searchr2_jax.eval import evaluate as eval_lib
    from searchr2_jax.trainer import Trainer

    wdir = os.path.join(out_dir, "arms", arm, f"seed{seed}")
    path = os.path.join(wdir, "test.json")
    if os.path.exists(path):
        return _read_json(path)
    e = config.experiment
    c = arm_config(config, arm, seed, warm_dir)
    t0 = time.time()
    trainer = Trainer(c, wdir)
    last = trainer.run()
    train_s = time.time() - t0
    test = trainer.world.splits[e.test_split][: e.test_examples]
    t0 = time.time()
    recs = eval_lib.records(trainer.eval_engine, trainer.state.params, test,
                            jax.random.fold_in(trainer.eval_rng, 0), config.model.chat, e.eval_batch_size)
    result = dict(arm=arm, seed=seed, records=recs, train_wall_s=train_s, eval_wall_s=time.time() - t0,
                  device=f"{jax.devices()[0].device_kind} x {jax.device_count()}",
                  rl_steps=int(c.train.steps), final_metrics={k: float(v) for k, v in last.items()
                                                              if np.isscalar(v)})
    _release(trainer)
    _write_json(path, result)
    return result


# ------------------------------------------------------------------------------------------------ experiment


def run_experiment(config: ml_collections.ConfigDict, out_dir: str) -> dict:
    """Runs (or continues) the whole experiment and writes summary.json, table.md and curves.png."""
    from tqdm import tqdm

    from searchr2_jax import experiment_report as report

    e = config.experiment
    for arm in e.arms:
        if arm not in RL_ARMS:
            raise ConfigError(f"experiment.arms: {arm!r} is not one of {RL_ARMS}")
    os.makedirs(out_dir, exist_ok=True)
    units = 2 + bool(e.get("headroom", True)) + len(e.arms) * len(e.seeds)  # warm start, baselines, headroom, arms
    bar = tqdm(total=units, desc="experiment", dynamic_ncols=True, position=0)
    t_start = time.time()

    bar.set_postfix_str("warm start")
    warm_dir, warm_s = build_warm_start(config, out_dir)
    bar.update(1)
    bar.set_postfix_str("baselines")
    base = run_baselines(config, out_dir, warm_dir)
    bar.update(1)
    bar.set_postfix_str("RL headroom on dev")
    headroom = rl_headroom(config, out_dir, warm_dir)
    bar.update(bool(headroom))
    arms = {}
    for arm in e.arms:
        for seed in e.seeds:
            bar.set_postfix_str(f"{arm} seed {seed}")
            arms.setdefault(arm, []).append(run_arm(config, out_dir, warm_dir, arm, seed))
            bar.update(1)
    bar.close()

    s = report.summarize(config, warm_dir, warm_s, base, headroom, arms)
    s["wall_s_this_invocation"] = time.time() - t_start
    table = report.write_table(os.path.join(out_dir, "table.md"), s, config)
    report.plot_curves(out_dir, e.arms, e.seeds, os.path.join(out_dir, "curves.png"),
                       headroom.get("headroom_greedy_em"))
    _write_json(os.path.join(out_dir, "summary.json"), s)
    logging.info("experiment done in %.0f s\n%s", s["wall_s"], table)
    return s
