"""The world's split by region: no fact a held-out question needs reaches training, over several world seeds."""

import re

import pytest

from searchr2_jax.config import default_retrieval_config
from searchr2_jax.data.demos import DemoWriter
from searchr2_jax.data.synthetic import SPLITS, WorldConfig, generate_world
from searchr2_jax.retrieval.retriever import build_retriever

_WORD = re.compile(r"[A-Z][a-z]+")


def _held_out_words(world) -> set[str]:
    """Every name word (and language) of a dev or test entity: a held-out fact always names its entity."""
    words = set()
    for e in world.entities:
        if e.split != "train":
            words |= set(e.name.split()) - {"University"} - {w for w in e.name.split() if not _WORD.fullmatch(w)}
            if e.kind == "country":
                words.add(e.attrs["language"])
    return words & world.name_words()


def _leaks(text: str, held: set[str]) -> set[str]:
    return set(_WORD.findall(text)) & held


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_regions_are_closed_and_questions_stay_in_theirs(seed):
    world = generate_world(WorldConfig.tiny(seed=seed))
    assert {e.split for e in world.entities} == set(SPLITS)
    for e in world.entities:
        for rel in ("birth_city", "employer", "university", "country", "capital", "city", "headquarters", "founder"):
            if rel in e.attrs:
                assert world.entity(e.attrs[rel]).split == e.split, (e.name, rel)
        for other in world.lookalikes(e.id):
            assert world.entity(other).split == e.split  # namesakes too
    for split, questions in world.splits.items():
        assert questions
        for q in questions:
            assert {world.entity(i).split for i in q.metadata["entity_path"]} == {split}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_held_out_fact_in_training_questions_or_demonstrations(seed):
    world = generate_world(WorldConfig.tiny(seed=seed))
    held = _held_out_words(world)
    assert len(held) > 20
    train = world.splits["train"]
    for q in train:
        assert not _leaks(q.question, held) and not _leaks(q.golden_answers[0], held), q.question
    # Demonstrations as the trainer writes them: the training retriever searches the training region only;
    # flawed ones (look-alike searches, premature guesses) included.
    cfg = default_retrieval_config()
    cfg.backend = "bm25"
    bm25 = build_retriever(cfg, corpus=world.corpus("train"))
    for retriever in (None, bm25):
        writer = DemoWriter(world, k=3, retriever=retriever)
        for d in writer.demos(train[:150], seed=seed, flawed_fraction=0.6):
            for segs in (d.sft_segments(), d.refiner_segments(), d.refiner_segments(prompt="followup")):
                text = "".join(s.text for s in segs)
                assert not _leaks(text, held), (d.example.question, _leaks(text, held))


def test_held_out_questions_are_answerable_from_the_whole_corpus():
    world = generate_world(WorldConfig.tiny())
    ids = {p["id"] for p in world.corpus()}
    train_ids = {p["id"] for p in world.corpus("train")}
    for q in world.splits["test"]:
        gold = set(q.metadata["gold_passage_ids"])
        assert gold <= ids and not gold & train_ids


def test_a_person_passage_states_no_second_hop():
    """'The founder of X' and the founder's birthplace must take two searches: the founder's passage does not name
    the companies they founded."""
    world = generate_world(WorldConfig.tiny())
    for e in world.entities:
        if e.kind == "company":
            founder = world.passages[e.attrs["founder"]]["contents"]
            assert "founded" not in founder and f"founded by {world.entity(e.attrs['founder']).name}" in \
                world.passages[e.id]["contents"]
