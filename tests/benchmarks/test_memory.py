"""The memory suite (benchmarks/memory.py): its abstract figures are the compiled programs' own, the paper configs
divide their meshes, and (slow) fit their chips with 10% to spare."""

import importlib

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh

from searchr2_jax.benchmarks import CONFIGS, memory
from searchr2_jax.models import decoder, sharding
from searchr2_jax.rl import state as state_lib
from searchr2_jax.rl.train_step import make_train_step
from searchr2_jax.trainer import jit_train_step


def load_config(name):
    return importlib.import_module(f"configs.{name}").get_config()


def _tiny():
    """The small config at test sizes, on the 8 fake devices of conftest (fsdp 4 x tensor 2)."""
    config = memory.small_config(8)
    config.rollout.update(dict(slots=8, max_prompt_tokens=64, max_response_tokens=192))
    config.refiner.max_prompt_tokens = 128
    model_cfg = memory.model_config(config).replace(vocab_size=512, hidden_size=64, intermediate_size=128,
                                                    num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16)
    return config, model_cfg, sharding.make_mesh(config.mesh, jax.devices()[:8])


@pytest.mark.slow
def test_abstract_figures_equal_a_compile_from_real_arrays():
    """The suite's ShapeDtypeStructs (shapes, dtypes, shardings, the state's structure) give the same compiled
    program, and so the same memory figures, as the trainer's own arrays: a state made by init_state and placed by
    tree_shardings, a batch placed by host_local_to_global."""
    config, model_cfg, mesh = _tiny()
    optimizer = state_lib.make_optimizer(config.optim, config.train.steps)
    state = memory.abstract_state(config, model_cfg, mesh, optimizer)
    batch = memory.abstract_batch(config, mesh)
    step = jit_train_step(config, model_cfg, mesh, jax.tree.map(lambda x: x.sharding, state), optimizer)
    predicted = memory.analysis_bytes(step.lower(state, batch).compile().memory_analysis())

    key = jax.random.key(config.seed)
    real = state_lib.init_state(decoder.init_params(model_cfg, key), optimizer, key,
                                with_reference=config.rl.loss.kl_coef > 0)
    real = sharding.put_global(real, sharding.tree_shardings(real, mesh))
    real_batch = sharding.host_local_to_global(jax.tree.map(lambda s: memory._fake(s, model_cfg.vocab_size),
                                                                batch), mesh)
    measured = memory.analysis_bytes(step.lower(real, real_batch).compile().memory_analysis())
    assert predicted == measured
    assert memory.device_bytes(state) == memory.device_bytes(real) > 0
    assert jax.tree.map(lambda s: (s.shape, s.dtype), state) == jax.tree.map(lambda x: (x.shape, x.dtype), real)

    # The rollout's bf16 per-layer weights: the suite's shardings are those the eager slices get.
    gen = decoder.per_layer_weights(model_cfg, real.params)
    abstract_gen = memory.gen_weights(model_cfg, state.params)
    for a, g in zip(jax.tree.leaves(abstract_gen), jax.tree.leaves(gen)):
        assert (a.shape, a.dtype) == (g.shape, g.dtype)
        assert a.sharding.is_equivalent_to(g.sharding, len(g.shape)), (a.sharding, g.sharding)


@pytest.mark.slow  # two compiles of the step (8 devices, 1 device): ~15-30 s on 2 CPU cores
def test_train_step_on_the_mesh_matches_one_device():
    """The sharded step the suite measures (strided micro-batches, rows kept over data x fsdp) computes the same
    loss and update as the step on one device without a mesh."""
    config, model_cfg, mesh = _tiny()
    config.rollout.update(dict(max_prompt_tokens=16, max_response_tokens=16))
    config.refiner.max_prompt_tokens = 16
    model_cfg = model_cfg.replace(dtype="float32", remat=False)
    optimizer = state_lib.make_optimizer(config.optim, config.train.steps)
    key = jax.random.key(0)
    state = state_lib.init_state(decoder.init_params(model_cfg, key, std=0.1), optimizer, key, with_reference=True)
    abstract = memory.abstract_batch(config, mesh)
    rng = np.random.default_rng(0)
    host = jax.tree.map(lambda s: memory._fake(s, model_cfg.vocab_size), abstract)
    host = host._replace(advantages=rng.normal(size=host.advantages.shape).astype(np.float32),
                         loss_mask=(rng.random(host.loss_mask.shape) < 0.7).astype(np.float32))
    one = jax.jit(make_train_step(model_cfg, config.rl.loss, optimizer, config.train.micro_batches))
    new1, metrics1 = one(state, host)
    shardings = sharding.tree_shardings(state, mesh)
    sharded = jit_train_step(config, model_cfg, mesh, shardings, optimizer)  # donates the state
    new, metrics = sharded(sharding.put_global(state, shardings), sharding.host_local_to_global(host, mesh))
    np.testing.assert_allclose(metrics["train/loss"], metrics1["train/loss"], rtol=1e-5, atol=1e-7)
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(new1.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CONFIGS["memory"])
def test_paper_configs_declare_a_chip_and_divide_their_mesh(name):
    config = load_config(name)
    assert config.mesh.devices > 0 and sharding.hbm_bytes(config.mesh.chip) > 0
    shape = sharding.mesh_shape(config.mesh, config.mesh.devices)
    mesh = AbstractMesh(shape, sharding.AXES)
    assert memory.undivided(config, memory.model_config(config), mesh) == []


def test_undivided_names_what_does_not_split():
    config = load_config("qwen2p5_7b_r2")
    model_cfg = memory.model_config(config)
    config.train.micro_batches = 7  # 2,560 rows
    config.rollout.slots = 100
    problems = memory.undivided(config, model_cfg, AbstractMesh((1, 24, 3), sharding.AXES))
    text = "\n".join(problems)
    assert "trajectory rows 2560" in text and "rollout.slots 100" in text and "num_kv_heads 4" in text
    assert "layers/wq" in text  # 3,584 does not split 24 ways
    with pytest.raises(sharding.ShardingError, match="mesh.chip"):
        sharding.hbm_bytes("tpu9")


@pytest.mark.slow  # compiles four programs per config on 64-128 fake devices: ~40 s each on 2 CPU cores
@pytest.mark.parametrize("name", CONFIGS["memory"])
def test_paper_configs_fit_their_chips_with_headroom(name):
    figures = memory.measure(name, load_config(name))
    assert figures[f"{name}_undivided"] == 0
    assert figures[f"{name}_headroom"] >= 0.10, {k: v for k, v in figures.items() if k.endswith("_bytes")}


@pytest.mark.slow  # one subprocess compiling the small config's programs: ~25 s on 2 CPU cores
def test_quick_suite():
    figures = memory.run(quick=True)
    assert figures["small_undivided"] == 0 and 0 < figures["small_headroom"] < 1
    phases = [figures[f"small_{p}_phase_bytes"] for p in ("train_step", "decode", "append", "refiner")]
    assert figures["small_peak_bytes_per_device"] == max(phases)
