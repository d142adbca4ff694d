"""The records the rollout engine's steps exchange (`rollout.py`), all built by keyword.

A round of the engine turns the slots that stopped into `Outcome`s (retrieve, finish, or observe), the finished ones
into trajectories or `Revision`s, and everything bound for a slot's cache into `Append`s; `Run` holds one rollout's
host state, and `Slot` one conversation's.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, NamedTuple, Sequence

import numpy as np

from searchr2_jax.rollout import sampler
from searchr2_jax.rollout import types as T
from searchr2_jax.rollout.refiner import MAX_REVISIONS, Decision, MetaRefiner


@dataclasses.dataclass
class Slot:
    """The host side of one running conversation: its job, its turns, and the Meta-Refiner's record of it."""

    job_index: int
    job: T.Job
    turns: list[T.Turn] = dataclasses.field(default_factory=list)
    turn_start: int = 0  # response position where the current turn starts
    meta_actions: list[T.MetaAction] = dataclasses.field(default_factory=list)
    cut_steps: list[int] = dataclasses.field(default_factory=list)
    kept_tokens: list[int] = dataclasses.field(default_factory=list)
    drafts: list[T.Draft] = dataclasses.field(default_factory=list)

    @property
    def stream(self) -> int:
        """The random stream this job samples from, a new one after each revision (see `decode_segment`)."""
        return self.job_index * (MAX_REVISIONS + 1) + len(self.cut_steps)

    def trajectory(self, host: sampler.SlotState, finished: Finished) -> T.Trajectory:
        """The trajectory as it stands in the host copy `host` of the slot state (row `finished.slot`)."""
        b, n = finished.slot, host.length[finished.slot]
        return T.Trajectory(self.job_index, self.job, np.asarray(host.tokens[b, :n], np.int32),
                            np.asarray(host.logprobs[b, :n], np.float32), np.asarray(host.loss_mask[b, :n], np.int8),
                            list(self.turns), finished.status, finished.answer)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Append:
    """A chunk for one slot's cache: the row of a `sampler.AppendBatch` (see it for the flags)."""

    slot: int
    ids: Sequence[int]
    reset_cache: bool = False
    clear_response: bool = False
    generated: bool = False
    run: bool = True


@dataclasses.dataclass(frozen=True, kw_only=True)
class Finished:
    """A slot whose trajectory ended (for the Meta-Refiner to accept or revise)."""

    slot: int
    status: str  # a `types` status
    answer: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outcome:
    """What a stopped slot's turn, or its retrieval, leads to: exactly one of a retrieval for the turn's query
    (`search`), the end of the trajectory (`finished`), or an observation text to append before it continues."""

    slot: int
    search: bool = False
    finished: Finished | None = None
    observation: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Revision:
    """A Meta-Refiner cut: the slot's response and cache shrink to these lengths in place, then `restart` (the last
    kept token, re-appended for fresh next-token logits) lets the Actor continue."""

    slot: int
    response_len: int
    cache_len: int
    restart: Append


class DecodeCall(NamedTuple):
    """One `decode_segment` call of a segment."""

    rows: np.ndarray | None  # the running slots it decodes (bucketed); None: every slot
    window: int  # the attention window they reach
    exit_stops: np.int32  # it ends after this many of them stop


class Judged(NamedTuple):
    """The Meta-Refiner's pass over finished slots."""

    state: sampler.SlotState
    decisions: dict[int, Decision]  # per judged slot
    unsent: list[Append]  # the observations that were to ride in the follow-ups' append but did not


@dataclasses.dataclass(kw_only=True)
class Run:
    """One `RolloutEngine.run`'s host state, shared by its steps."""

    jobs: Sequence[T.Job]
    params: Any  # as given: the refiner's full passes read them
    gen_params: Any  # per-layer weights for generation (`decoder.per_layer_weights`)
    refiner: MetaRefiner | None  # None: every finished trajectory is accepted
    refiner_params: Any
    seed: int  # with `Slot.stream`, keys the generator each refiner decision may draw from (`MetaRefiner.choose`)
    queue: collections.deque  # job indices not yet admitted
    slots: list[Slot | None]
    out: list[T.Trajectory | None]
    prefix: tuple | None = None  # (length, one-row cache) of the prompt prefix all jobs share
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def metrics(self, wall: float, device_s: float) -> dict:
        """The rollout metrics of the finished run (`wall` and `device_s`: its seconds, all and on the device)."""
        trajs, m = self.out, self.counts
        n = max(len(trajs), 1)
        statuses = collections.Counter(t.status for t in trajs)
        cuts = [c for t in trajs for c in t.cut_steps]
        kept = [k for t in trajs for k in t.kept_tokens]
        out = {
            "rollout/trajectories": len(trajs),
            "rollout/revision_rate": sum(bool(t.cut_steps) for t in trajs) / n,
            "rollout/mean_cut_step": float(np.mean(cuts)) if cuts else 0.0,
            "rollout/prefix_tokens_kept": float(np.mean(kept)) if kept else 0.0,
            "rollout/searches_per_trajectory": sum(len(t.searches) for t in trajs) / n,
            "rollout/tokens_generated": int(m["tokens_generated"]),
            "rollout/decode_steps": int(m["decode_steps"]),
            "rollout/segments": int(m["segments"]),
            "rollout/decode_calls": int(m["decode_calls"]),
            # The work the device did, whatever the machine's speed: decoded rows x steps (bucket pads included),
            # and the tokens appended (prompts, information blocks, follow-ups), padded and real.
            "rollout/decode_row_steps": int(m["decode_row_steps"]),
            "rollout/append_tokens": int(m["append_tokens"]),
            "rollout/append_valid_tokens": int(m["append_valid_tokens"]),
            "rollout/retrieval_s": float(m["retrieval_s"]),
            "rollout/wall_s": wall,
            "rollout/host_fraction": max(0.0, 1.0 - device_s / wall) if wall > 0 else 0.0,
            "rollout/tokens_per_s": m["tokens_generated"] / wall if wall > 0 else 0.0,
        }
        out.update({f"rollout/status/{s}": statuses.get(s, 0) / n for s in T.STATUSES})
        return out
