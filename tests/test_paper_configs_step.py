"""Each paper config runs one whole RL step (rollout, refiner, reward, meta-actions, train step) on 8 devices: the
config's own micro-batches, mesh axes, dtype, remat, refiner prompt and loss, with the model, data, retrieval and
judge shrunk to what a CPU runs. A step batch that does not divide its micro-batches or mesh (the crash of the
paper configs' first RL step) fails here before it reaches a pod."""

import importlib
import math

import pytest

from searchr2_jax.config import validate_config
from searchr2_jax.trainer import Trainer

PAPER = ("qwen2p5_7b_r2", "qwen3_8b_r2", "qwen2p5_32b_r2")
DEVICES = 8  # tests/conftest.py's fake CPU devices


def shrunk(name: str):
    c = importlib.import_module(f"configs.{name}").get_config()
    tensor = c.mesh.tensor
    fsdp = DEVICES // (c.mesh.data * tensor)
    # Rows of one step: the smallest multiple of group_size that micro_batches x fsdp divides, as 2,560 does on the
    # declared pod.
    unit = c.train.micro_batches * fsdp
    prompts = unit // math.gcd(unit, c.rl.group_size)
    c.model.update(dict(hf_path="", tokenizer="world", vocab_size=512,
                        init=dict(hidden_size=64, num_layers=2, num_heads=8, num_kv_heads=8, head_dim=8,
                                  intermediate_size=128, rope_theta=10000.0, max_position_embeddings=2048)))
    c.data.update(dict(train_files="", eval_files="", eval_examples=2,
                       world=dict(seed=0, num_people=120, num_companies=30, num_cities=30, num_countries=6,
                                  num_universities=8, num_distractors=10, num_questions=600)))
    c.retrieval.update(dict(backend="bm25", corpus_path="", index_dir=""))
    c.reward.judge = "oracle"
    c.rollout.update(dict(slots=2 * unit, max_turns=2, max_response_tokens=48, max_obs_tokens=64, segment_steps=16))
    c.refiner.max_prompt_tokens = 1024
    c.train.update(dict(steps=1, prompts_per_step=prompts, eval_every=0, ckpt_every=10**6, progress=False,
                        diagnostics_every=0))
    c.mesh.devices = DEVICES
    return c


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER)
def test_paper_config_runs_one_rl_step_on_its_mesh_axes(name, tmp_path):
    c = shrunk(name)
    validate_config(c, num_devices=DEVICES)
    trainer = Trainer(c, str(tmp_path))
    assert dict(trainer.mesh.shape) == {"data": 1, "fsdp": DEVICES // c.mesh.tensor, "tensor": c.mesh.tensor}
    last = trainer.run()
    assert math.isfinite(last["train/loss"]) and last["train/skipped"] == 0
    assert last["train/meta_tokens"] > 0  # the refiner's decisions were trained, in rows the mesh divides
    assert last["rollout/trajectories"] == c.train.prompts_per_step * c.rl.group_size
