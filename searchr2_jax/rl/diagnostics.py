"""Online estimates of the Meta-Refiner's performance decomposition (paper §5: Prop. 4.1, 4.2, Defs D.1–D.3).

Over N drafts y ~ π_l, with α(y) = 1 iff the refiner accepts y and k*(y) = argmax_{j>=1} of its scores (the cut it
makes when it rejects; π_h is one-hot there):

    ΔJ = J_meta − J_base = A_prec + V_inter · (J_trim − J_base)   (Prop. 4.1; exact with population covariances)
    J_trim − J_base = S_trim + Ḡ                                  (Prop. 4.2, π_h one-hot at k*)

`decomposition` is the pure math on per-draft numbers; `refiner_diagnostics` produces those numbers online: Actor-only
drafts, the refiner's scores, then one regeneration per draft from k* and one from a uniformly drawn cut.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Callable, NamedTuple, Sequence

import jax
import numpy as np

from searchr2_jax.retrieval.types import Passage
from searchr2_jax.rl import judges as judges_lib
from searchr2_jax.rl import rewards
from searchr2_jax.rollout import types as T
from searchr2_jax.rollout.refiner import MetaRefiner, decide, turn_texts
from searchr2_jax.rollout.rollout import RolloutEngine

log = logging.getLogger(__name__)

# Drafts the refiner judges; the others (invalid, retrieval errors, over-long prompts) are skipped and counted.
JUDGED_STATUSES = (T.ANSWERED, T.OUT_OF_TURNS, T.OUT_OF_BUDGET)

KEYS = ("J_base", "J_trim", "J_meta", "Z_acc", "V_inter", "A_prec", "S_trim", "G_bar", "G_uniform", "dJ_trim",
        "dJ_measured", "dJ_decomposed")


class RewardInput(NamedTuple):
    """What a reward needs, for a draft or for kept prefix + regeneration alike."""

    question: str
    answer: str | None
    golden_answers: tuple[str, ...]
    collections: list[list[Passage]]  # the passages of every search, in order (the kept prefix's first)
    metadata: dict


RewardFn = Callable[[RewardInput], float]


def hybrid_reward_fn(judge: judges_lib.Judge | None = None, outcome_only: bool = False) -> RewardFn:
    """The trainer's reward (EM x (1 + useful / M), `rewards.hybrid_reward`) as a `RewardFn`; no judge = EM only."""

    def reward(x: RewardInput) -> float:
        em = rewards.exact_match(x.answer, x.golden_answers)
        useful = 0 if outcome_only or judge is None else judge.count_useful(
            x.question, x.golden_answers, x.collections, x.metadata.get("gold_passage_ids"))
        return rewards.hybrid_reward(em, useful, len(x.collections), outcome_only=outcome_only)

    return reward


# ---------------------------------------------------------------------------------------------- (a) the math


def _cov(x: np.ndarray, y: np.ndarray) -> float:
    """Population covariance (ddof=0): the identity of Prop. 4.1 then holds exactly on the sample."""
    return float(np.mean((x - x.mean()) * (y - y.mean())))


def uniform_gains(uniform_cut: np.ndarray, gain: np.ndarray, num_steps: np.ndarray) -> np.ndarray:
    """Ê[G_k | T >= k] for k = 1..max T ([K]), from one regeneration per draft at a cut u ~ U{1..T}.

    A draft of T steps draws u = k with probability 1/T, so each sample is weighted by T (inverse probability):
    the plain mean over u == k would over-weight short drafts. Equal lengths reduce this to the plain mean. A k
    never drawn gets the overall mean uniform gain (the best guess there is, and zero-weight when P(k* = k) = 0)."""
    K = int(num_steps.max(initial=0))
    out = np.full(K, float(gain.mean()) if len(gain) else np.nan)
    for k in range(1, K + 1):
        hit = uniform_cut == k
        if hit.any():
            out[k - 1] = float(np.sum(num_steps[hit] * gain[hit]) / np.sum(num_steps[hit]))
    return out


def decomposition(R, alpha, R_cut, cut, uniform_cut, R_uniform, num_steps) -> dict[str, float]:
    """Prop. 4.1 / 4.2 on N drafts (numpy, population covariances). All inputs are [N]:

    R            the draft's reward R(y);
    alpha        1 if the refiner accepts the draft, else 0 (a probability in [0, 1] also works);
    R_cut        reward of one regeneration from the refiner's cut k*(y) (for accepted drafts too: J_trim needs it);
    cut          k*(y) in 1..T;
    uniform_cut  a cut drawn uniformly from 1..T, and R_uniform the reward of one regeneration from it;
    num_steps    T, the draft's number of turns.

    Returns J_base, J_trim, J_meta (the refined policy's reward on these samples), Z_acc, V_inter = 1 − Z_acc,
    A_prec = Cov(α, R − R_cut), dJ_trim = J_trim − J_base, G_bar = Σ_k P̂(k* = k) Ê[G_k] (`uniform_gains`),
    S_trim = dJ_trim − G_bar, G_uniform = mean(R_uniform − R), dJ_measured = J_meta − J_base,
    dJ_decomposed = A_prec + V_inter (S_trim + G_bar), and n. With n = 0 every value is NaN.
    """
    R, alpha, R_cut, R_uniform = (np.asarray(x, np.float64) for x in (R, alpha, R_cut, R_uniform))
    cut, uniform_cut, num_steps = (np.asarray(x, np.int64) for x in (cut, uniform_cut, num_steps))
    n = len(R)
    if not all(x.shape == (n,) for x in (alpha, R_cut, R_uniform, cut, uniform_cut, num_steps)):
        raise ValueError("decomposition: every input must be 1-D of the same length")
    if n == 0:
        return dict({k: float("nan") for k in KEYS}, n=0)
    if np.any((alpha < 0) | (alpha > 1)):
        raise ValueError("decomposition: alpha must lie in [0, 1]")
    for name, k in (("cut", cut), ("uniform_cut", uniform_cut)):
        if np.any((k < 1) | (k > num_steps)):
            raise ValueError(f"decomposition: {name} must lie in 1..num_steps")
    J_base, J_trim, Z_acc = float(R.mean()), float(R_cut.mean()), float(alpha.mean())
    V_inter = 1.0 - Z_acc
    A_prec = _cov(alpha, R - R_cut)
    J_meta = float(np.mean(alpha * R + (1 - alpha) * R_cut))
    G_k = uniform_gains(uniform_cut, R_uniform - R, num_steps)
    P_k = np.bincount(cut, minlength=len(G_k) + 1)[1:] / n
    G_bar = float(np.sum(P_k * G_k))
    dJ_trim = J_trim - J_base
    S_trim = dJ_trim - G_bar  # = Σ_k Cov(1[k* = k], G_k): E[π_h(k) G_k] summed is mean(R_cut − R)
    return dict(J_base=J_base, J_trim=J_trim, J_meta=J_meta, Z_acc=Z_acc, V_inter=V_inter, A_prec=A_prec,
                S_trim=S_trim, G_bar=G_bar, G_uniform=float(np.mean(R_uniform - R)), dJ_trim=dJ_trim,
                dJ_measured=J_meta - J_base, dJ_decomposed=A_prec + V_inter * (S_trim + G_bar), n=n)


# ---------------------------------------------------------------------------------------------- (b) online


@dataclasses.dataclass
class DraftRecord:
    """One judged draft and its two regenerations (`used`: False when a regeneration's prompt did not fit)."""

    job_index: int
    num_steps: int
    reward: float
    alpha: int
    cut: int
    reward_cut: float
    uniform_cut: int
    reward_uniform: float
    scores: list[float]  # the refiner's log p("0") .. log p("T")
    draft: T.Trajectory
    regen_cut: T.Trajectory
    regen_uniform: T.Trajectory
    used: bool = True


def make_regen_engine(engine: RolloutEngine, slots: int | None = None) -> RolloutEngine:
    """An Actor-only engine whose prompts fit prompt + a whole response (a regeneration's prompt is the draft's
    prompt plus its kept response). Same model, tokenizer, retriever and limits otherwise; its larger cache
    compiles its own shapes, so build it once and reuse it."""
    config = engine.config.copy_and_resolve_references()
    config.max_prompt_tokens = engine.config.max_prompt_tokens + engine.config.max_response_tokens
    if slots is not None:
        config.slots = slots
    return RolloutEngine(engine.cfg, engine.tokenizer, engine.retriever, config, refiner=None, mesh=engine.mesh)


def regen_job(draft: T.Trajectory, k: int) -> T.Job:
    """The job that regenerates `draft` from step k: its prompt plus the response before turn k (the rollout's cut,
    `keep = turns[k-1].start`), same question, answers, group and metadata."""
    keep = draft.turns[k - 1].start
    job = draft.job
    return T.Job(list(job.prompt_ids) + [int(x) for x in draft.response_ids[:keep]], question=job.question,
                 golden_answers=tuple(job.golden_answers), group_id=job.group_id, metadata=dict(job.metadata))


def reward_input(traj: T.Trajectory) -> RewardInput:
    job = traj.job
    return RewardInput(job.question, traj.answer, tuple(job.golden_answers), [t.passages for t in traj.searches],
                       dict(job.metadata))


def continued_input(draft: T.Trajectory, k: int, regen: T.Trajectory, max_turns: int,
                    max_response_tokens: int) -> RewardInput:
    """The reward input of draft[:turn k] + regeneration, as the training rollout would have ended it.

    The rollout continues a cut slot in place: the kept turns count towards `max_turns`, the kept tokens towards
    the response budget. A regeneration runs as a fresh job, so the limits are applied here: a turn that would end
    past the remaining budget, or a non-answer turn that reaches the turn limit, ends it unanswered (a search that
    reaches the limit is not run: no passages)."""
    kept = draft.turns[:k - 1]
    room = max_response_tokens - draft.turns[k - 1].start
    turns, answer = list(kept), regen.answer
    for t in regen.turns:
        if t.end > room:
            answer = None
            break
        if len(turns) + 1 >= max_turns and t.action != "answer":
            turns.append(dataclasses.replace(t, passages=[]) if t.action == "search" else t)
            answer = None
            break
        turns.append(t)
    job = draft.job
    return RewardInput(job.question, answer, tuple(job.golden_answers),
                       [t.passages for t in turns if t.action == "search"], dict(job.metadata))


class RefinerScoring(NamedTuple):
    """How `refiner_diagnostics` has the refiner score the drafts."""

    params: object = None  # the refiner's own parameters; None: it shares the Actor's
    batch: int = 64  # prompts per scoring call


def refiner_diagnostics(engine: RolloutEngine, refiner: MetaRefiner, params, jobs: Sequence[T.Job], rng: jax.Array,
                        reward_fn: RewardFn, regen_engine: RolloutEngine | None = None,
                        scoring: RefinerScoring = RefinerScoring()) -> tuple[dict[str, float], list[DraftRecord]]:
    """Estimates `decomposition` online for the current Actor and refiner. Returns (metrics, per-draft records).

    1. drafts: `engine.run(..., use_refiner=False)`, sampled as in training;
    2. the refiner scores each draft with turns and a judged status (others are skipped and counted):
       α = 1 iff `decide` accepts (the margin rule), k* = argmax_{j>=1} (forced revisions are ignored);
    3. one `regen_engine.run` regenerates each draft from k* and from a uniform cut (prompt + kept response);
    4. `reward_fn` scores drafts and kept prefix + regeneration alike (`continued_input`).

    `regen_engine`: its `max_prompt_tokens` must fit prompt + kept response; the caller builds it once, e.g.
    `make_regen_engine(engine)`. Without it `engine` regenerates, and drafts whose regeneration prompt does not fit
    are left out of the estimate (`skipped/regen_prompt_too_long`), which biases it towards early cuts.
    `scoring`: the refiner's own parameters, if it does not share the Actor's, and its scoring batch.
    """
    draft_key, regen_key, cut_key = jax.random.split(rng, 3)
    drafts = engine.run(params, jobs, draft_key, use_refiner=False).trajectories
    skipped = collections.Counter()
    judged = []
    for t in drafts:
        if t.status not in JUDGED_STATUSES:
            skipped[f"skipped/{t.status}"] += 1
        elif not t.turns:
            skipped["skipped/no_turns"] += 1
        else:
            judged.append(t)
    num_steps = [len(t.turns) for t in judged]
    prompts = [refiner.prompt_ids(t, turn_texts(engine.tokenizer, t.response_ids, t.turns)) for t in judged]
    scores = refiner.score(params if scoring.params is None else scoring.params, prompts, num_steps,
                           batch=scoring.batch)
    margin = refiner.config.margin
    alpha = [int(decide(s, n, margin) == 0) for s, n in zip(scores, num_steps)]
    cut = [1 + int(np.argmax(s[1:n + 1])) for s, n in zip(scores, num_steps)]
    uniform = [int(u) for u in jax.random.randint(cut_key, (len(judged),), 1, np.asarray(num_steps, np.int32) + 1)]

    records = []
    if judged:
        regen_jobs = [regen_job(t, k) for t, k in zip(judged, cut)] + [regen_job(t, u) for t, u in zip(judged, uniform)]
        regens = (regen_engine or engine).run(params, regen_jobs, regen_key, use_refiner=False).trajectories
        c = engine.config
        for i, t in enumerate(judged):
            rc, ru = regens[i], regens[len(judged) + i]
            used = T.PROMPT_TOO_LONG not in (rc.status, ru.status)
            skipped["skipped/regen_prompt_too_long"] += not used
            r_cut, r_uni = (float(reward_fn(continued_input(t, k, regen, c.max_turns, c.max_response_tokens)))
                            if used else float("nan") for k, regen in ((cut[i], rc), (uniform[i], ru)))
            records.append(DraftRecord(t.job_index, num_steps[i], float(reward_fn(reward_input(t))), alpha[i],
                                       cut[i], r_cut, uniform[i], r_uni, scores[i, :num_steps[i] + 1].tolist(), t,
                                       rc, ru, used))
    if skipped["skipped/regen_prompt_too_long"]:
        log.warning("refiner diagnostics: %d drafts left out, their regeneration prompt exceeds max_prompt_tokens=%d "
                    "(pass regen_engine=make_regen_engine(engine))", skipped["skipped/regen_prompt_too_long"],
                    (regen_engine or engine).config.max_prompt_tokens)
    rows = [(r.reward, r.alpha, r.reward_cut, r.cut, r.uniform_cut, r.reward_uniform, r.num_steps)
            for r in records if r.used]
    metrics = decomposition(*(list(col) for col in zip(*rows))) if rows else decomposition(*[[]] * 7)
    metrics["drafts"] = len(drafts)
    metrics["skipped/regen_prompt_too_long"] = 0
    metrics.update({k: int(v) for k, v in skipped.items()})
    return metrics, records


def logged_diagnostics(engine: RolloutEngine, params, jobs: Sequence[T.Job], rng: jax.Array,
                       judge: judges_lib.Judge | None, outcome_only: bool, regen_engine: RolloutEngine) -> dict:
    """`refiner_diagnostics` of `engine`'s own refiner as the trainer logs it: `diag/*` floats, rewarded by the
    hybrid reward with `judge` (None: no search counts as useful)."""
    out, _ = refiner_diagnostics(engine, engine.refiner, params, jobs, rng, hybrid_reward_fn(judge, outcome_only),
                                 regen_engine=regen_engine)
    return {f"diag/{k}": float(v) for k, v in out.items()}
