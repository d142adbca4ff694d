"""A scripted 'bigram machine': a real decoder whose weights make token t always followed by `script[t]`.

Layers are zero (the residual stream carries the one-hot embedding straight through), so the next token depends on
the current token only and sampling at any temperature follows the script. With a word-level tokenizer holding the
protocol tags, this gives rollouts whose turns, stops and refiner choices are known in advance.
"""

import jax
import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from searchr2_jax.models import decoder
from searchr2_jax.models.config import DecoderConfig

TAGS = ["<think>", "</think>", "<search>", "</search>", "<information>", "</information>", "<answer>", "</answer>",
        "<|endoftext|>", "<|im_end|>"]
WORDS = ["[UNK]", "<pad>", "go", "alpha", "beta", "loop", "bad", "issue):", "0", "1", "2", "3", "4", "ask",
         "gamma", "delta"]

# token -> successor. "go" searches "alpha"; after the information block the model answers "beta".
SCRIPT = {
    "go": "<search>", "<search>": "alpha", "alpha": "</search>", "</search>": "<think>",
    "</information>": "<answer>", "<answer>": "beta", "beta": "</answer>", "</answer>": "<|endoftext|>",
    "loop": "loop",  # never stops: runs to the budget
    "bad": "<|endoftext|>",  # ends a turn with no action: invalid
    "[UNK]": "<answer>",  # after the invalid-action message (unknown words) the model answers
    "ask": "<search>",
}


def tokenizer():
    vocab = {w: i for i, w in enumerate(WORDS + TAGS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(TAGS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="[UNK]",
                                   pad_token="<pad>")


def machine(tok, script=None, refiner_choice: str | None = None, d_model: int = 32, noise: float = 0.0):
    """(cfg, params) of the scripted decoder. `refiner_choice` makes the refiner prompt's end favour that integer."""
    script = dict(SCRIPT if script is None else script)
    if refiner_choice is not None:
        script["issue):"] = refiner_choice
    V = len(tok)
    D = max(d_model, V)
    cfg = DecoderConfig(vocab_size=V, hidden_size=D, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                        intermediate_size=32, tie_word_embeddings=False, rope_theta=10000.0)
    params = decoder.init_params(cfg, jax.random.key(0))
    # Small noise in the layers keeps attention and the cache in play without changing any argmax.
    params["layers"] = jax.tree.map(lambda w: noise * w / 0.02 if w.ndim == 3 else w, params["layers"])
    params["embed"] = jnp.eye(V, D)
    head = np.full((D, V), -1.0, np.float32)
    for src, dst in script.items():
        head[tok.convert_tokens_to_ids(src), tok.convert_tokens_to_ids(dst)] = 3.0
    params["lm_head"] = jnp.asarray(head)
    return cfg, params


def ids(tok, text):
    return tok.encode(text, add_special_tokens=False)
