"""The G1 humanoid simulator: deterministic variations, experts that succeed, policies that do not.

A smoke test (one model compile, a few short episodes per task); the full measurement over 50
held-out variations per task is bench/humanoid_experts.py.
"""

import numpy as np
import pytest

from lifelong_ros.sim.humanoid import tasks as T
from lifelong_ros.sim.humanoid.env import (
    ACT_DIM,
    OBS_DIM,
    G1Sim,
    available_tasks,
    collect_demonstrations,
    observation_scale,
)
from lifelong_ros.sim.humanoid.scene import COMMANDED_JOINTS

TASKS = ["g1-reach", "g1-lift", "g1-place", "g1-push", "g1-button"]


@pytest.fixture(scope="module")
def sims():
    out = {t: G1Sim(t, steps_after_success=3) for t in TASKS}
    yield out
    for sim in out.values():
        sim.close()


def test_five_tasks_and_the_observation_and_action_sizes():
    assert available_tasks() == sorted(TASKS)
    assert ACT_DIM == len(COMMANDED_JOINTS) == 17 and OBS_DIM == 50


def test_same_seed_same_variation_and_seeds_vary_object_type_pose_and_target(sims):
    sim = sims["g1-place"]
    a, b = sim.reset(5), sim.reset(5)
    assert a.shape == (OBS_DIM,) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    variations = [T.sample(sim.spec, s) for s in range(30)]
    assert {v.kind for v in variations} == {"cube", "cylinder", "block"}
    assert np.std([v.x for v in variations]) > 0.02 and np.std([v.yaw for v in variations]) > 0.1
    assert np.std([v.target[1] for v in variations]) > 0.03
    assert {v.kind for v in (T.sample(sims["g1-button"].spec, s) for s in range(20))} == {"round", "square"}
    obs = sim.reset(7)
    var = sim.variation
    np.testing.assert_allclose(obs[34:36], [var.x, var.y], atol=2e-3)  # the object where the variation put it
    np.testing.assert_allclose(obs[41:44], var.target, atol=1e-6)
    np.testing.assert_allclose(obs[44:47], T.half_extents(var.kind), atol=1e-6)
    np.testing.assert_allclose(obs[47:50], sim.grasp_point(), atol=1e-6)  # the hand, from the measured joints
    obs, *_ = sim.step(np.full(17, 0.3))  # the hand moves with the arm
    assert np.linalg.norm(obs[47:50] - sim.grasp_point()) < 1e-6 and np.linalg.norm(obs[47:50] - obs[0]) > 0


@pytest.mark.parametrize("task", TASKS)
def test_the_scripted_expert_succeeds_and_the_episode_ends_soon_after(sims, task):
    sim = sims[task]
    expert = sim.expert()
    for seed in (11, 12):
        ep = sim.run_episode(expert, seed)
        assert ep.success, f"{task} expert failed on seed {seed} ({sim.variation})"
        assert len(ep.obs) < sim.max_steps and ep.done[-1] and not ep.done[:-1].any()
        assert ep.obs.shape[1:] == (OBS_DIM,) and ep.action.shape[1:] == (ACT_DIM,)
        assert np.abs(ep.action).max() <= 1.0 and np.isfinite(ep.obs).all()


def test_every_tasks_observations_lie_within_a_few_stds_of_the_robots_observation_scale(sims):
    mean, std = observation_scale()
    assert mean.shape == std.shape == (OBS_DIM,) and (std > 0).all()
    z = np.concatenate([np.abs(sims[t].run_episode(sims[t].expert(), 13).obs - mean) / std for t in TASKS])
    velocities = slice(ACT_DIM, 2 * ACT_DIM)
    assert np.delete(z, velocities, axis=1).max() < 3.0  # joint positions, object pose, target, sizes
    assert np.percentile(z[:, velocities], 95) < 3.0  # the hand's fingers snap shut faster: a few spikes
    # the scale is the robot's, not one task's: the first task's own statistics put place's far outside
    reach = sims["g1-reach"].run_episode(sims["g1-reach"].expert(), 13).obs
    place = sims["g1-place"].run_episode(sims["g1-place"].expert(), 13).obs
    own = np.abs(place - reach.mean(0)) / np.maximum(reach.std(0), 0.05)
    assert np.delete(own, velocities, axis=1).max() > 10.0


@pytest.mark.parametrize("task", TASKS)
def test_a_policy_that_holds_still_fails(task):
    sim = G1Sim(task, steps_after_success=0, max_steps=60)
    sim.reset(11)
    hold = sim.ix.to_action(sim.joint_positions())
    for policy in (lambda _o: hold, lambda _o: np.zeros(ACT_DIM, np.float32)):
        ep = sim.run_episode(policy, 11)
        assert not ep.success and len(ep.obs) == 60


def test_joint_position_targets_are_tracked_and_the_action_mapping_round_trips(sims):
    sim = sims["g1-reach"]
    sim.reset(0)
    q = np.clip(sim.joint_positions(), sim.ix.low, sim.ix.high)  # settling leaves fingers 1e-6 past their stops
    np.testing.assert_allclose(sim.ix.to_target(sim.ix.to_action(q)), q, atol=1e-6)
    action = sim.ix.to_action(q)
    action[0] = 0.5  # waist yaw: 0.5 of the way from the middle of its command range to the top
    action[3] = -0.5  # shoulder pitch
    for _ in range(40):
        sim.step(action)
    reached = sim.joint_positions()
    np.testing.assert_allclose(reached[[0, 3]], sim.ix.to_target(action)[[0, 3]], atol=0.03)


def test_an_explicit_placement_sets_the_variation(sims):
    sim = sims["g1-lift"]
    var = T.Variation("block", 0.33, -0.2, 0.3, (0.33, -0.2, T.TABLE_TOP_Z))
    obs = sim.reset(0, var)
    np.testing.assert_allclose(obs[34:36], [0.33, -0.2], atol=2e-3)
    assert sim.run_episode(sim.expert(), 0, placement=var).success


def test_bad_tasks_actions_and_placements_are_refused_with_one_clear_line(sims):
    with pytest.raises(ValueError, match="unknown G1 task 'g1-fly'; expected one of"):
        G1Sim("g1-fly")
    with pytest.raises(ValueError, match="max_steps"):
        G1Sim("g1-reach", max_steps=0)
    with pytest.raises(RuntimeError, match="before reset"):
        G1Sim("g1-reach").step(np.zeros(ACT_DIM))
    sim = sims["g1-reach"]
    sim.reset(0)
    with pytest.raises(ValueError, match="expected 17 finite values"):
        sim.step(np.zeros(4))
    bad = np.zeros(ACT_DIM)
    bad[2] = np.nan
    with pytest.raises(ValueError, match="not finite|expected 17 finite"):
        sim.step(bad)
    assert np.isfinite(sim.step(np.zeros(ACT_DIM))[0]).all()  # the episode goes on
    with pytest.raises(ValueError, match="outside the table area"):
        sim.reset(0, T.Variation("cube", 0.9, -0.2, 0.0, (0.9, -0.2, 0.9)))
    with pytest.raises(ValueError, match="is not one of g1-reach's"):
        sim.reset(0, T.Variation("round", 0.33, -0.2, 0.0, (0.33, -0.2, 0.9)))


def test_collect_demonstrations_keeps_successful_expert_episodes():
    eps = collect_demonstrations("g1-button", range(3), steps_after_success=2)
    assert len(eps) == 3 and all(e.success for e in eps)
    assert {e.task.seed for e in eps} == {0, 1, 2} and eps[0].task.env_name == "g1-button"


def test_the_backends_name_both_robots_with_their_sizes():
    from lifelong_ros.sim import metaworld
    from lifelong_ros.sim.backends import backend

    g1, mw = backend("g1"), backend("metaworld")
    assert (g1.obs_dim, g1.act_dim) == (OBS_DIM, ACT_DIM)
    assert (mw.obs_dim, mw.act_dim) == (metaworld.OBS_DIM, metaworld.ACT_DIM)
    assert set(g1.default_tasks) == set(g1.available_tasks())
    assert set(mw.default_tasks) <= set(mw.available_tasks())
    sim = g1.make("g1-button", steps_after_success=2)
    assert sim.reset(3).shape == (g1.obs_dim,)
    eps = g1.collect_demonstrations("g1-button", [3], sim=sim)
    assert len(eps) == 1 and eps[0].action.shape[1] == g1.act_dim
    with pytest.raises(ValueError, match="unknown robot 'h1'; expected one of"):
        backend("h1")
