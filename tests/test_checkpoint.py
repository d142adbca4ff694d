"""Checkpointer: a truncated checkpoint fails its restore naming the step, its directory and the earlier steps;
`discard_after` moves later steps aside (never deleting them) so that orbax saves those steps again."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from searchr2_jax import checkpoint as ckpt_lib
from searchr2_jax.rl.state import TrainState


def _state(value: float) -> TrainState:
    params = {"w": jnp.full((64, 64), value, jnp.float32), "b": jnp.arange(8, dtype=jnp.float32) * value}
    return TrainState(jnp.asarray(int(value), jnp.int32), params, {"mu": jax.tree.map(jnp.zeros_like, params)}, None,
                      jax.random.key(0))


def _saved(tmp_path, steps=(1, 2, 3)):
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), keep=10, async_save=False)
    for s in steps:
        assert ckpt.save(s, _state(float(s)), {"iterator": {"next_index": s}})
    return ckpt


def _truncate_largest(step_dir: str) -> str:
    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs]
    victim = max(files, key=os.path.getsize)
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    return victim


def test_a_truncated_checkpoint_names_its_step_and_how_to_resume_from_an_earlier_one(tmp_path):
    ckpt = _saved(tmp_path)
    _truncate_largest(ckpt.step_directory(3))
    with pytest.raises(ckpt_lib.CheckpointError) as e:
        ckpt.restore(_state(0.0))  # the latest
    msg = str(e.value)
    assert "step 3" in msg and ckpt.step_directory(3) in msg
    assert "--restore_step=N" in msg and "available: 1, 2 " in msg and "checkpoints_discarded" in msg
    state, data = ckpt.restore(_state(0.0), 2)  # an earlier one still reads
    np.testing.assert_array_equal(np.asarray(state.params["w"]), 2.0)
    assert data == {"iterator": {"next_index": 2}}
    with pytest.raises(ckpt_lib.CheckpointError, match=r"no checkpoint of step 7 .*available: 1, 2, 3"):
        ckpt.restore(_state(0.0), 7)
    ckpt.close()


def test_discarding_later_steps_moves_them_aside_and_lets_those_steps_be_saved_again(tmp_path):
    ckpt = _saved(tmp_path)
    _truncate_largest(ckpt.step_directory(3))
    os.makedirs(os.path.join(ckpt.directory, "4.orbax-checkpoint-tmp"))  # a write a kill interrupted
    assert not ckpt.save(2, _state(9.0))  # orbax skips steps at or below its latest: why discarding is needed
    moved = ckpt.discard_after(1)
    discarded = str(tmp_path / "checkpoints_discarded")
    assert sorted(moved) == [os.path.join(discarded, n) for n in ("2", "3", "4.orbax-checkpoint-tmp")]
    assert ckpt.all_steps() == [1] and ckpt.latest_step() == 1
    assert ckpt.save(2, _state(5.0)) and ckpt.all_steps() == [1, 2]
    np.testing.assert_array_equal(np.asarray(ckpt.restore(_state(0.0))[0].params["w"]), 5.0)
    # Discarding the same step again keeps both copies.
    assert ckpt.discard_after(1) == [os.path.join(discarded, "2.1")]
    assert sorted(os.listdir(discarded)) == ["2", "2.1", "3", "4.orbax-checkpoint-tmp"]
    ckpt.close()
