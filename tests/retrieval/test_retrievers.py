"""BM25 and dense retrievers on the fixture corpus: gold at rank 1, bad input, k beyond the corpus, batching."""

import numpy as np
import pytest

from searchr2_jax.config import default_retrieval_config
from searchr2_jax.retrieval.retriever import build_retriever
from searchr2_jax.retrieval.types import Passage, format_passages

BACKENDS = ["bm25_retriever", "dense_retriever"]


@pytest.fixture(params=BACKENDS)
def retriever(request):
    return request.getfixturevalue(request.param)


def _titles(records):
    return [r["contents"].split("\n", 1)[0].strip('"') for r in records]


def test_title_queries_find_the_gold_passage_first(retriever, corpus_records):
    titles = _titles(corpus_records)
    results = retriever.search(titles, k=3)
    assert len(results) == 12
    for rec, title, row in zip(corpus_records, titles, results):
        assert row and row[0].id == rec["id"], (title, [p.id for p in row])
        assert row[0].title == title  # quotes stripped by default
        assert row[0].text == rec["contents"].split("\n", 1)[1]
        assert [p.score for p in row] == sorted((p.score for p in row), reverse=True)
        assert len({p.id for p in row}) == len(row)


def test_batched_search_is_one_list_per_query_in_order(retriever, corpus_records):
    titles = _titles(corpus_records)
    order = [7, 2, 11, 0, 5, 9, 3]
    batch = [titles[i] for i in order]
    results = retriever.search(batch, k=2)
    assert [row[0].id for row in results] == [corpus_records[i]["id"] for i in order]
    for q, row in zip(batch, results):  # each row is what the query gets on its own
        alone = retriever.search([q], k=2)[0]
        assert [p.id for p in alone] == [p.id for p in row]
        np.testing.assert_allclose([p.score for p in alone], [p.score for p in row], rtol=1e-4, atol=1e-5)
    assert retriever.search([], k=3) == []


def test_empty_queries_get_an_empty_list_and_keep_the_others_in_place(retriever):
    results = retriever.search(["", "Saturn", "   \n\t", "Chess"], k=3)
    assert len(results) == 4
    assert results[0] == [] and results[2] == []
    assert results[1][0].id == "doc8" and results[3][0].id == "doc9"
    assert retriever.search([""], k=3) == [[]]


def test_over_long_query_is_truncated_not_an_error(retriever):
    long_query = "Saturn planet rings " + "orbit the Sun with rings of ice " * 2000  # ~14k tokens
    [row] = retriever.search([long_query], k=3)
    assert row and row[0].id == "doc8"


def test_dense_over_long_query_equals_its_truncation(dense_retriever, encoder):
    long_query = "Mount Everest highest mountain " + "Himalayas " * 3000
    ids = encoder.tokenize([long_query])[0]
    assert len(ids) == encoder.max_length == 128  # truncated at max length
    truncated = encoder.tokenizer.decode(ids, skip_special_tokens=True)
    a = dense_retriever.search([long_query], k=3)[0]
    b = dense_retriever.search([truncated], k=3)[0]
    assert a[0].id == "doc2" and [p.id for p in a] == [p.id for p in b]


def test_k_larger_than_the_corpus_returns_what_exists(dense_retriever, bm25_retriever):
    [row] = dense_retriever.search(["capital city"], k=100)
    assert len(row) == 12 and sorted(p.id for p in row) == sorted(f"doc{i}" for i in range(12))
    assert [p.score for p in row] == sorted((p.score for p in row), reverse=True)
    # BM25 returns only passages that share a term with the query (as Lucene does)
    [row] = bm25_retriever.search(["capital city river"], k=100)
    assert {p.id for p in row} == {"doc0", "doc1", "doc5"} and all(p.score > 0 for p in row)
    assert bm25_retriever.search(["capital city river"], k=3) == [row]


def test_bm25_query_of_only_stopwords_or_unknown_words_is_empty(bm25_retriever):
    assert bm25_retriever.search(["the of and", "xylophonequark"], k=3) == [[], []]


def test_bad_arguments_are_refused(retriever):
    with pytest.raises(TypeError, match="list of queries"):
        retriever.search("Saturn", k=3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        retriever.search(["Saturn"], k=0)


def test_build_retriever_factory(corpus_path, corpus_records, encoder):
    cfg = default_retrieval_config()
    cfg.backend = "bm25"
    r = build_retriever(cfg, corpus=corpus_path)
    assert r.search(["Honey bee"], k=1)[0][0].id == "doc11"
    cfg.backend, cfg.corpus_path = "dense", corpus_path
    r = build_retriever(cfg, encoder=encoder)
    assert r.search(["Penicillin"], k=1)[0][0].id == "doc6"
    cfg.strip_title_quotes = False
    cfg.backend = "bm25"
    p = build_retriever(cfg, corpus=corpus_records).search(["Penicillin"], k=1)[0][0]
    assert p.title == '"Penicillin"'  # Search-R1's verbatim title line
    cfg.backend = "faiss"
    with pytest.raises(ValueError, match="backend must be one of"):
        build_retriever(cfg, corpus=corpus_records)
    cfg.backend, cfg.corpus_path = "bm25", ""
    with pytest.raises(ValueError, match="needs a corpus"):
        build_retriever(cfg)


def test_format_passages():
    ps = [Passage("1", "Paris", "capital of France", 0.9), Passage("2", "Berlin", "capital of Germany", 0.5)]
    assert format_passages(ps) == "Doc 1(Title: Paris) capital of France\nDoc 2(Title: Berlin) capital of Germany\n"
    assert format_passages([]) == ""
