"""The text protocol between the Actor, the search engine and the Meta-Refiner (host-side, pure Python).

It follows Search-R1 (its code and paper): one user message holding the template and the
question; the model writes `<think>…</think>` then either `<search> q </search>` (the environment appends
`\\n\\n<information>Doc 1(Title: …) …</information>\\n\\n`) or `<answer> a </answer>`; a turn with neither gets
Search-R1's invalid-action message. The Meta-Refiner prompt is the paper's Table 12 (the Search-R2 paper, §2.3).

Deviations from Search-R1, on purpose:
- `parse_turn` decides by the *earliest closing tag* of the turn (the real stop string) and takes the content after the
  *last* matching opening tag before it, so `<search> a <search> b </search>` searches "b". Search-R1 takes the first
  regex match after cutting at `</search>`; with real stops (our rollout) the two agree on well-formed turns.
- An empty or whitespace-only query is invalid (Search-R1 would send "" to the retriever). An empty answer is still an
  answer (it ends the trajectory, as in Search-R1, and scores 0 under EM).
- `extract_answer` reads the *response only*, so the prompt's example `<answer> Beijing </answer>` never counts;
  Search-R1 instead scans prompt+response and needs ≥ 2 matches (issue #79).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal, Sequence

from searchr2_jax.retrieval.types import Passage, format_passages

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
INFO_OPEN, INFO_CLOSE = "<information>", "</information>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
PROTOCOL_TAGS = (THINK_OPEN, THINK_CLOSE, SEARCH_OPEN, SEARCH_CLOSE, INFO_OPEN, INFO_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

# Strings that end an Actor turn; EOS and chat end-of-turn tokens come from the tokenizer (text/tokenizer.py).
STOP_STRINGS = (SEARCH_CLOSE, ANSWER_CLOSE)
CHAT_END_OF_TURN = "<|im_end|>"

# Search-R1's `base` template, verbatim (qa_search_train_merge.py), including its typo "as your want".
PROMPT_TEMPLATE = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every time you get new "
    "information. After reasoning, if you find you lack some knowledge, you can call a search engine by <search> query "
    "</search> and it will return the top searched results between <information> and </information>. You can search as "
    "many times as your want. If you find no further external knowledge needed, you can directly provide the answer "
    "inside <answer> and </answer>, without detailed illustrations. For example, <answer> Beijing </answer>. "
    "Question: {question}\n"
)

INVALID_ACTION_MESSAGE = (
    "\nMy previous action is invalid. If I want to search, I should put the query between <search> and </search>. "
    "If I want to give the final answer, I should put the answer between <answer> and </answer>. Let me try again.\n"
)

REFINER_HEADER = (
    "You are a meticulous meta-thinker. Review the numbered ASSISTANT_STEP entries and identify the earliest flawed "
    "step. Return a single integer between 0 and {max_steps} where 0 means all steps are acceptable."
)
REFINER_FOOTER = "Problematic step index (0 = no issue):"


def normalize_question(question: str) -> str:
    """Search-R1's normalization: strip, and append '?' when missing."""
    q = question.strip()
    return q if q.endswith("?") else q + "?"


def build_prompt(question: str, tokenizer=None, chat: bool = False, system: str | None = None) -> str:
    """The Actor's prompt text for one question.

    `chat=False`: the raw Search-R1 template (for base models and our from-scratch tiny model).
    `chat=True`: the same text as one user message through `tokenizer.apply_chat_template(...,
    add_generation_prompt=True)` (Search-R1's RLHFDataset does this whenever a template exists); `system` adds a
    system message (the template's default system prompt, if any, applies otherwise).
    """
    content = PROMPT_TEMPLATE.format(question=normalize_question(question))
    if not chat:
        return content
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("build_prompt(chat=True) needs a tokenizer with a chat_template")
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": content}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@dataclasses.dataclass(frozen=True)
class TurnParse:
    """What one Actor turn asked for: `search` (with `query`), `answer` (with `answer`) or `invalid`."""

    status: Literal["answer", "search", "invalid"]
    query: str | None = None
    answer: str | None = None


def _first_close(text: str) -> tuple[int, str] | None:
    """Position and tag of the earliest `</search>` or `</answer>` (the turn's real stop)."""
    best = None
    for tag in STOP_STRINGS:
        pos = text.find(tag)
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, tag)
    return best


def parse_turn(text: str) -> TurnParse:
    """Parse one generated turn (text from the turn's start up to and including its stop string, if any).

    Never raises: anything without a closed, non-empty `<search>` or a closed `<answer>` is `invalid`.
    """
    if not isinstance(text, str):
        return TurnParse("invalid")
    found = _first_close(text)
    if found is None:
        return TurnParse("invalid")
    pos, close = found
    opener = SEARCH_OPEN if close == SEARCH_CLOSE else ANSWER_OPEN
    start = text.rfind(opener, 0, pos)
    if start < 0:
        return TurnParse("invalid")
    content = text[start + len(opener) : pos].strip()
    if close == ANSWER_CLOSE:
        return TurnParse("answer", answer=content)
    if not content:
        return TurnParse("invalid")
    return TurnParse("search", query=content)


_ANSWER_RE = re.compile(re.escape(ANSWER_OPEN) + r"(.*?)" + re.escape(ANSWER_CLOSE), re.DOTALL)


def extract_answer(response_text: str) -> str | None:
    """The last `<answer>…</answer>` of the *response* (never pass the prompt), stripped; None when there is none."""
    if not isinstance(response_text, str):
        return None
    matches = _ANSWER_RE.findall(response_text)
    return matches[-1].strip() if matches else None


_THINK_RE = re.compile(re.escape(THINK_OPEN) + r"(.*?)" + re.escape(THINK_CLOSE), re.DOTALL)


def extract_thought(turn_text: str) -> str | None:
    """The reasoning of one assistant turn: its `<think>…</think>` contents, stripped (several are joined by a blank
    line); None when the turn has no closed `<think>` block."""
    if not isinstance(turn_text, str):
        return None
    parts = [m.strip() for m in _THINK_RE.findall(turn_text)]
    return "\n\n".join(parts) if parts else None


def render_information(passages: Sequence[Passage]) -> str:
    """Search-R1's observation for a search turn: `\\n\\n<information>{docs}</information>\\n\\n` (docs stripped)."""
    return "\n\n" + INFO_OPEN + format_passages(passages).strip() + INFO_CLOSE + "\n\n"


def truncate_at_stop(text: str) -> str:
    """Cut generated text right after its first stop string (what a rollout without on-device stops must do)."""
    found = _first_close(text)
    return text if found is None else text[: found[0] + len(found[1])]


# ----------------------------------------------------------------------------------------------- segments and steps


@dataclasses.dataclass(frozen=True)
class Segment:
    """A span of a training text. `generated=True`: written by the model (loss on); False: prompt/tool (loss off)."""

    text: str
    generated: bool


@dataclasses.dataclass(frozen=True)
class Step:
    """One assistant turn and the tool output it triggered ('' when none, e.g. after the answer)."""

    assistant: str
    tool: str = ""


_OBSERVATION_RE = re.compile(
    r"\n*" + re.escape(INFO_OPEN) + r".*?" + re.escape(INFO_CLOSE) + r"\n*|" + re.escape(INVALID_ACTION_MESSAGE),
    re.DOTALL,
)


def segment_trajectory(response: str | Sequence[Segment]) -> list[Step]:
    """Split a response (everything after the prompt) into numbered assistant steps and their tool outputs.

    Given `Segment`s (what the rollout records), generated spans are assistant text and the others tool output, so
    nothing is guessed. Given plain text, tool outputs are found as `<information>…</information>` blocks (with their
    surrounding newlines) and the invalid-action message. Steps with no assistant text are dropped only when they
    carry no tool output either.
    """
    steps: list[Step] = []
    if isinstance(response, str):
        parts: list[Segment] = []
        last = 0
        for m in _OBSERVATION_RE.finditer(response):
            parts.append(Segment(response[last : m.start()], True))
            parts.append(Segment(m.group(0), False))
            last = m.end()
        parts.append(Segment(response[last:], True))
    else:
        parts = list(response)
    assistant, tool = "", ""
    for seg in parts:
        if seg.generated:
            if tool:  # a new assistant turn starts after a tool output
                steps.append(Step(assistant, tool))
                assistant, tool = "", ""
            assistant += seg.text
        else:
            tool += seg.text
    if assistant.strip() or tool:
        steps.append(Step(assistant, tool))
    return [s for s in steps if s.assistant.strip() or s.tool]


def build_refiner_prompt(
    question: str,
    steps: Sequence[Step],
    max_steps: int | None = None,
    context: str = "",
    tokenizer=None,
    chat: bool = False,
) -> str:
    """The Meta-Refiner prompt (paper Table 12). The answer is an integer 0..max_steps; 0 accepts the trajectory.

    `question` fills the USER line, `context` the ASSISTANT_CONTEXT line (empty for single-question QA). Without chat
    the prompt ends with the colon and the candidates are `refiner_candidates(max_steps)` (" 0", " 1", …); with
    `chat=True` it is one user message through the chat template and candidates have no leading space.
    """
    max_steps = len(steps) if max_steps is None else max_steps
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if len(steps) > max_steps:
        raise ValueError(f"{len(steps)} steps exceed max_steps={max_steps}")
    lines = [REFINER_HEADER.format(max_steps=max_steps), f"ASSISTANT_CONTEXT: {context.strip()}".rstrip(), f"USER: {question.strip()}"]
    for i, step in enumerate(steps, start=1):
        lines.append(f"ASSISTANT_STEP_{i}: {step.assistant.strip()}")
        if step.tool.strip():
            lines.append(f"TOOL: {step.tool.strip()}")
    lines.append(REFINER_FOOTER)
    text = "\n".join(lines)
    if not chat:
        return text
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("build_refiner_prompt(chat=True) needs a tokenizer with a chat_template")
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


REFINER_FOLLOWUP_STEPS = ("ASSISTANT_STEP_1 .. ASSISTANT_STEP_{max_steps} are your turns above, in order; the "
                          "information block after a turn is its TOOL output.")


def build_refiner_followup(max_steps: int, tokenizer=None, chat: bool = False) -> str:
    """The Meta-Refiner prompt as a follow-up to the Actor's own conversation (`refiner.prompt="followup"`).

    Table 12's instruction and question line are asked about the assistant turns already in the conversation, so the
    text is appended to the trajectory and the refiner reads it from the Actor's KV cache instead of re-encoding it
    (on a CPU that re-encoding costs about as much as the rollout itself). Without chat the text follows a blank
    line and ends with the colon; with `chat=True` it closes the assistant message and opens a user turn, and the
    candidates are as for `build_refiner_prompt`.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    text = "\n".join([REFINER_HEADER.format(max_steps=max_steps), REFINER_FOLLOWUP_STEPS.format(max_steps=max_steps),
                      REFINER_FOOTER])
    if not chat:
        return "\n\n" + text
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("build_refiner_followup(chat=True) needs a tokenizer with a chat_template")
    # The template's text between an assistant message and the end of a following user turn (it may add a default
    # system prompt only at the start, which the difference leaves out).
    head = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    before = tokenizer.apply_chat_template(head, tokenize=False)
    after = tokenizer.apply_chat_template(head + [{"role": "user", "content": text}], tokenize=False,
                                          add_generation_prompt=True)
    if not after.startswith(before.rstrip()):
        raise ValueError("the chat template does not extend a conversation by appending; use refiner.prompt=table12")
    cut = before.rindex("A") + 1  # right after the assistant's content: the closing tokens belong to the suffix
    return after[cut:]


def refiner_candidates(max_steps: int, chat: bool = False) -> list[str]:
    """Completion strings scored by the refiner, index j = "earliest flawed step is j" (0 = accept)."""
    return [("" if chat else " ") + str(j) for j in range(max_steps + 1)]
