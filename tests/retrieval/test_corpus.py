import json
import os

import pytest

from searchr2_jax.retrieval.corpus import (JsonlCorpus, MemoryCorpus, ParquetCorpus, contents_of, open_corpus,
                                           split_contents, to_passage)
from searchr2_jax.retrieval.errors import CorpusError
from tests.retrieval.conftest import FIXTURES


def test_jsonl_rows_and_offsets_cache(corpus_path, corpus_records):
    c = open_corpus(corpus_path)
    assert isinstance(c, JsonlCorpus) and len(c) == len(corpus_records) == 12
    assert c.record(3) == (corpus_records[3]["id"], corpus_records[3]["contents"])
    p = c.passage(0, score=0.5)
    assert (p.id, p.title, p.score) == ("doc0", "Paris", 0.5) and p.text.startswith("Paris is the capital")
    assert os.path.isfile(corpus_path + ".offsets.npy")
    again = JsonlCorpus(corpus_path)  # from the cache
    assert [again.record(i) for i in range(12)] == [c.record(i) for i in range(12)]
    assert again.fingerprint == c.fingerprint
    with pytest.raises(IndexError):
        c.record(12)


def test_cache_is_invalidated_when_the_file_changes(corpus_path):
    n = len(JsonlCorpus(corpus_path))
    with open(corpus_path, "a") as f:
        f.write("\n" + json.dumps({"id": "new", "contents": '"New"\nadded'}) + "\n\n")
    os.utime(corpus_path, (1, 1))  # a different mtime even within the filesystem's time resolution
    c = JsonlCorpus(corpus_path)
    assert len(c) == n + 1 and c.record(n) == ("new", '"New"\nadded')  # blank lines skipped


def test_bad_json_names_file_and_line():
    c = JsonlCorpus(os.path.join(FIXTURES, "bad_json.jsonl"), cache_offsets=False)
    assert c.record(1)[0] == "1"
    with pytest.raises(CorpusError, match=r"bad_json\.jsonl:3: not valid JSON"):
        c.record(2)
    with pytest.raises(CorpusError, match=r"bad_json\.jsonl:3"):
        list(c.batches(2))


def test_missing_contents_names_file_line_and_field():
    c = JsonlCorpus(os.path.join(FIXTURES, "no_contents.jsonl"), cache_offsets=False)
    with pytest.raises(CorpusError, match=r"no_contents\.jsonl:2: record lacks the field 'contents'"):
        c.record(1)


def test_memory_corpus_checks_records():
    with pytest.raises(CorpusError, match="record 1"):
        MemoryCorpus([{"id": "a", "contents": "x"}, {"id": "b", "text": "y"}])
    c = open_corpus([{"contents": '"T"\nx'}])  # id defaults to the row number
    assert c.record(0) == ("0", '"T"\nx')
    assert c.fingerprint != open_corpus([{"contents": '"T"\ny'}]).fingerprint


def test_parquet_corpus(tmp_path, corpus_records):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(tmp_path / "c.parquet")
    pq.write_table(pa.Table.from_pylist(corpus_records), path, row_group_size=5)  # 3 row groups
    c = open_corpus(path)
    assert isinstance(c, ParquetCorpus) and len(c) == 12
    assert [c.record(i) for i in (11, 0, 6)] == [(r["id"], r["contents"]) for r in
                                                 (corpus_records[11], corpus_records[0], corpus_records[6])]
    assert sum(len(b[1]) for b in c.batches(4)) == 12
    bad = str(tmp_path / "bad.parquet")
    pq.write_table(pa.Table.from_pylist([{"id": "0", "text": "x"}]), bad)
    with pytest.raises(CorpusError, match="no column 'contents'"):
        open_corpus(bad)


def test_gzip_and_missing_files_are_refused(tmp_path):
    with pytest.raises(CorpusError, match="decompress"):
        open_corpus(str(tmp_path / "wiki-18.jsonl.gz"))
    with pytest.raises(CorpusError, match="not found"):
        open_corpus(str(tmp_path / "nope.jsonl"))


def test_title_split_and_round_trip():
    assert split_contents('"Paul Walker"\nan actor') == ("Paul Walker", "an actor")
    assert split_contents('"Paul Walker"\nan actor', strip_title_quotes=False) == ('"Paul Walker"', "an actor")
    assert split_contents("no title line") == ("no title line", "")
    for contents in ('"A"\ntext\nmore', 'B\ntext'):
        p = to_passage("1", contents)
        assert to_passage("1", contents_of(p)) == p
