"""One process of the two-process sharded forward in test_sharding.py (2 CPU devices each, 4 in the mesh).

argv: coordinator_address process_id out_dir. Writes out_dir/rows_{id}.npy (the batch rows its devices hold) and,
from process 0, out_dir/logits.npy (the gathered global logits).
"""

import os
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process CPU collectives

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from searchr2_jax.models import decoder  # noqa: E402
from searchr2_jax.models import sharding as sh  # noqa: E402


def main():
    coordinator, pid, out_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    assert sh.maybe_initialize_distributed(2, pid, coordinator)
    assert jax.process_count() == 2 and jax.device_count() == 4, (jax.process_count(), jax.device_count())
    # Import the test's config lazily (same module dir) so both sides use identical shapes.
    sys.path.insert(0, os.path.dirname(__file__))
    from test_sharding import CFG, B, T  # noqa: E402

    mesh = sh.make_mesh((2, 1, 2))  # data spans the two processes, tensor within each
    shardings = sh.param_shardings(CFG, mesh)
    # Every process runs the same init program; each device keeps only its shards.
    params = jax.jit(lambda: decoder.init_params(CFG, jax.random.key(0)), out_shardings=shardings)()
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, size=(B, T)).astype(np.int32)
    per = B // jax.process_count()
    local_rows = np.arange(pid * per, (pid + 1) * per)
    batch = sh.host_local_to_global(tokens[local_rows], mesh)
    assert batch.shape == (B, T)
    fwd = jax.jit(lambda p, t: decoder.apply(CFG, p, t)[0],
                  out_shardings=NamedSharding(mesh, P(sh.BATCH_AXES, None, "tensor")))
    logits = fwd(params, batch)
    # The batch rows this process's devices actually hold (from the global array, not from local_rows).
    held = sorted({r for s in batch.addressable_shards for r in range(B)[s.index[0]]})
    np.save(os.path.join(out_dir, f"rows_{pid}.npy"), np.asarray(held))
    gathered = np.asarray(multihost_utils.process_allgather(logits, tiled=True))
    if pid == 0:
        np.save(os.path.join(out_dir, "logits.npy"), gathered)
    jnp.zeros(()).block_until_ready()
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
