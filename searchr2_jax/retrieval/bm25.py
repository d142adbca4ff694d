"""BM25 over a Search-R1 corpus with `bm25s` (scipy-sparse scores, numpy top-k; no Java, no pyserini).

Chosen over `rank_bm25` (last release 2022, scores every document in a Python loop per query) because bm25s is
maintained, pure Python with numpy/scipy only, and precomputes the per-term BM25 weights as a sparse matrix so a
query costs a few sparse column sums. Lucene's BM25 variant, k1=1.5, b=0.75, English stopwords, no stemmer (the
stemmer would add PyStemmer).

  r = BM25Retriever.from_corpus("corpus.jsonl")   # or a list of {"id", "contents"} dicts
  r.save("bm25_dir"); r = BM25Retriever.load("bm25_dir", "corpus.jsonl")
  r.search(["who wrote hamlet"], k=3) -> [[Passage, ...]]

Passages that share no term with the query (score 0) are not returned, as with Lucene; an empty query returns [].
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from searchr2_jax.retrieval.corpus import Corpus, open_corpus
from searchr2_jax.retrieval.errors import IndexMismatchError
from searchr2_jax.retrieval.index import _read_json, _write_json, check_compatible
from searchr2_jax.retrieval.types import Passage, live_queries

META = "meta.json"


class BM25Retriever:
    def __init__(self, model, tokenizer, corpus: Corpus, strip_title_quotes: bool = True, params: dict | None = None):
        self.model, self.tokenizer, self.corpus = model, tokenizer, corpus
        self.strip_title_quotes = strip_title_quotes
        self.params = params or {}

    @classmethod
    def from_corpus(cls, corpus, k1: float = 1.5, b: float = 0.75, method: str = "lucene", stopwords: str = "en",
                    chunk: int = 65536, progress: bool = False, strip_title_quotes: bool = True) -> "BM25Retriever":
        """Indexes `corpus` (list of dicts, .jsonl or .parquet path, or a Corpus) in memory, chunk by chunk."""
        import bm25s
        from bm25s.tokenization import Tokenizer

        corpus = open_corpus(corpus)
        tok = Tokenizer(stopwords=stopwords or None)
        ids: list[list[int]] = []
        from tqdm.auto import tqdm

        with tqdm(total=len(corpus), unit="passage", desc="bm25 tokenize", disable=not progress) as bar:
            for _, _, contents in corpus.batches(chunk):
                ids += tok.tokenize(contents, update_vocab=True, return_as="ids", show_progress=False)
                bar.update(len(contents))
        model = bm25s.BM25(k1=k1, b=b, method=method)
        if len(corpus):
            model.index((ids, tok.get_vocab_dict()), show_progress=progress)
        params = {"k1": k1, "b": b, "method": method, "stopwords": stopwords, "library": f"bm25s {bm25s.__version__}"}
        return cls(model, tok, corpus, strip_title_quotes, params)

    def save(self, out_dir: str) -> None:
        os.makedirs(out_dir, exist_ok=True)
        self.model.save(out_dir, show_progress=False)
        self.tokenizer.save_vocab(out_dir)
        self.tokenizer.save_stopwords(out_dir)
        _write_json(os.path.join(out_dir, META), {"backend": "bm25", "corpus": self.corpus.fingerprint,
                                                 "corpus_source": self.corpus.source, **self.params})

    @classmethod
    def load(cls, index_dir: str, corpus, strip_title_quotes: bool = True, mmap: bool = True) -> "BM25Retriever":
        import bm25s
        from bm25s.tokenization import Tokenizer

        meta_path = os.path.join(index_dir, META)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{index_dir}: no BM25 index ({META}); build one with "
                                    f"launch/build_index.py --backend=bm25")
        meta = _read_json(meta_path)
        if meta.get("backend") != "bm25":
            raise IndexMismatchError(f"{index_dir}: a {meta.get('backend', 'dense')!r} index, not a BM25 one")
        corpus = open_corpus(corpus)
        check_compatible(index_dir, meta, None, corpus.fingerprint)
        model = bm25s.BM25.load(index_dir, mmap=mmap, show_progress=False)
        tok = Tokenizer(stopwords=meta.get("stopwords") or None)
        tok.load_vocab(index_dir)
        tok.load_stopwords(index_dir)
        return cls(model, tok, corpus, strip_title_quotes, {k: meta[k] for k in ("k1", "b", "method", "stopwords")})

    def __len__(self) -> int:
        return len(self.corpus)

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        live = live_queries(queries, k)
        out: list[list[Passage]] = [[] for _ in queries]
        k = min(k, len(self.corpus))
        if not live or k == 0:
            return out
        q_ids = self.tokenizer.tokenize([queries[i] for i in live], update_vocab=False, return_as="ids",
                                        show_progress=False)
        docs, scores = self.model.retrieve(q_ids, k=k, show_progress=False, n_threads=0)
        for i, row_docs, row_scores in zip(live, np.asarray(docs), np.asarray(scores)):
            out[i] = [self.corpus.passage(int(d), float(s), self.strip_title_quotes)
                      for d, s in zip(row_docs, row_scores) if s > 0]
        return out
