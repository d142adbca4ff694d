"""Dense step batches: several trajectories per row, so the train step does not compute on padding.

`Trainer.step_batch` builds one trajectory (with its packed meta-actions) per row, every row padded to the longest.
`pack_rows` moves the rows' real tokens into as few rows of the same length as first-fit decreasing finds, each
trajectory a sequence of its own (`decoder.Packing`: segment ids renumbered per row, shared ranges moved with their
tokens). Every per-token field moves with its token, so the loss, its denominators (per sequence, see
`losses.aggregate`) and the gradient are those of the unpacked batch; a trajectory's first token is predicted from
the previous one's last, which only the prompt's first token sees, and no loss reads it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from searchr2_jax.models import decoder
from searchr2_jax.rl.train_step import StepBatch

_PER_TOKEN = ("tokens", "valid", "loss_mask", "meta_mask", "old_logprobs", "advantages", "returns", "old_values")


def plan(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray, int]:
    """First-fit decreasing of rows of `lengths` tokens into rows of `capacity`: (destination row, offset) per row,
    and the number of rows used."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    dest, offset = np.zeros(len(lengths), np.int64), np.zeros(len(lengths), np.int64)
    used: list[int] = []
    for r in order:
        n = int(lengths[r])
        if n > capacity:
            raise ValueError(f"pack_rows: a row of {n} tokens does not fit rows of {capacity}")
        b = next((i for i, u in enumerate(used) if u + n <= capacity), len(used))
        if b == len(used):
            used.append(0)
        dest[r], offset[r] = b, used[b]
        used[b] += n
    return dest, offset, len(used)


class Plan(NamedTuple):
    """Where `pack_rows` puts each row of a batch: destination row and offset, and the rows it needs (rounded up to a
    multiple of micro-batches x data shards)."""

    dest: np.ndarray  # [N] int64
    offset: np.ndarray  # [N] int64
    rows: int


def plan_rows(batch: StepBatch, multiple: int) -> Plan:
    """The first-fit decreasing plan for `batch` (host arrays, each row's real tokens a prefix: right padding)."""
    valid = np.asarray(batch.valid)
    t = valid.shape[1]
    lengths = valid.sum(axis=1)
    if not np.array_equal(valid, np.arange(t)[None, :] < lengths[:, None]):
        raise ValueError("pack_rows: every row's real tokens must come first (right padding)")
    dest, offset, used = plan(lengths, t)
    return Plan(dest, offset, max(multiple, -(-used // multiple) * multiple))


def pack_rows(batch: StepBatch, where: Plan, rows: int | None = None) -> StepBatch:
    """`batch` moved as `where` says, into `where.rows` rows of the same length, or `rows` (more give padding rows,
    so that hosts can agree). `meta_rows` pass through unchanged."""
    rows = where.rows if rows is None else rows
    if rows < where.rows:
        raise ValueError(f"pack_rows: {rows} rows for a plan of {where.rows}")
    valid = np.asarray(batch.valid)
    n, t = valid.shape
    lengths = valid.sum(axis=1)
    dest, offset = where.dest, where.offset
    src_r = np.repeat(np.arange(n), lengths)
    src_c = np.concatenate([np.arange(k) for k in lengths]) if n else np.zeros(0, np.int64)
    dst_r, dst_c = dest[src_r], offset[src_r] + src_c

    def move(x):
        x = np.asarray(x)
        out = np.zeros((rows, t), x.dtype)
        out[dst_r, dst_c] = x[src_r, src_c]
        return out

    fields = {f: move(getattr(batch, f)) for f in _PER_TOKEN}
    p = batch.packing
    seg = np.asarray(p.segment_ids)
    # A row's segment ids continue after those of the rows placed before it in the same destination row.
    spans = np.where(valid, seg, -1).max(axis=1) + 1
    base = np.zeros(n, np.int64)
    ends = np.zeros(rows, np.int64)
    for r in np.lexsort((offset, dest)):
        base[r], ends[dest[r]] = ends[dest[r]], ends[dest[r]] + spans[r]
    start, end = np.asarray(p.shared_start), np.asarray(p.shared_end)
    shift = np.where(end > start, offset[:, None], 0)
    packing = decoder.Packing(move(p.positions), move(seg + base[:, None]), move(start + shift), move(end + shift))
    return batch._replace(packing=packing, **fields)
