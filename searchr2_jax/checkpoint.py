"""Orbax behind one module (its API churns): save, keep N, restore onto an abstract (sharded) state.

A checkpoint holds the TrainState (params, optimizer state, reference params, step, PRNG key) and the data iterator
state (a small JSON dict), so a resumed run continues the same data stream and the same random stream.
Orbax writes each step into a temporary directory and renames it when complete: a checkpoint is never half-written.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from searchr2_jax.rl.state import TrainState


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

    def restore(self, like: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
        """Restores onto the shapes, dtypes and shardings of `like` (an abstract or concrete state)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_tree(like))
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                 data=ocp.args.JsonRestore()))
        return _from_tree(out["state"], like), dict(out["data"] or {})

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()
