"""The reliability suite (benchmarks/reliability.py) at a small size: its figures, and that they can show failure."""

import pytest

from searchr2_jax.benchmarks import reliability
from searchr2_jax.models import hf_io
from searchr2_jax.rollout import rollout as rollout_lib
from searchr2_jax.rollout import types as T


@pytest.mark.slow
def test_quick_suite_finds_no_crash_no_wrong_answer_and_every_bad_checkpoint_refused(monkeypatch):
    # The kill figures are checked by their own runs (test_checkpoint_kill.py and the retrieval-kill test below);
    # here only that the suite runs them.
    calls = []
    monkeypatch.setattr(reliability.checkpoint_kill, "checkpoint_kill_figures",
                        lambda quick: calls.append(quick) or {"checkpoint_kill_points_tried": 3})
    monkeypatch.setattr(reliability, "retrieval_kill_figures",
                        lambda: calls.append("retrieval") or {"retrieval_kill_rows_lost": 0})
    figures = reliability.run(quick=True)
    assert calls == ["retrieval", True] and figures["checkpoint_kill_points_tried"] == 3
    assert {"server_fuzz_requests", "server_crashes", "server_wrong_answers", "fuzz_cases", "fuzz_crashes",
            "fuzz_hangs", "fuzz_violations", "fuzz_rows_lost", "fuzz_hostile_kinds", "retrieval_kill_rows_lost",
            "loader_bad_checkpoints_tried", "loader_unconsumed_tensor_errors", "sentinel_detects_injected_collapse",
            "sentinel_false_alarms", "wall_s"} <= set(figures)
    assert figures["server_fuzz_requests"] == reliability.QUICK_FUZZ_REQUESTS
    assert figures["server_crashes"] == 0 and figures["server_wrong_answers"] == 0
    assert figures["fuzz_cases"] == reliability.QUICK_FUZZ_CASES
    assert figures["fuzz_crashes"] == figures["fuzz_hangs"] == figures["fuzz_violations"] == 0
    assert figures["fuzz_rows_lost"] == figures["retrieval_kill_rows_lost"] == 0
    assert figures["loader_bad_checkpoints_tried"] >= 8
    assert figures["loader_unconsumed_tensor_errors"] == figures["loader_bad_checkpoints_tried"]
    assert figures["sentinel_detects_injected_collapse"] == 1 and figures["sentinel_false_alarms"] == 0
    assert figures["wall_s"] > 0


def test_sentinel_figures_count_a_sentinel_that_never_fires(monkeypatch):
    from searchr2_jax.rl import sentinel as sentinel_lib

    monkeypatch.setattr(sentinel_lib.Sentinel, "_breaches", lambda self, metrics: {})
    assert reliability.sentinel_figures(seeds=1)["sentinel_detects_injected_collapse"] == 0


def test_loader_figures_count_a_loader_that_reads_anything(monkeypatch):
    monkeypatch.setattr(hf_io, "_check_all_consumed", lambda src, cfg: None)
    figures = reliability.loader_figures()
    assert figures["loader_unconsumed_tensor_errors"] == 0 and figures["loader_bad_checkpoints_tried"] >= 8


@pytest.mark.slow
def test_a_server_killed_mid_rollout_fails_its_round_only_and_lost_rows_would_be_counted(monkeypatch):
    figures = reliability.retrieval_kill_figures(jobs=64)
    assert figures["retrieval_kill_rows_lost"] == 0 and figures["retrieval_kill_rows"] == 64
    assert figures["retrieval_kill_outage_queries"] >= 4  # the kill landed in a round of several searches
    assert 1 <= figures["retrieval_kill_error_rows"] <= figures["retrieval_kill_outage_queries"]
    assert figures["retrieval_kill_searches_after_restart"] > 0
    assert figures["retrieval_kill_max_call_s"] <= figures["retrieval_kill_call_bound_s"]

    real_run = rollout_lib.RolloutEngine.run

    def dropping_run(self, *args, **kwargs):  # an engine that loses the rows a fault touched
        out = real_run(self, *args, **kwargs)
        out.trajectories = [None if t.status == T.RETRIEVAL_ERROR else t for t in out.trajectories]
        return out

    monkeypatch.setattr(rollout_lib.RolloutEngine, "run", dropping_run)
    assert reliability.retrieval_kill_figures(jobs=64)["retrieval_kill_rows_lost"] > 0
