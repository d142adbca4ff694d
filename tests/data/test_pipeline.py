"""Reader -> TFDS array_record -> grain pipeline: same order per seed, disjoint host shards, mid-epoch resume."""

import itertools
import json

import numpy as np
import pytest

from searchr2_jax.data.pipeline import QAPipeline, group_id
from searchr2_jax.data.qa import read_qa_file
from searchr2_jax.data.tfds_builders import QADataSource, prepare_array_record
from tests.data.conftest import JSONL_FIXTURES

SOURCES = sorted(JSONL_FIXTURES) + ["search_r1_parquet"]


@pytest.fixture(scope="module")
def sources(search_r1_parquet, tmp_path_factory):
    """name -> (examples from the plain reader, the same file through a prepared TFDS array_record builder)."""
    from tests.data.conftest import fixture_path

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    out = {}
    for name in SOURCES:
        path = search_r1_parquet if name == "search_r1_parquet" else fixture_path(JSONL_FIXTURES[name])
        builder = prepare_array_record(name, {"train": [path]}, data_dir)
        out[name] = (read_qa_file(path), QADataSource(builder, "train"))
    return out


def _ids(batches):
    return [[(e.data_source, e.id) for e in b.examples] for b in batches]


@pytest.mark.parametrize("name", SOURCES)
def test_tfds_source_equals_reader(sources, name):
    examples, tfds_source = sources[name]
    assert len(tfds_source) == len(examples)
    assert [tfds_source[i] for i in range(len(examples))] == examples  # same records, same (file) order


@pytest.mark.parametrize("name", SOURCES)
def test_same_seed_same_batches_through_reader_and_tfds(sources, name):
    examples, tfds_source = sources[name]
    kw = dict(batch_size=2, group_size=3, shard_index=0, shard_count=1)
    a = list(itertools.islice(iter(QAPipeline(examples, seed=7, **kw)), 6))
    b = list(itertools.islice(iter(QAPipeline(tfds_source, seed=7, **kw)), 6))
    c = list(itertools.islice(iter(QAPipeline(examples, seed=8, **kw)), 6))
    assert _ids(a) == _ids(b) and _ids(a) != _ids(c)
    assert all(np.array_equal(x.group_ids, y.group_ids) for x, y in zip(a, b))
    first = a[0]
    assert len(first.questions) == 6 and first.group_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert first.questions[:3] == [first.examples[0].question] * 3
    # 6 batches of 2 cover more than one epoch: every example appears in the first epoch exactly once
    n = len(examples)
    flat = [i for b in _ids(a) for i in b]
    assert sorted(flat[:n]) == sorted((e.data_source, e.id) for e in examples)


@pytest.mark.parametrize("name", SOURCES)
def test_two_hosts_read_disjoint_equal_shards(sources, name):
    examples, tfds_source = sources[name]
    seen = []
    for host in range(2):
        p = QAPipeline(tfds_source, batch_size=1, seed=3, shard_index=host, shard_count=2, num_epochs=1)
        assert len(p) == len(examples) // 2
        seen.append({i for b in _ids(list(p)) for i in b})
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 2 * (len(examples) // 2)


@pytest.mark.parametrize("name", SOURCES)
def test_resume_mid_epoch_from_saved_state(sources, name):
    _, tfds_source = sources[name]
    pipe = QAPipeline(tfds_source, batch_size=2, group_size=2, seed=11, shard_index=0, shard_count=1)
    it = iter(pipe)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    expected = _ids([next(it) for _ in range(4)])
    fresh = iter(QAPipeline(tfds_source, batch_size=2, group_size=2, seed=11, shard_index=0, shard_count=1))
    fresh.set_state(state)
    assert _ids([next(fresh) for _ in range(4)]) == expected
    other = iter(QAPipeline(tfds_source, batch_size=2, group_size=2, seed=12, shard_index=0, shard_count=1))
    with pytest.raises(ValueError, match="different pipeline"):
        other.set_state(state)
    with pytest.raises(ValueError, match="not a QAIterator state"):
        other.set_state({"next_index": 3})


def test_group_ids_never_collide_across_datasets_batches_epochs(sources):
    all_examples = [e for name in SOURCES for e in sources[name][0]]
    pipe = QAPipeline(all_examples, batch_size=4, group_size=5, seed=0, shard_index=0, shard_count=1, num_epochs=3)
    ids = np.concatenate([b.group_ids[:: b.group_size] for b in pipe])
    assert len(ids) == (3 * len(all_examples)) // 4 * 4  # 3 epochs, drop_remainder
    assert len(set(ids.tolist())) == len(ids)
    # the same id in two datasets ("test_0" in nq and bamboogle) gets different groups
    assert group_id("nq", "test_0", 0) != group_id("bamboogle", "test_0", 0) != group_id("nq", "test_0", 1)


def test_bad_pipeline_arguments(sources):
    examples, _ = sources["nq"]
    with pytest.raises(ValueError):
        QAPipeline(examples, batch_size=0)
    with pytest.raises(ValueError):
        QAPipeline(examples, batch_size=1, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="cannot feed"):
        QAPipeline(examples[:1], batch_size=1, shard_index=0, shard_count=2)
