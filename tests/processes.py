"""Two (or more) CPU processes on localhost under `jax.distributed`, for the multi-host tests: each worker script
gets `127.0.0.1:PORT INDEX *args`; a run that outlives its timeout kills every worker, so nothing hangs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(script: str, args: list[str], root: str, num: int = 2, devices_each: int = 2,
                timeout_s: float = 90, what: str = "workers") -> list[str]:
    """Runs `num` copies of `script` (cwd and import root `root`); returns their outputs, failing the test with
    a worker's log tail if one exits non-zero."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_each}",
               PYTHONPATH=os.pathsep.join([root] + [p for p in sys.path if p]))
    port = free_port()
    procs = [subprocess.Popen([sys.executable, script, f"127.0.0.1:{port}", str(i), *args], env=env, cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(num)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout_s)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        for p in procs:
            p.communicate()
        pytest.fail(f"{what} timed out after {timeout_s:g} s (killed all {num})")
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"{what}: process {i} failed:\n{outputs[i][-5000:]}"
    return outputs
