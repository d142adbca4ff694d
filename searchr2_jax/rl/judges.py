"""Process-reward judges: how many of a trajectory's search collections were useful (paper §3, App. K).

One interface, `count_useful(question, golden_answers, collections, gold_ids=None) -> int`, three judges:
  oracle   (synthetic world) a collection is useful iff it holds a gold passage id not seen in an earlier one
  lexical  it holds a normalized gold answer string and is not a duplicate of earlier passages
  llm      the paper's judge prompt (Table 11) run by any causal LM through a `generate(prompts) -> texts` callable,
           parsing "Final Answer: N", clipped to [0, M]; a reply without a number counts 0 and is tallied
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

from searchr2_jax.retrieval.types import Passage
from searchr2_jax.rl.rewards import normalize_answer

JUDGE_SYSTEM = (
    "You are evaluating numbered collections of retrieved documents to determine their usefulness in answering a "
    "given question, where each collection is enclosed within <collection_x> and </collection_x> tags containing "
    "documents that belong to that collection. Given the question and its correct answer, mark each collection as "
    "\"useful\" (yes) or \"not useful\" (no) based on these criteria:\n"
    "(1) A collection is useful if it contains information or clues that help identify the correct answer, even "
    "partially.\n"
    "(2) A collection is not useful if it's completely irrelevant to the question.\n"
    "(3) A collection is not useful if it merely duplicates information from previous collections without adding new "
    "insights, even if that information would otherwise be relevant. After evaluating all collections strictly "
    "according to these criteria and the provided information, report the total count of collections marked as "
    "useful."
)

_FINAL = re.compile(r"Final Answer:\s*\**\s*(-?\d+)", re.IGNORECASE)


class OracleJudge:
    def count_useful(self, question, golden_answers, collections: Sequence[Sequence[Passage]], gold_ids=None) -> int:
        if gold_ids is None:
            raise ValueError("the oracle judge needs the gold passage ids (synthetic world metadata 'gold_ids')")
        gold, seen, useful = {str(g) for g in gold_ids}, set(), 0
        for coll in collections:
            ids = {p.id for p in coll}
            useful += bool((ids & gold) - seen)
            seen |= ids
        return useful


class LexicalJudge:
    def count_useful(self, question, golden_answers, collections: Sequence[Sequence[Passage]], gold_ids=None) -> int:
        answers = [a for a in (normalize_answer(g) for g in golden_answers) if a]
        seen, useful = set(), 0
        for coll in collections:
            ids = {p.id for p in coll}
            text = normalize_answer(" ".join(f"{p.title} {p.text}" for p in coll))
            duplicate = ids <= seen
            useful += bool(not duplicate and any(f" {a} " in f" {text} " for a in answers))
            seen |= ids
        return useful


def judge_prompt(question: str, golden_answers: Sequence[str], collections: Sequence[Sequence[Passage]]) -> str:
    """Table 11 as one text (system part, then the user part); a chat template can be applied by the caller."""
    parts = [f"Question: {question}", f"Answer: {'; '.join(golden_answers)}",
             f"{len(collections)} collections of the tool responses:"]
    for i, coll in enumerate(collections, start=1):
        parts.append(f"<collection_{i}>")
        parts.extend(f"Doc {j}: {p.title} {p.text}" for j, p in enumerate(coll, start=1))
        parts.append(f"</collection_{i}>")
    parts.append("Provide your answer strictly in the format:\nFinal Answer: number")
    return JUDGE_SYSTEM + "\n\n" + "\n".join(parts)


def parse_final_answer(text: str) -> int | None:
    """The last 'Final Answer: N' in a reply (after any <think> block), or None."""
    matches = _FINAL.findall(text or "")
    return int(matches[-1]) if matches else None


class LLMJudge:
    def __init__(self, generate: Callable[[list[str]], list[str]]):
        self.generate = generate
        self.parse_failures = 0

    def count_many(self, items) -> list[int]:
        """Batched: items of (question, golden_answers, collections); one generate call for all of them."""
        prompts = [judge_prompt(q, g, c) for q, g, c in items]
        out = []
        for (_, _, colls), reply in zip(items, self.generate(prompts) if prompts else []):
            n = parse_final_answer(reply)
            if n is None:
                self.parse_failures += 1
                n = 0
            out.append(min(max(n, 0), len(colls)))
        return out

    def count_useful(self, question, golden_answers, collections, gold_ids=None) -> int:
        if not collections:
            return 0
        return self.count_many([(question, golden_answers, collections)])[0]


class NoJudge:
    def count_useful(self, question, golden_answers, collections, gold_ids=None) -> int:
        return 0


JUDGES = {"none": NoJudge, "oracle": OracleJudge, "lexical": LexicalJudge, "llm": LLMJudge}


def make_judge(name: str, **kwargs):
    if name not in JUDGES:
        raise ValueError(f"judge {name!r}: expected one of {sorted(JUDGES)}")
    return JUDGES[name](**kwargs)
