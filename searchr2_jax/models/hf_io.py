"""HF checkpoints in and out: `config.json` + safetensors (single file or sharded index) <-> our parameter pytree.

Loading reads one tensor at a time from memory-mapped safetensors and places it straight into its target sharding
(`jax.make_array_from_callback` asks each device for its own slice), so no host ever holds a full copy per device.
Every tensor is checked against the shape the config implies; a mismatch or a missing tensor names the tensor.
Every tensor in the checkpoint must also be one the config uses: a tensor that would be left unread (say
`o_proj.bias` under a config without `attention_bias`) fails the load naming it and its file, since the model would
otherwise silently compute something other than the checkpoint. Saving writes back every tensor loading reads.
The embedding is never resized to a tokenizer's vocabulary (Qwen pads it; extra rows simply stay).
"""

from __future__ import annotations

import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from searchr2_jax.models.config import DecoderConfig


class CheckpointError(ValueError):
    """A checkpoint that does not match its config: the message names the tensor, expected and found shapes."""


# (our layer key, HF suffix under model.layers.{i}., transpose?) — HF Linear stores [out, in]; we store [in, out].
_LAYER_MAP = [
    ("attn_norm", "input_layernorm.weight", False),
    ("mlp_norm", "post_attention_layernorm.weight", False),
    ("wq", "self_attn.q_proj.weight", True),
    ("wk", "self_attn.k_proj.weight", True),
    ("wv", "self_attn.v_proj.weight", True),
    ("wo", "self_attn.o_proj.weight", True),
    ("bq", "self_attn.q_proj.bias", False),
    ("bk", "self_attn.k_proj.bias", False),
    ("bv", "self_attn.v_proj.bias", False),
    ("bo", "self_attn.o_proj.bias", False),
    ("q_norm", "self_attn.q_norm.weight", False),
    ("k_norm", "self_attn.k_norm.weight", False),
    ("w_gate", "mlp.gate_proj.weight", True),
    ("w_up", "mlp.up_proj.weight", True),
    ("w_down", "mlp.down_proj.weight", True),
    ("b_gate", "mlp.gate_proj.bias", False),
    ("b_up", "mlp.up_proj.bias", False),
    ("b_down", "mlp.down_proj.bias", False),
]
_MAX_NAMED = 5  # unconsumed tensors named in an error; the count says how many more


def param_shapes(cfg: DecoderConfig) -> dict:
    """The exact pytree of shapes `init_params` builds, derived without allocating (for checks and restores)."""
    from searchr2_jax.models.decoder import init_params

    return jax.tree.map(lambda s: tuple(s.shape), jax.eval_shape(lambda: init_params(cfg, jax.random.key(0))))


def _layer_keys(cfg: DecoderConfig) -> list[tuple[str, str, bool]]:
    """The rows of _LAYER_MAP for the layer parameters `init_params` builds for this config (and only those)."""
    present = param_shapes(cfg)["layers"]
    return [m for m in _LAYER_MAP if m[0] in present]


def hf_shapes(cfg: DecoderConfig) -> dict[str, tuple]:
    """HF tensor name -> shape, for exactly the tensors a checkpoint of `cfg` holds."""
    shapes = param_shapes(cfg)
    out = {"model.embed_tokens.weight": shapes["embed"], "model.norm.weight": shapes["final_norm"]}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = shapes["lm_head"][::-1]
    for key, suffix, transpose in _layer_keys(cfg):
        per_layer = shapes["layers"][key][1:]
        for i in range(cfg.num_layers):
            out[f"model.layers.{i}.{suffix}"] = per_layer[::-1] if transpose else per_layer
    return out


def unconsumed_message(names, cfg: DecoderConfig, where: str) -> str:
    """The error for checkpoint tensors `cfg` would not read: the first few names, the count, and a hint for biases."""
    names = sorted(names)
    more = f" and {len(names) - _MAX_NAMED} more" if len(names) > _MAX_NAMED else ""
    hint = ""
    if any(n.endswith(".bias") for n in names):
        hint = (f"; biases are read only where config.json asks for them (this config: {cfg.architecture}, "
                f"attention_bias={cfg.attention_bias}, mlp_bias={cfg.mlp_bias})")
    return (f"{where}: {len(names)} tensor(s) that the config does not use, e.g. {names[:_MAX_NAMED]}{more}{hint}; "
            "loading would silently drop them")


class _TensorSource:
    """Looks tensors up by name across a single safetensors file or a sharded index, memory-mapped."""

    def __init__(self, path: str):
        index = os.path.join(path, "model.safetensors.index.json")
        single = os.path.join(path, "model.safetensors")
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            self.files = {name: os.path.join(path, file) for name, file in weight_map.items()}
        elif os.path.exists(single):
            with safe_open(single, "np") as f:
                self.files = {name: single for name in f.keys()}
        else:
            raise CheckpointError(f"{path}: neither model.safetensors nor model.safetensors.index.json found")
        self.path = path
        self._handles = {}

    def names(self):
        return self.files.keys()

    def get(self, name: str) -> np.ndarray:
        if name not in self.files:
            raise CheckpointError(f"{self.path}: tensor {name!r} is missing from the checkpoint")
        file = self.files[name]
        if file not in self._handles:
            self._handles[file] = safe_open(file, "np")
        return self._handles[file].get_tensor(name)


def _checked(name: str, array: np.ndarray, expected: tuple) -> np.ndarray:
    if tuple(array.shape) != tuple(expected):
        raise CheckpointError(f"tensor {name!r}: expected shape {tuple(expected)}, found {tuple(array.shape)}")
    return array


def load_params(
    path: str,
    cfg: DecoderConfig | None = None,
    shardings=None,
    dtype=None,
) -> tuple[DecoderConfig, dict]:
    """Loads an HF folder into `(cfg, params)`.

    `shardings`: a pytree of `jax.sharding.Sharding` matching the params (e.g. from `sharding.param_shardings`);
    each tensor goes straight to its shards. Without it, arrays land on the default device.
    """
    cfg = cfg or DecoderConfig.from_pretrained(path)
    dtype = dtype or cfg.jnp_param_dtype
    src = _TensorSource(path)
    _check_all_consumed(src, cfg)
    shapes = param_shapes(cfg)

    def place(key_path: tuple, host: Callable[[], np.ndarray]):
        sharding = _lookup(shardings, key_path) if shardings is not None else None
        shape = _lookup(shapes, key_path)
        if sharding is None:
            return jnp.asarray(host(), dtype=dtype)
        cached = {}

        def cb(index):
            if "a" not in cached:
                cached["a"] = np.asarray(host(), dtype=np.float32)
            return cached["a"][index].astype(dtype)

        return jax.make_array_from_callback(shape, sharding, cb)

    params: dict = {}
    params["embed"] = place(("embed",), lambda: _checked("model.embed_tokens.weight",
                                                         src.get("model.embed_tokens.weight"), shapes["embed"]))
    params["final_norm"] = place(("final_norm",), lambda: _checked("model.norm.weight", src.get("model.norm.weight"),
                                                                   shapes["final_norm"]))
    if not cfg.tie_word_embeddings:
        params["lm_head"] = place(("lm_head",), lambda: _checked("lm_head.weight", src.get("lm_head.weight"),
                                                                 shapes["lm_head"][::-1]).T)
    layers = {}
    for key, suffix, transpose in _layer_keys(cfg):
        full = shapes["layers"][key]

        def stacked(key=key, suffix=suffix, transpose=transpose, full=full):
            per_layer = full[1:][::-1] if transpose else full[1:]
            out = np.empty(full, np.float32)
            for i in range(cfg.num_layers):
                name = f"model.layers.{i}.{suffix}"
                w = _checked(name, src.get(name), per_layer)
                out[i] = w.T if transpose else w
            return out

        layers[key] = place(("layers", key), stacked)
    params["layers"] = layers
    if cfg.value_head:
        params["value_head"] = {"w": jnp.zeros((cfg.hidden_size,), dtype), "b": jnp.zeros((), dtype)}
    return cfg, params


def _check_all_consumed(src: _TensorSource, cfg: DecoderConfig) -> None:
    """Raises CheckpointError naming the tensors of `src` that loading `cfg` would leave unread (before any is read)."""
    unused = set(src.names()) - set(hf_shapes(cfg))
    # Tied checkpoints sometimes store the head as well; an exact copy of the embedding is checked, so consumed.
    if cfg.tie_word_embeddings and "lm_head.weight" in unused:
        if np.array_equal(src.get("lm_head.weight"), src.get("model.embed_tokens.weight")):
            unused.discard("lm_head.weight")
    if unused:
        files = sorted({os.path.basename(src.files[n]) for n in unused})
        raise CheckpointError(unconsumed_message(unused, cfg, f"{src.path} ({', '.join(files)})"))


def _lookup(tree, key_path):
    for k in key_path:
        tree = tree[k]
    return tree


def to_hf_tensors(cfg: DecoderConfig, params: dict) -> dict[str, np.ndarray]:
    """Our pytree -> HF tensor names and layouts (float32 numpy unless the params are already another float)."""
    host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)
    out = {"model.embed_tokens.weight": host["embed"], "model.norm.weight": host["final_norm"]}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = host["lm_head"].T
    for key, suffix, transpose in _layer_keys(cfg):
        stacked = host["layers"][key]
        for i in range(cfg.num_layers):
            out[f"model.layers.{i}.{suffix}"] = stacked[i].T if transpose else stacked[i]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def save_params(path: str, cfg: DecoderConfig, params: dict) -> None:
    """Writes `config.json` + `model.safetensors` that transformers (and `load_params`) read back exactly."""
    os.makedirs(path, exist_ok=True)
    tensors = to_hf_tensors(cfg, params)
    tmp = os.path.join(path, "model.safetensors.tmp")
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(path, "model.safetensors"))  # never leave a half-written checkpoint
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg.to_hf(), f, indent=2)
