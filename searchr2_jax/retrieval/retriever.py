"""One retriever API and one factory: `build_retriever(config, corpus=None) -> Retriever`.

Every backend answers `search(queries: list[str], k) -> list[list[Passage]]` (batched, one inner list per query):

  backend="dense"  JAX encoder (all-MiniLM-L6-v2 by default, e5/bge from an HF folder) + in-process faiss
  backend="bm25"   bm25s over the corpus
  backend="http"   a Search-R1 `/retrieve` server (ours: launch/serve_retrieval.py, or Search-R1's own)

In-memory retriever over a small corpus (e.g. the synthetic world), in one call:

  from searchr2_jax.retrieval.retriever import build_retriever
  from searchr2_jax.config import default_retrieval_config
  cfg = default_retrieval_config(); cfg.backend = "bm25"            # or "dense"
  r = build_retriever(cfg, corpus=[{"id": "0", "contents": '"Title"\\ntext'}, ...])   # or a .jsonl path
  r.search(["who founded Kalo?"], k=3)
  # equivalently: BM25Retriever.from_corpus(records) / DenseRetriever.from_corpus(records)

With `index_dir` set, a prebuilt index (launch/build_index.py) is loaded and checked against the encoder and corpus
instead. Failures (server down or slow after the retries, malformed replies) raise `RetrievalError`; bad corpora
raise `CorpusError` naming file and line; an index built with another encoder/corpus raises `IndexMismatchError`.
Empty queries get [] and k larger than the corpus returns what exists.
"""

from __future__ import annotations

import ml_collections

from searchr2_jax.retrieval.errors import CorpusError, IndexMismatchError, RetrievalError
from searchr2_jax.retrieval.types import Passage, Retriever, format_passages

__all__ = ["build_retriever", "load_encoder_from_config", "RetrievalError",
           "CorpusError", "IndexMismatchError", "Passage", "Retriever", "format_passages"]

BACKENDS = ("dense", "bm25", "http")


def load_encoder_from_config(cfg: ml_collections.ConfigDict):
    from searchr2_jax.models.encoder import TextEncoder

    e = cfg.encoder
    return TextEncoder.from_pretrained(e.path, pooling=e.pooling, normalize=e.normalize, max_length=e.max_length,
                                       dtype=e.dtype)


def build_retriever(cfg: ml_collections.ConfigDict, corpus=None, encoder=None) -> Retriever:
    """A Retriever from `cfg` (see default_retrieval_config). `corpus`: list of {"id", "contents"} dicts, a
    .jsonl/.parquet path or a Corpus; it overrides cfg.corpus_path. `encoder`: a TextEncoder to share."""
    backend = cfg.backend
    if backend not in BACKENDS:
        raise ValueError(f"retrieval.backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "http":
        from searchr2_jax.retrieval.http import HttpRetriever

        h = cfg.http
        return HttpRetriever(h.url, h.timeout_s, h.retries, h.backoff_s, h.max_backoff_s, cfg.strip_title_quotes)

    if corpus is None:
        if not cfg.corpus_path:
            raise ValueError(f"retrieval.backend={backend!r} needs a corpus: set retrieval.corpus_path or pass corpus=")
        corpus = cfg.corpus_path
    from searchr2_jax.retrieval.corpus import open_corpus

    corpus = open_corpus(corpus)
    if backend == "bm25":
        from searchr2_jax.retrieval.bm25 import BM25Retriever

        if cfg.index_dir:
            return BM25Retriever.load(cfg.index_dir, corpus, cfg.strip_title_quotes)
        b = cfg.bm25
        return BM25Retriever.from_corpus(corpus, b.k1, b.b, b.method, b.stopwords,
                                         strip_title_quotes=cfg.strip_title_quotes)

    from searchr2_jax.retrieval.dense import DenseRetriever, Prefixes

    encoder = encoder or load_encoder_from_config(cfg)
    e = cfg.encoder
    prefixes = Prefixes(query=e.query_prefix, passage=e.passage_prefix)
    if cfg.index_dir:
        return DenseRetriever.load(cfg.index_dir, corpus, encoder, prefixes, cfg.strip_title_quotes, e.batch_size,
                                   cfg.faiss.search_params, cfg.faiss.mmap)
    return DenseRetriever.from_corpus(corpus, encoder, cfg.faiss.factory, prefixes, e.batch_size,
                                      cfg.strip_title_quotes, cfg.faiss.search_params)
