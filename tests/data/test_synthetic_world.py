"""The synthetic world: determinism, split hygiene, consistent questions, corpus format, the launcher."""

import collections
import json
import os
import re
import subprocess
import sys

import pytest

from searchr2_jax.data.qa import read_qa_file
from searchr2_jax.data.synthetic import WorldConfig, generate_world, load_world_config, write_world


@pytest.fixture(scope="module")
def world():
    return generate_world(WorldConfig.tiny())


def test_deterministic_and_seed_dependent(world):
    again = generate_world(WorldConfig.tiny())
    assert again.passages == world.passages and again.questions == world.questions
    other = generate_world(WorldConfig.tiny(seed=1))
    assert other.passages != world.passages


def test_test_split_shares_no_question_entity_with_train(world):
    subjects = {s: {q.metadata["subject_id"] for q in qs} for s, qs in world.splits.items()}
    assert subjects["train"] and subjects["dev"] and subjects["test"]
    assert not subjects["test"] & subjects["train"] and not subjects["dev"] & subjects["train"]
    # and no training subject's name appears in a test question's text
    train_names = {world.entity(e).name for e in subjects["train"]}
    for q in world.splits["test"]:
        assert not any(re.search(rf"\b{re.escape(n)}\b", q.question) for n in train_names), q.question


def test_questions_are_consistent_with_the_corpus(world):
    hops = collections.Counter(q.metadata["hops"] for q in world.questions)
    assert len(world.questions) == 600 and set(hops) == {1, 2, 3} and max(hops.values()) - min(hops.values()) <= 1
    assert len({q.id for q in world.questions}) == len(world.questions)
    for q in world.questions:
        meta = q.metadata
        assert len(meta["gold_passage_ids"]) == len(meta["hop_queries"]) == meta["hops"]
        assert world.entity(meta["subject_id"]).name in q.question
        for pid, query in zip(meta["gold_passage_ids"], meta["hop_queries"]):
            title = world.passages[int(pid)]["contents"].split("\n")[0].strip('"')
            assert query.startswith(title + " ")  # the scripted query names the entity of its gold passage
        # the answer is stated in the last gold passage (what a reader of the chain can copy)
        assert q.golden_answers[0] in world.passages[int(meta["gold_passage_ids"][-1])]["contents"]
        assert not world.entity(meta["subject_id"]).distractor


def test_corpus_format_and_lookalikes(world):
    for p in world.passages:
        assert set(p) == {"id", "contents"}
        title, text = p["contents"].split("\n", 1)
        assert title.startswith('"') and title.endswith('"') and text
    names = [e.name for e in world.entities]
    assert len(set(names)) == len(names)
    people = [e for e in world.entities if e.kind == "person"]
    assert all(world.lookalikes(p.id) for p in people)  # every person has a namesake
    assert any(world.entity(x).distractor for p in people for x in world.lookalikes(p.id))


def test_default_size_is_fast():
    import time

    t0 = time.perf_counter()
    w = generate_world()
    elapsed = time.perf_counter() - t0
    assert 1900 <= len(w.entities) <= 2100 and len(w.questions) == 10_000
    assert elapsed < 5, elapsed


def test_write_world_round_trips_through_the_qa_reader(world, tmp_path):
    paths = write_world(world, str(tmp_path))
    assert read_qa_file(paths["test"]) == world.splits["test"]
    with open(paths["corpus"], encoding="utf-8") as f:
        assert [json.loads(line) for line in f] == world.passages
    assert generate_world(load_world_config(paths["world"])).questions == world.questions


@pytest.mark.slow
def test_prepare_data_launcher(tmp_path):
    launcher = os.path.join(os.path.dirname(__file__), "..", "..", "launch", "prepare_data.py")
    cmd = [sys.executable, launcher, f"--out_dir={tmp_path}", "--num_people=100", "--num_companies=20",
           "--num_cities=20", "--num_countries=5", "--num_universities=5", "--num_distractors=5",
           "--num_questions=200", "--vocab_size=600"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    summary = json.loads((tmp_path / "prepare_data.json").read_text())
    assert summary["world"]["train"] + summary["world"]["dev"] + summary["world"]["test"] == 200
    assert (tmp_path / "tokenizer" / "tokenizer.json").exists()
    import tensorflow_datasets as tfds

    source = tfds.builder_from_directory(summary["synthetic_array_record"]).as_data_source("test")
    assert len(source) == summary["world"]["test"]
