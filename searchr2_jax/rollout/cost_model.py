"""How the rollout engine sizes its device calls: which chunk appends and which decode rows share a call.

Both splits trade the fixed cost of a call against the padding a shared call adds: rows are padded to a power of
two (`bucket`), chunks to their group's longest, and a decode call attends to its longest row's window. The
constants are a linear cost model fitted by least squares on one base rollout of SmolLM2-135M (the fit and the
figures behind it: docs/performance.md, "Measurements behind design choices"); they only choose how work is split,
never what is computed, so a rollout's tokens do not depend on them.
"""

from __future__ import annotations

from typing import Callable, Sequence

from searchr2_jax.rollout.types import bucket

# A chunk append's fixed cost, in padded chunk tokens: prefill is compute-bound, so a call costs its padded tokens
# plus this much for the call itself.
APPEND_CALL_TOKENS = 48

# A decode step's cost in attended cache positions (rows x window): a call also reads every weight once, which costs
# about as much as DECODE_CALL_POSITIONS positions, and each row DECODE_ROW_POSITIONS more (its MLP and sampling).
DECODE_CALL_POSITIONS = 3400
DECODE_ROW_POSITIONS = 110


def cheapest_split(n: int, cost: Callable[[int, int], float]) -> list[tuple[int, int]]:
    """Splits items 0..n-1, in order, into consecutive calls (i, j) that minimize the total `cost(i, j)` (dynamic
    programming; on ties, the shorter first call)."""
    best = [(0.0, n)] * (n + 1)  # best[i]: (cost of items i.., end of their first call)
    for i in reversed(range(n)):
        best[i] = min((cost(i, j) + best[j][0], j) for j in range(i + 1, n + 1))
    out, i = [], 0
    while i < n:
        out.append((i, best[i][1]))
        i = best[i][1]
    return out


def append_groups(sizes: Sequence[int]) -> list[tuple[int, int, int]]:
    """Splits chunks of `sizes` tokens (longest first) into append calls: (start, end, rows) per call, where `rows`
    (a power of two >= end - start) is its row bucket and its chunk is padded to `bucket(sizes[start], fine=True)`.
    The split minimizes the padded tokens plus `APPEND_CALL_TOKENS` per call: observations range from a short
    invalid-action message to a full passage block, and one call for all of them would pad each to the longest."""
    rows = lambda i, j: bucket(j - i, minimum=1)
    cost = lambda i, j: APPEND_CALL_TOKENS + rows(i, j) * bucket(sizes[i], minimum=1, fine=True)
    return [(i, j, rows(i, j)) for i, j in cheapest_split(len(sizes), cost)]


def decode_groups(windows: Sequence[int]) -> list[tuple[int, int]]:
    """Splits running rows, sorted by the attention window each needs (ascending), into decode calls (start, end)
    that minimize the modelled cost of a step. One long conversation then no longer makes every short one attend to
    its long window (two calls cost less than one padded to the longest), and 17 rows go as 16 + 1 rather than padded
    to 32 when their windows are long."""
    rows = lambda i, j: bucket(j - i, minimum=1)
    cost = lambda i, j: DECODE_CALL_POSITIONS + rows(i, j) * (DECODE_ROW_POSITIONS + windows[j - 1])
    return cheapest_split(len(windows), cost)
