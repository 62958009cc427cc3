"""The closed-loop gate on real Meta-World episodes, run by the rollout pool's worker processes
through PolicyRuntime: an identical candidate passes early, a clearly worse one is rejected early."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from policies import register, train

from lifelong_ros.learning.model import PolicyConfig, PolicyNet
from lifelong_ros.safety.gate import RegressionSuite, SafetyGate
from lifelong_ros.safety.registry import ModelRegistry
from lifelong_ros.sim import metaworld as sim
from lifelong_ros.sim.episodes import stack_episodes
from lifelong_ros.sim.pool import RolloutPool

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Meta-World's scripted experts are chatty

TASKS = ["reach-v3", "reach-wall-v3"]
MAX_STEPS = 100
# The BC stage is made lenient so that the closed loop alone decides what is tested here.
CFG = {
    "latency_budget_ms": 50.0,
    "regression_rel_tol": 1000.0,
    "improvement_margin": 0.0,
    "max_out_of_bounds_rate": 1.0,
    "max_out_of_bounds_rate_perturbed": 1.0,
    "closed_loop_min_success": 0.3,
    "closed_loop_max_pairs": 30,
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    data, suites = [], []
    for head, task in enumerate(TASKS):
        env = sim.MetaWorldSim(task, steps_after_success=5, max_steps=MAX_STEPS)
        eps = sim.collect_demonstrations(task, range(12), sim=env)
        obs, act = stack_episodes(eps[:9])
        data.append((obs, act, head))
        hobs, hact = stack_episodes(eps[9:])
        suites.append(RegressionSuite(task, hobs, hact))
    torch.manual_seed(0)
    model = PolicyNet(PolicyConfig(obs_dim=39, act_dim=4, hidden=(64, 64), num_heads=2))
    model.set_normalizer(np.concatenate([d[0] for d in data]))
    model = train(model, data, steps=800)
    pool = RolloutPool(1, max_steps=MAX_STEPS)
    yield model, suites, pool, tmp_path_factory
    pool.close()


def registry_with(tmp, active_model, candidate_model) -> tuple[ModelRegistry, str]:
    reg = ModelRegistry(tmp)
    v1 = register(reg, active_model, TASKS)
    reg.set_decision(v1, "approved", "bootstrap")
    reg.promote(v1)
    return reg, register(reg, candidate_model, TASKS, parent=v1)


def test_an_identical_candidate_is_approved_after_few_paired_episodes(world):
    model, suites, pool, tmp = world
    reg, v2 = registry_with(tmp.mktemp("same"), model, model.clone())
    rep = SafetyGate(reg, CFG).evaluate(v2, suites, episodes=pool)
    assert rep.decision == "approved", rep.summary()
    c = rep.check("closed_loop[reach-v3]")
    # identical models succeed and fail on the same variations: no discordant pair, early stop
    assert c.value == 0.0 and c.detail["decided_by"] == "sequential" and c.detail["pairs"] < 30
    assert c.detail["active_only"] == c.detail["candidate_only"] == 0
    assert rep.check("closed_loop_success[reach-wall-v3]").passed


def test_a_candidate_that_no_longer_reaches_is_rejected_early(world):
    model, suites, pool, tmp = world
    broken = model.clone()
    with torch.no_grad():  # the reach head outputs no motion at all: the arm never gets there
        broken.head_w[0].zero_()
        broken.head_b[0].zero_()
    reg, v2 = registry_with(tmp.mktemp("worse"), model, broken)
    rep = SafetyGate(reg, CFG).evaluate(v2, suites, episodes=pool)
    assert rep.decision == "rejected" and "closed_loop[reach-v3]" in rep.failed, rep.summary()
    c = rep.check("closed_loop[reach-v3]")
    assert c.detail["candidate_success"] == 0.0 and c.value == c.detail["active_success"] >= 0.2
    assert c.detail["decided_by"] == "sequential" and c.detail["pairs"] < 30
    assert reg.info(v2).state == "rejected"
    assert pool.episodes_cached > 0  # the active model's episodes from the first test were reused


def test_pool_settings_are_checked():
    with pytest.raises(ValueError, match="workers=0"):
        RolloutPool(0)
    with pytest.raises(ValueError, match="max_steps=501"):
        RolloutPool(1, max_steps=501)
