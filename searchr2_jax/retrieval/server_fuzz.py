"""Hostile requests against a running `/retrieve` server; after each one a valid request must still be answered right.

    report = fuzz_server("http://127.0.0.1:8000/retrieve", reference=same_backend_in_process, n=1000)

Each hostile request is raw bytes on a fresh connection (so truncated bodies, lying Content-Lengths and bytes that
are not HTTP at all can be sent), cycling through `KINDS`: oversized bodies, huge and malformed `topk`, thousands of
queries, over-long queries, truncated and non-UTF-8 bodies, wrong content types, wrong types and missing fields,
deeply nested junk, bad or missing Content-Length, chunked bodies, wrong routes and methods, oversized request lines
and header floods, and garbage that is not HTTP. Each has the refusal it must get (a 4xx naming the reason in JSON).

The report's figures:
  server_fuzz_requests   hostile requests sent
  server_crashes         1 if the server stopped answering (the valid probe could not connect or timed out); the
                         fuzzing stops there
  server_wrong_answers   valid probes answered with other passages than `reference` gives, plus hostile requests
                         answered otherwise than their kind's refusal (a 200 or a 500, or no JSON reason)
  server_fuzz_failures   the first few of those, described (empty when all went well)
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import urllib.parse
from typing import Callable, NamedTuple, Sequence

from absl import logging

from searchr2_jax.retrieval.errors import RetrievalError
from searchr2_jax.retrieval.http import HttpRetriever, ServerLimits

PROBE_QUERIES = ("Saturn", "capital of Germany", "who wrote the first algorithm", "honey bees", "")
SERVE_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "launch",
                            "serve_retrieval.py")
_READY = "serving /retrieve on "  # the line serve_retrieval.py prints once it listens
_MAX_FAILURES_LISTED = 10
# Outcomes of a request that got no HTTP status line: nothing at all, or bytes that are not an HTTP reply (the
# stdlib answers an unparseable request line HTTP/0.9-style, a body without a status line).
CLOSED, UNPARSED = "closed", "unparsed"


class Hostile(NamedTuple):
    kind: str
    raw: bytes  # the whole request as sent
    expect: frozenset  # acceptable outcomes: statuses, or CLOSED / UNPARSED


def http_request(body: bytes, content_type: str | None = "application/json", path: str = "/retrieve",
                 method: str = "POST", length: int | str | None = -1, headers: tuple = ()) -> bytes:
    """Raw HTTP/1.1 request bytes; `length=-1` declares the body's true length, None no Content-Length at all."""
    lines = [f"{method} {path} HTTP/1.1", "Host: fuzz"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if length is not None:
        lines.append(f"Content-Length: {len(body) if length == -1 else length}")
    lines += list(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _json(obj) -> bytes:
    return json.dumps(obj).encode()


def _sized(kind: str, body: bytes, limits: ServerLimits, status: int = 400) -> Hostile:
    """A JSON request whose refusal is `status`, or 413 where the body is over the size limit anyway."""
    return Hostile(kind, http_request(body), frozenset({413 if len(body) > limits.max_body_bytes else status}))


# ------------------------------------------------------------------------------------------------ kinds


def oversized_body(rng: random.Random, limits: ServerLimits) -> Hostile:
    declared = limits.max_body_bytes + rng.choice([1, 1000, 10 ** 9, 10 ** 15])
    junk = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 100, 4096])))  # the rest is never sent
    return Hostile("oversized_body", http_request(junk, length=declared), frozenset({413}))


def huge_topk(rng, limits):
    topk = rng.choice([limits.max_topk + 1, 10 ** 9, 2 ** 63, 10 ** 300])
    return _sized("huge_topk", _json({"queries": ["Saturn"], "topk": topk}), limits)


def bad_topk(rng, limits):
    topk = rng.choice([0, -1, -10 ** 6, 2.5, "3", True, [3], {"k": 3}, float("inf")])
    return _sized("bad_topk", _json({"queries": ["Saturn"], "topk": topk}), limits)


def too_many_queries(rng, limits):
    n = limits.max_queries + rng.choice([1, 100, 3000])
    return _sized("too_many_queries", _json({"queries": ["q"] * n, "topk": 1}), limits)


def long_query(rng, limits):
    query = "x" * (limits.max_query_chars + rng.choice([1, 1000]))
    return _sized("long_query", _json({"queries": ["ok", query], "topk": 1}), limits)


def truncated_json(rng, limits):
    body = _json({"queries": ["Saturn", "capital of Germany"], "topk": 2, "return_scores": True})
    return _sized("truncated_json", body[: rng.randrange(1, len(body))], limits)  # every strict prefix is invalid


def short_body(rng, limits):
    """Content-Length promises more than arrives before the client stops sending."""
    body = _json({"queries": ["Saturn"], "topk": 1})
    return Hostile("short_body", http_request(body, length=len(body) + rng.choice([1, 500])), frozenset({400}))


def wrong_content_type(rng, limits):
    kind = rng.choice(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None,
                       "application/jsonx", "text/json"])
    return Hostile("wrong_content_type", http_request(_json({"queries": ["Saturn"], "topk": 1}), kind),
                   frozenset({415}))


def non_utf8(rng, limits):
    body = b'{"queries": ["' + bytes(rng.randrange(0x80, 0x100) for _ in range(rng.randrange(1, 64))) + b'\xff"]}'
    return _sized("non_utf8", body, limits)


def wrong_types(rng, limits):
    body = rng.choice(['"a string"', "[1, 2]", "42", "null", "true", '{"queries": "Saturn"}', '{"queries": {"a": 1}}',
                       '{"queries": [1, 2]}', '{"queries": [null]}', '{"queries": [["nested"]]}', "{}",
                       '{"topk": 3}', '{"queries": ["a"], "return_scores": "yes"}', '{"queries": null, "topk": 1}',
                       '{"queries": ["a"], "topk": NaN}', ""])
    return _sized("wrong_types", body.encode(), limits)


def nested_junk(rng, limits):
    depth = rng.choice([50, 1000, 100_000])
    body = rng.choice(["[" * depth, '{"a":' * depth, '{"queries": ' + "[" * depth + "]" * depth + "}",
                       '{"queries": [' + '{"q":' * depth + "1" + "}" * depth + "]}"])
    return _sized("nested_junk", body.encode(), limits)


def bad_content_length(rng, limits):
    declared = rng.choice(["abc", "-5", "1e3", "0x10", "", " 12 34", "9" * 40, "²"])
    status = 413 if declared == "9" * 40 else 400
    body = _json({"queries": ["Saturn"], "topk": 1})
    return Hostile("bad_content_length", http_request(body, length=declared), frozenset({status}))


def no_length(rng, limits):
    body = _json({"queries": ["Saturn"], "topk": 1})
    if rng.random() < 0.5:
        return Hostile("no_length", http_request(body, length=None), frozenset({411}))
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    return Hostile("no_length", http_request(chunked, length=None, headers=("Transfer-Encoding: chunked",)),
                   frozenset({411}))


def wrong_route(rng, limits):
    body = _json({"queries": ["Saturn"], "topk": 1})
    method, path, status = rng.choice([("POST", "/search", 404), ("POST", "/retrieve/../etc/passwd", 404),
                                       ("GET", "/retrieve", 404), ("PUT", "/retrieve", 501),
                                       ("DELETE", "/retrieve", 501), ("PATCH", "/", 501)])
    return Hostile("wrong_route", http_request(body, path=path, method=method), frozenset({status}))


def oversized_head(rng, limits):
    """A request line or a header line over the stdlib's 64 KiB, or more than its 100 headers."""
    choice = rng.randrange(3)
    if choice == 0:
        return Hostile("oversized_head", f"GET /{'a' * 70_000} HTTP/1.1\r\n\r\n".encode(), frozenset({414}))
    headers = (f"X-Junk: {'b' * 70_000}",) if choice == 1 else tuple(f"X-H{i}: {i}" for i in range(150))
    return Hostile("oversized_head", http_request(b"{}", headers=headers), frozenset({431}))


def not_http(rng, limits):
    junk = bytes([0x16, 0x03, 0x01]) + bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 2048)))
    return Hostile("not_http", junk + b"\r\n\r\n", frozenset({400, CLOSED, UNPARSED}))


KINDS: tuple[Callable[[random.Random, ServerLimits], Hostile], ...] = (
    oversized_body, huge_topk, bad_topk, too_many_queries, long_query, truncated_json, short_body,
    wrong_content_type, non_utf8, wrong_types, nested_junk, bad_content_length, no_length, wrong_route,
    oversized_head, not_http)


# ------------------------------------------------------------------------------------------------ sending


def send_raw(host: str, port: int, raw: bytes, timeout_s: float = 10.0) -> tuple[int | str, bytes]:
    """Sends `raw` on a fresh connection, stops sending, reads the reply to its end: (status or CLOSED / UNPARSED,
    body). The server may hang up before taking all of `raw` (it refuses unread bodies); the reply still counts."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        chunks = []
        try:
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    reply = b"".join(chunks)
    if not reply:
        return CLOSED, b""
    head, _, body = reply.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if not head.startswith(b"HTTP/1.") or len(parts) < 2 or not parts[1].isdigit():
        return UNPARSED, reply
    return int(parts[1]), body


def _refusal_problem(hostile: Hostile, status, body: bytes) -> str | None:
    """Why the reply to `hostile` is not its refusal, or None when it is."""
    if status not in hostile.expect:
        return f"{hostile.kind}: got {status}, expected one of {sorted(map(str, hostile.expect))}"
    if isinstance(status, int):
        try:
            reason = json.loads(body).get("error")
        except (ValueError, AttributeError):
            reason = None
        if not isinstance(reason, str) or not reason:
            return f"{hostile.kind}: {status} without a JSON reason: {body[:120]!r}"
    return None


def fuzz_server(url: str, reference, n: int = 100, limits: ServerLimits | None = None, seed: int = 0,
                timeout_s: float = 10.0, probes: Sequence[str] = PROBE_QUERIES) -> dict:
    """Sends `n` hostile requests to the `/retrieve` server at `url` (whose limits are `limits`), each followed by a
    valid request for one of `probes` that must get the passages `reference.search` gives. Returns the figures of
    the module docstring."""
    limits = limits or ServerLimits()
    parsed = urllib.parse.urlsplit(url)
    host, port = parsed.hostname, parsed.port
    client = HttpRetriever(url, timeout_s=timeout_s, retries=0)
    rng = random.Random(seed)
    expected = {}
    sent = crashes = wrong = 0
    failures: list[str] = []

    def fail(what: str):
        nonlocal wrong
        wrong += 1
        if len(failures) < _MAX_FAILURES_LISTED:
            failures.append(what)

    for i in range(n):
        hostile = KINDS[i % len(KINDS)](rng, limits)
        try:
            status, body = send_raw(host, port, hostile.raw, timeout_s)
        except OSError as e:  # could not even connect: the server is gone
            status, body = f"connection failed ({type(e).__name__})", b""
        sent += 1
        problem = _refusal_problem(hostile, status, body)
        if problem:
            fail(f"request {i} {problem}")
        query, k = probes[i % len(probes)], 1 + i % 3
        if (query, k) not in expected:
            expected[(query, k)] = reference.search([query], k)
        try:
            answer = client.search([query], k)
        except RetrievalError as e:
            crashes = 1
            failures.append(f"after request {i} ({hostile.kind}) the server stopped answering: {e}")
            logging.error("server fuzz: %s", failures[-1])
            break
        if answer != expected[(query, k)]:
            fail(f"after request {i} ({hostile.kind}) the probe {query!r} got other passages")
    logging.info("server fuzz: %d hostile requests, %d crashes, %d wrong answers", sent, crashes, wrong)
    return {"server_fuzz_requests": sent, "server_crashes": crashes, "server_wrong_answers": wrong,
            "server_fuzz_failures": failures}


@contextlib.contextmanager
def server_process(corpus_path: str, *flags: str, start_timeout_s: float = 120.0):
    """launch/serve_retrieval.py serving BM25 over `corpus_path` on a free port, as a child process: yields
    `(process, url)` once it listens, and stops it on exit. `flags` are passed on (e.g. "--max_topk=10")."""
    if not os.path.isfile(SERVE_SCRIPT):
        raise FileNotFoundError(f"{SERVE_SCRIPT}: not found (a source checkout is needed to run the server script)")
    cmd = [sys.executable, SERVE_SCRIPT, "--retrieval.backend=bm25", f"--retrieval.corpus_path={corpus_path}",
           "--port=0", *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    lines: list[str] = []
    ready = threading.Event()

    def drain():  # reads the child's output to its end, so it never blocks on a full pipe
        for line in proc.stdout:
            if len(lines) < 200:
                lines.append(line)
            if line.startswith(_READY):
                ready.set()
        ready.set()  # the child exited

    threading.Thread(target=drain, daemon=True, name="serve-retrieval-output").start()
    try:
        ready.wait(start_timeout_s)
        found = [line for line in lines if line.startswith(_READY)]
        if not found or proc.poll() is not None:
            raise RuntimeError(f"{SERVE_SCRIPT} did not start serving within {start_timeout_s:g} s (exit code "
                               f"{proc.poll()}): {''.join(lines[-20:])}")
        yield proc, found[0][len(_READY):].strip() + "/retrieve"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
