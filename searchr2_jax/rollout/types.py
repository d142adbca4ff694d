"""What a rollout consumes and produces: jobs in, host trajectory records and one padded array batch out."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import numpy as np

from searchr2_jax.retrieval.types import Passage

# Final status of a trajectory.
ANSWERED = "answered"
OUT_OF_TURNS = "out_of_turns"
OUT_OF_BUDGET = "out_of_budget"
INVALID = "invalid"
RETRIEVAL_ERROR = "retrieval_error"
PROMPT_TOO_LONG = "prompt_too_long"
STATUSES = (ANSWERED, OUT_OF_TURNS, OUT_OF_BUDGET, INVALID, RETRIEVAL_ERROR, PROMPT_TOO_LONG)


@dataclasses.dataclass
class Job:
    """One conversation to roll out. `group_id` ties the G samples of a prompt together for GRPO."""

    prompt_ids: list[int]
    question: str = ""
    golden_answers: tuple[str, ...] = ()
    group_id: int = 0
    metadata: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Turn:
    """One assistant turn: response positions [start, end) are the model's text; [end, obs_end) its tool output."""

    start: int
    end: int
    obs_end: int
    action: str  # "search" | "answer" | "invalid" | "budget"
    query: str | None = None
    passages: list[Passage] = dataclasses.field(default_factory=list)
    error: str | None = None


@dataclasses.dataclass
class MetaAction:
    """A Meta-Refiner decision: the prompt it saw, the integer it chose (as tokens) and that choice's log-prob."""

    prompt_ids: list[int]
    action_ids: list[int]
    choice: int
    logprob: float
    scores: list[float]  # log p("0") .. log p("T")
    forced: bool = False
    action_logprobs: list[float] | None = None  # per token of action_ids (sum = logprob); None: one token

    def __post_init__(self):
        if self.action_logprobs is None:
            if len(self.action_ids) != 1:
                raise ValueError(f"MetaAction: {len(self.action_ids)} action tokens need action_logprobs per token")
            self.action_logprobs = [self.logprob]
        elif len(self.action_logprobs) != len(self.action_ids):
            raise ValueError(f"MetaAction: {len(self.action_logprobs)} action_logprobs for {len(self.action_ids)} "
                             "action tokens")


@dataclasses.dataclass
class Draft:
    """A response as it stood when the Meta-Refiner revised it. Its turns from the cut on were discarded and
    regenerated; the tokens before the cut are the final trajectory's too. Kept for the dumps of rollout/dump.py,
    and trained on as a member of its group with `refiner.train_drafts` (`draft_trajectories`)."""

    response_ids: np.ndarray  # [n] int32; `turns` index into it
    turns: list[Turn]
    status: str
    answer: str | None = None
    logprobs: np.ndarray | None = None  # [n] f32, as Trajectory's
    loss_mask: np.ndarray | None = None  # [n] int8, as Trajectory's


@dataclasses.dataclass
class Trajectory:
    job_index: int
    job: Job
    response_ids: np.ndarray  # [n] int32
    logprobs: np.ndarray  # [n] f32
    loss_mask: np.ndarray  # [n] int8
    turns: list[Turn]
    status: str
    answer: str | None = None
    meta_actions: list[MetaAction] = dataclasses.field(default_factory=list)
    cut_steps: list[int] = dataclasses.field(default_factory=list)  # the turn each revision restarted from
    kept_tokens: list[int] = dataclasses.field(default_factory=list)  # prefix tokens kept at each revision
    drafts: list[Draft] = dataclasses.field(default_factory=list)  # the response before each revision

    @property
    def searches(self) -> list[Turn]:
        return [t for t in self.turns if t.action == "search"]


def draft_trajectories(trajectories: Sequence[Trajectory]) -> list[Trajectory]:
    """Each revised trajectory's drafts as trajectories of their own: same job (so the same GRPO group), the draft's
    tokens, sampling log-probs and loss mask, and no meta-actions (the decision that cut a draft trains with the
    final trajectory it produced)."""
    out = []
    for t in trajectories:
        for k, d in enumerate(t.drafts):
            if d.logprobs is None or d.loss_mask is None:
                raise ValueError(f"trajectory {t.job_index}: draft {k} kept no log-probs or loss mask to train on")
            out.append(Trajectory(t.job_index, t.job, d.response_ids, d.logprobs, d.loss_mask, list(d.turns),
                                  d.status, d.answer))
    return out


class MetaRows(NamedTuple):
    """Meta-actions as sequences of their own (refiner prompt + chosen integer), each pointing to the trajectory
    whose advantage it shares (`index`): the layout of table12 prompts, which share no prefix with the trajectory."""

    tokens: np.ndarray  # [M, Q] int32
    mask: np.ndarray  # [M, Q] int8: 1 on the chosen integer's tokens
    logprobs: np.ndarray  # [M, Q] f32
    index: np.ndarray  # [M] int32 (-1 pads)
    lengths: np.ndarray  # [M] int32: refiner prompt + chosen integer (0 on padding rows)


class TrajectoryBatch(NamedTuple):
    """Padded arrays for the trainer. Row i holds trajectory i's `prompt + response`, position j token j.

    `loss_mask[j]` is 1 only where token j was generated by the Actor, and `logprobs[j]` is its sampling log-prob.
    A follow-up refiner prompt continues the Actor's conversation, so its meta-actions are packed into the row
    (`pack_meta`): each is a branch after the trajectory (segment 1, 2, ...) holding only what the row lacks (the
    discarded suffix of a revised draft, the follow-up prompt, the chosen integer), with positions continuing its
    shared prefix and attention to that prefix (`decoder.Packing`); `meta_mask` marks the integers' tokens and
    `logprobs` holds their sampling log-probs too. Otherwise (table12) they are rows of their own (`meta_rows`).
    """

    tokens: np.ndarray  # [N, T] int32
    loss_mask: np.ndarray  # [N, T] int8
    logprobs: np.ndarray  # [N, T] f32: sampling log-probs of Actor tokens and packed meta-action tokens
    lengths: np.ndarray  # [N] int32: real tokens of the row (trajectory and branches)
    traj_lengths: np.ndarray  # [N] int32: prompt + response
    prompt_lengths: np.ndarray  # [N] int32
    group_ids: np.ndarray  # [N] int64
    positions: np.ndarray  # [N, T] int32
    segment_ids: np.ndarray  # [N, T] int32: 0 the trajectory, k its k-th packed meta-action
    shared_start: np.ndarray  # [N, T] int32: the row indices [start, end) a branch token reads besides its own
    shared_end: np.ndarray  # [N, T] int32    segment (its shared prefix; empty elsewhere)
    meta_mask: np.ndarray  # [N, T] int8: 1 on the packed meta-actions' chosen integers
    meta_rows: MetaRows | None  # unpacked meta-actions (None when packed)


def meta_rows(num_trajectories: int, max_revisions: int, micro_batches: int, shards: int) -> int:
    """The meta-action rows of a step batch: room for one per revision of every trajectory, in a power-of-two
    bucket, rounded up to a multiple of micro_batches x shards so that the micro-batch split and the mesh's batch
    axes divide it (20 micro-batches do not divide a bucket of 4,096)."""
    unit = micro_batches * shards
    n = bucket(num_trajectories, minimum=1) * max(max_revisions, 1)
    return -(-n // unit) * unit


def bucket(n: int, minimum: int = 16, fine: bool = False) -> int:
    """Next power of two >= n: the one shape rule every padded batch in the project follows. `fine` also allows
    1.5 x a power of two (..., 128, 192, 256, 384, ...), for the token dimensions of prefill chunks and attention
    windows, where a power of two pads a 260-token block to 512: twice the compute, for at most twice the shapes."""
    p = 1 << max(0, int(n) - 1).bit_length()
    if fine and p >= 4 and n <= 3 * p // 4:
        p = 3 * p // 4
    return max(minimum, p)


class _Row(NamedTuple):
    """One row's per-token arrays, before padding (the fields of TrajectoryBatch with a [T] shape)."""

    tokens: np.ndarray
    logprobs: np.ndarray
    loss_mask: np.ndarray
    meta_mask: np.ndarray
    positions: np.ndarray
    segment_ids: np.ndarray
    shared_start: np.ndarray
    shared_end: np.ndarray


def packed_row(traj: Trajectory, pack_meta: bool) -> _Row:
    """Trajectory `traj`'s row, with its meta-actions packed as branches when `pack_meta` (see TrajectoryBatch).

    A branch starts where the refiner prompt leaves the row (its longest common prefix with prompt + response) and
    holds at least one prompt token before the integer, so the integer's first token is predicted inside it."""
    prompt = np.asarray(traj.job.prompt_ids, np.int32)
    row = np.concatenate([prompt, np.asarray(traj.response_ids, np.int32)])
    p, n = len(prompt), len(row)
    zeros = np.zeros(n, np.int32)
    pieces = [_Row(row, np.concatenate([np.zeros(p, np.float32), np.asarray(traj.logprobs, np.float32)]),
                   np.concatenate([np.zeros(p, np.int8), np.asarray(traj.loss_mask, np.int8)]), zeros.astype(np.int8),
                   np.arange(n, dtype=np.int32), zeros, zeros, zeros)]
    for k, m in enumerate(traj.meta_actions if pack_meta else (), start=1):
        head = np.asarray(m.prompt_ids[:n], np.int32)
        differ = np.flatnonzero(head != row[:len(head)])
        shared = int(differ[0]) if len(differ) else len(head)
        rest = np.asarray(m.prompt_ids[shared:], np.int32)
        if not len(rest):
            raise ValueError(f"trajectory {traj.job_index}: meta-action {k}'s refiner prompt is a prefix of the "
                             "trajectory's row, so its integer has no token of its own to be predicted from")
        a, b = len(m.action_ids), len(rest) + len(m.action_ids)
        pieces.append(_Row(np.concatenate([rest, np.asarray(m.action_ids, np.int32)]),
                           np.concatenate([np.zeros(len(rest), np.float32), np.asarray(m.action_logprobs, np.float32)]),
                           np.zeros(b, np.int8), np.concatenate([np.zeros(len(rest), np.int8), np.ones(a, np.int8)]),
                           np.arange(shared, shared + b, dtype=np.int32), np.full(b, k, np.int32),
                           np.zeros(b, np.int32), np.full(b, shared, np.int32)))
    return _Row(*(np.concatenate(f) for f in zip(*pieces)))


def to_batch(trajectories: Sequence[Trajectory], seq_len: int | None = None, meta_len: int | None = None,
             num_meta: int | None = None, pack_meta: bool = False, fine: bool = False) -> TrajectoryBatch:
    """Packs trajectories (and their meta-actions: into their rows with `pack_meta`, else as rows of their own)
    into bucketed, right-padded arrays. `fine`: without `seq_len`, the rows take `bucket`'s finer lengths."""
    n = len(trajectories)
    rows = [packed_row(t, pack_meta) for t in trajectories]
    lens = [len(r.tokens) for r in rows]
    T = seq_len or bucket(max(lens, default=1), fine=fine)
    if max(lens, default=0) > T:
        raise ValueError(f"a row of {max(lens)} tokens does not fit seq_len={T}")
    arrays = {f: np.zeros((n, T), dt) for f, dt in (("tokens", np.int32), ("logprobs", np.float32),
                                                    ("loss_mask", np.int8), ("meta_mask", np.int8),
                                                    ("positions", np.int32), ("segment_ids", np.int32),
                                                    ("shared_start", np.int32), ("shared_end", np.int32))}
    for i, r in enumerate(rows):
        for f, a in arrays.items():
            a[i, :len(r.tokens)] = getattr(r, f)
    return TrajectoryBatch(
        lengths=np.asarray(lens, np.int32),
        traj_lengths=np.asarray([len(t.job.prompt_ids) + len(t.response_ids) for t in trajectories], np.int32),
        prompt_lengths=np.asarray([len(t.job.prompt_ids) for t in trajectories], np.int32),
        group_ids=np.asarray([t.job.group_id for t in trajectories], np.int64),
        meta_rows=None if pack_meta else _meta_rows(trajectories, meta_len, num_meta), **arrays)


def _meta_rows(trajectories: Sequence[Trajectory], meta_len: int | None, num_meta: int | None) -> MetaRows:
    metas = [(i, m) for i, t in enumerate(trajectories) for m in t.meta_actions]
    M = num_meta if num_meta is not None else bucket(len(metas), minimum=1) if metas else 1
    mlens = [len(m.prompt_ids) + len(m.action_ids) for _, m in metas]
    Q = meta_len or bucket(max(mlens, default=1))
    if len(metas) > M:
        raise ValueError(f"{len(metas)} meta-actions do not fit num_meta={M}")
    out = MetaRows(np.zeros((M, Q), np.int32), np.zeros((M, Q), np.int8), np.zeros((M, Q), np.float32),
                   np.full((M,), -1, np.int32), np.zeros((M,), np.int32))
    for j, (i, m) in enumerate(metas):
        p, a = len(m.prompt_ids), len(m.action_ids)
        if p + a > Q:
            raise ValueError(f"a refiner prompt of {p + a} tokens does not fit meta_len={Q}")
        out.tokens[j, :p] = m.prompt_ids
        out.tokens[j, p:p + a] = m.action_ids
        out.mask[j, p:p + a] = 1
        out.logprobs[j, p:p + a] = m.action_logprobs  # per token: the PPO ratio is taken token by token
        out.index[j] = i
        out.lengths[j] = p + a
    return out
