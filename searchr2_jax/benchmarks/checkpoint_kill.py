"""Kill tests: `kill -9` a real launch/train.py process at chosen points, including while it writes a checkpoint, and
check that rerunning the same command resumes from the last complete checkpoint and reproduces an uninterrupted run.

    from searchr2_jax.benchmarks.checkpoint_kill import checkpoint_kill_figures   # the reliability suite calls it

Figures
  checkpoint_kill_points_tried      kill points tried, each in a fresh workdir on a tiny config (SFT 2 steps + RL 3
                                    steps, a checkpoint every step): mid-SFT (building step 2's batch), mid-RL (inside
                                    step 4's rollout, between decode segments), mid checkpoint write (step 3's, after
                                    orbax filled its `3.orbax-checkpoint-tmp` directory and before the rename that
                                    commits it); full mode adds the final checkpoint's write (step 5)
  checkpoint_kill_points_survived   of those, the points where the process died of SIGKILL at that point, the rerun
                                    exited 0 having resumed from the last step committed on disk, every step after it
                                    logged the reference run's non-timing metrics (same keys, rtol 1e-6, atol 1e-7),
                                    the final checkpoint exists with the reference's parameters, optimizer state and
                                    data-iterator position, no orbax temporary directory is left, and (checkpoint-write
                                    points) the kill left the step's temporary directory and no committed step
  checkpoint_kill_mid_write_points  checkpoint-write kill points tried
  checkpoint_kill_mid_write_confirmed
                                    of those, how many killed runs left the step's `*.orbax-checkpoint-tmp` directory
                                    behind with no committed step directory: evidence the kill landed mid-write
  checkpoint_kill_steps_compared    steps whose metrics were compared with the reference over the survived points
  checkpoint_corruption_errors_named
                                    1 if rerunning a finished workdir whose latest checkpoint has its largest array file
                                    truncated exits non-zero, without a traceback, with a message naming the step, its
                                    directory, `--restore_step` and the earlier steps available, else 0
  checkpoint_restore_step_resumed   1 if the rerun with `--restore_step=3` then resumed from step 3, moved steps 4 and 5
                                    (the bad one) into checkpoints_discarded/, saved them again, and matched the
                                    reference's metrics and final checkpoint, else 0
  checkpoint_kill_wall_s            this group of figures

How a kill lands where it says: the killed run starts through this module (`python -m
searchr2_jax.benchmarks.checkpoint_kill PAUSE MARKER FLAGS...`), which patches one function in its own process and then
runs launch/train.py unchanged. When the patched function reaches the kill point it writes MARKER and sleeps; the
parent, polling for MARKER, sends SIGKILL to the process. The kill therefore always lands inside that function, never
by a race. The mid-SFT and mid-RL points first wait for the pending asynchronous checkpoint, so their last complete
checkpoint is the previous step; the checkpoint-write point pauses in orbax's `AtomicRenameTemporaryPath.finalize`
(all of the step's files written into its temporary directory, no commit marker, no rename yet). The reference run
and every rerun are plain launch/train.py processes with the same flags; all share one persistent compilation cache,
so only the reference pays for compilation. Every child is bounded by a timeout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import logging

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_PY = os.path.join(ROOT, "launch", "train.py")
SFT, RL = 2, 3
TOTAL = SFT + RL
# The tiny config of tests/test_trainer.py, on the command line; no evaluation (it is not what is under test).
TRAIN_FLAGS = (f"--config={ROOT}/configs/smoke.py:sft_steps={SFT},steps={RL}", "--config.data.eval_examples=2",
               "--config.rollout.slots=8", "--config.rollout.max_response_tokens=128",
               "--config.rollout.max_obs_tokens=64", "--config.rollout.segment_steps=16",
               "--config.sft.batch_size=4", "--config.sft.seq_len=256", "--config.rl.group_size=2",
               "--config.train.prompts_per_step=2", "--config.train.micro_batches=2", "--config.train.log_every=1",
               "--config.train.ckpt_every=1", "--config.train.keep_checkpoints=10", "--config.train.eval_every=0",
               "--config.train.progress=False")
# (name, pause spec for the child, the last checkpoint committed when the kill lands)
KILL_POINTS = (("mid_sft", "sft:2", 1), ("mid_rollout", "rollout:4", 3), ("mid_checkpoint_write", "checkpoint:3", 2))
FULL_KILL_POINTS = KILL_POINTS + (("mid_final_checkpoint_write", "checkpoint:5", 4),)
CORRUPT_RESTORE_STEP = TOTAL - 2
REFERENCE_TIMEOUT_S = 420  # the one cold compile, on a loaded machine
CHILD_TIMEOUT_S = 240
PAUSE_S = 900  # a paused child whose parent died exits on its own after this
TMP_SUFFIX = ".orbax-checkpoint-tmp"
RTOL, ATOL = 1e-6, 1e-7


def is_timing(key: str) -> bool:
    """Metrics that differ between any two runs (wall-clock); the resume tests compare all the others."""
    return key in ("time", "step", "rollout/host_fraction") or key.startswith("perf/") or key.endswith("_s")


# ------------------------------------------------------------------------------------------------ the child side


def _pause(marker: str, where: dict) -> None:
    with open(marker + ".part", "w") as f:
        json.dump(dict(where, pid=os.getpid()), f)
    os.replace(marker + ".part", marker)  # the parent sees a whole marker or none
    time.sleep(PAUSE_S)
    os._exit(75)


def _install_pause(spec: str, marker: str) -> None:
    kind, step = spec.split(":")
    step = int(step)
    from searchr2_jax.trainer import Trainer

    if kind == "sft":
        init = Trainer.__init__

        def patched_init(self, *a, **k):  # wraps the trainer's batch stream, which knows nothing of checkpoints
            init(self, *a, **k)
            batches = self.sft_batches

            def paused(s):
                if s + 1 == step:  # the batch of (1-based) step `step`
                    self.ckpt.wait()
                    _pause(marker, {"kind": kind, "step": step})
                return batches(s)

            self.sft_batches = paused

        Trainer.__init__ = patched_init
    elif kind == "rollout":
        from searchr2_jax.rollout.rollout import RolloutEngine

        calls, armed = [0], [False]
        rollout_and_score = Trainer.rollout_and_score

        def patched_rollout_and_score(self, *a, **k):  # counts RL steps: the workdir starts empty
            calls[0] += 1
            if self.sft_steps + calls[0] == step:
                self.ckpt.wait()
                armed[0] = True
            return rollout_and_score(self, *a, **k)

        # Between decode segments of the rollout (prompts prefilled, generation under way); the engine's entry if
        # it has no `_segment` any more.
        name = "_segment" if hasattr(RolloutEngine, "_segment") else "run"
        inner = getattr(RolloutEngine, name)

        def patched_inner(self, *a, **k):
            if armed[0]:
                _pause(marker, {"kind": kind, "step": step, "in": f"RolloutEngine.{name}"})
            return inner(self, *a, **k)

        Trainer.rollout_and_score = patched_rollout_and_score
        setattr(RolloutEngine, name, patched_inner)
    elif kind == "checkpoint":
        from orbax.checkpoint._src.path import atomicity

        finalize = atomicity.AtomicRenameTemporaryPath.finalize

        async def patched_finalize(self, *a, **k):
            final, tmp = self.get_final(), self.get()
            if final.name == str(step):
                files = sum(len(f) for _, _, f in os.walk(str(tmp)))
                _pause(marker, {"kind": kind, "step": step, "tmp": str(tmp), "tmp_files": files,
                                "final_exists": os.path.exists(str(final))})
            return await finalize(self, *a, **k)

        atomicity.AtomicRenameTemporaryPath.finalize = patched_finalize
    else:
        raise ValueError(f"unknown pause kind {kind!r}")


def _child_main(argv: list[str]) -> None:
    import runpy

    spec, marker, *flags = argv
    _install_pause(spec, marker)
    sys.argv = [TRAIN_PY, *flags]
    runpy.run_path(TRAIN_PY, run_name="__main__")


# ------------------------------------------------------------------------------------------------ the parent side


def _env(cache_dir: str) -> dict:
    xla = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f)
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla, JAX_COMPILATION_CACHE_DIR=cache_dir,
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
                PYTHONPATH=os.pathsep.join([ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                     if p]))


def train_command(workdir: str, *extra: str) -> list[str]:
    return [sys.executable, TRAIN_PY, *TRAIN_FLAGS, f"--workdir={workdir}", *extra]


def _run(cmd: list[str], log: str, env: dict, timeout_s: float) -> dict:
    """Runs a child to its end (or its timeout); returns its exit code (None: timed out) and output."""
    start = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
    with open(log) as f:
        return {"rc": rc, "output": f.read(), "wall_s": round(time.time() - start, 2)}


def _run_and_kill(spec: str, workdir: str, log: str, env: dict, timeout_s: float) -> dict:
    """Starts the paused child and SIGKILLs it once it reports its kill point."""
    marker = workdir + ".marker"
    cmd = [sys.executable, "-m", "searchr2_jax.benchmarks.checkpoint_kill", spec, marker,
           *train_command(workdir)[2:]]
    start = time.time()
    where = None
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        while proc.poll() is None and time.time() - start < timeout_s:
            if os.path.exists(marker):
                os.kill(proc.pid, signal.SIGKILL)  # kill -9 of the training process itself
                break
            time.sleep(0.05)
        if proc.poll() is None and not os.path.exists(marker):  # timed out before its kill point
            proc.kill()
        proc.wait()
    if os.path.exists(marker):
        with open(marker) as f:
            where = json.load(f)
    with open(log) as f:
        output = f.read()
    return {"where": where, "rc": proc.returncode, "killed": where is not None and proc.returncode == -signal.SIGKILL,
            "output_tail": output[-3000:], "wall_s": round(time.time() - start, 2)}


def checkpoint_dirs(workdir: str) -> tuple[list[int], list[str]]:
    """The committed step directories and the unfinished (temporary) ones under WORKDIR/checkpoints."""
    root = os.path.join(workdir, "checkpoints")
    names = os.listdir(root) if os.path.isdir(root) else []
    return sorted(int(n) for n in names if n.isdigit()), sorted(n for n in names if TMP_SUFFIX in n)


def metric_rows(path: str, offset: int = 0) -> dict[int, dict]:
    """The rows written from byte `offset` on, merged per step (a step's later row wins)."""
    rows = {}
    with open(path, "rb") as f:
        f.seek(offset)
        for line in f.read().decode().splitlines():
            if line.strip():
                row = json.loads(line)
                rows.setdefault(int(row["step"]), {}).update(row)
    return rows


def resumed_from(output: str) -> int:
    found = re.findall(r"resumed from step (\d+)", output)
    return int(found[-1]) if found else 0


def compare_rows(reference: dict[int, dict], rows: dict[int, dict], steps) -> list[str]:
    """What differs between the two runs' non-timing metrics at `steps` (empty: nothing)."""
    problems = []
    for step in steps:
        if step not in rows or step not in reference:
            problems.append(f"step {step}: no metrics row")
            continue
        a, b = reference[step], rows[step]
        keys_a, keys_b = {k for k in a if not is_timing(k)}, {k for k in b if not is_timing(k)}
        if keys_a != keys_b:
            problems.append(f"step {step}: metric keys differ: {sorted(keys_a ^ keys_b)[:5]}")
        for k in sorted(keys_a & keys_b):
            if not np.allclose(b[k], a[k], rtol=RTOL, atol=ATOL, equal_nan=True):
                problems.append(f"step {step}: {k} = {b[k]!r}, reference {a[k]!r}")
    return problems


def same_checkpoint(workdir_a: str, workdir_b: str, step: int) -> bool:
    """Same parameters, optimizer state, PRNG key and data-iterator position in both runs' checkpoint `step`."""
    import warnings

    import jax
    import orbax.checkpoint as ocp

    def load(workdir):
        path = os.path.join(workdir, "checkpoints", str(step))
        with open(os.path.join(path, "data", "metadata")) as f:
            data = json.load(f)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sharding info not provided": read back onto the saved layout
            state = ocp.PyTreeCheckpointer().restore(os.path.join(path, "state"))
        return data, state

    try:
        (data_a, state_a), (data_b, state_b) = load(workdir_a), load(workdir_b)
    except Exception as e:  # a missing or unreadable checkpoint is a difference
        logging.warning("checkpoint %d of %s or %s unreadable: %s", step, workdir_a, workdir_b, e)
        return False
    if data_a != data_b or jax.tree.structure(state_a) != jax.tree.structure(state_b):
        return False
    return all(np.allclose(np.asarray(y), np.asarray(x), rtol=RTOL, atol=1e-8)
               for x, y in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)))


def survival_failures(point: dict, reference: dict[int, dict], rows: dict[int, dict]) -> list[str]:
    """Why a kill point did not survive (empty: it did). `point` holds what the kill and the rerun left behind;
    `rows` are the rerun's metrics."""
    why = []
    if not point["killed"]:
        why.append(f"the child was not killed at its kill point (exit {point['kill_rc']}, marker {point['where']})")
    if point["checkpoint_write"] and not point["mid_write_confirmed"]:
        why.append(f"no evidence of a mid-write kill: after it, committed {point['committed_after_kill']}, "
                   f"temporary {point['tmp_after_kill']}")
    last_committed = max(point["committed_after_kill"], default=0)
    if point["rerun_rc"] != 0:
        why.append(f"the rerun exited {point['rerun_rc']}")
    if point["resumed_at"] != last_committed:
        why.append(f"the rerun resumed from step {point['resumed_at']}, the last complete checkpoint was "
                   f"{last_committed}")
    why += compare_rows(reference, rows, range(point["resumed_at"] + 1, TOTAL + 1))
    if TOTAL not in point["committed_after_rerun"] or point["tmp_after_rerun"]:
        why.append(f"after the rerun: committed {point['committed_after_rerun']}, temporary {point['tmp_after_rerun']}")
    if not point["final_checkpoint_equal"]:
        why.append("the final checkpoint differs from the reference's")
    return why


def _kill_point(name: str, spec: str, expected: int, ref: str, reference: dict, tmp: str, env: dict) -> dict:
    workdir = os.path.join(tmp, name)
    kill = _run_and_kill(spec, workdir, workdir + ".killed.log", env, CHILD_TIMEOUT_S)
    committed, temporary = checkpoint_dirs(workdir)
    write_step = int(spec.split(":")[1]) if spec.startswith("checkpoint:") else None
    point = {"name": name, "spec": spec, "expected_resume": expected, "where": kill["where"], "killed": kill["killed"],
             "kill_rc": kill["rc"], "kill_wall_s": kill["wall_s"], "committed_after_kill": committed,
             "tmp_after_kill": temporary, "checkpoint_write": write_step is not None,
             "mid_write_confirmed": write_step is not None and f"{write_step}{TMP_SUFFIX}" in temporary
             and write_step not in committed}
    metrics = os.path.join(workdir, "metrics.jsonl")
    offset = os.path.getsize(metrics) if os.path.exists(metrics) else 0
    rerun = _run(train_command(workdir), workdir + ".rerun.log", env, CHILD_TIMEOUT_S)
    rows = metric_rows(metrics, offset) if os.path.exists(metrics) else {}
    point.update(rerun_rc=rerun["rc"], rerun_wall_s=rerun["wall_s"], resumed_at=resumed_from(rerun["output"]))
    point["committed_after_rerun"], point["tmp_after_rerun"] = checkpoint_dirs(workdir)
    point["final_checkpoint_equal"] = same_checkpoint(ref, workdir, TOTAL)
    point["steps_compared"] = len(range(point["resumed_at"] + 1, TOTAL + 1))
    point["failures"] = survival_failures(point, reference, rows)
    point["survived"] = not point["failures"]
    if not point["survived"]:
        logging.warning("kill point %s failed: %s\nkilled run's output tail:\n%s\nrerun's output tail:\n%s", name,
                        point["failures"], kill["output_tail"], rerun["output"][-3000:])
    return point


def _corruption(ref: str, reference: dict, tmp: str, env: dict) -> dict:
    """A finished workdir with its latest checkpoint truncated: the rerun must name it; --restore_step resumes."""
    workdir = os.path.join(tmp, "corrupted")
    shutil.copytree(ref, workdir)
    state_dir = os.path.join(workdir, "checkpoints", str(TOTAL), "state")
    files = [os.path.join(d, f) for d, _, fs in os.walk(state_dir) for f in fs]
    victim = max(files, key=os.path.getsize)
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    failed = _run(train_command(workdir), workdir + ".failed.log", env, CHILD_TIMEOUT_S)
    out = failed["output"]
    earlier = ", ".join(str(s) for s in range(1, TOTAL))
    named = (failed["rc"] not in (0, None) and "Traceback" not in out and f"step {TOTAL}" in out
             and os.path.join(workdir, "checkpoints", str(TOTAL)) in out and "--restore_step=" in out
             and earlier in out)
    metrics = os.path.join(workdir, "metrics.jsonl")
    offset = os.path.getsize(metrics)
    resumed = _run(train_command(workdir, f"--restore_step={CORRUPT_RESTORE_STEP}"), workdir + ".restore.log", env,
                   CHILD_TIMEOUT_S)
    discarded = os.path.join(workdir, "checkpoints_discarded")
    moved = sorted(os.listdir(discarded)) if os.path.isdir(discarded) else []
    mismatches = compare_rows(reference, metric_rows(metrics, offset), range(CORRUPT_RESTORE_STEP + 1, TOTAL + 1))
    committed, temporary = checkpoint_dirs(workdir)
    result = {"error_named": named, "error_rc": failed["rc"], "error_message": out.strip().splitlines()[-3:],
              "truncated": victim, "restore_rc": resumed["rc"], "resumed_at": resumed_from(resumed["output"]),
              "discarded": moved, "committed": committed, "tmp": temporary, "mismatches": mismatches,
              "final_checkpoint_equal": same_checkpoint(ref, workdir, TOTAL)}
    result["restore_step_resumed"] = (
        resumed["rc"] == 0 and result["resumed_at"] == CORRUPT_RESTORE_STEP
        and moved == [str(s) for s in range(CORRUPT_RESTORE_STEP + 1, TOTAL + 1)]
        and committed == list(range(1, TOTAL + 1)) and not temporary and not mismatches
        and result["final_checkpoint_equal"])
    if not (named and result["restore_step_resumed"]):
        logging.warning("corrupted checkpoint case failed: %s\nrestore run's output tail:\n%s",
                        {k: v for k, v in result.items()}, resumed["output"][-3000:])
    return result


def checkpoint_kill_figures(quick: bool = False, details: list | None = None, keep_dir: str | None = None) -> dict:
    """The figures of the module docstring. `details` (a list) receives one dict per kill point and one for the
    corrupted checkpoint; `keep_dir` keeps the workdirs and logs there instead of a temporary directory."""
    start = time.time()
    tmp_ctx = tempfile.TemporaryDirectory(prefix="checkpoint_kill_") if keep_dir is None else None
    tmp = tmp_ctx.name if tmp_ctx else keep_dir
    os.makedirs(tmp, exist_ok=True)
    try:
        env = _env(os.path.join(tmp, "jax_cache"))
        ref = os.path.join(tmp, "reference")
        reference_run = _run(train_command(ref), ref + ".log", env, REFERENCE_TIMEOUT_S)
        if reference_run["rc"] != 0:
            raise RuntimeError(f"the reference run failed (exit {reference_run['rc']}):\n"
                               f"{reference_run['output'][-3000:]}")
        reference = metric_rows(os.path.join(ref, "metrics.jsonl"))
        points = [_kill_point(name, spec, expected, ref, reference, tmp, env)
                  for name, spec, expected in (KILL_POINTS if quick else FULL_KILL_POINTS)]
        corrupted = _corruption(ref, reference, tmp, env)
    finally:
        if tmp_ctx:
            tmp_ctx.cleanup()
    if details is not None:
        details.extend(points + [dict(corrupted, name="corrupted_checkpoint")])
    survived = [p for p in points if p["survived"]]
    writes = [p for p in points if p["checkpoint_write"]]
    return {"checkpoint_kill_points_tried": len(points),
            "checkpoint_kill_points_survived": len(survived),
            "checkpoint_kill_mid_write_points": len(writes),
            "checkpoint_kill_mid_write_confirmed": sum(p["mid_write_confirmed"] for p in writes),
            "checkpoint_kill_steps_compared": sum(p["steps_compared"] for p in survived),
            "checkpoint_corruption_errors_named": int(corrupted["error_named"]),
            "checkpoint_restore_step_resumed": int(corrupted["restore_step_resumed"]),
            "checkpoint_kill_wall_s": round(time.time() - start, 2)}


if __name__ == "__main__":  # the paused child: python -m searchr2_jax.benchmarks.checkpoint_kill PAUSE MARKER FLAGS...
    _child_main(sys.argv[1:])
