"""Trainer across two JAX processes (jax.distributed on localhost, 2 CPU devices each, one 4-device mesh).

The test starts this file twice as a script (the worker below); each process runs the same tiny smoke config in one
shared workdir. Both must finish with identical parameters, finite losses and one checkpoint per step, and a
restart must restore each process's own data-iterator position.
"""

import json
import math
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SFT, RL = 2, 1
PROMPTS, GROUP = 4, 2  # global: 2 prompts per process


def tiny_config():
    from configs import smoke

    c = smoke.get_config(f"sft_steps={SFT},steps={RL}")
    c.data.eval_examples = 2
    c.rollout.update(dict(slots=8, max_response_tokens=128, max_obs_tokens=64, segment_steps=16))
    c.sft.update(dict(batch_size=4, seq_len=256))
    c.rl.group_size = GROUP
    c.train.update(dict(prompts_per_step=PROMPTS, micro_batches=2, log_every=1, ckpt_every=1, keep_checkpoints=10,
                        eval_every=100, progress=False))  # eval only at the last step
    c.mesh.update(dict(data=-1, fsdp=1, tensor=1))
    return c


def _worker(coordinator: str, pid: int, workdir: str, out_dir: str):
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process CPU collectives
    from searchr2_jax.models import sharding

    assert sharding.maybe_initialize_distributed(2, pid, coordinator)
    assert jax.process_count() == 2 and jax.device_count() == 4, (jax.process_count(), jax.device_count())
    from searchr2_jax.trainer import Trainer

    trainer = Trainer(tiny_config(), workdir)
    assert trainer.pipeline.batch_size == PROMPTS // 2
    assert len(trainer.local_mesh.devices.flat) == 2
    sft_tokens = trainer.sft_batches(0)[0]
    assert sft_tokens.shape[0] == 2  # sft.batch_size 4 over 2 processes
    final = trainer.run()
    params = {sharding.key_path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(
        trainer.state.params)}  # replicated over data: every process holds all of it
    np.savez(os.path.join(out_dir, f"params_{pid}.npz"), sft_tokens=sft_tokens, **params)
    with open(os.path.join(out_dir, f"final_{pid}.json"), "w") as f:
        json.dump(final, f)
    # A restart in the workdir restores the state and this process's own data-iterator position.
    again = Trainer(tiny_config(), workdir)
    assert again.restore() == SFT + RL
    assert again.iterator.get_state() == trainer.iterator.get_state()
    for x, y in zip(jax.tree.leaves(again.state.params), jax.tree.leaves(trainer.state.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    again.ckpt.close()
    jax.distributed.shutdown()


def test_global_batches_must_split_over_processes():
    from searchr2_jax.config import ConfigError, validate_config

    c = tiny_config()
    c.mesh.update(dict(data=1, fsdp=1, tensor=1))
    validate_config(c, num_devices=1, num_processes=2)
    c.train.prompts_per_step = 3
    c.train.micro_batches = 1
    with pytest.raises(ConfigError, match=r"train\.prompts_per_step"):
        validate_config(c, num_devices=1, num_processes=2)
    c.train.prompts_per_step = 4
    c.sft.batch_size = 5
    with pytest.raises(ConfigError, match=r"sft\.batch_size"):
        validate_config(c, num_devices=1, num_processes=2)


@pytest.mark.slow
def test_two_process_trainer_agrees_and_checkpoints(tmp_path):
    workdir, out_dir = tmp_path / "work", tmp_path / "out"
    out_dir.mkdir()
    from .processes import run_workers  # imported here: this file also runs as the worker script

    run_workers(os.path.abspath(__file__), [str(workdir), str(out_dir)], root=ROOT, timeout_s=240,
                what="two-process trainer")

    a, b = (np.load(out_dir / f"params_{i}.npz") for i in range(2))
    assert not np.array_equal(a["sft_tokens"], b["sft_tokens"])  # hosts draw different SFT rows
    names = [k for k in a.files if k != "sft_tokens"]
    assert names and sorted(names) == sorted(k for k in b.files if k != "sft_tokens")
    for k in names:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        assert np.isfinite(a[k]).all(), k
    finals = [json.loads((out_dir / f"final_{i}.json").read_text()) for i in range(2)]
    for key in ("train/loss", "reward/mean", "eval/em"):
        assert math.isfinite(finals[0][key]) and finals[0][key] == finals[1][key], key  # averaged over hosts

    from searchr2_jax.jsonl import read_jsonl

    rows = {}
    for row in read_jsonl(str(workdir / "metrics.jsonl")):  # written by process 0 only: one row set per step
        rows.setdefault(row["step"], []).append(row)
    assert sorted(rows) == list(range(1, SFT + RL + 1))
    assert all(math.isfinite(rows[s][0]["sft/nll"]) for s in range(1, SFT + 1))
    rl_row = {k: v for r in rows[SFT + RL] for k, v in r.items()}
    assert math.isfinite(rl_row["train/loss"]) and rl_row["rollout/trajectories"] == PROMPTS * GROUP
    ckpts = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    assert ckpts == list(range(1, SFT + RL + 1))


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    _worker(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
