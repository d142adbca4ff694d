"""Passage corpora in Search-R1's format, with cheap row lookup at wiki-18 scale (~21M rows, ~14 GB).

A record is `{"id": "0", "contents": "\\"Title\\"\\ntext"}`: the first line of `contents` is the title (quoted in
Search-R1's corpora), the rest is the text. Three stores share one interface (`len`, `record(i)`, `batches`):

- `JsonlCorpus`: the file is memory-mapped; a one-time scan records the byte offset of every non-blank line
  (numpy over the mapping) and caches it beside the file as `<file>.offsets.npy`. A lookup parses one line.
- `ParquetCorpus`: columns `contents` (and optional `id`), read one row group at a time through a small LRU cache.
- `MemoryCorpus`: a list of dicts (synthetic corpora, tests).

Nothing holds a Python dict of all text. A line that is not JSON, not an object, or lacks a string `contents`
raises `CorpusError` naming the file and line.
"""

from __future__ import annotations

import collections
import hashlib
import json
import mmap
import os
from typing import Iterator, Sequence

import numpy as np

from searchr2_jax.retrieval.errors import CorpusError
from searchr2_jax.retrieval.types import Passage

_SAMPLE = 1 << 20  # bytes hashed at each end of a corpus file for its fingerprint


def split_contents(contents: str, strip_title_quotes: bool = True) -> tuple[str, str]:
    """Search-R1's split: title = first line of `contents`, text = the rest. Its observation keeps the title's quotes
    (`Doc 1(Title: "Paul Walker") ...`); `strip_title_quotes` drops them, as our demonstrations do."""
    title, _, text = contents.partition("\n")
    if strip_title_quotes and len(title) >= 2 and title[0] == title[-1] == '"':
        title = title[1:-1]
    return title, text


def to_passage(doc_id: str, contents: str, score: float = 0.0, strip_title_quotes: bool = True) -> Passage:
    title, text = split_contents(contents, strip_title_quotes)
    return Passage(id=str(doc_id), title=title, text=text, score=float(score))


def contents_of(p: Passage) -> str:
    """A passage back in Search-R1's `contents` form (quoted title line), for the /retrieve server."""
    title = p.title if (len(p.title) >= 2 and p.title[0] == p.title[-1] == '"') else f'"{p.title}"'
    return f"{title}\n{p.text}"


def _check_record(rec, where: str, row: int) -> tuple[str, str]:
    if not isinstance(rec, dict):
        raise CorpusError(f"{where}: a corpus record must be a JSON object, got {type(rec).__name__}")
    contents = rec.get("contents")
    if not isinstance(contents, str):
        what = "lacks the field 'contents'" if "contents" not in rec else "has a non-string 'contents'"
        raise CorpusError(f"{where}: record {what} (Search-R1 format: {{\"id\": ..., \"contents\": "
                          f"\"\\\"Title\\\"\\ntext\"}})")
    doc_id = rec.get("id", row)
    return str(doc_id), contents


class Corpus:
    """Interface: `len(c)`, `c.record(i) -> (id, contents)`, `c.batches(size, start)`, `c.fingerprint`."""

    source: str = "<memory>"

    def __len__(self) -> int:
        raise NotImplementedError

    def record(self, i: int) -> tuple[str, str]:
        raise NotImplementedError

    def records(self, rows: Sequence[int]) -> list[tuple[str, str]]:
        return [self.record(int(r)) for r in rows]

    def batches(self, size: int, start: int = 0) -> Iterator[tuple[int, list[str], list[str]]]:
        """(first row, ids, contents) for consecutive rows from `start`; every record is validated on the way."""
        for s in range(start, len(self), size):
            recs = self.records(range(s, min(s + size, len(self))))
            yield s, [r[0] for r in recs], [r[1] for r in recs]

    def passage(self, i: int, score: float = 0.0, strip_title_quotes: bool = True) -> Passage:
        doc_id, contents = self.record(i)
        return to_passage(doc_id, contents, score, strip_title_quotes)

    @property
    def fingerprint(self) -> dict:
        raise NotImplementedError


class MemoryCorpus(Corpus):
    def __init__(self, records: Sequence[dict], source: str = "<memory>"):
        self.source = source
        checked = [_check_record(r, f"{source}: record {i}", i) for i, r in enumerate(records)]
        self._ids = [c[0] for c in checked]
        self._contents = [c[1] for c in checked]

    def __len__(self):
        return len(self._ids)

    def record(self, i):
        return self._ids[i], self._contents[i]

    @property
    def fingerprint(self):
        h = hashlib.sha256()
        for d, c in zip(self._ids, self._contents):
            h.update(d.encode() + b"\0" + c.encode() + b"\1")
        return {"rows": len(self), "sha256": h.hexdigest()}


def _file_sha(path: str) -> str:
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_SAMPLE))
        if size > _SAMPLE:
            f.seek(max(size - _SAMPLE, _SAMPLE))
            h.update(f.read(_SAMPLE))
    return h.hexdigest()


def _line_offsets(mm, size: int, chunk: int = 1 << 26) -> np.ndarray:
    """Start and end byte offsets of every non-blank line, [n, 2] int64, by vectorized newline search."""
    ends = [np.flatnonzero(np.frombuffer(mm, np.uint8, count=min(chunk, size - s), offset=s) == 10) + s
            for s in range(0, size, chunk)]
    ends = np.concatenate(ends + [np.array([size], np.int64)]).astype(np.int64)
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    lengths = ends - starts
    keep = lengths > 0
    # Lines of only whitespace (e.g. '\r') count as blank too; checked on the few short ones only.
    for j in np.flatnonzero(keep & (lengths < 4)):
        keep[j] = bool(mm[starts[j]:ends[j]].strip())
    return np.stack([starts[keep], ends[keep]], axis=1)


class JsonlCorpus(Corpus):
    def __init__(self, path: str, cache_offsets: bool = True):
        if path.endswith(".gz"):
            raise CorpusError(f"{path}: decompress the corpus first (gzip cannot be memory-mapped): gunzip -k {path}")
        if not os.path.isfile(path):
            raise CorpusError(f"{path}: corpus file not found")
        self.source = path
        size = os.path.getsize(path)
        self._f = open(path, "rb")
        self._mm = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self._offsets = self._load_offsets(path, size, cache_offsets)

    def _load_offsets(self, path, size, cache):
        cache_file = path + ".offsets.npy"
        stamp = np.array([[size, int(os.path.getmtime(path) * 1e6)]], np.int64)
        if cache and os.path.isfile(cache_file):
            try:
                arr = np.load(cache_file, mmap_mode="r")
                if arr.shape[0] >= 1 and np.array_equal(arr[0], stamp[0]):
                    return arr[1:]
            except (OSError, ValueError):
                pass  # unreadable cache: rebuild it below
        offsets = _line_offsets(self._mm, size) if size else np.zeros((0, 2), np.int64)
        if cache:
            try:
                tmp = cache_file + f".tmp{os.getpid()}.npy"
                np.save(tmp, np.concatenate([stamp, offsets]))
                os.replace(tmp, cache_file)
            except OSError:
                pass  # read-only directory: the scan simply repeats next time
        return offsets

    def __len__(self):
        return int(self._offsets.shape[0])

    def _line_number(self, i: int) -> int:
        start = int(self._offsets[i, 0])
        return int(np.count_nonzero(np.frombuffer(self._mm, np.uint8, count=start) == 10)) + 1

    def record(self, i):
        if not 0 <= i < len(self):
            raise IndexError(f"{self.source}: row {i} out of range (corpus has {len(self)} rows)")
        s, e = self._offsets[i]
        try:
            rec = json.loads(self._mm[int(s):int(e)])
        except json.JSONDecodeError as err:
            raise CorpusError(f"{self.source}:{self._line_number(i)}: not valid JSON ({err.msg} at column "
                              f"{err.colno})") from None
        except UnicodeDecodeError as err:
            raise CorpusError(f"{self.source}:{self._line_number(i)}: not UTF-8 ({err.reason})") from None
        if isinstance(rec, dict) and isinstance(rec.get("contents"), str):
            return str(rec.get("id", i)), rec["contents"]
        return _check_record(rec, f"{self.source}:{self._line_number(i)}", i)  # raises, naming the line (slow path)

    @property
    def fingerprint(self):
        return {"rows": len(self), "sha256": _file_sha(self.source)}


class ParquetCorpus(Corpus):
    def __init__(self, path: str, cache_groups: int = 4):
        import pyarrow.parquet as pq

        if not os.path.isfile(path):
            raise CorpusError(f"{path}: corpus file not found")
        self.source = path
        self._pf = pq.ParquetFile(path, memory_map=True)
        names = self._pf.schema_arrow.names
        if "contents" not in names:
            raise CorpusError(f"{path}: no column 'contents' (columns: {names}); Search-R1 corpora have id, contents")
        self._columns = [c for c in ("id", "contents") if c in names]
        counts = [self._pf.metadata.row_group(g).num_rows for g in range(self._pf.num_row_groups)]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._cache_groups = cache_groups

    def __len__(self):
        return int(self._starts[-1])

    def _group(self, g: int):
        if g in self._cache:
            self._cache.move_to_end(g)
            return self._cache[g]
        t = self._pf.read_row_group(g, columns=self._columns)
        cols = {c: t.column(c) for c in self._columns}
        self._cache[g] = cols
        if len(self._cache) > self._cache_groups:
            self._cache.popitem(last=False)
        return cols

    def record(self, i):
        if not 0 <= i < len(self):
            raise IndexError(f"{self.source}: row {i} out of range (corpus has {len(self)} rows)")
        g = int(np.searchsorted(self._starts, i, side="right") - 1)
        cols = self._group(g)
        j = i - int(self._starts[g])
        rec = {c: cols[c][j].as_py() for c in self._columns}
        return _check_record(rec, f"{self.source}: row {i}", i)

    @property
    def fingerprint(self):
        return {"rows": len(self), "sha256": _file_sha(self.source)}


def open_corpus(src) -> Corpus:
    """A `Corpus` from a list of `{"id", "contents"}` dicts, a `.jsonl` path or a `.parquet` path (or a Corpus)."""
    if isinstance(src, Corpus):
        return src
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if path.endswith(".parquet"):
            return ParquetCorpus(path)
        return JsonlCorpus(path)
    if isinstance(src, (list, tuple)):
        return MemoryCorpus(src)
    raise TypeError(f"a corpus is a list of {{'id', 'contents'}} dicts or a .jsonl/.parquet path, got {type(src)}")
