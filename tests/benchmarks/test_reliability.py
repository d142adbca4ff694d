"""The reliability suite (benchmarks/reliability.py) at a small size: its figures, and that they can show failure."""

from searchr2_jax.benchmarks import reliability
from searchr2_jax.models import hf_io


def test_quick_suite_finds_no_crash_no_wrong_answer_and_every_bad_checkpoint_refused():
    figures = reliability.run(quick=True)
    assert set(figures) == {"server_fuzz_requests", "server_crashes", "server_wrong_answers",
                            "loader_bad_checkpoints_tried", "loader_unconsumed_tensor_errors",
                            "sentinel_detects_injected_collapse", "sentinel_false_alarms", "wall_s"}
    assert figures["server_fuzz_requests"] == reliability.QUICK_FUZZ_REQUESTS
    assert figures["server_crashes"] == 0 and figures["server_wrong_answers"] == 0
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
