"""The synthetic world serves the protocol: each scripted hop query finds its hop's gold passage within the top 3
with both retrievers the project ships (BM25, and dense all-MiniLM-L6-v2 + faiss), for at least 95% of hops."""

import pytest

from searchr2_jax.config import default_retrieval_config
from searchr2_jax.data import synthetic
from searchr2_jax.retrieval.retriever import build_retriever


@pytest.fixture(scope="module")
def world():
    return synthetic.generate_world(synthetic.WorldConfig.tiny(num_questions=300))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["bm25", "dense"])
def test_scripted_hop_queries_retrieve_their_gold_passage(world, backend):
    cfg = default_retrieval_config()
    cfg.backend = backend
    retriever = build_retriever(cfg, corpus=world.corpus())
    hops = sum(q.metadata["hops"] for q in world.questions)
    assert hops >= 500  # 1-, 2- and 3-hop questions: enough hops for a 95% bar to mean something
    assert synthetic.hop_recall(world, retriever, k=3) >= 0.95


def test_hop_recall_counts_misses():
    world = synthetic.generate_world(synthetic.WorldConfig.tiny(num_questions=30))

    class FirstPassage:  # always the same passage: a hit only where that passage is the hop's gold one
        def search(self, queries, k):
            first = world.corpus()[0]
            return [[type("P", (), {"id": first["id"]})()] for _ in queries]

    pairs = [pid for q in world.questions for pid in q.metadata["gold_passage_ids"]]
    expected = sum(str(pid) == world.corpus()[0]["id"] for pid in pairs) / len(pairs)
    assert synthetic.hop_recall(world, FirstPassage(), k=3) == pytest.approx(expected)
    assert expected < 0.5
