"""JSON lines: errors name file and row; a torn last line is skipped only where asked, and cut before appending."""

import pytest

from searchr2_jax.data.qa import DataError
from searchr2_jax.jsonl import append_jsonl, iter_jsonl, read_jsonl


def test_rows_errors_and_torn_tails(tmp_path):
    p = tmp_path / "a.jsonl"
    append_jsonl(str(p), [{"a": 1}, [2]])
    append_jsonl(str(p), [])
    assert list(iter_jsonl(str(p))) == [(1, {"a": 1}), (2, [2])]
    p.write_text(p.read_text() + "\n" + '{"b": ')  # a blank row, then a write cut short
    with pytest.raises(ValueError, match=r"a\.jsonl: row 4: not JSON"):
        read_jsonl(str(p))
    assert read_jsonl(str(p), torn_tail_ok=True) == [{"a": 1}, [2]]
    append_jsonl(str(p), [{"c": 3}])
    assert read_jsonl(str(p)) == [{"a": 1}, [2], {"c": 3}]  # the torn row is gone, the new one whole
    p.write_text('{"a": 1}\nnope\n{"a": 2}\n')
    with pytest.raises(DataError, match="row 2"):  # damage before the last row is never skipped
        list(iter_jsonl(str(p), torn_tail_ok=True, error=DataError))
