"""The real SmolLM2-135M-Instruct: GGUF -> HF folder, its tokenizer and chat template, and a greedy answer.

The conversion happens once into the default cache (`ensure_smollm2`; ~15 s on a clean machine, a header check
afterwards) and the weights load once per test process (`smollm2.load`).
"""

import json
import os
import shutil

import numpy as np
import pytest

from searchr2_jax.models import gguf_import
from searchr2_jax.models.config import DecoderConfig
from searchr2_jax.rollout.generate import chat_text, generate
from searchr2_jax.text.tokenizer import all_stop_sequences, eos_token_ids

from . import smollm2


@pytest.fixture(scope="session")
def folder():
    return gguf_import.ensure_smollm2()


@pytest.fixture(scope="session")
def model():
    return smollm2.load()


def test_converted_folder_is_a_tied_llama_with_smollm2_shapes(folder):
    with open(os.path.join(folder, "config.json")) as f:
        hf = json.load(f)
    assert hf["model_type"] == "llama" and hf["architectures"] == ["LlamaForCausalLM"]
    assert (hf["num_hidden_layers"], hf["hidden_size"], hf["intermediate_size"]) == (30, 576, 1536)
    assert (hf["num_attention_heads"], hf["num_key_value_heads"]) == (9, 3)
    assert hf["tie_word_embeddings"] is True and hf["vocab_size"] == 49152
    assert (hf["bos_token_id"], hf["eos_token_id"]) == (1, 2)
    cfg = DecoderConfig.from_pretrained(folder)
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (30, 576, 9, 3, 64)
    assert cfg.tie_word_embeddings and cfg.vocab_size == 49152
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json", gguf_import.SOURCE_FILE):
        assert os.path.isfile(os.path.join(folder, name)), name
    gguf_import.validate_folder(folder, gguf_import.smollm2_gguf_path())
    from safetensors import safe_open

    with safe_open(os.path.join(folder, "model.safetensors"), "np") as f:
        names = set(f.keys())
    assert "lm_head.weight" not in names and len(names) == 2 + 9 * 30  # tied: embeddings + norm + 9 per layer


def test_ensure_smollm2_reuses_the_cached_folder(folder):
    stamp = os.path.getmtime(os.path.join(folder, "model.safetensors"))
    assert gguf_import.ensure_smollm2() == folder
    assert os.path.getmtime(os.path.join(folder, "model.safetensors")) == stamp  # validated, not converted again


def test_tokenizer_round_trips_and_matches_smollm2_ids(model):
    _, _, _, tok = model
    for text in ["Hello world", "The capital of France is Paris.", "  two  spaces\nnew line\t tab",
                 "café, naïve, 北京 — emoji 🙂", "<search> who founded Acme? </search>", "1990-2024: 3.14"]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert tok.encode("Hello world", add_special_tokens=False) == [19556, 905]  # the HF SmolLM2 tokenizer's ids
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert tok.eos_token == "<|im_end|>" and eos_token_ids(tok) == [2]
    # control tokens are single special tokens, never split into pieces
    assert tok.encode("<|im_start|>user<|im_end|>", add_special_tokens=False)[::2] == [1, 2]
    stops = all_stop_sequences(tok)
    assert stops["<|im_end|>"] == [(2,)] and all(len(s) > 1 for s in stops["</answer>"])  # BPE pieces


def test_chat_template_renders_im_start_turns(model):
    _, _, _, tok = model
    text = chat_text(tok, "What is the capital of France?")
    assert text.startswith("<|im_start|>system\n") and "<|im_end|>\n" in text
    assert text.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.encode(text, add_special_tokens=False)
    assert ids[:3] == [1, 9690, 198] and ids[-4:] == [1, 520, 9531, 198]  # <|im_start|> system \n ... assistant \n
    # few-shot examples ride as earlier turns of the same conversation
    shot = chat_text(tok, "Capital of France?", history=[("Capital of Italy?", "Rome")])
    assert shot.endswith("<|im_start|>user\nCapital of Italy?<|im_end|>\n<|im_start|>assistant\nRome<|im_end|>\n"
                         "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.slow
def test_greedy_smollm2_knows_the_capital_of_france(model):
    _, cfg, params, tok = model
    (reply,) = generate(cfg, params, tok, ["What is the capital of France?"], max_new_tokens=24)
    print("SmolLM2:", repr(reply.text))
    assert "Paris" in reply.text
    traj = reply.trajectory
    assert reply.status != "out_of_budget" and traj.response_ids[-1] == 2  # it ended its turn by itself
    assert np.all(traj.loss_mask == 1) and np.all(traj.logprobs <= 0)


def test_bad_inputs_name_the_file(tmp_path):
    missing = tmp_path / "missing.gguf"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        gguf_import.convert_gguf(str(missing), str(tmp_path / "out"))
    real = gguf_import.smollm2_gguf_path()
    with open(real, "rb") as f:
        head = f.read(1 << 20)
    cases = {"text.gguf": b"this is not a gguf file\n" * 8, "empty.gguf": b"", "magic.gguf": b"GGUF",
             "truncated_header.gguf": head[:1000], "truncated_tensors.gguf": head}
    for name, blob in cases.items():
        bad = tmp_path / name
        bad.write_bytes(blob)
        with pytest.raises(gguf_import.GGUFError, match=str(bad)):
            gguf_import.convert_gguf(str(bad), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))  # nothing half-written


def test_a_damaged_folder_fails_validation_naming_the_problem(folder, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in os.listdir(folder):
        if name != "model.safetensors":
            shutil.copy(os.path.join(folder, name), broken / name)
    with open(os.path.join(folder, "model.safetensors"), "rb") as src:
        (broken / "model.safetensors").write_bytes(src.read(1 << 20))  # header intact, data cut short
    with pytest.raises(gguf_import.GGUFError, match=f"{broken}: model.safetensors is"):
        gguf_import.validate_folder(str(broken))
    (broken / gguf_import.SOURCE_FILE).unlink()
    with pytest.raises(gguf_import.GGUFError, match=f"{broken}: {gguf_import.SOURCE_FILE} is missing"):
        gguf_import.validate_folder(str(broken))


# ------------------------------------------------------------------------------------------------ tiny GGUFs


def _llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of Q/K rows (weights and biases): halves -> interleaved pairs."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_gguf(path, cfg, hf_tensors: dict, extra: dict | None = None) -> str:
    """A GGUF as llama.cpp writes a Llama checkpoint: metadata, tensors under GGUF names, Q/K rows permuted."""
    import gguf

    to_gguf = {v: k for k, v in gguf_import._TOP_NAMES.items()}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.num_layers)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_heads)
    writer.add_head_count_kv(cfg.num_kv_heads)
    writer.add_context_length(cfg.max_position_embeddings)
    for name, w in hf_tensors.items():
        if name.startswith("model.layers."):
            _, _, layer, rest = name.split(".", 3)
            block = {v: k for k, v in gguf_import._BLOCK_NAMES.items()}[rest]
            if block.startswith("attn_q."):
                w = _llama_cpp_permute(w, cfg.num_heads)
            elif block.startswith("attn_k."):
                w = _llama_cpp_permute(w, cfg.num_kv_heads)
            writer.add_tensor(f"blk.{layer}.{block}", np.ascontiguousarray(w, np.float32))
        else:
            writer.add_tensor(to_gguf[name], np.ascontiguousarray(w, np.float32))
    for name, w in (extra or {}).items():
        writer.add_tensor(name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def _biased_llama():
    import jax

    from searchr2_jax.models import decoder, hf_io

    cfg = DecoderConfig(vocab_size=61, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                        intermediate_size=48, attention_bias=True, mlp_bias=True)
    return cfg, hf_io.to_hf_tensors(cfg, decoder.init_params(cfg, jax.random.key(3)))


@pytest.mark.slow
def test_gguf_bias_tensors_become_a_biased_llama(tmp_path):
    cfg, tensors = _biased_llama()
    path = _write_gguf(tmp_path / "biased.gguf", cfg, tensors)
    reader = gguf_import._open(path)
    hf = gguf_import.hf_config(reader, path)
    assert hf["attention_bias"] is True and hf["mlp_bias"] is True
    converted = gguf_import.hf_tensors(reader, path, hf)
    assert sorted(converted) == sorted(tensors) and sum(k.endswith(".bias") for k in converted) == 2 * 7
    for name, w in tensors.items():  # q/k weights and biases un-permuted back to HF's layout
        np.testing.assert_array_equal(converted[name], w, err_msg=name)


@pytest.mark.parametrize("extra, count, names", [
    ({"blk.0.attn_q_norm.weight": np.ones(8, np.float32)}, 1, ["blk.0.attn_q_norm.weight"]),
    ({"blk.2.attn_norm.weight": np.ones(32, np.float32), "blk.2.ffn_norm.weight": np.ones(32, np.float32)}, 2,
     ["blk.2.attn_norm.weight", "blk.2.ffn_norm.weight"]),  # a block beyond block_count
    ({"rope_factors_long.weight": np.ones(4, np.float32)}, 1, ["rope_factors_long.weight"]),
])
def test_gguf_tensors_without_a_counterpart_fail_naming_them(tmp_path, extra, count, names):
    cfg, tensors = _biased_llama()
    path = _write_gguf(tmp_path / "extra.gguf", cfg, tensors, extra)
    reader = gguf_import._open(path)
    with pytest.raises(gguf_import.GGUFError) as e:
        gguf_import.hf_tensors(reader, path, gguf_import.hf_config(reader, path))
    assert str(e.value).startswith(f"{path}: {count} tensor(s) that the config does not use")
    assert all(repr(n) in str(e.value) for n in names)


def test_gguf_with_only_some_biases_names_the_missing_ones(tmp_path):
    cfg, tensors = _biased_llama()
    del tensors["model.layers.1.self_attn.o_proj.bias"]
    path = _write_gguf(tmp_path / "partial.gguf", cfg, tensors)
    reader = gguf_import._open(path)
    with pytest.raises(gguf_import.GGUFError, match=r"1 tensors missing, e.g. \['model.layers.1.self_attn.o_proj"):
        gguf_import.hf_tensors(reader, path, gguf_import.hf_config(reader, path))
