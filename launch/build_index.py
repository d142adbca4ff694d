"""Build a retrieval index over a Search-R1 corpus (jsonl or parquet): dense (JAX encoder + faiss) or BM25.

  python launch/build_index.py --retrieval.corpus_path=wiki-18.jsonl --out_dir=/data/e5_flat \
      --retrieval.encoder.path=/models/e5-base-v2 --retrieval.faiss.factory=Flat --retrieval.encoder.batch_size=256
  python launch/build_index.py --retrieval.corpus_path=corpus.jsonl --out_dir=/tmp/idx   # all-MiniLM-L6-v2, Flat
  python launch/build_index.py --retrieval.backend=bm25 --retrieval.corpus_path=corpus.jsonl --out_dir=/tmp/bm25
  python launch/build_index.py --retrieval.corpus_path=wiki --out_dir=/tmp/wiki_idx      # the offline wiki summaries

Dense builds show a progress bar with ETA, write embeddings.npy (memory-mapped) as they go, and resume where an
interrupted run stopped (same encoder and corpus; --overwrite starts over). Serve or search the result with
--retrieval.index_dir=OUT_DIR (launch/serve_retrieval.py, training configs); a mismatched encoder/corpus is refused.
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from searchr2_jax.config import default_retrieval_config

_CFG = config_flags.DEFINE_config_dict("retrieval", default_retrieval_config(), "Retrieval config (see retriever.py).")
_OUT = flags.DEFINE_string("out_dir", None, "Index directory to write.", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Discard a partial build in --out_dir instead of resuming it.")
_STOP_AFTER = flags.DEFINE_integer("stop_after", None, "Encode at most this many rows this run (staged builds).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")


def main(argv):
    del argv
    cfg = _CFG.value
    from searchr2_jax.retrieval.corpus import open_corpus

    corpus_path = cfg.corpus_path
    if corpus_path == "wiki":
        from searchr2_jax.retrieval import wiki

        records, _ = wiki.load_wiki()
        corpus_path = wiki.write_corpus(records, os.path.join(wiki.default_cache_dir(), "wiki_summaries_en.jsonl"))
    if not corpus_path:
        raise app.UsageError("--retrieval.corpus_path is required (a .jsonl or .parquet corpus, or 'wiki')")
    corpus = open_corpus(corpus_path)
    logging.info("corpus %s: %d passages", corpus_path, len(corpus))
    if cfg.backend == "bm25":
        from searchr2_jax.retrieval.bm25 import BM25Retriever

        b = cfg.bm25
        r = BM25Retriever.from_corpus(corpus, b.k1, b.b, b.method, b.stopwords, progress=_PROGRESS.value)
        r.save(_OUT.value)
        print(json.dumps({"backend": "bm25", "out_dir": _OUT.value, "rows": len(corpus)}))
        return
    if cfg.backend != "dense":
        raise app.UsageError(f"--retrieval.backend must be dense or bm25 to build an index, got {cfg.backend!r}")
    from searchr2_jax.models.encoder import default_prefixes
    from searchr2_jax.retrieval.index import BuildOptions, build_index
    from searchr2_jax.retrieval.retriever import load_encoder_from_config

    encoder = load_encoder_from_config(cfg)
    pp = cfg.encoder.passage_prefix
    options = BuildOptions(batch_size=cfg.encoder.batch_size, progress=_PROGRESS.value, overwrite=_OVERWRITE.value,
                           stop_after=_STOP_AFTER.value)
    meta = build_index(corpus, encoder, _OUT.value, cfg.faiss.factory,
                       default_prefixes(encoder.name)[1] if pp is None else pp, options)
    print(json.dumps({k: meta[k] for k in ("rows_done", "complete") if k in meta} |
                     {k: meta.get(k) for k in ("factory", "encode_s", "faiss_build_s") if k in meta}))


if __name__ == "__main__":
    app.run(main)
