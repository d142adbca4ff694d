"""Decoder parity with transformers' PyTorch models, and KV-cache decoding equal to full forwards."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from searchr2_jax.models import decoder, hf_io, kv_cache
from searchr2_jax.models.config import ConfigError, DecoderConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

BASE = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=256, rms_norm_eps=1e-6)

HF_CONFIGS = {
    # GQA, untied, rope theta != default
    "llama_gqa_untied": dict(BASE, architectures=["LlamaForCausalLM"], model_type="llama", num_key_value_heads=2,
                             rope_theta=50000.0, tie_word_embeddings=False),
    # llama3 rope scaling, tied embeddings, head_dim != hidden/heads
    "llama3_scaled_tied": dict(BASE, architectures=["LlamaForCausalLM"], model_type="llama", num_key_value_heads=1,
                               head_dim=24, tie_word_embeddings=True, rope_theta=500000.0,
                               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
    # q/k/v bias, tied
    "qwen2_bias_tied": dict(BASE, architectures=["Qwen2ForCausalLM"], model_type="qwen2", num_key_value_heads=2,
                            tie_word_embeddings=True, rope_theta=1000000.0),
    # q/k RMSNorm, head_dim != hidden/heads, untied
    "qwen3_qknorm": dict(BASE, architectures=["Qwen3ForCausalLM"], model_type="qwen3", num_key_value_heads=2,
                         head_dim=32, tie_word_embeddings=False, rope_theta=1000000.0),
    # q/k/v and o_proj biases (Llama's attention_bias), GQA, tied
    "llama_attention_bias": dict(BASE, architectures=["LlamaForCausalLM"], model_type="llama", num_key_value_heads=2,
                                 tie_word_embeddings=True, attention_bias=True),
    # gate/up/down biases (Llama's mlp_bias), untied
    "llama_mlp_bias": dict(BASE, architectures=["LlamaForCausalLM"], model_type="llama", num_key_value_heads=4,
                           tie_word_embeddings=False, mlp_bias=True),
    # Qwen3 under attention_bias: o_proj gets a bias too (unlike Qwen2)
    "qwen3_attention_bias": dict(BASE, architectures=["Qwen3ForCausalLM"], model_type="qwen3", num_key_value_heads=2,
                                 head_dim=16, tie_word_embeddings=True, attention_bias=True),
}


def _torch_model(hf_cfg):
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(**{k: v for k, v in hf_cfg.items() if k != "architectures"})
    config.architectures = hf_cfg["architectures"]
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
    with torch.no_grad():  # random biases/norm weights so those code paths are really exercised
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_logits_match_transformers(name, tmp_path):
    hf_cfg = HF_CONFIGS[name]
    model = _torch_model(hf_cfg)
    model.save_pretrained(tmp_path, safe_serialization=True)
    cfg, params = hf_io.load_params(str(tmp_path))
    assert cfg.architecture == hf_cfg["architectures"][0]
    tokens = np.random.default_rng(0).integers(0, BASE["vocab_size"], size=(2, 40))
    with torch.no_grad():
        ref = model(torch.tensor(tokens)).logits.numpy()
    ours, _ = jax.jit(decoder.apply, static_argnums=0)(cfg, params, jnp.asarray(tokens))
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=0)


def test_safetensors_round_trip_is_exact(tmp_path):
    cfg = DecoderConfig.from_hf(HF_CONFIGS["qwen2_bias_tied"])
    params = decoder.init_params(cfg, jax.random.key(1))
    hf_io.save_params(str(tmp_path), cfg, params)
    cfg2, params2 = hf_io.load_params(str(tmp_path))
    assert cfg2 == cfg
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _tiny(**kw):
    return DecoderConfig.from_hf(HF_CONFIGS["llama_gqa_untied"], **kw)


@pytest.mark.slow
@pytest.mark.parametrize("name,per_layer", [("llama_gqa_untied", False)] + [(n, True) for n in HF_CONFIGS])
def test_cached_decoding_equals_full_forward(name, per_layer):
    cfg = DecoderConfig.from_hf(HF_CONFIGS[name])
    params = decoder.init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(1)
    seq = jnp.asarray(rng.integers(0, cfg.vocab_size, size=(3, 24)))
    full, _ = decoder.apply(cfg, params, seq)
    if per_layer:  # generation's layout: each layer's matrices in buffers of their own
        params = decoder.per_layer_weights(cfg, params)
        with pytest.raises(ValueError, match="per_layer_weights"):
            decoder.apply(cfg, params, seq)
    # Rows start at different positions: prompts of 5, 9 and 13 tokens, then token-by-token, then a chunk of 4.
    prompt_len = np.array([5, 9, 13])
    cache = kv_cache.init_cache(cfg, 3, 32)
    mask = jnp.arange(13)[None, :] < prompt_len[:, None]
    step = jax.jit(decoder.apply, static_argnums=0)
    logits, cache = step(cfg, params, seq[:, :13], None, mask, cache)
    for b in range(3):
        np.testing.assert_allclose(logits[b, : prompt_len[b]], full[b, : prompt_len[b]], atol=1e-5)
    pos = prompt_len.copy()
    for _ in range(3):  # token by token
        tok = seq[np.arange(3), pos][:, None]
        logits, cache = step(cfg, params, tok, None, None, cache)
        for b in range(3):
            np.testing.assert_allclose(logits[b, 0], full[b, pos[b]], atol=1e-5)
        pos += 1
    chunk = jnp.stack([seq[b, pos[b]: pos[b] + 4] for b in range(3)])
    valid = jnp.asarray([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], bool)  # right-padded chunk of uneven lengths
    logits, cache = step(cfg, params, chunk, None, valid, cache)
    for b in range(3):
        n = int(valid[b].sum())
        np.testing.assert_allclose(logits[b, :n], full[b, pos[b]: pos[b] + n], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(cache.lengths), pos + np.asarray(valid.sum(1)))


@pytest.mark.slow
def test_left_padded_prefill_matches_unpadded():
    cfg = _tiny()
    params = decoder.init_params(cfg, jax.random.key(0))
    a = jnp.asarray(np.random.default_rng(2).integers(0, cfg.vocab_size, size=(1, 7)))
    padded = jnp.concatenate([jnp.zeros((1, 5), jnp.int32), a], axis=1)
    mask = jnp.arange(12)[None] >= 5
    ref, _ = decoder.apply(cfg, params, a)
    last, cache = decoder.prefill(cfg, params, padded, mask, kv_cache.init_cache(cfg, 1, 16))
    np.testing.assert_allclose(last[0], ref[0, -1], atol=1e-5)
    assert int(cache.lengths[0]) == 7
    # The padded full forward (no cache) agrees too: positions count valid tokens only.
    full, _ = decoder.apply(cfg, params, padded, mask=mask)
    np.testing.assert_allclose(full[0, 5:], ref[0], atol=1e-5)


@pytest.mark.slow
def test_packed_branches_read_their_shared_prefix_as_the_standalone_sequences_do():
    """Row [a b c d | x y | z]: segment 0 is `a b c d`, branch 1 `x y` continues `a b` (shared range [0, 2)),
    branch 2 `z` stands alone. Each token's logits equal those of its own standalone sequence."""
    cfg = _tiny()
    params = decoder.init_params(cfg, jax.random.key(0))
    a, b, c, d, x, y, z = (int(v) for v in np.random.default_rng(3).integers(0, cfg.vocab_size, size=7))
    row = jnp.asarray([[a, b, c, d, x, y, z, 0, z, a, b, y]])
    # ... and the same again after a standalone `z a`: `y` continues `a b` at row indices 9..10.
    packing = decoder.Packing(positions=jnp.asarray([[0, 1, 2, 3, 2, 3, 0, 0, 0, 0, 1, 2]]),
                              segment_ids=jnp.asarray([[0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 5, 6]]),
                              shared_start=jnp.asarray([[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]]),
                              shared_end=jnp.asarray([[0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 0, 11]]))
    packed, _ = decoder.apply(cfg, params, row, mask=jnp.arange(12)[None] != 7, packing=packing)
    for seq, at_row, at_seq in (([a, b, c, d], [0, 1, 2, 3], [0, 1, 2, 3]), ([a, b, x, y], [4, 5], [2, 3]),
                                ([z], [6], [0]), ([z], [8], [0]), ([a, b, y], [9, 10, 11], [0, 1, 2])):
        ref, _ = decoder.apply(cfg, params, jnp.asarray([seq]))
        np.testing.assert_allclose(packed[0, jnp.asarray(at_row)], ref[0, jnp.asarray(at_seq)], atol=1e-5)


@pytest.mark.parametrize("block", [3, 4, 5])
def test_causal_blocks_equal_dense_attention_with_their_gradient(block):
    """Query blocks (`attention_block`, a size that divides the row or leaves a short last block) give the dense
    pass's hidden states on every valid token, and the same gradient, over padded and packed rows."""
    dense, blocked = _tiny(attention_block=0), _tiny(attention_block=block)
    params = decoder.init_params(dense, jax.random.key(0))
    rng = np.random.default_rng(4)
    tokens = jnp.asarray(rng.integers(0, dense.vocab_size, size=(2, 12)))
    mask = jnp.asarray([[True] * 12, [False] * 2 + [True] * 8 + [False] * 2])  # left and right padding
    # Row 0 packs a sequence, a branch continuing its first 3 tokens, and a sequence of its own.
    packing = decoder.Packing(positions=jnp.asarray([[0, 1, 2, 3, 4, 3, 4, 5, 0, 1, 2, 3], list(range(12))]),
                              segment_ids=jnp.asarray([[0] * 5 + [1] * 3 + [2] * 4, [0] * 12]),
                              shared_start=jnp.zeros((2, 12), jnp.int32),
                              shared_end=jnp.asarray([[0] * 5 + [3] * 3 + [0] * 4, [0] * 12]))
    weights = jnp.asarray(rng.normal(size=(2, 12, 1)), jnp.float32) * mask[..., None]

    def run(cfg, p):
        hidden, _ = decoder.forward_hidden(cfg, p, tokens, mask=mask, packing=packing)
        return jnp.sum(hidden * weights), hidden

    (loss_d, hid_d), grad_d = jax.value_and_grad(functools.partial(run, dense), has_aux=True)(params)
    (loss_b, hid_b), grad_b = jax.value_and_grad(functools.partial(run, blocked), has_aux=True)(params)
    np.testing.assert_allclose(np.asarray(hid_b)[np.asarray(mask)], np.asarray(hid_d)[np.asarray(mask)], atol=1e-5)
    np.testing.assert_allclose(loss_b, loss_d, rtol=1e-5)
    for gb, gd in zip(jax.tree.leaves(grad_b), jax.tree.leaves(grad_d)):
        np.testing.assert_allclose(gb, gd, rtol=1e-4, atol=1e-6 * np.abs(gd).max())  # summation order only


@pytest.mark.parametrize("t,block,blocks", [(12, 3, 4), (12, 5, 3), (40, 1, 14), (12, 12, 1), (12, 0, 1)])
def test_causal_blocks_count(t, block, blocks):
    """A row takes ceil(T / block) blocks, at most MAX_QUERY_BLOCKS (then of a multiple of the block size); 0 or a
    block as long as the row is one dense block. Each block is two products."""
    cfg = _tiny(attention_block=block)
    q = jnp.zeros((1, t, cfg.num_heads, cfg.head_dim))
    kv = jnp.zeros((1, cfg.num_kv_heads, t, cfg.head_dim))
    attend = lambda q, k, v, m: decoder.causal_blocks(q, k, v, m, cfg)  # noqa: E731
    jaxpr = jax.make_jaxpr(attend)(q, kv, kv, jnp.ones((1, t, t), bool))
    assert sum(e.primitive.name == "dot_general" for e in jaxpr.eqns) == 2 * blocks


def test_negative_attention_block_is_refused():
    with pytest.raises(ConfigError, match="attention_block"):
        _tiny(attention_block=-1)


@pytest.mark.slow
def test_remat_and_bf16_run():
    cfg = _tiny(remat=True, dtype="bfloat16")
    params = decoder.init_params(cfg, jax.random.key(0))
    tokens = jnp.ones((2, 8), jnp.int32)
    loss = lambda p: decoder.apply(cfg, p, tokens)[0].mean()
    grads = jax.grad(loss)(params)
    assert all(np.isfinite(np.asarray(g, np.float32)).all() for g in jax.tree.leaves(grads))


def test_value_head_shape():
    cfg = _tiny(value_head=True)
    params = decoder.init_params(cfg, jax.random.key(0))
    hidden, _ = decoder.forward_hidden(cfg, params, jnp.ones((2, 5), jnp.int32))
    assert decoder.values(cfg, params, hidden).shape == (2, 5)


def test_bad_configs_name_the_field():
    with pytest.raises(ConfigError, match="GPT2LMHeadModel"):
        DecoderConfig.from_hf(dict(BASE, architectures=["GPT2LMHeadModel"]))
    broken = dict(HF_CONFIGS["llama_gqa_untied"])
    del broken["intermediate_size"]
    with pytest.raises(ConfigError, match="intermediate_size"):
        DecoderConfig.from_hf(broken)


def test_bad_checkpoints_name_the_tensor(tmp_path):
    cfg = DecoderConfig.from_hf(HF_CONFIGS["qwen2_bias_tied"])
    hf_io.save_params(str(tmp_path), cfg, decoder.init_params(cfg, jax.random.key(0)))
    # A tokenizer-sized vocabulary must not silently resize the embedding.
    with pytest.raises(hf_io.CheckpointError, match=r"model.embed_tokens.weight.*\(120, 64\).*\(97, 64\)"):
        hf_io.load_params(str(tmp_path), cfg.replace(vocab_size=120))
    tensors = hf_io.to_hf_tensors(cfg, decoder.init_params(cfg, jax.random.key(0)))
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    from safetensors.numpy import save_file

    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(hf_io.CheckpointError, match="model.layers.1.self_attn.k_proj.bias"):
        hf_io.load_params(str(tmp_path))
