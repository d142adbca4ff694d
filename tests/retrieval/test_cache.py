"""The retrieval cache: hits skip the retriever, keys are (query, k) per retriever description, torn lines drop."""

import pytest

from searchr2_jax.retrieval.cache import CachedRetriever, key_of
from searchr2_jax.retrieval.types import Passage


class Fake:
    def __init__(self, tag="a"):
        self.tag, self.queries = tag, []

    def search(self, queries, k):
        self.queries += list(queries)
        return [[Passage(f"{q}-{i}", f"T{i}", f"{self.tag} text {q}", float(-i)) for i in range(k)] for q in queries]


def test_hits_skip_the_retriever_and_misses_are_kept_on_disk(tmp_path):
    r = CachedRetriever(Fake(), str(tmp_path), {"backend": "fake"})
    first = r.search(["x", "y", "x", " "], 2)
    assert r.retriever.queries == ["x", "y"] and r.calls == 2  # each distinct live query once
    assert first[3] == [] and first[0] == first[2] and first[0][1] == Passage("x-1", "T1", "a text x", -1.0)
    assert r.search(["y"], 2) == [first[1]] and r.calls == 2
    r.search(["y"], 3)  # another k is another key
    assert r.calls == 3
    again = CachedRetriever(Fake(), str(tmp_path), {"backend": "fake"})
    assert again.search(["x", "y"], 2) == [first[0], first[1]] and again.calls == 0 and len(again) == 3
    other = CachedRetriever(Fake("b"), str(tmp_path), {"backend": "fake", "corpus": "other"})
    assert other.search(["x"], 2)[0][0].text == "b text x" and other.calls == 1  # never another corpus's answer
    assert key_of({"backend": "fake"}) != key_of({"backend": "fake", "corpus": "other"})


def test_a_torn_last_line_is_dropped_and_damage_elsewhere_is_an_error(tmp_path):
    r = CachedRetriever(Fake(), str(tmp_path), {"backend": "fake"})
    r.search(["x", "y"], 1)
    text = open(r.path).read()
    open(r.path, "w").write(text + '{"q": "z", "k": 1, "p": [["z-0"')  # killed mid-write
    again = CachedRetriever(Fake(), str(tmp_path), {"backend": "fake"})
    assert len(again) == 2
    again.search(["z"], 1)
    assert len(CachedRetriever(Fake(), str(tmp_path), {"backend": "fake"})) == 3  # appends stayed whole
    open(r.path, "w").write("not json\n" + text)
    with pytest.raises(ValueError, match="row 1: not JSON"):
        CachedRetriever(Fake(), str(tmp_path), {"backend": "fake"})
