"""Honest evaluation as the paper does it: the Actor alone (refiner off), greedy, EM (and F1) per dataset."""

from __future__ import annotations

import collections
from typing import Sequence

import jax
import numpy as np

from searchr2_jax.data.qa import QAExample
from searchr2_jax.rl import rewards
from searchr2_jax.rollout.rollout import RolloutEngine
from searchr2_jax.rollout.types import Job, Trajectory
from searchr2_jax.text import protocol


def make_jobs(examples: Sequence[QAExample], tokenizer, chat: bool = False, group_size: int = 1,
              group_ids: Sequence[int] | None = None) -> list[Job]:
    """Rollout jobs for examples (each repeated `group_size` times, adjacent), prompts built by the protocol."""
    jobs = []
    for i, ex in enumerate(examples):
        prompt = protocol.build_prompt(ex.question, tokenizer=tokenizer, chat=chat)
        ids = list(tokenizer.encode(prompt, add_special_tokens=False))
        gid = int(group_ids[i * group_size]) if group_ids is not None else i
        for _ in range(group_size):
            jobs.append(Job(ids, question=ex.question, golden_answers=tuple(ex.golden_answers), group_id=gid,
                            metadata={"id": ex.id, "data_source": ex.data_source, **dict(ex.metadata or {})}))
    return jobs


def score(trajectories: Sequence[Trajectory]) -> tuple[np.ndarray, np.ndarray]:
    """(EM, F1) per trajectory, from the answer parsed out of the response only."""
    em = np.asarray([rewards.exact_match(t.answer, t.job.golden_answers) for t in trajectories], np.float32)
    f1 = np.asarray([rewards.f1_score(t.answer, t.job.golden_answers) for t in trajectories], np.float32)
    return em, f1


def rollouts(engine: RolloutEngine, params, examples: Sequence[QAExample], rng: jax.Array, chat: bool = False,
             batch_size: int = 64) -> list[Trajectory]:
    """Greedy Actor-only trajectories (refiner off), one per question, in order."""
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        out.extend(engine.run(params, make_jobs(chunk, engine.tokenizer, chat), rng, greedy=True,
                              use_refiner=False).trajectories)
    return out


def records(engine: RolloutEngine, params, examples: Sequence[QAExample], rng: jax.Array, chat: bool = False,
            batch_size: int = 64) -> list[dict]:
    """One record per question, greedy Actor-only rollouts: id, data source, hop count (synthetic world), EM, F1,
    searches, generated response tokens, status and answer."""
    return trajectory_records(examples, rollouts(engine, params, examples, rng, chat, batch_size))


def trajectory_records(examples: Sequence[QAExample], trajectories: Sequence[Trajectory]) -> list[dict]:
    """`records` of trajectories already rolled out for `examples` (in order)."""
    return _records(examples, trajectories, [t.answer for t in trajectories])


def _record(ex: QAExample, answer: str | None, searches: int, response_tokens: int, status: str) -> dict:
    return dict(id=ex.id, source=ex.data_source, hops=int((ex.metadata or {}).get("hops", 0)),
                em=rewards.exact_match(answer, ex.golden_answers), f1=rewards.f1_score(answer, ex.golden_answers),
                searches=searches, response_tokens=response_tokens, status=status, answer=answer)


def _records(examples, trajectories, answers) -> list[dict]:
    return [_record(ex, a, len(t.searches), int(t.loss_mask.sum()), t.status)
            for ex, t, a in zip(examples, trajectories, answers)]


BASELINES = ("direct", "rag")


def baseline_records(engine: RolloutEngine, params, examples: Sequence[QAExample], method: str, rng: jax.Array,
                     retriever=None, k: int = 3, chat: bool = False, batch_size: int = 64) -> list[dict]:
    """The no-agent baselines, greedy, one answer turn, as `records` writes them:

      direct  the response is forced to open with `<answer>`: the model answers from the question alone;
      rag     the response is forced to open with one search for the question itself, its top-k passages, then
              `<answer>`: retrieve-then-read with the agent's own protocol.

    `engine` needs room for the forced prefix in its `max_prompt_tokens`. The answer is parsed from the forced
    prefix and the model's continuation together."""
    if method not in BASELINES:
        raise ValueError(f"baseline {method!r}: expected one of {BASELINES}")
    if method == "rag" and retriever is None:
        raise ValueError("the rag baseline needs a retriever")
    out = []
    tok = engine.tokenizer
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start:start + batch_size])
        if method == "rag":
            queries = [protocol.normalize_question(ex.question) for ex in chunk]
            prefixes = [f"{protocol.SEARCH_OPEN} {q} {protocol.SEARCH_CLOSE}" + protocol.render_information(p)
                        + protocol.ANSWER_OPEN for q, p in zip(queries, retriever.search(queries, k))]
        else:
            prefixes = [protocol.ANSWER_OPEN] * len(chunk)
        jobs = make_jobs(chunk, tok, chat)
        for job, prefix in zip(jobs, prefixes):
            job.prompt_ids = job.prompt_ids + list(tok.encode(prefix, add_special_tokens=False))
        run = engine.run(params, jobs, rng, greedy=True, use_refiner=False)
        answers = [protocol.extract_answer(prefix + tok.decode(list(t.response_ids), skip_special_tokens=False))
                   for prefix, t in zip(prefixes, run.trajectories)]
        out.extend(_records(chunk, run.trajectories, answers))
    return out


def majority_records(train: Sequence[QAExample], examples: Sequence[QAExample]) -> list[dict]:
    """The no-search floor: each question template's most common training answer (no model, no retrieval)."""
    votes = collections.defaultdict(collections.Counter)
    for ex in train:
        votes[(ex.metadata or {}).get("template", ex.data_source)][ex.golden_answers[0]] += 1
    out = []
    for ex in examples:
        top = votes.get((ex.metadata or {}).get("template", ex.data_source))
        out.append(_record(ex, top.most_common(1)[0][0] if top else None, 0, 0, "answered"))
    return out


def summarize(recs: Sequence[dict]) -> dict:
    """The eval table of `records`: EM/F1/searches per data source and overall, plus status shares."""
    per_source = collections.defaultdict(list)
    statuses = collections.Counter(r["status"] for r in recs)
    for r in recs:
        per_source[r["source"]].append((r["em"], r["f1"], r["searches"]))
    table = {}
    for source, rows in sorted(per_source.items()):
        arr = np.asarray(rows)
        table[f"eval/{source}/em"] = float(arr[:, 0].mean())
        table[f"eval/{source}/f1"] = float(arr[:, 1].mean())
        table[f"eval/{source}/searches"] = float(arr[:, 2].mean())
    every = np.asarray([r for rows in per_source.values() for r in rows]).reshape(-1, 3)
    table["eval/em"] = float(every[:, 0].mean()) if len(every) else 0.0
    table["eval/f1"] = float(every[:, 1].mean()) if len(every) else 0.0
    n = max(sum(statuses.values()), 1)
    table.update({f"eval/status/{k}": v / n for k, v in statuses.items()})
    return table


def evaluate(engine: RolloutEngine, params, examples: Sequence[QAExample], rng: jax.Array, chat: bool = False,
             batch_size: int = 64) -> dict:
    """EM/F1 per data source and overall, plus status shares, with greedy Actor-only rollouts."""
    return summarize(records(engine, params, examples, rng, chat, batch_size))


def format_table(table: dict) -> str:
    """A readable EM/F1 table, one row per data source."""
    sources = sorted({k.split("/")[1] for k in table if k.count("/") == 2 and k.endswith("/em")})
    lines = [f"{'dataset':<20} {'EM':>6} {'F1':>6} {'searches':>9}"]
    for s in sources:
        lines.append(f"{s:<20} {table[f'eval/{s}/em']:>6.3f} {table[f'eval/{s}/f1']:>6.3f} "
                     f"{table[f'eval/{s}/searches']:>9.2f}")
    lines.append(f"{'all':<20} {table.get('eval/em', 0):>6.3f} {table.get('eval/f1', 0):>6.3f}")
    return "\n".join(lines)
