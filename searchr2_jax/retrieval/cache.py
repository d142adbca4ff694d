"""A disk cache in front of any retriever, so an evaluation can be replayed exactly.

    r = CachedRetriever(retriever, cache_dir, describe(retriever, cfg))
    r.search(queries, k)       # answered from the cache where it can; misses go to `retriever` and are appended

Results are keyed by (query, k) within one file per retriever description (backend, its settings, the corpus
fingerprint and, for dense retrieval, the encoder's): another corpus, encoder or setting gets another file, never a
stale answer. The file is append-only jsonl, flushed after each call, so an interrupted run keeps what it fetched;
a torn last line (a kill mid-write) is dropped with a warning. `calls` counts the queries sent to the retriever.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

from searchr2_jax.jsonl import append_jsonl, iter_jsonl
from searchr2_jax.retrieval.types import Passage, live_queries


def describe(retriever, cfg) -> dict:
    """What makes two retrievers answer alike: backend, its settings, corpus and encoder fingerprints."""
    out = {"backend": cfg.backend, "strip_title_quotes": bool(cfg.strip_title_quotes)}
    if cfg.backend == "http":
        out["url"] = cfg.http.url
        return out
    out["corpus"] = dict(retriever.corpus.fingerprint)
    if cfg.backend == "bm25":
        out["bm25"] = cfg.bm25.to_dict()
    else:
        enc = retriever.encoder.fingerprint
        out["encoder"] = {k: enc[k] for k in sorted(enc)}
        out["faiss"] = {"factory": cfg.faiss.factory, "search_params": cfg.faiss.search_params,
                        "index_dir": bool(cfg.index_dir)}
    return out


def key_of(description: dict) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:16]


class CachedRetriever:
    def __init__(self, retriever, cache_dir: str, description: dict):
        self.retriever, self.description = retriever, description
        os.makedirs(cache_dir, exist_ok=True)
        self.path = os.path.join(cache_dir, f"retrieval_{key_of(description)}.jsonl")
        self.calls = 0
        self._table: dict[tuple[str, int], list[Passage]] = {}
        if os.path.isfile(self.path):
            self._load()
        else:
            with open(self.path + ".json", "w", encoding="utf-8") as f:  # what this file's answers came from
                json.dump(description, f, indent=1, sort_keys=True)

    def _load(self) -> None:
        for n, rec in iter_jsonl(self.path, torn_tail_ok=True):
            try:
                self._table[(rec["q"], int(rec["k"]))] = [Passage(*p) for p in rec["p"]]
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{self.path}: row {n}: not a cache record ({e!r}); delete the file") from None

    def __len__(self) -> int:
        return len(self._table)

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        live = live_queries(queries, k)
        misses = sorted({queries[i] for i in live if (queries[i], k) not in self._table})
        if misses:
            results = self.retriever.search(misses, k)
            self.calls += len(misses)
            for q, ps in zip(misses, results):
                self._table[(q, k)] = list(ps)
            append_jsonl(self.path, ({"q": q, "k": k, "p": [[p.id, p.title, p.text, p.score] for p in ps]}
                                     for q, ps in zip(misses, results)))
        live_set = set(live)
        return [list(self._table[(q, k)]) if i in live_set else [] for i, q in enumerate(queries)]
