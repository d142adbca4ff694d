"""Test setup, before jax is imported: 8 fake CPU devices so that mesh tests run anywhere, and one persistent
compilation cache for the session and every process it starts."""

import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()

# Many tests and launched runs build the same trainer, engine and programs; each new jitted closure would compile
# again without a cache keyed by the program itself. A fresh folder per session keeps CI's figures cold; set
# JAX_COMPILATION_CACHE_DIR to keep one across sessions.
_FRESH_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _FRESH_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="searchr2_tests_jax_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", False)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~20 s on 2 CPU cores (CI still runs it)")


def pytest_xdist_auto_num_workers(config):
    """One test process per core, as memory allows: a process holds a few GiB at its peak (paper-sized programs
    compiled abstractly, a whole trainer, 8 fake devices)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        gib = 8
    return max(1, min(cores, int(gib // 8)))


def pytest_unconfigure(config):
    if _FRESH_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Frees each module's compiled programs when it ends. XLA:CPU maps every compiled kernel into memory, and one
    process running the whole suite would otherwise approach the kernel's limit on memory maps
    (`vm.max_map_count`, 65,530 by default)."""
    yield
    jax.clear_caches()
