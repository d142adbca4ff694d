"""The learning experiment end to end at toy sizes (`--quick`): its outputs, and resuming an interrupted arm."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from searchr2_jax import experiment as X
from searchr2_jax import experiment_report

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_a_shipped_warm_start_must_match_the_settings(tmp_path):
    sys.path.insert(0, ROOT)
    from configs.learning import get_config
    from searchr2_jax.config import ConfigError

    c = get_config("quick=1")
    key = X.warm_start_key(c)
    with pytest.raises(ConfigError, match="warm_start.json"):
        X.shipped_warm_start(str(tmp_path), key)
    (tmp_path / "hf").mkdir()
    (tmp_path / "warm_start.json").write_text(json.dumps({"key": "0123456789ab", "wall_s": 1.0}))
    with pytest.raises(ConfigError, match="0123456789ab"):
        X.shipped_warm_start(str(tmp_path), key)
    (tmp_path / "warm_start.json").write_text(json.dumps({"key": key, "wall_s": 1.0}))
    c.experiment.warm_start = str(tmp_path)
    assert X.build_warm_start(c, str(tmp_path / "out")) == (str(tmp_path), 0.0)
    assert not (tmp_path / "out").exists()  # nothing trained


def test_goals_are_computed_from_the_figures():
    s = {"warm_start_em": 0.2, "search_r1_em": 0.35, "search_r2_em": 0.36, "direct_em": 0.1,
         "search_r1_em_by_hops": {"1": 0.6, "2": 0.3, "3": 0.2}, "rag_em_by_hops": {"1": 0.5, "2": 0.1, "3": 0.0}}
    g = experiment_report.goals(s)
    assert g["rl_works"]["met"] and g["search_beats_direct_3x"]["met"] and g["search_beats_rag_multihop"]["met"]
    assert not g["search_r2_vs_r1_1p10"]["met"] and g["search_r2_vs_r1_1p10"]["target"] == pytest.approx(0.385)
    assert "search_r2_above_r1_beyond_interval" not in g  # no interval, no verdict
    g = experiment_report.goals(dict(s, search_r2_minus_r1_ci95=[-0.01, 0.03]))
    assert not g["search_r2_above_r1_beyond_interval"]["met"]
    assert experiment_report.goals(dict(s, search_r2_minus_r1_ci95=[0.01, 0.03]))[
        "search_r2_above_r1_beyond_interval"]["met"]


def test_arm_configs_share_the_warm_start_and_differ_only_in_rl():
    sys.path.insert(0, ROOT)
    from configs.learning import get_config

    c = get_config("quick=1")
    r1, r2 = (X.arm_config(c, arm, 1, "/w") for arm in ("search_r1", "search_r2"))
    assert r1.model.hf_path == r2.model.hf_path == "/w/hf" and r1.sft.steps == r2.sft.steps == 0
    assert not r1.refiner.enabled and r2.refiner.enabled and r2.rl.train_meta_actions and r1.reward.outcome_only
    assert X.arm_config(c, "ppo", 0, "/w").rl.algo == "ppo"
    with pytest.raises(ValueError, match="experiment.arms"):
        X.arm_config(c, "nope", 0, "/w")
    c2 = get_config("quick=1")
    c2.train.steps = 99  # RL settings do not change the warm start
    assert X.warm_start_key(c2) == X.warm_start_key(c)
    c2.sft.steps += 1
    assert X.warm_start_key(c2) != X.warm_start_key(c)


def _run(cmd):
    # One CPU device, as a user's run has (the test session fakes 8 for the sharding tests).
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_quick_experiment_writes_its_outputs_and_resumes_an_interrupted_arm(tmp_path):
    out = tmp_path / "exp"
    cmd = [sys.executable, os.path.join(ROOT, "launch", "experiment.py"), f"--out={out}", "--quick"]
    _run(cmd)
    s = json.loads((out / "summary.json").read_text())
    for name in ("warm_start", "majority", "direct", "rag", "search_r1", "search_r2"):
        assert 0.0 <= s[f"{name}_em"] <= 1.0
        lo, hi = s[f"{name}_em_ci95"]
        assert lo <= s[f"{name}_em"] <= hi
        assert set(s[f"{name}_em_by_hops"]) <= {"1", "2", "3"} and s[f"{name}_wall_s"] >= 0
    for arm in ("search_r1", "search_r2"):
        assert len(s[f"{arm}_em_seeds"]) == 2 and s[f"{arm}_rl_steps"] == 2
        assert s[f"{arm}_questions"] == 12
    assert {"J_base", "A_prec", "V_inter", "S_trim", "G_bar", "dJ_measured"} <= {
        k.split("/", 1)[1] for k in s["search_r2_diagnostics"]}
    assert "search_r1_diagnostics" not in s  # no refiner in that arm's rollouts
    assert 0 <= s["refiner_precision"] <= 1 and 0 <= s["refiner_recall"] <= 1
    assert s["headroom_dev_questions"] == 8 and s["headroom_group_size"] == 2
    for k in ("greedy_em", "sampled_em", "pass_at_group", "sampled_em_on_failures", "sampled_em_on_successes"):
        assert 0.0 <= s[f"headroom_{k}"] <= 1.0
    assert s["headroom_sampled_em_on_failures"] <= s["headroom_pass_at_group"]
    assert set(s["goals"]) == {"rl_works", "search_beats_direct_3x", "search_beats_rag_multihop",
                               "search_r2_vs_r1_1p10", "search_r1_gain_beyond_interval",
                               "search_r2_gain_beyond_interval", "search_r2_above_r1_beyond_interval"}
    lo, hi = s["search_r2_minus_r1_ci95"]  # over questions and seeds, not the warm start
    assert lo <= s["search_r2_minus_r1"] <= hi
    assert s["search_r2_minus_r1"] == pytest.approx(s["search_r2_em"] - s["search_r1_em"])
    for arm in ("search_r1", "search_r2"):  # the gain over the warm start, on the same questions
        lo, hi = s[f"{arm}_gain_ci95"]
        assert lo <= s[f"{arm}_gain"] <= hi
        assert s[f"{arm}_gain"] == pytest.approx(s[f"{arm}_em"] - s["warm_start_em"])
    assert s["settings"]["seeds"] == [0, 1] and s["deviations"]
    assert "| search_r2 |" in (out / "table.md").read_text()
    assert (out / "curves.png").stat().st_size > 10_000

    # Interrupt the last arm after its first RL step: drop its result and its final checkpoint.
    arm = out / "arms" / "search_r2" / "seed1"
    before = json.loads((arm / "test.json").read_text())["records"]
    untouched = {p: p.stat().st_mtime_ns for p in (out / "baselines.json", out / "headroom.json",
                                                   out / "arms/search_r1/seed0/test.json")}
    (arm / "test.json").unlink()
    shutil.rmtree(arm / "checkpoints" / "2")
    assert (arm / "checkpoints" / "1").exists()
    _run(cmd)
    assert json.loads((arm / "test.json").read_text())["records"] == before  # resumed exactly
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched  # finished units are not redone
