"""Serve Search-R1's `POST /retrieve` protocol from any backend (stdlib ThreadingHTTPServer).

  python launch/serve_retrieval.py --retrieval.backend=bm25 --retrieval.corpus_path=corpus.jsonl --port=8000
  python launch/serve_retrieval.py --retrieval.corpus_path=wiki-18.jsonl --retrieval.index_dir=/data/e5_flat \
      --retrieval.encoder.path=/models/e5-base-v2 --port=8000

Request {"queries": [...], "topk": 3, "return_scores": true} -> {"result": [[{"document": {"id", "contents"},
"score"}]]}, so Search-R1's trainer can use this server and our HttpRetriever can use Search-R1's. GET /health says
the backend and corpus size. It listens on 127.0.0.1 unless --host says otherwise, takes JSON bodies only
(Content-Type: application/json) and refuses requests beyond --max_body_bytes, --max_queries, --max_topk and
--max_query_chars with a 4xx and a JSON reason (searchr2_jax/retrieval/http.py: ServerLimits). The corpus and
index are loaded before the port opens (the log says when it is ready).
"""

from __future__ import annotations

import time

from absl import app, flags, logging
from ml_collections import config_flags

from searchr2_jax.config import default_retrieval_config
from searchr2_jax.retrieval.http import ServerLimits
from searchr2_jax.retrieval.retriever import build_retriever

_CFG = config_flags.DEFINE_config_dict("retrieval", default_retrieval_config(), "Retrieval config (see retriever.py).")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Interface to listen on. The protocol has no authentication: "
                            "0.0.0.0 (all interfaces) exposes the corpus to the network.")
_PORT = flags.DEFINE_integer("port", 8000, "Port to listen on (0: a free port, printed when ready).")
_DEFAULTS = ServerLimits()
_MAX_BODY = flags.DEFINE_integer("max_body_bytes", _DEFAULTS.max_body_bytes, "Larger request bodies get 413, unread.")
_MAX_QUERIES = flags.DEFINE_integer("max_queries", _DEFAULTS.max_queries, "More queries in one request get 400.")
_MAX_TOPK = flags.DEFINE_integer("max_topk", _DEFAULTS.max_topk, "A larger topk gets 400.")
_MAX_QUERY_CHARS = flags.DEFINE_integer("max_query_chars", _DEFAULTS.max_query_chars, "A longer query gets 400.")
_READ_TIMEOUT = flags.DEFINE_float("read_timeout_s", _DEFAULTS.read_timeout_s,
                                   "A client silent this long mid-request (or idle on keep-alive) is disconnected.")


def main(argv):
    del argv
    cfg = _CFG.value
    if cfg.backend == "http":
        raise app.UsageError("serve a local backend (dense or bm25), not another server")
    t0 = time.time()
    logging.info("loading %s retriever over %s ...", cfg.backend, cfg.corpus_path)
    retriever = build_retriever(cfg)
    retriever.search(["warm up"], cfg.k)  # compile the query encoder before the first request
    from searchr2_jax.retrieval.http import make_server

    limits = ServerLimits(max_body_bytes=_MAX_BODY.value, max_queries=_MAX_QUERIES.value, max_topk=_MAX_TOPK.value,
                          max_query_chars=_MAX_QUERY_CHARS.value, read_timeout_s=_READ_TIMEOUT.value)
    if _HOST.value not in ("127.0.0.1", "localhost", "::1"):
        logging.warning("listening on %s: anyone who can reach it can query the corpus (no authentication)",
                        _HOST.value)
    server = make_server(retriever, _HOST.value, _PORT.value, default_topk=cfg.k, limits=limits)
    logging.info("ready in %.1f s: %d passages, POST http://%s:%d/retrieve", time.time() - t0, len(retriever),
                 _HOST.value, server.server_port)
    print(f"serving /retrieve on http://{_HOST.value}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    app.run(main)
