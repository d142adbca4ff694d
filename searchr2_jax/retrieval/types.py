"""The retriever contract shared by the rollout, the data tools and every backend."""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence


@dataclasses.dataclass(frozen=True)
class Passage:
    """One retrieved passage. `id` is the corpus id; `score` is the backend's similarity (higher is better)."""

    id: str
    title: str
    text: str
    score: float = 0.0


class Retriever(Protocol):
    """Anything with a batched `search`: dense faiss, BM25, or the Search-R1 HTTP client."""

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        ...


def live_queries(queries: Sequence[str], k: int) -> list[int]:
    """Checks a batched `search(queries, k)` call; returns the indices of the non-blank queries (a blank query has
    nothing to match and gets no passages, in its place)."""
    if isinstance(queries, str):
        raise TypeError("search takes a list of queries, not one string")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return [i for i, q in enumerate(queries) if q.strip()]


def format_passages(passages: Sequence[Passage]) -> str:
    """Search-R1's observation text: one `Doc i(Title: T) text` line per passage (i from 1)."""
    return "".join(f"Doc {i}(Title: {p.title}) {p.text}\n" for i, p in enumerate(passages, start=1))
