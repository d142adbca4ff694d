"""Dense index build -> save -> load -> search with the real MiniLM encoder, mismatch refusal, and resumption."""

import json
import os

import numpy as np
import pytest

from searchr2_jax.retrieval.corpus import open_corpus
from searchr2_jax.retrieval.dense import DenseRetriever
from searchr2_jax.retrieval.errors import IndexMismatchError
from searchr2_jax.retrieval.index import BuildOptions, build_index, load_index


class CountingEncoder:
    """The real encoder, counting the texts it encodes; optionally failing on call number `fail_on_call`."""

    def __init__(self, inner, fail_on_call=None):
        self.inner, self.fail_on_call = inner, fail_on_call
        self.calls, self.rows = 0, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, texts, prefix="", batch_size=64):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise KeyboardInterrupt("simulated interruption")
        self.rows += len(texts)
        return self.inner.encode(texts, prefix=prefix, batch_size=batch_size)


def _titles(corpus):
    return [corpus.passage(i).title for i in range(len(corpus))]


@pytest.mark.slow
@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_build_save_load_search_round_trip(tmp_path, corpus_path, encoder, factory):
    import faiss

    corpus = open_corpus(corpus_path)
    out = str(tmp_path / f"idx_{factory}")
    info = build_index(corpus, encoder, out, factory=factory, options=BuildOptions(batch_size=8, progress=False))
    assert info["complete"] and info["rows_done"] == len(corpus) == 12
    for f in ("embeddings.npy", "progress.json", "index.faiss", "meta.json"):
        assert os.path.isfile(os.path.join(out, f)), f
    emb = np.load(os.path.join(out, "embeddings.npy"), mmap_mode="r")
    assert emb.shape == (12, encoder.dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)  # normalized: inner product = cosine
    # the stored rows are the encoder's vectors of the corpus contents, in corpus order
    np.testing.assert_allclose(emb, encoder.encode([corpus.record(i)[1] for i in range(12)]), atol=1e-5)

    index, meta = load_index(out, encoder.fingerprint, corpus.fingerprint, "")
    assert index.ntotal == 12 and meta["factory"] == factory and meta["dim"] == encoder.dim
    assert meta["encoder"] == encoder.fingerprint and meta["corpus"] == corpus.fingerprint
    if factory == "HNSW32":
        assert isinstance(index, faiss.IndexHNSWFlat) and index.hnsw.efSearch == 128
    else:
        assert isinstance(index, faiss.IndexFlat)

    r = DenseRetriever.load(out, corpus_path, encoder)
    titles = _titles(corpus)
    results = r.search(titles, k=3)
    assert [row[0].id for row in results] == [f"doc{i}" for i in range(12)]
    assert all(row[0].score >= row[1].score >= row[2].score for row in results)
    # same answers as the in-memory index over the same corpus
    mem = DenseRetriever.from_corpus(corpus, encoder, factory=factory)
    for a, b in zip(results, mem.search(titles, k=3)):
        assert [p.id for p in a] == [p.id for p in b]
        np.testing.assert_allclose([p.score for p in a], [p.score for p in b], atol=1e-5)


def test_load_refuses_another_encoder(tmp_path, corpus_path, encoder):
    from searchr2_jax.models.encoder import TextEncoder

    corpus = open_corpus(corpus_path)
    out = str(tmp_path / "idx")
    build_index(corpus, encoder, out, options=BuildOptions(progress=False))
    other = TextEncoder.from_pretrained(max_length=64)  # same weights, another max length: other vectors
    with pytest.raises(IndexMismatchError, match=r"encoder\.max_length: index has 128, expected 64") as e:
        load_index(out, other.fingerprint, corpus.fingerprint)
    assert str(out) in str(e.value)
    with pytest.raises(IndexMismatchError, match=r"encoder\.max_length"):
        DenseRetriever.load(out, corpus_path, other)
    fp = dict(encoder.fingerprint, weights_sha256="0" * 64, name="e5-base-v2")
    with pytest.raises(IndexMismatchError) as e:
        load_index(out, fp, corpus.fingerprint)
    assert "encoder.weights_sha256" in str(e.value) and "encoder.name" in str(e.value)
    assert "corpus." not in str(e.value)  # only what differs is named
    with pytest.raises(IndexMismatchError, match=r"passage_prefix: index has '', expected 'passage: '"):
        load_index(out, encoder.fingerprint, corpus.fingerprint, "passage: ")
    load_index(out, encoder.fingerprint, corpus.fingerprint, "")  # the matching one loads


def test_load_refuses_a_changed_corpus(tmp_path, corpus_path, encoder):
    out = str(tmp_path / "idx")
    build_index(open_corpus(corpus_path), encoder, out, options=BuildOptions(progress=False))
    with open(corpus_path, "a") as f:
        f.write(json.dumps({"id": "doc12", "contents": '"Moon"\nThe Moon orbits the Earth.'}) + "\n")
    changed = open_corpus(corpus_path)
    assert len(changed) == 13
    with pytest.raises(IndexMismatchError) as e:
        load_index(out, encoder.fingerprint, changed.fingerprint)
    msg = str(e.value)
    assert "corpus.rows: index has 12, expected 13" in msg and "corpus.sha256" in msg and "encoder." not in msg
    with pytest.raises(IndexMismatchError, match=r"corpus\.rows"):
        DenseRetriever.load(out, corpus_path, encoder)


def test_same_size_edit_of_the_corpus_is_refused(tmp_path, corpus_path, encoder):
    out = str(tmp_path / "idx")
    build_index(open_corpus(corpus_path), encoder, out, options=BuildOptions(progress=False))
    text = open(corpus_path).read()
    with open(corpus_path, "w") as f:
        f.write(text.replace("Seine", "Loire"))  # same length, same row count, other contents
    with pytest.raises(IndexMismatchError) as e:
        DenseRetriever.load(out, corpus_path, encoder)
    assert "corpus.sha256" in str(e.value) and "corpus.rows" not in str(e.value)


def test_missing_or_partial_index_is_reported(tmp_path, corpus_path, encoder):
    with pytest.raises(FileNotFoundError, match="no finished index"):
        load_index(str(tmp_path / "nothing"))
    out = str(tmp_path / "idx")
    info = build_index(open_corpus(corpus_path), encoder, out, options=BuildOptions(stop_after=5, progress=False))
    assert info == {"rows_done": 5, "complete": False}
    with pytest.raises(FileNotFoundError, match="a partial build is there"):
        load_index(out)


def test_stopped_build_resumes_without_reencoding(tmp_path, corpus_path, encoder):
    corpus = open_corpus(corpus_path)
    out = str(tmp_path / "idx")
    first = CountingEncoder(encoder)
    staged = BuildOptions(batch_size=4, stop_after=5, progress=False)
    assert build_index(corpus, first, out, options=staged)["rows_done"] == 5
    assert first.rows == 5
    with open(os.path.join(out, "progress.json")) as f:
        assert json.load(f)["rows_done"] == 5
    second = CountingEncoder(encoder)
    info = build_index(corpus, second, out, options=BuildOptions(batch_size=4, progress=False))
    assert info["complete"] and second.rows == 7  # only the rows the first run did not do
    fresh = str(tmp_path / "fresh")
    build_index(corpus, encoder, fresh, options=BuildOptions(batch_size=4, progress=False))
    np.testing.assert_allclose(np.load(os.path.join(out, "embeddings.npy")),
                               np.load(os.path.join(fresh, "embeddings.npy")), atol=1e-5)
    r = DenseRetriever.load(out, corpus_path, encoder)
    assert [row[0].id for row in r.search(_titles(corpus), k=1)] == [f"doc{i}" for i in range(12)]


@pytest.mark.slow
def test_crashed_build_resumes_from_the_last_checkpoint(tmp_path, corpus_path, encoder):
    corpus = open_corpus(corpus_path)
    out = str(tmp_path / "idx")
    # chunks of 2 rows, a checkpoint after each; the 4th encode call (rows 6-7) dies like a killed process
    crashing = CountingEncoder(encoder, fail_on_call=4)
    small_chunks = BuildOptions(batch_size=2, checkpoint_rows=2, progress=False)
    with pytest.raises(KeyboardInterrupt):
        build_index(corpus, crashing, out, options=small_chunks)
    assert crashing.rows == 6 and not os.path.exists(os.path.join(out, "meta.json"))
    with open(os.path.join(out, "progress.json")) as f:
        assert json.load(f)["rows_done"] == 6
    # resuming with another encoder is refused, naming the partial build and the field
    from searchr2_jax.models.encoder import TextEncoder

    with pytest.raises(IndexMismatchError, match=r"partial build(.|\n)*encoder\.max_length"):
        build_index(corpus, TextEncoder.from_pretrained(max_length=64), out, options=BuildOptions(progress=False))
    resumed = CountingEncoder(encoder)
    assert build_index(corpus, resumed, out, options=small_chunks)["complete"]
    assert resumed.rows == 6
    index, meta = load_index(out, encoder.fingerprint, corpus.fingerprint, "")
    assert index.ntotal == 12 and meta["rows"] == 12
    # overwrite starts over
    again = CountingEncoder(encoder)
    build_index(corpus, again, out, options=BuildOptions(overwrite=True, progress=False))
    assert again.rows == 12
