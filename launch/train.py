"""Train a Search-R2 agent.

  python launch/train.py --config=configs/smoke.py --workdir=/tmp/searchr2_smoke
  python launch/train.py --config=configs/synthetic.py:variant=search_r1 --workdir=...     # an ablation row
  python launch/train.py --config=configs/qwen2p5_7b_r2.py --workdir=/mnt/disks/shared/run --multihost  # a TPU pod (a shared local/NFS path; gs:// metrics not yet)

Re-running with the same --workdir resumes from its latest checkpoint. If that checkpoint cannot be read (truncated,
corrupted), the run exits naming it and the earlier steps; `--restore_step=N` resumes from step N instead, moving the
later checkpoints into WORKDIR/checkpoints_discarded/.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `configs` importable

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "a configs/*.py file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, metrics and the tokenizer go", required=True)
_RESTORE_STEP = flags.DEFINE_integer("restore_step", None, "resume from this checkpoint step rather than the latest "
                                     "(0: from scratch); later checkpoints are moved to WORKDIR/checkpoints_discarded/")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "call jax.distributed.initialize() (one process per host)")


def main(argv):
    del argv
    import jax

    from searchr2_jax.metrics import configure_logging

    configure_logging()

    if _MULTIHOST.value:
        jax.distributed.initialize()
    from searchr2_jax import components
    from searchr2_jax.checkpoint import CheckpointError
    from searchr2_jax.trainer import Trainer

    logging.info("devices: %s; compilation cache: %s", jax.devices(),
                 components.use_compile_cache(_CONFIG.value) or "off")
    trainer = Trainer(_CONFIG.value, _WORKDIR.value)
    try:
        final = trainer.run(restore_step=_RESTORE_STEP.value)
    except CheckpointError as e:  # a message to act on, not a traceback
        # A failed restore leaves orbax reads behind that fail again as they are collected at exit, through
        # unraisable-exception hooks or asyncio's "exception was never retrieved" log; their tracebacks would bury
        # the message.
        import logging as std_logging

        sys.unraisablehook = lambda unraisable: None
        std_logging.getLogger("asyncio").disabled = True
        sys.exit(f"error: {e}")
    print(json.dumps({k: round(v, 4) for k, v in sorted(final.items())}, indent=1))


if __name__ == "__main__":
    app.run(main)
