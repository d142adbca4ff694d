"""MetricWriter: rows appended as JSON lines; a torn last row left by a killed run is cut before the next write."""

import os

from searchr2_jax.jsonl import read_jsonl
from searchr2_jax.metrics import MetricWriter


def test_a_torn_last_row_is_cut_and_the_next_rows_start_lines_of_their_own(tmp_path):
    path = os.path.join(tmp_path, "metrics.jsonl")
    with open(path, "w") as f:
        f.write('{"step": 1, "time": 0.0, "train/loss": 0.5}\n{"step": 2, "time": 0.0, "train/lo')  # killed mid-row
    writer = MetricWriter(str(tmp_path), tensorboard=False)
    assert writer.write(2, {"train/loss": 0.25}) == {"train/loss": 0.25}
    writer.write(3, {"train/loss": 0.125})
    writer.close()
    rows = read_jsonl(path)
    assert [(r["step"], r["train/loss"]) for r in rows] == [(1, 0.5), (2, 0.25), (3, 0.125)]
