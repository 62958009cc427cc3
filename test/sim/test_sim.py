"""The embedded simulator: deterministic variations, scripted experts, early episode end."""

import numpy as np
import pytest

from lifelong_ros.sim.episodes import stack_episodes
from lifelong_ros.sim.metaworld import ACT_DIM, OBS_DIM, MetaWorldSim, collect_demonstrations, evaluate

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


def test_an_explicit_placement_fixes_object_and_goal():
    sim = MetaWorldSim("pick-place-v3", steps_after_success=0, max_steps=150)
    low, high, goal_dims = sim.placement_space
    assert goal_dims == 3 and low.shape == high.shape == (6,)
    goal = np.array([0.05, 0.85, 0.2])
    for obj in ([-0.08, 0.62, 0.02], [0.07, 0.66, 0.02]):
        vec = np.concatenate([obj, goal])
        obs = sim.reset(0, vec)
        np.testing.assert_allclose(obs[4:7], obj, atol=1e-3)  # object position
        np.testing.assert_allclose(obs[-3:], goal, atol=1e-6)  # goal position
        assert sim.run_episode(sim.expert(), 0, placement=vec).success
    # Seeded variations still work (and still differ from the fixed placement) afterwards.
    assert not np.allclose(sim.reset(7)[-3:], goal)


def test_placements_outside_the_space_or_against_the_task_rules_are_refused():
    sim = MetaWorldSim("pick-place-v3")
    with pytest.raises(ValueError, match="outside pick-place-v3's placement space"):
        sim.reset(0, np.array([0.0, 0.65, 0.02, 0.0, 0.85]))  # wrong length
    with pytest.raises(ValueError, match="outside"):
        sim.reset(0, np.array([0.5, 0.65, 0.02, 0.0, 0.85, 0.1]))
    # pick-place wants the object >= 0.15 from the goal in x-y; Meta-World would redraw forever.
    with pytest.raises(ValueError, match="breaks pick-place-v3's placement rules"):
        sim.reset(0, np.array([0.0, 0.7, 0.02, 0.0, 0.8, 0.1]))
    obs = sim.reset(0, np.array([0.0, 0.6, 0.02, 0.0, 0.9, 0.1]))  # the sim is still usable
    np.testing.assert_allclose(obs[-3:], [0.0, 0.9, 0.1], atol=1e-6)
