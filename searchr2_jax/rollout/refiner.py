"""The Meta-Refiner (paper Algorithm 1, §2.3–2.4): judge a finished trajectory, and say where to cut it.

One prompt serves as discriminator and trimmer: the model scores the completions "0".."T" after the refiner prompt,
teacher-forced, in one batched jitted pass. The prompt (`refiner.prompt`) is either

  followup  Table 12's instruction appended to the Actor's own conversation (the default). With shared weights the
            rollout scores it in the trajectory's slot: only the ~80 follow-up tokens are encoded, the trajectory is
            read from the Actor's KV cache (rollout.py);
  table12   the paper's standalone layout (ASSISTANT_STEP_k / TOOL lines), re-encoding the whole trajectory: faithful
            to the letter, and on a CPU about as costly as the rollout itself.

With j* = argmax_{j>=1} log p(j), the trajectory is revised at step j* iff log p(j*) - log p(0) >= margin
(default 0); otherwise it is accepted (choice 0).
The cut keeps assistant turns 1..j*-1 with their tool outputs; the Actor regenerates the rest (see rollout.py).

The refiner uses the Actor's parameters unless it is given its own (`params`/`cfg` of another checkpoint).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from searchr2_jax.models import decoder
from searchr2_jax.models.config import DecoderConfig
from searchr2_jax.rollout.types import MetaAction, Trajectory, Turn, bucket
from searchr2_jax.text import protocol
from searchr2_jax.config import default_refiner_config

MAX_REVISIONS = 4  # the paper's N_max range (0..4); each revision of a job samples from a stream of its own


# (follow-up ids per trajectory, candidates' first tokens [C]) -> next-token log-probs [n, C] read in the slots
SlotScorer = Callable[[list[list[int]], np.ndarray], np.ndarray]


@dataclasses.dataclass
class Decision:
    choice: int  # 0 = accept, j >= 1 = earliest flawed step
    meta: MetaAction


def decide(scores: np.ndarray, num_steps: int, margin: float) -> int:
    """The decision rule on one row of candidate log-probs [T+1]: j* = argmax_{j>=1}, revise iff gap >= margin."""
    if num_steps < 1:
        return 0
    j = 1 + int(np.argmax(scores[1:num_steps + 1]))
    return j if scores[j] - scores[0] >= margin else 0


def steps_of(traj_text_turns: Sequence[tuple[str, str]]) -> list[protocol.Step]:
    return [protocol.Step(assistant=a, tool=t) for a, t in traj_text_turns]


@functools.partial(jax.jit, static_argnums=(0, 6))
def _candidate_logprobs(cfg: DecoderConfig, params, tokens, mask, targets, target_mask, k: int):
    """log p(target) at each row's first k `target_mask` positions, in order [N, k] (0 past a row's targets).
    Position i of targets/target_mask is the token predicted from position i. Only those positions get logits:
    n x L x V logits would not fit."""
    hidden, _ = decoder.forward_hidden(cfg, params, tokens, mask=mask)
    pos = jnp.argsort(~target_mask, axis=1, stable=True)[:, :k]
    h = jnp.take_along_axis(hidden, pos[..., None], axis=1)
    logp = jax.nn.log_softmax(decoder.lm_logits(cfg, params, h), axis=-1)
    tok_lp = jnp.take_along_axis(logp, jnp.take_along_axis(targets, pos, axis=1)[..., None], axis=-1)[..., 0]
    return jnp.where(jnp.take_along_axis(target_mask, pos, axis=1), tok_lp, 0.0)


@functools.partial(jax.jit, static_argnums=0)
def _prompt_end_logprobs(cfg: DecoderConfig, params, tokens, mask, candidates):
    """log p(candidate | prompt) for single-token candidates [C]: one forward per prompt, logits at its end."""
    hidden, _ = decoder.forward_hidden(cfg, params, tokens, mask=mask)
    last = jnp.maximum(mask.sum(axis=1) - 1, 0)
    h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    return jax.nn.log_softmax(decoder.lm_logits(cfg, params, h), axis=-1)[:, candidates]


class MetaRefiner:
    """Builds refiner prompts from finished trajectories, scores their candidates (in the Actor's slots or in one
    batched pass) and decides."""

    def __init__(self, cfg: DecoderConfig, tokenizer, config: ml_collections.ConfigDict | None = None,
                 max_turns: int = 4):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.config = config or default_refiner_config()
        self.max_turns = max_turns
        if not 0 <= self.config.max_revisions <= MAX_REVISIONS:
            raise ValueError(f"refiner.max_revisions={self.config.max_revisions}: N_max must be 0..{MAX_REVISIONS}")
        if self.config.prompt not in ("followup", "table12"):
            raise ValueError(f"refiner.prompt={self.config.prompt!r}: expected 'followup' or 'table12'")
        cands = protocol.refiner_candidates(max_turns, chat=self.config.chat)
        self.candidate_ids = [self._encode(c) for c in cands]
        self.max_candidate_len = max(len(c) for c in self.candidate_ids)
        self._followups = {}

    @property
    def single_token_ids(self) -> np.ndarray | None:
        """The candidates' ids [C] when every integer is one token (the usual case: each is read from one next-token
        distribution), else None."""
        return np.asarray([c[0] for c in self.candidate_ids], np.int32) if self.max_candidate_len == 1 else None

    @property
    def followup(self) -> bool:
        return self.config.prompt == "followup"

    def followup_ids(self, num_steps: int) -> list[int]:
        """The follow-up prompt's tokens for a trajectory of `num_steps` turns (appended after its response)."""
        if num_steps not in self._followups:
            text = protocol.build_refiner_followup(num_steps, tokenizer=self.tokenizer, chat=self.config.chat)
            self._followups[num_steps] = self._encode(text)
        return self._followups[num_steps]

    @property
    def max_followup_len(self) -> int:
        """Cache room the follow-up needs after a response (0 for table12 prompts)."""
        return max(len(self.followup_ids(t)) for t in range(1, self.max_turns + 1)) if self.followup else 0

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def prompt_ids(self, traj: Trajectory, step_texts: list[tuple[str, str]]) -> list[int]:
        """The refiner prompt of a finished trajectory (`step_texts`: (assistant, tool) text per turn)."""
        if self.followup:
            ids = list(traj.job.prompt_ids) + list(map(int, traj.response_ids)) + self.followup_ids(len(step_texts))
        else:
            text = protocol.build_refiner_prompt(traj.job.question, steps_of(step_texts), max_steps=len(step_texts),
                                                 tokenizer=self.tokenizer, chat=self.config.chat)
            ids = self._encode(text)
        limit = self.config.max_prompt_tokens - self.max_candidate_len
        # Keep the instruction head and the end (latest steps and the question footer). A follow-up is never cut:
        # it is scored in the Actor's cache, which always has room for it.
        if len(ids) > limit and not self.followup:
            head = limit // 4
            ids = ids[:head] + ids[len(ids) - (limit - head):]
        return ids

    @staticmethod
    def own_steps(logprobs: np.ndarray, num_steps: Sequence[int]) -> np.ndarray:
        """Candidate log-probs [n, max_turns+1] with -inf beyond each row's own T (those integers are not steps)."""
        out = np.full(logprobs.shape, -np.inf, np.float32)
        for i, t in enumerate(num_steps):
            out[i, :t + 1] = logprobs[i, :t + 1]
        return out

    def score(self, params, prompts: list[list[int]], num_steps: list[int], batch: int | None = None,
              per_token: bool = False):
        """Log-probs [n, max_turns+1] of candidates "0".."T" after each prompt (-inf beyond a row's own T).
        `batch`: at most this many prompts per forward pass (a pass holds activations for all of its rows).
        `per_token`: also return each candidate's log-prob token by token [n, max_turns+1, max_candidate_len]
        (0-padded; the scores are their sums), which the trainer's per-token PPO ratio needs when a tokenizer
        splits an integer."""
        if not prompts:
            empty = np.zeros((0, self.max_turns + 1), np.float32)
            return (empty, empty[..., None].repeat(self.max_candidate_len, -1)) if per_token else empty
        if batch is not None and len(prompts) > batch:
            parts = [self.score(params, prompts[i:i + batch], num_steps[i:i + batch], per_token=per_token)
                     for i in range(0, len(prompts), batch)]
            if per_token:
                return tuple(np.concatenate(p) for p in zip(*parts))
            return np.concatenate(parts)
        n, T1 = len(prompts), self.max_turns + 1
        out = np.full((n, T1), -np.inf, np.float32)
        if self.single_token_ids is not None:  # one row per prompt
            L, N = bucket(max(map(len, prompts))), bucket(n, minimum=1)
            tokens, mask = np.zeros((N, L), np.int32), np.zeros((N, L), bool)
            for r, p in enumerate(prompts):
                tokens[r, :len(p)], mask[r, :len(p)] = p, True
            lp = _prompt_end_logprobs(self.cfg, params, tokens, mask, self.single_token_ids)
            out = self.own_steps(np.asarray(lp)[:n], num_steps)
            return (out, out[..., None]) if per_token else out
        rows = [(i, j) for i, t in enumerate(num_steps) for j in range(t + 1)]
        L = bucket(max(len(prompts[i]) + len(self.candidate_ids[j]) for i, j in rows))
        N = bucket(len(rows), minimum=1)
        tokens, mask = np.zeros((N, L), np.int32), np.zeros((N, L), bool)
        targets, tmask = np.zeros((N, L), np.int32), np.zeros((N, L), bool)
        for r, (i, j) in enumerate(rows):
            p, c = prompts[i], self.candidate_ids[j]
            tokens[r, :len(p) + len(c)], mask[r, :len(p) + len(c)] = p + c, True
            targets[r, len(p) - 1:len(p) + len(c) - 1], tmask[r, len(p) - 1:len(p) + len(c) - 1] = c, True
        k = bucket(self.max_candidate_len, minimum=1)
        lp = np.asarray(_candidate_logprobs(self.cfg, params, tokens, mask, targets, tmask, k))
        tok = np.zeros((n, T1, self.max_candidate_len), np.float32)
        for r, (i, j) in enumerate(rows):
            out[i, j] = lp[r].sum()
            tok[i, j] = lp[r, :self.max_candidate_len]
        return (out, tok) if per_token else out

    def judge(self, params, trajectories: list[Trajectory], step_texts: list[list[tuple[str, str]]],
              rngs: Sequence[np.random.Generator], in_slots: SlotScorer | None = None
              ) -> tuple[list[Decision], float]:
        """Decisions for finished trajectories (`step_texts`: per trajectory, (assistant, tool) text per turn), and
        the seconds their scoring took. `rngs`, one per trajectory, keyed per job and revision, are what a
        stochastic decision rule draws from (see `choose`).

        `in_slots`, given when the trajectories sit in the Actor's slots and `params` are the Actor's: a follow-up
        prompt whose candidates are single tokens is scored there, the trajectory read from the KV cache and only
        the follow-up encoded. Otherwise every prompt is encoded whole, in one batched pass (`score`)."""
        prompts = [self.prompt_ids(t, s) for t, s in zip(trajectories, step_texts)]
        num_steps = [len(s) for s in step_texts]
        t0 = time.perf_counter()
        if in_slots is not None and self.followup and self.single_token_ids is not None:
            scores = self.own_steps(in_slots([self.followup_ids(t) for t in num_steps], self.single_token_ids),
                                    num_steps)
            token_scores = scores[..., None]
        else:
            scores, token_scores = self.score(params, prompts, num_steps, batch=self.config.score_batch or None,
                                              per_token=True)
        score_s = time.perf_counter() - t0
        return self.decisions(prompts, num_steps, scores, rngs, token_scores), score_s

    def choose(self, scores: np.ndarray, num_steps: int, rng: np.random.Generator) -> tuple[int, bool]:
        """(choice, forced) for one row of candidate log-probs [max_turns+1]: the margin rule (`decide`), which draws
        nothing. A benchmark's subclass may force revisions instead (benchmarks/engines.py)."""
        del rng
        return decide(scores, num_steps, self.config.margin), False

    def decisions(self, prompts: list[list[int]], num_steps: list[int], scores: np.ndarray,
                  rngs: Sequence[np.random.Generator], token_scores: np.ndarray) -> list[Decision]:
        """`choose` on candidate scores [n, max_turns+1], as Decisions that record the meta-action.
        `token_scores` [n, max_turns+1, max_candidate_len]: the scores token by token (`score(per_token=True)`)."""
        out = []
        for i, (p, t, rng) in enumerate(zip(prompts, num_steps, rngs)):
            choice, forced = self.choose(scores[i], t, rng)
            action = self.candidate_ids[choice]
            meta = MetaAction(prompt_ids=p, action_ids=action, choice=choice, logprob=float(scores[i, choice]),
                              scores=scores[i, :t + 1].tolist(), forced=forced,
                              action_logprobs=token_scores[i, choice, :len(action)].tolist())
            out.append(Decision(choice, meta))
        return out


def turn_texts(tokenizer, response_ids: np.ndarray, turns: Sequence[Turn]) -> list[tuple[str, str]]:
    """(assistant text, tool text) per turn, decoded from the response ids the rollout recorded."""
    dec = lambda a, b: tokenizer.decode(list(response_ids[a:b]), skip_special_tokens=False)
    return [(dec(t.start, t.end), dec(t.end, t.obs_end)) for t in turns]
