"""Every config in configs/ builds, locks and passes validate_config on the device count it is sized for."""

import glob
import importlib
import os

import pytest

from searchr2_jax.config import VARIANTS, ConfigError, validate_config
from searchr2_jax.models.sharding import CHIP_HBM_BYTES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                      if os.path.basename(p) not in ("__init__.py", "common.py"))
# Device counts each config is sized for (a new config file must be added here).
PAPER = {"qwen2p5_7b_r2": 64, "qwen3_8b_r2": 64, "qwen2p5_32b_r2": 128}
DEVICES = {"smoke": [1], "learning": [1], "main": [1], "smollm2_135m": [1, 2], "wiki_smollm2": [1], "synthetic": [1, 2, 8], **{k: [v] for k, v in PAPER.items()}}
ARGS = {"smollm2_135m": "hf_path=/models/smollm2",  # skip the GGUF conversion at build time
        "wiki_smollm2": "hf_path=/models/smollm2,data_dir=/data/wikisum"}  # ... and the data preparation


def load(name, arg=None):
    return importlib.import_module(f"configs.{name}").get_config(arg if arg is not None else ARGS.get(name))


def test_every_config_file_is_covered():
    assert set(DEVICES) == set(CONFIG_FILES)


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_config_builds_locks_and_validates(name):
    c = load(name)
    c.lock()
    with pytest.raises(AttributeError):
        c.no_such_field = 1  # locked: typos in --config.x=y overrides fail
    for n in DEVICES[name]:
        validate_config(c, num_devices=n)
    assert c.variant in VARIANTS


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_settings(name):
    c = load(name)
    assert (c.rl.algo, c.rl.group_size, c.rl.rejection_sampling) == ("grpo", 5, False)
    assert (c.optim.learning_rate, c.optim.warmup_ratio) == (1e-6, 0.285)
    assert (c.train.steps, c.train.prompts_per_step) == (300, 512)
    assert (c.rl.loss.kl_coef, c.rl.loss.kl_estimator, c.rl.loss.entropy_coef) == (0.001, "low_var_kl", 0.0)
    assert (c.rollout.max_turns, c.rollout.topk, c.retrieval.k, c.refiner.max_revisions) == (4, 3, 3, 1)
    assert c.retrieval.backend == "dense" and c.retrieval.encoder.path.endswith("e5-base-v2")
    assert "wiki-18" in c.retrieval.corpus_path and "wiki-18" in c.retrieval.index_dir
    assert (c.model.dtype, c.model.remat, c.sft.steps) == ("bfloat16", True, 0)
    assert c.mesh.tensor == (8 if "32b" in name else 2) and c.mesh.fsdp == -1
    # The pod it is sized for, which the memory suite compiles on (tests/benchmarks/test_memory.py).
    assert c.mesh.devices == PAPER[name] and c.mesh.chip in CHIP_HBM_BYTES
    rows = c.train.prompts_per_step * c.rl.group_size
    assert rows // c.train.micro_batches // (PAPER[name] // c.mesh.tensor) == 4  # 4 rows per fsdp shard
    # Paths follow the arg.
    c = load(name, "root=/data/x,index=/idx/e5,variant=search_r1")
    assert c.model.hf_path.startswith("/data/x/models/") and c.retrieval.index_dir == "/idx/e5"
    assert c.data.train_files.startswith("/data/x/") and not c.refiner.enabled
    with pytest.raises(ConfigError, match="mesh"):
        validate_config(load(name), num_devices=6)


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_meta_action_rows_divide_the_micro_batches_and_the_mesh(name):
    """The step batch's meta-action rows split into micro-batches of whole mesh shards (the paper configs'
    20 and 40 micro-batches once failed to divide a power-of-two bucket at their first RL step)."""
    from searchr2_jax.models import sharding
    from searchr2_jax.rollout.types import meta_rows

    c = load(name)
    for n in DEVICES[name]:
        data, fsdp, _ = sharding.mesh_shape(c.mesh, n)
        rows = c.train.prompts_per_step * c.rl.group_size
        m = meta_rows(rows, c.refiner.max_revisions, c.train.micro_batches, data * fsdp)
        assert m >= rows * max(c.refiner.max_revisions, 1)
        assert (m // c.train.micro_batches) % (data * fsdp) == 0 and m % c.train.micro_batches == 0


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_synthetic_variants_set_their_switches(variant):
    c = load("synthetic", f"variant={variant}")
    want = VARIANTS[variant]
    assert c.variant == variant
    assert c.refiner.enabled == want["refiner"]
    assert c.reward.outcome_only == (not want["process_reward"])
    assert c.rl.train_meta_actions == want["joint"]
    assert c.rl.rejection_sampling == want.get("rejection", False)
    validate_config(c, num_devices=8)


def test_unknown_variant_names_the_field():
    with pytest.raises(ConfigError, match="variant"):
        load("synthetic", "variant=search_r3")


def test_main_job_uses_the_shipped_warm_start_of_its_settings():
    from searchr2_jax.experiment import shipped_warm_start, warm_start_key

    c = load("main")
    assert shipped_warm_start(c.experiment.warm_start, warm_start_key(c)) == c.experiment.warm_start
    # the experiment it is cut from trains the same warm start
    assert warm_start_key(c) == warm_start_key(load("learning", "stop_early=0.5"))
