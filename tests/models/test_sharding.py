"""Sharded decoder = unsharded decoder: meshes on 8 fake CPU devices, rule-table placement, HF loads, two processes."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from searchr2_jax.models import decoder, hf_io
from searchr2_jax.models import sharding as sh
from searchr2_jax.models.config import DecoderConfig

# Dimensions chosen so every rule really shards on the (2, 2, 2) and (1, 4, 2) meshes: V=128, D=64, F=128,
# H*hd=64, K*hd=32, and 2 kv heads over tensor=2. Qwen2-style biases exercise the bias rule.
CFG = DecoderConfig(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                    intermediate_size=128, architecture="Qwen2ForCausalLM", attention_bias=True,
                    tie_word_embeddings=False, rope_theta=10000.0)
MESHES = [(8, 1, 1), (2, 2, 2), (1, 4, 2)]
B, T = 8, 12


def _params(cfg=CFG):
    return decoder.init_params(cfg, jax.random.key(0))


def _tokens():
    return jnp.asarray(np.random.default_rng(0).integers(0, CFG.vocab_size, size=(B, T)), jnp.int32)


@pytest.fixture(scope="module")
def reference():
    params = _params()
    tokens = _tokens()
    full, _ = jax.jit(decoder.apply, static_argnums=0)(CFG, params, tokens)
    return params, tokens, np.asarray(full)


# ------------------------------------------------------------------------------------------------ mesh


def test_mesh_from_config_and_errors():
    import ml_collections

    mesh = sh.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=2, tensor=2)))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert sh.mesh_shape((1, -1, 2), 8) == (1, 4, 2)
    with pytest.raises(sh.ShardingError, match=r"mesh\.data"):
        sh.make_mesh((3, 1, 1))
    with pytest.raises(sh.ShardingError, match=r"mesh\.fsdp"):
        sh.make_mesh((-1, 3, 1))
    with pytest.raises(sh.ShardingError, match=r"mesh: .*do not match the 8 devices"):
        sh.make_mesh(dict(data=2, fsdp=2, tensor=1))
    with pytest.raises(sh.ShardingError, match=r"mesh\.data and mesh\.tensor are both -1"):
        sh.make_mesh((-1, 1, -1))
    with pytest.raises(sh.ShardingError, match=r"tensor"):
        sh.make_mesh(dict(data=8, fsdp=1))


# ------------------------------------------------------------------------------------------------ rules


def test_rule_table_specs_and_fallbacks():
    mesh = sh.make_mesh((2, 2, 2))
    specs = sh.param_specs(CFG, mesh)
    assert specs["embed"] == P("tensor", "fsdp")
    assert specs["lm_head"] == P("fsdp", "tensor")
    assert specs["layers"]["wq"] == P(None, "fsdp", "tensor")
    assert specs["layers"]["w_down"] == P(None, "tensor", "fsdp")
    assert specs["layers"]["bk"] == P(None, "tensor")
    assert specs["layers"]["attn_norm"] == P()
    assert specs["final_norm"] == P()
    # Odd sizes: vocab 97 does not divide tensor=2 (dropped for that dim only), 1 kv head cannot go over tensor.
    odd = CFG.replace(vocab_size=97, num_kv_heads=1, value_head=True)
    specs = sh.param_specs(odd, mesh)
    assert specs["embed"] == P(None, "fsdp")
    assert specs["lm_head"] == P("fsdp")
    assert specs["value_head"] == {"w": P(), "b": P()}
    cache = sh.cache_specs(odd, mesh, batch_size=8, capacity=16)
    assert len(cache.k) == odd.num_layers and cache.k[0] == P(("data", "fsdp"))
    assert sh.cache_specs(CFG, mesh, 8, 16).k[0] == P(("data", "fsdp"), "tensor")
    # A multi-axis entry keeps its longest dividing prefix: batch 2 goes over data only; batch 3 is replicated.
    assert sh.batch_spec(mesh, (2, 5)) == P(("data",))
    assert sh.batch_spec(mesh, (3, 5)) == P()
    assert sh.batch_spec(mesh, 2) == P(("data", "fsdp"), None)


def test_unmatched_parameter_names_it():
    mesh = sh.make_mesh((2, 2, 2))
    rules = [r for r in sh.DECODER_RULES if r[0] != r".*"]
    tree = {"layers": {"wq": jax.ShapeDtypeStruct((2, 8, 8), jnp.float32),
                       "lora_a": jax.ShapeDtypeStruct((2, 8, 4), jnp.float32)}}
    with pytest.raises(sh.ShardingError, match=r"'layers/lora_a' \(2, 8, 4\) matches no partition rule"):
        sh.match_partition_rules(rules, tree, mesh)
    # Optimizer-state paths end with the parameter's path, so the same table covers them; scalars replicate.
    opt_like = ({"mu": {"layers": {"wq": jax.ShapeDtypeStruct((2, 8, 8), jnp.float32)}}},
                {"count": jax.ShapeDtypeStruct((), jnp.int32)})
    specs = sh.match_partition_rules(sh.DECODER_RULES, opt_like, mesh)
    assert specs[0]["mu"]["layers"]["wq"] == P(None, "fsdp", "tensor")
    assert specs[1]["count"] == P()


@pytest.mark.slow
def test_every_bias_and_norm_matches_a_named_rule_and_shards_like_its_weight(tmp_path):
    """Every parameter of configs with every optional module matches a rule before the catch-all; the biased model
    placed by those rules (and loaded from HF into them) computes what it does on one device."""
    mesh = sh.make_mesh((2, 2, 2))
    named = [r for r in sh.DECODER_RULES if r[0] != r".*"]
    llama = CFG.replace(architecture="LlamaForCausalLM", attention_bias=True, mlp_bias=True, value_head=True)
    qwen3 = CFG.replace(architecture="Qwen3ForCausalLM", attention_bias=True, qk_norm=True)
    for cfg in (llama, qwen3):
        sh.match_partition_rules(named, sh.abstract_params(cfg), mesh)  # raises naming an unmatched parameter
    specs = sh.param_specs(llama, mesh)["layers"]
    assert specs["b_gate"] == specs["b_up"] == specs["bq"] == P(None, "tensor")  # their weights' output axis
    assert specs["bo"] == specs["b_down"] == P()
    cfg = llama.replace(value_head=False)
    params = _params(cfg)
    ref, _ = decoder.apply(cfg, params, _tokens())
    hf_io.save_params(str(tmp_path), cfg, params)
    shardings = sh.param_shardings(cfg, mesh)
    _, placed = hf_io.load_params(str(tmp_path), cfg, shardings=shardings)
    assert sh.is_sharded(placed["layers"]["b_up"])
    logits = jax.jit(lambda p, t: decoder.apply(cfg, p, t)[0], in_shardings=(shardings, sh.batch_sharding(mesh, 2)))(
        placed, _tokens())
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ numerics


@pytest.mark.slow
@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_forward_and_cached_decode_match_unsharded(shape, reference):
    params, tokens, full = reference
    mesh = sh.make_mesh(shape)
    shardings = sh.param_shardings(CFG, mesh)
    sharded = sh.shard_params(params, shardings)
    # Placed by the rule table, and really split where the mesh allows it.
    assert sharded["layers"]["wq"].sharding.spec == P(None, "fsdp", "tensor")
    assert sh.is_sharded(sharded["layers"]["w_up"]) == (shape[1] * shape[2] > 1)
    assert sh.is_sharded(sharded["embed"]) == (shape[1] * shape[2] > 1)

    tok_sh = sh.batch_sharding(mesh, 2)
    logit_sh = NamedSharding(mesh, P(sh.BATCH_AXES, None, "tensor"))
    fwd = jax.jit(lambda p, t: decoder.apply(CFG, p, t)[0], in_shardings=(shardings, tok_sh),
                  out_shardings=logit_sh)
    logits = fwd(sharded, jax.device_put(tokens, tok_sh))
    assert logits.sharding.spec == logit_sh.spec and sh.is_sharded(logits)
    np.testing.assert_allclose(np.asarray(logits), full, atol=1e-5, rtol=0)

    # Prefill of 8 tokens (rows of different lengths), then 4 cached single-token steps, all sharded.
    cap = 16
    c_sh = sh.cache_shardings(CFG, mesh, B, cap)
    cache = sh.init_cache_sharded(CFG, mesh, B, cap)
    assert cache.k[0].sharding.spec == c_sh.k[0].spec and sh.is_sharded(cache.k[0])
    prompt_len = np.array([8, 5, 7, 3, 8, 6, 4, 2])
    mask = jnp.arange(8)[None, :] < prompt_len[:, None]
    last_sh = NamedSharding(mesh, P(sh.BATCH_AXES))
    prefill = jax.jit(lambda p, t, m, c: decoder.prefill(CFG, p, t, m, c),
                      in_shardings=(shardings, tok_sh, tok_sh, c_sh), out_shardings=(last_sh, c_sh))
    step = jax.jit(lambda p, t, c: decoder.apply(CFG, p, t, cache=c),
                   in_shardings=(shardings, tok_sh, c_sh), out_shardings=(NamedSharding(mesh, P(sh.BATCH_AXES)), c_sh))
    last, cache = prefill(sharded, jax.device_put(tokens[:, :8], tok_sh), jax.device_put(mask, tok_sh), cache)
    np.testing.assert_allclose(np.asarray(last), full[np.arange(B), prompt_len - 1], atol=1e-5, rtol=0)
    pos = prompt_len.copy()
    for _ in range(4):
        tok = tokens[np.arange(B), pos][:, None]
        logits, cache = step(sharded, jax.device_put(tok, tok_sh), cache)
        assert cache.k[0].sharding.spec == c_sh.k[0].spec
        np.testing.assert_allclose(np.asarray(logits[:, 0]), full[np.arange(B), pos], atol=1e-5, rtol=0)
        pos += 1
    np.testing.assert_array_equal(np.asarray(cache.lengths), pos)


def test_hf_load_into_shardings_equals_unsharded_load(tmp_path):
    cfg = CFG.replace(tie_word_embeddings=True)
    hf_io.save_params(str(tmp_path), cfg, _params(cfg))
    _, plain = hf_io.load_params(str(tmp_path), cfg)
    mesh = sh.make_mesh((1, 4, 2))
    shardings = sh.param_shardings(cfg, mesh)
    _, placed = hf_io.load_params(str(tmp_path), cfg, shardings=shardings)
    assert "lm_head" not in placed
    flat_placed = jax.tree_util.tree_leaves_with_path(placed)
    flat_sh = jax.tree.leaves(shardings)
    for ((path, a), s, b) in zip(flat_placed, flat_sh, jax.tree.leaves(plain)):
        assert a.sharding.is_equivalent_to(s, a.ndim), sh.key_path_str(path)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert placed["layers"]["wk"].sharding.spec == P(None, "fsdp", "tensor") and sh.is_sharded(placed["layers"]["wk"])
    assert len(placed["embed"].addressable_shards[0].data) == cfg.vocab_size // 2


def test_host_local_to_global_single_process():
    mesh = sh.make_mesh((2, 2, 2))
    x = np.arange(8 * 3).reshape(8, 3)
    g = sh.host_local_to_global({"x": x}, mesh)["x"]
    assert g.shape == (8, 3) and g.sharding.spec == P(sh.BATCH_AXES)
    np.testing.assert_array_equal(np.asarray(g), x)
    assert sh.maybe_initialize_distributed() is False  # one process: a no-op
    with pytest.raises(sh.ShardingError, match="process_id=2"):
        sh.maybe_initialize_distributed(2, 2, "127.0.0.1:1")


# ------------------------------------------------------------------------------------------------ two processes


@pytest.mark.slow
def test_two_processes_agree_with_single_process(tmp_path, reference):
    params, tokens, full = reference
    from ..processes import run_workers  # imported here: the worker script imports this module as a top level

    worker = os.path.join(os.path.dirname(__file__), "sharding_worker.py")
    run_workers(worker, [str(tmp_path)], root=os.getcwd(), timeout_s=90, what="two-process sharded forward")
    got = np.load(tmp_path / "logits.npy")
    np.testing.assert_allclose(got, full, atol=1e-5, rtol=0)
    # Each process's devices hold only its own half of the batch (its local rows), together the whole batch.
    held = [np.load(tmp_path / f"rows_{i}.npy").tolist() for i in range(2)]
    assert held == [list(range(B // 2)), list(range(B // 2, B))]
