"""HF checkpoints: every tensor is consumed or the load fails naming it; biases (attention_bias, mlp_bias) load, match
transformers and save back whole."""

import json

import jax
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from searchr2_jax.models import decoder, hf_io
from searchr2_jax.models.config import ConfigError, DecoderConfig

SIZES = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2,
             head_dim=16)
LLAMA = DecoderConfig(**SIZES, architecture="LlamaForCausalLM")
BIASED = LLAMA.replace(attention_bias=True, mlp_bias=True)
QWEN2 = DecoderConfig(**SIZES, architecture="Qwen2ForCausalLM", attention_bias=True, tie_word_embeddings=True)
QWEN3 = DecoderConfig(**SIZES, architecture="Qwen3ForCausalLM", attention_bias=True, qk_norm=True)
BASE_KEYS = {"attn_norm", "mlp_norm", "wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"}


def _read(path) -> dict:
    with safe_open(str(path), "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _checkpoint(tmp_path, cfg, hf_cfg=None, edit=None, name="ckpt"):
    """A folder holding `cfg`'s tensors (changed by `edit(tensors)`) under `hf_cfg` (default: cfg's own config)."""
    folder = tmp_path / name
    hf_io.save_params(str(folder), cfg, decoder.init_params(cfg, jax.random.key(0)))
    if edit is not None:
        tensors = _read(folder / "model.safetensors")
        edit(tensors)
        save_file(tensors, str(folder / "model.safetensors"))
    if hf_cfg is not None:
        (folder / "config.json").write_text(json.dumps(hf_cfg.to_hf()))
    return str(folder)


# ------------------------------------------------------------------------------------------------ layout


@pytest.mark.parametrize("cfg, extra", [
    (LLAMA, set()),
    (LLAMA.replace(attention_bias=True), {"bq", "bk", "bv", "bo"}),
    (LLAMA.replace(mlp_bias=True), {"b_gate", "b_up", "b_down"}),
    (BIASED, {"bq", "bk", "bv", "bo", "b_gate", "b_up", "b_down"}),
    (QWEN2, {"bq", "bk", "bv"}),  # Qwen2's o_proj has no bias
    (QWEN3, {"bq", "bk", "bv", "bo", "q_norm", "k_norm"}),
], ids=["llama", "llama_attn_bias", "llama_mlp_bias", "llama_both", "qwen2", "qwen3_attn_bias"])
def test_bias_parameters_exist_only_where_the_config_asks(cfg, extra):
    params = decoder.init_params(cfg, jax.random.key(0))
    assert set(params["layers"]) == BASE_KEYS | extra
    assert {k for k, _, _ in hf_io._layer_keys(cfg)} == set(params["layers"])  # each has an HF name
    assert cfg.num_params() == sum(x.size for x in jax.tree.leaves(params))
    assert len(hf_io.to_hf_tensors(cfg, params)) == len(hf_io.hf_shapes(cfg))


def test_config_json_bias_flags():
    hf = BIASED.to_hf()
    assert hf["attention_bias"] is True and hf["mlp_bias"] is True
    assert DecoderConfig.from_hf(hf) == BIASED and BIASED.out_bias
    assert not QWEN2.out_bias and QWEN3.out_bias
    # transformers' Qwen2 has no MLP biases and ignores the flag; so do we (a checkpoint carrying them is refused).
    assert DecoderConfig.from_hf(dict(QWEN2.to_hf(), mlp_bias=True)).mlp_bias is False
    with pytest.raises(ConfigError, match="mlp_bias=True: Qwen2ForCausalLM has no MLP biases"):
        QWEN2.replace(mlp_bias=True)


# ------------------------------------------------------------------------------------------------ refusals


def _add(**named):
    return lambda tensors: tensors.update(named)


def _drop_layer_1(tensors):
    for k in [k for k in tensors if k.startswith("model.layers.1.")]:
        del tensors[k]


@pytest.mark.parametrize("saved, config, edit, count, names", [
    # Llama checkpoints with attention_bias whose config.json lost the flag: 4 biases x 2 layers unread.
    (LLAMA.replace(attention_bias=True), LLAMA, None, 8,
     ["model.layers.0.self_attn.k_proj.bias", "model.layers.0.self_attn.o_proj.bias"]),
    (LLAMA.replace(mlp_bias=True), LLAMA, None, 6, ["model.layers.1.mlp.down_proj.bias"]),
    # A Qwen2 checkpoint with an o_proj bias, which Qwen2 never reads.
    (QWEN2, None, _add(**{"model.layers.0.self_attn.o_proj.bias": np.ones(64, np.float32)}), 1,
     ["model.layers.0.self_attn.o_proj.bias"]),
    (LLAMA, None, _add(**{"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8, np.float32)}), 1,
     ["model.layers.0.self_attn.rotary_emb.inv_freq"]),
    (LLAMA, LLAMA.replace(num_layers=1), None, 9, ["model.layers.1.input_layernorm.weight"]),
    # A tied config over a checkpoint whose head is not the embedding.
    (LLAMA, LLAMA.replace(tie_word_embeddings=True), None, 1, ["lm_head.weight"]),
], ids=["attn_bias_without_flag", "mlp_bias_without_flag", "qwen2_o_bias", "extra_buffer", "extra_layer",
        "untied_head_under_tied_config"])
def test_unconsumed_tensors_fail_naming_them_and_the_file(tmp_path, saved, config, edit, count, names):
    folder = _checkpoint(tmp_path, saved, config, edit)
    with pytest.raises(hf_io.CheckpointError) as e:
        hf_io.load_params(folder)
    msg = str(e.value)
    assert msg.startswith(f"{folder} (model.safetensors): {count} tensor(s) that the config does not use")
    for name in names:
        assert repr(name) in msg
    if count > 5:
        assert f"and {count - 5} more" in msg  # the first five are named
    if any(n.endswith(".bias") for n in names):
        assert "attention_bias=" in msg and "mlp_bias=" in msg


def test_a_sharded_checkpoint_names_the_file_holding_the_extra_tensor(tmp_path):
    tensors = hf_io.to_hf_tensors(LLAMA, decoder.init_params(LLAMA, jax.random.key(0)))
    names = sorted(tensors)
    first, second = names[: len(names) // 2], names[len(names) // 2:]
    save_file({k: tensors[k] for k in first}, str(tmp_path / "model-00001-of-00002.safetensors"))
    extra = {"model.layers.0.mlp.up_proj.bias": np.zeros(96, np.float32)}
    save_file(dict({k: tensors[k] for k in second}, **extra), str(tmp_path / "model-00002-of-00002.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" for k in first}
    weight_map.update({k: "model-00002-of-00002.safetensors" for k in second + list(extra)})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "config.json").write_text(json.dumps(LLAMA.to_hf()))
    with pytest.raises(hf_io.CheckpointError,
                       match=r"\(model-00002-of-00002.safetensors\): 1 tensor\(s\) .*mlp.up_proj.bias"):
        hf_io.load_params(str(tmp_path))
    del weight_map["model.layers.0.mlp.up_proj.bias"]  # the same shards, indexed without it, load
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert hf_io.load_params(str(tmp_path))[0] == LLAMA


def test_a_tied_checkpoint_may_store_the_head_as_a_copy_of_the_embedding(tmp_path):
    tied = LLAMA.replace(tie_word_embeddings=True)
    folder = _checkpoint(tmp_path, tied, edit=lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"]}))
    cfg, params = hf_io.load_params(folder)
    assert cfg == tied and "lm_head" not in params


# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("cfg", [BIASED, QWEN3], ids=["llama_biases", "qwen3_attn_bias"])
def test_save_writes_back_every_tensor_loaded(tmp_path, cfg):
    folder = _checkpoint(tmp_path, cfg)
    original = _read(f"{folder}/model.safetensors")
    assert set(original) == set(hf_io.hf_shapes(cfg))
    loaded_cfg, params = hf_io.load_params(folder)
    hf_io.save_params(str(tmp_path / "again"), loaded_cfg, params)
    again = _read(tmp_path / "again" / "model.safetensors")
    assert sorted(again) == sorted(original)
    for name, array in original.items():
        np.testing.assert_array_equal(again[name], array, err_msg=name)


def test_transformers_biased_llama_round_trips_through_our_params(tmp_path):
    """A transformers Llama with attention_bias and mlp_bias -> our params -> save -> transformers: same tensors and
    the same logits."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from .test_decoder import BASE, _torch_model

    hf_cfg = dict(BASE, architectures=["LlamaForCausalLM"], model_type="llama", num_key_value_heads=2,
                  tie_word_embeddings=False, attention_bias=True, mlp_bias=True)
    model = _torch_model(hf_cfg)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    cfg, params = hf_io.load_params(str(tmp_path / "hf"))
    assert cfg.attention_bias and cfg.out_bias and cfg.mlp_bias
    hf_io.save_params(str(tmp_path / "ours"), cfg, params)
    theirs, ours = _read(tmp_path / "hf" / "model.safetensors"), _read(tmp_path / "ours" / "model.safetensors")
    assert sorted(ours) == sorted(theirs) and sum(k.endswith(".bias") for k in ours) == 2 * 7
    for name in theirs:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", attn_implementation="eager")
    tokens = torch.tensor(np.random.default_rng(0).integers(0, BASE["vocab_size"], size=(2, 16)))
    with torch.no_grad():
        np.testing.assert_allclose(reloaded.float().eval()(tokens).logits.numpy(), model(tokens).logits.numpy(),
                                   atol=1e-5, rtol=0)
