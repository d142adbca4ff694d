"""Shared config pieces: every experiment config starts from `base_config()` and overrides what it needs.

Configs are ml_collections `get_config(arg)` files (big_vision style): `arg` is an optional comma-separated string of
`key=value` switches, e.g. `--config=configs/synthetic.py:variant=search_r1`.
"""

import ml_collections

from searchr2_jax.rl.losses import default_loss_config
from searchr2_jax.rl.sentinel import default_sentinel_config
from searchr2_jax.rl.state import default_optim_config
from searchr2_jax.rollout.refiner import default_refiner_config
from searchr2_jax.rollout.rollout import default_rollout_config
from searchr2_jax.retrieval.retriever import default_retrieval_config
from searchr2_jax.variants import VARIANTS, ConfigError, apply_variant, variant_fields  # noqa: F401 (re-exported)


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """'a=1,b=x' -> ConfigDict(a=1, b='x'), typed by the defaults given."""
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in defaults:
            raise ValueError(f"config argument {key!r} is not one of {sorted(defaults)}")
        kind = type(defaults[key])
        out[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return out


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.variant = "search_r2"
    c.data = ml_collections.ConfigDict(dict(
        world=dict(),  # synthetic.WorldConfig fields; {} = the default world (~2k entities, 10k questions)
        train_split="train", eval_split="dev", eval_examples=256,  # with eval_files: the first N of each file
        # Real QA files (Search-R1 parquet / FlashRAG jsonl), comma-separated; empty = the synthetic world's splits.
        # With files, retrieval searches retrieval.corpus_path / index_dir instead of the world's corpus.
        train_files="", eval_files=""))
    c.model = ml_collections.ConfigDict(dict(
        hf_path="",  # an HF folder (config.json + safetensors); empty = from scratch with `init`
        tokenizer="world",  # a tokenizer dir/file, or "world": BPE trained on the synthetic world
        vocab_size=2048,  # for the world tokenizer
        chat=False,  # prompts through the tokenizer's chat template (instruct models)
        dtype="float32", remat=False,
        logits_chunk=256,  # positions per LM-head block in the training passes (models/config.DecoderConfig)
        init=dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32, intermediate_size=256,
                  rope_theta=10000.0, max_position_embeddings=4096)))
    c.retrieval = default_retrieval_config()
    c.rollout = default_rollout_config()
    c.refiner = default_refiner_config()
    c.reward = ml_collections.ConfigDict(dict(
        judge="oracle", judge_kwargs={}, outcome_only=False,
        judge_model="",  # judge=llm: an HF folder of the judge LM ("smollm2": the offline SmolLM2-135M-Instruct)
        judge_max_new_tokens=3000))
    c.rl = ml_collections.ConfigDict(dict(
        algo="grpo", group_size=5, normalize_std=True, train_meta_actions=True, rejection_sampling=False,
        gamma=1.0, lam=1.0,  # PPO's GAE (Search-R1 uses 1 and 1)
        # pi_old for the PPO ratio: "on" takes the train step's own (stop-gradient) log-probs of the sampled tokens,
        # which is verl's recomputed pi_old for one update per batch; "off" keeps the sampler's; "auto" is on unless
        # the model runs in float32, where the cached decode and the full forward agree.
        recompute_old_logprobs="auto",
        loss=default_loss_config()))
    c.optim = default_optim_config()
    # fresh_names: respell every name of each demonstration with fresh syllable names (consistently within it), so
    # a from-scratch model must copy names out of the question and the passages instead of memorising the world's.
    # copy_steps: the first SFT steps train on copy_batch_size copy drills instead (a question and its first turn
    # under fresh names, short rows): a small model forms its copying (induction) heads within a few hundred such
    # short steps, while whole demonstrations, whose copied tokens are a minority, can take thousands.
    # stop_early_fraction: the share of multi-hop Actor demonstrations that stop one hop short and answer with the
    # bridge entity their last search found (data/demos.DemoWriter.demos); 0 = an oracle demonstrator.
    c.sft = ml_collections.ConfigDict(dict(steps=0, batch_size=16, seq_len=512, flawed_fraction=0.4,
                                           refiner_fraction=0.2, fresh_names=False, copy_steps=0, copy_batch_size=32,
                                           stop_early_fraction=0.0, optim=default_optim_config()))
    c.sft.optim.learning_rate = 1e-3
    c.sft.optim.warmup_ratio = 0.05
    c.sft.optim.schedule = "cosine"
    c.train = ml_collections.ConfigDict(dict(
        steps=300, prompts_per_step=512, micro_batches=1, log_every=1, eval_every=50, ckpt_every=50,
        keep_checkpoints=3, progress=True,
        # Several trajectories per row of the RL step batch (rl/packing.py), so the step skips most padding.
        pack_rows=True,
        # Every N RL steps (0 = never), with the refiner on: the Prop. 4.1 / 4.2 terms on this many training prompts.
        diagnostics_every=0, diagnostics_prompts=32,
        # Trajectory dumps for launch/view.py (rollout/dump.py): every N RL steps and at the last, dump_rows of that
        # step's trajectories (whole GRPO groups; 0 = all) to WORKDIR/trajectories/train_step{N}.jsonl, and every
        # evaluation's trajectories to eval_step{N}.jsonl. 0 = no dumps at all. Host-side, after the step.
        dump_every=10, dump_rows=32,
        # The collapse sentinel (rl/sentinel.py; thresholds documented there): fed every RL step, it logs a warning
        # and sentinel/fired when reward, entropy, searches or length collapse, updates keep being skipped, or
        # responses degenerate into repetition. With rollback_on_collapse it also restores the latest checkpoint
        # before the collapse began and multiplies the RL learning rate by rollback_lr_factor (the jitted step is
        # rebuilt with the scaled rate), at most max_rollbacks times in a run.
        sentinel=default_sentinel_config(), rollback_on_collapse=False, rollback_lr_factor=0.5, max_rollbacks=3))
    # chip / devices: the accelerator a config is sized for (a key of models/sharding.CHIP_HBM_BYTES) and how many of
    # them; the memory suite (`launch/benchmark.py --suite=memory`) compiles the config's programs on that mesh and
    # checks them against the chip's memory. "" / 0: not sized for a pod (runs on whatever devices are there).
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, chip="", devices=0))
    return c


# ------------------------------------------------------------------------------------------------ the paper's runs

# Search-R1's evaluation sets as FlashRAG jsonl names: test for NQ/TriviaQA/PopQA/Bamboogle, dev for the multi-hop.
PAPER_EVAL_FILES = ("nq/test.jsonl", "triviaqa/test.jsonl", "popqa/test.jsonl", "hotpotqa/dev.jsonl",
                    "2wikimultihopqa/dev.jsonl", "musique/dev.jsonl", "bamboogle/test.jsonl")


def paper_config(arg, *, model: str, tensor: int, micro_batches: int, devices: int, chip: str = "v5p",
                 chat: bool = True, slots: int = 256) -> ml_collections.ConfigDict:
    """Search-R2 as the paper trains it (the Search-R2 paper, §4 and §6.3): GRPO n=5 on 512 prompts/step for 300 steps,
    lr 1e-6 with warm-up ratio 0.285, low-variance KL 0.001 as a loss, no entropy bonus, 4 assistant turns, one
    revision, top-3 e5-base-v2 dense retrieval over wiki-18, NQ+HotpotQA train, bf16 with remat, no SFT.

    `arg` switches (comma-separated key=value): root (where models/, wiki-18/, data/ live), hf_path, corpus, index,
    encoder, train_files, eval_dir, variant, steps, prompts, judge. The mesh is data=1 x fsdp=(the rest) x tensor
    (the paper's tensor-parallel size); `micro_batches` keeps 4 rows per fsdp shard on the pod the config is sized
    for (`devices` chips of kind `chip`), as the paper's micro-batch of 4 per GPU."""
    a = parse_arg(arg, root="/mnt/disks/searchr2", hf_path="", corpus="", index="", encoder="", train_files="",
                  eval_dir="", variant="search_r2", steps=300, prompts=512, judge="llm", eval_examples=512)
    root = a.root.rstrip("/")
    c = base_config()
    c.model.update(dict(hf_path=a.hf_path or f"{root}/models/{model}", chat=chat, dtype="bfloat16", remat=True))
    c.model.tokenizer = c.model.hf_path
    c.data.train_files = a.train_files or f"{root}/data/nq_hotpotqa_train/train.parquet"
    eval_dir = (a.eval_dir or f"{root}/data/eval").rstrip("/")
    c.data.eval_files = ",".join(f"{eval_dir}/{f}" for f in PAPER_EVAL_FILES)
    c.data.eval_examples = a.eval_examples  # per dataset during training; launch/evaluate.py can take them all
    c.retrieval.update(dict(backend="dense", k=3, corpus_path=a.corpus or f"{root}/wiki-18/wiki-18.jsonl",
                            index_dir=a.index or f"{root}/wiki-18/e5_Flat",
                            strip_title_quotes=False))  # Search-R1's verbatim `(Title: "X")`
    c.retrieval.encoder.update(dict(path=a.encoder or f"{root}/models/e5-base-v2", pooling="mean",
                                    dtype="bfloat16", batch_size=512))
    c.retrieval.faiss.update(dict(factory="Flat", mmap=True))  # 21M x 768 f32: ~64 GB, memory-mapped
    # A prompt is the Search-R1 instruction and one question (about 200 tokens): 512 leaves room for long questions.
    # It also sets the train step's length (bucket(512 + 3000) = 4,096 tokens, 8,192 at 4,096) and the admission's
    # prefill: every slot's prompt in one append, whose activations each device holds (benchmarks/memory.py).
    c.rollout.update(dict(slots=slots, max_turns=4, max_prompt_tokens=512, max_response_tokens=3000,
                          max_obs_tokens=512, topk=3, segment_steps=64, temperature=1.0, top_p=1.0))
    # The paper's standalone Table 12 prompt: on an accelerator re-encoding each trajectory is cheap next to decode.
    # Scored 16 prompts a pass: each pass holds its rows' activations at 4,096 tokens on every device.
    c.refiner.update(dict(max_revisions=1, margin=0.0, chat=chat, max_prompt_tokens=4096, prompt="table12",
                          score_batch=16))
    # The paper's judge: DeepSeek-R1-Distill-Qwen-7B (a Qwen2), greedy, up to 3,000 tokens, on our decoder.
    c.reward.update(dict(judge=a.judge, judge_model=f"{root}/models/DeepSeek-R1-Distill-Qwen-7B",
                         judge_max_new_tokens=3000))
    c.rl.update(dict(algo="grpo", group_size=5, normalize_std=True))
    c.rl.loss.update(dict(kl_coef=0.001, kl_estimator="low_var_kl", entropy_coef=0.0, clip_eps_low=0.2,
                          clip_eps_high=0.2))
    c.optim.update(dict(learning_rate=1e-6, warmup_ratio=0.285, schedule="constant"))
    c.sft.steps = 0  # RL straight from the backbone
    c.train.update(dict(steps=a.steps, prompts_per_step=a.prompts, micro_batches=micro_batches, log_every=1,
                        eval_every=50, ckpt_every=25, keep_checkpoints=3, progress=True))
    c.mesh.update(dict(data=1, fsdp=-1, tensor=tensor, chip=chip, devices=devices))
    return apply_variant(c, a.variant)
