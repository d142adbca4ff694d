"""What an evaluation loads from a config: an HF folder's model, tokenizer and retriever behind the disk cache."""

import os
import shutil

import jax
import numpy as np
import pytest

from searchr2_jax.config import base_config
from searchr2_jax.eval import loading
from searchr2_jax.models import hf_io

from ..rollout import scripted

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")


def test_an_hf_folder_loads_as_the_agent_with_its_tokenizer_and_a_cached_retriever(tmp_path):
    tok = scripted.tokenizer()
    cfg, params = scripted.machine(tok)
    folder = str(tmp_path / "hf")
    hf_io.save_params(folder, cfg, params)
    tok.save_pretrained(folder)
    config = base_config()
    config.model.update(dict(hf_path=folder, tokenizer=folder, dtype="float32"))
    config.data.eval_files = os.path.join(FIXTURES, "data", "nq", "test.jsonl")
    corpus = tmp_path / "corpus.jsonl"  # a copy: reading a corpus file writes its offsets beside it
    shutil.copy(os.path.join(FIXTURES, "retrieval", "corpus.jsonl"), corpus)
    config.retrieval.update(dict(backend="bm25", corpus_path=str(corpus)))
    agent = loading.load_agent(config, cache_dir=str(tmp_path / "cache"))
    assert agent.model == folder and agent.world is None
    assert agent.engine.cfg.vocab_size == cfg.vocab_size and len(agent.engine.tokenizer) == len(tok)
    for a, b in zip(jax.tree.leaves(agent.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert agent.engine.retriever is agent.retriever  # searches go through the disk cache
    assert agent.retriever.search(["Paris"], 1)[0][0].id == "doc0"
    assert loading.eval_examples(config, limit=2)


def test_an_hf_evaluation_without_question_files_says_what_is_missing():
    config = base_config()
    config.model.hf_path = "/nonexistent"
    with pytest.raises(ValueError, match="data.eval_files"):
        loading.load_agent(config)
