"""Retrieval benchmark: passage encoding speed (JAX vs torch), faiss query latency, and wiki recall, in one process.

    python launch/benchmark.py --suite=retrieval --json_out=/tmp/retrieval.json

Figures
  encode_passages_per_s        our JAX TextEncoder (all-MiniLM-L6-v2, max length 256) over 512 wiki passages
  encode_passages_per_s_torch  the same passages through a sentence-transformers-style torch encoding
                               (transformers.AutoModel + masked mean pooling + L2 norm, length-sorted batches padded to
                               the batch's longest, as sentence-transformers does); only when torch is importable
  encode_speedup_vs_torch      ours / torch, both measured here a moment apart (a ratio robust to a shared machine)
  encode_max_abs_diff_vs_torch largest |difference| of the two embeddings (they must agree, or the speed is moot)
  faiss_query_ms_p50/_p99_{10k,1m}  batch-64 queries on random L2-normalized dim-384 vectors, IndexFlatIP;
                               the unsuffixed names are the 1M figures (quick: 100k stands in for 1M, named _100k)
  wiki_recall_at_{1,3,10}_{dense,bm25}  searchr2_jax.retrieval.wiki: 8,796 description -> article questions over
                               10,033 summaries (quick: 100 questions over a 1,000-passage subset)

The dense wiki index is built once (a few minutes on 2 CPU cores) and cached under ~/.cache/searchr2_jax.
Each timing is the median of several runs after a warm-up run (compilation, faiss/torch thread start-up).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

ENCODE_PASSAGES = 512
ENCODE_BATCH = 64
QUERY_BATCH = 64
DIM = 384


def _median_time(fn, repeats: int):
    """(median seconds of `fn()` over `repeats` runs after one warm-up run, the last result)."""
    fn()  # warm-up: compilation, thread pools
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


# ------------------------------------------------------------------------------------------------ encoding


def torch_encode_fn(path: str, max_length: int, batch_size: int):
    """A sentence-transformers-style torch encoder (None when torch/transformers are not installed)."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    from tokenizers import Tokenizer

    model = transformers.AutoModel.from_pretrained(path).eval()
    tok = Tokenizer.from_file(f"{path}/tokenizer.json")
    tok.no_padding()
    tok.enable_truncation(max_length)

    def encode(texts):
        ids = [e.ids for e in tok.encode_batch(list(texts))]
        order = np.argsort([-len(x) for x in ids], kind="stable")  # sentence-transformers: longest first
        out = np.zeros((len(texts), model.config.hidden_size), np.float32)
        with torch.inference_mode():
            for s in range(0, len(order), batch_size):
                rows = order[s:s + batch_size]
                S = max(len(ids[r]) for r in rows)
                tok_ids = torch.zeros((len(rows), S), dtype=torch.long)
                mask = torch.zeros((len(rows), S), dtype=torch.long)
                for j, r in enumerate(rows):
                    tok_ids[j, :len(ids[r])] = torch.tensor(ids[r])
                    mask[j, :len(ids[r])] = 1
                h = model(input_ids=tok_ids, attention_mask=mask).last_hidden_state
                m = mask.unsqueeze(-1).to(h.dtype)
                pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
                out[rows] = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
        return out

    return encode


def bench_encode(encoder, passages: list[str], repeats: int) -> dict:
    ours, ours_emb = _median_time(lambda: encoder.encode(passages, batch_size=ENCODE_BATCH), repeats)
    out = {"encode_passages_per_s": len(passages) / ours, "encode_passages": len(passages),
           "encode_max_length": encoder.max_length}
    torch_encode = torch_encode_fn(encoder.path, encoder.max_length, ENCODE_BATCH)
    if torch_encode is not None:
        import torch

        theirs, theirs_emb = _median_time(lambda: torch_encode(passages), repeats)
        out["encode_passages_per_s_torch"] = len(passages) / theirs
        out["encode_speedup_vs_torch"] = theirs / ours
        out["encode_max_abs_diff_vs_torch"] = float(np.abs(ours_emb - theirs_emb).max())
        out["torch_threads"] = torch.get_num_threads()
    return out


# ------------------------------------------------------------------------------------------------ faiss


def _random_unit(rng, n: int, dim: int, chunk: int = 1 << 17) -> np.ndarray:
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        c = rng.standard_normal((min(chunk, n - s), dim), dtype=np.float32)
        x[s:s + len(c)] = c / np.linalg.norm(c, axis=1, keepdims=True)
    return x


def bench_faiss(rows: int, repeats: int, seed: int = 0) -> tuple[float, float]:
    """(p50, p99) milliseconds of one batch-64 search (k=10) on an IndexFlatIP of `rows` random unit vectors."""
    import faiss

    rng = np.random.default_rng(seed)
    index = faiss.IndexFlatIP(DIM)
    index.add(_random_unit(rng, rows, DIM))
    queries = [_random_unit(rng, QUERY_BATCH, DIM) for _ in range(repeats + 1)]
    index.search(queries[-1], 10)  # warm-up
    times = []
    for q in queries[:-1]:
        t0 = time.perf_counter()
        index.search(q, 10)
        times.append((time.perf_counter() - t0) * 1e3)
    del index
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


# ------------------------------------------------------------------------------------------------ recall


def bench_wiki(encoder, quick: bool) -> dict:
    from searchr2_jax.retrieval import wiki

    out = {}
    if quick:
        from searchr2_jax.retrieval.bm25 import BM25Retriever
        from searchr2_jax.retrieval.dense import DenseRetriever

        records, questions = wiki.load_wiki()
        records, questions = wiki.subset(records, questions, 100, 900)
        t0 = time.perf_counter()
        retrievers = {"dense": DenseRetriever.from_corpus(records, encoder),
                      "bm25": BM25Retriever.from_corpus(records)}
        out["wiki_index_s"] = time.perf_counter() - t0
    else:
        t0 = time.perf_counter()
        retrievers = {}
        for backend in ("dense", "bm25"):
            retrievers[backend], questions = wiki.wiki_retriever(backend, encoder=encoder, progress=False)
        out["wiki_index_s"] = time.perf_counter() - t0  # ~0 when the dense index was cached by an earlier run
    out["wiki_questions"] = len(questions)
    out["wiki_passages"] = len(retrievers["bm25"])
    for backend, r in retrievers.items():
        rec = wiki.recall_at(r, questions, ks=(1, 3, 10))
        for k in (1, 3, 10):
            out[f"wiki_recall_at_{k}_{backend}"] = rec[f"recall_at_{k}"]
        out[f"wiki_queries_per_s_{backend}"] = rec["queries_per_s"]
    return out


def run(quick: bool = False) -> dict:
    from searchr2_jax.models.encoder import TextEncoder
    from searchr2_jax.retrieval import wiki

    encoder = TextEncoder.from_pretrained()  # all-MiniLM-L6-v2, max length 256 (its sentence-transformers config)
    records, _ = wiki.load_wiki()
    rng = np.random.default_rng(0)
    n = 128 if quick else ENCODE_PASSAGES
    passages = [records[i]["contents"] for i in sorted(rng.choice(len(records), n, replace=False))]
    figures = bench_encode(encoder, passages, repeats=2 if quick else 3)

    sizes = {"10k": 10_000, "100k": 100_000} if quick else {"10k": 10_000, "1m": 1_000_000}
    for name, rows in sizes.items():
        p50, p99 = bench_faiss(rows, repeats=20 if quick else (100 if rows <= 100_000 else 20))
        figures[f"faiss_query_ms_p50_{name}"], figures[f"faiss_query_ms_p99_{name}"] = p50, p99
    large = list(sizes)[-1]
    figures["faiss_query_ms_p50"] = figures[f"faiss_query_ms_p50_{large}"]
    figures["faiss_query_ms_p99"] = figures[f"faiss_query_ms_p99_{large}"]
    figures["faiss_query_batch"] = QUERY_BATCH
    figures["faiss_large_rows"] = sizes[large]

    figures.update(bench_wiki(encoder, quick))
    figures.update(bench_world(encoder, quick))
    return figures


def bench_world(encoder, quick: bool) -> dict:
    """Share of the synthetic world's scripted hop queries that retrieve their gold passage in the top 3 (the
    default world: ~2k passages, 10k questions; quick: the tiny one)."""
    from searchr2_jax.data import synthetic
    from searchr2_jax.retrieval.retriever import build_retriever
    from searchr2_jax.config import default_retrieval_config

    world = synthetic.generate_world(synthetic.WorldConfig.tiny() if quick else synthetic.WorldConfig())
    out = {"world_passages": float(len(world.passages)),
           "world_hops": float(sum(q.metadata["hops"] for q in world.questions))}
    for backend in ("bm25", "dense"):
        cfg = default_retrieval_config()
        cfg.backend = backend
        retriever = build_retriever(cfg, corpus=world.corpus(), encoder=encoder if backend == "dense" else None)
        out[f"world_hop_recall_at_3_{backend}"] = synthetic.hop_recall(world, retriever, k=3)
    return out
