"""Trajectory dumps: what the Actor wrote, what it found and what the Meta-Refiner did with it, one JSON record per
trajectory, for `launch/view.py`.

The trainer writes `WORKDIR/trajectories/train_step{N}.jsonl` (a sample of whole GRPO groups, every
`train.dump_every` RL steps) and `WORKDIR/trajectories/eval_step{N}.jsonl` (every trajectory of an evaluation).
Token ids become text here and only here, once per dumped trajectory after its step, so the rollout never decodes
more than it needs; a dump reads the trajectories and changes nothing the run computes.

Record schema (`SCHEMA` = 1), one JSON object per line (`TrajectoryRecord`, `dataclasses.asdict`):

  schema, kind ("train" | "eval"), step (the trainer's step), index (the trajectory's place in its rollout)
  id, source, hops          the question's id, data source and hop count (null where unknown)
  group_id                  the GRPO group (the samples of one prompt share it)
  question, golden_answers
  gold_passage_ids          the passages that answer it (synthetic world; null where unknown)
  status, answer            how the trajectory ended (rollout/types.STATUSES) and its extracted answer
  em                        exact match of the answer
  useful, searches, reward  the judge's count of useful searches, M, and R = EM x (1 + useful/M) (useful and
                            reward null where not computed: evaluation calls no judge)
  generated_tokens, response_tokens
  revised                   whether the Meta-Refiner cut it at least once
  turns                     [TurnRecord] of the final trajectory:
      step (1-based, the refiner's numbering), action ("search" | "answer" | "invalid" | "budget"),
      text (the assistant's text as generated), thought (its <think> contents), query, answer,
      passages [{id, title, text, gold (null where gold ids are unknown)}],
      tool (a tool output that is not passages: the invalid-action message), error (a retrieval error)
  refiner                   [DecisionRecord], one per judgement in order:
      scores (log p("0") .. log p("T") over the judged version's T turns; null for a non-finite one),
      choice (0 = accept, j = cut at step j), forced (a benchmark's forced revision), kept_tokens (the response
      tokens kept before the cut), draft and regeneration ({turns, status, answer}: the judged version's turns j..T,
      discarded, and the Actor's turns from step j after the cut; both null when accepted)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Sequence

import numpy as np

from searchr2_jax.jsonl import iter_jsonl
from searchr2_jax.rl.rewards import RewardTerms
from searchr2_jax.rollout.refiner import turn_texts
from searchr2_jax.rollout.types import Trajectory, Turn
from searchr2_jax.text import protocol

SCHEMA = 1
KINDS = ("train", "eval")


@dataclasses.dataclass(frozen=True)
class PassageRecord:
    id: str
    title: str
    text: str
    gold: bool | None  # None: the question's gold passage ids are unknown


@dataclasses.dataclass(frozen=True)
class TurnRecord:
    step: int
    action: str
    text: str
    thought: str | None
    query: str | None
    answer: str | None
    passages: list[PassageRecord]
    tool: str | None
    error: str | None


@dataclasses.dataclass(frozen=True)
class BranchRecord:
    """A version's turns from a cut on, with how that version ended."""

    turns: list[TurnRecord]
    status: str
    answer: str | None


@dataclasses.dataclass(frozen=True)
class DecisionRecord:
    scores: list[float | None]
    choice: int
    forced: bool
    kept_tokens: int | None
    draft: BranchRecord | None
    regeneration: BranchRecord | None


@dataclasses.dataclass(frozen=True)
class TrajectoryRecord:
    schema: int
    kind: str
    step: int
    index: int
    id: str | None
    source: str | None
    hops: int | None
    group_id: int
    question: str
    golden_answers: list[str]
    gold_passage_ids: list[str] | None
    status: str
    answer: str | None
    em: float
    useful: float | None
    searches: int
    reward: float | None
    generated_tokens: int
    response_tokens: int
    revised: bool
    turns: list[TurnRecord]
    refiner: list[DecisionRecord]


REQUIRED_KEYS = tuple(f.name for f in dataclasses.fields(TrajectoryRecord))


def _num(x) -> float | None:
    """A JSON-safe float: JSON has no inf or NaN (and the viewer's JSON.parse refuses them)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _turns(tokenizer, response_ids: np.ndarray, turns: Sequence[Turn], first: int,
           gold: frozenset[str] | None) -> list[TurnRecord]:
    """Records of turns[first:], decoded from the response they index."""
    out = []
    texts = turn_texts(tokenizer, response_ids, turns[first:])
    for k, (turn, (text, tool)) in enumerate(zip(turns[first:], texts)):
        parsed = protocol.parse_turn(text) if turn.action == "answer" else None
        out.append(TurnRecord(
            step=first + k + 1, action=turn.action, text=text, thought=protocol.extract_thought(text),
            query=turn.query, answer=parsed.answer if parsed else None,
            passages=[PassageRecord(p.id, p.title, p.text, None if gold is None else p.id in gold)
                      for p in turn.passages],
            tool=tool if tool and not turn.passages else None, error=turn.error))
    return out


def trajectory_record(traj: Trajectory, tokenizer, *, kind: str, step: int, em: float, useful: float | None = None,
                      reward: float | None = None) -> TrajectoryRecord:
    """The dump record of one trajectory (see the module docstring for the schema); pure."""
    if kind not in KINDS:
        raise ValueError(f"dump kind {kind!r}: expected one of {KINDS}")
    meta = traj.job.metadata or {}
    gold_ids = meta.get("gold_passage_ids")
    gold = frozenset(map(str, gold_ids)) if gold_ids is not None else None
    # Version k is what judgement k saw: the drafts in order, then the final trajectory. A judgement that cut at
    # step j discarded version k's turns j.. and the Actor wrote version k+1's turns j.. in their place.
    versions = [(d.response_ids, d.turns, d.status, d.answer) for d in traj.drafts]
    versions.append((traj.response_ids, traj.turns, traj.status, traj.answer))
    decisions = []
    for k, m in enumerate(traj.meta_actions):
        draft = regen = None
        if m.choice >= 1 and k + 1 < len(versions):
            branch = lambda v: BranchRecord(_turns(tokenizer, v[0], v[1], m.choice - 1, gold), v[2], v[3])
            draft, regen = branch(versions[k]), branch(versions[k + 1])
        decisions.append(DecisionRecord(
            scores=[_num(s) for s in m.scores], choice=int(m.choice), forced=bool(m.forced),
            kept_tokens=int(traj.kept_tokens[k]) if m.choice >= 1 and k < len(traj.kept_tokens) else None,
            draft=draft, regeneration=regen))
    hops = meta.get("hops")
    return TrajectoryRecord(
        schema=SCHEMA, kind=kind, step=int(step), index=int(traj.job_index),
        id=None if meta.get("id") is None else str(meta["id"]), source=meta.get("data_source"),
        hops=None if hops is None else int(hops), group_id=int(traj.job.group_id), question=traj.job.question,
        golden_answers=[str(g) for g in traj.job.golden_answers],
        gold_passage_ids=None if gold_ids is None else [str(g) for g in gold_ids],
        status=traj.status, answer=traj.answer, em=float(em), useful=_num(useful), searches=len(traj.searches),
        reward=_num(reward), generated_tokens=int(np.sum(traj.loss_mask)), response_tokens=len(traj.response_ids),
        revised=bool(traj.cut_steps), turns=_turns(tokenizer, traj.response_ids, traj.turns, 0, gold),
        refiner=decisions)


def sample_groups(group_ids: Sequence[int], rows: int, seed: int | Sequence[int]) -> list[int]:
    """Indices (ascending) of whole groups drawn in a random order while they fit in `rows` (at least one group),
    so a dump shows each sampled prompt's G samples side by side; `rows` <= 0: every index."""
    if rows <= 0 or rows >= len(group_ids):
        return list(range(len(group_ids)))
    members: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids):
        members.setdefault(int(g), []).append(i)
    order = list(members)
    np.random.default_rng(seed).shuffle(order)
    picked: list[int] = []
    for g in order:
        if picked and len(picked) + len(members[g]) > rows:
            continue
        picked.extend(members[g])
    return sorted(picked)


def dump_records(trajs: Sequence[Trajectory], tokenizer, terms: RewardTerms, *, kind: str, step: int, rows: int = 0,
            seed: int = 0) -> list[TrajectoryRecord]:
    """Records of `trajs` (or of `rows` of them in whole groups, drawn from (seed, step)); `terms` are theirs."""
    pick = sample_groups([t.job.group_id for t in trajs], rows, seed=[seed, step]) if rows > 0 else range(len(trajs))
    col = lambda x, i: None if x is None else x[i]
    return [trajectory_record(trajs[i], tokenizer, kind=kind, step=step, em=terms.em[i], useful=col(terms.useful, i),
                              reward=col(terms.total, i)) for i in pick]


def dump_path(workdir: str, kind: str, step: int) -> str:
    return os.path.join(workdir, "trajectories", f"{kind}_step{int(step)}.jsonl")


def write_jsonl(path: str, recs: Sequence[TrajectoryRecord]) -> None:
    """Writes the records as JSONL, whole or not at all (a viewer never reads half a dump)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(dataclasses.asdict(r), ensure_ascii=False, allow_nan=False) + "\n")
    os.replace(tmp, path)


def write_dump(workdir: str, kind: str, step: int, trajs: Sequence[Trajectory], tokenizer, terms: RewardTerms,
               rows: int = 0, seed: int = 0) -> str | None:
    """The trainer's hook: writes the dump of `trajs` and returns its path. Multi-host, only process 0 writes (its
    own trajectories; every host evaluates the same questions); the others return None."""
    import jax

    if jax.process_index() != 0:
        return None
    path = dump_path(workdir, kind, step)
    write_jsonl(path, dump_records(trajs, tokenizer, terms, kind=kind, step=step, rows=rows, seed=seed))
    return path


_DUMP_RE = re.compile(r"^(train|eval)_step(\d+)\.jsonl$")


def find_dumps(workdir: str) -> dict[tuple[str, int], str]:
    """(kind, step) -> path of every dump in a workdir, in (kind, step) order."""
    folder = os.path.join(workdir, "trajectories")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: no trajectory dumps in this workdir (train.dump_every=0, or not a "
                                "training run's workdir?)")
    found = {}
    for name in os.listdir(folder):
        m = _DUMP_RE.match(name)
        if m:
            found[(m.group(1), int(m.group(2)))] = os.path.join(folder, name)
    return dict(sorted(found.items()))


def read_dump(path: str) -> list[dict]:
    """The records of a dump, as dicts. A line that is not a record raises ValueError naming the file and line."""
    out = []
    for n, rec in iter_jsonl(path):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: row {n}: expected a JSON object, got {type(rec).__name__}")
        missing = [k for k in REQUIRED_KEYS if k not in rec]
        if missing:
            raise ValueError(f"{path}: row {n}: not a trajectory record (missing {', '.join(missing)})")
        if rec["schema"] != SCHEMA:
            raise ValueError(f"{path}: row {n}: record schema {rec['schema']!r}, this reader knows {SCHEMA}")
        out.append(rec)
    return out
