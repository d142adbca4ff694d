"""One self-contained HTML page of trajectory dumps (`rollout/dump.py`), for `launch/view.py`.

The page lists trajectories with filters (correct or wrong, revised or not, status, hop count, free text), shows one
trajectory turn by turn (passages with the gold ones marked, the Meta-Refiner's scores over 0..T and its cut, the
discarded draft beside its regeneration with the first differing turn marked), and puts two dumps side by side on
the same questions (step A against step B, or run A against run B). Inline CSS and JS only (`viewer_assets.py`): it
opens from disk, with no server and no network.

A trajectory is model-written text. The records travel as JSON in a `<script type="application/json">` block with
`<`, `>`, `&` and the JS line separators written as \\u escapes, so no text can close the block, and the page builds
every element with `textContent`, so no text becomes markup.

The page reads its state from the URL hash, and writes it back as the filters change, e.g.
`view.html#filter=revised,wrong&status=answered&hops=2&q=capital&sel=3`: `filter` takes correct, wrong, revised,
unrevised, changed (A and B differ in EM) and matched (in both dumps); `sel` is a trajectory's place in dump A.
When its script has run, `#viewer-status` holds `data-state="ok"`; an uncaught error sets `data-state="error"` and
writes the message there (the tests read it from the DOM).
"""

from __future__ import annotations

import html
import json
import os
from typing import NamedTuple, Sequence

from searchr2_jax import viewer_assets as assets
from searchr2_jax.rollout import dump as dump_lib


class Side(NamedTuple):
    """One dump on the page: its label and records (`dump.read_dump`)."""

    label: str
    records: Sequence[dict]


def embed_json(obj) -> str:
    """JSON for a `<script type="application/json">` block: no `<`, `>` or `&` left to end the block or start
    markup, and no U+2028/U+2029 (line terminators to a JS parser)."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def compact(sides: Sequence[Sequence[dict]]) -> tuple[list[list[dict]], list[list[str]]]:
    """The records with each passage's title and text moved to one table (a passage recurs across a group's
    samples, drafts and regenerations, and across two dumps): passages become {id, p (row of the table), gold}.
    The input records are left as they are."""
    table: list[list[str]] = []
    rows: dict[tuple[str, str, str], int] = {}

    def passage(p: dict) -> dict:
        key = (str(p["id"]), p["title"], p["text"])
        if key not in rows:
            rows[key] = len(table)
            table.append([p["title"], p["text"]])
        return {"id": p["id"], "p": rows[key], "gold": p.get("gold")}

    def turns(ts: list[dict]) -> list[dict]:
        return [dict(t, passages=[passage(p) for p in t["passages"]]) for t in ts]

    def branch(b: dict | None) -> dict | None:
        return None if b is None else dict(b, turns=turns(b["turns"]))

    out = []
    for recs in sides:
        out.append([dict(r, turns=turns(r["turns"]),
                         refiner=[dict(d, draft=branch(d.get("draft")), regeneration=branch(d.get("regeneration")))
                                  for d in r["refiner"]]) for r in recs])
    return out, table


def page(a: Side, b: Side | None = None, title: str = "trajectories") -> str:
    """The viewer page of dump `a` (and `b` beside it, matched by question id, else question text)."""
    (recs_a, *rest), table = compact([a.records] + ([b.records] if b else []))
    data = {"title": title, "passages": table, "a": {"label": a.label, "records": recs_a},
            "b": {"label": b.label, "records": rest[0]} if b else None}
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        f"<title>{html.escape(title)}</title><style>{assets.CSS}</style></head><body>",
        "<div id=\"viewer-status\" data-state=\"running\">loading</div>",
        f"<script>{assets.ONERROR}</script>",
        "<header id=\"summary\"></header><div id=\"filters\"></div>",
        "<div id=\"main\"><div id=\"list\"></div><div id=\"detail\"></div></div>",
        f"<script type=\"application/json\" id=\"viewer-data\">{embed_json(data)}</script>",
        f"<script>{assets.JS}</script></body></html>\n"])


def write_page(path: str, a: Side, b: Side | None = None, title: str = "trajectories") -> int:
    """Writes the page; returns its size in bytes."""
    text = page(a, b, title).encode("utf-8")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(text)
    return len(text)


def workdir_dump(workdir: str, step: int | None = None, kind: str | None = None) -> tuple[str, int, str]:
    """(kind, step, path) of a workdir's dump: at `step` (or its latest), of `kind` (or eval where there is one)."""
    found = dump_lib.find_dumps(workdir)
    kinds = [kind] if kind else ["eval", "train"]
    for k in kinds:
        steps = sorted(s for kk, s in found if kk == k and (step is None or s == step))
        if steps:
            return k, steps[-1], found[(k, steps[-1])]
    have = ", ".join(f"{k}@{s}" for k, s in found) or "none"
    want = f"{kind or 'eval or train'} dump" + ("" if step is None else f" at step {step}")
    raise FileNotFoundError(f"{workdir}: no {want} (dumps: {have})")


def load_side(source: str, step: int | None = None, kind: str | None = None) -> Side:
    """A dump as a Side: `source` is a JSONL file, or a training workdir (its dump at `step`, default the latest;
    an eval dump where there is one unless `kind` says otherwise)."""
    if os.path.isdir(source):
        from searchr2_jax.plots import run_label

        k, s, path = workdir_dump(source, step, kind)
        return Side(f"{run_label(source)} {k} step {s}", dump_lib.read_dump(path))
    if not os.path.exists(source):
        raise FileNotFoundError(f"{source}: no such dump file or workdir")
    return Side(os.path.basename(source), dump_lib.read_dump(source))


def load_compare(spec: str, workdir: str | None, kind: str | None) -> Side:
    """The dump to compare against: a JSONL file; a workdir (its dump of `kind`, latest); WORKDIR:STEP; or a bare
    STEP, in `workdir` (another step of the same run)."""
    if os.path.exists(spec):
        return load_side(spec, kind=kind)
    head, sep, tail = spec.rpartition(":")
    if sep and tail.isdigit() and os.path.isdir(head):
        return load_side(head, int(tail), kind)
    if spec.isdigit():
        if not workdir:
            raise ValueError(f"--compare={spec}: a bare step needs --workdir")
        return load_side(workdir, int(spec), kind)
    raise FileNotFoundError(f"--compare={spec}: not a dump file, a workdir, WORKDIR:STEP or a step")
