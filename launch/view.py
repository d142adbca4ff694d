"""A trajectory viewer: one self-contained HTML page (no server, no network) of a run's trajectory dumps
(WORKDIR/trajectories/, written every train.dump_every RL steps and at every evaluation), with filters, each
trajectory's turns, passages, the Meta-Refiner's scores and cut, its discarded draft beside the regeneration, and
optionally a second dump side by side on the same questions.

  python launch/view.py --workdir=/tmp/searchr2_smoke                      # the latest eval dump (else train)
  python launch/view.py --workdir=/tmp/searchr2_smoke --step=6 --kind=train
  python launch/view.py --jsonl=/tmp/run/trajectories/eval_step50.jsonl --out=/tmp/view.html
  python launch/view.py --workdir=/tmp/r2 --compare=/tmp/r1                 # run A against run B
  python launch/view.py --workdir=/tmp/r2 --step=100 --compare=50           # step 100 against step 50
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "a training run's workdir (its trajectories/ dumps)")
_STEP = flags.DEFINE_integer("step", None, "the dump's step (default: the latest)")
_KIND = flags.DEFINE_enum("kind", None, ["train", "eval"], "the dump's kind (default: eval where there is one)")
_JSONL = flags.DEFINE_string("jsonl", None, "a dump file, instead of --workdir")
_COMPARE = flags.DEFINE_string("compare", None, "a second dump beside the first: a JSONL file, a workdir, "
                               "WORKDIR:STEP, or a STEP of --workdir")
_OUT = flags.DEFINE_string("out", None, "the HTML file (default: WORKDIR/view.html, or the JSONL's name .html)")


def main(argv):
    del argv
    from searchr2_jax import viewer

    if bool(_WORKDIR.value) == bool(_JSONL.value):
        raise app.UsageError("give one of --workdir or --jsonl")
    a = viewer.load_side(_WORKDIR.value or _JSONL.value, _STEP.value, _KIND.value)
    b = viewer.load_compare(_COMPARE.value, _WORKDIR.value, _KIND.value) if _COMPARE.value else None
    out = _OUT.value or (os.path.join(_WORKDIR.value, "view.html") if _WORKDIR.value
                         else os.path.splitext(_JSONL.value)[0] + ".html")
    size = viewer.write_page(out, a, b, title="trajectories" if b is None else "trajectories: A vs B")
    print(f"{out}: {len(a.records)} trajectories{f' beside {len(b.records)}' if b else ''}, {size / 1e6:.2f} MB")


if __name__ == "__main__":
    app.run(main)
