import json
import os

import pytest

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "data")
JSONL_FIXTURES = {
    "nq": "nq/test.jsonl",
    "triviaqa": "triviaqa/test.jsonl",
    "popqa": "popqa/test.jsonl",
    "hotpotqa": "hotpotqa/dev.jsonl",
    "2wikimultihopqa": "2wikimultihopqa/dev.jsonl",
    "musique": "musique/dev.jsonl",
    "bamboogle": "bamboogle/test.jsonl",
}


def fixture_path(rel: str) -> str:
    return os.path.abspath(os.path.join(FIXTURES, rel))


def write_parquet(rows, path, drop=()):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k not in drop} for r in rows]), path)
    return str(path)


@pytest.fixture(scope="session")
def search_r1_rows():
    with open(fixture_path("search_r1_train.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="session")
def search_r1_parquet(search_r1_rows, tmp_path_factory):
    """The fixture rows as Search-R1's train.parquet (FlashRAG columns kept, as `dataset.map` keeps them)."""
    return write_parquet(search_r1_rows, tmp_path_factory.mktemp("pq") / "train.parquet")
