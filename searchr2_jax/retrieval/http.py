"""Search-R1's `/retrieve` HTTP protocol: a client with timeouts and bounded retries, and a stdlib server.

Request  POST /retrieve  {"queries": ["q1", "q2"], "topk": 3, "return_scores": true}
Response {"result": [[{"document": {"id": "0", "contents": "\\"Title\\"\\ntext"}, "score": 0.83}, ...], ...]}
(with "return_scores": false Search-R1's server puts the documents themselves in the inner lists; both parse.)

`HttpRetriever` talks to a Search-R1 server (FastAPI, `search_r1/search/retrieval_server.py`) or to ours;
`make_server` / `serve_in_thread` answer the same protocol from any backend, so set-ups interoperate both ways. Every
attempt has a timeout; connection errors, timeouts and 5xx answers are retried a bounded number of times with
exponential back-off, then `RetrievalError` says which URL failed and why. A 4xx answer is not retried.

The server listens on 127.0.0.1 unless told otherwise and refuses what it should not attempt (`ServerLimits`: body
size, queries per request, `topk`, query length; JSON bodies only) with a 4xx and `{"error": reason}`, then keeps
serving; `server_fuzz.fuzz_server` checks that against hostile requests.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Sequence

from searchr2_jax.retrieval.corpus import contents_of, to_passage
from searchr2_jax.retrieval.errors import RetrievalError
from searchr2_jax.retrieval.types import Passage, live_queries

log = logging.getLogger(__name__)


def _parse_document(doc, where: str, strip_title_quotes: bool) -> tuple[str, str]:
    if not isinstance(doc, dict):
        raise RetrievalError(f"{where}: a document must be an object, got {type(doc).__name__}")
    if isinstance(doc.get("contents"), str):
        return str(doc.get("id", "")), doc["contents"]
    if isinstance(doc.get("title"), str) and isinstance(doc.get("text"), str):  # pyserini-style documents
        return str(doc.get("id", "")), f'"{doc["title"]}"\n{doc["text"]}'
    raise RetrievalError(f"{where}: document has no 'contents' string (keys: {sorted(doc)})")


def parse_response(body: dict, n_queries: int, strip_title_quotes: bool = True, url: str = "") -> list[list[Passage]]:
    """Passages from a `/retrieve` answer; a malformed answer raises RetrievalError naming the bad part."""
    if not isinstance(body, dict) or not isinstance(body.get("result"), list):
        raise RetrievalError(f"{url}: response has no 'result' list (got {str(body)[:200]!r})")
    result = body["result"]
    if len(result) != n_queries:
        raise RetrievalError(f"{url}: {len(result)} result lists for {n_queries} queries")
    out = []
    for qi, items in enumerate(result):
        if not isinstance(items, list):
            raise RetrievalError(f"{url}: result[{qi}] is not a list")
        row = []
        for di, item in enumerate(items):
            where = f"{url}: result[{qi}][{di}]"
            if isinstance(item, dict) and "document" in item:
                doc_id, contents = _parse_document(item["document"], where, strip_title_quotes)
                score = item.get("score", 0.0)
                if not isinstance(score, (int, float)):
                    raise RetrievalError(f"{where}: score is not a number ({score!r})")
            else:
                (doc_id, contents), score = _parse_document(item, where, strip_title_quotes), 0.0
            row.append(to_passage(doc_id, contents, float(score), strip_title_quotes))
        out.append(row)
    return out


class HttpRetriever:
    """A `Retriever` backed by a `/retrieve` server. Never hangs: each attempt times out after `timeout_s`; at most
    `retries` further attempts follow, `backoff_s * 2**i` apart (capped at `max_backoff_s`)."""

    def __init__(self, url: str = "http://127.0.0.1:8000/retrieve", timeout_s: float = 30.0, retries: int = 3,
                 backoff_s: float = 0.5, max_backoff_s: float = 8.0, strip_title_quotes: bool = True):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"retrieval url must start with http:// or https://, got {url!r}")
        self.url, self.timeout_s, self.retries = url, float(timeout_s), int(retries)
        self.backoff_s, self.max_backoff_s = float(backoff_s), float(max_backoff_s)
        self.strip_title_quotes = strip_title_quotes

    def _post(self, payload: dict) -> dict:
        data = json.dumps(payload).encode()
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s))
            req = urllib.request.Request(self.url, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                deadline = time.monotonic() + self.timeout_s
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    # The socket timeout bounds each read, not the whole reply: a server trickling bytes would
                    # never trip it, so the body is read in chunks against the attempt's deadline.
                    chunks = []
                    while chunk := resp.read1(1 << 16):  # at most one recv per call
                        chunks.append(chunk)
                        if time.monotonic() > deadline:
                            raise TimeoutError("reply not complete within the timeout")
                    raw = b"".join(chunks)
                    if resp.length:  # read1 returns b"" at a premature end instead of raising, as read() does
                        raise http.client.IncompleteRead(raw, resp.length)
                try:
                    return json.loads(raw)
                except json.JSONDecodeError as e:
                    raise RetrievalError(f"{self.url}: response is not JSON ({e.msg}): {raw[:200]!r}") from None
            except urllib.error.HTTPError as e:
                try:
                    detail = e.read()[:500].decode("utf-8", "replace")
                except (OSError, http.client.HTTPException) as read_err:  # the error body itself timed out or broke
                    detail = f"(body unreadable: {type(read_err).__name__})"
                if e.code < 500:  # the request itself is wrong: retrying cannot help
                    raise RetrievalError(f"{self.url}: HTTP {e.code}: {detail}") from None
                last = f"HTTP {e.code}: {detail}"
            except http.client.HTTPException as e:  # not an HTTP reply (BadStatusLine), or cut off (IncompleteRead)
                last = f"bad or cut-off HTTP reply ({type(e).__name__}: {str(e)[:200]})"
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                last = f"timed out after {self.timeout_s:g} s" if isinstance(reason, (socket.timeout, TimeoutError)) \
                    else f"{type(reason).__name__}: {reason}"
            log.warning("retrieval attempt %d/%d to %s failed: %s", attempt + 1, self.retries + 1, self.url, last)
        raise RetrievalError(f"retrieval server {self.url} unreachable or failing after {self.retries + 1} attempts "
                             f"(timeout {self.timeout_s:g} s each): {last}. Is it running? "
                             f"(python launch/serve_retrieval.py --port=...)")

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        live_queries(queries, k)  # argument checks; blank queries still go to the server, which answers for them
        queries = list(queries)
        if not queries:
            return []
        body = self._post({"queries": queries, "topk": int(k), "return_scores": True})
        return parse_response(body, len(queries), self.strip_title_quotes, self.url)


# ------------------------------------------------------------------------------------------------------ server


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """What one `/retrieve` request may ask of the server (launch/serve_retrieval.py has a flag for each).

    Beyond a limit the server answers 4xx with `{"error": reason}` naming the limit and closes the connection; the
    body of a request over `max_body_bytes` is never read. The defaults fit Search-R1's trainer and ours: thousands
    of rollout queries per request, each as long as any configured response budget allows.
    """

    max_body_bytes: int = 16 << 20  # 413 beyond (the declared Content-Length, checked before reading)
    max_queries: int = 4096  # 400 beyond: queries in one request
    max_topk: int = 100  # 400 beyond: passages per query
    max_query_chars: int = 32768  # 400 beyond: characters in one query
    read_timeout_s: float = 30.0  # a client that stalls mid-request (or idles on keep-alive) is dropped


class RequestRefused(ValueError):
    """A request the server will not answer: `status` (4xx) and a reason for the client."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def parse_request(body: bytes, limits: ServerLimits, default_topk: int = 3) -> tuple[list[str], int, bool]:
    """`(queries, topk, return_scores)` of a `/retrieve` body; RequestRefused (400) naming the field otherwise.
    A missing or null `topk` is `default_topk`, as in Search-R1's server."""
    try:
        req = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise RequestRefused(400, f"body is not UTF-8 ({e.reason} at byte {e.start})") from None
    except (ValueError, RecursionError) as e:  # RecursionError: nesting deeper than the parser's stack
        raise RequestRefused(400, f"body is not JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(req, dict):
        raise RequestRefused(400, f"body must be an object {{queries, topk, return_scores}}, got {type(req).__name__}")
    queries = req.get("queries")
    if not isinstance(queries, list):
        raise RequestRefused(400, f"'queries' must be a list of strings, got {type(queries).__name__}")
    if len(queries) > limits.max_queries:
        raise RequestRefused(400, f"{len(queries)} queries in one request; at most {limits.max_queries} (max_queries)")
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise RequestRefused(400, f"'queries[{i}]' must be a string, got {type(q).__name__}")
        if len(q) > limits.max_query_chars:
            raise RequestRefused(400, f"'queries[{i}]' has {len(q)} characters; at most {limits.max_query_chars} "
                                      "(max_query_chars)")
    topk = req.get("topk")
    topk = default_topk if topk is None else topk
    if not isinstance(topk, int) or isinstance(topk, bool) or not 1 <= topk <= limits.max_topk:
        raise RequestRefused(400, f"'topk' must be an integer from 1 to {limits.max_topk} (max_topk), "
                                  f"got {str(topk)[:50]}")
    scores = req.get("return_scores", False)
    if not isinstance(scores, bool):
        raise RequestRefused(400, f"'return_scores' must be true or false, got {type(scores).__name__}")
    return queries, topk, scores


def _document(p: Passage) -> dict:
    return {"id": p.id, "contents": contents_of(p)}


def make_handler(retriever, default_topk: int = 3, limits: ServerLimits | None = None):
    limits = limits or ServerLimits()
    lock = threading.Lock()  # one search at a time: backends batch internally, and jax/faiss stay single-owner

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = limits.read_timeout_s  # socket timeout for every read, request line and headers included

        def log_message(self, fmt, *args):  # route access logs to logging, not stderr
            log.debug("%s " + fmt, self.address_string(), *args)

        def _reply(self, code: int, obj: dict, close: bool = False):
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        def send_error(self, code, message=None, explain=None):
            # The stdlib's own refusals (malformed request line, unsupported method, oversized headers) in JSON too.
            self._reply(code, {"error": message or explain or HTTPStatus(code).phrase}, close=True)

        def do_GET(self):
            # A GET's body is never read: a connection carrying one closes, lest the body pass for the next request.
            has_body = self.headers.get("Content-Length", "0").strip() != "0" or "Transfer-Encoding" in self.headers
            if self.path.rstrip("/") in ("", "/health"):
                self._reply(200, {"status": "ok", "backend": type(retriever).__name__,
                                  "size": len(retriever) if hasattr(retriever, "__len__") else None}, close=has_body)
            else:
                self._reply(404, {"error": f"no route {self.path}; POST /retrieve"}, close=has_body)

        def _body(self) -> bytes:
            # JSON only: a browser page may POST text/plain or form bodies to 127.0.0.1 without a CORS preflight,
            # but never application/json, so this keeps web pages from driving a local server.
            kind = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                raise RequestRefused(415, f"Content-Type must be application/json, got {kind or 'none'!r}")
            if self.headers.get("Transfer-Encoding"):
                raise RequestRefused(411, "Transfer-Encoding is not supported; send a Content-Length")
            declared = self.headers.get("Content-Length")
            if declared is None:
                raise RequestRefused(411, "Content-Length is required")
            digits = declared.strip()
            if not (digits.isascii() and digits.isdigit()):
                raise RequestRefused(400, f"Content-Length must be a non-negative integer, got {declared[:50]!r}")
            if len(digits) > 18 or int(digits) > limits.max_body_bytes:
                raise RequestRefused(413, f"body of {digits[:50]} bytes; at most {limits.max_body_bytes} "
                                          "(max_body_bytes)")
            length = int(digits)
            try:
                body = self.rfile.read(length)
            except TimeoutError:
                raise RequestRefused(408, f"body not received within {limits.read_timeout_s:g} s") from None
            if len(body) < length:
                raise RequestRefused(400, f"body ended after {len(body)} of {length} bytes")
            return body

        def do_POST(self):
            if self.path.rstrip("/") != "/retrieve":
                return self._reply(404, {"error": f"no route {self.path}; POST /retrieve"}, close=True)
            try:
                queries, topk, return_scores = parse_request(self._body(), limits, default_topk)
            except RequestRefused as e:
                return self._reply(e.status, {"error": e.reason}, close=True)  # the rest of the stream is suspect
            try:
                with lock:
                    results = retriever.search(queries, topk) if queries else []
            except Exception as e:  # noqa: BLE001 - the client gets the reason, the server keeps serving
                log.exception("search failed")
                return self._reply(500, {"error": f"{type(e).__name__}: {e}"})
            if return_scores:
                out = [[{"document": _document(p), "score": p.score} for p in row] for row in results]
            else:
                out = [[_document(p) for p in row] for row in results]
            self._reply(200, {"result": out})

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that hangs up mid-reply ends its own connection's thread; one line, not a traceback on stderr.
        log.warning("connection from %s ended with %s", client_address[0], sys.exc_info()[1].__class__.__name__)


def make_server(retriever, host: str = "127.0.0.1", port: int = 8000, default_topk: int = 3,
                limits: ServerLimits | None = None) -> ThreadingHTTPServer:
    """A ThreadingHTTPServer answering `/retrieve` from `retriever` (port 0 picks a free port: `server.server_port`).
    Listens on loopback only unless `host` says otherwise: the protocol has no authentication."""
    return _Server((host, port), make_handler(retriever, default_topk, limits))


def serve_in_thread(retriever, host: str = "127.0.0.1", port: int = 0, default_topk: int = 3,
                    limits: ServerLimits | None = None):
    """(server, url) with the server running on a daemon thread; `server.shutdown()` stops it."""
    server = make_server(retriever, host, port, default_topk, limits)
    threading.Thread(target=server.serve_forever, daemon=True, name="retrieval-server").start()
    return server, f"http://{host}:{server.server_port}/retrieve"
