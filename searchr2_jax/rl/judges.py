"""Process-reward judges: how many of a trajectory's search collections were useful (paper §3.2, App. K).

A collection c_i is the top-k passages one search returned; a trajectory with M searches has M collections.
Every judge answers `count_useful(question, golden_answers, collections, gold_ids=None) -> int in [0, M]`, and the
batched `count_many(items) -> list[int]` (one generate call for the LLM judge):

  oracle   (synthetic world) useful iff the collection holds a gold passage id not seen in an earlier collection
  lexical  useful iff a passage not seen earlier (by id or by text) contains a normalized gold answer as whole words
  llm      the paper's judge prompt (Table 11) run by a host `generate(prompts) -> replies` callable, parsing the
           last "Final Answer: N", clipped to [0, M]; a reply without one counts 0 and is tallied in `parse_failures`
  none     always 0 (outcome reward only)
"""

from __future__ import annotations

import re
from typing import Callable, NamedTuple, Sequence

from searchr2_jax.retrieval.types import Passage
from searchr2_jax.rl.rewards import _golds, normalize_answer

Collections = Sequence[Sequence[Passage]]

# Table 11, system part, verbatim (the extraction's line breaks kept where the paper numbers its criteria).
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


class JudgeItem(NamedTuple):
    """One trajectory to judge. `gold_ids` are the gold passage ids (synthetic world metadata), or None."""

    question: str
    golden_answers: Sequence[str]
    collections: Collections
    gold_ids: Sequence[str] | None = None


class Judge:
    """Base: `count_many` loops over `count_useful`; judges with a batched backend override `count_many`."""

    def count_useful(self, question: str, golden_answers: Sequence[str], collections: Collections,
                     gold_ids: Sequence[str] | None = None) -> int:
        raise NotImplementedError

    def count_many(self, items: Sequence[JudgeItem]) -> list[int]:
        return [self.count_useful(*JudgeItem(*it)) for it in items]

    def stats(self) -> dict[str, float]:
        """Counters for metrics (e.g. the LLM judge's parse failures); empty for rule-based judges."""
        return {}


class NoJudge(Judge):
    def count_useful(self, question, golden_answers, collections, gold_ids=None) -> int:
        return 0


class OracleJudge(Judge):
    """Exact usefulness where the gold evidence is known: a collection counts iff it brings a gold passage id that
    no earlier collection brought (criterion 3: repeats add nothing)."""

    def count_useful(self, question, golden_answers, collections, gold_ids=None) -> int:
        if gold_ids is None:
            raise ValueError("oracle judge: needs the gold passage ids (synthetic world metadata 'gold_ids'); "
                             "use judge='lexical' or 'llm' for data without them")
        gold, seen, useful = {str(g) for g in gold_ids}, set(), 0
        for coll in collections:
            ids = {str(p.id) for p in coll}
            useful += bool((ids & gold) - seen)
            seen |= ids
        return useful


def _contains_words(text: str, phrase: str) -> bool:
    """Whole-word containment on normalized text ("paris" is in "in paris france", not in "parisian")."""
    return f" {phrase} " in f" {text} "


class LexicalJudge(Judge):
    """A cheap stand-in for the LLM judge: a collection counts iff one of its passages that is new (its id and its
    normalized text both unseen in earlier collections) mentions a normalized gold answer, title included."""

    def count_useful(self, question, golden_answers, collections, gold_ids=None) -> int:
        answers = [a for a in (normalize_answer(g) for g in _golds(golden_answers)) if a]
        seen_ids, seen_texts, useful = set(), set(), 0
        for coll in collections:
            hit = False
            for p in coll:
                text = normalize_answer(f"{p.title} {p.text}")
                new = str(p.id) not in seen_ids and text not in seen_texts
                hit |= new and any(_contains_words(text, a) for a in answers)
            useful += hit
            # Passages repeated inside the same collection are not "earlier"; mark them after the collection.
            seen_ids |= {str(p.id) for p in coll}
            seen_texts |= {normalize_answer(f"{p.title} {p.text}") for p in coll}
        return useful


def judge_messages(question: str, golden_answers: Sequence[str], collections: Collections) -> list[dict]:
    """Table 11 as chat messages [system, user]; collection i is wrapped in <collection_i> tags, doc j of it
    rendered as `Doc j: (Title: T) text` (the text the Actor saw). Several gold answers are joined by '; '."""
    lines = [f"Question: {question}", f"Answer: {'; '.join(_golds(golden_answers))}",
             f"{len(collections)} collections of the tool responses:"]
    for i, coll in enumerate(collections, start=1):
        lines.append(f"<collection_{i}>")
        lines.extend(f"Doc {j}: (Title: {p.title}) {p.text}" for j, p in enumerate(coll, start=1))
        lines.append(f"</collection_{i}>")
    lines.append("Provide your answer strictly in the format:\nFinal Answer: number")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def render_plain(messages: list[dict]) -> str:
    """Messages as one text (system, blank line, user) for models without a chat template."""
    return "\n\n".join(m["content"] for m in messages)


_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
# "Final Answer" with optional markdown/LaTeX dressing around the colon and the number: "**Final Answer:** 2",
# "Final answer = 2", "Final Answer: \boxed{2}", "Final Answer: $2$", "final answer:\n\n two". A number followed by
# a nonzero fraction ("2.5") is no count.
_FINAL = re.compile(
    r"final\s+answer\s*[*_]*\s*[:=\-–—]?\s*[*_`$\s]*(?:\\boxed\s*\{\s*|\\text\s*\{\s*)?"
    r"(-?\d+|" + "|".join(_WORDS) + r")(?:\.0+)?(?![\d.]*[1-9])(?![a-z])",
    re.IGNORECASE)


def parse_final_answer(reply: str | None) -> int | None:
    """The count in the last "Final Answer: N" of a reply, or None when there is none.

    R1-style judges think first: when a reply closes a `</think>` block only the text after it is read, so a draft
    count inside the reasoning never wins over the reply's own answer (or its absence).
    """
    if not reply:
        return None
    if "</think>" in reply:
        reply = reply.rsplit("</think>", 1)[1]
    matches = _FINAL.findall(reply)
    if not matches:
        return None
    token = matches[-1].lower()
    return _WORDS[token] if token in _WORDS else int(token)


class LLMJudge(Judge):
    """The paper's judge: any causal LM behind `generate(prompts) -> replies` (host callable; greedy decoding, as
    the paper's T = 0). `render(messages) -> prompt` applies a chat template (default: `render_plain`)."""

    def __init__(self, generate: Callable[[list[str]], list[str]] | None = None,
                 render: Callable[[list[dict]], str] = render_plain):
        if generate is None or not callable(generate):
            raise ValueError("llm judge: needs generate=callable(prompts: list[str]) -> list[str] "
                             "(wire the judge model's rollout engine to it)")
        self.generate, self.render = generate, render
        self.calls = self.parse_failures = 0

    def count_many(self, items: Sequence[JudgeItem]) -> list[int]:
        items = [JudgeItem(*it) for it in items]
        asked = [i for i, it in enumerate(items) if len(it.collections) > 0]  # M = 0: nothing to judge
        prompts = [self.render(judge_messages(items[i].question, items[i].golden_answers, items[i].collections))
                   for i in asked]
        replies = list(self.generate(prompts)) if prompts else []
        if len(replies) != len(prompts):
            raise ValueError(f"llm judge: generate returned {len(replies)} replies for {len(prompts)} prompts")
        out = [0] * len(items)
        for i, reply in zip(asked, replies):
            n = parse_final_answer(reply)
            self.calls += 1
            if n is None:
                self.parse_failures += 1
                n = 0
            out[i] = min(max(n, 0), len(items[i].collections))
        return out

    def count_useful(self, question, golden_answers, collections, gold_ids=None) -> int:
        return self.count_many([JudgeItem(question, golden_answers, collections, gold_ids)])[0]

    def stats(self) -> dict[str, float]:
        return {"judge/calls": float(self.calls), "judge/parse_failures": float(self.parse_failures)}

    @classmethod
    def from_pretrained(cls, path: str, max_new_tokens: int = 3000, slots: int = 16, mesh=None) -> "LLMJudge":
        """The judge LM of an HF folder (e.g. DeepSeek-R1-Distill-Qwen-7B; "smollm2" = the offline SmolLM2) on our
        own decoder and rollout engine: its chat template renders the Table 11 messages, decoding is greedy."""
        from searchr2_jax.models import hf_io
        from searchr2_jax.models.gguf_import import ensure_smollm2
        from searchr2_jax.rollout.generate import generate
        from searchr2_jax.text.tokenizer import load_tokenizer

        path = ensure_smollm2() if path == "smollm2" else path
        tokenizer = load_tokenizer(path)
        cfg, params = hf_io.load_params(path)
        render = render_plain
        if getattr(tokenizer, "chat_template", None):
            render = lambda messages: tokenizer.apply_chat_template(messages, tokenize=False,
                                                                    add_generation_prompt=True)

        def run(prompts: list[str]) -> list[str]:
            return [r.text for r in generate(cfg, params, tokenizer, prompts, chat=False, max_new_tokens=max_new_tokens,
                                             slots=slots, mesh=mesh)]

        return cls(run, render)


JUDGES = {"none": NoJudge, "oracle": OracleJudge, "lexical": LexicalJudge, "llm": LLMJudge}


def make_judge(name: str, **kwargs) -> Judge:
    """A judge by name ('none', 'oracle', 'lexical', 'llm'); kwargs go to its constructor (llm: generate, render)."""
    if name not in JUDGES:
        raise ValueError(f"judge {name!r}: expected one of {sorted(JUDGES)}")
    try:
        return JUDGES[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"judge {name!r}: bad arguments {sorted(kwargs)}: {e}") from None
