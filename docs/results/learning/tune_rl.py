"""Tune the learning experiment's RL settings on dev (never test): RL arms from a saved warm start, greedy dev EM.

  python docs/results/learning/tune_rl.py --warm=WARM_DIR --out=DIR --name=lr3e-4 \
      --set=optim.learning_rate=3e-4,train.steps=80

WARM_DIR is an experiment's `warm_start-<key>` folder. Each run trains one arm of configs/learning.py with the
overrides given and evaluates it greedily on `data.eval_examples` dev questions every `train.eval_every` steps,
and once before RL; it writes DIR/NAME/metrics.jsonl and DIR/NAME.json (dev EM by step).
"""

import ast
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

_WARM = flags.DEFINE_string("warm", None, "the warm start's folder (holds hf/)", required=True)
_OUT = flags.DEFINE_string("out", None, "where runs go", required=True)
_NAME = flags.DEFINE_string("name", None, "this run's name", required=True)
_ARM = flags.DEFINE_string("arm", "search_r1", "search_r1 | search_r2 | ppo")
_SEED = flags.DEFINE_integer("seed", 0, "the arm's seed")
_SET = flags.DEFINE_string("set", "", "comma-separated dotted.key=value overrides of the arm's config")
_ARG = flags.DEFINE_string("config_arg", "", "switches of configs/learning.py, e.g. steps=80")


def _override(c, spec: str):
    """`--set` as dotted keys; ConfigDict refuses a value of the wrong type, and an unknown key (which
    `update_from_flattened_dict` would add) is refused here, so a typo never runs as the default."""
    flat = {}
    for item in filter(None, spec.split(",")):
        key, _, raw = item.partition("=")
        *path, leaf = key.split(".")
        node = c
        for p in path:
            node = node.get(p) if hasattr(node, "get") else None
        if node is None or not hasattr(node, "keys") or leaf not in node:
            raise KeyError(f"--set: {key!r} is not a config field")
        try:
            flat[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            flat[key] = raw
    c.update_from_flattened_dict(flat)


def main(argv):
    del argv
    import jax

    from configs.learning import get_config
    from searchr2_jax import experiment as X
    from searchr2_jax.eval import evaluate as eval_lib
    from searchr2_jax.metrics import configure_logging
    from searchr2_jax.trainer import Trainer

    configure_logging()
    c = X.arm_config(get_config(_ARG.value or None), _ARM.value, _SEED.value, _WARM.value)
    c.train.ckpt_every = 10**6  # only the final checkpoint: tuning runs are not resumed
    _override(c, _SET.value)
    wdir = os.path.join(_OUT.value, _NAME.value)
    trainer = Trainer(c, wdir)
    dev = trainer.eval_examples
    rng = jax.random.fold_in(trainer.eval_rng, 0)
    curve = {0: eval_lib.evaluate(trainer.eval_engine, trainer.state.params, dev, rng)["eval/em"]}
    print(f"{_NAME.value}: dev EM before RL {curve[0]:.4f} on {len(dev)}", flush=True)
    trainer.run()
    for line in open(os.path.join(wdir, "metrics.jsonl")):
        row = json.loads(line)
        if "eval/em" in row:
            curve[int(row["step"])] = row["eval/em"]
    out = dict(name=_NAME.value, arm=_ARM.value, seed=_SEED.value, set=_SET.value, dev_examples=len(dev),
               device=str(jax.devices()[0].device_kind), dev_em=curve)
    with open(os.path.join(_OUT.value, f"{_NAME.value}.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out))


if __name__ == "__main__":
    app.run(main)
