"""Trajectory dumps (rollout/dump.py): record content from hand-built and scripted trajectories, sampling, the JSONL
round trip, and a trainer run that writes them without changing what it computes."""

import dataclasses
import json
import math
import os
import shutil

import jax
import numpy as np
import pytest

from searchr2_jax.retrieval.types import Passage
from searchr2_jax.rl.rewards import RewardTerms
from searchr2_jax.rollout import dump
from searchr2_jax.rollout import types as T
from searchr2_jax.text import protocol

from . import scripted
from . import trajectories as tr

P = [Passage("7", "Alpha Town", "Alpha Town lies on a river."), Passage("9", "Beta", "Beta is a <b>name</b> & more.")]
JOB = T.Job([1, 2, 3], question="Where was Alpha born?", golden_answers=("Beta", "B."), group_id=7,
            metadata={"id": "syn-1", "data_source": "synthetic", "hops": 2, "gold_passage_ids": ["9"]})
SEARCH = ("<think> First find Alpha. </think>\n<search> Alpha born </search>", P)
DRAFT = [SEARCH, ("<think> Guess. </think>\n<answer> Gamma </answer>", None)]
FINAL = [SEARCH, ("<think> Look again. </think><search> Beta </search>", P[1:]), ("<answer> Beta </answer>", None)]


def revised():
    return tr.trajectory(JOB, FINAL, index=3, draft_steps=DRAFT, cut=2, scores=[-2.0, -1.5, -0.2],
                         accept_scores=[-0.1, -3.0, -4.0, float("-inf")])


def test_a_revised_trajectory_records_turns_passages_scores_draft_and_regeneration():
    rec = dump.trajectory_record(revised(), tr.TOK, kind="train", step=12, em=1.0, useful=1.0, reward=1.5)
    assert (rec.kind, rec.step, rec.index, rec.id, rec.source, rec.hops, rec.group_id) == \
        ("train", 12, 3, "syn-1", "synthetic", 2, 7)
    assert (rec.question, rec.golden_answers, rec.gold_passage_ids) == (JOB.question, ["Beta", "B."], ["9"])
    assert (rec.status, rec.answer, rec.em, rec.useful, rec.searches, rec.reward) == \
        (T.ANSWERED, "Beta", 1.0, 1.0, 2, 1.5)
    assert rec.revised and rec.response_tokens == rec.generated_tokens == len(revised().response_ids)
    first, second, third = rec.turns
    assert (first.step, first.action, first.thought, first.query, first.answer) == \
        (1, "search", "First find Alpha.", "Alpha born", None)
    assert first.text == SEARCH[0] and first.tool is None and first.error is None
    assert [(p.id, p.title, p.text, p.gold) for p in first.passages] == \
        [("7", "Alpha Town", "Alpha Town lies on a river.", False), ("9", "Beta", P[1].text, True)]
    assert (second.step, second.query, [p.gold for p in second.passages]) == (2, "Beta", [True])
    assert (third.step, third.action, third.thought, third.answer) == (3, "answer", None, "Beta")
    cut, accept = rec.refiner
    assert (cut.choice, cut.scores, cut.forced, cut.kept_tokens) == (2, [-2.0, -1.5, -0.2], False,
                                                                     len(SEARCH[0]) + len(
                                                                         protocol.render_information(P)))
    # The discarded draft from the cut on, beside the Actor's turns from the same step.
    assert [(t.step, t.action, t.answer) for t in cut.draft.turns] == [(2, "answer", "Gamma")]
    assert (cut.draft.status, cut.draft.answer) == (T.ANSWERED, "Gamma")
    assert [(t.step, t.action) for t in cut.regeneration.turns] == [(2, "search"), (3, "answer")]
    assert cut.regeneration.turns == [second, third] and cut.regeneration.answer == "Beta"
    # The final judgement accepts; a non-finite log-prob is written as null (JSON has no -inf).
    assert (accept.choice, accept.scores, accept.draft, accept.regeneration, accept.kept_tokens) == \
        (0, [-0.1, -3.0, -4.0, None], None, None, None)


def test_unknown_gold_and_eval_terms_are_null_and_invalid_turns_keep_the_tool_message():
    job = T.Job([1], question="q?", golden_answers=("a",), group_id=0, metadata={})
    t = tr.trajectory(job, [("I do not know", None), ("<search> a </search>", P), ("<answer> a </answer>", None)])
    t.turns[1].error = "timeout"
    rec = dump.trajectory_record(t, tr.TOK, kind="eval", step=5, em=1.0)
    assert (rec.id, rec.hops, rec.gold_passage_ids, rec.useful, rec.reward, rec.revised) == \
        (None, None, None, None, None, False)
    assert rec.turns[0].action == "invalid" and rec.turns[0].tool == protocol.INVALID_ACTION_MESSAGE
    assert [p.gold for p in rec.turns[1].passages] == [None, None] and rec.turns[1].error == "timeout"
    with pytest.raises(ValueError, match="kind"):
        dump.trajectory_record(t, tr.TOK, kind="test", step=5, em=1.0)


@pytest.mark.slow  # compiles two engines: ~20 s on 2 CPU cores
def test_a_scripted_rollouts_draft_is_the_plain_rollout_and_the_record_shows_both_branches():
    """The rollout keeps the draft it overwrote: the response a plain rollout of the same job produces."""
    from .test_rollout import engine, jobs

    eng, params = engine(refiner=True, refiner_choice="2")
    base_eng, _ = engine()
    (t,) = eng.run(params, jobs("go"), jax.random.key(0)).trajectories
    (base,) = base_eng.run(params, jobs("go"), jax.random.key(0)).trajectories
    assert t.cut_steps == [2] and len(t.drafts) == 1
    draft = t.drafts[0]
    np.testing.assert_array_equal(draft.response_ids, base.response_ids)
    assert [x.action for x in draft.turns] == [x.action for x in base.turns] and draft.status == base.status
    tok = scripted.tokenizer()
    rec = dump.trajectory_record(t, tok, kind="train", step=1, em=1.0)
    d = rec.refiner[0]
    assert d.choice == 2 and d.draft.turns[0].step == d.regeneration.turns[0].step == 2
    assert d.draft.turns[0].text == tok.decode(list(base.response_ids[base.turns[1].start:base.turns[1].end]),
                                                skip_special_tokens=False)
    assert rec.turns[0].query == "alpha" and [p.id for p in rec.turns[0].passages] == ["alpha-0", "alpha-1"]
    # Without revisions there is no draft.
    assert base.drafts == []


def test_sampling_takes_whole_groups_deterministically():
    groups = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    pick = dump.sample_groups(groups, 4, seed=[0, 3])
    assert len(pick) == 4 and pick == sorted(pick)
    assert all(groups.count(g) == sum(groups[i] == g for i in pick) for g in {groups[i] for i in pick})
    assert pick == dump.sample_groups(groups, 4, seed=[0, 3])
    assert {tuple(dump.sample_groups(groups, 4, seed=[0, s])) for s in range(10)} != {tuple(pick)}
    assert dump.sample_groups(groups, 0, seed=0) == list(range(10))
    assert len(dump.sample_groups([0, 0, 0], 2, seed=0)) == 3  # at least one group, whole


def test_records_round_trip_through_jsonl_and_bad_lines_name_file_and_line(tmp_path):
    trajs = [revised(), tr.trajectory(JOB, FINAL, index=4)]
    terms = RewardTerms(em=[1.0, 0.0], useful=[2.0, 0.0], total=[2.0, 0.0])
    recs = dump.dump_records(trajs, tr.TOK, terms, kind="train", step=3)
    path = dump.dump_path(str(tmp_path), "train", 3)
    dump.write_jsonl(path, recs)
    assert path.endswith(os.path.join("trajectories", "train_step3.jsonl"))
    assert dump.read_dump(path) == [json.loads(json.dumps(dataclasses.asdict(r))) for r in recs]
    assert [r["em"] for r in dump.read_dump(path)] == [1.0, 0.0]
    assert dump.find_dumps(str(tmp_path)) == {("train", 3): path}
    lines = open(path).read().splitlines()
    for bad, msg in (("{not json", "not JSON"), ("[1, 2]", "expected a JSON object"),
                     ('{"question": "q"}', r"not a trajectory record \(missing schema, kind")):
        with open(path, "w") as f:
            f.write("\n".join([lines[0], bad, lines[1]]) + "\n")
        with pytest.raises(ValueError, match=f"train_step3.jsonl: row 2: {msg}"):
            dump.read_dump(path)
    with pytest.raises(FileNotFoundError, match="no trajectory dumps"):
        dump.find_dumps(str(tmp_path / "elsewhere"))


def test_only_process_zero_writes(tmp_path, monkeypatch):
    terms = RewardTerms(em=[1.0])
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    assert dump.write_dump(str(tmp_path), "eval", 1, [revised()], tr.TOK, terms) is None
    assert not os.path.exists(tmp_path / "trajectories")
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    assert os.path.exists(dump.write_dump(str(tmp_path), "eval", 1, [revised()], tr.TOK, terms))


@pytest.mark.slow  # two tiny training runs, the second from the first's compilation cache: ~1 min on 2 CPU cores
def test_a_trainer_run_writes_its_dumps_and_computes_what_a_run_without_them_does(tmp_path):
    from searchr2_jax.trainer import Trainer
    from tests.test_trainer import by_step, is_timing, one_device, tiny_config

    def run(workdir, dump_every):
        c = tiny_config("sft_steps=0,steps=2")
        c.train.update(dict(dump_every=dump_every, dump_rows=2, eval_every=2))
        return Trainer(c, workdir, devices=one_device()).run()

    with_dumps, without = str(tmp_path / "with"), str(tmp_path / "without")
    run(with_dumps, 1)
    shutil.copytree(os.path.join(with_dumps, "tokenizer"), os.path.join(without, "tokenizer"))  # time only
    run(without, 0)
    assert not os.path.exists(os.path.join(without, "trajectories"))
    found = dump.find_dumps(with_dumps)
    assert sorted(found) == [("eval", 2), ("train", 1), ("train", 2)]
    rows_a, rows_b = by_step(with_dumps), by_step(without)
    assert sorted(rows_a) == sorted(rows_b) == [1, 2]
    for step in rows_a:
        keys = sorted(k for k in rows_a[step] if not is_timing(k))
        assert keys == sorted(k for k in rows_b[step] if not is_timing(k))
        for k in keys:
            np.testing.assert_allclose(rows_a[step][k], rows_b[step][k], rtol=1e-6, atol=1e-7,
                                       err_msg=f"step {step} {k}")
    for step in (1, 2):
        recs = dump.read_dump(found[("train", step)])
        assert len(recs) == 2 and len({r["group_id"] for r in recs}) == 1  # dump_rows=2: one whole group of 2
        assert all(r["kind"] == "train" and r["step"] == step and r["reward"] is not None for r in recs)
        assert all(r["hops"] in (1, 2, 3) and r["gold_passage_ids"] for r in recs)
        assert all(math.isclose(r["reward"], r["em"] * (1 + (r["useful"] / r["searches"] if r["searches"] else 0)),
                                rel_tol=1e-5) for r in recs)
    evals = dump.read_dump(found[("eval", 2)])
    assert len(evals) == 2 and all(r["refiner"] == [] and r["reward"] is None for r in evals)
    assert np.mean([r["em"] for r in evals]) == rows_a[2]["eval/em"]
