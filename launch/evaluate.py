"""Evaluate as the paper's Table 2: methods as rows, datasets as columns, EM/F1/searches/response tokens with 95%
bootstrap intervals, and the settings that produced them.

  # a model (the config's model.hf_path) on the Wikipedia-summaries test split, three methods:
  python launch/evaluate.py --config=configs/wiki_smollm2.py:eval_split=test --methods=direct,rag,agent \
      --out=/tmp/wiki_table
  # a training run's checkpoint (the config it was trained with), the Actor alone:
  python launch/evaluate.py --config=configs/smoke.py --workdir=/tmp/searchr2_smoke --out=/tmp/smoke_table
  # any FlashRAG jsonl / Search-R1 parquet files, with the config's retriever:
  python launch/evaluate.py --config=configs/qwen2p5_7b_r2.py:root=... --methods=rag,agent \
      --config.data.eval_files=nq/test.jsonl,bamboogle/test.jsonl --out=...
  # two tables side by side; refused, with the reasons, when their settings differ in a way that changes EM:
  python launch/evaluate.py --compare=/tmp/a/table.json,/tmp/b/table.json

Methods (eval/evaluate.py): `direct` answers from the question alone, `rag` from the top-k passages for the
question, `agent` runs the Search-R1/R2 protocol (Actor only, Meta-Refiner off). All greedy; `rag` and `agent` use
the same retriever, k and corpus. The baselines prompt in plain words through the chat template when the model has
one (`--style=flashrag`, optionally with `--shots` training examples), else in the agent's own tags
(`--style=protocol`).

Every question of every eval file is evaluated (`--limit` caps each file). Under --out: table.{md,csv,json,png},
records/<method>.jsonl (per question; a re-run resumes from them), and retrieval results are cached under
--retrieval_cache, so a re-run replays them exactly.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `configs` importable

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "a configs/*.py file: model, retrieval, rollout, data",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "a training workdir: evaluate its checkpoint instead of the config's "
                               "model.hf_path (the config must be the one the run was trained with)")
_STEP = flags.DEFINE_integer("step", None, "with --workdir: the checkpoint step (default: the latest)")
_METHODS = flags.DEFINE_list("methods", ["agent"], "comma-separated: direct, rag, agent")
_OUT = flags.DEFINE_string("out", None, "directory for table.{md,csv,json,png} and records/")
_LIMIT = flags.DEFINE_integer("limit", 0, "questions per eval file (0: all)")
_CHUNK = flags.DEFINE_integer("chunk", 128, "questions per rollout call (the unit of resumption)")
_STYLE = flags.DEFINE_enum("style", "auto", ["auto", "flashrag", "protocol"],
                           "the baselines' prompts; auto: flashrag when model.chat, else protocol")
_SHOTS = flags.DEFINE_integer("shots", 0, "few-shot examples in the direct and rag prompts (flashrag style): the "
                               "first N questions of the config's data.train_files with their answers")
_BOOT = flags.DEFINE_integer("bootstrap", 1000, "bootstrap resamples per interval")
_CACHE = flags.DEFINE_string("retrieval_cache", None, "retrieval cache directory (default: $SEARCHR2_CACHE/retrieval)")
_COMPARE = flags.DEFINE_list("compare", None, "two table.json files: print them side by side (no evaluation)")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "call jax.distributed.initialize() (one process per host)")


def compare(paths) -> int:
    from searchr2_jax.eval import table as table_lib

    if len(paths) != 2:
        raise app.UsageError(f"--compare takes two table.json files, got {len(paths)}")
    tables = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            tables.append(json.load(f))
    problems = table_lib.incomparable(*tables)
    if problems:
        print(f"refused: {paths[0]} and {paths[1]} were evaluated under settings that change EM:")
        print("\n".join(f"  {p}" for p in problems))
        return 2
    print(table_lib.compare_markdown(*tables, names=tuple(os.path.basename(os.path.dirname(p)) or p for p in paths)))
    return 0


def main(argv):
    del argv
    if _COMPARE.value:
        sys.exit(compare(_COMPARE.value))
    if _CONFIG.value is None or not _OUT.value:
        raise app.UsageError("--config and --out are needed (or --compare)")
    import jax

    from searchr2_jax import components
    from searchr2_jax.eval import evaluate as eval_lib
    from searchr2_jax.eval import loading
    from searchr2_jax.eval import table as table_lib
    from searchr2_jax.eval.run import EvalSetup, run_methods
    from searchr2_jax.metrics import configure_logging

    configure_logging()
    if _MULTIHOST.value:
        jax.distributed.initialize()
    unknown = [m for m in _METHODS.value if m not in eval_lib.METHODS]
    if unknown:
        raise app.UsageError(f"--methods: {unknown} not in {eval_lib.METHODS}")
    config = _CONFIG.value
    logging.info("compilation cache: %s", components.use_compile_cache(config) or "off")
    t0 = time.time()
    agent = loading.load_agent(config, _WORKDIR.value, _STEP.value, _CACHE.value)
    examples = loading.eval_examples(config, _LIMIT.value, agent.world)
    style = _STYLE.value if _STYLE.value != "auto" else ("flashrag" if config.model.chat else "protocol")
    setup = EvalSetup(agent.engine, agent.params, agent.retriever, config.rollout.topk, config.model.chat, style,
                      jax.random.key(config.seed), loading.few_shot_examples(config, _SHOTS.value))
    logging.info("evaluating %s on %d questions (%s)", ",".join(_METHODS.value), len(examples), agent.model)
    t1 = time.time()
    per_method: dict = {}
    results = run_methods(setup, examples, _METHODS.value, os.path.join(_OUT.value, "records"), _CHUNK.value,
                          seconds=per_method)
    wall = time.time() - t1
    settings = loading.settings(config, agent, style, _LIMIT.value, _SHOTS.value)
    table = table_lib.build_table(results, settings, n_boot=_BOOT.value,
                                  extra={"wall_s": {"load": t1 - t0, "evaluate": wall, "methods": per_method},
                                         "retriever_calls": agent.retriever.calls})
    paths = table_lib.write_table(table, _OUT.value)
    print(table_lib.to_markdown(table).split("**Settings**")[0])
    print(f"{len(examples)} questions x {len(results)} methods in {wall:.0f} s; wrote {paths['md']}")


if __name__ == "__main__":
    app.run(main)
