"""The evaluation methods on the scripted machine over the fixture corpus, resuming, and replaying retrieval."""

import json
import os

import jax
import pytest

from searchr2_jax.config import default_retrieval_config, default_rollout_config
from searchr2_jax.data.qa import QAExample
from searchr2_jax.eval import evaluate as eval_lib
from searchr2_jax.eval import run as run_lib
from searchr2_jax.eval import table as table_lib
from searchr2_jax.retrieval.cache import CachedRetriever, describe
from searchr2_jax.retrieval.retriever import build_retriever
from searchr2_jax.rollout import rollout as rollout_lib

from ..rollout import scripted

TOK = scripted.tokenizer()
with open(os.path.join(os.path.dirname(__file__), "..", "fixtures", "retrieval", "corpus.jsonl")) as _f:
    CORPUS = [json.loads(line) for line in _f]  # in memory: nothing is written beside the fixture
# The prompt's last word is unknown to the word-level tokenizer: the agent searches "alpha", then answers "beta".
AGENT_SCRIPT = {**scripted.SCRIPT, "[UNK]": "<search>"}
# A plain reply: "beta", then end of text.
PLAIN_SCRIPT = {**scripted.SCRIPT, "[UNK]": "beta", "beta": "<|endoftext|>"}


class Counting:
    def __init__(self, retriever):
        self.retriever, self.queries = retriever, []
        self.corpus = retriever.corpus

    def search(self, queries, k):
        self.queries += list(queries)
        return self.retriever.search(queries, k)


def examples(n):
    return [QAExample(f"q{i}", f"which capital city is number {i}", ("beta",) if i % 2 == 0 else ("gamma",),
                      "nq" if i < n // 2 else "bamboogle") for i in range(n)]


def setup(script=AGENT_SCRIPT, style="protocol", cache_dir=None):
    cfg, params = scripted.machine(TOK, script=script)
    rcfg = default_retrieval_config()
    rcfg.backend = "bm25"
    retriever = Counting(build_retriever(rcfg, corpus=CORPUS))
    if cache_dir is not None:
        retriever = CachedRetriever(retriever, cache_dir, describe(retriever.retriever, rcfg))
    config = default_rollout_config()
    config.update(dict(slots=4, max_turns=2, max_prompt_tokens=512, max_response_tokens=160, max_obs_tokens=48,
                       topk=2, segment_steps=8))
    engine = rollout_lib.RolloutEngine(cfg, TOK, retriever, config)
    return run_lib.EvalSetup(engine, params, retriever, 2, False, style, jax.random.key(0))


@pytest.mark.slow
def test_each_method_answers_as_scripted_and_only_rag_and_agent_search():
    s = setup()
    exs = examples(4)
    direct = run_lib.run_chunk(s, "direct", exs, s.rng)
    assert [r["answer"] for r in direct] == ["beta"] * 4
    assert [r["em"] for r in direct] == [1.0, 0.0, 1.0, 0.0] and all(r["searches"] == 0 for r in direct)
    assert s.retriever.queries == []
    rag = run_lib.run_chunk(s, "rag", exs, s.rng)
    assert [(r["answer"], r["searches"]) for r in rag] == [("beta", 1)] * 4
    assert s.retriever.queries == [f"which capital city is number {i}?" for i in range(4)]  # the question itself, once
    agent = run_lib.run_chunk(s, "agent", exs, s.rng)
    assert [(r["answer"], r["searches"], r["status"]) for r in agent] == [("beta", 1, "answered")] * 4
    assert s.retriever.queries[4:] == ["alpha"] * 4  # the agent's own queries


@pytest.mark.slow
def test_flashrag_baselines_read_a_plain_reply_and_give_rag_the_passages(monkeypatch):
    s = setup(PLAIN_SCRIPT, style="flashrag")
    seen = []
    real = eval_lib.rag_reference
    monkeypatch.setattr(eval_lib, "rag_reference", lambda tok, ps, n: seen.append(ps) or real(tok, ps, n))
    exs = examples(2)
    for method in ("direct", "rag"):
        recs = run_lib.run_chunk(s, method, exs, s.rng)
        assert [r["answer"] for r in recs] == ["beta", "beta"] and [r["em"] for r in recs] == [1.0, 0.0]
        assert [(r["status"], r["response_tokens"]) for r in recs] == [("answered", 2)] * 2  # "beta", EOS
    assert len(seen) == 2 and all(len(ps) == 2 for ps in seen)  # rag only, top-k=2 passages each


def test_few_shot_examples_precede_the_question_in_the_flashrag_prompts_only(monkeypatch, tmp_path):
    from searchr2_jax.rollout import generate as generate_lib

    s = setup(PLAIN_SCRIPT, style="flashrag")
    prompts = []
    real = generate_lib.generate
    monkeypatch.setattr(generate_lib, "generate", lambda cfg, params, tok, users, **kw: prompts.extend(users)
                        or real(cfg, params, tok, users, **kw))
    shots = (("which river is longest", "nile"), ("who wrote hamlet?", "shakespeare"))
    exs = examples(2)
    recs = eval_lib.baseline_records(s.engine, s.params, exs, "direct", s.rng,
                                     eval_lib.BaselineOptions(chat=False, style="flashrag", shots=shots))
    assert prompts[0] == (eval_lib.DIRECT_INSTRUCTION + "\n\nQuestion: which river is longest?\nAnswer: nile\n\nQuestion: who wrote hamlet?\n"
                          "Answer: shakespeare\n\nQuestion: which capital city is number 0?\nAnswer:")
    assert len(recs) == 2
    # With the chat template, the examples are earlier turns of the conversation, and the prompt is the question.
    calls = []
    monkeypatch.setattr(generate_lib, "generate", lambda cfg, params, tok, users, **kw: calls.append((users, kw))
                        or real(cfg, params, tok, users, **dict(kw, chat=False, system=None, history=())))
    eval_lib.baseline_records(s.engine, s.params, exs, "direct", s.rng,
                              eval_lib.BaselineOptions(chat=True, style="flashrag", shots=shots))
    (users, kw), = calls
    assert users == ["Question: which capital city is number 0?", "Question: which capital city is number 1?"]
    assert kw["chat"] and kw["history"] == [("Question: which river is longest?", "nile"),
                                            ("Question: who wrote hamlet?", "shakespeare")]
    with pytest.raises(ValueError, match="flashrag"):
        eval_lib.baseline_records(s.engine, s.params, exs, "direct", s.rng,
                                  eval_lib.BaselineOptions(style="protocol", shots=shots))
    # The examples come from the config's training files, never from the evaluated split.
    from ml_collections import ConfigDict

    from searchr2_jax.eval.loading import few_shot_examples

    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"id": str(i), "question": f"q{i}", "golden_answers": [f"a{i}", "x"]}) + "\n"
                             for i in range(3)))
    config = ConfigDict({"data": {"train_files": str(train)}})
    two = few_shot_examples(config, 2)
    assert len(set(two)) == 2 and all(a == f"a{q[1:]}" for q, a in two) and two == few_shot_examples(config, 2)
    assert few_shot_examples(config, 0) == () and sorted(few_shot_examples(config, 3)) == [(f"q{i}", f"a{i}")
                                                                                           for i in range(3)]
    with pytest.raises(ValueError, match="only 3"):
        few_shot_examples(config, 4)


@pytest.mark.slow
def test_an_interrupted_evaluation_resumes_to_the_same_records(tmp_path, monkeypatch):
    s = setup()
    exs = examples(5)
    full = run_lib.run_methods(s, exs, ("direct", "agent"), str(tmp_path / "a"), chunk=2, progress=False)
    assert [len(v) for v in full.values()] == [5, 5]  # 3 chunks: the remainder of 1 is kept
    # An interrupted run: the agent's first chunk is on disk, the second was being written when the process died.
    part = tmp_path / "b"
    part.mkdir()
    (part / "direct.jsonl").write_text((tmp_path / "a" / "direct.jsonl").read_text())
    lines = (tmp_path / "a" / "agent.jsonl").read_text().splitlines(keepends=True)
    (part / "agent.jsonl").write_text("".join(lines[:2]) + lines[2][:15])
    ran = []
    real = run_lib.run_chunk
    monkeypatch.setattr(run_lib, "run_chunk", lambda st, m, ex, rng: ran.append((m, len(ex))) or real(st, m, ex, rng))
    seconds = {}
    resumed = run_lib.run_methods(s, exs, ("direct", "agent"), str(part), chunk=2, progress=False, seconds=seconds)
    assert ran == [("agent", 2), ("agent", 1)]
    assert set(seconds) == {"direct", "agent"} and 0 <= seconds["direct"] < seconds["agent"]  # direct read back
    assert resumed == full
    settings = {"retriever": "bm25"}
    assert table_lib.build_table(resumed, settings, n_boot=50) == table_lib.build_table(full, settings, n_boot=50)
    with pytest.raises(ValueError, match="other questions"):
        run_lib.run_methods(s, examples(6)[1:], ("direct",), str(part), chunk=2, progress=False)


def test_a_replay_from_the_retrieval_cache_calls_no_retriever_and_gives_the_same_table(tmp_path):
    exs = examples(4)
    first = setup(cache_dir=str(tmp_path / "cache"))
    a = run_lib.run_methods(first, exs, ("rag", "agent"), str(tmp_path / "r1"), chunk=4, progress=False)
    assert first.retriever.calls == 5  # four questions for rag, then "alpha" once (the agent's rows share it)
    again = setup(cache_dir=str(tmp_path / "cache"))
    first.engine.retriever = None  # nothing of the first run is reused but the cache file
    b = run_lib.run_methods(again, exs, ("rag", "agent"), str(tmp_path / "r2"), chunk=4, progress=False)
    assert again.retriever.calls == 0 and again.retriever.retriever.queries == []
    assert table_lib.build_table(a, {}, n_boot=50) == table_lib.build_table(b, {}, n_boot=50)
    assert [json.loads(x)["answer"] for x in (tmp_path / "r2" / "agent.jsonl").read_text().splitlines()] == \
        ["beta"] * 4
