"""The collapse sentinel (rl/sentinel.py) on synthetic metric series: quiet on a healthy noisy run, and each
injected collapse fires its own check with the figures, after `patience` consecutive steps only."""

import math

import numpy as np
import pytest

from searchr2_jax.config import default_sentinel_config
from searchr2_jax.rl import sentinel as S

PROSE = ["<search> capital of the river empire </search> the answer is the old harbor city by the canal",
         "I need the composer of the symphony. <search> symphony composer ancient city </search> <answer> Vela"]


def healthy(step: int, rng) -> dict:
    """A learning run: reward climbing to ~0.5, entropy decaying slowly, ~1.5 searches, noisy lengths."""
    return {"reward/mean": min(0.5, 0.1 + 0.01 * step) + rng.normal(0, 0.05),
            "train/entropy": 1.2 * math.exp(-step / 400) + rng.normal(0, 0.05),
            "rollout/searches_per_trajectory": 1.5 + rng.normal(0, 0.2),
            "rollout/tokens_generated": 40 * (200 + rng.normal(0, 30)), "rollout/trajectories": 40,
            "train/skipped": float(rng.random() < 0.03), "rollout/repetition_share": 0.0}


def run(series, texts=None, cfg=None):
    sentinel = S.Sentinel(cfg)
    return [sentinel.update(step, m, texts=None if texts is None else texts[step]) for step, m in enumerate(series)]


def series_with(collapse, start=60, n=80, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for step in range(n):
        m = healthy(step, rng)
        if step >= start:
            collapse(m)
        out.append(m)
    return out


def fired(reports):
    return [(r.step, a) for r in reports for a in r.alarms]


@pytest.mark.parametrize("seed", range(5))
def test_quiet_on_a_healthy_noisy_run(seed):
    reports = run(series_with(lambda m: None, n=300, seed=seed))
    assert fired(reports) == []
    assert all(r.metrics() == {"sentinel/fired": 0.0} for r in reports)


@pytest.mark.parametrize("check,collapse", [
    ("reward", lambda m: m.update({"reward/mean": 0.0})),
    ("entropy", lambda m: m.update({"train/entropy": 0.01})),
    ("searches", lambda m: m.update({"rollout/searches_per_trajectory": 0.0})),
    ("length_low", lambda m: m.update({"rollout/tokens_generated": 40 * 5})),
    ("length_high", lambda m: m.update({"rollout/tokens_generated": 40 * 2000})),
    ("skipped", lambda m: m.update({"train/skipped": 1.0})),
    ("repetition", lambda m: m.update({"rollout/repetition_share": 0.9})),
])
def test_each_injected_collapse_fires_its_check_with_figures(check, collapse):
    reports = run(series_with(collapse))
    alarms = fired(reports)
    assert [a.check for _, a in alarms] == [check]
    step, alarm = alarms[0]
    patience = default_sentinel_config().patience
    assert step == 60 + patience - 1 and alarm.onset_step == 60 and alarm.streak == patience
    assert reports[step].metrics() == {"sentinel/fired": 1.0, f"sentinel/fired/{check}": 1.0}
    assert reports[step].onset_step == 60
    if check == "skipped":
        assert alarm.value == patience
    elif check in ("length_high", "repetition"):
        assert alarm.value >= alarm.threshold
    else:
        assert alarm.value <= alarm.threshold
    if check in ("reward", "entropy", "searches", "length_low", "length_high"):
        assert alarm.baseline > 0 and alarm.threshold > 0
    if check == "reward":
        assert alarm.baseline == pytest.approx(0.5, abs=0.1) and alarm.value == 0.0
    assert check in reports[step].describe()


def test_a_bad_step_or_a_short_streak_does_not_fire():
    patience = default_sentinel_config().patience

    def blips(m):
        m.update({"reward/mean": 0.0, "train/skipped": 1.0, "rollout/searches_per_trajectory": 0.0})

    for length in range(1, patience):
        rng = np.random.default_rng(1)
        series = [healthy(step, rng) for step in range(120)]
        for start in (50, 70, 90):
            for step in range(start, start + length):
                blips(series[step])
        assert fired(run(series)) == [], length


def test_reward_never_learned_is_not_a_collapse():
    rng = np.random.default_rng(2)
    series = [dict(healthy(step, rng), **{"reward/mean": 0.0}) for step in range(100)]
    assert fired(run(series)) == []


def test_repetition_from_texts():
    degenerate = ["!" * 200, "search search search search search search search search", "!!!!!!!!!!!!!!!!!!!!"]
    assert all(S.is_degenerate(t) for t in degenerate)
    assert not any(S.is_degenerate(t) for t in PROSE + ["!!!!"])  # too short to judge
    assert S.repetition_share(PROSE + degenerate[:2]) == pytest.approx(0.5)
    series = series_with(lambda m: None)
    for m in series:
        del m["rollout/repetition_share"]
    texts = [PROSE * 8 if step < 60 else ["!" * 300] * 12 + PROSE * 2 for step in range(len(series))]
    alarms = fired(run(series, texts=texts))
    assert [a.check for _, a in alarms] == ["repetition"] and alarms[0][1].value == pytest.approx(12 / 16)


def test_fires_once_per_streak_and_again_after_recovery():
    def collapse(m):
        m.update({"train/skipped": 1.0})

    series = series_with(collapse, start=40, n=60)
    for m in series[50:53]:
        m["train/skipped"] = 0.0
    assert [(s, a.onset_step) for s, a in fired(run(series))] == [(42, 40), (55, 53)]


def test_rollback_target_is_the_last_checkpoint_before_the_onset():
    # The state saved as step 29 produced step 30's rollouts: with the onset at 30, 28 is the last trusted one.
    assert S.rollback_target([10, 20, 28, 29, 30, 40], onset_step=30, first_rl_step=0) == 28
    assert S.rollback_target([10, 20, 30], onset_step=30, first_rl_step=0) == 20
    assert S.rollback_target([10, 20], onset_step=30, first_rl_step=15) == 20
    assert S.rollback_target([10], onset_step=30, first_rl_step=15) is None  # only an SFT checkpoint
    assert S.rollback_target([], onset_step=30, first_rl_step=0) is None


@pytest.mark.slow
def test_trainer_rolls_back_before_the_onset_with_a_lower_learning_rate(tmp_path, monkeypatch):
    import os

    import jax

    from searchr2_jax import checkpoint as ckpt_lib
    from searchr2_jax.jsonl import read_jsonl
    from searchr2_jax.trainer import Trainer
    from tests.test_trainer import tiny_config

    c = tiny_config("sft_steps=0,steps=5")
    c.train.update(dict(rollback_on_collapse=True, rollback_lr_factor=0.5, max_rollbacks=1))
    real_update = S.Sentinel.update

    def update(self, step, metrics, texts=None):  # a collapse seen first at step 4 (the state of checkpoint 3)
        real_update(self, step, metrics, texts)
        if step != 4:
            return S.SentinelReport(step=step)
        return S.SentinelReport(step=step, alarms=(S.Alarm(check="reward", metric="reward/mean", value=0.0,
                                                           baseline=0.5, threshold=0.15, onset_step=4, streak=3),))

    monkeypatch.setattr(S.Sentinel, "update", update)
    trainer = Trainer(c, str(tmp_path), devices=jax.devices()[:1])
    trainer.run()
    rows = list(read_jsonl(os.path.join(str(tmp_path), "metrics.jsonl")))
    steps = [r["step"] for r in rows if "train/loss" in r]
    assert steps == [1, 2, 3, 4, 3, 4, 5]
    fired = [r for r in rows if r.get("sentinel/fired") == 1.0]
    assert len(fired) == 2 and fired[0]["sentinel/rollback_to"] == 2 and fired[0]["sentinel/lr_scale"] == 0.5
    assert "sentinel/rollback_to" not in fired[1]  # max_rollbacks=1: the second alarm only warns
    assert trainer.lr_scale == 0.5 and trainer.rollbacks == 1
    ckpt = ckpt_lib.Checkpointer(os.path.join(str(tmp_path), "checkpoints"))
    assert ckpt.restore(trainer.state, 5)[1]["lr_scale"] == 0.5  # a resumed run keeps the lower rate
    # The collapsed steps' checkpoints were moved aside, so the redone steps were saved in their place.
    assert ckpt.restore(trainer.state, 3)[1]["lr_scale"] == 0.5
    assert os.listdir(os.path.join(str(tmp_path), "checkpoints_discarded")) == ["3"]  # step 4 was never saved
    ckpt.close()
