"""The hardened /retrieve server under hostile requests: refused with a JSON reason, never down, never answering
wrong afterwards; and the fuzzer itself notices a server that dies, answers wrong, or accepts what it should refuse."""

import json
import random
import threading

import pytest

from searchr2_jax.retrieval import server_fuzz
from searchr2_jax.retrieval.http import ServerLimits, make_handler, serve_in_thread
from searchr2_jax.retrieval.types import Passage


@pytest.fixture()
def served(bm25_retriever):
    servers = []

    def start(retriever=bm25_retriever, limits=None, handler=None):
        server, url = serve_in_thread(retriever, limits=limits)
        if handler is not None:
            server.RequestHandlerClass = handler
        servers.append(server)
        return server, url

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_every_hostile_kind_is_refused_and_the_server_keeps_answering(served, bm25_retriever):
    _, url = served()
    n = 6 * len(server_fuzz.KINDS)  # ~100: every kind six times, with its variations
    report = server_fuzz.fuzz_server(url, bm25_retriever, n=n, seed=3)
    assert report == {"server_fuzz_requests": n, "server_crashes": 0, "server_wrong_answers": 0,
                      "server_fuzz_failures": []}


def test_each_kind_gets_its_refusal_with_a_reason(served):
    _, url = served()
    host, port = url.split("//")[1].split("/")[0].split(":")
    rng = random.Random(0)
    for make in server_fuzz.KINDS:
        hostile = make(rng, ServerLimits())
        status, body = server_fuzz.send_raw(host, int(port), hostile.raw)
        assert status in hostile.expect, (hostile.kind, status, body[:200])
        if isinstance(status, int):
            assert json.loads(body)["error"], hostile.kind


def test_fuzzer_counts_a_server_that_accepts_what_it_should_refuse(served, bm25_retriever):
    _, url = served(limits=ServerLimits(max_topk=100))
    # Told the server allows topk <= 5, the fuzzer sends topk 6 among its huge values: the server's 200 is wrong.
    report = server_fuzz.fuzz_server(url, bm25_retriever, n=len(server_fuzz.KINDS) * 8, limits=ServerLimits(max_topk=5))
    assert report["server_crashes"] == 0 and report["server_wrong_answers"] >= 1
    assert all("huge_topk: got 200" in f for f in report["server_fuzz_failures"])


def test_fuzzer_counts_wrong_passages(served, bm25_retriever):
    class Shuffled:
        def search(self, queries, k):
            return [[Passage("x", "Wrong", "wrong passage", 1.0)] for _ in queries]

    _, url = served(retriever=Shuffled())
    report = server_fuzz.fuzz_server(url, bm25_retriever, n=10)
    assert report["server_wrong_answers"] == 10 and report["server_crashes"] == 0
    assert "the probe 'Saturn' got other passages" in report["server_fuzz_failures"][0]


def test_fuzzer_stops_at_a_server_that_dies(served, bm25_retriever):
    base = make_handler(bm25_retriever)

    class DiesOnRefusal(base):
        def _reply(self, code, obj, close=False):
            if code >= 400:  # stop serving: later connections are never answered
                threading.Thread(target=self.server.shutdown, daemon=True).start()
            super()._reply(code, obj, close)

    _, url = served(handler=DiesOnRefusal)
    report = server_fuzz.fuzz_server(url, bm25_retriever, n=50, timeout_s=0.5)
    assert report["server_crashes"] == 1 and report["server_fuzz_requests"] == 1
    assert "after request 0 (oversized_body) the server stopped answering" in report["server_fuzz_failures"][-1]


@pytest.mark.slow  # the brief's size: a real server process and 1,600 hostile requests
def test_the_server_script_survives_a_thousand_hostile_requests(corpus_path, bm25_retriever):
    flags = ("--max_topk=20", "--max_queries=300", "--max_query_chars=2000", "--max_body_bytes=200000")
    limits = ServerLimits(max_body_bytes=200_000, max_queries=300, max_topk=20, max_query_chars=2000)
    with server_fuzz.server_process(corpus_path, *flags) as (proc, url):
        assert url.startswith("http://127.0.0.1:")  # loopback unless --host says otherwise
        report = server_fuzz.fuzz_server(url, bm25_retriever, n=100 * len(server_fuzz.KINDS), limits=limits, seed=7)
        assert proc.poll() is None
    assert report == {"server_fuzz_requests": 1600, "server_crashes": 0, "server_wrong_answers": 0,
                      "server_fuzz_failures": []}
