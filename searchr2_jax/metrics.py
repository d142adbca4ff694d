"""Metric sinks: JSONL (one object per step, the record of truth) and TensorBoard (tensorboardX, no TensorFlow).

Only process 0 writes. Values are pulled to the host once per logged step, never inside the loop's hot path.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import logging

from searchr2_jax.jsonl import cut_torn_tail


class MetricWriter:
    def __init__(self, workdir: str, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        if cut_torn_tail(self.path):  # a run killed mid-write: its resumed steps are logged again anyway
            logging.warning("%s: cut a torn last row left by an interrupted run", self.path)
        self._file = open(self.path, "a")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict) -> dict:
        """Writes scalars; returns them as plain floats (for the progress bar)."""
        host = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items() if np.size(v) == 1}
        if self.enabled:
            self._file.write(json.dumps({"step": int(step), "time": time.time(), **host}) + "\n")
            self._file.flush()
            if self._tb is not None:
                for k, v in host.items():
                    self._tb.add_scalar(k, v, step)
        return host

    def close(self):
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()


class _LibraryInfoFilter:
    """Drops INFO records that libraries (orbax: a line per file it writes) send through absl's logger."""

    QUIET = ("/orbax/", "/jax/_src/", "/bm25s/")

    def filter(self, record) -> bool:
        return record.levelno >= 30 or not any(q in record.pathname for q in self.QUIET)


def configure_logging() -> None:
    """Launchers: our INFO lines (progress, evaluation tables) shown, library chatter below WARNING hidden."""
    import logging

    from absl import logging as absl_logging

    logging.getLogger("absl").setLevel(logging.INFO)
    handler = absl_logging.get_absl_handler()  # every logger's records end there (absl's root handler)
    if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
        handler.addFilter(_LibraryInfoFilter())
