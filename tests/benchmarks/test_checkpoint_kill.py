"""Kill tests (benchmarks/checkpoint_kill.py): the survival verdict fails on each thing that can go wrong, and the
quick figures on real launch/train.py processes killed with SIGKILL (one of them mid checkpoint write)."""

import copy
import json
import os
import shutil

import pytest

from searchr2_jax.benchmarks import checkpoint_kill as ck

REFERENCE = {s: {"step": s, "time": 100.0 + s, "perf/step_time_s": 0.5, "train/loss": 1.0 / s, "reward/mean": 0.25}
             for s in range(1, ck.TOTAL + 1)}


def _survived_point():
    """What a kill mid checkpoint write of step 3 and a good rerun leave behind."""
    return {"killed": True, "kill_rc": -9, "where": {"kind": "checkpoint", "step": 3}, "checkpoint_write": True,
            "mid_write_confirmed": True, "committed_after_kill": [1, 2], "tmp_after_kill": ["3.orbax-checkpoint-tmp"],
            "rerun_rc": 0, "resumed_at": 2, "committed_after_rerun": [1, 2, 3, 4, 5], "tmp_after_rerun": [],
            "final_checkpoint_equal": True}


def _rerun_rows(resumed_at=2):
    rows = {s: dict(r, time=900.0 + s, **{"perf/step_time_s": 0.7}) for s, r in REFERENCE.items() if s > resumed_at}
    return copy.deepcopy(rows)  # timing metrics differ; nothing else


def test_a_good_kill_and_rerun_survive():
    assert ck.survival_failures(_survived_point(), REFERENCE, _rerun_rows()) == []


@pytest.mark.parametrize("what", ["not_killed", "no_tmp_dir", "rerun_failed", "resumed_too_early", "metric_off",
                                  "metric_missing", "step_missing", "final_missing", "tmp_left", "final_differs"])
def test_each_failure_makes_the_kill_point_fail(what):
    point, rows = _survived_point(), _rerun_rows()
    if what == "not_killed":
        point.update(killed=False, kill_rc=0)
    elif what == "no_tmp_dir":  # the "mid-write" kill landed after the commit
        point.update(mid_write_confirmed=False, committed_after_kill=[1, 2, 3], tmp_after_kill=[])
    elif what == "rerun_failed":
        point["rerun_rc"] = 1
    elif what == "resumed_too_early":  # from scratch although checkpoint 2 was complete
        point["resumed_at"] = 0
        rows = _rerun_rows(resumed_at=0)
    elif what == "metric_off":
        rows[4]["train/loss"] *= 1 + 1e-5
    elif what == "metric_missing":
        del rows[5]["reward/mean"]
    elif what == "step_missing":
        del rows[3]
    elif what == "final_missing":
        point["committed_after_rerun"] = [1, 2, 3, 4]
    elif what == "tmp_left":
        point["tmp_after_rerun"] = ["5.orbax-checkpoint-tmp"]
    elif what == "final_differs":
        point["final_checkpoint_equal"] = False
    assert ck.survival_failures(point, REFERENCE, rows)


def test_metric_rows_from_an_offset_are_the_reruns_last_row_per_step(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps({"step": s, "train/loss": 9.0}) + "\n" for s in (1, 2, 3))  # the killed run
    offset = os.path.getsize(path)
    with open(path, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in ({"step": 3, "train/loss": 1.0}, {"step": 3, "eval/em": 0.5},
                                                     {"step": 4, "train/loss": 2.0}))
    assert ck.metric_rows(path, offset) == {3: {"step": 3, "train/loss": 1.0, "eval/em": 0.5},
                                            4: {"step": 4, "train/loss": 2.0}}
    assert ck.resumed_from("I... trainer.py:490] resumed from step 2\n") == 2 and ck.resumed_from("fresh") == 0


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    details = []
    keep = str(tmp_path_factory.mktemp("checkpoint_kill"))
    return ck.checkpoint_kill_figures(quick=True, details=details, keep_dir=keep), details, keep


@pytest.mark.slow  # a reference run, three killed runs and their reruns, a corrupted checkpoint: ~2-3 min
def test_quick_figures_every_kill_point_survives(quick):
    figures, details, keep = quick
    assert figures["checkpoint_kill_points_tried"] == figures["checkpoint_kill_points_survived"] == 3, details
    assert figures["checkpoint_kill_mid_write_confirmed"] == figures["checkpoint_kill_mid_write_points"] == 1
    assert figures["checkpoint_corruption_errors_named"] == 1 and figures["checkpoint_restore_step_resumed"] == 1
    points = {p["name"]: p for p in details}
    for name, spec, expected in ck.KILL_POINTS:
        p = points[name]
        assert p["killed"] and p["kill_rc"] == -9 and p["resumed_at"] == expected, p
        assert p["where"]["kind"] == spec.split(":")[0] and p["where"]["step"] == int(spec.split(":")[1])
    assert points["mid_rollout"]["where"]["in"] == "RolloutEngine._segment"  # inside the rollout, not before it
    write = points["mid_checkpoint_write"]
    assert write["tmp_after_kill"] == ["3.orbax-checkpoint-tmp"] and write["committed_after_kill"] == [1, 2]
    assert write["where"]["tmp_files"] > 0 and not write["where"]["final_exists"]
    bad = points["corrupted_checkpoint"]
    assert any("--restore_step=N" in line and "1, 2, 3, 4" in line for line in bad["error_message"])
    assert bad["discarded"] == ["4", "5"]
    # The truncated file survives in checkpoints_discarded/ (moved, never deleted).
    moved = bad["truncated"].replace(os.sep + "checkpoints" + os.sep, os.sep + "checkpoints_discarded" + os.sep)
    assert os.path.exists(moved)


@pytest.mark.slow
def test_the_figure_fails_when_the_rerun_does_not_reproduce_the_reference(quick):
    """The real rerun's metrics against a reference with one metric nudged by 1e-5: the kill point no longer
    survives."""
    _, details, keep = quick
    point = next(p for p in details if p["name"] == "mid_checkpoint_write")
    workdir = os.path.join(keep, point["name"])
    rows = ck.metric_rows(os.path.join(workdir, "metrics.jsonl"))
    reference = ck.metric_rows(os.path.join(keep, "reference", "metrics.jsonl"))
    assert ck.survival_failures(point, reference, rows) == []
    key = next(k for k, v in sorted(reference[ck.TOTAL].items()) if not ck.is_timing(k) and abs(v) > 1e-3)
    reference[ck.TOTAL][key] *= 1 + 1e-5
    assert any(key in f for f in ck.survival_failures(point, reference, rows))
    # A final checkpoint that is not the reference's (here: its step 4 under the name 5) is caught too.
    other = os.path.join(keep, "not_the_reference")
    shutil.copytree(os.path.join(keep, "reference", "checkpoints", str(ck.TOTAL - 1)),
                    os.path.join(other, "checkpoints", str(ck.TOTAL)))
    assert ck.same_checkpoint(os.path.join(keep, "reference"), workdir, ck.TOTAL)
    assert not ck.same_checkpoint(os.path.join(keep, "reference"), other, ck.TOTAL)
