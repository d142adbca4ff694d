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
