"""Process-reward judges: oracle and lexical on hand-made collections, the LLM judge's prompt and its parsing."""

import pytest

from searchr2_jax.retrieval.types import Passage
from searchr2_jax.rl import judges


def _p(pid, text="filler", title="T"):
    return Passage(str(pid), title, text)


def test_oracle_counts_new_gold_ids_only():
    j = judges.make_judge("oracle")
    colls = [
        [_p(1), _p(2)],  # gold 1: useful
        [_p(1), _p(9)],  # gold 1 again: a duplicate, not useful
        [_p(3), _p(4)],  # gold 3 and gold 4 together: useful once
        [_p(5)],  # irrelevant
        [_p(4), _p(3)],  # both already seen
    ]
    assert j.count_useful("q", ["a"], colls, gold_ids=["1", "3", "4"]) == 2
    assert j.count_useful("q", ["a"], colls, gold_ids=[1, 3, 4]) == 2  # int ids compare as str
    assert j.count_useful("q", ["a"], colls, gold_ids=["5"]) == 1
    assert j.count_useful("q", ["a"], [], gold_ids=["1"]) == 0
    # A non-gold passage seen earlier does not hide a gold one that arrives later.
    assert j.count_useful("q", ["a"], [[_p(9)], [_p(9), _p(1)]], gold_ids=["1"]) == 1
    with pytest.raises(ValueError, match="gold passage ids"):
        j.count_useful("q", ["a"], colls)


def test_lexical_judge_on_hand_made_collections():
    j = judges.make_judge("lexical")
    colls = [
        [_p(1, "He was born in Zorvath city."), _p(2)],  # answer present: useful
        [_p(1, "He was born in Zorvath city.")],  # same passage id again: duplicate
        [_p(7, "He was born in Zorvath city.")],  # same text under another id: duplicate
        [_p(3, "A Zorvathian custom.")],  # not as a whole word
        [_p(4, "nothing here"), _p(5, "the river", title="Zorvath")],  # in a new passage's title: useful
        [_p(1, "He was born in Zorvath city."), _p(6, "unrelated")],  # answer only in an old passage
    ]
    assert j.count_useful("Where?", ["Zorvath"], colls) == 2
    # Normalization on both sides; several gold answers; empty normalized golds are ignored.
    assert j.count_useful("q", ["The U.S.A.", "the"], [[_p(1, "made in usa today")]]) == 1
    assert j.count_useful("q", "usa", [[_p(1, "Made in U.S.A.")], [_p(2, "USA!")]]) == 2
    assert j.count_useful("q", ["x"], []) == 0


def test_none_judge_and_factory_errors():
    assert judges.make_judge("none").count_useful("q", ["a"], [[_p(1, "a")]]) == 0
    with pytest.raises(ValueError, match="expected one of"):
        judges.make_judge("gpt")
    with pytest.raises(ValueError, match="bad arguments"):
        judges.make_judge("oracle", temperature=0.0)
    with pytest.raises(ValueError, match="generate"):
        judges.make_judge("llm")
    assert set(judges.JUDGES) == {"none", "oracle", "lexical", "llm"}


def test_count_many_default_loops_over_items():
    j = judges.make_judge("oracle")
    items = [("q", ["a"], [[_p(1)]], ["1"]), judges.JudgeItem("q", ["a"], [[_p(2)], [_p(1)]], ["1", "2"])]
    assert j.count_many(items) == [1, 2]


def test_judge_prompt_structure_table_11():
    colls = [[_p(1, "Alpha text", "A"), _p(2, "Beta text", "B")], [_p(3, "Gamma text", "C")]]
    system, user = judges.judge_messages("Who built X?", ["Zed", "Zed Corp"], colls)
    assert system["role"] == "system" and user["role"] == "user"
    assert system["content"].startswith("You are evaluating numbered collections of retrieved documents")
    for crit in ("(1) A collection is useful if", "(2) A collection is not useful if it's completely irrelevant",
                 "(3) A collection is not useful if it merely duplicates", "<collection_x> and </collection_x>"):
        assert crit in system["content"]
    assert user["content"] == (
        "Question: Who built X?\n"
        "Answer: Zed; Zed Corp\n"
        "2 collections of the tool responses:\n"
        "<collection_1>\n"
        "Doc 1: (Title: A) Alpha text\n"
        "Doc 2: (Title: B) Beta text\n"
        "</collection_1>\n"
        "<collection_2>\n"
        "Doc 1: (Title: C) Gamma text\n"
        "</collection_2>\n"
        "Provide your answer strictly in the format:\n"
        "Final Answer: number")
    assert judges.render_plain([system, user]) == system["content"] + "\n\n" + user["content"]


@pytest.mark.parametrize("reply,n", [
    ("Final Answer: 2", 2),
    ("final answer:2", 2),
    ("**Final Answer:** 3", 3),
    ("Final Answer**: 3", 3),
    ("Final Answer: **1**", 1),
    ("Final Answer: \\boxed{2}", 2),
    ("Final Answer: $\\boxed{ 4 }$", 4),
    ("Final Answer: $2$", 2),
    ("Final answer = 2", 2),
    ("FINAL ANSWER: two", 2),
    ("Final Answer:\n\n 1", 1),
    ("Final Answer: 2.0", 2),
    ("Final Answer: 12", 12),
    ("Final Answer: -1", -1),
    ("Final Answer: 1 (collections 2)", 1),
    ("Final Answer: 1\n...on reflection...\nFinal Answer: 2", 2),  # the last one wins
    ("<think>Final Answer: 3 maybe</think>\nFinal Answer: 1", 1),
    ("<think>long reasoning, cut off... Final Answer: 2", 2),  # no </think>: the whole reply is read
])
def test_parse_final_answer(reply, n):
    assert judges.parse_final_answer(reply) == n


@pytest.mark.parametrize("reply", [
    "", None, "The answer is 2", "Final Answer: number", "Final Answer: 2.5", "Final Answer: 2nd",
    "Final Answer: seventeen", "<think>Final Answer: 3</think> I think two are useful",
])
def test_parse_final_answer_failures(reply):
    assert judges.parse_final_answer(reply) is None


def test_llm_judge_batches_clips_and_counts_failures():
    calls = []

    def generate(prompts):
        calls.append(list(prompts))
        return ["<think>..</think>Final Answer: 1", "Final Answer: 7", "no idea", "Final Answer: -3"][:len(prompts)]

    j = judges.make_judge("llm", generate=generate)
    colls2 = [[_p(1, "a")], [_p(2, "b")]]
    items = [("q1", ["a"], colls2), ("q0", ["a"], []), ("q2", ["a"], colls2), ("q3", ["a"], colls2),
             ("q4", ["a"], colls2, None)]
    assert j.count_many(items) == [1, 0, 2, 0, 0]  # M = 0 skipped; 7 -> M = 2; failure -> 0; -3 -> 0
    assert len(calls) == 1 and len(calls[0]) == 4  # one batched call, without the M = 0 item
    assert calls[0][0].startswith(judges.JUDGE_SYSTEM) and "Question: q1" in calls[0][0]
    assert j.parse_failures == 1 and j.calls == 4
    assert j.stats() == {"judge/calls": 4.0, "judge/parse_failures": 1.0}
    assert j.count_useful("q", ["a"], []) == 0 and len(calls) == 1  # nothing to ask, no call


def test_llm_judge_custom_render_and_reply_count_check():
    seen = []
    j = judges.LLMJudge(generate=lambda ps: ["Final Answer: 1"] * len(ps),
                        render=lambda msgs: (seen.append(msgs), "<chat>" + msgs[1]["content"])[1])
    assert j.count_useful("q", ["a"], [[_p(1)]]) == 1
    assert [m["role"] for m in seen[0]] == ["system", "user"]
    bad = judges.LLMJudge(generate=lambda ps: [])
    with pytest.raises(ValueError, match="0 replies for 1 prompts"):
        bad.count_useful("q", ["a"], [[_p(1)]])


@pytest.mark.slow  # loads SmolLM2-135M-Instruct and decodes a few judge replies: ~15 s on 2 CPU cores
def test_llm_judge_from_a_model_folder_runs_on_our_engine():
    """The paper's judge wiring with the offline SmolLM2 standing in for DeepSeek-R1-Distill-Qwen-7B: Table 11
    through the model's chat template, greedy replies from our rollout engine, counts clipped to [0, M]."""
    judge = judges.LLMJudge.from_pretrained("smollm2", max_new_tokens=24)
    p = lambda i, text: Passage(str(i), f"T{i}", text)
    items = [judges.JudgeItem("Who wrote Hamlet?", ["William Shakespeare"],
                              [[p(1, "Hamlet is a tragedy by William Shakespeare.")], [p(2, "Paris is in France.")]]),
             judges.JudgeItem("Capital of France?", ["Paris"], []),  # M = 0: not sent to the model
             judges.JudgeItem("Capital of Peru?", ["Lima"], [[p(3, "Lima is the capital of Peru.")]])]
    counts = judge.count_many(items)
    assert counts[1] == 0 and 0 <= counts[0] <= 2 and 0 <= counts[2] <= 1
    stats = judge.stats()
    assert stats["judge/calls"] == 2 and 0 <= stats["judge/parse_failures"] <= 2
    assert "<|im_start|>system" in judge.render(judges.judge_messages("q", ["a"], []))
