"""PNG plots of runs from metrics.jsonl (searchr2_jax/plots.py, launch/plot.py)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from searchr2_jax import plots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_dir(path, variant, steps, seed):
    os.makedirs(path)
    rng = np.random.default_rng(seed)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for s in range(1, steps + 1):
            f.write(json.dumps({"step": s, "reward/mean": float(rng.random()), "train/kl": 0.001 * s,
                                "rollout/tokens_generated": 400.0, "rollout/trajectories": 4.0}) + "\n")
            if s % 5 == 0:
                f.write(json.dumps({"step": s, "eval/em": 0.1 * s / 5}) + "\n")
    if variant:
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump({"variant": variant, "seed": seed}, f)
    return str(path)


def test_series_reads_a_key_and_derives_response_length(tmp_path):
    rows = [{"step": 1, "a": 2.0}, {"step": 2}, {"step": 3, "a": 4.0, "rollout/tokens_generated": 30.0,
                                                   "rollout/trajectories": 3.0}]
    x, y = plots.series(rows, "a")
    np.testing.assert_array_equal(x, [1, 3])
    np.testing.assert_array_equal(y, [2, 4])
    x, y = plots.series(rows, "response_tokens")
    np.testing.assert_array_equal(x, [3])
    np.testing.assert_array_equal(y, [10])
    assert plots.series(rows, "missing")[0].size == 0


def test_plot_workdirs_draws_the_panels_that_have_data_and_labels_runs_by_variant(tmp_path):
    a = _run_dir(tmp_path / "a", "search_r1", 10, 0)
    b = _run_dir(tmp_path / "b", "search_r2", 8, 1)
    assert plots.run_label(a) == "search_r1: a"
    out = str(tmp_path / "runs.png")
    drawn = plots.plot_workdirs([a, b], out)
    assert drawn == ["reward", "eval EM (greedy)", "generated tokens per trajectory", "KL to reference"]
    assert os.path.getsize(out) > 10_000


def test_same_named_runs_get_distinct_labels_and_a_missing_run_is_named(tmp_path):
    a = _run_dir(tmp_path / "r1" / "seed0", None, 4, 0)
    b = _run_dir(tmp_path / "r2" / "seed0", None, 4, 1)
    assert plots.plot_workdirs([a, b], str(tmp_path / "x.png"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        plots.plot_workdirs([str(tmp_path / "nowhere")], str(tmp_path / "y.png"))


def test_groups_average_their_runs_over_common_steps(tmp_path):
    runs = [[{"step": s, "v": float(s + k)} for s in range(1, 6 + k)] for k in range(3)]
    drawn = plots.plot_groups({"g": runs}, [("v", "value"), ("w", "nothing")], str(tmp_path / "g.png"))
    assert drawn == ["value"]


def test_launch_plot_writes_the_png(tmp_path):
    a = _run_dir(tmp_path / "a", "search_r1", 6, 0)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "plot.py"), f"--workdir={a}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert os.path.getsize(os.path.join(a, "plots.png")) > 10_000 and "4 panels" in done.stdout
