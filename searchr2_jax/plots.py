"""PNG plots of training runs from their `metrics.jsonl`: one panel per figure, one line per group of runs (the mean
over the group's runs, with a band from their min to max). Matplotlib's Agg backend: no display needed."""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np

from searchr2_jax.jsonl import read_jsonl

# (metrics.jsonl key, panel title). "response_tokens" is derived: generated tokens per trajectory.
RUN_PANELS = (
    ("reward/mean", "reward"), ("reward/em", "train EM"), ("eval/em", "eval EM (greedy)"),
    ("rollout/searches_per_trajectory", "searches per trajectory"), ("rollout/revision_rate", "revision rate"),
    ("response_tokens", "generated tokens per trajectory"), ("train/kl", "KL to reference"),
    ("train/entropy", "entropy"), ("train/grad_norm", "grad norm"), ("perf/step_time_s", "step time (s)"))


def series(rows: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `key` over the rows that hold it."""
    if key == "response_tokens":
        pts = [(r["step"], r["rollout/tokens_generated"] / max(r["rollout/trajectories"], 1)) for r in rows
               if "rollout/tokens_generated" in r]
    else:
        pts = [(r["step"], r[key]) for r in rows if key in r]
    if not pts:
        return np.zeros(0), np.zeros(0)
    x, y = np.asarray(pts, np.float64).T
    return x, y


def plot_groups(groups: Mapping[str, Sequence[Sequence[dict]]], panels: Sequence[tuple[str, str]], path: str,
                title: str = "", xlabel: str = "step", cols: int = 3) -> list[str]:
    """Draws `panels` for every group (label -> the metrics rows of each of its runs) into one PNG at `path`.
    Runs of a group are cut to their common steps. Returns the titles of the panels that had data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.4 * cols, 3.5 * rows_n), squeeze=False)
    drawn = []
    for ax, (key, label) in zip(axes.flat, panels):
        for name, runs in groups.items():
            curves = [c for c in (series(rows, key) for rows in runs) if len(c[0])]
            if not curves:
                continue
            common = sorted(set.intersection(*(set(c[0].tolist()) for c in curves)))
            if not common:
                continue
            at = [dict(zip(c[0].tolist(), c[1].tolist())) for c in curves]
            ys = np.asarray([[a[s] for s in common] for a in at])
            (line,) = ax.plot(common, ys.mean(axis=0), label=name, marker="." if len(common) < 12 else None)
            if len(curves) > 1:
                ax.fill_between(common, ys.min(axis=0), ys.max(axis=0), color=line.get_color(), alpha=0.2)
        if ax.lines:
            drawn.append(label)
            ax.set_title(label)
            ax.set_xlabel(xlabel)
            ax.legend(fontsize=7)
        else:
            ax.set_visible(False)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return drawn


def run_label(workdir: str, parts: int = 1) -> str:
    """A run's label: its config's variant (from the `config.json` the trainer writes) and the last `parts`
    components of its folder."""
    name = "/".join(os.path.normpath(workdir).split(os.sep)[-parts:])
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            variant = json.load(f).get("variant")
    except (OSError, ValueError):
        variant = None
    return f"{variant}: {name}" if variant and variant != name else name


def plot_workdirs(workdirs: Sequence[str], path: str) -> list[str]:
    """Every figure of RUN_PANELS for each training workdir (its `metrics.jsonl`), one line per run."""
    labels = [run_label(w) for w in workdirs]
    if len(set(labels)) < len(labels):  # e.g. arms/search_r1/seed0 and arms/search_r2/seed0
        labels = [run_label(w, parts=2) for w in workdirs]
    groups = {}
    for w, label in zip(workdirs, labels):
        f = os.path.join(w, "metrics.jsonl")
        if not os.path.exists(f):
            raise FileNotFoundError(f"{f}: no metrics.jsonl in this workdir (is it a training run's --workdir?)")
        groups[label if label not in groups else f"{label} ({w})"] = [read_jsonl(f)]
    return plot_groups(groups, RUN_PANELS, path, title=f"{len(workdirs)} run(s)")
