"""Shared fixtures: the fixture corpus and one MiniLM encoder per session (weights load in well under a second)."""

import json
import os

import pytest

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "retrieval")
CORPUS = os.path.join(FIXTURES, "corpus.jsonl")


@pytest.fixture(scope="session")
def corpus_records():
    with open(CORPUS) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def encoder():
    from searchr2_jax.models.encoder import TextEncoder

    return TextEncoder.from_pretrained(max_length=128)


@pytest.fixture()
def corpus_path(tmp_path):
    """A private copy, so offsets caches and rewrites never touch the fixture."""
    p = tmp_path / "corpus.jsonl"
    with open(CORPUS) as src:
        p.write_text(src.read())
    return str(p)


@pytest.fixture(scope="session")
def bm25_retriever(corpus_records):
    """In memory over the fixture records (opening the fixture path would write an offsets cache beside it)."""
    from searchr2_jax.retrieval.bm25 import BM25Retriever

    return BM25Retriever.from_corpus(corpus_records)


@pytest.fixture(scope="session")
def dense_retriever(encoder, corpus_records):
    from searchr2_jax.retrieval.dense import DenseRetriever

    return DenseRetriever.from_corpus(corpus_records, encoder)
