"""The learning experiment: one shared warm start, the baselines, RL arms over seeds, held-out test figures.

  python launch/experiment.py --config=configs/learning.py --out=/tmp/learning
  python launch/experiment.py --config=configs/learning.py --out=/tmp/learning_quick --quick      # ~2 minutes
  python launch/experiment.py --config=configs/learning.py:arms=search_r1+search_r2+ppo,steps=100 --out=...

Writes OUT/summary.json, OUT/table.md and OUT/curves.png (see searchr2_jax/experiment.py for the layout). Re-running
with the same --out continues where it stopped: finished units are read back, an interrupted arm resumes from its
latest checkpoint. `--config.key=value` overrides any field, e.g. --config.experiment.test_examples=996.
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `configs` importable

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs", "learning.py"),
                                          "the experiment's config file",
                                          lock_config=False)
_OUT = flags.DEFINE_string("out", None, "the experiment's directory (reused to continue)", required=True)
_QUICK = flags.DEFINE_bool("quick", False, "the whole pipeline at toy sizes (the config's quick=1)")


def main(argv):
    del argv
    from searchr2_jax import components
    from searchr2_jax.experiment import run_experiment
    from searchr2_jax.metrics import configure_logging

    configure_logging()
    config = _CONFIG.value
    if _QUICK.value:
        path = config_flags.get_config_filename(flags.FLAGS["config"])
        module = config_flags.config_flags._LoadConfigModule("experiment_config", path.split(":")[0])  # noqa: SLF001
        arg = path.partition(":")[2]
        config = module.get_config(",".join(filter(None, [arg, "quick=1"])))
    logging.info("compilation cache: %s", components.use_compile_cache(config) or "off")
    summary = run_experiment(config, _OUT.value)
    print(open(os.path.join(_OUT.value, "table.md")).read())
    print(json.dumps({k: v for k, v in summary.items() if k.endswith("_em")}, indent=1))


if __name__ == "__main__":
    app.run(main)
