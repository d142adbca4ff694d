"""Test setup: 8 fake CPU devices so that mesh tests run anywhere; must run before jax is imported."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", False)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~20 s on 2 CPU cores (CI still runs it)")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Frees each module's compiled programs when it ends. XLA:CPU maps every compiled kernel into memory, and one
    process running the whole suite would otherwise approach the kernel's limit on memory maps
    (`vm.max_map_count`, 65,530 by default)."""
    yield
    jax.clear_caches()
