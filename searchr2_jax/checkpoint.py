"""Orbax behind one module (its API churns): save, keep N, restore onto an abstract (sharded) state.

A checkpoint holds the TrainState (params, optimizer state, reference params, step, PRNG key) and the data iterator
state (a small JSON dict), so a resumed run continues the same data stream and the same random stream.
Orbax writes each step into a temporary directory and renames it when complete: a checkpoint is never half-written.
One that was damaged afterwards (truncated, corrupted) fails its restore with a CheckpointError naming the step, its
directory and the earlier steps to resume from instead; `discard_after` moves the later steps aside so that the resumed
run saves them again (orbax skips saving any step at or below its latest).
"""

from __future__ import annotations

import os
import shutil

import jax
import orbax.checkpoint as ocp

from searchr2_jax.rl.state import TrainState


class CheckpointError(RuntimeError):
    """A training checkpoint that cannot be restored, or a requested step that does not exist; the message says how
    to resume from an earlier one. (`models.hf_io.CheckpointError` is the HF weight loader's.)"""


def _to_tree(state: TrainState) -> dict:
    tree = {"step": state.step, "params": state.params, "opt_state": state.opt_state,
            "rng": jax.random.key_data(state.rng)}  # typed keys are not serializable; their data is
    if state.ref_params is not None:
        tree["ref_params"] = state.ref_params
    return tree


def _from_tree(tree: dict, like: TrainState) -> TrainState:
    return TrainState(tree["step"], tree["params"], tree["opt_state"], tree.get("ref_params"),
                      jax.random.wrap_key_data(tree["rng"], impl=jax.random.key_impl(like.rng)))


class Checkpointer:
    def __init__(self, directory: str, keep: int = 3, every: int = 1, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.discard_directory = self.directory + "_discarded"
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                               enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(int(s) for s in self.manager.all_steps())

    def save(self, step: int, state: TrainState, data_state: dict | None = None, force: bool = False) -> bool:
        args = ocp.args.Composite(state=ocp.args.StandardSave(_to_tree(state)),
                                  data=ocp.args.JsonSave(data_state or {}))
        return self.manager.save(step, args=args, force=force)

    def step_directory(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def restore(self, like: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
        """Restores onto the shapes, dtypes and shardings of `like` (an abstract or concrete state). A step that is
        missing or cannot be read raises CheckpointError."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
        if step not in self.all_steps():
            raise CheckpointError(f"no checkpoint of step {step} in {self.directory}. {self.resume_hint()}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_tree(like))
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                     data=ocp.args.JsonRestore()))
        except Exception as e:  # orbax and tensorstore raise plain Exception, ValueError, OSError, ...
            cause = (str(e).strip().splitlines() or [""])[0].split(" See full TensorStore details")[0][:300]
            raise CheckpointError(f"checkpoint of step {step} at {self.step_directory(step)} cannot be read "
                                  f"(truncated or corrupted?): {type(e).__name__}: {cause}\n"
                                  f"{self.resume_hint(step)}") from e
        return _from_tree(out["state"], like), dict(out["data"] or {})

    def resume_hint(self, bad_step: int | None = None) -> str:
        """How to resume from a step before `bad_step` (default: any), naming the steps on disk to choose from."""
        earlier = [s for s in self.all_steps() if bad_step is None or s < bad_step]
        later = f"later checkpoints are then moved to {self.discard_directory}, not deleted"
        if not earlier:
            return f"No earlier checkpoint: rerun with --restore_step=0 to start over ({later})."
        return (f"To resume from an earlier checkpoint, rerun with --restore_step=N (Trainer.run(restore_step=N)), "
                f"N one of the steps available: {', '.join(map(str, earlier))} ({later}).")

    def discard_after(self, step: int) -> list[str]:
        """Moves every checkpoint after `step` (and any unfinished temporary directory) into `discard_directory`,
        never deleting one; returns the new paths. Call from one process; the others then `reload()`."""
        self.manager.wait_until_finished()
        moved = []
        for name in sorted(os.listdir(self.directory)):
            number = name.split(".", 1)[0]
            if not number.isdigit() or int(number) <= step:
                continue
            os.makedirs(self.discard_directory, exist_ok=True)
            dest, n = os.path.join(self.discard_directory, name), 0
            while os.path.exists(dest):  # an earlier resume discarded the same step: keep both
                n += 1
                dest = os.path.join(self.discard_directory, f"{name}.{n}")
            shutil.move(os.path.join(self.directory, name), dest)
            moved.append(dest)
        self.reload()
        return moved

    def reload(self):
        """Re-reads the steps on disk (after another process moved some)."""
        self.manager.reload()

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()
