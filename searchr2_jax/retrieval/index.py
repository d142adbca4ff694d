"""Dense index building and loading: embeddings (memory-mapped .npy) + a faiss index + metadata.

An index folder holds
  embeddings.npy   [rows, dim] float32, written in place as the build goes (np.load(..., mmap_mode="r") reads it)
  progress.json    rows encoded so far + what they were encoded with; an interrupted build resumes from here
  index.faiss      faiss.index_factory(dim, factory, METRIC_INNER_PRODUCT): "Flat", "HNSW32", "IVF4096,PQ64", ...
  meta.json        encoder, dimension, normalization, prefix, corpus fingerprint, factory; written last (= complete)

`load_index` refuses (IndexMismatchError) an index whose encoder or corpus differs from the one it is used with, and
says which field differs. Inner product on L2-normalized vectors is cosine, as in Search-R1's e5_Flat index.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import numpy as np

from searchr2_jax.retrieval.corpus import Corpus
from searchr2_jax.retrieval.errors import IndexMismatchError

log = logging.getLogger(__name__)

EMBEDDINGS, PROGRESS, INDEX, META = "embeddings.npy", "progress.json", "index.faiss", "meta.json"
FORMAT_VERSION = 1


def _write_json(path: str, obj: dict) -> None:
    tmp = path + f".tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)  # atomic: a reader sees the old file or the new one, never half of one


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _diff(kind: str, expected: dict, found: dict) -> list[str]:
    keys = sorted(set(expected) | set(found))
    return [f"{kind}.{k}: index has {found.get(k)!r}, expected {expected.get(k)!r}"
            for k in keys if expected.get(k) != found.get(k)]


def check_compatible(where: str, meta: dict, encoder_fp: dict | None, corpus_fp: dict | None,
                     passage_prefix: str | None = None) -> None:
    problems = []
    if encoder_fp is not None:
        problems += _diff("encoder", encoder_fp, meta.get("encoder", {}))
    if corpus_fp is not None:
        problems += _diff("corpus", corpus_fp, meta.get("corpus", {}))
    if passage_prefix is not None and meta.get("passage_prefix") != passage_prefix:
        problems.append(f"passage_prefix: index has {meta.get('passage_prefix')!r}, expected {passage_prefix!r}")
    if problems:
        raise IndexMismatchError(f"{where} was built with another encoder or corpus; rebuild it "
                                 f"(launch/build_index.py) or point to the matching one:\n  " + "\n  ".join(problems))


def make_faiss(embeddings: np.ndarray, factory: str = "Flat", train_size: int = 100_000, add_chunk: int = 100_000,
               seed: int = 0):
    """A faiss inner-product index over `embeddings` (any array-like, memmaps included), trained if it needs it."""
    import faiss

    n, dim = embeddings.shape
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, train_size), replace=False))
        log.info("training %s on %d vectors", factory, len(rows))
        index.train(np.ascontiguousarray(embeddings[rows], dtype=np.float32))
    for s in range(0, n, add_chunk):
        index.add(np.ascontiguousarray(embeddings[s:s + add_chunk], dtype=np.float32))
    return index


def set_search_params(index, factory: str, params: str = "") -> None:
    """faiss search-time knobs. Defaults: efSearch=128 for HNSW (faiss's 16 loses recall), nprobe=16 for IVF.
    `params` ("efSearch=256,nprobe=32") overrides them and is applied strictly (a wrong name raises)."""
    import faiss

    ps = faiss.ParameterSpace()
    defaults = []
    if "HNSW" in factory:
        defaults.append("efSearch=128")
    if "IVF" in factory:
        defaults.append("nprobe=16")
    for p in defaults:
        ps.set_index_parameters(index, p)
    if params:
        ps.set_index_parameters(index, params)


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """How `build_index` runs (none of these changes the index it builds)."""

    batch_size: int = 256  # passages per encoder call
    checkpoint_rows: int = 16384  # rows encoded between two progress.json writes
    progress: bool = True  # a progress bar
    overwrite: bool = False  # start over instead of resuming a partial build
    train_size: int = 100_000  # vectors that train a faiss index that needs training (IVF, PQ)
    stop_after: int | None = None  # end the encoding after this many rows, as an interruption would (tests, staging)


def build_index(corpus: Corpus, encoder, out_dir: str, factory: str = "Flat", passage_prefix: str = "",
                options: BuildOptions = BuildOptions()) -> dict:
    """Encodes `corpus` into `out_dir` and builds the faiss index; resumes an interrupted build of the same job."""
    o = options
    os.makedirs(out_dir, exist_ok=True)
    n, dim = len(corpus), encoder.dim
    job = {"encoder": encoder.fingerprint, "corpus": corpus.fingerprint, "passage_prefix": passage_prefix,
           "rows": n, "dim": dim}
    emb_path, prog_path = os.path.join(out_dir, EMBEDDINGS), os.path.join(out_dir, PROGRESS)
    done = 0
    if os.path.isfile(prog_path) and os.path.isfile(emb_path) and not o.overwrite:
        prog = _read_json(prog_path)
        check_compatible(f"{out_dir} (a partial build; pass overwrite to start over)", prog.get("job", {}),
                         job["encoder"], job["corpus"], passage_prefix)
        done = int(prog["rows_done"])
        emb = np.load(emb_path, mmap_mode="r+")
        log.info("resuming %s at row %d of %d", out_dir, done, n)
    else:
        for f in (META, INDEX):
            if os.path.exists(os.path.join(out_dir, f)):
                os.remove(os.path.join(out_dir, f))
        emb = np.lib.format.open_memmap(emb_path, mode="w+", dtype=np.float32, shape=(n, dim))
        _write_json(prog_path, {"job": job, "rows_done": 0})
    if emb.shape != (n, dim):
        raise IndexMismatchError(f"{emb_path}: shape {emb.shape}, expected {(n, dim)}")

    from tqdm.auto import tqdm

    bar = tqdm(total=n, initial=done, unit="passage", disable=not o.progress, desc=f"encode {encoder.name}",
               smoothing=0.05)
    t0, since_ckpt = time.time(), 0
    end = n if o.stop_after is None else min(n, done + o.stop_after)
    chunk = max(o.batch_size, min(o.checkpoint_rows, 8 * o.batch_size))
    for start, _, contents in corpus.batches(chunk, start=done):
        if start >= end:
            break
        contents = contents[: end - start]
        emb[start:start + len(contents)] = encoder.encode(contents, prefix=passage_prefix, batch_size=o.batch_size)
        done = start + len(contents)
        since_ckpt += len(contents)
        bar.update(len(contents))
        if since_ckpt >= o.checkpoint_rows or done == end:
            emb.flush()  # the rows must be on disk before progress.json claims them
            _write_json(prog_path, {"job": job, "rows_done": done})
            since_ckpt = 0
    bar.close()
    if done < n:
        log.info("stopped at row %d of %d; run again to resume", done, n)
        return {"rows_done": done, "complete": False}
    encode_s = time.time() - t0

    t1 = time.time()
    emb = np.load(emb_path, mmap_mode="r")
    index = make_faiss(emb, factory, train_size=o.train_size)
    import faiss

    tmp = os.path.join(out_dir, INDEX + f".tmp{os.getpid()}")
    faiss.write_index(index, tmp)
    os.replace(tmp, os.path.join(out_dir, INDEX))
    meta = dict(job, factory=factory, format_version=FORMAT_VERSION, corpus_source=corpus.source,
                normalized=bool(encoder.cfg.normalize), metric="inner_product", encode_s=round(encode_s, 2),
                faiss_build_s=round(time.time() - t1, 2), created=time.strftime("%Y-%m-%dT%H:%M:%S"))
    _write_json(os.path.join(out_dir, META), meta)
    return dict(meta, rows_done=n, complete=True)


def load_index(index_dir: str, encoder_fp: dict | None = None, corpus_fp: dict | None = None,
               passage_prefix: str | None = None, search_params: str = "", mmap: bool = False):
    """(faiss index, meta) from a finished build, checked against the encoder and corpus it will be used with."""
    import faiss

    meta_path, index_path = os.path.join(index_dir, META), os.path.join(index_dir, INDEX)
    if not os.path.isfile(meta_path) or not os.path.isfile(index_path):
        partial = os.path.isfile(os.path.join(index_dir, PROGRESS))
        raise FileNotFoundError(f"{index_dir}: no finished index ({META} and {INDEX})" +
                                ("; a partial build is there: run launch/build_index.py again to resume" if partial
                                 else "; build one with launch/build_index.py"))
    meta = _read_json(meta_path)
    check_compatible(index_dir, meta, encoder_fp, corpus_fp, passage_prefix)
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    index = faiss.read_index(index_path, flags)
    if index.ntotal != meta["rows"]:
        raise IndexMismatchError(f"{index_path}: {index.ntotal} vectors, meta.json says {meta['rows']}")
    set_search_params(index, meta["factory"], search_params)
    return index, meta
