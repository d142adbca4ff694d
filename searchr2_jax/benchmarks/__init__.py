"""Benchmark suites: each module exposes `run(**kwargs) -> dict[str, float]` of named figures.

`launch/benchmark.py --suite=NAME --json_out=FILE` imports the module lazily (so one suite's heavy imports never
slow another) and writes the figures as one JSON object.
"""

SUITES = {
    "memory": "searchr2_jax.benchmarks.memory",
    "model": "searchr2_jax.benchmarks.model",
    "reliability": "searchr2_jax.benchmarks.reliability",
    "retrieval": "searchr2_jax.benchmarks.retrieval",
    "rollout": "searchr2_jax.benchmarks.rollout",
    "train": "searchr2_jax.benchmarks.train",
}
