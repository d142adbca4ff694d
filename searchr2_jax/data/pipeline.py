"""The QA input pipeline (grain): per-host shard -> per-epoch shuffle -> batches of prompt groups.

`QAPipeline(source, batch_size=B, group_size=G, seed=s)` yields `GroupBatch`es of B prompts, each meant to be
rolled out G times (GRPO). Properties the trainer relies on:
- Deterministic: the same source, seed and sharding give the same batches (grain's index shuffle, reseeded per epoch).
- Per host: host `shard_index` of `shard_count` (default: `jax.process_index()/process_count()`) reads a disjoint,
  equal-sized slice, so every host runs the same number of steps (the at most `shard_count - 1` leftover examples
  are dropped and logged).
- Group ids are a stable hash of (data_source, example id, epoch): they never collide across datasets, batches or
  epochs, unlike Search-R1's row index (issue #88), and do not depend on the batch layout.
- Resumable: `iterator.get_state()` is a small JSON-able dict; `set_state` on a fresh iterator continues exactly
  where the saved one stopped (mid-epoch included) and refuses a state from a different pipeline.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Sequence

import grain
import numpy as np
from absl import logging

from searchr2_jax.data.qa import QAExample


def group_id(data_source: str, example_id: str, epoch: int) -> int:
    """A 63-bit id for one prompt group, stable across runs, hosts and dataset mixtures."""
    digest = hashlib.blake2b(f"{data_source}\x00{example_id}\x00{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


@dataclasses.dataclass(frozen=True)
class GroupBatch:
    """B prompts, each to be sampled `group_size` times; per-row arrays have B * group_size entries."""

    examples: tuple[QAExample, ...]
    epochs: np.ndarray  # [B] epoch each prompt was drawn in
    group_size: int

    @property
    def group_ids(self) -> np.ndarray:
        """[B * G] int64 stable group id of each rollout row (rows of one prompt are adjacent)."""
        ids = [group_id(ex.data_source, ex.id, int(e)) for ex, e in zip(self.examples, self.epochs)]
        return np.repeat(np.asarray(ids, dtype=np.int64), self.group_size)

    @property
    def group_index(self) -> np.ndarray:
        """[B * G] int32 batch-local group number 0..B-1 (for device-side segment ops)."""
        return np.repeat(np.arange(len(self.examples), dtype=np.int32), self.group_size)

    @property
    def questions(self) -> list[str]:
        """[B * G] question of each rollout row."""
        return [ex.question for ex in self.examples for _ in range(self.group_size)]

    @property
    def golden_answers(self) -> list[tuple[str, ...]]:
        return [ex.golden_answers for ex in self.examples for _ in range(self.group_size)]


class QAPipeline:
    """Batches of prompt groups over a random-access source of `QAExample` (a list or `tfds_builders.QADataSource`)."""

    def __init__(
        self,
        source: Sequence[QAExample],
        *,
        batch_size: int,
        group_size: int = 1,
        seed: int = 0,
        shard_index: int | None = None,
        shard_count: int | None = None,
        num_epochs: int | None = None,
        drop_remainder: bool = True,
    ):
        if batch_size < 1 or group_size < 1:
            raise ValueError(f"batch_size ({batch_size}) and group_size ({group_size}) must be >= 1")
        if not 0 <= seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {seed}")
        if shard_index is None or shard_count is None:
            import jax

            shard_index, shard_count = jax.process_index(), jax.process_count()
        if not 0 <= shard_index < shard_count:
            raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
        n = len(source)
        per_shard = n // shard_count
        if per_shard == 0:
            raise ValueError(f"{n} examples cannot feed {shard_count} shards")
        if n % shard_count:
            logging.info("dropping %d of %d examples so that %d shards are equal", n % shard_count, n, shard_count)
        self.batch_size, self.group_size, self.seed = batch_size, group_size, seed
        self.shard_index, self.shard_count, self.num_epochs = shard_index, shard_count, num_epochs
        self.examples_per_shard = per_shard

        group = group_size
        ds = grain.MapDataset.source(source)[: per_shard * shard_count][shard_index::shard_count]
        ds = ds.shuffle(seed=seed).repeat(num_epochs)
        ds = ds.map_with_index(lambda i, ex: (i // per_shard, ex))
        ds = ds.batch(batch_size, drop_remainder=drop_remainder,
                      batch_fn=lambda items: GroupBatch(tuple(ex for _, ex in items),
                                                        np.asarray([e for e, _ in items], np.int32), group))
        self._dataset = ds
        # Fingerprint of everything that decides the stream, to refuse a state saved by another pipeline.
        self.fingerprint = hashlib.sha1(json.dumps(
            [n, batch_size, group_size, seed, shard_index, shard_count, num_epochs, drop_remainder,
             _first_ids(source)]).encode()).hexdigest()[:16]

    def __len__(self) -> int:
        """Number of batches (finite `num_epochs` only)."""
        return len(self._dataset)

    def __getitem__(self, step: int) -> GroupBatch:
        """Random access to batch `step` (what the iterator yields at that step)."""
        return self._dataset[step]

    def __iter__(self) -> "QAIterator":
        return QAIterator(self)


def _first_ids(source: Sequence[QAExample], k: int = 4) -> list[str]:
    return [f"{source[i].data_source}/{source[i].id}" for i in range(min(k, len(source)))]


class QAIterator:
    """Iterator over a `QAPipeline` with a checkpointable state."""

    def __init__(self, pipeline: QAPipeline):
        self._pipeline = pipeline
        # One reader thread: examples are tiny host objects and the machines' cores belong to the trainer.
        opts = grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)
        self._it = pipeline._dataset.to_iter_dataset(read_options=opts).__iter__()

    def __iter__(self) -> "QAIterator":
        return self

    def __next__(self) -> GroupBatch:
        return next(self._it)

    def get_state(self) -> dict[str, Any]:
        """A JSON-able dict: grain's iterator state plus the pipeline fingerprint."""
        return {"grain": self._it.get_state(), "fingerprint": self._pipeline.fingerprint}

    def set_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or "grain" not in state:
            raise ValueError(f"not a QAIterator state: {state!r:.200}")
        if state.get("fingerprint") != self._pipeline.fingerprint:
            raise ValueError(
                f"iterator state was saved by a different pipeline (fingerprint {state.get('fingerprint')!r}, "
                f"this one {self._pipeline.fingerprint!r}): source, batch/group size, seed or sharding changed")
        self._it.set_state(state["grain"])
