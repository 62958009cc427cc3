"""The embedded simulator: deterministic variations, scripted experts, early episode end."""
import numpy as np
import pytest

from lifelong_ros.sim import ACT_DIM, OBS_DIM, MetaWorldSim, collect_demonstrations, evaluate, stack_episodes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def reach():
    sim = MetaWorldSim("reach-v3", steps_after_success=5, max_steps=200)
    yield sim
    sim.close()


def test_same_seed_same_variation_and_different_seeds_differ(reach):
    a, b, c = reach.reset(7), reach.reset(7), reach.reset(8)
    assert a.shape == (OBS_DIM,) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.abs(a[36:39] - c[36:39]).max() > 1e-3  # the goal (observed) moves between variations


def test_every_seed_resets_even_where_meta_world_would_resample(reach):
    # Meta-World redraws a variation whose goal is too close to the object; a frozen draw would loop forever.
    for seed in range(40):
        assert np.isfinite(reach.reset(seed)).all()


def test_expert_succeeds_and_episode_ends_steps_after_success(reach):
    ep = reach.run_episode(reach.expert(), seed=3)
    assert ep.success
    assert ep.obs.shape[1:] == (OBS_DIM,) and ep.action.shape[1:] == (ACT_DIM,)
    assert len(ep.obs) < 200 and ep.done[-1] and not ep.done[:-1].any()
    assert np.abs(ep.action).max() <= 1.0


def test_a_policy_that_does_nothing_fails_and_runs_to_max_steps(reach):
    ep = reach.run_episode(lambda obs: np.zeros(ACT_DIM, np.float32), seed=3)
    assert not ep.success and len(ep.obs) == 200


def test_collect_and_evaluate_use_the_expert_on_other_tasks():
    eps = collect_demonstrations("button-press-topdown-v3", range(3), max_steps=200)
    assert len(eps) == 3 and all(e.success for e in eps)
    obs, act = stack_episodes(eps)
    assert obs.shape[0] == act.shape[0] == sum(len(e.obs) for e in eps)
    sim = MetaWorldSim("button-press-topdown-v3", 0, 200)
    assert evaluate(sim.expert(), "button-press-topdown-v3", [10, 11], sim=sim) == 1.0


def test_unknown_task_and_bad_limits_are_rejected():
    with pytest.raises(ValueError, match="unknown Meta-World task 'grasp-v9'"):
        MetaWorldSim("grasp-v9")
    with pytest.raises(ValueError, match="max_steps"):
        MetaWorldSim("reach-v3", max_steps=0)
    with pytest.raises(ValueError, match="at least one seed"):
        evaluate(lambda o: o[:4], "reach-v3", [])


def test_non_finite_actions_are_refused_before_they_reach_mujoco(reach):
    reach.reset(0)
    with pytest.raises(ValueError, match="not finite"):
        reach.step(np.array([0.0, np.nan, 0.0, 0.0]))
    obs, _, _, _ = reach.step(np.zeros(ACT_DIM))  # the episode goes on
    assert np.isfinite(obs).all()
