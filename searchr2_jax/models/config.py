"""DecoderConfig: one frozen, hashable description of a Llama / Qwen2 / Qwen3 decoder, read from HF `config.json`.

The config is a static argument of every jitted model function, so it must be hashable and must never hold arrays.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, NamedTuple

import jax.numpy as jnp

class Architecture(NamedTuple):
    """Which optional modules an HF architecture builds, as its transformers implementation does."""

    model_type: str
    qkv_bias: bool  # q/k/v biases whatever `attention_bias` says (Qwen2)
    out_bias: bool  # o_proj gets a bias whenever q/k/v do (Llama, Qwen3 under `attention_bias`; never Qwen2)
    qk_norm: bool  # RMSNorm on q and k per head (Qwen3)
    mlp_bias: bool  # `mlp_bias` is honoured: gate/up/down biases (Llama)


ARCHITECTURES = {
    "LlamaForCausalLM": Architecture("llama", qkv_bias=False, out_bias=True, qk_norm=False, mlp_bias=True),
    "Qwen2ForCausalLM": Architecture("qwen2", qkv_bias=True, out_bias=False, qk_norm=False, mlp_bias=False),
    "Qwen3ForCausalLM": Architecture("qwen3", qkv_bias=False, out_bias=True, qk_norm=True, mlp_bias=False),
}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class ConfigError(ValueError):
    """A model config that we cannot honour; the message names the file and field."""


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    architecture: str = "LlamaForCausalLM"
    rope_theta: float = 10000.0
    # llama3-style scaling as a sorted tuple of (key, value) pairs so the config stays hashable; None = plain RoPE.
    rope_scaling: tuple | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    # Biases on q/k/v, and on o_proj where the architecture has one (`out_bias`).
    attention_bias: bool = False
    mlp_bias: bool = False  # biases on gate/up/down (Llama only)
    qk_norm: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | tuple | None = None
    # Not from HF: how we run it.
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: bool = False
    value_head: bool = False
    # The training passes run the LM head this many positions at a time, so no [B, T, V] logits are ever held
    # (rl/logprobs.chunked_token_logprobs): at V = 152k one fp32 row of 4k positions is 2.3 GiB.
    logits_chunk: int = 256
    # Full (uncached) passes split the queries into blocks of this many positions, each scoring only the keys up to
    # its own end (`decoder.causal_blocks`): the causal mask makes the rest zero, so a row of T tokens computes about
    # half of its T x T scores. 0 = one dense block.
    attention_block: int = 128

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}"
            )
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"architecture={self.architecture!r}; expected one of {sorted(ARCHITECTURES)}")
        if self.mlp_bias and not ARCHITECTURES[self.architecture].mlp_bias:
            raise ConfigError(f"mlp_bias=True: {self.architecture} has no MLP biases")
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ConfigError(f"{name}={getattr(self, name)!r}; expected one of {sorted(_DTYPES)}")
        if self.attention_block < 0:
            raise ConfigError(f"attention_block={self.attention_block} must be >= 0 (0 = dense attention)")

    @property
    def jnp_dtype(self):
        return _DTYPES[self.dtype]

    @property
    def jnp_param_dtype(self):
        return _DTYPES[self.param_dtype]

    @property
    def out_bias(self) -> bool:
        """Whether o_proj carries a bias: with `attention_bias`, where the architecture gives it one."""
        return self.attention_bias and ARCHITECTURES[self.architecture].out_bias

    @property
    def rope_scaling_dict(self) -> dict | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

    def replace(self, **kw) -> "DecoderConfig":
        return dataclasses.replace(self, **kw)

    def num_params(self) -> int:
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * hd * (self.num_heads * 2 + self.num_kv_heads * 2)
        if self.attention_bias:
            attn += hd * (self.num_heads + 2 * self.num_kv_heads) + (d if self.out_bias else 0)
        mlp = 3 * d * f + (2 * f + d if self.mlp_bias else 0)
        per_layer = attn + mlp + 2 * d + (2 * hd if self.qk_norm else 0)
        embed = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + embed + d

    # ---------------------------------------------------------------- HF config.json in and out

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], source: str = "config.json", **overrides) -> "DecoderConfig":
        """Reads an HF `config.json` dict. Unknown architectures and missing required fields fail naming them."""
        archs = hf.get("architectures") or []
        by_type = {a.model_type: name for name, a in ARCHITECTURES.items()}
        arch = archs[0] if archs else by_type.get(hf.get("model_type", ""))
        if arch not in ARCHITECTURES:
            raise ConfigError(
                f"{source}: architecture {arch or hf.get('model_type')!r} is not supported; "
                f"supported: {sorted(ARCHITECTURES)}"
            )
        spec = ARCHITECTURES[arch]

        def need(key):
            if key not in hf or hf[key] is None:
                raise ConfigError(f"{source}: required field {key!r} is missing (architecture {arch})")
            return hf[key]

        heads = int(need("num_attention_heads"))
        hidden = int(need("hidden_size"))
        # transformers 4.x writes rope_theta/rope_scaling; 5.x writes both inside rope_parameters.
        rope = dict(hf.get("rope_parameters") or {})
        theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
        scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
        if scaling:
            scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind == "default":
                scaling = None
            elif kind != "llama3":
                raise ConfigError(f"{source}: rope_scaling type {kind!r} is not supported (only 'llama3')")
        eos = hf.get("eos_token_id")
        fields = dict(
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            num_layers=int(need("num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(hf.get("head_dim") or hidden // heads),
            intermediate_size=int(need("intermediate_size")),
            architecture=arch,
            rope_theta=float(theta),
            rope_scaling=tuple(sorted((k, v) for k, v in scaling.items() if not isinstance(v, (list, dict))))
            if scaling else None,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            attention_bias=spec.qkv_bias or bool(hf.get("attention_bias", False)),
            # Only where the architecture reads `mlp_bias`: transformers ignores it elsewhere, and so do we.
            mlp_bias=spec.mlp_bias and bool(hf.get("mlp_bias", False)),
            qk_norm=spec.qk_norm,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        )
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def from_pretrained(cls, path: str, **overrides) -> "DecoderConfig":
        file = os.path.join(path, "config.json") if os.path.isdir(path) else path
        try:
            with open(file) as f:
                hf = json.load(f)
        except FileNotFoundError as e:
            raise ConfigError(f"{file}: no config.json found") from e
        except json.JSONDecodeError as e:
            raise ConfigError(f"{file}: not valid JSON ({e})") from e
        return cls.from_hf(hf, source=file, **overrides)

    def to_hf(self) -> dict:
        hf = {
            "architectures": [self.architecture],
            "model_type": ARCHITECTURES[self.architecture].model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling_dict,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "hidden_act": "silu",
            "torch_dtype": self.param_dtype,
        }
        if self.bos_token_id is not None:
            hf["bos_token_id"] = self.bos_token_id
        if self.eos_token_id is not None:
            hf["eos_token_id"] = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
        return hf
