"""Honest evaluation as the paper does it: the Actor alone (refiner off), greedy, EM (and F1) per dataset."""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import jax
import numpy as np

from searchr2_jax.data.qa import QAExample
from searchr2_jax.retrieval.types import format_passages
from searchr2_jax.rl import rewards
from searchr2_jax.rollout.rollout import RolloutEngine
from searchr2_jax.rollout.types import Job, Trajectory
from searchr2_jax.text import protocol


def make_jobs(examples: Sequence[QAExample], tokenizer, chat: bool = False, group_size: int = 1,
              group_ids: Sequence[int] | None = None) -> list[Job]:
    """Rollout jobs for examples (each repeated `group_size` times, adjacent), prompts built by the protocol."""
    jobs = []
    for i, ex in enumerate(examples):
        prompt = protocol.build_prompt(ex.question, tokenizer=tokenizer, chat=chat)
        ids = list(tokenizer.encode(prompt, add_special_tokens=False))
        gid = int(group_ids[i * group_size]) if group_ids is not None else i
        for _ in range(group_size):
            jobs.append(Job(ids, question=ex.question, golden_answers=tuple(ex.golden_answers), group_id=gid,
                            metadata={"id": ex.id, "data_source": ex.data_source, **dict(ex.metadata or {})}))
    return jobs


def score(trajectories: Sequence[Trajectory]) -> tuple[np.ndarray, np.ndarray]:
    """(EM, F1) per trajectory, from the answer parsed out of the response only."""
    return rewards.score_answers([t.answer for t in trajectories], [t.job.golden_answers for t in trajectories])


def rollouts(engine: RolloutEngine, params, examples: Sequence[QAExample], rng: jax.Array, chat: bool = False,
             batch_size: int = 64) -> list[Trajectory]:
    """Greedy Actor-only trajectories (refiner off), one per question, in order."""
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        out.extend(engine.run(params, make_jobs(chunk, engine.tokenizer, chat), rng, greedy=True,
                              use_refiner=False).trajectories)
    return out


def records(engine: RolloutEngine, params, examples: Sequence[QAExample], rng: jax.Array, chat: bool = False,
            batch_size: int = 64) -> list[dict]:
    """One record per question, greedy Actor-only rollouts: id, data source, hop count (synthetic world), EM, F1,
    searches, generated response tokens, status and answer."""
    return trajectory_records(examples, rollouts(engine, params, examples, rng, chat, batch_size))


def trajectory_records(examples: Sequence[QAExample], trajectories: Sequence[Trajectory]) -> list[dict]:
    """`records` of trajectories already rolled out for `examples` (in order)."""
    return _records(examples, trajectories, [t.answer for t in trajectories])


def _record(ex: QAExample, answer: str | None, searches: int, response_tokens: int, status: str) -> dict:
    return dict(id=ex.id, source=ex.data_source, hops=int((ex.metadata or {}).get("hops", 0)),
                em=rewards.exact_match(answer, ex.golden_answers), f1=rewards.f1_score(answer, ex.golden_answers),
                acc=rewards.substring_match(answer, ex.golden_answers),
                searches=searches, response_tokens=response_tokens, status=status, answer=answer)


def _records(examples, trajectories, answers) -> list[dict]:
    return [_record(ex, a, len(t.searches), int(t.loss_mask.sum()), t.status)
            for ex, t, a in zip(examples, trajectories, answers)]


BASELINES = ("direct", "rag")
METHODS = (*BASELINES, "agent")
# How the baselines prompt: "protocol" forces the agent's own tags (a model trained only on the protocol, such as the
# synthetic world's), "flashrag" asks in plain words through the chat template (an instruct model), as FlashRAG's
# direct-generation and standard-RAG pipelines do for Search-R1's baseline rows.
PROMPT_STYLES = ("protocol", "flashrag")
DIRECT_INSTRUCTION = ("Answer the question based on your own knowledge. Only give me the answer and do not output "
                      "any other words.")
RAG_INSTRUCTION = ("Answer the question based on the given document. Only give me the answer and do not output any "
                   "other words.\n\nThe following are given documents.\n\n{reference}")


def rag_reference(tokenizer, passages, max_tokens: int) -> str:
    """The retrieved passages as the agent sees them in an `<information>` block: `Doc i(Title: T) text` lines,
    cut to the same per-block token cap (`rollout.max_obs_tokens`), so rag and agent read the same text."""
    ids = list(tokenizer.encode(format_passages(passages).strip(), add_special_tokens=False))[:max_tokens]
    return tokenizer.decode(ids, skip_special_tokens=False)


@dataclasses.dataclass(frozen=True)
class BaselineOptions:
    """How `baseline_records` prompts: the rag baseline's retriever and its top `k` passages, the chat template or
    not, the prompt style (one of PROMPT_STYLES) and the flashrag prompts' few-shot (question, answer) pairs."""

    retriever: object = None
    k: int = 3
    chat: bool = False
    style: str = "protocol"
    shots: Sequence[tuple[str, str]] = ()


def baseline_records(engine: RolloutEngine, params, examples: Sequence[QAExample], method: str, rng: jax.Array,
                     options: BaselineOptions = BaselineOptions(), batch_size: int = 64) -> list[dict]:
    """The no-agent baselines, greedy, one answer turn, as `records` writes them (`options`: `BaselineOptions`).

    style="protocol": the response is forced to open with `<answer>` (direct), or with one search for the question
    itself, its top-k passages and then `<answer>` (rag): retrieve-then-read in the agent's own protocol. `engine`
    needs room for the forced prefix in its `max_prompt_tokens`; the answer is parsed from the forced prefix and the
    continuation together.

    style="flashrag": the question alone (direct), or the top-k passages and the question (rag), under a plain
    instruction to give only the answer; the reply's first line is the answer (or its `<answer>` span, if it writes
    one). The reply gets `engine.config.max_obs_tokens` of passages and 32 new tokens. `shots`: (question, answer)
    pairs before the question (training examples: they show a small model the shape of an answer), as earlier
    turns of the chat with `chat`, else as `Question: …\nAnswer: …` lines."""
    retriever, k, chat, style, shots = options.retriever, options.k, options.chat, options.style, options.shots
    if method not in BASELINES:
        raise ValueError(f"baseline {method!r}: expected one of {BASELINES}")
    if style not in PROMPT_STYLES:
        raise ValueError(f"style {style!r}: expected one of {PROMPT_STYLES}")
    if shots and style != "flashrag":
        raise ValueError(f"{len(shots)} shots: few-shot examples go only into the flashrag prompts")
    if method == "rag" and retriever is None:
        raise ValueError("the rag baseline needs a retriever")
    out = []
    tok = engine.tokenizer
    one_turn = _one_turn(engine) if style == "protocol" else None
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start:start + batch_size])
        queries = [protocol.normalize_question(ex.question) for ex in chunk]
        passages = retriever.search(queries, k) if method == "rag" else [None] * len(chunk)
        if style == "flashrag":
            out.extend(_flashrag_records(engine, params, chunk, passages, chat, shots))
            continue
        if method == "rag":
            prefixes = [f"{protocol.SEARCH_OPEN} {q} {protocol.SEARCH_CLOSE}" + protocol.render_information(p)
                        + protocol.ANSWER_OPEN for q, p in zip(queries, passages)]
        else:
            prefixes = [protocol.ANSWER_OPEN] * len(chunk)
        jobs = make_jobs(chunk, tok, chat)
        for job, prefix in zip(jobs, prefixes):
            job.prompt_ids = job.prompt_ids + list(tok.encode(prefix, add_special_tokens=False))
        run = one_turn.run(params, jobs, rng, greedy=True, use_refiner=False)
        answers = [protocol.extract_answer(prefix + tok.decode(list(t.response_ids), skip_special_tokens=False))
                   for prefix, t in zip(prefixes, run.trajectories)]
        out.extend(_record(ex, a, int(method == "rag"), int(t.loss_mask.sum()),
                           "answered" if a is not None else t.status)
                   for ex, t, a in zip(chunk, run.trajectories, answers))
    return out


def _one_turn(engine: RolloutEngine) -> RolloutEngine:
    """The engine limited to one turn: the forced `<answer>` is in the prompt, so the turn parser would call the
    reply's bare `... </answer>` an invalid action and give the model another turn."""
    config = engine.config.copy_and_resolve_references()
    config.max_turns = 1
    return RolloutEngine(engine.cfg, engine.tokenizer, None, config, mesh=engine.mesh)


FLASHRAG_NEW_TOKENS = 32


def _flashrag_records(engine: RolloutEngine, params, chunk, passages, chat: bool,
                      shots: Sequence[tuple[str, str]] = ()) -> list[dict]:
    from searchr2_jax.rollout.generate import generate

    tok, c = engine.tokenizer, engine.config
    systems = [DIRECT_INSTRUCTION if p is None else
               RAG_INSTRUCTION.format(reference=rag_reference(tok, p, c.max_obs_tokens)) for p in passages]
    def ask(q: str) -> str:
        return f"Question: {protocol.normalize_question(q)}"

    questions = [ask(ex.question) for ex in chunk]
    history = [(ask(q), a) for q, a in shots]
    if chat:  # FlashRAG's chat prompt is the bare question; examples are earlier turns of the conversation
        replies = generate(engine.cfg, params, tok, questions, chat=True, system=systems, history=history,
                           max_new_tokens=FLASHRAG_NEW_TOKENS, slots=c.slots, mesh=engine.mesh)
    else:
        examples = "".join(f"{q}\nAnswer: {a}\n\n" for q, a in history)
        users = [examples + q for q in questions]
        replies = generate(engine.cfg, params, tok, [f"{s}\n\n{u}\nAnswer:" for s, u in zip(systems, users)],
                           chat=False, max_new_tokens=FLASHRAG_NEW_TOKENS, slots=c.slots, mesh=engine.mesh)
    out = []
    for ex, r, p in zip(chunk, replies, passages):
        answer = protocol.extract_answer(r.text)
        if answer is None:
            answer = next((line.strip() for line in r.text.splitlines() if line.strip()), "")
        status = "out_of_budget" if r.status == "out_of_budget" else "answered"
        out.append(_record(ex, answer, int(p is not None), r.num_tokens, status))  # rag: its one retrieval
    return out


def majority_records(train: Sequence[QAExample], examples: Sequence[QAExample]) -> list[dict]:
    """The no-search floor: each question template's most common training answer (no model, no retrieval)."""
    votes = collections.defaultdict(collections.Counter)
    for ex in train:
        votes[(ex.metadata or {}).get("template", ex.data_source)][ex.golden_answers[0]] += 1
    out = []
    for ex in examples:
        top = votes.get((ex.metadata or {}).get("template", ex.data_source))
        out.append(_record(ex, top.most_common(1)[0][0] if top else None, 0, 0, "answered"))
    return out


def summarize(recs: Sequence[dict]) -> dict:
    """The eval table of `records`: EM/F1/searches per data source and overall, plus status shares."""
    per_source = collections.defaultdict(list)
    statuses = collections.Counter(r["status"] for r in recs)
    for r in recs:
        per_source[r["source"]].append((r["em"], r["f1"], r["searches"]))
    table = {}
    for source, rows in sorted(per_source.items()):
        arr = np.asarray(rows)
        table[f"eval/{source}/em"] = float(arr[:, 0].mean())
        table[f"eval/{source}/f1"] = float(arr[:, 1].mean())
        table[f"eval/{source}/searches"] = float(arr[:, 2].mean())
    every = np.asarray([r for rows in per_source.values() for r in rows]).reshape(-1, 3)
    table["eval/em"] = float(every[:, 0].mean()) if len(every) else 0.0
    table["eval/f1"] = float(every[:, 1].mean()) if len(every) else 0.0
    n = max(sum(statuses.values()), 1)
    table.update({f"eval/status/{k}": v / n for k, v in statuses.items()})
    return table


def evaluate(engine: RolloutEngine, params, examples: Sequence[QAExample], rng: jax.Array, chat: bool = False,
             batch_size: int = 64) -> dict:
    """EM/F1 per data source and overall, plus status shares, with greedy Actor-only rollouts."""
    return summarize(records(engine, params, examples, rng, chat, batch_size))


def format_table(table: dict) -> str:
    """A readable EM/F1 table, one row per data source."""
    sources = sorted({k.split("/")[1] for k in table if k.count("/") == 2 and k.endswith("/em")})
    lines = [f"{'dataset':<20} {'EM':>6} {'F1':>6} {'searches':>9}"]
    for s in sources:
        lines.append(f"{s:<20} {table[f'eval/{s}/em']:>6.3f} {table[f'eval/{s}/f1']:>6.3f} "
                     f"{table[f'eval/{s}/searches']:>9.2f}")
    lines.append(f"{'all':<20} {table.get('eval/em', 0):>6.3f} {table.get('eval/f1', 0):>6.3f}")
    return "\n".join(lines)
