"""Retrieval calls that never stop a rollout: a call that raises or hangs fails only the rows it was for."""

from __future__ import annotations

import threading
from typing import Callable, NamedTuple, Sequence

from searchr2_jax.retrieval.types import Passage, Retriever


class RetrievalTimeout(RuntimeError):
    pass


class SearchResult(NamedTuple):
    """One query's answer: its passages, or why there are none."""

    passages: list[Passage] | None
    error: str | None = None


def call_with_timeout(fn: Callable, timeout_s: float, *args):
    """Runs fn(*args) on a daemon thread; raises RetrievalTimeout if it has not returned in time (never hangs)."""
    box = {}

    def target():
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise RetrievalTimeout(f"retrieval did not answer within {timeout_s:.1f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def search_rows(retriever: Retriever, queries: Sequence[str], topk: int, timeout_s: float) -> list[SearchResult]:
    """One retrieval call for all `queries`. A call that times out fails every row; one that raises is retried query
    by query, so only the queries that fail on their own are marked."""
    try:
        answers = call_with_timeout(retriever.search, timeout_s, queries, topk)
    except RetrievalTimeout as e:
        return [SearchResult(None, str(e))] * len(queries)
    except Exception:  # noqa: BLE001 - isolate the failing rows
        return [_search_one(retriever, q, topk, timeout_s) for q in queries]
    return [SearchResult(p) for p in answers]


def _search_one(retriever: Retriever, query: str, topk: int, timeout_s: float) -> SearchResult:
    try:
        return SearchResult(call_with_timeout(retriever.search, timeout_s, [query], topk)[0])
    except Exception as e:  # noqa: BLE001
        return SearchResult(None, f"{type(e).__name__}: {e}")
