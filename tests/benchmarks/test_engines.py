"""The benchmarks' rollout variants on the scripted machine: the re-prefill baseline does the same rollout at a higher
append cost, and forced revisions are drawn per job."""

import jax
import numpy as np
import pytest

from searchr2_jax.benchmarks.engines import ForcedRefiner, ReprefillEngine

from ..rollout.test_rollout import FakeRetriever, engine, jobs


@pytest.mark.slow
def test_the_reprefill_baseline_rolls_out_the_same_trajectories_and_appends_whole_conversations():
    eng, params = engine()
    base = ReprefillEngine(eng.cfg, eng.tokenizer, FakeRetriever(), eng.config)
    prompts = jobs("go", "ask", "go", "bad", "go")
    ours, theirs = eng.run(params, prompts, jax.random.key(0)), base.run(params, prompts, jax.random.key(0))
    assert any(len(t.turns) > 1 for t in ours.trajectories)  # observations were appended
    for a, b in zip(ours.trajectories, theirs.trajectories):
        assert a.status == b.status
        np.testing.assert_array_equal(a.response_ids, b.response_ids)
        np.testing.assert_array_equal(a.loss_mask, b.loss_mask)
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=1e-4, atol=1e-4)
    # every observation re-encodes its prompt and the response before it, on top of the observation itself
    searches = sum(t.action == "search" for traj in ours.trajectories for t in traj.turns)
    extra = theirs.metrics["rollout/append_valid_tokens"] - ours.metrics["rollout/append_valid_tokens"]
    assert searches > 0 and extra >= searches * min(len(j.prompt_ids) for j in prompts)


@pytest.mark.slow
def test_forced_revisions_revise_at_the_rate_and_are_recorded_as_forced():
    eng, params = engine(refiner=True, refiner_choice="0", slots=8)
    eng.refiner = ForcedRefiner(eng.refiner, rate=1.0)
    out = eng.run(params, jobs(*["go"] * 8), jax.random.key(0))
    assert out.metrics["rollout/revision_rate"] == 1.0
    assert all(m.forced for t in out.trajectories for m in t.meta_actions)
    with pytest.raises(ValueError, match="rate"):
        ForcedRefiner(eng.refiner, rate=1.5)


@pytest.mark.slow
def test_forced_revisions_are_drawn_per_job_whatever_the_order_trajectories_end_in():
    cuts = []
    for slots, prompt in ((1, "followup"), (8, "followup"), (3, "table12")):
        eng, params = engine(refiner=True, refiner_choice="0", slots=slots, prompt=prompt)
        eng.refiner = ForcedRefiner(eng.refiner, rate=0.5)
        out = eng.run(params, jobs("go", "ask", "go", "bad", "go", "go", "ask", "go"), jax.random.key(5))
        cuts.append([t.cut_steps for t in out.trajectories])
    assert 0 < sum(map(bool, cuts[0])) < 8
    assert cuts[0] == cuts[1] == cuts[2]
