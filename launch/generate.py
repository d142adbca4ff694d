"""Chat with a model: its reply to --prompt, through its chat template (greedy unless --temperature > 0).

  python launch/generate.py --prompt="What is the capital of France?"          # SmolLM2-135M-Instruct (cached)
  python launch/generate.py --model=/tmp/smollm2 --prompt="Name a prime." --prompt="Say hi." --temperature=0.7
  python launch/generate.py --prompt="$(cat prompt.txt)" --nochat              # raw text, no chat template

--model is an HF folder (launch/convert.py writes one); empty: SmolLM2 converted once into the cache. Decoding is
the rollout engine's (KV cache, on-device stops), one turn without a retriever: see searchr2_jax/rollout/generate.py.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

_MODEL = flags.DEFINE_string("model", "", "HF folder; empty: SmolLM2-135M-Instruct via ensure_smollm2()")
_PROMPT = flags.DEFINE_multi_string("prompt", None, "the user message (repeat for a batch)", required=True)
_SYSTEM = flags.DEFINE_string("system", None, "a system message (default: the template's own, if any)")
_CHAT = flags.DEFINE_bool("chat", True, "wrap each prompt in the tokenizer's chat template")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "generation budget per prompt")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass (with --temperature > 0)")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from searchr2_jax.models import hf_io
    from searchr2_jax.models.gguf_import import ensure_smollm2
    from searchr2_jax.rollout.generate import generate
    from searchr2_jax.text.tokenizer import load_tokenizer

    t0 = time.perf_counter()
    path = _MODEL.value or ensure_smollm2()
    tokenizer = load_tokenizer(path)
    cfg, params = hf_io.load_params(path)
    t1 = time.perf_counter()
    replies = generate(cfg, params, tokenizer, _PROMPT.value, chat=_CHAT.value, system=_SYSTEM.value,
                       max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value, top_p=_TOP_P.value,
                       seed=_SEED.value)
    t2 = time.perf_counter()
    for prompt, reply in zip(_PROMPT.value, replies):
        if len(replies) > 1:
            print(f">>> {prompt}")
        print(reply.text)
        if reply.status == "out_of_budget":
            print(f"[cut at --max_new_tokens={_MAX_NEW.value}]")
    tokens = sum(r.num_tokens for r in replies)
    print(f"[{path}: loaded in {t1 - t0:.1f} s; {tokens} tokens in {t2 - t1:.1f} s, compilation included]",
          file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
