"""Run one benchmark suite and write its figures as JSON.

  python launch/benchmark.py --suite=model --json_out=/tmp/model.json

Figures are measured in one process, so ratios (MFU against a matmul peak measured here, speedups against a peer
doing the same work here) stay meaningful on a shared, noisy machine.
"""

import importlib
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `configs` importable

from absl import app, flags  # noqa: E402

from searchr2_jax.benchmarks import CONFIGS, SUITES  # noqa: E402

FLAGS = flags.DEFINE_string("suite", None, f"one of {sorted(SUITES)}", required=True)
JSON_OUT = flags.DEFINE_string("json_out", None, "where to write the JSON figures (printed either way)")
QUICK = flags.DEFINE_bool("quick", False, "smaller shapes, for a smoke check of the benchmark code itself")


def main(argv):
    del argv
    if FLAGS.value not in SUITES:
        raise app.UsageError(f"--suite={FLAGS.value!r} is not one of {sorted(SUITES)}")
    import jax

    module = importlib.import_module(SUITES[FLAGS.value])
    kwargs = {}
    if FLAGS.value in CONFIGS:
        kwargs["configs"] = {name: importlib.import_module(f"configs.{name}").get_config()
                             for name in CONFIGS[FLAGS.value]}
    start = time.time()
    figures = module.run(quick=QUICK.value, **kwargs)
    figures = dict(figures)
    figures["_meta"] = {
        "suite": FLAGS.value,
        "device": str(jax.devices()[0].device_kind),
        "num_devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "jax": jax.__version__,
        "wall_s": round(time.time() - start, 2),
        "quick": QUICK.value,
    }
    text = json.dumps(figures, indent=2, sort_keys=True)
    print(text)
    if JSON_OUT.value:
        with open(JSON_OUT.value, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    app.run(main)
