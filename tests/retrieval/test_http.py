"""The Search-R1 /retrieve protocol: our client against our server and against an independent server written here
from the documented JSON shape; down, slow, trickling and malformed servers give RetrievalError in bounded time."""

import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from searchr2_jax.config import default_retrieval_config
from searchr2_jax.retrieval.errors import RetrievalError
from searchr2_jax.retrieval.http import HttpRetriever, serve_in_thread
from searchr2_jax.retrieval.retriever import build_retriever

FAST = dict(timeout_s=0.2, retries=2, backoff_s=0.05, max_backoff_s=0.1)  # 3 attempts, ~0.15 s of back-off


@pytest.fixture(params=["bm25_retriever", "dense_retriever"])
def backend(request):
    return request.getfixturevalue(request.param)


@pytest.fixture()
def ours(backend):
    server, url = serve_in_thread(backend)
    yield backend, url
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_our_client_and_server_give_the_in_process_passages(ours, corpus_records):
    backend, url = ours
    client = HttpRetriever(url, timeout_s=10, retries=0)
    queries = ["Saturn", "", "Who composed Baroque music?", "capital of Germany", "honey"]
    for k in (1, 3, 20):
        assert client.search(queries, k) == backend.search(queries, k)  # ids, titles, texts and scores, in order
    assert client.search([], 3) == []


def test_config_builds_the_http_client(ours):
    backend, url = ours
    cfg = default_retrieval_config()
    cfg.backend, cfg.http.url, cfg.http.timeout_s = "http", url, 5.0
    r = build_retriever(cfg)
    assert isinstance(r, HttpRetriever) and r.timeout_s == 5.0
    assert r.search(["Penicillin"], 2) == backend.search(["Penicillin"], 2)


def test_our_server_speaks_the_documented_json(bm25_retriever):
    server, url = serve_in_thread(bm25_retriever)
    try:
        def post(obj):
            req = urllib.request.Request(url, data=json.dumps(obj).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=5) as resp:
                return json.loads(resp.read())

        body = post({"queries": ["Saturn", "Chess"], "topk": 2, "return_scores": True})
        assert list(body) == ["result"] and len(body["result"]) == 2
        first = body["result"][0][0]
        assert set(first) == {"document", "score"} and isinstance(first["score"], float)
        assert first["document"] == {"id": "doc8", "contents": '"Saturn"\nSaturn is the sixth planet from the Sun, '
                                                               'known for its prominent ring system.'}
        plain = post({"queries": ["Chess"], "topk": 1, "return_scores": False})
        assert plain["result"][0][0]["id"] == "doc9" and "score" not in plain["result"][0][0]
        for bad in ({"queries": "Saturn", "topk": 1}, {"queries": ["a"], "topk": -1}, [1, 2]):
            with pytest.raises(urllib.error.HTTPError) as e:
                post(bad)
            assert e.value.code == 400 and "error" in json.loads(e.value.read())
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------ an independent Search-R1-shaped server

DOCS = [{"id": "17", "contents": '"Ada Lovelace"\nAda Lovelace wrote the first published algorithm.'},
        {"id": "42", "contents": '"Charles Babbage"\nBabbage designed the Analytical Engine.\nHe was English.'},
        {"id": "99", "contents": '"Analytical Engine"\nA proposed mechanical general-purpose computer.'}]


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # clients that time out and hang up are what these tests make; no tracebacks on stderr


class _Server:
    """http.server on a free port with a test-supplied handler body; records what it received."""

    def __init__(self, respond):
        self.requests, self.lock = [], threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append((self.path, self.headers.get("Content-Type"), body))
                respond(self, body)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.stopping = threading.Event()  # slow handlers wait on it, so none outlives its test
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/retrieve"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.httpd.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _send(handler, code, data: bytes, content_type="application/json"):
    handler.send_response(code)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def _search_r1(handler, req):
    """Search-R1's retrieval_server answer: documents sharing a word with the query, scored by shared words."""
    result = []
    for q in req["queries"]:
        words = set(re.findall(r"\w+", q.lower()))
        scored = sorted(((len(words & set(re.findall(r"\w+", d["contents"].lower()))), d) for d in DOCS),
                        key=lambda t: -t[0])
        hits = [(s, d) for s, d in scored if s > 0][: req["topk"]]
        if req.get("return_scores"):
            result.append([{"document": d, "score": float(s)} for s, d in hits])
        else:
            result.append([d for _, d in hits])
    _send(handler, 200, json.dumps({"result": result}).encode())


@pytest.fixture()
def serve():
    servers = []

    def start(respond):
        servers.append(_Server(respond))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_client_against_an_independent_search_r1_server(serve):
    s = serve(_search_r1)
    client = HttpRetriever(s.url, timeout_s=5, retries=0)
    res = client.search(["analytical engine computer", "ada", "nothing matches"], k=2)
    assert s.requests == [("/retrieve", "application/json",
                           {"queries": ["analytical engine computer", "ada", "nothing matches"], "topk": 2,
                            "return_scores": True})]
    assert [[p.id for p in row] for row in res] == [["99", "42"], ["17"], []]
    babbage = res[0][1]
    assert (babbage.title, babbage.text, babbage.score) == (
        "Charles Babbage", "Babbage designed the Analytical Engine.\nHe was English.", 2.0)
    assert (res[0][0].title, res[0][0].score) == ("Analytical Engine", 3.0)
    verbatim = HttpRetriever(s.url, timeout_s=5, retries=0, strip_title_quotes=False).search(["ada"], 1)
    assert verbatim[0][0].title == '"Ada Lovelace"'  # Search-R1's own observation keeps the quotes


def test_client_parses_answers_without_scores(serve):
    def no_scores(handler, req):
        _search_r1(handler, dict(req, return_scores=False))

    s = serve(no_scores)
    [row] = HttpRetriever(s.url, timeout_s=5, retries=0).search(["babbage"], 3)
    assert [(p.id, p.title, p.score) for p in row] == [("42", "Charles Babbage", 0.0)]


# ------------------------------------------------------------------------------------------------ failures


def _free_port_closed() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused
    return port


def test_server_down_gives_retrieval_error_after_the_retries():
    url = f"http://127.0.0.1:{_free_port_closed()}/retrieve"
    client = HttpRetriever(url, **FAST)
    t0 = time.monotonic()
    with pytest.raises(RetrievalError) as e:
        client.search(["anything"], 3)
    elapsed = time.monotonic() - t0
    msg = str(e.value)
    assert url in msg and "after 3 attempts" in msg and "Connection" in msg and "refused" in msg.lower()
    assert 0.15 <= elapsed < 3.0  # the back-off ran (0.05 + 0.1 s), and it gave up promptly


def test_slow_server_times_out_after_the_retries(serve):
    def slow(handler, req):
        if not handler.server.stopping.wait(3.0):  # far beyond the client's 0.2 s
            _search_r1(handler, req)

    s = serve(slow)
    client = HttpRetriever(s.url, **FAST)
    t0 = time.monotonic()
    with pytest.raises(RetrievalError, match=r"after 3 attempts \(timeout 0\.2 s each\): timed out after 0\.2 s"):
        client.search(["ada"], 1)
    elapsed = time.monotonic() - t0
    assert 3 * 0.2 + 0.15 - 0.05 <= elapsed < 2.5  # three timed-out attempts, never a wait for the slow reply
    assert len(s.requests) == 3


def test_trickling_reply_is_bounded_by_the_timeout(serve):
    def trickle(handler, req):  # a valid header, then a body one byte every 50 ms: no single read times out
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        try:
            for _ in range(200):
                handler.wfile.write(b" ")
                handler.wfile.flush()
                if handler.server.stopping.wait(0.05):
                    return
        except OSError:
            pass  # the client hung up

    s = serve(trickle)
    client = HttpRetriever(s.url, timeout_s=0.3, retries=1, backoff_s=0.05)
    t0 = time.monotonic()
    with pytest.raises(RetrievalError, match="timed out after 0.3 s"):
        client.search(["ada"], 1)
    assert time.monotonic() - t0 < 3.0


@pytest.mark.parametrize("reply, match", [
    (b"<html>Internal proxy page</html>", r"response is not JSON"),
    (b'{"results": []}', r"response has no 'result' list"),
    (b'{"result": [[]]}', r"1 result lists for 2 queries"),
    (b'{"result": [[], {"document": {}}]}', r"result\[1\] is not a list"),
    (b'{"result": [[{"document": {"id": "1", "text": "x"}, "score": 1}], []]}',
     r"result\[0\]\[0\]: document has no 'contents' string"),
    (b'{"result": [[{"document": {"id": "1", "contents": "\\"T\\"\\nx"}, "score": "high"}], []]}',
     r"result\[0\]\[0\]: score is not a number"),
    (b'{"result": [["just a string"], []]}', r"result\[0\]\[0\]: a document must be an object"),
])
def test_malformed_response_is_a_clear_error(serve, reply, match):
    s = serve(lambda handler, req: _send(handler, 200, reply))
    with pytest.raises(RetrievalError, match=match) as e:
        HttpRetriever(s.url, **FAST).search(["a", "b"], 1)
    assert s.url in str(e.value)
    assert len(s.requests) == 1  # a malformed answer is not retried


def test_not_http_at_all_is_a_retrieval_error():
    """A server that answers with bytes that are not HTTP (e.g. a wrong port) is retried, then RetrievalError."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    hits = []

    def garbage():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            hits.append(1)
            conn.recv(65536)
            conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
            conn.close()

    threading.Thread(target=garbage, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/retrieve"
    try:
        with pytest.raises(RetrievalError, match=r"after 3 attempts.*bad or cut-off HTTP reply \(BadStatusLine"):
            HttpRetriever(url, **FAST).search(["a"], 1)
        assert len(hits) == 3
    finally:
        listener.close()


def test_reply_cut_off_mid_body_is_a_retrieval_error(serve):
    def cut(handler, req):
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.write(b'{"result": [[{"document": ')
        handler.wfile.flush()
        handler.close_connection = True
        handler.connection.shutdown(socket.SHUT_RDWR)

    s = serve(cut)
    with pytest.raises(RetrievalError, match=r"after 3 attempts.*bad or cut-off HTTP reply \(IncompleteRead"):
        HttpRetriever(s.url, **FAST).search(["a"], 1)
    assert len(s.requests) == 3


def test_4xx_is_not_retried_and_5xx_is(serve):
    s = serve(lambda handler, req: _send(handler, 422, b'{"detail": "topk must be an int"}'))
    with pytest.raises(RetrievalError, match=r"HTTP 422: .*topk must be an int"):
        HttpRetriever(s.url, **FAST).search(["a"], 1)
    assert len(s.requests) == 1

    s5 = serve(lambda handler, req: _send(handler, 503, b'{"detail": "overloaded"}'))
    t0 = time.monotonic()
    with pytest.raises(RetrievalError, match=r"after 3 attempts.*HTTP 503: .*overloaded"):
        HttpRetriever(s5.url, **FAST).search(["a"], 1)
    assert len(s5.requests) == 3 and time.monotonic() - t0 < 3.0


def test_server_error_in_the_backend_reaches_the_client_as_500():
    class Broken:
        def search(self, queries, k):
            raise MemoryError("faiss ran out")

    server, url = serve_in_thread(Broken())
    try:
        with pytest.raises(RetrievalError, match=r"after 2 attempts.*HTTP 500: .*MemoryError: faiss ran out"):
            HttpRetriever(url, timeout_s=2, retries=1, backoff_s=0.01).search(["a"], 1)
    finally:
        server.shutdown()
        server.server_close()


def test_client_refuses_bad_arguments():
    with pytest.raises(ValueError, match="http:// or https://"):
        HttpRetriever("localhost:8000/retrieve")
    client = HttpRetriever("http://127.0.0.1:1/retrieve", **FAST)
    with pytest.raises(TypeError):
        client.search("one string", 3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        client.search(["a"], 0)


# ------------------------------------------------------------------------------------------------ server limits


def test_parse_request_defaults_and_refusals_name_the_field():
    from searchr2_jax.retrieval.http import RequestRefused, ServerLimits, parse_request

    limits = ServerLimits(max_queries=3, max_topk=5, max_query_chars=10)
    assert parse_request(b'{"queries": ["a", ""]}', limits, default_topk=2) == (["a", ""], 2, False)
    assert parse_request(b'{"queries": [], "topk": null, "return_scores": true}', limits) == ([], 3, True)
    assert parse_request('{"queries": ["caf\u00e9"], "topk": 5}'.encode(), limits) == (["caf\u00e9"], 5, False)
    cases = {
        b'{"queries": ["a"], "topk": 6}': r"'topk' must be an integer from 1 to 5 \(max_topk\), got 6",
        b'{"queries": ["a"], "topk": 0}': r"'topk' must be an integer from 1 to 5 \(max_topk\), got 0",
        b'{"queries": ["a"], "topk": true}': r"'topk' .* got True",
        b'{"queries": ["a"], "topk": 2.0}': r"'topk' .* got 2.0",
        b'{"queries": ["a", "b", "c", "d"]}': r"4 queries in one request; at most 3 \(max_queries\)",
        b'{"queries": ["a", "01234567890"]}': r"'queries\[1\]' has 11 characters; at most 10 \(max_query_chars\)",
        b'{"queries": ["a", 7]}': r"'queries\[1\]' must be a string, got int",
        b'{"topk": 1}': r"'queries' must be a list of strings, got NoneType",
        b'{"queries": "a"}': r"'queries' must be a list of strings, got str",
        b'{"queries": ["a"], "return_scores": 1}': r"'return_scores' must be true or false, got int",
        b'[1]': r"body must be an object .* got list",
        b'{"queries": [': r"body is not JSON \(JSONDecodeError",
        b'[' * 100_000: r"body is not JSON \(RecursionError",
        b'{"queries": ["\xff"]}': r"body is not UTF-8 \(invalid start byte at byte 14\)",
        b'': r"body is not JSON",
    }
    for body, match in cases.items():
        with pytest.raises(RequestRefused, match=match) as e:
            parse_request(body, limits)
        assert e.value.status == 400


def test_server_refuses_over_limit_requests_then_answers(bm25_retriever):
    from searchr2_jax.retrieval.http import ServerLimits

    limits = ServerLimits(max_body_bytes=1000, max_queries=4, max_topk=5, max_query_chars=50)
    server, url = serve_in_thread(bm25_retriever, limits=limits)
    try:
        assert server.server_address[0] == "127.0.0.1"  # loopback by default

        def post(data: bytes, content_type="application/json"):
            req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": content_type})
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        refusals = [
            (json.dumps({"queries": ["x" * 2000]}).encode(), "application/json", 413, "at most 1000 (max_body_bytes)"),
            (b'{"queries": ["a"], "topk": 6}', "application/json", 400, "max_topk"),
            (json.dumps({"queries": ["a"] * 5}).encode(), "application/json", 400, "max_queries"),
            (json.dumps({"queries": ["y" * 51]}).encode(), "application/json", 400, "max_query_chars"),
            (b'{"queries": ["a"]}', "text/plain", 415, "Content-Type must be application/json, got 'text/plain'"),
            (b'{"queries": ["a"]}', "application/x-www-form-urlencoded", 415, "Content-Type must be"),
        ]
        client = HttpRetriever(url, timeout_s=5, retries=0)
        for data, kind, status, reason in refusals:
            code, body = post(data, kind)
            assert (code, list(body)) == (status, ["error"]) and reason in body["error"], (code, body)
            assert client.search(["Saturn"], 2) == bm25_retriever.search(["Saturn"], 2)
        code, body = post(b'{"queries": ["the planet"], "topk": 5}', "application/json; charset=utf-8")
        assert code == 200 and [d["id"] for d in body["result"][0]] == [
            p.id for p in bm25_retriever.search(["the planet"], 5)[0]] and len(body["result"][0]) > 1
    finally:
        server.shutdown()
        server.server_close()
