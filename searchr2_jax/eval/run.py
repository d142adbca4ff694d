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
import os
import time
from typing import Sequence

import jax
from searchr2_jax.data.qa import QAExample
from searchr2_jax.eval import evaluate as eval_lib
from searchr2_jax.jsonl import append_jsonl, iter_jsonl
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
    shots: tuple[tuple[str, str], ...] = ()  # the baselines' few-shot (question, answer) examples


def run_chunk(setup: EvalSetup, method: str, examples: Sequence[QAExample], rng: jax.Array) -> list[dict]:
    """Per-question records of one method (eval/evaluate.py's `records` format), greedy."""
    if method == "agent":
        return eval_lib.records(setup.engine, setup.params, examples, rng, setup.chat, batch_size=len(examples))
    options = eval_lib.BaselineOptions(retriever=setup.retriever, k=setup.k, chat=setup.chat, style=setup.style,
                                       shots=setup.shots)
    return eval_lib.baseline_records(setup.engine, setup.params, examples, method, rng, options,
                                     batch_size=len(examples))


def _done_chunks(path: str) -> dict[int, list[dict]]:
    done: dict[int, list[dict]] = {}
    if os.path.isfile(path):
        for _, rec in iter_jsonl(path, torn_tail_ok=True):
            done.setdefault(int(rec["chunk"]), []).append(rec)
    return done


def run_methods(setup: EvalSetup, examples: Sequence[QAExample], methods: Sequence[str], records_dir: str,
                chunk: int = 128, progress: bool = True, seconds: dict | None = None) -> dict[str, list[dict]]:
    """{method: records in question order}, resuming from what `records_dir` already holds. `seconds`, when given,
    receives each method's wall time in this call (a method read back whole from disk gets 0)."""
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
            t0 = time.perf_counter()
            for i, s in enumerate(starts):
                if i in done[m]:
                    continue
                bar.set_postfix_str(m)
                recs = run_chunk(setup, m, examples[s:s + chunk], jax.random.fold_in(setup.rng, i))
                recs = [{**r, "chunk": i} for r in recs]
                append_jsonl(path, recs)
                done[m][i] = recs
                bar.update(len(recs))
            results[m] = [r for i in range(len(starts)) for r in done[m][i]]
            if seconds is not None:
                seconds[m] = time.perf_counter() - t0
    return results

