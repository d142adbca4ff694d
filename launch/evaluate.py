"""Evaluate a checkpoint as the paper does: the Actor alone (Meta-Refiner off), greedy, EM/F1 per dataset.

  python launch/evaluate.py --config=configs/smoke.py --workdir=/tmp/searchr2_smoke
  python launch/evaluate.py --config=configs/synthetic.py:variant=search_r1 --workdir=... --config.data.eval_split=test
  python launch/evaluate.py --config=configs/qwen2p5_7b_r2.py:root=... --workdir=... --config.data.eval_examples=1000000

The config must be the one the run was trained with (same model, tokenizer and state layout); its eval split
(`data.eval_split` of the synthetic world, or `data.eval_files`), capped at `data.eval_examples`, is evaluated.
Set-up (world, tokenizer from the workdir, retriever, model, mesh, rollout engine) is the Trainer's.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `configs` importable

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "the configs/*.py file the run was trained with",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "a training workdir (checkpoints/, tokenizer/)", required=True)
_STEP = flags.DEFINE_integer("step", None, "checkpoint step to evaluate (default: the latest)")
_BATCH = flags.DEFINE_integer("batch_size", 64, "questions per rollout call")
_JSON_OUT = flags.DEFINE_string("json_out", None, "also write the table (and step, wall time) as JSON here")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "call jax.distributed.initialize() (one process per host)")


def main(argv):
    del argv
    import jax

    from searchr2_jax.metrics import configure_logging

    configure_logging()
    if _MULTIHOST.value:
        jax.distributed.initialize()
    from searchr2_jax.eval import evaluate as eval_lib
    from searchr2_jax.trainer import Trainer

    config = _CONFIG.value
    if not os.path.isdir(os.path.join(_WORKDIR.value, "checkpoints")):
        raise app.UsageError(f"--workdir={_WORKDIR.value}: no checkpoints/ (train first with launch/train.py)")
    trainer = Trainer(config, _WORKDIR.value)
    try:
        step = trainer.restore(_STEP.value)
        if step == 0:
            raise app.UsageError(f"--workdir={_WORKDIR.value}: no checkpoint to evaluate")
        logging.info("evaluating step %d on %d questions (Actor only, greedy)", step, len(trainer.eval_examples))
        t0 = time.time()
        table = eval_lib.evaluate(trainer.eval_engine, trainer.state.params, trainer.eval_examples,
                                  jax.random.fold_in(trainer.eval_rng, step), chat=config.model.chat,
                                  batch_size=_BATCH.value)
        wall = time.time() - t0
    finally:
        trainer.ckpt.close()
        trainer.writer.close()
    print(f"step {step}, {len(trainer.eval_examples)} questions, {wall:.1f} s")
    print(eval_lib.format_table(table))
    if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w") as f:
            json.dump({"step": step, "wall_s": wall, "num_questions": len(trainer.eval_examples), **table}, f,
                      indent=1, sort_keys=True)


if __name__ == "__main__":
    app.run(main)
