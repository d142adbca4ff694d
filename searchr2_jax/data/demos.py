"""Scripted demonstrations in the exact protocol, for a supervised warm start and for refiner examples.

A sound demo walks the question's hops: `<think>…</think>\\n<search> q </search>` → information → … →
`<think>…</think>\\n<answer> a </answer>`. Flawed demos make one mistake and are labelled with their first flawed
step (1-based assistant step; 0 = sound):
- `lookalike`: searches a namesake of the entity it needs (shared first name, surname or company stem) and follows
  the wrong chain to a wrong answer;
- `premature`: answers with a guess before it has searched enough;
- `repeat`: repeats the previous search (a wasted turn), then finishes correctly;
- `early` (only through `DemoWriter.demos(stop_early_fraction=)`): answers one hop short, with the bridge entity.
Each demo is a list of `Segment`s whose `generated` flag says where the loss is on (model turns) or off (prompt,
retrieved information), ready for `text.tokenizer.tokenize_segments`.

Real QA data has no world to walk: `search_demo` writes the one-search demonstration of a single-hop question (search
the question, copy a gold answer out of the retrieved passages), the format warm start a pretrained model needs
before GRPO on outcome EM sees any reward.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

import jax
import numpy as np

from searchr2_jax.config import ConfigError
from searchr2_jax.data.qa import QAExample
from searchr2_jax.data.synthetic import TEMPLATES, Renamer, World
from searchr2_jax.retrieval.types import Passage, Retriever
from searchr2_jax.rl.rewards import normalize_answer
from searchr2_jax.text.protocol import (Segment, Step, build_prompt, build_refiner_followup, build_refiner_prompt,
                                        refiner_candidates, render_information, segment_trajectory)
from searchr2_jax.text.tokenizer import tokenize_segments

FLAWS = ("lookalike", "premature", "repeat")
_REL_PHRASE = {"birth_city": "birthplace", "employer": "employer", "university": "university",
               "birth_year": "birth year", "founder": "founder", "headquarters": "headquarters city",
               "country": "country", "capital": "capital", "language": "official language", "city": "city"}
_TEMPLATE = {t[0]: t for t in TEMPLATES}


@dataclasses.dataclass(frozen=True)
class Demo:
    example: QAExample
    prompt: str
    response: tuple[Segment, ...]  # model turns (generated=True) and observations (False)
    answer: str | None
    flaw: str | None = None
    flawed_step: int = 0  # 1-based assistant step of the first flaw; 0 when sound
    stopped_early: bool = False  # the demonstrator's own early answer (`demos(stop_early_fraction=)`): imitated

    @property
    def steps(self) -> list[Step]:
        return segment_trajectory(self.response)

    def renamed(self, rename: Renamer) -> "Demo":
        """This demo with every name word respelled by `rename` (a consistent `Renamer`): the same hops, searches and
        namesakes about entities that exist nowhere, so only copying names out of the question and the retrieved
        passages lowers the loss on it; memorising the world's names does not."""
        ex = dataclasses.replace(self.example, question=rename(self.example.question),
                                 golden_answers=tuple(rename(a) for a in self.example.golden_answers))
        return dataclasses.replace(
            self, example=ex, prompt=rename(self.prompt),
            response=tuple(Segment(rename(s.text), s.generated) for s in self.response),
            answer=None if self.answer is None else rename(self.answer))

    def copy_drill_segments(self) -> list[Segment]:
        """The question (the prompt's last line) and the first model turn, which names the question's subject twice:
        a short sequence whose only hard tokens are copies, for the warm start's first steps (`sft.copy_steps`)."""
        return [Segment(f"Question: {self.example.question}\n", False), self.response[0]]

    def sft_segments(self) -> list[Segment]:
        """Prompt (loss off) followed by the response segments."""
        return [Segment(self.prompt, False), *self.response]

    def refiner_segments(self, max_steps: int | None = None, chat: bool = False, tokenizer=None,
                         prompt: str = "table12") -> list[Segment]:
        """A refiner example (loss off) and its label j (loss on): j = first flawed step, 0 = sound. `prompt` is the
        refiner prompt format (`refiner.prompt`): the Table 12 layout, or the follow-up after the demo itself."""
        steps = self.steps
        max_steps = len(steps) if max_steps is None else max_steps
        label = Segment(refiner_candidates(max_steps, chat)[self.flawed_step], True)
        if prompt == "followup":
            followup = build_refiner_followup(max_steps, tokenizer=tokenizer, chat=chat)
            return [Segment(self.prompt, False), *(Segment(s.text, False) for s in self.response),
                    Segment(followup, False), label]
        prompt_text = build_refiner_prompt(self.example.question, steps, max_steps, tokenizer=tokenizer, chat=chat)
        return [Segment(prompt_text, False), label]


class DemoWriter:
    """Writes demos for questions of one world. `retriever=None` shows the searched entity's passage first, then
    namesakes' passages (what a retriever returns for these queries); pass a `Retriever` to use real results."""

    def __init__(self, world: World, k: int = 3, retriever: Retriever | None = None, chat: bool = False,
                 tokenizer=None, end_text: str = ""):
        self.world, self.k, self.retriever = world, k, retriever
        self.chat, self.tokenizer, self.end_text = chat, tokenizer, end_text

    # -- pieces
    def _passage(self, eid: int) -> Passage:
        title, _, text = self.world.passages[eid]["contents"].partition("\n")
        return Passage(id=str(eid), title=title.strip('"'), text=text)

    def _search(self, eid: int, query: str) -> list[Passage]:
        if self.retriever is not None:
            return list(self.retriever.search([query], self.k)[0])
        # Namesakes first, then passages that mention the entity: the near misses a real retriever ranks next.
        others = self.world.lookalikes(eid)[: self.k - 1]
        if len(others) < self.k - 1:
            name = self.world.entity(eid).name
            others += [i for i, p in enumerate(self.world.passages)
                       if i != eid and i not in others and name in p["contents"]][: self.k - 1 - len(others)]
        return [self._passage(e) for e in [eid, *others]]

    def _value(self, eid: int, rel: str) -> tuple[str, int | None]:
        v = self.world.entity(eid).attrs[rel]
        return (str(v), None) if rel in ("birth_year", "language") else (self.world.entity(v).name, v)

    def _turn(self, think: str, action: str, content: str) -> Segment:
        return Segment(f"<think> {think} </think>\n<{action}> {content} </{action}>", True)

    # -- trajectories
    def demo(self, ex: QAExample, flaw: str | None = None, at: int = 0, rng: random.Random | None = None) -> Demo:
        """The sound demo (`flaw=None`) or the one with `flaw` at hop index `at` (0-based)."""
        rng = rng or random.Random(0)
        _, _, chain, _, keywords = _TEMPLATE[ex.metadata["template"]]
        node = ex.metadata["subject_id"]
        segs: list[Segment] = []
        fact = ""
        answer = None
        flawed_step = 0
        for h, (rel, kw) in enumerate(zip(chain, keywords)):
            name = self.world.entity(node).name
            need = f"I need the {_REL_PHRASE[rel]} of {name}."
            if flaw == "early" and h == at and h > 0:  # answers with what the previous hop found
                segs.append(self._turn(fact.strip(), "answer", answer))
                return self._finish(ex, segs, answer, flaw, len(_steps(segs)))
            if flaw == "premature" and h == at:
                guess = self._wrong_guess(ex, rel, rng)
                segs.append(self._turn(f"{fact}I think the answer is {guess}.".strip(), "answer", guess))
                return self._finish(ex, segs, guess, flaw, len(_steps(segs)))
            target = node
            if flaw == "lookalike" and h == at:
                target = self._lookalike(node, rng)
                flawed_step = h + 1
            query = f"{self.world.entity(target).name} {kw}"
            segs.append(self._turn(f"{fact}{need}", "search", query))
            segs.append(Segment(render_information(self._search(target, query)), False))
            if flaw == "repeat" and h == at:
                segs.append(self._turn(f"Let me search {name} again.", "search", query))
                segs.append(Segment(render_information(self._search(target, query)), False))
                flawed_step = h + 2
            value, nxt = self._value(target, rel)
            fact = f"The {_REL_PHRASE[rel]} of {name} is {value}. "
            answer, node = value, (nxt if nxt is not None else node)
        segs.append(self._turn(fact.strip(), "answer", answer))
        return self._finish(ex, segs, answer, flaw, flawed_step)

    def _finish(self, ex, segs, answer, flaw, flawed_step) -> Demo:
        if self.end_text:
            segs[-1] = Segment(segs[-1].text + self.end_text, True)
        prompt = build_prompt(ex.question, tokenizer=self.tokenizer, chat=self.chat)
        return Demo(ex, prompt, tuple(segs), answer, flaw, flawed_step)

    def _lookalike(self, eid: int, rng: random.Random) -> int:
        options = self.world.lookalikes(eid)
        if not options:
            raise ValueError(f"entity {eid} has no look-alike")
        return rng.choice(options)

    def _wrong_guess(self, ex: QAExample, rel_at_flaw: str, rng: random.Random) -> str:
        gold = ex.golden_answers[0]
        if gold.isdigit():
            return str(int(gold) + rng.choice([-7, -3, 2, 5, 11]))
        kind = self.world.entity(ex.metadata["entity_path"][-1]).kind if len(ex.metadata["entity_path"]) > 1 else None
        # Guesses come from the question's own region: a demonstration never names a held-out entity.
        region = [e for e in self.world.entities if e.split == self.world.entity(ex.metadata["subject_id"]).split]
        pool = [e.name for e in region if e.kind == kind and e.name != gold] if kind else []
        if not pool:  # languages: another country's language
            pool = sorted({e.attrs["language"] for e in region if e.kind == "country"} - {gold})
        return rng.choice(pool)

    def flaw_positions(self, ex: QAExample, flaw: str) -> list[int]:
        """Hop indices where `flaw` can be placed for this question."""
        hops = ex.metadata["hops"]
        if flaw == "lookalike":
            return [h for h in range(hops) if self.world.lookalikes(ex.metadata["entity_path"][h])]
        return list(range(hops))

    def demos(self, examples: Sequence[QAExample], seed: int = 0, flawed_fraction: float = 0.5,
              max_steps: int | None = None, stop_early_fraction: float = 0.0) -> list[Demo]:
        """One demo per example: sound, or (with probability `flawed_fraction`) one random flaw where it fits.

        `stop_early_fraction`: first, with this probability, a multi-hop demo stops one hop short and answers with
        what its last search found (the bridge entity: an "early" flaw at hop `hops - 1`), a common multi-hop
        mistake. Every name in it is still copied from a passage. A demonstrator that does so often leaves RL a
        choice to learn from the reward: search on, or answer.

        A flawed demo that still reaches the gold answer by chance (lookalike/premature) is replaced by the sound
        one, so every flawed label matches a real mistake. `max_steps` drops flaws that would make more steps.
        """
        rng = random.Random(seed)
        out = []
        for ex in examples:
            demo = None
            if stop_early_fraction > 0 and ex.metadata["hops"] > 1 and rng.random() < stop_early_fraction:
                demo = dataclasses.replace(self.demo(ex, "early", ex.metadata["hops"] - 1, rng), stopped_early=True)
                if demo.answer in ex.golden_answers:
                    demo = None
            elif rng.random() < flawed_fraction:
                flaw = rng.choice(FLAWS)
                spots = self.flaw_positions(ex, flaw)
                if flaw == "repeat" and max_steps is not None:
                    spots = [h for h in spots if ex.metadata["hops"] + 2 <= max_steps]
                if spots:
                    demo = self.demo(ex, flaw, rng.choice(spots), rng)
                    if flaw != "repeat" and demo.answer in ex.golden_answers:
                        demo = None
            out.append(demo or self.demo(ex))
        return out


def search_demo(ex: QAExample, passages: Sequence[Passage], tokenizer, chat: bool = False,
                max_obs_tokens: int | None = None) -> Demo | None:
    """The one-search demonstration of a single-hop question on real text, or None when no gold answer is found:
    `<think>…</think>\n<search> question </search>` → the `passages` (what the retriever returned for that query)
    → `<think>…</think>\n<answer> gold </answer>`, where the gold answer is copied from the first passage whose title
    or text contains it. The information block is cut to `max_obs_tokens` tokens as the rollout cuts it, and the
    answer must survive that cut, so every answer in a demo can be copied from what the model sees."""
    info = render_information(passages)
    if max_obs_tokens is not None:
        info = tokenizer.decode(list(tokenizer.encode(info, add_special_tokens=False))[:max_obs_tokens],
                                skip_special_tokens=False)
    seen = f" {normalize_answer(info)} "
    # The longest gold answer the passages contain: a title over its undisambiguated short form.
    found = sorted((a for a in ex.golden_answers if normalize_answer(a) and f" {normalize_answer(a)} " in seen),
                   key=len, reverse=True)
    if not found:
        return None
    answer = found[0]
    doc = next((i for i, p in enumerate(passages, 1)
                if f" {normalize_answer(answer)} " in f" {normalize_answer(p.title + ' ' + p.text)} "), 1)
    question = ex.question.strip()
    segs = (Segment(f"<think> I need to search for this. </think>\n<search> {question} </search>", True),
            Segment(info, False),
            Segment(f"<think> Doc {doc} answers the question. </think>\n<answer> {answer} </answer>", True))
    return Demo(ex, build_prompt(ex.question, tokenizer=tokenizer, chat=chat), segs, answer)


def _steps(segs: Sequence[Segment]) -> list[Step]:
    return segment_trajectory(segs)


# Tokens of a copy drill row: a question and one turn (Demo.copy_drill_segments) fit with room to spare.
COPY_DRILL_LEN = 96


class SFTBatches:
    """The warm start's batches: `batches(step)` -> (tokens, valid, loss mask) [rows, L] of demonstrations (and
    refiner examples, and copy drills for the first `sft.copy_steps`), a pure function of (config.seed, step), so a
    run resumed mid-SFT continues the same stream. Multi-host: this host's sft.batch_size / process_count rows,
    drawn with the process index in the seed. With real QA data (no world): one-search demonstrations."""

    def __init__(self, config, world: World | None, examples: Sequence[QAExample], tokenizer, retriever: Retriever):
        self.config, self.world, self.examples = config, world, examples
        self.tokenizer, self.retriever = tokenizer, retriever
        self.writer = None  # the DemoWriter, built on the first synthetic batch

    def __call__(self, step: int):
        c = self.config.sft
        if self.world is None:
            return self._search_demos(step)
        drill = step < c.copy_steps
        if self.writer is None:
            self.writer = DemoWriter(self.world, k=self.config.rollout.topk, retriever=self.retriever)
            self._name_words = self.world.name_words()
        procs = jax.process_count()
        rng = self._rng(step)
        L, rows = (COPY_DRILL_LEN, c.copy_batch_size // procs) if drill else (c.seq_len, c.batch_size // procs)
        idx = rng.choice(len(self.examples), size=rows, replace=False)
        demos = self.writer.demos([self.examples[i] for i in idx], seed=int(rng.integers(2**31)),
                                  flawed_fraction=0.0 if drill else c.flawed_fraction,
                                  stop_early_fraction=0.0 if drill else c.stop_early_fraction)
        if c.fresh_names or drill:
            demos = [d.renamed(Renamer(self._name_words, random.Random(int(rng.integers(2**31))))) for d in demos]
        rows_segs = []
        for d in demos:
            # Sound demos (and the demonstrator's early answers) teach the Actor; a share of them and every other
            # flawed demo teach the refiner its label (the first flawed step, 0 when sound) under the rollout's
            # prompt.
            if drill:
                rows_segs.append(d.copy_drill_segments())
            elif (d.flawed_step == 0 or d.stopped_early) and rng.random() >= c.refiner_fraction:
                rows_segs.append(d.sft_segments())
            else:
                rows_segs.append(d.refiner_segments(prompt=self.config.refiner.prompt))
        return self._pack(rows_segs, L)

    def _rng(self, step: int) -> np.random.Generator:
        procs = jax.process_count()
        return np.random.default_rng([self.config.seed, step] + ([jax.process_index()] if procs > 1 else []))

    def _pack(self, rows_segs, L: int):
        """(tokens, valid, loss mask) [rows, L] of tokenized segment lists, each cut to L tokens and zero-padded."""
        tokens = np.zeros((len(rows_segs), L), np.int32)
        mask = np.zeros((len(rows_segs), L), np.float32)
        valid = np.zeros((len(rows_segs), L), bool)
        for r, segs in enumerate(rows_segs):
            ids, m = tokenize_segments(self.tokenizer, segs)
            ids, m = ids[:L], m[:L]
            tokens[r, :len(ids)], mask[r, :len(ids)], valid[r, :len(ids)] = ids, m, True
        return tokens, valid, mask

    def _search_demos(self, step: int):
        """One-search demonstrations (`search_demo`) of training questions whose answer the training retriever
        finds; questions it misses are skipped, drawn in a seeded order, so the batch is again a pure function of
        (config.seed, step)."""
        c, ro = self.config.sft, self.config.rollout
        rng = self._rng(step)
        rows, L = c.batch_size // jax.process_count(), c.seq_len
        order = rng.permutation(len(self.examples))
        demos: list = []
        for start in range(0, len(order), 2 * rows):
            exs = [self.examples[i] for i in order[start:start + 2 * rows]]
            found = self.retriever.search([ex.question.strip() for ex in exs], ro.topk)
            demos += [d for ex, ps in zip(exs, found) if (d := search_demo(
                ex, ps, self.tokenizer, chat=self.config.model.chat, max_obs_tokens=ro.max_obs_tokens)) is not None]
            if len(demos) >= rows:
                break
        if len(demos) < rows:
            raise ConfigError(f"sft.batch_size={c.batch_size}: the retriever finds the answer of only {len(demos)} "
                              f"training questions")
        return self._pack([d.sft_segments() for d in demos[:rows]], L)
