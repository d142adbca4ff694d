"""Recall@1/3/10 of dense and BM25 retrieval on the offline Wikipedia-summaries QA set (10,033 passages).

  python launch/wiki_recall.py                                   # all-MiniLM-L6-v2 + Flat, and BM25
  python launch/wiki_recall.py --backends=bm25 --limit=1000
  python launch/wiki_recall.py --retrieval.encoder.path=/models/e5-base-v2 --retrieval.faiss.factory=HNSW32

The dense index is built once (about 8 minutes for MiniLM on 2 CPU cores) under $SEARCHR2_CACHE
(~/.cache/searchr2_jax) and reused. Prints one JSON object.
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from searchr2_jax.config import default_retrieval_config

_CFG = config_flags.DEFINE_config_dict("retrieval", default_retrieval_config(), "Retrieval config (see retriever.py).")
_BACKENDS = flags.DEFINE_list("backends", ["dense", "bm25"], "Backends to evaluate.")
_LIMIT = flags.DEFINE_integer("limit", 0, "Evaluate only the first N questions (0 = all 8,796).")
_CACHE = flags.DEFINE_string("cache_dir", None, "Where the wiki corpus and dense index are kept.")


def main(argv):
    del argv
    from searchr2_jax.retrieval import wiki

    out = {}
    for backend in _BACKENDS.value:
        retriever, questions = wiki.wiki_retriever(backend, _CFG.value, _CACHE.value)
        if _LIMIT.value:
            questions = questions[: _LIMIT.value]
        for key, v in wiki.recall_at(retriever, questions).items():
            out[f"{key}_{backend}"] = v
    print(json.dumps(out, indent=2, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
