"""Protocol: prompt text, turn parsing (incl. property tests on malformed output), information blocks, refiner prompt."""

import pytest
from hypothesis import given, settings, strategies as st

from searchr2_jax.retrieval.types import Passage
from searchr2_jax.text import protocol as P

TAG_PIECES = list(P.PROTOCOL_TAGS) + ["<search", "search>", "</", "<", ">", "<answer >", "\n", " ", "<|im_end|>"]
texty = st.lists(st.one_of(st.sampled_from(TAG_PIECES), st.text(max_size=12)), max_size=30).map("".join)


def test_prompt_is_search_r1_template_verbatim():
    prompt = P.build_prompt("  who wrote hamlet ")
    assert prompt.startswith("Answer the given question. You must conduct reasoning inside <think> and </think> first")
    assert "You can search as many times as your want." in prompt  # Search-R1's typo, kept verbatim
    assert prompt.endswith("For example, <answer> Beijing </answer>. Question: who wrote hamlet?\n")
    assert P.build_prompt("done?").endswith("Question: done?\n")


def test_chat_prompt_needs_template_and_wraps_user_message():
    with pytest.raises(ValueError, match="chat_template"):
        P.build_prompt("q", tokenizer=None, chat=True)

    class FakeTok:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert not tokenize and add_generation_prompt
            return "|".join(f"{m['role']}:{m['content']}" for m in messages)

    out = P.build_prompt("q", FakeTok(), chat=True, system="sys")
    assert out.startswith("system:sys|user:Answer the given question.") and out.endswith("Question: q?\n")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think> hmm </think>\n<search> capital of France </search>", P.TurnParse("search", query="capital of France")),
        ("<think>x</think><answer> Paris </answer>", P.TurnParse("answer", answer="Paris")),
        ("<answer></answer>", P.TurnParse("answer", answer="")),
        ("<search>   </search>", P.TurnParse("invalid")),  # empty query
        ("<search> unclosed", P.TurnParse("invalid")),
        ("no tags at all", P.TurnParse("invalid")),
        ("</search> close without open", P.TurnParse("invalid")),
        ("<search> a <search> b </search>", P.TurnParse("search", query="b")),  # nested: the last opener wins
        ("<search> q1 </search> <answer> x </answer>", P.TurnParse("search", query="q1")),  # earliest stop wins
        ("<answer> x </answer><search> q </search>", P.TurnParse("answer", answer="x")),
        ("<answer> a </answer> <answer> b </answer>", P.TurnParse("answer", answer="a")),  # turn ends at first stop
        ("<search> 北京 é 🙂 </search>", P.TurnParse("search", query="北京 é 🙂")),
        ("<search>multi\nline</search>", P.TurnParse("search", query="multi\nline")),
    ],
)
def test_parse_turn_cases(text, expected):
    assert P.parse_turn(text) == expected


@settings(max_examples=300, deadline=None)
@given(texty)
def test_parse_turn_never_raises_and_status_is_consistent(text):
    t = P.parse_turn(text)
    assert t.status in ("answer", "search", "invalid")
    if t.status == "search":
        assert t.query and t.query == t.query.strip() and t.answer is None
        assert P.SEARCH_CLOSE in text and t.query in text
    elif t.status == "answer":
        assert t.answer is not None and t.query is None and P.ANSWER_CLOSE in text
    else:
        assert t.query is None and t.answer is None
    # parsing the turn cut at its stop gives the same action (what the rollout sees after a real stop)
    assert P.parse_turn(P.truncate_at_stop(text)) == t


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1).filter(lambda s: s.strip() and "</answer>" not in s and "<answer>" not in s), texty)
def test_extract_answer_takes_last_answer_of_response(ans, noise):
    noise = noise.replace("<answer>", "").replace("</answer>", "")
    response = f"{noise}<answer> first </answer>{noise}<answer>{ans}</answer>{noise}"
    assert P.extract_answer(response) == ans.strip()
    assert P.extract_answer(noise) is None


def test_extract_answer_ignores_prompt_and_long_text():
    prompt = P.build_prompt("q")
    assert P.extract_answer(prompt) == "Beijing"  # why the caller must pass the response only
    assert P.extract_answer("<think> no answer </think>") is None
    long = "x" * 200_000 + "<answer> late </answer>" + "<answer> unclosed"
    assert P.extract_answer(long) == "late"
    assert P.parse_turn("<" * 100_000 + "search>" * 1000).status == "invalid"
    assert P.extract_answer(None) is None and P.parse_turn(None).status == "invalid"


def test_extract_thought_reads_the_think_blocks_of_a_turn():
    assert P.extract_thought("<think> find X </think>\n<search> X </search>") == "find X"
    assert P.extract_thought("<think>a</think> b <think> c </think><answer> d </answer>") == "a\n\nc"
    assert P.extract_thought("<think> never closed <search> X </search>") is None
    assert P.extract_thought("<search> X </search>") is None and P.extract_thought(None) is None


def test_render_information_and_invalid_action_message():
    ps = [Passage("1", "Paris", "Paris is the capital of France."), Passage("2", "Lyon", "Lyon is a city.")]
    info = P.render_information(ps)
    assert info == ("\n\n<information>Doc 1(Title: Paris) Paris is the capital of France.\n"
                    "Doc 2(Title: Lyon) Lyon is a city.</information>\n\n")
    assert P.INVALID_ACTION_MESSAGE.startswith("\nMy previous action is invalid.")
    assert P.INVALID_ACTION_MESSAGE.endswith("Let me try again.\n")


def _trajectory():
    ps = [Passage("7", "Kalo", "Kalo was born in Tamsu.")]
    t1 = "<think> find Kalo </think>\n<search> Kalo born </search>"
    t2 = "<think> oops </think> no action"
    t3 = "<think> Tamsu </think>\n<answer> Tamsu </answer>"
    segs = [P.Segment(t1, True), P.Segment(P.render_information(ps), False), P.Segment(t2, True),
            P.Segment(P.INVALID_ACTION_MESSAGE, False), P.Segment(t3, True)]
    return segs, (t1, t2, t3)


def test_segment_trajectory_from_segments_and_from_text_agree():
    segs, (t1, t2, t3) = _trajectory()
    from_segments = P.segment_trajectory(segs)
    from_text = P.segment_trajectory("".join(s.text for s in segs))
    assert [s.assistant for s in from_segments] == [t1, t2, t3]
    assert from_segments[0].tool.strip().startswith("<information>Doc 1(Title: Kalo)")
    assert from_segments[1].tool == P.INVALID_ACTION_MESSAGE and from_segments[2].tool == ""
    assert [s.assistant.strip() for s in from_text] == [t1, t2, t3]
    assert [s.tool.strip() for s in from_text] == [s.tool.strip() for s in from_segments]
    assert P.segment_trajectory("") == []


def test_refiner_prompt_table12_layout():
    segs, _ = _trajectory()
    steps = P.segment_trajectory(segs)
    prompt = P.build_refiner_prompt("Where was Kalo born?", steps, max_steps=4)
    lines = prompt.split("\n")
    assert lines[0].startswith("You are a meticulous meta-thinker. Review the numbered ASSISTANT_STEP entries")
    assert "Return a single integer between 0 and 4 where 0 means all steps are acceptable." in lines[0]
    assert lines[1] == "ASSISTANT_CONTEXT:" and lines[2] == "USER: Where was Kalo born?"
    assert lines[3] == "ASSISTANT_STEP_1: <think> find Kalo </think>"
    assert sum(line.startswith("TOOL: ") for line in lines) == 2  # the answer step triggers no tool output
    assert [i for i in range(1, 5) if f"ASSISTANT_STEP_{i}:" in prompt] == [1, 2, 3]
    assert prompt.endswith("Problematic step index (0 = no issue):")
    assert P.refiner_candidates(3) == [" 0", " 1", " 2", " 3"] and P.refiner_candidates(1, chat=True) == ["0", "1"]
    with pytest.raises(ValueError):
        P.build_refiner_prompt("q", steps, max_steps=2)
