"""Memory suite: each paper config's device memory, from compiled programs, before a pod is rented.

For each paper config (configs/qwen2p5_7b_r2.py, qwen3_8b_r2.py, qwen2p5_32b_r2.py: `benchmarks.CONFIGS["memory"]`,
which launch/benchmark.py loads and passes in) a subprocess with the config's `mesh.devices` fake CPU devices builds its declared mesh and AOT-compiles, from `jax.ShapeDtypeStruct`s that carry
the trainer's shardings (no weight is ever allocated):

  train_step  the RL step as the trainer jits it (`make_train_step`: the config's micro-batches, remat, dtype, the
              KL's reference params, the optax state, state donated), given the mesh (`make_train_step(mesh=)`,
              which keeps the rows split over data x fsdp: without it the step does not fit any pod), on the worst
              step batch the config allows:
              rows = prompts_per_step x group_size at the tokens of `step_shapes` (follow-up meta-actions packed in
              them), and for table12 prompts the meta-action rows of `rollout/types.meta_rows` at
              bucket(refiner.max_prompt_tokens) tokens;
  decode      `sampler.decode_segment` over every slot (a mesh decodes all slots in one call) with the attention
              window at the whole cache (`rollout.slots` x capacity, the engine's capacity);
  append      `sampler.append_rows` for the worst admission: every slot at once, each a whole prompt
              (bucket(max_prompt_tokens) tokens) into a cache window of that size;
  refiner     the Meta-Refiner's scoring pass (`refiner._prompt_end_logprobs`, table12 prompts) over
              `refiner.score_batch` finished slots (all of them when 0) at bucket(refiner.max_prompt_tokens) tokens,
              on the f32 master params. A follow-up prompt is scored in the slots, by the append program.

Bytes are per device. A program's figure is `argument + output + temp - alias` of its `memory_analysis()` (alias:
donated arguments the outputs reuse); XLA's `peak_memory_in_bytes` is not used, since on CPU it leaves out the
temporaries. What is live besides a program's arguments is added per phase of a training step:

  train step   train_step                                   (the rollout's slots and bf16 weights are freed by then)
  decode       decode + TrainState - the f32 leaves decode shares with it (embedding, head, norms)
  append       append + the same
  refiner      refiner + TrainState - params + the bf16 layer weights + the slot state (the rollout is still live)

TrainState = f32 master params, AdamW's two moments and, with the KL on, the f32 reference params. The peak is the
largest phase; `NAME_headroom` = 1 - peak / HBM of `mesh.chip` (models/sharding.CHIP_HBM_BYTES). The figures are
XLA:CPU's buffer assignment of the same SPMD program: a TPU or GPU compiler fuses, lays out and schedules
differently (it may also keep bf16 dots in bf16 where XLA:CPU upcasts), so they are an estimate, and the 10% headroom
the tests ask for is the margin for that difference. Not counted: the LLM judge (`reward.judge="llm"`), whose model
hf_io loads unsharded in f32 on the default device, and the retriever, which runs on the host.

`--quick` runs one small config (a 4-layer Qwen2-shaped model) on 8 fake devices instead. On an accelerator
(`jax.default_backend() != "cpu"`) the suite also compiles and runs that small config's train step on the one
device: `small_predicted_bytes` (the formula above) against `small_measured_peak_bytes` (`peak_bytes_in_use`).

  NAME_peak_bytes_per_device, NAME_hbm_bytes, NAME_headroom, NAME_PROGRAM_bytes (train_step, decode, append,
  refiner), NAME_PROGRAM_temp_bytes, NAME_PHASE_phase_bytes, NAME_state_bytes, NAME_slot_state_bytes,
  NAME_gen_weights_bytes, NAME_undivided (mesh axes or batch splits that do not divide; 0 when all do),
  NAME_PROGRAM_compile_s
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from searchr2_jax.components import run_settings
from searchr2_jax.config import base_config
from searchr2_jax.models import decoder, sharding
from searchr2_jax.models.config import DecoderConfig
from searchr2_jax.rl import state as state_lib
from searchr2_jax.rl.train_step import MetaRows, StepBatch
from searchr2_jax.rollout import refiner as refiner_lib
from searchr2_jax.rollout import sampler
from searchr2_jax.rollout import types as T
from searchr2_jax.trainer import jit_train_step

QUICK = "small"
QUICK_DEVICES = 8

# The backbones' HF config.json fields (as published with each model); `DecoderConfig.from_hf` reads them, so the
# suite never needs the checkpoints. Keyed by the folder name a config's model.hf_path ends with.
BACKBONES = {
    "Qwen2.5-7B": dict(architectures=["Qwen2ForCausalLM"], vocab_size=152_064, hidden_size=3584,
                       intermediate_size=18_944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, max_position_embeddings=131_072, rope_theta=1_000_000.0,
                       rms_norm_eps=1e-6, tie_word_embeddings=False),
    "Qwen3-8B": dict(architectures=["Qwen3ForCausalLM"], vocab_size=151_936, hidden_size=4096,
                     intermediate_size=12_288, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=128, max_position_embeddings=40_960, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                     tie_word_embeddings=False, attention_bias=False),
    "Qwen2.5-32B-Instruct": dict(architectures=["Qwen2ForCausalLM"], vocab_size=152_064, hidden_size=5120,
                                 intermediate_size=27_648, num_hidden_layers=64, num_attention_heads=40,
                                 num_key_value_heads=8, max_position_embeddings=32_768, rope_theta=1_000_000.0,
                                 rms_norm_eps=1e-6, tie_word_embeddings=False),
    # The quick mode's model: Qwen2's layout at a size that compiles in seconds and runs on any accelerator.
    "small-qwen2": dict(architectures=["Qwen2ForCausalLM"], vocab_size=16_384, hidden_size=512,
                        intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                        max_position_embeddings=4096, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                        tie_word_embeddings=False),
}

# Stop sequences in the decode program: the count and length are set by the tokenizer and are a few hundred bytes.
_STOPS, _STOP_LEN = 8, 8


# ------------------------------------------------------------------------------------------------ configs


def small_config(devices: int):
    """A paper-shaped config at small sizes: bf16 + remat, GRPO with the KL, a refiner with table12 prompts, mesh
    fsdp x tensor (tensor 2 where the devices allow)."""
    c = base_config()
    tensor = 2 if devices % 2 == 0 and devices > 1 else 1
    c.model.update(dict(hf_path="small-qwen2", dtype="bfloat16", remat=True))
    c.rollout.update(dict(slots=8, max_prompt_tokens=256, max_response_tokens=768))
    c.refiner.update(dict(prompt="table12", max_revisions=1, max_prompt_tokens=512))
    c.rl.update(dict(algo="grpo", group_size=4))
    c.rl.loss.kl_coef = 0.001
    c.train.update(dict(prompts_per_step=8, micro_batches=2))
    c.mesh.update(dict(data=1, fsdp=-1, tensor=tensor, chip="h200", devices=devices))
    return c


def model_config(config) -> DecoderConfig:
    """The DecoderConfig the trainer would read from the backbone's config.json, from BACKBONES' copy of it."""
    m = config.model
    name = os.path.basename(m.hf_path.rstrip("/"))
    if name not in BACKBONES:
        raise KeyError(f"model.hf_path={m.hf_path!r}: no shapes for {name!r} in memory.BACKBONES {sorted(BACKBONES)}")
    return DecoderConfig.from_hf(BACKBONES[name], source=f"memory.BACKBONES[{name!r}]", **run_settings(config))


# ------------------------------------------------------------------------------------------------ shapes


def step_shapes(config, shards: int) -> dict:
    """The largest step batch the config allows, as `Trainer.step_batch` pads it with every trajectory at its
    prompt + response budget: trajectory rows x tokens, and the meta-action rows x tokens of table12 prompts
    (`meta_rows` 0 otherwise). Follow-up meta-actions ride in the trajectory rows (`rollout/types.packed_row`): per
    decision (at most `max_revisions`) a discarded suffix of at most the response budget, a follow-up (counted as
    128 tokens, about 80 with the Qwen tokenizers) and its integer (up to 8 tokens)."""
    rows = config.train.prompts_per_step * config.rl.group_size
    ref, ro = config.refiner, config.rollout
    packed = ref.enabled and ref.prompt == "followup"
    branches = ref.max_revisions * (ro.max_response_tokens + 136) if packed else 0
    table12 = ref.enabled and ref.prompt == "table12"
    return dict(rows=rows, seq_len=T.bucket(ro.max_prompt_tokens + ro.max_response_tokens + branches),
                meta_rows=T.meta_rows(rows, ref.max_revisions, config.train.micro_batches, shards) if table12 else 0,
                meta_len=T.bucket(ref.max_prompt_tokens))


def rollout_shapes(config) -> dict:
    """The engine's slots, cache capacity and response buffer (`RolloutEngine.__init__`). A follow-up refiner
    prompt adds its own length to the capacity: counted here as 128 tokens (about 80 with the Qwen tokenizers)."""
    ro = config.rollout
    followup = 128 if config.refiner.enabled and config.refiner.prompt == "followup" else 0
    return dict(slots=ro.slots, capacity=ro.max_prompt_tokens + ro.max_response_tokens + followup,
                response=ro.max_response_tokens)


def undivided(config, model_cfg: DecoderConfig, mesh) -> list[str]:
    """What does not split evenly on `mesh` (a Mesh or AbstractMesh): parameter dimensions whose rule's mesh axis
    `fit_spec` would drop (that parameter then replicates over it), and batch dimensions (micro-batches, meta rows,
    slots) that do not divide. Empty when the config fits its mesh exactly."""
    out = []
    params = sharding.abstract_params(model_cfg)
    wanted = sharding.match_partition_rules(sharding.DECODER_RULES, params)
    fitted = sharding.match_partition_rules(sharding.DECODER_RULES, params, mesh)
    padded = lambda spec, n: tuple(spec) + (None,) * (n - len(spec))  # noqa: E731 (fit_spec drops trailing Nones)
    for (path, leaf), want, got in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(wanted),
                                       jax.tree.leaves(fitted)):
        if padded(want, leaf.ndim) != padded(got, leaf.ndim):
            out.append(f"{sharding.key_path_str(path)} {leaf.shape}: {want} does not divide, fitted to {got}")
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    s = step_shapes(config, shards)
    micro = config.train.micro_batches
    for what, n in (("trajectory rows", s["rows"]), ("meta-action rows", s["meta_rows"])):
        if n and (n % micro or (n // micro) % shards):
            out.append(f"{what} {n} / train.micro_batches {micro} do not split over data x fsdp = {shards}")
    if config.rollout.slots % shards:
        out.append(f"rollout.slots {config.rollout.slots} do not split over data x fsdp = {shards}")
    kv = model_cfg.num_kv_heads
    if kv % mesh.shape["tensor"]:
        out.append(f"num_kv_heads {kv} do not split over tensor = {mesh.shape['tensor']} (the KV cache replicates)")
    return out


# ------------------------------------------------------------------------------------------------ abstract inputs


def device_bytes(tree) -> int:
    """Bytes one device holds of a pytree of sharded ShapeDtypeStructs or arrays (the largest shard of each)."""
    def one(x):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        return math.prod(shape) * x.dtype.itemsize

    return sum(one(x) for x in jax.tree.leaves(tree))


def abstract_state(config, model_cfg: DecoderConfig, mesh, optimizer):
    """TrainState as ShapeDtypeStructs with the trainer's shardings (`tree_shardings` of the state)."""
    with_ref = config.rl.loss.kl_coef > 0
    shapes = jax.eval_shape(lambda k: state_lib.init_state(decoder.init_params(model_cfg, k), optimizer, k, with_ref),
                            jax.random.key(0))
    return sharding.shape_dtype(shapes, sharding.tree_shardings(shapes, mesh))


def abstract_batch(config, mesh) -> StepBatch:
    """A StepBatch of ShapeDtypeStructs with `Trainer.step_batch`'s dtypes, rows over data x fsdp."""
    s = step_shapes(config, mesh.shape["data"] * mesh.shape["fsdp"])
    rows = sharding.batch_sharding(mesh, 2)
    seq = lambda n, t, dt: jax.ShapeDtypeStruct((n, t), dt, sharding=rows)  # noqa: E731
    n, t, m, q = s["rows"], s["seq_len"], s["meta_rows"], s["meta_len"]
    f32, i32 = jnp.float32, jnp.int32
    meta_rows = MetaRows(seq(m, q, i32), seq(m, q, jnp.bool_), *(seq(m, q, f32) for _ in range(3))) if m else None
    return StepBatch(seq(n, t, i32), seq(n, t, jnp.bool_), decoder.Packing(*(seq(n, t, i32) for _ in range(4))),
                     *(seq(n, t, f32) for _ in range(6)), meta_rows=meta_rows)


def gen_weights(model_cfg: DecoderConfig, params):
    """`decoder.per_layer_weights` of sharded abstract params: each layer matrix's L per-layer bf16 copies keep the
    matrix's sharding without its layer axis (what the eager slices in the rollout get)."""
    def per_layer(x):
        if x.ndim != 3:
            return x
        spec = P(*tuple(x.sharding.spec)[1:])
        return tuple(jax.ShapeDtypeStruct(x.shape[1:], model_cfg.jnp_dtype, sharding=NamedSharding(x.sharding.mesh,
                                                                                                   spec))
                     for _ in range(x.shape[0]))

    return dict(params, layers={k: per_layer(w) for k, w in params["layers"].items()})


def abstract_slots(config, model_cfg: DecoderConfig, mesh) -> sampler.SlotState:
    """The engine's SlotState with its shardings (`RolloutEngine._slot_shardings`): slots over data x fsdp, the
    cache's kv heads over tensor."""
    r = rollout_shapes(config)
    shapes = jax.eval_shape(lambda: sampler.init_slots(model_cfg, r["slots"], r["capacity"], r["response"]))
    cache = sharding.cache_shardings(model_cfg, mesh, r["slots"], r["capacity"])
    shardings = shapes._replace(cache=cache, **{k: sharding.batch_sharding(mesh, v.shape)
                                                for k, v in shapes._asdict().items() if k != "cache"})
    return sharding.shape_dtype(shapes, shardings)


def _host(shape, dtype):
    """A host (numpy) argument: no sharding of its own, as the engine passes its row ids and chunks."""
    return jax.ShapeDtypeStruct(shape, dtype)


# ------------------------------------------------------------------------------------------------ programs


def analysis_bytes(stats) -> dict:
    """Per-device bytes of a compiled program's memory analysis (see the module docstring for the formula)."""
    a, o, t, al = (int(getattr(stats, f"{k}_size_in_bytes")) for k in ("argument", "output", "temp", "alias"))
    return dict(bytes=a + o + t - al, argument_bytes=a, output_bytes=o, temp_bytes=t, alias_bytes=al)


def compile_programs(config, model_cfg: DecoderConfig, mesh) -> dict:
    """Compiles the train step, decode, append and refiner programs on `mesh` from abstract inputs; returns
    {program: analysis_bytes | compile_s} and the resident buffers' bytes (`state`, `params`, `slot_state`,
    `gen_weights`, `shared_weights`)."""
    optimizer = state_lib.make_optimizer(config.optim, max(config.train.steps, 1))
    state = abstract_state(config, model_cfg, mesh, optimizer)
    batch = abstract_batch(config, mesh)
    slots = abstract_slots(config, model_cfg, mesh)
    gen = gen_weights(model_cfg, state.params)
    r = rollout_shapes(config)
    B = r["slots"]
    out = {}

    def analyse(name, lowered):
        t0 = time.perf_counter()
        compiled = lowered.compile()
        out[name] = dict(analysis_bytes(compiled.memory_analysis()), compile_s=time.perf_counter() - t0)
        return compiled

    step = jit_train_step(config, model_cfg, mesh, jax.tree.map(lambda x: x.sharding, state), optimizer)
    analyse("train_step", step.lower(state, batch))

    rng = jax.eval_shape(lambda: jax.random.key(0))
    stops = sampler.StopTable(_host((_STOPS, _STOP_LEN), jnp.int32), _host((_STOPS,), jnp.int32))
    sp = sampler.SamplingParams(_host((), jnp.float32), _host((), jnp.float32))
    sampling = sampler.Sampling(params=sp, stops=stops, rng=rng)
    shape = sampler.SegmentShape(max_steps=config.rollout.segment_steps, window=r["capacity"])
    analyse("decode", sampler.decode_segment.lower(
        model_cfg, gen, slots, sampling, shape, None, _host((), jnp.int32), _host((B,), jnp.int32)))

    chunk = T.bucket(config.rollout.max_prompt_tokens, minimum=1, fine=True)
    window = sampler.attention_window(np.asarray([chunk]), 0, r["capacity"])
    flag = _host((B,), jnp.bool_)
    append = sampler.AppendBatch(rows=_host((B,), jnp.int32), chunk=_host((B, chunk), jnp.int32),
                                  valid=_host((B, chunk), jnp.bool_), reset_cache=flag, clear_response=flag,
                                  generated=flag, run=flag)
    analyse("append", sampler.append_rows.lower(model_cfg, gen, slots, append, window=window))

    if config.refiner.enabled and config.refiner.prompt == "table12":
        L = T.bucket(config.refiner.max_prompt_tokens)
        n = T.bucket(min(B, config.refiner.score_batch or B), minimum=1)
        cands = config.rollout.max_turns + 1
        analyse("refiner", refiner_lib._prompt_end_logprobs.lower(
            model_cfg, state.params, _host((n, L), jnp.int32), _host((n, L), jnp.bool_), _host((cands,), jnp.int32)))

    layer_mats = {k for k, w in state.params["layers"].items() if w.ndim == 3}
    shared = dict(state.params, layers={k: w for k, w in state.params["layers"].items() if k not in layer_mats})
    out["resident"] = dict(state=device_bytes(state), params=device_bytes(state.params),
                           slot_state=device_bytes(slots),
                           gen_weights=device_bytes({k: gen["layers"][k] for k in layer_mats}),
                           shared_weights=device_bytes(shared))
    return out


def phase_bytes(programs: dict) -> dict:
    """Per-device bytes live in each phase of a training step (see the module docstring)."""
    res = programs["resident"]
    out = {"train_step": programs["train_step"]["bytes"]}
    for name in ("decode", "append"):
        out[name] = programs[name]["bytes"] + res["state"] - res["shared_weights"]
    if "refiner" in programs:
        out["refiner"] = (programs["refiner"]["bytes"] + res["state"] - res["params"] + res["gen_weights"]
                          + res["slot_state"])
    return out


def config_figures(name: str, config, mesh) -> dict:
    """The suite's figures for one config on `mesh` (its declared one), keyed `NAME_...`."""
    model_cfg = model_config(config)
    programs = compile_programs(config, model_cfg, mesh)
    phases = phase_bytes(programs)
    peak = max(phases.values())
    hbm = sharding.hbm_bytes(config.mesh.chip)
    figs = {"peak_bytes_per_device": peak, "hbm_bytes": hbm, "headroom": 1.0 - peak / hbm,
            "undivided": len(undivided(config, model_cfg, mesh)), "devices": mesh.size,
            "num_params": model_cfg.num_params()}
    for prog, a in programs.items():
        if prog == "resident":
            figs.update({f"{k}_bytes": v for k, v in a.items()})
            continue
        figs.update({f"{prog}_bytes": a["bytes"], f"{prog}_temp_bytes": a["temp_bytes"],
                     f"{prog}_compile_s": round(a["compile_s"], 2)})
    figs.update({f"{k}_phase_bytes": v for k, v in phases.items()})
    return {f"{name}_{k}": v for k, v in figs.items()}


# ------------------------------------------------------------------------------------------------ processes


def measure(name: str, config) -> dict:
    """`config_figures` of `config` (named `name`) in a subprocess with the config's `mesh.devices` fake CPU devices
    (the device count is fixed when JAX starts), as tests/processes.py runs its workers; the config goes over stdin
    as JSON."""
    devices = config.mesh.devices
    if devices < 1:
        raise ValueError(f"{name}: mesh.devices={devices}: the memory suite needs the pod size")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=os.pathsep.join([root] + [p for p in sys.path if p]))
    done = subprocess.run([sys.executable, "-m", "searchr2_jax.benchmarks.memory", name], env=env, cwd=root,
                          input=config.to_json(), capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"memory suite worker for {name} failed:\n{done.stderr[-5000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _worker(name: str) -> None:
    config = ml_collections.ConfigDict(json.loads(sys.stdin.read()))
    mesh = sharding.make_mesh(config.mesh, jax.devices()[: config.mesh.devices])
    print(json.dumps(config_figures(name, config, mesh)))


def _fake(s: jax.ShapeDtypeStruct, vocab: int) -> np.ndarray:
    """Host values for one StepBatch field: token ids, all-valid masks, zero log-probs and advantages (the bytes a
    step uses do not depend on the values)."""
    if s.dtype == jnp.int32:
        return np.random.default_rng(0).integers(0, vocab, s.shape, dtype=np.int32)
    return np.ones(s.shape, s.dtype) if s.dtype == jnp.bool_ else np.zeros(s.shape, s.dtype)


def measured_small_run() -> dict:
    """On the one accelerator: the small config's train step compiled from abstract inputs (predicted bytes), then
    run on real arrays (the allocator's peak). The state is made by one jitted init, so no host copy or eager
    intermediate sets the peak before the step does."""
    config = small_config(1)
    model_cfg = model_config(config)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    optimizer = state_lib.make_optimizer(config.optim, max(config.train.steps, 1))
    state = abstract_state(config, model_cfg, mesh, optimizer)
    batch = abstract_batch(config, mesh)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    step = jit_train_step(config, model_cfg, mesh, shardings, optimizer)
    predicted = analysis_bytes(step.lower(state, batch).compile().memory_analysis())["bytes"]
    with_ref = config.rl.loss.kl_coef > 0
    init = jax.jit(lambda k: state_lib.init_state(decoder.init_params(model_cfg, k), optimizer, k, with_ref),
                   out_shardings=shardings)
    real_state = init(jax.random.key(0))
    real_batch = jax.tree.map(lambda s: jax.device_put(_fake(s, model_cfg.vocab_size), s.sharding), batch)
    new_state, metrics = step(real_state, real_batch)
    jax.block_until_ready((new_state, metrics))
    stats = jax.devices()[0].memory_stats() or {}
    return {"small_predicted_bytes": predicted, "small_measured_peak_bytes": stats.get("peak_bytes_in_use", -1),
            "small_device_bytes_limit": stats.get("bytes_limit", -1)}


def run(quick: bool = False, configs: dict | None = None) -> dict:
    """`configs`: the paper configs by name (launch/benchmark.py loads `benchmarks.CONFIGS["memory"]`); `quick`
    measures the small config instead."""
    figures = {}
    todo = {QUICK: small_config(QUICK_DEVICES)} if quick else dict(configs or {})
    for name, config in todo.items():
        t0 = time.perf_counter()
        figures.update(measure(name, config))
        figures[f"{name}_wall_s"] = round(time.perf_counter() - t0, 2)
    if jax.default_backend() != "cpu":
        figures.update(measured_small_run())
    return figures


if __name__ == "__main__":
    _worker(sys.argv[1])
