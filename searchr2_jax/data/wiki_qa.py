"""A real-text QA set from the offline Wikipedia summaries (`retrieval/wiki.py`), written as FlashRAG jsonl.

Each question asks for the article that a Wikidata short description describes, and the article's title is the
answer: `Who or what is "Iraqi and British architect (1950–2016)"?` -> `Zaha Hadid`. The gold passage is that
article's lead summary in the 10,033-passage corpus, so a model has to search for it: a 135M model knows few of
these titles, but can copy one out of a retrieved passage.

    paths = prepare_wiki_qa(out_dir)     # {"corpus", "train", "dev", "test"}: jsonl files, written once

Splits are a seeded permutation of the questions (one per article, so no article is in two splits). A question
whose description contains its own answer (normalized, as EM compares) is dropped. A title with a parenthetical
disambiguation, `Mercury (planet)`, also accepts `Mercury`. The data is GPL-3 and stays in the user's cache or
`out_dir`, never in this repository.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from searchr2_jax.data.qa import QAExample
from searchr2_jax.retrieval import wiki
from searchr2_jax.rl.rewards import normalize_answer

DATA_SOURCE = "wikisum"
SPLITS = ("train", "dev", "test")
QUESTION_TEMPLATE = 'Who or what is "{description}"?'
_DISAMBIGUATION = re.compile(r"\s*\([^()]*\)\s*$")


def answers_for(title: str) -> tuple[str, ...]:
    """The gold answers of an article: its title, and the title without a trailing `(disambiguation)`."""
    short = _DISAMBIGUATION.sub("", title).strip()
    return (title,) if not short or short == title else (title, short)


def leaks_answer(question: str, answers) -> bool:
    """True when a normalized answer appears as whole words inside the normalized question."""
    q = f" {normalize_answer(question)} "
    return any(a and f" {a} " in q for a in (normalize_answer(x) for x in answers))


def wiki_examples(questions, split_sizes: tuple[int, int] = (500, 500), seed: int = 0) -> dict[str, list[QAExample]]:
    """{"train", "dev", "test"} QA examples from `wiki.load_wiki()`'s questions: dev and test get `split_sizes`
    questions each, train the rest, after dropping questions that contain their own answer."""
    kept = []
    for q in questions:
        answers = answers_for(q.answer)
        question = QUESTION_TEMPLATE.format(description=q.question)
        if not leaks_answer(q.question, answers):
            kept.append(QAExample(id=f"wiki-{q.gold_id}", question=question, golden_answers=answers,
                                  data_source=DATA_SOURCE, metadata={"gold_ids": [q.gold_id],
                                                                     "description": q.question}))
    n_dev, n_test = split_sizes
    if n_dev + n_test >= len(kept):
        raise ValueError(f"split_sizes={split_sizes}: only {len(kept)} questions")
    order = np.random.default_rng(seed).permutation(len(kept))
    pick = lambda idx: [kept[i] for i in sorted(idx)]  # noqa: E731 - corpus order within a split
    return {"test": pick(order[:n_test]), "dev": pick(order[n_test:n_test + n_dev]),
            "train": pick(order[n_test + n_dev:])}


def _write_jsonl(rows, path: str) -> None:
    tmp = path + f".tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def prepare_wiki_qa(out_dir: str | None = None, split_sizes: tuple[int, int] = (500, 500), seed: int = 0,
                    summaries: str | None = None) -> dict[str, str]:
    """Writes `out_dir/{corpus,train,dev,test}.jsonl` (default: `<cache>/wikisum/`) unless a previous call with
    the same settings did, and returns their paths. `prepare.json` records the settings and sizes."""
    out_dir = out_dir or os.path.join(wiki.default_cache_dir(), DATA_SOURCE)
    paths = {name: os.path.join(out_dir, f"{name}.jsonl") for name in ("corpus", *SPLITS)}
    settings = {"split_sizes": list(split_sizes), "seed": seed, "template": QUESTION_TEMPLATE}
    meta_path = os.path.join(out_dir, "prepare.json")
    if os.path.isfile(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("settings") == settings and all(os.path.isfile(p) for p in paths.values()):
            return paths
    records, questions = wiki.load_wiki(summaries)
    splits = wiki_examples(questions, split_sizes, seed)
    os.makedirs(out_dir, exist_ok=True)
    _write_jsonl(records, paths["corpus"])
    for name in SPLITS:
        _write_jsonl((ex.to_json() for ex in splits[name]), paths[name])
    meta = {"settings": settings, "sizes": {name: len(splits[name]) for name in SPLITS} | {"corpus": len(records)}}
    tmp = meta_path + f".tmp{os.getpid()}"  # the marker goes last, after every data file is in place
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    os.replace(tmp, meta_path)
    return paths

