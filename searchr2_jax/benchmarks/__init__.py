"""Benchmark suites: each module exposes `run(quick=False, **kwargs) -> dict[str, float]` of named figures.

`launch/benchmark.py --suite=NAME --json_out=FILE` imports the module lazily (so one suite's heavy imports never
slow another) and writes the figures as one JSON object. A suite that measures experiment configs names them in
`CONFIGS`; the launcher builds them (`configs/NAME.py`'s `get_config()`) and passes them as `run(configs={NAME:
ConfigDict})`, so the library never imports `configs/`.
"""

SUITES = {
    "memory": "searchr2_jax.benchmarks.memory",
    "model": "searchr2_jax.benchmarks.model",
    "reliability": "searchr2_jax.benchmarks.reliability",
    "retrieval": "searchr2_jax.benchmarks.retrieval",
    "rollout": "searchr2_jax.benchmarks.rollout",
    "train": "searchr2_jax.benchmarks.train",
}

CONFIGS = {
    "memory": ("qwen2p5_7b_r2", "qwen3_8b_r2", "qwen2p5_32b_r2"),  # the paper's runs, each on its declared pod
    "rollout": ("smollm2_135m",),
    "train": ("smollm2_135m",),
}
