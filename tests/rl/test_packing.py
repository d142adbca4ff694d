"""Several trajectories per row (rl/packing.py): the same loss, metrics and gradient on fewer rows."""

import jax
import numpy as np
import optax
import pytest

from searchr2_jax.config import default_loss_config
from searchr2_jax.models import decoder
from searchr2_jax.rl import packing
from searchr2_jax.rl import state as state_lib
from searchr2_jax.rl.train_step import make_train_step
from searchr2_jax.rollout import types as T

from .test_train_step import CFG, _refined_trajectories, _to_step_batch


def _critic_batch(seed=0):
    """The refined trajectories (packed meta-actions included) as a PPO batch: per-token advantages, returns and
    old values on the loss tokens."""
    rng = np.random.default_rng(seed)
    b = _to_step_batch(T.to_batch(_refined_trajectories(multi_token=True), pack_meta=True),
                       np.asarray([0.7, -1.2, 0.4, 1.5], np.float32))
    live = np.asarray(b.loss_mask) > 0
    noise = lambda: (rng.normal(size=live.shape) * live).astype(np.float32)  # noqa: E731
    return b._replace(advantages=np.where(live, noise(), b.advantages).astype(np.float32), returns=noise(),
                      old_values=noise())


@pytest.mark.slow
@pytest.mark.parametrize("loss_agg", ["seq-mean-token-mean", "token-mean"])
def test_packed_rows_give_the_loss_metrics_and_gradient_of_one_trajectory_per_row(loss_agg):
    batch = _critic_batch()
    where = packing.plan_rows(batch, 2)
    packed = packing.pack_rows(batch, where)
    assert where.rows == 2 == packed.tokens.shape[0] < batch.tokens.shape[0]  # four trajectories fit in two rows
    assert np.asarray(packed.valid).sum() == np.asarray(batch.valid).sum()
    for f in ("loss_mask", "meta_mask", "advantages", "returns", "old_values", "old_logprobs"):
        np.testing.assert_allclose(np.asarray(getattr(packed, f)).sum(), np.asarray(getattr(batch, f)).sum(),
                                   rtol=1e-6, err_msg=f)
    cfg = default_loss_config()
    cfg.update(dict(loss_agg=loss_agg, kl_coef=0.01, entropy_coef=0.01))
    opt = optax.sgd(1.0)
    params = decoder.init_params(CFG.replace(value_head=True), jax.random.key(0), std=0.1)
    out = []
    for b in (batch, packed):
        state = state_lib.init_state(params, opt, jax.random.key(1), with_reference=True)
        step = make_train_step(CFG.replace(value_head=True), cfg, opt, num_micro=2, use_critic=True, temperature=0.7)
        new, metrics = jax.jit(step)(state, b)
        out.append((jax.tree.map(lambda a, o: np.asarray(a - o), new.params, state.params), metrics))
    (g0, m0), (g1, m1) = out
    for k in m0:
        np.testing.assert_allclose(float(m1[k]), float(m0[k]), rtol=1e-5, atol=1e-6, err_msg=k)
    for a, c in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(c, a, atol=1e-5)


def test_plan_is_first_fit_decreasing_and_bad_inputs_are_refused():
    dest, offset, used = packing.plan(np.asarray([3, 6, 2, 5, 0]), 8)
    assert used == 2  # 6 + 2 and 5 + 3
    np.testing.assert_array_equal(dest[:4], [1, 0, 0, 1])
    np.testing.assert_array_equal(offset[:4], [5, 0, 6, 0])
    with pytest.raises(ValueError, match="does not fit"):
        packing.plan(np.asarray([9]), 8)
    batch = _critic_batch()
    with pytest.raises(ValueError, match="rows"):
        packing.pack_rows(batch, packing.plan_rows(batch, 2), 1)
    assert packing.pack_rows(batch, packing.plan_rows(batch, 2), 4).tokens.shape[0] == 4  # padding rows
    left = batch._replace(valid=np.asarray(batch.valid)[:, ::-1])
    with pytest.raises(ValueError, match="right padding"):
        packing.plan_rows(left, 4)
