"""JSON-lines files, read and appended the one way every module does it.

A line that is not JSON raises the caller's error class naming the file and the 1-based row. Files that a killed
process may have been appending to (metrics, evaluation records, the retrieval cache) are read with
`torn_tail_ok=True`: a last line without its newline that does not parse is the write the kill cut short, and is
skipped with a warning; `append_jsonl` cuts it off before appending, so later rows stay whole.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Iterator

from absl import logging


def iter_jsonl(path: str, torn_tail_ok: bool = False,
               error: type[Exception] = ValueError) -> Iterator[tuple[int, object]]:
    """(row, object) of every non-blank line of `path`, rows counted from 1."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if torn_tail_ok and n == len(lines):  # the last line, and no newline after it
                logging.warning("%s: row %d: an interrupted write, skipped", path, n)
                return
            raise error(f"{path}: row {n}: not JSON ({e.msg} at column {e.colno})") from None
        yield n, obj


def read_jsonl(path: str, torn_tail_ok: bool = False) -> list:
    return [obj for _, obj in iter_jsonl(path, torn_tail_ok)]


def cut_torn_tail(path: str) -> bool:
    """Cuts a last line without its newline (a write a kill cut short) off `path`, so the next append starts a line
    of its own; returns whether there was one."""
    if not os.path.isfile(path) or not os.path.getsize(path):
        return False
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return False
        f.truncate(data.rfind(b"\n") + 1)
    return True


def append_jsonl(path: str, rows: Iterable) -> None:
    """Appends `rows` in one write, flushed to disk, after cutting a torn last line."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    cut_torn_tail(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
