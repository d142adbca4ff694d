"""QA readers on fixtures in the real schemas, and bad input naming file, row and field."""

import json

import pytest

from searchr2_jax.data.qa import DataError, QAExample, read_flashrag_jsonl, read_qa_file, read_qa_files
from tests.data.conftest import JSONL_FIXTURES, fixture_path, write_parquet


@pytest.mark.parametrize("source", sorted(JSONL_FIXTURES))
def test_flashrag_jsonl_fixture(source):
    path = fixture_path(JSONL_FIXTURES[source])
    examples = read_qa_file(path)
    with open(path, encoding="utf-8") as f:
        raw = [json.loads(line) for line in f if line.strip()]
    assert len(examples) == len(raw) >= 5
    for ex, rec in zip(examples, raw):
        assert isinstance(ex, QAExample) and ex.data_source == source  # inferred from the FlashRAG directory
        assert (ex.id, ex.question, list(ex.golden_answers)) == (rec["id"], rec["question"], rec["golden_answers"])
        assert dict(ex.metadata) == rec.get("metadata", {})


def test_search_r1_parquet(search_r1_parquet, search_r1_rows):
    examples = read_qa_file(search_r1_parquet)
    assert [e.id for e in examples] == [r["id"] for r in search_r1_rows]
    assert [e.data_source for e in examples] == [r["data_source"] for r in search_r1_rows]
    assert examples[3].golden_answers == ("Arthur's Magazine",)
    assert examples[0].metadata["extra_info"] == {"split": "train", "index": 0}


def test_search_r1_parquet_without_flashrag_columns(search_r1_rows, tmp_path):
    path = write_parquet(search_r1_rows, tmp_path / "min.parquet", drop=("id", "question", "golden_answers"))
    examples = read_qa_file(path)
    assert [e.id for e in examples] == [f"train_{i}" for i in range(len(search_r1_rows))]
    # The question is cut from the prompt after "Question:", with the "?" the template added.
    assert examples[0].question == search_r1_rows[0]["question"] + "?"
    assert examples[4].golden_answers == tuple(search_r1_rows[4]["golden_answers"])


def _jsonl(tmp_path, rows, name="bad.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


GOOD = {"id": "a", "question": "q?", "golden_answers": ["x"]}


@pytest.mark.parametrize(
    "bad, field, what",
    [
        ({"question": "q?", "golden_answers": ["x"]}, "id", "missing"),
        ({"id": "b", "golden_answers": ["x"]}, "question", "missing"),
        ({"id": "b", "question": 3, "golden_answers": ["x"]}, "question", "expected str"),
        ({"id": "b", "question": "q", "golden_answers": "x"}, "golden_answers", "expected list"),
        ({"id": "b", "question": "q", "golden_answers": ["x", 5]}, "golden_answers", "expected str"),
        ({"id": True, "question": "q", "golden_answers": ["x"]}, "id", "expected str or int"),
        ({"id": "b", "question": "q", "golden_answers": ["x"], "metadata": [1]}, "metadata", "expected an object"),
    ],
)
def test_bad_jsonl_names_file_row_field(tmp_path, bad, field, what):
    path = _jsonl(tmp_path, [GOOD, bad])
    with pytest.raises(DataError) as err:
        read_flashrag_jsonl(path)
    msg = str(err.value)
    assert path in msg and "row 2" in msg and f"field {field!r}" in msg and what in msg


def test_bad_json_line(tmp_path):
    path = _jsonl(tmp_path, [GOOD, "{not json"])
    with pytest.raises(DataError, match=r"row 2: not JSON"):
        read_flashrag_jsonl(path)


def test_empty_answers_and_duplicate_ids_are_reported(tmp_path, caplog):
    rows = [GOOD, {"id": "b", "question": "q", "golden_answers": []}, {"id": "a", "question": "q2", "golden_answers": ["y"]},
            {"id": "c", "question": "q3", "golden_answers": ["  "]}]
    path = _jsonl(tmp_path, rows)
    with pytest.raises(DataError) as err:
        read_flashrag_jsonl(path)
    msg = str(err.value)
    assert "3 bad example(s)" in msg and "row 2: field 'golden_answers': empty" in msg
    assert "row 3: field 'id': duplicate id 'a' (first at row 1)" in msg and "row 4" in msg
    kept = read_flashrag_jsonl(path, on_problem="drop")
    assert [e.id for e in kept] == ["a"]
    assert sum("dropped" in r.getMessage() for r in caplog.records) == 3


def test_bad_parquet(search_r1_rows, tmp_path):
    rows = [dict(r) for r in search_r1_rows]
    rows[2]["golden_answers"] = None
    rows[2]["reward_model"] = {"style": "rule", "ground_truth": {"target": None}}
    path = write_parquet(rows, tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: row 2: field 'reward_model.ground_truth.target': missing"):
        read_qa_file(path)
    rows = [dict(r) for r in search_r1_rows]
    rows[1]["data_source"] = None
    with pytest.raises(DataError, match=r"row 1: field 'data_source': missing"):
        read_qa_file(write_parquet(rows, tmp_path / "bad2.parquet"))
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a readable parquet"):
        read_qa_file(str(tmp_path / "junk.parquet"))
    with pytest.raises(DataError, match="unknown QA file type"):
        read_qa_file(_jsonl(tmp_path, [GOOD], name="x.csv"))


def test_duplicates_across_files(tmp_path):
    a = _jsonl(tmp_path, [GOOD], "a.jsonl")
    b = _jsonl(tmp_path, [GOOD], "b.jsonl")
    with pytest.raises(DataError, match="duplicate id 'a'"):
        read_qa_files([a, b])
    assert len(read_qa_files([a, b], on_problem="drop")) == 1
    # the same id in two datasets is not a duplicate
    assert len(read_qa_files([fixture_path("nq/test.jsonl"), fixture_path("bamboogle/test.jsonl")])) == 13
