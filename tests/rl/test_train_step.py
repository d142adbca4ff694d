"""The jitted train step: micro-batch invariance, mesh equivalence, skipped non-finite updates, SFT."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from searchr2_jax.config import default_loss_config, default_optim_config
from searchr2_jax.models import decoder, sharding
from searchr2_jax.models.config import DecoderConfig
from searchr2_jax.rl import state as state_lib
from searchr2_jax.rl.losses import LOSS_AGGS
from searchr2_jax.rl.train_step import MetaRows, StepBatch, make_sft_step, make_train_step, sequence_logprobs

CFG = DecoderConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                    intermediate_size=64, rope_theta=10000.0, tie_word_embeddings=True)


def _batch(n=8, t=24, m=8, q=16, seed=0) -> StepBatch:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(t // 2, t + 1, size=n)
    valid = np.arange(t)[None] < lengths[:, None]
    mask = valid & (np.arange(t)[None] >= 6)
    mask[:, 10:13] = False  # a retrieved span inside the response
    mvalid = np.broadcast_to(np.arange(q)[None] < 12, (m, q))
    mmask = np.zeros((m, q), bool)
    mmask[:, 11] = True
    adv = rng.normal(size=(n, 1)).astype(np.float32)
    madv = rng.normal(size=(m, 1)).astype(np.float32)
    rows = MetaRows(tokens=rng.integers(1, CFG.vocab_size, size=(m, q)).astype(np.int32), valid=mvalid,
                    mask=mmask.astype(np.float32), old_logprobs=(-4.0 * mmask).astype(np.float32),
                    advantages=(madv * mmask).astype(np.float32))
    return StepBatch(
        tokens=rng.integers(1, CFG.vocab_size, size=(n, t)).astype(np.int32), valid=valid, packing=_unpacked(n, t),
        loss_mask=mask.astype(np.float32), meta_mask=np.zeros((n, t), np.float32),
        old_logprobs=(-3.0 + 0.1 * rng.normal(size=(n, t))).astype(np.float32) * mask,
        advantages=(adv * mask).astype(np.float32), returns=np.zeros((n, t), np.float32),
        old_values=np.zeros((n, t), np.float32), meta_rows=rows)


def _unpacked(n, t) -> decoder.Packing:
    zeros = np.zeros((n, t), np.int32)
    return decoder.Packing(np.broadcast_to(np.arange(t, dtype=np.int32), (n, t)), zeros, zeros, zeros)


def _meta(b: StepBatch, **kw) -> StepBatch:
    return b._replace(meta_rows=b.meta_rows._replace(**kw))


def _state(kl=0.001):
    params = decoder.init_params(CFG, jax.random.key(0), std=0.1)
    optim = default_optim_config()
    optim.update(dict(learning_rate=1e-3, warmup_ratio=0.0))
    opt = state_lib.make_optimizer(optim, 10)
    return state_lib.init_state(params, opt, jax.random.key(1), with_reference=kl > 0), opt


def _loss_cfg(kl=0.001):
    c = default_loss_config()
    c.kl_coef = kl
    return c


@pytest.mark.slow
@pytest.mark.parametrize("kl", [0.0, 0.001])
def test_loss_and_update_do_not_depend_on_micro_batches(kl):
    batch = _batch()
    results = []
    for n_micro in (1, 2, 4):
        state, opt = _state(kl)
        step = jax.jit(make_train_step(CFG, _loss_cfg(kl), opt, num_micro=n_micro))
        new, metrics = step(state, batch)
        results.append((float(metrics["train/loss"]), new.params))
    for loss, params in results[1:]:
        np.testing.assert_allclose(loss, results[0][0], rtol=1e-5, atol=1e-7)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(results[0][1])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)  # Adam step ~ lr = 1e-3


@pytest.mark.slow
def test_meta_actions_contribute_only_when_masked_in():
    state, opt = _state()
    step = jax.jit(make_train_step(CFG, _loss_cfg(), opt))
    batch = _batch()
    _, with_meta = step(state, batch)
    state, _ = _state()
    _, without = step(state, _meta(batch, mask=np.zeros_like(batch.meta_rows.mask)))
    assert float(with_meta["train/meta_tokens"]) == 8 and float(without["train/meta_tokens"]) == 0
    assert float(with_meta["train/loss"]) != float(without["train/loss"])


@pytest.mark.slow
@pytest.mark.parametrize("n_micro,temperature", [(1, 1.0), (2, 1.0), (2, 0.7)])
def test_on_policy_ratio_metrics_are_one_for_trajectory_and_meta_tokens(n_micro, temperature):
    """Old log-probs taken from the same params: every ratio is 1, so each ratio metric (a mean over its own
    tokens, trajectory and meta-action counted apart) must be 1 whatever the token counts and micro-batching.
    The Actor samples at `temperature`; the refiner scores its candidates at temperature 1."""
    state, opt = _state()
    batch = _batch()
    lp = np.asarray(sequence_logprobs(CFG, state.params, batch.tokens, batch.valid, temperature)[0]) * batch.loss_mask
    r = batch.meta_rows
    mlp = np.asarray(sequence_logprobs(CFG, state.params, r.tokens, r.valid)[0]) * r.mask
    batch = _meta(batch._replace(old_logprobs=lp.astype(np.float32)), old_logprobs=mlp.astype(np.float32))
    step = make_train_step(CFG, _loss_cfg(), opt, num_micro=n_micro, temperature=temperature)
    _, metrics = jax.jit(step)(state, batch)
    np.testing.assert_allclose(float(metrics["train/ratio"]), 1.0, atol=1e-5)
    np.testing.assert_allclose(float(metrics["train/meta_ratio"]), 1.0, atol=1e-5)
    assert float(metrics["train/clip_frac"]) == 0.0


def _on_policy_batch(params, seed=1) -> StepBatch:
    """Old log-probs from `params` (ratio 1, so with kl_coef 0 each token's loss is -A), per-token advantages, rows
    of different lengths, a trajectory row and padding meta rows without loss tokens, a two-token meta-action."""
    b = _batch()
    rng = np.random.default_rng(seed)
    mask = b.loss_mask.copy()
    mask[3] = 0.0
    mmask = b.meta_rows.mask.copy()
    mmask[0, 10] = 1.0
    mmask[5:] = 0.0
    lp = np.asarray(sequence_logprobs(CFG, params, b.tokens, b.valid)[0]) * mask
    mlp = np.asarray(sequence_logprobs(CFG, params, b.meta_rows.tokens, b.meta_rows.valid)[0]) * mmask
    b = b._replace(loss_mask=mask, old_logprobs=lp.astype(np.float32),
                   advantages=(rng.normal(size=mask.shape) * mask).astype(np.float32))
    return _meta(b, mask=mmask, old_logprobs=mlp.astype(np.float32),
                 advantages=(rng.normal(size=mmask.shape) * mmask).astype(np.float32))


def _hand_loss(b: StepBatch, mode: str, w: float) -> float:
    """The loss of the module doc of `losses`, with per-token loss -A and meta rows weighted by w."""

    def part(mask, adv):
        loss, rows = -adv * mask, mask.sum(1) > 0
        if mode == "seq-mean-token-mean":
            total = sum(loss[r].sum() / mask[r].sum() for r in np.flatnonzero(rows))
        else:
            total = loss.sum()
        denom = {"token-mean": mask.sum(), "seq-mean-token-mean": rows.sum(), "seq-mean-token-sum": rows.sum(),
                 "seq-mean-token-sum-norm": rows.sum() * mask.shape[1]}[mode]
        return total, denom

    (s, d), (ms, md) = part(b.loss_mask, b.advantages), part(b.meta_rows.mask, b.meta_rows.advantages)
    return (s + w * ms) / (d + w * md)


def _sgd_state():
    """Plain SGD with lr 1: the update is minus the gradient."""
    opt = optax.sgd(1.0)
    return state_lib.init_state(decoder.init_params(CFG, jax.random.key(0), std=0.1), opt, jax.random.key(1),
                                with_reference=False), opt


@pytest.mark.slow  # two compiles per mode
@pytest.mark.parametrize("mode", LOSS_AGGS)
def test_loss_agg_and_meta_weight_follow_the_formula_whatever_the_micro_batches(mode):
    """meta_weight 1 under token-mean is the plain token mean over trajectory and meta tokens together."""
    state, opt = _sgd_state()
    batch = _on_policy_batch(state.params)
    expected = {w: _hand_loss(batch, mode, w) for w in (1.0, 3.0)}
    assert abs(expected[1.0] - expected[3.0]) > 1e-3  # the meta rows' weight shows
    for n_micro, w in ((1, 1.0), (2, 3.0)):
        cfg = _loss_cfg(0.0)
        cfg.update(dict(loss_agg=mode, meta_weight=w))
        _, metrics = jax.jit(make_train_step(CFG, cfg, opt, num_micro=n_micro))(state, batch)
        np.testing.assert_allclose(float(metrics["train/loss"]), expected[w], rtol=1e-5, atol=1e-7,
                                   err_msg=f"{mode}, {n_micro} micro-batches, meta_weight {w}")


def test_loss_aggs_differ_on_the_test_batch():
    params = decoder.init_params(CFG, jax.random.key(0), std=0.1)
    batch = _on_policy_batch(params)
    values = [_hand_loss(batch, mode, 1.0) for mode in LOSS_AGGS]
    assert min(abs(a - b) for i, a in enumerate(values) for b in values[i + 1:]) > 1e-3


@pytest.mark.slow
def test_meta_weight_zero_gives_the_gradient_without_meta_rows():
    state, opt = _sgd_state()
    batch = _on_policy_batch(state.params)
    updates = []
    for w, b in ((0.0, batch), (1.0, _meta(batch, mask=np.zeros_like(batch.meta_rows.mask)))):
        cfg = _loss_cfg(0.0)
        cfg.update(dict(loss_agg="seq-mean-token-mean", meta_weight=w))
        new, _ = jax.jit(make_train_step(CFG, cfg, opt))(state, b)
        updates.append(jax.tree.leaves(jax.tree.map(lambda a, o: np.asarray(a - o), new.params, state.params)))
    for a, b in zip(*updates):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_meta_weight_must_be_non_negative():
    cfg = _loss_cfg(0.0)
    cfg.meta_weight = -1.0
    with pytest.raises(ValueError, match="meta_weight"):
        make_train_step(CFG, cfg, optax.sgd(1.0))


@pytest.mark.slow
def test_non_finite_loss_skips_the_update():
    state, opt = _state()
    before = jax.tree.map(np.asarray, state.params)
    batch = _batch()
    adv = batch.advantages.copy()
    adv[0, 8] = np.nan
    new, metrics = jax.jit(make_train_step(CFG, _loss_cfg(), opt))(state, batch._replace(advantages=adv))
    assert float(metrics["train/skipped"]) == 1.0
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert int(new.step) == 1


@pytest.mark.slow
def test_sharded_step_equals_single_device():
    batch = _batch()
    state, opt = _state()
    step = make_train_step(CFG, _loss_cfg(), opt, num_micro=2)
    ref_state, ref_metrics = jax.jit(step)(state, batch)
    mesh = sharding.make_mesh((2, 2, 2))
    state, _ = _state()
    shardings = sharding.tree_shardings(state, mesh)
    rows = sharding.batch_sharding(mesh, 2)
    sharded = jax.jit(step, in_shardings=(shardings, rows), out_shardings=(shardings, None))
    new, metrics = sharded(jax.device_put(state, shardings), batch)
    assert sharding.is_sharded(new.params["layers"]["wq"])
    np.testing.assert_allclose(float(metrics["train/loss"]), float(ref_metrics["train/loss"]), rtol=1e-5)
    # Adam's first step moves each weight by about lr (1e-3), and by less where a gradient is near eps, where the
    # sharded reduction order shows most: 2.2e-6 on an AMD EPYC (2e-6 passed elsewhere). 1% of a step still catches
    # a sharding error that turns a gradient's direction, which moves weights by whole steps (a pure rescale of the
    # gradients leaves Adam's first step as it is, and no tolerance here would see it).
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(ref_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_sequence_logprobs_align_with_tokens():
    params = decoder.init_params(CFG, jax.random.key(0), std=0.1)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, size=(2, 10)), jnp.int32)
    lp, _ = sequence_logprobs(CFG, params, tokens, jnp.ones((2, 10), bool))
    logits, _ = decoder.apply(CFG, params, tokens)
    expected = jax.nn.log_softmax(logits, -1)[:, 4][jnp.arange(2), tokens[:, 5]]
    np.testing.assert_allclose(np.asarray(lp[:, 5]), np.asarray(expected), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(lp[:, 0]), 0.0)


@pytest.mark.slow
def test_sft_step_learns_a_repeated_batch():
    state, opt = _state(kl=0.0)
    sft = jax.jit(make_sft_step(CFG, opt, num_micro=2))
    b = _batch()
    nll = []
    for _ in range(20):
        state, metrics = sft(state, b.tokens, b.valid, b.loss_mask)
        nll.append(float(metrics["sft/nll"]))
    assert nll[-1] < 0.6 * nll[0]  # random tokens: memorizing them takes a while; the drop is what matters


@pytest.mark.slow
def test_chunked_logprobs_entropy_and_train_step_equal_the_unchunked_ones():
    """Chunked LM-head blocks (a tail that does not divide included) give the log-probs, entropy, loss and gradients
    of one block over the whole sequence."""
    from searchr2_jax.rl.logprobs import entropy_from_logits

    params = decoder.init_params(CFG, jax.random.key(0), std=0.1)
    b = _batch()
    one, chunked = CFG.replace(logits_chunk=1024), CFG.replace(logits_chunk=5)
    lp, _, ent = sequence_logprobs(chunked, params, b.tokens, b.valid, 0.8, entropy=True)
    logits, _ = decoder.apply(CFG, params, b.tokens, mask=b.valid)
    full = jax.nn.log_softmax(logits[:, :-1] / 0.8, -1)
    expected = jnp.take_along_axis(full, b.tokens[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(lp[:, 1:]), np.asarray(expected), atol=1e-5)
    np.testing.assert_allclose(np.asarray(ent[:, 1:]), np.asarray(entropy_from_logits(logits[:, :-1], 0.8)),
                               atol=1e-5)
    cfg = default_loss_config()
    cfg.entropy_coef = 0.01
    opt = optax.sgd(1.0)
    grads = {}
    for name, c in (("one", one), ("chunked", chunked)):
        state = state_lib.init_state(params, opt, jax.random.key(1), with_reference=True)
        new, metrics = jax.jit(make_train_step(c, cfg, opt, num_micro=2, temperature=0.8))(state, b)
        grads[name] = (jax.tree.map(lambda a, p: np.asarray(p - a), new.params, state.params), metrics)
    for a, c in zip(jax.tree.leaves(grads["one"][0]), jax.tree.leaves(grads["chunked"][0])):
        np.testing.assert_allclose(c, a, atol=1e-6)
    for k in ("train/loss", "train/entropy", "train/kl"):
        np.testing.assert_allclose(float(grads["chunked"][1][k]), float(grads["one"][1][k]), rtol=1e-5)
    assert float(grads["one"][1]["train/entropy"]) > 0


@pytest.mark.slow
def test_recompute_old_takes_pi_old_from_the_step_itself():
    """recompute_old: the ratio is exactly 1 (pi_old = this program's log-probs), and the gap to the batch's
    sampler log-probs is logged; without it the batch's pi_old is used."""
    b = _batch()
    opt = optax.sgd(1.0)
    state = state_lib.init_state(decoder.init_params(CFG, jax.random.key(0), std=0.1), opt, jax.random.key(1),
                                 with_reference=True)
    _, on = jax.jit(make_train_step(CFG, default_loss_config(), opt, num_micro=2, recompute_old=True))(state, b)
    _, off = jax.jit(make_train_step(CFG, default_loss_config(), opt, num_micro=2))(state, b)
    assert float(on["train/ratio"]) == 1.0 and float(on["train/clip_frac"]) == 0.0
    assert float(off["train/ratio"]) != 1.0
    np.testing.assert_allclose(float(on["train/ratio_deviation_at_start"]),
                               float(off["train/ratio_deviation_at_start"]), rtol=1e-6)
    assert float(on["train/ratio_deviation_at_start"]) > 0.1  # the batch's pi_old is random here


def _refined_trajectories(multi_token: bool) -> list:
    """Four trajectories whose meta-actions cover every layout: accepted over the final response, a revision whose
    draft shares part of the response, two revisions (the last regeneration undecided), and a prompt sharing
    nothing with the row (as a table12 prompt). `multi_token`: every integer is two tokens."""
    from searchr2_jax.rollout import types as T

    rng = np.random.default_rng(5)
    tok = lambda n: [int(v) for v in rng.integers(1, CFG.vocab_size, size=n)]  # noqa: E731
    follow = tok(5)

    def meta(prompt):
        action = tok(2 if multi_token else 1)
        lps = [float(v) for v in -1.0 - rng.random(len(action))]
        return T.MetaAction(prompt, action, choice=1, logprob=sum(lps), scores=[0.0, 0.0], action_logprobs=lps)

    def traj(i, prompt, response, metas):
        mask = np.ones(len(response), np.int8)
        mask[3:6] = 0  # a retrieved span
        lp = (-2.0 + 0.3 * rng.normal(size=len(response))).astype(np.float32) * mask
        return T.Trajectory(i, T.Job(prompt_ids=prompt, group_id=i // 2), np.asarray(response, np.int32), lp, mask,
                            [], T.ANSWERED, meta_actions=metas)

    p0, r0, p1, r1, p2, r2, p3, r3 = tok(4), tok(10), tok(4), tok(12), tok(3), tok(9), tok(5), tok(8)
    return [traj(0, p0, r0, [meta(p0 + r0 + follow)]),
            traj(1, p1, r1, [meta(p1 + r1[:6] + tok(5) + follow), meta(p1 + r1 + follow)]),
            traj(2, p2, r2, [meta(p2 + r2[:2] + tok(7) + follow), meta(p2 + r2[:5] + tok(3) + follow)]),
            traj(3, p3, r3, [meta(tok(14))])]


def _to_step_batch(b, adv) -> StepBatch:
    """`Trainer.step_batch` for GRPO with given per-trajectory advantages."""
    t = b.tokens.shape[1]
    loss_mask, meta_mask = b.loss_mask.astype(np.float32), b.meta_mask.astype(np.float32)
    rows = None
    if b.meta_rows is not None:
        r = b.meta_rows
        rmask = r.mask.astype(np.float32)
        rows = MetaRows(r.tokens, np.arange(r.tokens.shape[1])[None] < r.lengths[:, None], rmask, r.logprobs,
                        (np.where(r.index >= 0, adv[np.maximum(r.index, 0)], 0.0)[:, None] * rmask).astype(np.float32))
    zeros = np.zeros(b.tokens.shape, np.float32)
    return StepBatch(b.tokens, np.arange(t)[None] < b.lengths[:, None],
                     decoder.Packing(b.positions, b.segment_ids, b.shared_start, b.shared_end), loss_mask, meta_mask,
                     b.logprobs, (adv[:, None] * ((loss_mask + meta_mask) > 0)).astype(np.float32), zeros, zeros, rows)


def _packed_against_unpacked(mode: str, multi_token: bool):
    from searchr2_jax.rollout import types as T

    trajs = _refined_trajectories(multi_token)
    adv = np.asarray([0.7, -1.2, 0.4, 1.5], np.float32)
    packed = T.to_batch(trajs, pack_meta=True)
    t = packed.tokens.shape[1]
    # Standalone rows padded to the packed rows' length, so that seq-mean-token-sum-norm's T is the same.
    unpacked = T.to_batch(trajs, seq_len=t, meta_len=t, num_meta=8)
    assert packed.tokens.size < unpacked.tokens.size + unpacked.meta_rows.tokens.size
    cfg = _loss_cfg(0.01)
    cfg.update(dict(loss_agg=mode, entropy_coef=0.01, meta_weight=2.0))
    opt = optax.sgd(1.0)
    out = []
    for b in (packed, unpacked):
        state = state_lib.init_state(decoder.init_params(CFG, jax.random.key(0), std=0.1), opt, jax.random.key(1),
                                     with_reference=True)
        state = state._replace(ref_params=decoder.init_params(CFG, jax.random.key(2), std=0.1))
        new, metrics = jax.jit(make_train_step(CFG, cfg, opt, num_micro=2, temperature=0.7))(
            state, _to_step_batch(b, adv))
        out.append((jax.tree.map(lambda a, o: np.asarray(a - o), new.params, state.params), metrics))
    (g_packed, m_packed), (g_unpacked, m_unpacked) = out
    for k in ("train/loss", "train/meta_ratio", "train/meta_kl", "train/meta_entropy", "train/meta_pg_loss",
              "train/entropy", "train/meta_tokens"):
        np.testing.assert_allclose(float(m_packed[k]), float(m_unpacked[k]), rtol=1e-5, atol=1e-7, err_msg=k)
    assert float(m_packed["train/meta_tokens"]) == 6 * (2 if multi_token else 1)
    for a, c in zip(jax.tree.leaves(g_packed), jax.tree.leaves(g_unpacked)):
        np.testing.assert_allclose(a, c, atol=1e-5)
    assert max(np.abs(a).max() for a in jax.tree.leaves(g_packed)) > 1e-3  # a real gradient was compared


@pytest.mark.slow
@pytest.mark.parametrize("multi_token", [False, True])
def test_packed_meta_actions_give_the_loss_and_gradient_of_standalone_rows(multi_token):
    """Meta-actions packed into their trajectories' rows (a branch per decision, reading its shared prefix) train
    exactly as standalone refiner sequences do: loss, metrics and gradient, KL and entropy terms and an Actor
    temperature included, for one-token and two-token integers."""
    _packed_against_unpacked("seq-mean-token-mean", multi_token)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [m for m in LOSS_AGGS if m != "seq-mean-token-mean"])
def test_packed_meta_actions_follow_every_loss_agg(mode):
    _packed_against_unpacked(mode, multi_token=True)
