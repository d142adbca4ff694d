"""QA examples and their readers: Search-R1 training parquet and FlashRAG-style jsonl.

Schema errors (bad JSON, a missing or mistyped field) raise `DataError` naming the file, the row (1-based line for
jsonl, 0-based row for parquet) and the field. Content problems that would silently hurt training — an empty
`golden_answers` (EM can never be 1) and a duplicated id (two GRPO groups with one id) — raise too by default, listing
every offending row; with `on_problem="drop"` they are dropped and each one is logged as a warning.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Iterable, Literal, Mapping

from absl import logging

from searchr2_jax.jsonl import iter_jsonl

# The seven Search-R1 evaluation sets (reward dispatch names) plus our synthetic world.
DATA_SOURCES = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle", "synthetic")


class DataError(ValueError):
    """Bad input data; the message names the file, the row and the field."""


@dataclasses.dataclass(frozen=True)
class QAExample:
    """One question. `metadata` is JSON-able (gold passage ids, hop queries, FlashRAG's per-set extras)."""

    id: str
    question: str
    golden_answers: tuple[str, ...]
    data_source: str
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "question": self.question, "golden_answers": list(self.golden_answers),
                "data_source": self.data_source, "metadata": dict(self.metadata)}


def _where(path: str, row: int, field: str | None = None) -> str:
    return f"{path}: row {row}" + (f": field {field!r}" if field else "")


def _require(rec: Mapping, field: str, types: type | tuple, path: str, row: int) -> Any:
    if not isinstance(rec, Mapping):
        raise DataError(f"{_where(path, row)}: expected an object, got {type(rec).__name__}")
    if field not in rec or rec[field] is None:
        raise DataError(f"{_where(path, row, field)}: missing")
    value = rec[field]
    if not isinstance(value, types) or isinstance(value, bool):
        want = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise DataError(f"{_where(path, row, field)}: expected {want}, got {type(value).__name__} {value!r:.60}")
    return value


def _answers(value: Any, path: str, row: int, field: str) -> tuple[str, ...]:
    if hasattr(value, "tolist"):  # numpy arrays from parquet
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{_where(path, row, field)}: expected a list of strings, got {type(value).__name__}")
    for j, a in enumerate(value):
        if not isinstance(a, str):
            raise DataError(f"{_where(path, row, field)}[{j}]: expected str, got {type(a).__name__} {a!r:.60}")
    return tuple(value)


def _check(examples: list[tuple[int, QAExample]], path: str, on_problem: str) -> list[QAExample]:
    problems, kept, seen = [], [], {}
    for row, ex in examples:
        if not any(a.strip() for a in ex.golden_answers):
            problems.append(f"{_where(path, row, 'golden_answers')}: empty (id {ex.id!r})")
        elif ex.id in seen:
            problems.append(f"{_where(path, row, 'id')}: duplicate id {ex.id!r} (first at row {seen[ex.id]})")
        else:
            seen[ex.id] = row
            kept.append(ex)
    if problems and on_problem == "raise":
        more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{len(problems)} bad example(s) in {path}:\n" + "\n".join(problems[:20]) + more)
    for p in problems:
        logging.warning("dropped: %s", p)
    return kept


def _infer_source(path: str, data_source: str | None) -> str:
    if data_source:
        return data_source
    parent = os.path.basename(os.path.dirname(os.path.abspath(path))).lower()  # FlashRAG layout: <dataset>/<split>.jsonl
    return parent if parent in DATA_SOURCES else "unknown"


def read_flashrag_jsonl(
    path: str, data_source: str | None = None, on_problem: Literal["raise", "drop"] = "raise"
) -> list[QAExample]:
    """FlashRAG jsonl: one `{"id", "question", "golden_answers", ["metadata"]}` object per line.

    `data_source` defaults to the parent directory's name when it is a known set (FlashRAG's `nq/test.jsonl`).
    """
    source = _infer_source(path, data_source)
    out: list[tuple[int, QAExample]] = []
    for line_no, rec in iter_jsonl(path, error=DataError):
        rid = _require(rec, "id", (str, int), path, line_no)
        question = _require(rec, "question", str, path, line_no)
        answers = _answers(_require(rec, "golden_answers", (list, tuple), path, line_no), path, line_no,
                           "golden_answers")
        meta = rec.get("metadata") or {}
        if not isinstance(meta, Mapping):
            raise DataError(f"{_where(path, line_no, 'metadata')}: expected an object, got {type(meta).__name__}")
        src = rec.get("data_source", source)
        out.append((line_no, QAExample(str(rid), question, answers, str(src), dict(meta))))
    return _check(out, path, on_problem)


_QUESTION_RE = re.compile(r"Question:\s*(.*?)\s*$", re.DOTALL)


def read_search_r1_parquet(path: str, on_problem: Literal["raise", "drop"] = "raise") -> list[QAExample]:
    """Search-R1's prepared parquet (`scripts/data_process/*_search.py`).

    Columns: `data_source`, `prompt` (one user message holding template + question), `reward_model.ground_truth.target`,
    `extra_info.{split,index}`, and (kept from FlashRAG by `dataset.map`) `id`, `question`, `golden_answers`. The
    FlashRAG columns are preferred; without them the question is cut from the prompt and answers come from
    `reward_model`. Without `id` the id is `{split}_{index}` from `extra_info`.
    """
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for non-parquet input
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    out: list[tuple[int, QAExample]] = []
    for row, rec in enumerate(rows):
        source = _require(rec, "data_source", str, path, row)
        if rec.get("question") is not None:
            question = _require(rec, "question", str, path, row)
        else:
            prompt = _require(rec, "prompt", (list, tuple), path, row)
            content = prompt[-1].get("content") if prompt and isinstance(prompt[-1], Mapping) else None
            m = _QUESTION_RE.search(content) if isinstance(content, str) else None
            if m is None:
                raise DataError(f"{_where(path, row, 'prompt')}: no 'Question:' in the last message")
            question = m.group(1)
        if rec.get("golden_answers") is not None:
            answers = _answers(rec["golden_answers"], path, row, "golden_answers")
        else:
            rm = _require(rec, "reward_model", Mapping, path, row)
            gt = rm.get("ground_truth")
            if not isinstance(gt, Mapping) or gt.get("target") is None:
                raise DataError(f"{_where(path, row, 'reward_model.ground_truth.target')}: missing")
            answers = _answers(gt["target"], path, row, "reward_model.ground_truth.target")
        extra = rec.get("extra_info") or {}
        if rec.get("id") is not None:
            rid = str(_require(rec, "id", (str, int), path, row))
        elif isinstance(extra, Mapping) and extra.get("index") is not None:
            rid = f"{extra.get('split', 'row')}_{extra['index']}"
        else:
            raise DataError(f"{_where(path, row, 'id')}: missing (and no extra_info.index)")
        meta = {"extra_info": dict(extra)} if isinstance(extra, Mapping) and extra else {}
        if isinstance(rec.get("metadata"), Mapping):
            meta.update(rec["metadata"])
        out.append((row, QAExample(rid, question, answers, source, meta)))
    return _check(out, path, on_problem)


def read_qa_file(path: str, data_source: str | None = None,
                 on_problem: Literal["raise", "drop"] = "raise") -> list[QAExample]:
    """Dispatch on the extension: `.parquet` (Search-R1) or `.jsonl` (FlashRAG)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: QA file not found")
    if path.endswith(".parquet"):
        return read_search_r1_parquet(path, on_problem=on_problem)
    if path.endswith(".jsonl"):
        return read_flashrag_jsonl(path, data_source=data_source, on_problem=on_problem)
    raise DataError(f"{path}: unknown QA file type (expected .parquet or .jsonl)")


def read_qa_files(paths: Iterable[str], on_problem: Literal["raise", "drop"] = "raise") -> list[QAExample]:
    """Several files concatenated in the given order; ids must be unique per data_source across files."""
    examples: list[QAExample] = []
    seen: dict[tuple[str, str], str] = {}
    for path in paths:
        for ex in read_qa_file(path, on_problem=on_problem):
            key = (ex.data_source, ex.id)
            if key in seen:
                msg = f"{path}: field 'id': duplicate id {ex.id!r} of {ex.data_source!r} (also in {seen[key]})"
                if on_problem == "raise":
                    raise DataError(msg)
                logging.warning("dropped: %s", msg)
                continue
            seen[key] = path
            examples.append(ex)
    return examples
