"""PNG plots of training runs: reward, train and eval EM, searches, revision rate, response length, KL, entropy,
grad norm and step time, one line per run, from each workdir's metrics.jsonl.

  python launch/plot.py --workdir=/tmp/run_a --workdir=/tmp/run_b --out=/tmp/runs.png
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

_WORKDIRS = flags.DEFINE_multi_string("workdir", None, "a training run's workdir (repeat for several runs)",
                                      required=True)
_OUT = flags.DEFINE_string("out", None, "the PNG to write (default: WORKDIR/plots.png of the first run)")


def main(argv):
    del argv
    from searchr2_jax.plots import plot_workdirs

    out = _OUT.value or os.path.join(_WORKDIRS.value[0], "plots.png")
    drawn = plot_workdirs(_WORKDIRS.value, out)
    print(f"{out}: {len(drawn)} panels ({', '.join(drawn)})")


if __name__ == "__main__":
    app.run(main)
