"""Collapse sentinel: host-side watch over each RL step's scalar metrics for the usual ways search-agent RL fails.

Checks (each needs `patience` consecutive breaching steps before it fires, so one bad step never does):
  reward      `reward/mean` below `reward_ratio` x its peak baseline (the best median over any `baseline_steps`
              window so far; a run whose peak is under `min_reward_baseline` has nothing to lose and is not watched)
  entropy     `train/entropy` below `entropy_ratio` x its start baseline (median of the first `baseline_steps` steps)
  searches    `rollout/searches_per_trajectory` at or below `searches_floor` after a peak baseline of at least
              `min_searches_baseline` (an agent that learned to search stopped doing so)
  length_low  generated tokens per trajectory (`rollout/tokens_generated / rollout/trajectories`) below
  length_high `length_low_ratio` / above `length_high_ratio` x its start baseline
  skipped     `train/skipped` (a non-finite loss or gradient left the update out) on `patience` steps in a row
  repetition  `rollout/repetition_share` (see `repetition_share`, the trainer logs it) at or above
              `repetition_share`, e.g. a group answering "!!!!!!!!"

`Sentinel.update(step, metrics)` returns a `SentinelReport` naming what fired with value, baseline and threshold.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import deque

import ml_collections
import numpy as np

from searchr2_jax.config import default_sentinel_config

CHECKS = ("reward", "entropy", "searches", "length_low", "length_high", "skipped", "repetition")


@dataclasses.dataclass(frozen=True)
class Alarm:
    check: str  # one of CHECKS
    metric: str  # the metric key watched
    value: float  # this step's figure (for `skipped`: the streak length)
    baseline: float  # the baseline it is compared with (nan where the check has none)
    threshold: float  # the bound it crossed
    onset_step: int  # the first step of the breaching streak
    streak: int  # consecutive breaching steps (>= patience)


@dataclasses.dataclass(frozen=True)
class SentinelReport:
    step: int
    alarms: tuple[Alarm, ...] = ()

    @property
    def fired(self) -> bool:
        return bool(self.alarms)

    @property
    def onset_step(self) -> int | None:
        return min((a.onset_step for a in self.alarms), default=None)

    def metrics(self) -> dict:
        """`sentinel/fired` (0 or 1) and `sentinel/fired/<check>` for each check that fired."""
        out = {"sentinel/fired": float(self.fired)}
        out.update({f"sentinel/fired/{a.check}": 1.0 for a in self.alarms})
        return out

    def describe(self) -> str:
        return "; ".join(f"{a.check}: {a.metric}={a.value:.4g} (baseline {a.baseline:.4g}, threshold "
                         f"{a.threshold:.4g}, {a.streak} steps since step {a.onset_step})" for a in self.alarms)


def is_degenerate(text: str, ngram: int = 8, distinct: float = 0.2, min_chars: int = 16) -> bool:
    """True when under `distinct` of the text's character n-grams are distinct: a loop of any period shorter than
    the text repeats its n-grams ("!!!!!!", "search search search ..."), while prose keeps nearly all distinct."""
    text = text.strip()
    if len(text) < max(min_chars, ngram):
        return False
    grams = [text[i:i + ngram] for i in range(len(text) - ngram + 1)]
    return len(set(grams)) / len(grams) < distinct


def repetition_share(texts, cfg: ml_collections.ConfigDict | None = None) -> float:
    """The share of `texts` that `is_degenerate` calls degenerate (0 for none)."""
    cfg = cfg or default_sentinel_config()
    texts = list(texts)
    if not texts:
        return 0.0
    bad = sum(is_degenerate(t, cfg.repetition_ngram, cfg.repetition_distinct, cfg.repetition_min_chars)
              for t in texts)
    return bad / len(texts)


def response_repetition_share(trajs, tokenizer, cfg: ml_collections.ConfigDict) -> float:
    """`repetition_share` of the generated text (no retrieved passages) of the first `cfg.repetition_sample`
    trajectories."""
    from searchr2_jax.text.tokenizer import _decode

    return repetition_share((_decode(tokenizer, t.response_ids[np.asarray(t.loss_mask) > 0])
                             for t in trajs[:cfg.repetition_sample]), cfg)


def rollback_target(checkpoint_steps, onset_step: int, first_rl_step: int) -> int | None:
    """The checkpoint to roll back to: the latest one saved before the collapse began, or None.

    The metrics of step s come from rollouts under the state saved as step s - 1, so with the first breach at
    `onset_step` that state is already suspect: the target is the latest checkpoint <= onset_step - 2. Checkpoints
    before `first_rl_step` (the SFT phase) are not targets: the RL phase would restart from a different optimizer."""
    ok = [int(s) for s in checkpoint_steps if first_rl_step <= int(s) <= onset_step - 2]
    return max(ok, default=None)


def _finite(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


class Sentinel:
    """Feed it every RL step's host-side scalar metrics; pure Python, no device work."""

    def __init__(self, cfg: ml_collections.ConfigDict | None = None):
        self.cfg = cfg or default_sentinel_config()
        n = self.cfg.baseline_steps
        self._start: dict[str, list[float]] = {}  # the first n finite values of each figure
        self._window: dict[str, deque] = {}  # the last n finite values, for peak baselines
        self._peak: dict[str, float] = {}
        self._streak = dict.fromkeys(CHECKS, 0)
        self._onset = dict.fromkeys(CHECKS, 0)
        self._n = n

    def reset_streaks(self) -> None:
        """After a rollback: the streaks start over; the baselines (what a healthy run looked like) stay."""
        self._streak = dict.fromkeys(CHECKS, 0)

    def _start_baseline(self, key: str, value: float) -> float | None:
        seen = self._start.setdefault(key, [])
        if len(seen) < self._n:
            seen.append(value)
            return None  # still learning what the start looks like
        return statistics.median(seen)

    def _peak_baseline(self, key: str, value: float) -> float | None:
        # The baseline before this step enters it, so a collapsing step never lowers its own bar.
        peak = self._peak.get(key)
        window = self._window.setdefault(key, deque(maxlen=self._n))
        window.append(value)
        if len(window) == self._n:
            self._peak[key] = max(self._peak.get(key, -math.inf), statistics.median(window))
        return peak

    def _breaches(self, metrics: dict) -> dict[str, tuple[str, float, float, float]]:
        """check -> (metric, value, baseline, threshold) for every check breached at this step."""
        c, nan, out = self.cfg, math.nan, {}
        reward = _finite(metrics.get("reward/mean"))
        if reward is not None:
            base = self._peak_baseline("reward/mean", reward)
            if base is not None and base >= c.min_reward_baseline and reward < c.reward_ratio * base:
                out["reward"] = ("reward/mean", reward, base, c.reward_ratio * base)
        entropy = _finite(metrics.get("train/entropy"))
        if entropy is not None:
            base = self._start_baseline("train/entropy", entropy)
            if base is not None and entropy < c.entropy_ratio * base:
                out["entropy"] = ("train/entropy", entropy, base, c.entropy_ratio * base)
        searches = _finite(metrics.get("rollout/searches_per_trajectory"))
        if searches is not None:
            base = self._peak_baseline("rollout/searches_per_trajectory", searches)
            if base is not None and base >= c.min_searches_baseline and searches <= c.searches_floor:
                out["searches"] = ("rollout/searches_per_trajectory", searches, base, c.searches_floor)
        tokens, trajs = _finite(metrics.get("rollout/tokens_generated")), _finite(metrics.get("rollout/trajectories"))
        if tokens is not None and trajs:
            length, key = tokens / trajs, "rollout/tokens_per_trajectory"
            base = self._start_baseline(key, length)
            if base is not None and length < c.length_low_ratio * base:
                out["length_low"] = (key, length, base, c.length_low_ratio * base)
            if base is not None and length > c.length_high_ratio * base:
                out["length_high"] = (key, length, base, c.length_high_ratio * base)
        skipped = metrics.get("train/skipped")
        # A non-finite flag counts as a skip: something upstream broke either way.
        if skipped is not None and (_finite(skipped) is None or _finite(skipped) > 0):
            out["skipped"] = ("train/skipped", nan, nan, float(c.patience))
        share = _finite(metrics.get("rollout/repetition_share"))
        if share is not None and share >= c.repetition_share:
            out["repetition"] = ("rollout/repetition_share", share, nan, c.repetition_share)
        return out

    def update(self, step: int, metrics: dict, texts=None) -> SentinelReport:
        """One RL step. `texts`: optional generated responses; their `repetition_share` stands in for a missing
        `rollout/repetition_share` metric. A check fires once per streak, on the step its streak reaches patience."""
        if texts is not None and "rollout/repetition_share" not in metrics:
            metrics = dict(metrics, **{"rollout/repetition_share": repetition_share(texts, self.cfg)})
        breaches = self._breaches(metrics)
        alarms = []
        for check in CHECKS:
            if check not in breaches:
                self._streak[check] = 0
                continue
            if self._streak[check] == 0:
                self._onset[check] = step
            self._streak[check] += 1
            if self._streak[check] == self.cfg.patience:
                metric, value, base, threshold = breaches[check]
                if check == "skipped":
                    value = float(self._streak[check])
                alarms.append(Alarm(check=check, metric=metric, value=value, baseline=base, threshold=threshold,
                                    onset_step=self._onset[check], streak=self._streak[check]))
        return SentinelReport(step=step, alarms=tuple(alarms))
