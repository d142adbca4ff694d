"""Dense retrieval in process: the JAX query encoder + a faiss inner-product index + corpus row lookup.

  r = DenseRetriever.from_corpus(records)                  # in memory: MiniLM by default, Flat index
  r = DenseRetriever.load("index_dir", "corpus.jsonl", encoder)   # a launch/build_index.py build, checked
  r.search(["query one", "query two"], k=3) -> [[Passage, ...], ...]

Queries are encoded in one batched call (power-of-two buckets, so the first calls compile and later ones reuse).
An empty query returns [] for its row; an over-long one is truncated at the encoder's max length.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from searchr2_jax.models.encoder import TextEncoder, default_prefixes
from searchr2_jax.retrieval.corpus import Corpus, open_corpus
from searchr2_jax.retrieval.index import load_index, make_faiss, set_search_params
from searchr2_jax.retrieval.types import Passage, live_queries


class Prefixes(NamedTuple):
    """The text written before each query and each passage when they are encoded; None = the encoder's own
    (`default_prefixes`: E5's `query: `/`passage: `, bge's query instruction, none for MiniLM)."""

    query: str | None = None
    passage: str | None = None


class DenseRetriever:
    def __init__(self, encoder: TextEncoder, index, corpus: Corpus, query_prefix: str = "",
                 strip_title_quotes: bool = True, batch_size: int = 64, meta: dict | None = None):
        if index.ntotal != len(corpus):
            raise ValueError(f"the index has {index.ntotal} vectors but the corpus {corpus.source} has "
                             f"{len(corpus)} rows")
        self.encoder, self.index, self.corpus = encoder, index, corpus
        self.query_prefix, self.strip_title_quotes, self.batch_size = query_prefix, strip_title_quotes, batch_size
        self.meta = meta or {}

    @classmethod
    def from_corpus(cls, corpus, encoder: TextEncoder | None = None, factory: str = "Flat",
                    prefixes: Prefixes = Prefixes(), batch_size: int = 64, strip_title_quotes: bool = True,
                    search_params: str = "") -> "DenseRetriever":
        """Encodes `corpus` (list of {"id", "contents"} dicts, .jsonl/.parquet path or Corpus) and indexes it in
        memory. Prefixes default to the encoder's (E5: `query: `/`passage: `)."""
        corpus = open_corpus(corpus)
        encoder = encoder or TextEncoder.from_pretrained()
        dq, dp = default_prefixes(encoder.name)
        query_prefix = dq if prefixes.query is None else prefixes.query
        passage_prefix = dp if prefixes.passage is None else prefixes.passage
        emb = np.zeros((len(corpus), encoder.dim), np.float32)
        for start, _, contents in corpus.batches(max(4096, batch_size)):
            emb[start:start + len(contents)] = encoder.encode(contents, prefix=passage_prefix, batch_size=batch_size)
        index = make_faiss(emb, factory)
        set_search_params(index, factory, search_params)
        return cls(encoder, index, corpus, query_prefix, strip_title_quotes, batch_size,
                   meta={"factory": factory, "passage_prefix": passage_prefix})

    @classmethod
    def load(cls, index_dir: str, corpus, encoder: TextEncoder, prefixes: Prefixes = Prefixes(),
             strip_title_quotes: bool = True, batch_size: int = 64, search_params: str = "",
             mmap: bool = False) -> "DenseRetriever":
        """A built index, refused (IndexMismatchError) if it was built with another encoder, prefix or corpus."""
        corpus = open_corpus(corpus)
        dq, dp = default_prefixes(encoder.name)
        index, meta = load_index(index_dir, encoder.fingerprint, corpus.fingerprint,
                                 dp if prefixes.passage is None else prefixes.passage, search_params, mmap=mmap)
        return cls(encoder, index, corpus, dq if prefixes.query is None else prefixes.query, strip_title_quotes,
                   batch_size, meta)

    def __len__(self) -> int:
        return len(self.corpus)

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        live = live_queries(queries, k)
        out: list[list[Passage]] = [[] for _ in queries]
        k = min(k, self.index.ntotal)
        if not live or k == 0:
            return out
        q = self.encoder.encode([queries[i] for i in live], prefix=self.query_prefix, batch_size=self.batch_size)
        scores, rows = self.index.search(q, k)
        for i, row_ids, row_scores in zip(live, rows, scores):
            out[i] = [self.corpus.passage(int(r), float(s), self.strip_title_quotes)
                      for r, s in zip(row_ids, row_scores) if r >= 0]  # faiss pads short lists with -1
        return out
