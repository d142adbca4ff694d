"""The rollout variants only the benchmarks run.

  ReprefillEngine  the baseline chunk appends are measured against: before a slot's observation is appended, the slot
                   re-encodes its whole conversation (prompt and response so far) from an empty cache, as an engine
                   without cache appends (Search-R1's) does at every turn.
  ForcedRefiner    an untrained refiner's own decisions would set the refiner's overhead; this one revises a fixed
                   share of trajectories at a uniformly drawn step (the paper observed about 30%). It still scores
                   every candidate, so the refiner's cost is real, and records its revisions as forced.
"""

from __future__ import annotations

import jax
import numpy as np

from searchr2_jax.rollout.records import Append, Run
from searchr2_jax.rollout.refiner import MetaRefiner
from searchr2_jax.rollout.rollout import RolloutEngine


class ReprefillEngine(RolloutEngine):
    def _append(self, ctx: Run, state, items: list[Append]):
        obs = [it.slot for it in items if it.generated and not it.reset_cache]
        if obs:
            tokens, length = jax.device_get((state.tokens, state.length))
            # the whole conversation, the shared prompt prefix included, as Search-R1 re-encodes it
            whole = [Append(slot=b, ids=list(ctx.slots[b].job.prompt_ids) + list(tokens[b, :length[b]]),
                            reset_cache=True) for b in obs]
            state = super()._append(ctx, state, whole)
        return super()._append(ctx, state, items)


class ForcedRefiner(MetaRefiner):
    def __init__(self, refiner: MetaRefiner, rate: float):
        """`refiner`'s prompts and scoring, revising a `rate` share of trajectories at a uniformly drawn step."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"ForcedRefiner: rate={rate} must be in [0, 1]")
        super().__init__(refiner.cfg, refiner.tokenizer, refiner.config, refiner.max_turns)
        self.rate = rate

    def choose(self, scores: np.ndarray, num_steps: int, rng: np.random.Generator) -> tuple[int, bool]:
        if num_steps >= 1 and rng.random() < self.rate:
            return int(rng.integers(1, num_steps + 1)), True
        return 0, True
