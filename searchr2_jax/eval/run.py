"""Evaluating several methods over whole QA splits, resumable, with a progress bar.

    setup = EvalSetup(engine, params, retriever, k=3, chat=True, style="flashrag", rng=jax.random.key(0))
    results = run_methods(setup, examples, ("direct", "rag", "agent"), records_dir)   # {method: records}

Each method's questions are cut into fixed chunks (`chunk` questions, the last one shorter: nothing is dropped). A
finished chunk's records are appended to `records_dir/<method>.jsonl` in one write, so a run killed at any point
resumes at the first unfinished chunk and, decoding being greedy, ends with the same records. A torn last line
(a kill mid-write) is dropped.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax
from absl import logging

from searchr2_jax.data.qa import QAExample
from searchr2_jax.eval import evaluate as eval_lib
from searchr2_jax.rollout.rollout import RolloutEngine


@dataclasses.dataclass
class EvalSetup:
    engine: RolloutEngine  # the Actor's engine (its retriever serves the agent)
    params: object
    retriever: object  # the rag baseline's retriever: the engine's own, so rag and agent search alike
    k: int  # passages per search, for rag and agent alike
    chat: bool
    style: str  # the baselines' prompts (eval/evaluate.PROMPT_STYLES)
    rng: jax.Array


def run_chunk(setup: EvalSetup, method: str, examples: Sequence[QAExample], rng: jax.Array) -> list[dict]:
    """Per-question records of one method (eval/evaluate.py's `records` format), greedy."""
    if method == "agent":
        return eval_lib.records(setup.engine, setup.params, examples, rng, setup.chat, batch_size=len(examples))
    return eval_lib.baseline_records(setup.engine, setup.params, examples, method, rng, setup.retriever, setup.k,
                                     setup.chat, batch_size=len(examples), style=setup.style)


def _done_chunks(path: str) -> dict[int, list[dict]]:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    done: dict[int, list[dict]] = {}
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n < len(lines):  # a bad line followed by others is damage, not an interrupted write
                raise ValueError(f"{path}: line {n}: not JSON; delete the file to re-run this method") from None
            logging.warning("%s: line %d torn (an interrupted write); its chunk is re-run", path, n)
            break
        done.setdefault(int(rec["chunk"]), []).append(rec)
    return done


def run_methods(setup: EvalSetup, examples: Sequence[QAExample], methods: Sequence[str], records_dir: str,
                chunk: int = 128, progress: bool = True) -> dict[str, list[dict]]:
    """{method: records in question order}, resuming from what `records_dir` already holds."""
    from tqdm import tqdm

    os.makedirs(records_dir, exist_ok=True)
    starts = list(range(0, len(examples), chunk))
    results = {}
    done = {m: _done_chunks(os.path.join(records_dir, f"{m}.jsonl")) for m in methods}
    for m in methods:
        for i, s in enumerate(starts):
            ids = [str(ex.id) for ex in examples[s:s + chunk]]
            if i in done[m] and [r["id"] for r in done[m][i]] != ids:
                raise ValueError(f"{records_dir}/{m}.jsonl: chunk {i} holds other questions (another split, chunk "
                                 "size or order); use a fresh --out")
    total = len(methods) * len(examples)
    finished = sum(len(done[m].get(i, ())) for m in methods for i in range(len(starts)))
    with tqdm(total=total, initial=finished, desc="evaluate", unit="question", dynamic_ncols=True,
              disable=not progress) as bar:
        for m in methods:
            path = os.path.join(records_dir, f"{m}.jsonl")
            for i, s in enumerate(starts):
                if i in done[m]:
                    continue
                bar.set_postfix_str(m)
                recs = run_chunk(setup, m, examples[s:s + chunk], jax.random.fold_in(setup.rng, i))
                recs = [{**r, "chunk": i} for r in recs]
                text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
                _truncate_torn(path)
                with open(path, "a", encoding="utf-8") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                done[m][i] = recs
                bar.update(len(recs))
            results[m] = [r for i in range(len(starts)) for r in done[m][i]]
    return results


def _truncate_torn(path: str) -> None:
    """Cuts a partial last line (left by a kill mid-write) before appending after it."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)
