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


def evaluate(engine: RolloutEngine, params, examples: Sequence[QAExample], rng: jax.Array, chat: bool = False,
             batch_size: int = 64) -> dict:
    """EM/F1 per data source and overall, plus status shares, with greedy Actor-only rollouts."""
    per_source = collections.defaultdict(list)
    statuses = collections.Counter()
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        out = engine.run(params, make_jobs(chunk, engine.tokenizer, chat), rng, greedy=True, use_refiner=False)
        em, f1 = score(out.trajectories)
        for ex, e, f, t in zip(chunk, em, f1, out.trajectories):
            per_source[ex.data_source].append((e, f, len(t.searches)))
            statuses[t.status] += 1
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


def format_table(table: dict) -> str:
    """A readable EM/F1 table, one row per data source."""
    sources = sorted({k.split("/")[1] for k in table if k.count("/") == 2 and k.endswith("/em")})
    lines = [f"{'dataset':<20} {'EM':>6} {'F1':>6} {'searches':>9}"]
    for s in sources:
        lines.append(f"{s:<20} {table[f'eval/{s}/em']:>6.3f} {table[f'eval/{s}/f1']:>6.3f} "
                     f"{table[f'eval/{s}/searches']:>9.2f}")
    lines.append(f"{'all':<20} {table.get('eval/em', 0):>6.3f} {table.get('eval/f1', 0):>6.3f}")
    return "\n".join(lines)
