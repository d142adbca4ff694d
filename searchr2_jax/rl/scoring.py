"""One step's trajectories -> their hybrid rewards (paper Eq. 1): EM of the answer, the judge's count of useful
searches, R = EM x (1 + useful / M), with the step's reward metrics."""

from __future__ import annotations

from typing import Sequence

import ml_collections
import numpy as np

from searchr2_jax.rl import judges, rewards
from searchr2_jax.rollout.types import Trajectory


def score_rollouts(trajs: Sequence[Trajectory], judge: judges.Judge,
                   reward_cfg: ml_collections.ConfigDict) -> tuple[np.ndarray, rewards.RewardTerms, dict]:
    """(R [N] float32, the terms behind it, `reward/*` metrics and the judge's stats). `reward_cfg`: the config's
    `reward` section (`outcome_only`: R = EM; `judge="none"`: no search counts as useful)."""
    em, f1 = rewards.score_answers([t.answer for t in trajs], [t.job.golden_answers for t in trajs])
    useful = np.zeros(len(trajs), np.float32)
    if not reward_cfg.outcome_only and reward_cfg.judge != "none":
        # One batched call for the whole step (the LLM judge decodes every prompt in one engine run).
        useful = np.asarray(judge.count_many([judges.JudgeItem(
            t.job.question, t.job.golden_answers, [turn.passages for turn in t.searches],
            t.job.metadata.get("gold_passage_ids")) for t in trajs]), np.float32)
    searches = np.asarray([len(t.searches) for t in trajs], np.float32)
    reward = np.asarray([rewards.hybrid_reward(e, u, m, outcome_only=reward_cfg.outcome_only)
                         for e, u, m in zip(em, useful, searches)], np.float32)
    density = np.where(searches > 0, useful / np.maximum(searches, 1), 0.0)
    metrics = {"reward/mean": reward.mean(), "reward/em": em.mean(), "reward/f1": f1.mean(),
               "reward/density": density.mean(), **judge.stats()}
    return reward, rewards.RewardTerms(em, useful, reward), metrics
