"""Trainer: the smoke config end to end, resume determinism across SFT/RL checkpoints, config errors up front.

One uninterrupted run and one run interrupted three times (mid-SFT, at the SFT->RL switch, mid-RL) share a
persistent compilation cache, so only the first Trainer pays for compilation.
"""

import json
import math
import os
import re
import shutil

import jax
import numpy as np
import pytest

from configs import smoke

from searchr2_jax import checkpoint as ckpt_lib
from searchr2_jax.benchmarks.checkpoint_kill import is_timing
from searchr2_jax.config import ConfigError, validate_config
from searchr2_jax.data.demos import COPY_DRILL_LEN
from searchr2_jax.jsonl import read_jsonl
from searchr2_jax.rl import advantages as adv_lib
from searchr2_jax.rl import batch as batch_lib
from searchr2_jax.rollout import types as T
from searchr2_jax.trainer import Trainer, recompute_old_logprobs

SFT, RL = 2, 3
TOTAL = SFT + RL
STOPS = (1, SFT, SFT + 2)  # mid-SFT, exactly at the phase switch, mid-RL


def tiny_config(arg=f"sft_steps={SFT},steps={RL}"):
    c = smoke.get_config(arg)
    c.data.eval_examples = 2
    c.rollout.update(dict(slots=8, max_response_tokens=128, max_obs_tokens=64, segment_steps=16))
    c.sft.update(dict(batch_size=4, seq_len=256))
    c.rl.group_size = 2
    c.train.update(dict(prompts_per_step=2, micro_batches=2, log_every=1, ckpt_every=1, keep_checkpoints=10,
                        eval_every=100, progress=False))  # eval only at the last step
    c.mesh.update(dict(data=1, fsdp=1, tensor=1))
    return c


def one_device():
    return jax.devices()[:1]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    final = Trainer(tiny_config(), workdir, devices=one_device()).run()
    return workdir, final


@pytest.fixture(scope="module")
def interrupted(uninterrupted, tmp_path_factory):
    """The same run stopped after the checkpoints of STOPS and restarted each time in the same workdir."""
    workdir = str(tmp_path_factory.mktemp("interrupted"))
    shutil.copytree(os.path.join(uninterrupted[0], "tokenizer"), os.path.join(workdir, "tokenizer"))  # time only
    resumed_at = []
    for stop in (*STOPS, None):
        trainer = Trainer(tiny_config(), workdir, devices=one_device())
        resumed_at.append(trainer.ckpt.latest_step() or 0)
        final = trainer.run(stop_at=stop)
    return workdir, final, resumed_at


def by_step(workdir):
    rows = {}
    for row in read_jsonl(os.path.join(workdir, "metrics.jsonl")):
        rows.setdefault(row["step"], {}).update(row)
    return rows


def final_state(workdir):
    trainer_like = Trainer(tiny_config(), workdir, devices=one_device())
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
        return ckpt.restore(trainer_like.state, TOTAL)
    finally:
        ckpt.close()


@pytest.mark.slow
def test_smoke_config_trains_end_to_end(uninterrupted):
    workdir, final = uninterrupted
    for key in ("train/loss", "reward/mean", "train/kl", "eval/em", "eval/f1"):
        assert math.isfinite(final[key]), (key, final[key])
    rows = by_step(workdir)
    assert sorted(rows) == list(range(1, TOTAL + 1))
    assert all(math.isfinite(rows[s]["sft/nll"]) for s in range(1, SFT + 1))
    assert rows[SFT]["sft/nll"] < rows[1]["sft/nll"]  # the warm start learns
    for s in range(SFT + 1, TOTAL + 1):
        assert math.isfinite(rows[s]["train/loss"]) and math.isfinite(rows[s]["reward/mean"])
        assert rows[s]["rollout/trajectories"] == 4  # 2 prompts x group of 2
    ckpts = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert ckpts == list(range(1, TOTAL + 1))
    assert os.path.exists(os.path.join(workdir, "tokenizer", "tokenizer.json"))
    # A finished run restarted in its workdir has nothing left to do.
    again = Trainer(tiny_config(), workdir, devices=one_device())
    assert again.ckpt.latest_step() == TOTAL
    assert "train/loss" not in again.run()


@pytest.mark.slow
def test_interrupted_runs_resume_and_reproduce_the_uninterrupted_run(uninterrupted, interrupted):
    (work_a, final_a), (work_b, final_b, resumed_at) = uninterrupted, interrupted
    assert resumed_at == [0, *STOPS]
    rows_a, rows_b = by_step(work_a), by_step(work_b)
    assert sorted(rows_b) == sorted(rows_a) == list(range(1, TOTAL + 1))
    # Every step after a resume point (mid-SFT, at the switch, mid-RL) matches the uninterrupted run.
    for step in range(1, TOTAL + 1):
        a, b = rows_a[step], rows_b[step]
        keys = sorted(k for k in a if not is_timing(k))
        assert keys == sorted(k for k in b if not is_timing(k))
        assert len(keys) > (1 if step <= SFT else 30)
        for k in keys:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-7, err_msg=f"step {step} {k}")
    assert final_b["eval/em"] == final_a["eval/em"]
    # Same parameters, optimizer state and data-iterator position at the end.
    (state_a, data_a), (state_b, data_b) = final_state(work_a), final_state(work_b)
    assert json.dumps(data_a, sort_keys=True) == json.dumps(data_b, sort_keys=True)
    for x, y in zip(jax.tree.leaves((state_a.params, state_a.opt_state)),
                    jax.tree.leaves((state_b.params, state_b.opt_state))):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-6, atol=1e-8)


def test_sft_batches_are_a_function_of_seed_and_step(tmp_path):
    trainer = Trainer(tiny_config(), str(tmp_path), devices=one_device())
    first = [trainer.sft_batches(step) for step in range(3)]
    resumed = Trainer(tiny_config(), str(tmp_path), devices=one_device()).sft_batches(2)  # a fresh process, mid-stream
    for x, y in zip(first[2], resumed):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(first[1], trainer.sft_batches(1)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first[0][0], first[1][0])


def test_fresh_name_sft_batches_and_copy_drills_name_no_entity_of_the_world(tmp_path):
    c = tiny_config()
    c.sft.update(dict(fresh_names=True, copy_steps=1))
    trainer = Trainer(c, str(tmp_path), devices=one_device())
    names = trainer.world.name_words()
    for step, length in ((0, COPY_DRILL_LEN), (1, c.sft.seq_len)):  # a copy drill, then demonstrations
        tokens, valid, mask = trainer.sft_batches(step)
        assert tokens.shape == ((c.sft.copy_batch_size, length) if step == 0 else (c.sft.batch_size, length))
        np.testing.assert_array_equal(tokens, trainer.sft_batches(step)[0])  # still a function of (seed, step)
        text = " ".join(trainer.tokenizer.decode(t[v]) for t, v in zip(tokens, valid))
        assert not set(re.findall(r"[A-Za-z]+", text)) & names
        assert "<search>" in text and ("<information>" in text) == (step > 0)
    tokens, valid, mask = trainer.sft_batches(0)
    for t, v, m in zip(tokens, valid, mask):  # the loss is on the turn, which names the question's subject
        question = trainer.tokenizer.decode(t[v & (m == 0)])
        turn = trainer.tokenizer.decode(t[m > 0])
        assert question.startswith("Question: ") and turn.startswith("<think>") and turn.endswith("</search>")
        subject = [w for w in re.findall(r"[A-Z][a-z]+", turn) if w in question and w != "I"]
        assert subject, (question, turn)


def test_a_demonstrator_that_stops_early_teaches_the_actor_its_early_answers(tmp_path):
    c = tiny_config()
    c.sft.update(dict(stop_early_fraction=1.0, flawed_fraction=0.0, refiner_fraction=0.0, seq_len=768))
    trainer = Trainer(c, str(tmp_path), devices=one_device())
    trainer.sft_batches(0)  # builds the demo writer
    drawn = []
    demos = trainer.sft_batches.writer.demos
    trainer.sft_batches.writer.demos = lambda *a, **k: drawn.extend(demos(*a, **k)) or drawn[-len(a[0]):]
    early = 0
    for step in range(1, 4):
        tokens, valid, mask = trainer.sft_batches(step)
        for d, t, v, m in zip(drawn[-len(tokens):], tokens, valid, mask):
            assert "ASSISTANT_STEP_" not in trainer.tokenizer.decode(t[v & (m == 0)][:64])  # Actor rows only
            text = trainer.tokenizer.decode(t[m > 0])
            hops = d.example.metadata["hops"]
            if d.stopped_early and "<answer>" in text:  # rows cut at sft.seq_len may end before the answer
                early += 1
                assert text.count("<search>") == hops - 1 >= 1
    assert early > 0
    c.sft.stop_early_fraction = 1.5
    _expect(c, "sft.stop_early_fraction")


def _trajs(statuses, group_ids):
    """Trajectories of different lengths, one meta-action each (the step batch needs no rollout)."""
    out = []
    for i, (status, g) in enumerate(zip(statuses, group_ids)):
        n = 4 + i
        meta = T.MetaAction(prompt_ids=[5, 6, 7], action_ids=[8], choice=0, logprob=-0.5, scores=[-0.5, -1.0])
        out.append(T.Trajectory(i, T.Job(prompt_ids=[1, 2, 3], group_id=g), np.arange(10, 10 + n, dtype=np.int32),
                                np.full(n, -1.0, np.float32), np.ones(n, np.int8), [], status,
                                meta_actions=[meta]))
    return out


@pytest.mark.parametrize("mode", ["grpo", "rejection_sampling", "ppo"])
def test_retrieval_errors_get_no_loss_weight_and_stay_out_of_the_statistics(mode):
    """A failed retrieval is an infrastructure fault, not a wrong answer: its rows (and meta-actions) carry no loss
    weight, and the other rows' advantages are those of the batch without them."""
    c = tiny_config()
    c.rl.algo = "ppo" if mode == "ppo" else "grpo"
    c.rl.rejection_sampling = mode == "rejection_sampling"
    c.train.pack_rows = False  # one trajectory per row, in order (rl/packing.py is tested on its own)
    statuses = [T.ANSWERED, T.RETRIEVAL_ERROR, T.INVALID, T.ANSWERED, T.RETRIEVAL_ERROR, T.OUT_OF_TURNS]
    groups = [7, 7, 7, 3, 3, 3]
    reward = np.asarray([1.0, 5.0, 0.0, 0.5, -5.0, 0.0], np.float32)
    keep = np.asarray([s != T.RETRIEVAL_ERROR for s in statuses])
    # For PPO, the critic's values: here V = 0.
    sb, metrics = batch_lib.step_batch(_trajs(statuses, groups), reward, c, shards=1,
                                       values=lambda tokens, valid: np.zeros(tokens.shape, np.float32))
    assert metrics == {"train/retrieval_error_rows": 2.0}
    mask, adv = np.asarray(sb.loss_mask), np.asarray(sb.advantages)
    assert not mask[~keep].any() and not adv[~keep].any() and mask[keep].sum(1).min() > 0
    meta = np.asarray(sb.meta_mask)
    np.testing.assert_array_equal(meta.sum(1), keep)  # one meta-action packed in each kept trajectory's row
    first = np.argmax(mask > 0, axis=1)  # a meta-action takes its trajectory's advantage at the first loss token
    np.testing.assert_array_equal(adv[meta > 0], adv[np.flatnonzero(keep), first[keep]])
    if mode == "ppo":
        # gamma = lam = 1 and V = 0: every token's advantage is its row's reward, whitened over the kept tokens.
        x = np.repeat(reward[keep], mask[keep].sum(1).astype(int))
        expected = (x - x.mean()) / np.sqrt(x.var(ddof=1) + 1e-8)
        np.testing.assert_allclose(adv[mask > 0], expected, rtol=1e-5, atol=1e-6)
        return
    ids = np.unique(groups, return_inverse=True)[1]
    expected = adv_lib.sequence_advantages(reward[keep], ids[keep], normalize_std=c.rl.normalize_std,
                                           rejection_sampling=c.rl.rejection_sampling)
    np.testing.assert_allclose(adv[keep].max(1, initial=-np.inf, where=mask[keep] > 0), np.asarray(expected),
                               rtol=1e-6)
    np.testing.assert_allclose(adv[keep].min(1, initial=np.inf, where=mask[keep] > 0), np.asarray(expected),
                               rtol=1e-6)


def test_trained_drafts_join_their_group_and_leave_the_meta_rows_sized_by_jobs():
    """`refiner.train_drafts`: a revised draft is one more member of its GRPO group, scored like any trajectory;
    the step's meta rows are still sized by the rollout's jobs (drafts carry no meta-action)."""
    import types

    from searchr2_jax.rl import judges

    c = tiny_config()
    c.train.pack_rows = False
    c.refiner.update(dict(prompt="table12", train_drafts=True))
    c.reward.update(dict(judge="none", outcome_only=True))
    finals = _trajs([T.ANSWERED] * 4, [0, 0, 1, 1])
    finals[1].answer = "yes"
    finals[1].job.golden_answers = ("yes",)
    d = finals[1]
    d.drafts = [T.Draft(d.response_ids[:3], [], T.ANSWERED, "no", d.logprobs[:3], d.loss_mask[:3])]
    reward = np.asarray([0.0, 1.0, 1.0, 0.0], np.float32)
    host = types.SimpleNamespace(config=c, judge=judges.make_judge("none"))
    trajs, rewards = Trainer.with_drafts(host, finals, reward)
    assert len(trajs) == 5 and trajs[4].job is d.job and not trajs[4].meta_actions
    np.testing.assert_array_equal(rewards, [0.0, 1.0, 1.0, 0.0, 0.0])  # the draft answered "no": EM 0
    sb, _ = batch_lib.step_batch(trajs, rewards, c, shards=1, jobs=len(finals))
    adv, mask = np.asarray(sb.advantages), np.asarray(sb.loss_mask)
    per_row = [adv[r, mask[r] > 0] for r in range(5)]
    assert all(len(a) and np.ptp(a) == 0 for a in per_row)  # one advantage per trajectory, on its loss tokens
    # group 0 is now the two finals and the draft: rewards 0, 1, 0
    expected = np.asarray(adv_lib.sequence_advantages(rewards, np.asarray([0, 0, 1, 1, 0]),
                                                      normalize_std=c.rl.normalize_std))
    np.testing.assert_allclose([a[0] for a in per_row], expected, rtol=1e-6)
    assert expected[4] == expected[0] < 0 < expected[1]
    assert sb.meta_rows.tokens.shape[0] == T.meta_rows(len(finals), c.refiner.max_revisions,
                                                       c.train.micro_batches, 1)
    c.refiner.train_drafts = False
    assert Trainer.with_drafts(host, finals, reward) == (finals, reward)


# ------------------------------------------------------------------------------------------------ config errors


def _expect(config, field, num_devices=1):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate_config(config, num_devices=num_devices)


def test_grpo_needs_a_group():
    c = tiny_config()
    c.rl.group_size = 1
    _expect(c, "rl.group_size")


def test_mesh_must_fit_the_devices(tmp_path):
    c = tiny_config()
    c.mesh.update(dict(data=3, fsdp=1, tensor=1))
    _expect(c, "mesh.data", num_devices=8)
    # The Trainer checks before it builds the world, the model or any jitted function.
    with pytest.raises(ConfigError, match=r"mesh\.data"):
        Trainer(c, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")


def test_refiner_needs_turns():
    c = tiny_config()
    assert c.refiner.enabled
    c.rollout.max_turns = 0
    _expect(c, "rollout.max_turns")


def test_retrieval_k_must_agree_with_the_rollouts_topk():
    c = tiny_config()
    c.retrieval.k = c.rollout.topk + 2  # training would silently retrieve rollout.topk
    _expect(c, "retrieval.k")


def test_micro_batches_must_divide_rows():
    c = tiny_config()
    c.train.micro_batches = 3  # rows = 2 prompts x 2
    _expect(c, "train.micro_batches")


def test_unknown_judge():
    c = tiny_config()
    c.reward.judge = "gpt"
    _expect(c, "reward.judge")


def test_llm_judge_needs_a_model_or_a_generate_callable():
    c = tiny_config()
    c.reward.judge = "llm"
    _expect(c, "reward.judge")
    c.reward.judge_model = "smollm2"
    validate_config(c, num_devices=1)


def test_unknown_variant():
    with pytest.raises(ConfigError, match="variant"):
        smoke.get_config("variant=search_r3")
    c = tiny_config()
    c.variant = "search_r3"
    _expect(c, "variant")


def test_switch_overridden_against_the_variant():
    c = tiny_config()  # search_r2: refiner on
    c.refiner.enabled = False
    _expect(c, "refiner.enabled")


def test_real_data_needs_a_real_tokenizer_and_corpus():
    c = tiny_config()
    c.data.train_files = "/data/nq_hotpotqa/train.parquet"
    _expect(c, "model.tokenizer")
    c.model.tokenizer = "/models/qwen"
    _expect(c, "sft.flawed_fraction")  # flaws, refiner labels and renamed names need the synthetic world
    c.sft.update(dict(flawed_fraction=0.0, refiner_fraction=0.0, stop_early_fraction=0.0, copy_steps=0))
    _expect(c, "reward.judge")
    c.reward.judge = "lexical"
    _expect(c, "retrieval.corpus_path")
    c.retrieval.corpus_path = "/data/wiki-18.jsonl"
    validate_config(c, num_devices=1)


@pytest.mark.slow
def test_real_data_warm_start_batches_are_one_search_demos_of_found_answers(tmp_path):
    """data.train_files + sft.steps: each SFT row is a demo whose answer the training retriever found, the loss on
    the model's two turns only, and the batch a pure function of (seed, step)."""
    from searchr2_jax.models.gguf_import import ensure_smollm2

    corpus = [{"id": str(i), "contents": f'"Title{i} Person{i}"\nPerson{i} is a painter born in town{i}.'}
              for i in range(40)]
    train = [{"id": f"q{i}", "question": f"Which painter was born in town{i}?", "golden_answers": [f"Person{i}"]}
             for i in range(30)]
    train += [{"id": "miss", "question": "Which river is longest?", "golden_answers": ["Nile"]}]  # never found
    for name, rows in (("corpus", corpus), ("train", train)):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    c = tiny_config()
    tok = ensure_smollm2()
    c.model.update(dict(tokenizer=tok, chat=True))
    c.data.update(dict(train_files=str(tmp_path / "train.jsonl"), eval_files=str(tmp_path / "train.jsonl")))
    c.retrieval.update(dict(backend="bm25", corpus_path=str(tmp_path / "corpus.jsonl")))
    c.rollout.update(dict(topk=2, max_obs_tokens=96))
    c.retrieval.k = 2
    c.reward.judge = "lexical"
    c.sft.update(dict(flawed_fraction=0.0, refiner_fraction=0.0, stop_early_fraction=0.0, copy_steps=0,
                      batch_size=8, seq_len=384))
    trainer = Trainer(c, str(tmp_path / "run"), devices=one_device())
    tokens, valid, mask = trainer.sft_batches(0)
    assert tokens.shape == (8, 384) and mask.sum(1).min() > 0 and (mask <= valid).all()
    for row, v, m in zip(tokens, valid, mask):
        text = trainer.tokenizer.decode(row[m > 0].tolist())
        gold = re.search(r"town(\d+)", trainer.tokenizer.decode(row[v].tolist())).group(1)  # the question's
        assert "<search>" in text and "<information>" not in text  # retrieved text is never trained on
        assert re.search(rf"<answer> Person{gold} </answer>", text), text
    again = trainer.sft_batches(0)
    assert all(np.array_equal(a, b) for a, b in zip((tokens, valid, mask), again))
    assert not np.array_equal(trainer.sft_batches(1)[0], tokens)


@pytest.mark.slow  # its own compile of the critic path: ~15 s on 2 CPU cores
def test_ppo_with_a_critic_trains_the_value_head(tmp_path):
    """algo=ppo: values from the value head, GAE over the loss tokens, and a train step that moves the critic."""
    c = tiny_config("sft_steps=0,steps=1")
    c.rl.algo = "ppo"
    c.rollout.temperature = 1.0
    c.train.pack_rows = False  # row r is trajectory r below (rl/packing.py is tested with a critic on its own)
    trainer = Trainer(c, str(tmp_path), devices=one_device())
    assert trainer.model_cfg.value_head
    before = np.asarray(trainer.state.params["value_head"]["w"]).copy()
    batch = next(trainer.iterator)
    trajs, reward, _ = trainer.rollout_and_score(trainer.local_params(), batch, jax.random.key(0))
    reward = np.linspace(-1.0, 1.0, len(trajs)).astype(np.float32)  # distinct rewards: non-zero advantages
    sb, _ = trainer.step_batch(trajs, reward)
    live = np.asarray(sb.loss_mask) > 0
    assert live.any()
    # GAE advantages are whitened over the loss tokens; returns and old values live on loss tokens only.
    adv = np.asarray(sb.advantages)[live]
    assert abs(adv.mean()) < 1e-4 and abs(adv.std(ddof=1) - 1.0) < 1e-3
    assert not np.asarray(sb.returns)[~live].any() and not np.asarray(sb.old_values)[~live].any()
    # gamma = lam = 1: a trajectory's return on each of its tokens is its reward.
    for r, row in enumerate(np.asarray(sb.returns)):
        np.testing.assert_allclose(row[live[r]], reward[r], atol=1e-5)
    state, metrics = trainer.train_step(trainer.state, sb)
    assert math.isfinite(float(metrics["train/loss"])) and "train/vf_loss" in metrics
    assert float(metrics["train/skipped"]) == 0.0
    assert not np.allclose(np.asarray(state.params["value_head"]["w"]), before)
    trainer.ckpt.close()
    trainer.writer.close()


@pytest.mark.slow  # its own compiles, in bfloat16: ~30 s on 2 CPU cores
def test_recomputed_old_logprobs_start_the_ratio_at_one_under_bfloat16(tmp_path):
    """bf16 decoding through the KV cache and the bf16 full forward of training disagree: with
    rl.recompute_old_logprobs ('auto' is on for bf16) pi_old is the training program's, and the ratio starts at 1."""
    c = tiny_config("sft_steps=0,steps=1")
    c.model.dtype = "bfloat16"
    c.rollout.temperature = 1.0
    trainer = Trainer(c, str(tmp_path), devices=one_device())
    assert recompute_old_logprobs(c, trainer.model_cfg)
    batch = next(trainer.iterator)
    trajs, _, _ = trainer.rollout_and_score(trainer.local_params(), batch, jax.random.key(0))
    reward = np.linspace(-1.0, 1.0, len(trajs)).astype(np.float32)
    sb, _ = trainer.step_batch(trajs, reward)
    _, metrics = trainer.train_step(trainer.state, sb)
    assert float(metrics["train/ratio_deviation_at_start"]) > 1e-4  # the sampler's pi_old was off
    assert float(metrics["train/ratio"]) == 1.0 and float(metrics["train/clip_frac"]) == 0.0
    trainer.ckpt.close()
    trainer.writer.close()
