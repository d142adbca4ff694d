"""The paper's Table 2 from per-question records: methods as rows, datasets as columns, every figure with its 95%
bootstrap interval, and the settings that make two tables comparable.

    table = build_table({"direct": recs, "rag": recs, "agent": recs}, settings)
    write_table(table, out_dir)            # table.md, table.csv, table.json, table.png
    problems = incomparable(a, b)          # why two tables' EM cannot be compared ([] when it can)

Columns follow the paper's order (NQ, TriviaQA, PopQA, HotpotQA, 2Wiki, Musique, Bamboogle) for the seven
Search-R1 sets, whatever their file names call them; any other data source gets a column of its own after them.
`Avg` is the simple mean of the dataset columns, as the paper computes it; its interval resamples questions within
each dataset.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from typing import Mapping, Sequence

import numpy as np

from searchr2_jax.eval.stats import bootstrap_ci

PAPER_COLUMNS = (("nq", "NQ"), ("triviaqa", "TriviaQA"), ("popqa", "PopQA"), ("hotpotqa", "HotpotQA"),
                 ("2wikimultihopqa", "2Wiki"), ("musique", "Musique"), ("bamboogle", "Bamboogle"))
# Other spellings of the seven in FlashRAG folders, Search-R1 parquet `data_source` values and HF dataset names.
ALIASES = {"natural_questions": "nq", "nq_open": "nq", "trivia_qa": "triviaqa", "trivia": "triviaqa",
           "tqa": "triviaqa", "hotpot_qa": "hotpotqa", "hotpot": "hotpotqa", "2wiki": "2wikimultihopqa",
           "2wikimultihop": "2wikimultihopqa", "2wikimqa": "2wikimultihopqa", "wikimultihopqa": "2wikimultihopqa",
           "musique_ans": "musique"}
FIGURES = (("em", "EM"), ("acc", "Acc (a gold answer inside the prediction)"), ("f1", "F1"),
           ("searches", "searches / question"), ("response_tokens", "response tokens / question"))
AVG = "Avg"
MATCHING = ("EM: a prediction is right when, normalized as Search-R1 does (lowercase, ASCII punctuation dropped, "
            "articles a/an/the dropped, whitespace collapsed), it equals any normalized gold answer; F1 is SQuAD's "
            "token F1 against the best gold answer; Acc is FlashRAG's: a normalized gold answer appears inside the "
            "normalized prediction")
# Settings that change EM when they differ: two tables that differ in any of them are not compared. The model,
# the checkpoint and wall times may differ (they are what a comparison is for).
EM_SETTINGS = ("retriever", "k", "corpus", "encoder", "max_turns", "max_prompt_tokens", "max_response_tokens",
               "max_obs_tokens", "baseline_new_tokens", "decoding", "prompt_style", "shots", "chat", "matching",
               "questions")


def column_of(source: str) -> tuple[str, str]:
    """(key, label) of a data source's column: a paper column for the seven sets, else the name itself."""
    key = ALIASES.get(source.lower(), source.lower())
    for k, label in PAPER_COLUMNS:
        if key == k:
            return k, label
    return key, source


def questions_fingerprint(records: Sequence[dict]) -> dict:
    """{column label: "n:sha256[:16]" of its sorted question ids}: two tables over other questions differ here."""
    ids: dict[str, list[str]] = {}
    for r in records:
        ids.setdefault(column_of(r["source"])[1], []).append(str(r["id"]))
    return {col: f"{len(v)}:" + hashlib.sha256("\n".join(sorted(v)).encode()).hexdigest()[:16]
            for col, v in sorted(ids.items())}


def _columns(results: Mapping[str, Sequence[dict]]) -> list[str]:
    seen = {column_of(r["source"]) for recs in results.values() for r in recs}
    paper = [label for k, label in PAPER_COLUMNS if (k, label) in seen]
    return paper + sorted(label for k, label in seen if label not in paper)


def _stratified_mean_ci(groups: Sequence[np.ndarray], n: int, seed: int) -> tuple[float, float]:
    """95% interval of the mean of group means, resampling within each group."""
    if not groups:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = np.zeros(n)
    for g in groups:
        means += g[rng.integers(0, len(g), size=(n, len(g)))].mean(axis=1)
    means /= len(groups)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def method_row(records: Sequence[dict], columns: Sequence[str], n_boot: int = 1000, seed: int = 0) -> dict:
    """{column: {"n", fig, fig_ci for each figure}} for one method, plus `Avg` over the dataset columns."""
    by_col: dict[str, list[dict]] = {}
    for r in records:
        by_col.setdefault(column_of(r["source"])[1], []).append(r)
    row = {}
    for col in columns:
        recs = by_col.get(col, [])
        cell = {"n": len(recs)}
        for fig, _ in FIGURES:
            v = np.asarray([float(r[fig]) for r in recs])
            cell[fig] = float(v.mean()) if len(v) else None
            cell[f"{fig}_ci"] = list(bootstrap_ci(v, n_boot, seed)) if len(v) else None
        row[col] = cell
    present = [c for c in columns if row[c]["n"]]
    avg = {"n": sum(row[c]["n"] for c in present), "datasets": len(present)}
    for fig, _ in FIGURES:
        groups = [np.asarray([float(r[fig]) for r in by_col[c]]) for c in present]
        avg[fig] = float(np.mean([g.mean() for g in groups])) if groups else None
        avg[f"{fig}_ci"] = list(_stratified_mean_ci(groups, n_boot, seed)) if groups else None
    row[AVG] = avg
    return row


def build_table(results: Mapping[str, Sequence[dict]], settings: dict, n_boot: int = 1000, seed: int = 0,
                extra: dict | None = None) -> dict:
    """The JSON table: settings (with the question sets' fingerprint), columns, and one row per method."""
    columns = _columns(results)
    first = next(iter(results.values()), [])
    settings = {**settings, "matching": MATCHING, "questions": questions_fingerprint(first), "bootstrap": n_boot}
    for name, recs in results.items():
        if questions_fingerprint(recs) != settings["questions"]:
            raise ValueError(f"method {name!r} was evaluated on other questions than {next(iter(results))!r}")
    return {"settings": settings, "columns": columns,
            "methods": {name: method_row(recs, columns, n_boot, seed) for name, recs in results.items()},
            **(extra or {})}


def _cell(cell: dict, fig: str, scale: float, digits: int) -> str:
    if not cell or cell.get(fig) is None:
        return "–"
    lo, hi = cell[f"{fig}_ci"]
    return f"{cell[fig] * scale:.{digits}f} [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"


def to_markdown(table: dict) -> str:
    cols = [*table["columns"], AVG]
    lines = []
    for fig, title in FIGURES:
        pct = fig in ("em", "acc", "f1")
        scale, digits, unit = (100.0, 1, " (%)") if pct else (1.0, 2, "")
        lines += [f"**{title}{unit}**, mean [95% bootstrap interval]", "",
                  "| method | " + " | ".join(f"{c} (n={_n(table, c)})" for c in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for name, row in table["methods"].items():
            lines.append(f"| {name} | " + " | ".join(_cell(row.get(c), fig, scale, digits) for c in cols) + " |")
        lines.append("")
    lines += ["**Settings**", ""] + [f"- {k}: `{json.dumps(v, sort_keys=True)}`" if not isinstance(v, str)
                                     else f"- {k}: {v}" for k, v in sorted(table["settings"].items())]
    return "\n".join(lines) + "\n"


def _n(table: dict, col: str) -> int:
    row = next(iter(table["methods"].values()), {})
    return row.get(col, {}).get("n", 0)


def to_csv(table: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", "dataset", "figure", "value", "ci_low", "ci_high", "n"])
    for name, row in table["methods"].items():
        for col in [*table["columns"], AVG]:
            cell = row[col]
            for fig, _ in FIGURES:
                lo, hi = cell[f"{fig}_ci"] or (None, None)
                w.writerow([name, col, fig, cell[fig], lo, hi, cell["n"]])
    return buf.getvalue()


def plot_png(table: dict, path: str) -> None:
    """Grouped bars of EM per dataset (and Avg), one bar per method, with the intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [*table["columns"], AVG]
    methods = list(table["methods"])
    x = np.arange(len(cols))
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(cols) + 1.5), 3.2))
    for i, name in enumerate(methods):
        cells = [table["methods"][name][c] for c in cols]
        em = np.asarray([100 * (c["em"] or 0.0) for c in cells])
        ci = np.asarray([[100 * v for v in (c["em_ci"] or (0.0, 0.0))] for c in cells])
        err = np.stack([em - ci[:, 0], ci[:, 1] - em])
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, em, width, yerr=err, capsize=3, label=name)
    ax.set_xticks(x, cols)
    ax.set_ylabel("EM (%)")
    ax.legend(frameon=False, fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_table(table: dict, out_dir: str) -> dict[str, str]:
    """table.{json,md,csv,png} in `out_dir`; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: os.path.join(out_dir, f"table.{ext}") for ext in ("json", "md", "csv", "png")}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(table, f, indent=1, sort_keys=True)
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write(to_markdown(table))
    with open(paths["csv"], "w", encoding="utf-8", newline="") as f:
        f.write(to_csv(table))
    plot_png(table, paths["png"])
    return paths


def incomparable(a: dict, b: dict) -> list[str]:
    """Why the EM of tables `a` and `b` cannot be compared: one line per setting that differs ([] if none)."""
    sa, sb = a.get("settings", {}), b.get("settings", {})
    return [f"{k}: {json.dumps(sa.get(k), sort_keys=True)} vs {json.dumps(sb.get(k), sort_keys=True)}"
            for k in EM_SETTINGS if sa.get(k) != sb.get(k)]


def compare_markdown(a: dict, b: dict, names: tuple[str, str] = ("A", "B")) -> str:
    """EM of every method and column both tables hold, side by side with the difference."""
    lines = [f"| method | dataset | EM {names[0]} | EM {names[1]} | difference |", "|---|---|---|---|---|"]
    for m in (m for m in a["methods"] if m in b["methods"]):
        for col in (c for c in [*a["columns"], AVG] if c in b["methods"][m]):
            ea, eb = a["methods"][m][col]["em"], b["methods"][m][col]["em"]
            if ea is not None and eb is not None:
                lines.append(f"| {m} | {col} | {100 * ea:.1f} | {100 * eb:.1f} | {100 * (eb - ea):+.1f} |")
    return "\n".join(lines) + "\n"
