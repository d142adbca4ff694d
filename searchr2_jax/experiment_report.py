"""The learning experiment's figures and report (`experiment.run_experiment` calls them once every unit is done):
per-arm test figures with bootstrap intervals, each RL arm's paired gain over the warm start, Search-R2's difference
from Search-R1 over questions and seeds, the issue's goals, and the outputs summary.json (its figures), table.md and
curves.png.
"""

from __future__ import annotations

import os
from typing import Sequence

import ml_collections
import numpy as np

from searchr2_jax.eval.stats import arm_difference, bootstrap_ci, paired_gain
from searchr2_jax.experiment import RL_ARMS

HOPS = (1, 2, 3)
CURVES = (  # (metrics.jsonl key, axis label); response length is computed from two keys
    ("eval/em", "dev EM (greedy)"), ("reward/mean", "reward"), ("rollout/searches_per_trajectory", "searches"),
    ("rollout/revision_rate", "revision rate"), ("response_tokens", "generated tokens"), ("train/kl", "KL to ref"))
DEVIATIONS = (
    "The warm start is supervised on scripted demonstrations, and on refiner labels (the first flawed step of "
    "scripted flawed demonstrations, 0 for sound ones); the paper starts RL from the backbone with no refiner "
    "supervision. Its first steps are copy drills, and every demonstration's names are respelled as fresh ones "
    "(sft.copy_steps, sft.fresh_names): a from-scratch model has to learn to copy what a pretrained one can. "
    "Every arm shares this warm start, so the refiner labels reach the search_r1 arm's weights too, where they "
    "are never used.",
    "A 2-layer from-scratch model on a synthetic world, not Qwen2.5 on Wikipedia: the figures test the training "
    "loop, not the paper's numbers.",
)


# ------------------------------------------------------------------------------------------------ statistics


def arm_figures(name: str, runs: Sequence[Sequence[dict]], n_boot: int, extra: dict | None = None) -> dict:
    """`name_em`, its per-seed list, interval, EM by hop and the other means, from per-seed test records."""
    em = np.asarray([[r["em"] for r in recs] for recs in runs], np.float64)
    hops = np.asarray([r["hops"] for r in runs[0]])
    out = {f"{name}_em": float(em.mean()), f"{name}_em_seeds": [float(x) for x in em.mean(axis=1)],
           f"{name}_em_ci95": list(bootstrap_ci(em, n_boot)),
           f"{name}_em_by_hops": {str(h): float(em[:, hops == h].mean()) for h in HOPS if (hops == h).any()}}
    for key in ("f1", "searches", "response_tokens"):
        out[f"{name}_{key}"] = float(np.mean([[r[key] for r in recs] for recs in runs]))
    out[f"{name}_questions"] = int(em.shape[1])
    out.update(extra or {})
    return out


def goals(s: dict) -> dict:
    """The issue's goals on the summary's figures: each with its value, its target and whether it is met."""
    out = {}

    def goal(name, value, target, met):
        out[name] = dict(value=round(float(value), 4), target=round(float(target), 4), met=bool(met))

    if "search_r1_em" in s and "warm_start_em" in s:
        goal("rl_works", s["search_r1_em"], s["warm_start_em"] + 0.10,
             s["search_r1_em"] >= s["warm_start_em"] + 0.10)
    for arm in RL_ARMS:  # the README's main job: the gain's paired interval lies above 0
        if f"{arm}_gain_ci95" in s:
            goal(f"{arm}_gain_beyond_interval", s[f"{arm}_gain_ci95"][0], 0.0, s[f"{arm}_gain_ci95"][0] > 0)
    if "search_r1_em" in s and "direct_em" in s:
        goal("search_beats_direct_3x", s["search_r1_em"], 3 * s["direct_em"], s["search_r1_em"] >= 3 * s["direct_em"])
    if "search_r1_em_by_hops" in s and "rag_em_by_hops" in s:
        multi = lambda k: np.mean([s[k].get(h, 0.0) for h in ("2", "3")])  # noqa: E731
        goal("search_beats_rag_multihop", multi("search_r1_em_by_hops"), multi("rag_em_by_hops"),
             multi("search_r1_em_by_hops") > multi("rag_em_by_hops"))
    if "search_r2_em" in s and "search_r1_em" in s:
        goal("search_r2_vs_r1_1p10", s["search_r2_em"], 1.10 * s["search_r1_em"],
             s["search_r2_em"] >= 1.10 * s["search_r1_em"])
    if "search_r2_minus_r1_ci95" in s:  # ahead beyond the noise of questions and seeds
        goal("search_r2_above_r1_beyond_interval", s["search_r2_minus_r1_ci95"][0], 0.0,
             s["search_r2_minus_r1_ci95"][0] > 0)
    return out


# ------------------------------------------------------------------------------------------------ report


def plot_curves(out_dir: str, arms: Sequence[str], seeds: Sequence[int], path: str,
                warm_dev_em: float | None = None) -> None:
    """One panel per CURVES entry: a line per arm (mean over seeds) with a band from the seeds' min to max. An arm
    runs with sft.steps = 0, so its step is the RL step; `warm_dev_em` (the warm start's greedy EM on the same dev
    questions) is the dev-EM curve's step 0."""
    from searchr2_jax.jsonl import read_jsonl
    from searchr2_jax.plots import plot_groups

    start = [] if warm_dev_em is None else [{"step": 0, "eval/em": warm_dev_em}]
    groups = {}
    for arm in arms:
        files = [os.path.join(out_dir, "arms", arm, f"seed{s}", "metrics.jsonl") for s in seeds]
        groups[arm] = [start + read_jsonl(f) for f in files if os.path.exists(f)]
    plot_groups(groups, CURVES, path, title=f"learning curves: mean over seeds {list(seeds)}, band = min..max",
                xlabel="RL step")


def format_table(s: dict, names: Sequence[str]) -> str:
    lines = ["| method | EM (95% CI) | 1-hop | 2-hop | 3-hop | F1 | searches | tokens | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        if f"{n}_em" not in s:
            continue
        lo, hi = s[f"{n}_em_ci95"]
        hop = [s[f"{n}_em_by_hops"].get(str(h)) for h in HOPS]
        seeds = s[f"{n}_em_seeds"]
        lines.append(f"| {n} | {s[f'{n}_em']:.3f} ({lo:.3f}-{hi:.3f}) | "
                     + " | ".join("-" if v is None else f"{v:.3f}" for v in hop)
                     + f" | {s[f'{n}_f1']:.3f} | {s[f'{n}_searches']:.2f} | {s[f'{n}_response_tokens']:.0f} | "
                     + (", ".join(f"{x:.3f}" for x in seeds) if len(seeds) > 1 else "-") + " |")
    return "\n".join(lines)


def settings(config: ml_collections.ConfigDict, warm_dir: str) -> dict:
    c = config
    return dict(world=dict(c.data.world), test_split=c.experiment.test_split,
                test_examples=c.experiment.test_examples, warm_start=os.path.basename(warm_dir),
                model=dict(c.model.init), vocab_size=c.model.vocab_size, sft=c.sft.to_dict(),
                retrieval=dict(backend=c.retrieval.backend, k=c.rollout.topk,
                               train_corpus="the training region's passages", eval_corpus="the whole world"),
                rollout={k: c.rollout[k] for k in ("max_turns", "max_prompt_tokens", "max_response_tokens",
                                                   "max_obs_tokens", "temperature")},
                refiner=c.refiner.to_dict(), rl=c.rl.to_dict(), optim=c.optim.to_dict(),
                train={k: c.train[k] for k in ("steps", "prompts_per_step", "micro_batches", "eval_every")},
                reward_judge=c.reward.judge, decoding="greedy, Actor only (refiner off) for every figure on test",
                arms=list(c.experiment.arms), seeds=list(c.experiment.seeds))


def summarize(config: ml_collections.ConfigDict, warm_dir: str, warm_s: float, base: dict, headroom: dict,
              arms: dict[str, list[dict]]) -> dict:
    """summary.json's figures from the units' results: `base` (`run_baselines`), `headroom` (`rl_headroom`) and
    `arms` ({arm: `run_arm` results, one per seed}). The caller adds `wall_s_this_invocation`."""
    e = config.experiment
    n_boot = e.bootstrap
    s: dict = {}
    for name, recs in base["records"].items():
        s.update(arm_figures(name, [recs], n_boot, {f"{name}_wall_s": base["wall_s"][name]}))
    s["warm_start_wall_s"] = warm_s + base["wall_s"]["warm_start"]
    s["warm_start_sft_steps"] = int(config.sft.steps)
    s.update(base.get("refiner_quality", {}))
    s.update(headroom)
    em = {arm: [[r["em"] for r in res["records"]] for res in results] for arm, results in arms.items()}  # [seeds, q]
    for arm, results in arms.items():
        s.update(arm_figures(arm, [r["records"] for r in results], n_boot, {
            f"{arm}_wall_s": float(np.mean([r["train_wall_s"] + r["eval_wall_s"] for r in results])),
            f"{arm}_wall_s_seeds": [r["train_wall_s"] + r["eval_wall_s"] for r in results],
            f"{arm}_rl_steps": results[0]["rl_steps"],
            f"{arm}_devices": [r.get("device", "unrecorded") for r in results]}))
        gain, lo, hi = paired_gain(em[arm], [r["em"] for r in base["records"]["warm_start"]], n_boot)
        s[f"{arm}_gain"], s[f"{arm}_gain_ci95"] = gain, [lo, hi]
        diag = {k: [r["final_metrics"][k] for r in results if k in r["final_metrics"]]
                for k in results[0]["final_metrics"] if k.startswith("diag/")}
        if diag:
            s[f"{arm}_diagnostics"] = {k: float(np.mean(v)) for k, v in diag.items()}
    if "search_r1" in em and "search_r2" in em:
        diff, lo, hi = arm_difference(em["search_r2"], em["search_r1"], n_boot)
        s["search_r2_minus_r1"], s["search_r2_minus_r1_ci95"] = diff, [lo, hi]
    s["goals"] = goals(s)
    s["settings"] = settings(config, warm_dir)
    s["deviations"] = list(DEVIATIONS)
    # The units' own times, so that a run continued over several invocations still reports its whole cost.
    s["wall_s"] = (warm_s + sum(base["wall_s"].values()) + headroom.get("headroom_wall_s", 0.0)
                   + sum(r["train_wall_s"] + r["eval_wall_s"] for results in arms.values() for r in results))
    return s


def write_table(path: str, s: dict, config: ml_collections.ConfigDict) -> str:
    """Writes table.md (the methods' table, each arm's gain and the goals); returns the table."""
    e = config.experiment
    names = ["majority", *[b for b in e.baselines if b != "majority"], "warm_start", *e.arms]
    table = format_table(s, names)
    with open(path, "w") as f:
        f.write(f"Held-out test questions: {s['warm_start_questions']} ({e.test_split} region of the world), greedy, "
                f"Actor only; RL arms: mean over seeds {list(e.seeds)}, {config.train.steps} RL steps each.\n\n")
        f.write(table + "\n\n")
        for arm in e.arms:
            lo, hi = s[f"{arm}_gain_ci95"]
            f.write(f"- {arm} gain over the warm start: {s[f'{arm}_gain']:+.3f} (paired 95% CI {lo:+.3f} to "
                    f"{hi:+.3f})\n")
        if "search_r2_minus_r1" in s:
            lo, hi = s["search_r2_minus_r1_ci95"]
            f.write(f"- search_r2 minus search_r1: {s['search_r2_minus_r1']:+.3f} (95% CI {lo:+.3f} to {hi:+.3f}, "
                    "resampling questions and each arm's seeds)\n")
        for name, g in s["goals"].items():
            f.write(f"- {name}: {g['value']:.3f} against {g['target']:.3f}: {'met' if g['met'] else 'NOT met'}\n")
    return table
