"""Scripted demonstrations: exact protocol, sound ones answer correctly, flaws labelled at their first bad step."""

import dataclasses
import random
import re

import pytest

from searchr2_jax.data.demos import FLAWS, DemoWriter
from searchr2_jax.data.synthetic import WorldConfig, generate_world
from searchr2_jax.text import protocol as P


@pytest.fixture(scope="module")
def world():
    return generate_world(WorldConfig.tiny())


@pytest.fixture(scope="module")
def writer(world):
    return DemoWriter(world)


def _replay(demo):
    """Parse every generated turn as the rollout would; return the parsed turns."""
    return [P.parse_turn(s.text) for s in demo.response if s.generated]


def test_sound_demos_follow_the_protocol_and_answer_correctly(world, writer):
    for ex in world.questions[:150]:
        demo = writer.demo(ex)
        turns = _replay(demo)
        assert [t.status for t in turns] == ["search"] * ex.metadata["hops"] + ["answer"]
        assert [t.query for t in turns[:-1]] == ex.metadata["hop_queries"]
        assert turns[-1].answer in ex.golden_answers and demo.flawed_step == 0
        text = "".join(s.text for s in demo.response)
        assert P.extract_answer(text) == ex.golden_answers[0]
        # every observation is an information block holding the gold passage of its hop
        obs = [s.text for s in demo.response if not s.generated]
        for o, gold in zip(obs, ex.metadata["gold_passage_ids"]):
            title = world.passages[int(gold)]["contents"].split("\n")[0].strip('"')
            assert o.startswith("\n\n<information>Doc 1(Title: " + title + ")") and o.endswith("</information>\n\n")
        assert all(s.text.startswith("<think> ") for s in demo.response if s.generated)


@pytest.mark.parametrize("flaw", FLAWS)
def test_flawed_demos_are_labelled_at_the_first_flawed_step(world, writer, flaw):
    rng = random.Random(0)
    checked = 0
    for ex in world.questions[:200]:
        for at in writer.flaw_positions(ex, flaw):
            demo = writer.demo(ex, flaw, at, rng)
            sound = writer.demo(ex)
            steps, good = demo.steps, sound.steps
            j = demo.flawed_step
            assert 1 <= j <= len(steps)
            # steps before the flaw are identical to the sound trajectory; step j differs
            assert [s.assistant for s in steps[: j - 1]] == [s.assistant for s in good[: j - 1]]
            assert steps[j - 1].assistant != good[j - 1].assistant
            turn = P.parse_turn(steps[j - 1].assistant)
            if flaw == "premature":
                assert turn.status == "answer" and turn.answer not in ex.golden_answers
                assert j <= ex.metadata["hops"]  # answered before the last search
            elif flaw == "repeat":
                assert turn.query == P.parse_turn(steps[j - 2].assistant).query
                assert demo.answer in ex.golden_answers
            else:
                gold_title = world.entity(ex.metadata["entity_path"][at]).name
                assert turn.status == "search" and not turn.query.startswith(gold_title + " ")
                assert set(turn.query.split()) & set(gold_title.split())  # shares a name part
                # and the wrong entity's passage comes back first
                gold_eid = ex.metadata["entity_path"][at]
                info = steps[j - 1].tool
                top = info.split("Doc 1(Title: ")[1].split(")")[0]
                assert top != gold_title and any(world.entity(x).name == top for x in world.lookalikes(gold_eid))
            checked += 1
    assert checked > 20


def test_demo_mix_and_refiner_examples(world, writer):
    demos = writer.demos(world.questions[:300], seed=1, flawed_fraction=0.5, max_steps=4)
    flaws = {d.flaw for d in demos}
    assert flaws == {None, *FLAWS}
    for d in demos:
        segs = d.refiner_segments(max_steps=4)
        assert [s.generated for s in segs] == [False, True]
        assert segs[1].text == f" {d.flawed_step}"
        assert "Return a single integer between 0 and 4" in segs[0].text
        assert segs[0].text.count("ASSISTANT_STEP_") == len(d.steps) <= 4
        if d.flaw in ("lookalike", "premature"):
            assert d.answer not in d.example.golden_answers
        sft = d.sft_segments()
        assert sft[0] == P.Segment(P.build_prompt(d.example.question), False)
        assert all(s.generated == (not s.text.startswith("\n\n<information>")) for s in sft[1:])
    assert writer.demos(world.questions[:50], seed=3) == writer.demos(world.questions[:50], seed=3)


def test_a_demonstrator_that_stops_early_answers_with_the_bridge_entity(world, writer):
    questions = world.questions[:300]
    demos = writer.demos(questions, seed=2, flawed_fraction=0.0, stop_early_fraction=0.5)
    multi = [d for d in demos if d.example.metadata["hops"] > 1]
    early = [d for d in demos if d.stopped_early]
    assert early and all(d.example.metadata["hops"] > 1 for d in early)
    assert 0.35 < len(early) / len(multi) < 0.6
    for d in demos:
        turns = _replay(d)
        hops = d.example.metadata["hops"]
        if d.stopped_early:
            # every hop searched but the last, then the last search's finding as the answer: a copied name
            assert [t.status for t in turns] == ["search"] * (hops - 1) + ["answer"]
            assert d.flaw == "early" and d.flawed_step == hops
            assert turns[-1].answer not in d.example.golden_answers
            last_info = [s.text for s in d.response if not s.generated][-1]
            assert turns[-1].answer in last_info
        else:
            assert d.flawed_step == 0 and turns[-1].answer in d.example.golden_answers
    # stop_early_fraction=0 draws nothing extra: the oracle demonstrator's stream is unchanged
    assert writer.demos(questions[:50], seed=3, stop_early_fraction=0.0) == writer.demos(questions[:50], seed=3)


def test_demos_with_a_retriever_and_chat_template(world):
    class EchoRetriever:
        def __init__(self):
            self.queries = []

        def search(self, queries, k):
            from searchr2_jax.retrieval.types import Passage

            self.queries.extend(queries)
            return [[Passage(str(i), f"T{i}", q) for i in range(k)] for q in queries]

    class ChatTok:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return "<|im_start|>user\n" + messages[-1]["content"] + "<|im_end|>\n<|im_start|>assistant\n"

    r = EchoRetriever()
    demo = DemoWriter(world, k=2, retriever=r, chat=True, tokenizer=ChatTok(), end_text="<|im_end|>").demo(
        world.questions[0])
    assert r.queries == list(world.questions[0].metadata["hop_queries"])
    assert demo.prompt.startswith("<|im_start|>user\n") and demo.response[-1].text.endswith("</answer><|im_end|>")
    assert "Doc 2(Title: T1)" in demo.response[1].text


def test_renamed_demos_keep_their_facts_under_fresh_names(world, writer):
    """A renamed demo names no entity of any region, maps each name word to one fresh word (and two to two), and
    keeps its layout and labels, so every name it writes can still be copied from the question or a passage."""
    from searchr2_jax.data.synthetic import Renamer

    names = world.name_words()
    demos = writer.demos(world.questions[:120], seed=3, flawed_fraction=0.5)
    for i, demo in enumerate(demos):
        rename = Renamer(names, random.Random(i))
        new = demo.renamed(rename)
        texts = [new.prompt, new.example.question, *new.example.golden_answers, *(s.text for s in new.response)]
        assert not {w for t in texts for w in re.findall(r"[A-Za-z]+", t)} & names
        assert len(set(rename.map.values())) == len(rename.map)  # injective: namesakes stay namesakes, others differ
        assert [s.generated for s in new.response] == [s.generated for s in demo.response]
        assert (new.flaw, new.flawed_step, len(new.steps)) == (demo.flaw, demo.flawed_step, len(demo.steps))
        assert (new.answer in new.example.golden_answers) == (demo.answer in demo.example.golden_answers)
        for old_seg, new_seg in zip(demo.response, new.response):
            assert new_seg.text == rename(old_seg.text)  # the same mapping everywhere in the demo
        if demo.flaw is None and not demo.answer.isdigit():
            info = "".join(s.text for s in new.response if not s.generated)
            assert new.answer in info  # the answer is in a retrieved passage: copying finds it
    assert len({Renamer(names, random.Random(s)).word(next(iter(sorted(names)))) for s in range(20)}) > 15


# ------------------------------------------------------------------------------------------ real text: search_demo


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from searchr2_jax.models.gguf_import import ensure_smollm2
    from searchr2_jax.text.tokenizer import load_tokenizer

    return load_tokenizer(ensure_smollm2())


def _wiki_example():
    from searchr2_jax.data.qa import QAExample

    return QAExample(id="w1", question='Who or what is "Iraqi and British architect (1950–2016)"?',
                     golden_answers=("Zaha Hadid",), data_source="wikisum")


def test_search_demo_searches_the_question_and_copies_the_answer_from_the_passages(smollm2_tokenizer):
    from searchr2_jax.data.demos import search_demo
    from searchr2_jax.retrieval.types import Passage

    ex = _wiki_example()
    passages = [Passage("1", "Norman Foster", "An English architect."),
                Passage("2", "Zaha Hadid", "Dame Zaha Hadid was an Iraqi-British architect.")]
    demo = search_demo(ex, passages, smollm2_tokenizer, chat=True, max_obs_tokens=384)
    turns = _replay(demo)
    assert [t.status for t in turns] == ["search", "answer"]
    assert turns[0].query == ex.question and turns[1].answer == "Zaha Hadid" and demo.answer == "Zaha Hadid"
    assert "Doc 2" in demo.response[2].text  # the passage that holds the answer
    info = demo.response[1]
    assert not info.generated and info.text == P.render_information(passages)
    assert demo.prompt == P.build_prompt(ex.question, tokenizer=smollm2_tokenizer, chat=True)
    assert demo.sft_segments()[0] == P.Segment(demo.prompt, False)


def test_search_demo_is_none_when_the_answer_is_missing_or_cut_off(smollm2_tokenizer):
    from searchr2_jax.data.demos import search_demo
    from searchr2_jax.retrieval.types import Passage

    ex = _wiki_example()
    assert search_demo(ex, [Passage("1", "Norman Foster", "An English architect.")], smollm2_tokenizer) is None
    # Found only past the per-block token cap the rollout applies: the model would never see it.
    passages = [Passage("1", "Norman Foster", "An English architect. " * 40),
                Passage("2", "Zaha Hadid", "An Iraqi-British architect.")]
    assert search_demo(ex, passages, smollm2_tokenizer, max_obs_tokens=400) is not None
    assert search_demo(ex, passages, smollm2_tokenizer, max_obs_tokens=64) is None
    # The longest gold answer found wins: a title over its short form.
    ex2 = dataclasses.replace(ex, golden_answers=("Mercury (planet)", "Mercury"))
    demo = search_demo(ex2, [Passage("1", "Mercury (planet)", "The smallest planet.")], smollm2_tokenizer)
    assert demo.answer == "Mercury (planet)"
