"""searchr2_jax: install with `pip install -e .` (core) or `pip install -e ".[test]"` (tests)."""

from setuptools import find_packages, setup

# A tested set: these pins were installed together and the test suite passed on them (Python 3.11, CPU).
CORE = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "numpy==2.4.6",
    "faiss-cpu==1.15.1",
    "bm25s==0.3.16",  # BM25 backend: scipy-sparse scores, pure Python (numpy/scipy only; no Java)
    "transformers==5.12.1",  # tokenizers, configs and chat templates only (5.x has no Flax models)
    "tokenizers==0.22.2",
    "safetensors==0.7.0",
    "huggingface-hub==1.33.0",
    "tensorflow-datasets==4.9.10",  # array_record builders; TensorFlow itself is never needed
    "array-record==0.8.6",
    "grain==0.2.18",
    "gguf==0.19.0",
    "tqdm==4.70.1",
    "tensorboardX==2.6.5",  # TensorBoard event files without TensorFlow
    "matplotlib==3.11.2",  # the experiment's learning curves (Agg backend, no display)
]

setup(
    name="searchr2_jax",
    version="0.1.0",
    description="Search-R2 in JAX: search agents with an Actor and a Meta-Refiner trained by GRPO/PPO",
    packages=find_packages(include=["searchr2_jax", "searchr2_jax.*"]),
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require={
        # torch is a parity reference for tests only; never imported by the package.
        "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "hypothesis==6.170.17", "torch==2.13.0"],
        "gpu": ["jax[cuda12]==0.10.2"],
        "tpu": ["jax[tpu]==0.10.2"],
    },
)
