"""The README's main job: RL lifting a small search agent's held-out EM, on 2 CPU cores in under 10 minutes.

The learning experiment (configs/learning.py) at `stop_early=0.5` -- a demonstrator that answers half of its
multi-hop questions one hop short -- cut to what fits the budget:
- the warm start is the one that experiment trains (about 30 minutes on 2 cores), shipped in
  assets/warm_start_stop_early/ and checked against these settings' hash before use;
- one RL arm, search_r1 (GRPO with the outcome reward, Meta-Refiner off: in this setting it is the arm that learns,
  see docs/results/learning_stop_early/), seed 0, 40 steps (chosen on the dev curves of that experiment);
- the warm start and the trained agent are evaluated greedily, Actor only, on 500 held-out test questions, beside
  the no-search floor (each question template's most common training answer), with the gain's paired interval.

  python launch/experiment.py --config=configs/main.py --out=/tmp/searchr2_main

Switches: steps, seed, test_examples, arm (search_r2 runs the Meta-Refiner arm instead, about 2x slower).
"""

import os

from configs import learning
from searchr2_jax.config import parse_arg

WARM_START = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                          "warm_start_stop_early")


def get_config(arg=None):
    a = parse_arg(arg, steps=40, seed=0, test_examples=500, arm="search_r1")
    c = learning.get_config(f"stop_early=0.5,steps={a.steps},seeds={a.seed},arms={a.arm},"
                            f"test_examples={a.test_examples}")
    c.experiment.update(dict(warm_start=WARM_START, headroom=False, baselines=("majority",)))
    c.train.update(dict(diagnostics_every=0, progress=True))
    return c
