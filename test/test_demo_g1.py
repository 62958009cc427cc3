"""The standalone loop on the Unitree G1 humanoid (``lifelong-ros demo --robot g1``), end to end on a
tiny budget: the same demo code as Meta-World's, through the simulator interface (sim.backends)."""

import json
import math

import numpy as np
import pytest

from lifelong_ros.config import ConfigError
from lifelong_ros.demo import DemoSettings, run_demo, settings_from_config
from lifelong_ros.experience.store import ExperienceStore
from lifelong_ros.safety.registry import ModelRegistry

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_g1_demo_loop_teaches_gates_hot_swaps_and_evaluates_two_humanoid_tasks(tmp_path, capsys):
    settings = DemoSettings.for_robot(
        "g1",
        tasks=["g1-reach", "g1-button"],
        demos_per_task=20,
        heldout_demos_per_task=3,  # >= 50 held-out samples (GateConfig.min_suite_samples): reach episodes are short
        eval_episodes=2,
        steps=400,
        max_steps=100,
        serve_rate_hz=50.0,
        options={"hidden": [64, 64], "batch_size": 128},
        # a loaded CI machine (the latency check is tested in test/safety); a tiny budget's success floor
        gate={"latency_budget_ms": 50.0, "closed_loop_min_success": 0.25},
        gate_rollouts=4,
        gate_workers=1,
        retries=0,
    )
    results = run_demo(settings, tmp_path, progress=False)

    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["robot"] == "g1" and on_disk["tasks"] == ["g1-reach", "g1-button"]
    m = np.array([[np.nan if v is None else v for v in row] for row in on_disk["success_matrix"]])
    assert m.shape == (2, 2) and np.isnan(m[0, 1])  # a task is evaluated only once it has been learned
    learned = m[np.tril_indices(2)]
    assert np.isfinite(learned).all() and ((learned >= 0) & (learned <= 1)).all()
    assert (tmp_path / "success_matrix.png").stat().st_size > 1000
    assert math.isfinite(on_disk["metrics"]["avg_acc"])

    registry = ModelRegistry(tmp_path / "data" / "registry")
    versions = [a["version"] for u in on_disk["updates"] for a in u["attempts"]]
    assert versions == ["v0001", "v0002"]  # one attempt each (retries=0), every candidate registered
    for update in on_disk["updates"]:
        (attempt,) = update["attempts"]
        assert math.isfinite(attempt["final_loss"]) and attempt["learning_s"] > 0
        info = registry.info(update["version"])
        assert info.tasks[-1] == update["task"]
        if update["decision"] == "approved":
            assert update["gate"] == "closed-loop" and update["failed_checks"] == []
            # the closed-loop stage judged the new task on the humanoid's held-out seeds
            assert attempt["closed_loop"][update["task"]]["passed"]
            assert 1 <= attempt["closed_loop"][update["task"]]["pairs"] <= 4
        else:  # a rejection names what failed, and nothing unsafe was served
            assert update["decision"] == "rejected" and update["failed_checks"], update
            assert registry.active() != update["version"]

    # reach from 20 demonstrations beats the mean-action predictor and the floor: the first version
    # is approved and starts serving in closed loop, and it keeps serving while the learner trains
    first, second = on_disk["updates"]
    assert first["decision"] == "approved", first["failed_checks"]
    assert second["parent"] == "v0001"
    assert second["served_steps_during_learning"] > 0
    assert second["timings_s"]["time_to_verdict"] >= second["timings_s"]["learning"] > 0
    if second["decision"] == "approved":  # hot-swapped while serving
        assert registry.active() == "v0002" and second["timings_s"]["swap_ms"] is not None
    else:
        assert registry.active() == "v0001" and m[1, 1] == 0.0

    store = ExperienceStore(results["paths"]["store"], readonly=True)
    try:
        assert (store.obs_dim, store.act_dim) == (50, 17)  # the humanoid's sizes, not Meta-World's
        sources = set(store.task_arrays("g1-reach", split="all").source.tolist())
        assert {"demonstration", "policy"} <= sources
        assert len(store.task_arrays("g1-button", split="heldout")) > 0
    finally:
        store.close()
    assert "g1-button" in capsys.readouterr().out


def test_each_robot_has_its_own_task_sequence_and_block_of_settings(tmp_path):
    cfg = tmp_path / "params.yaml"
    cfg.write_text(
        "/**:\n  ros__parameters:\n    tasks: [reach-v3]\n"
        "demo:\n  ros__parameters:\n    steps: 700\n    gate:\n      latency_budget_ms: 2.0\n"
        "    g1:\n      tasks: [g1-button, g1-reach]\n      steps: 900\n      gate:\n        improvement_margin: 0.1\n"
    )
    mw, g1 = settings_from_config(str(cfg)), settings_from_config(str(cfg), robot="g1")
    assert (mw.robot, mw.tasks, mw.steps) == ("metaworld", ["reach-v3"], 700)
    assert (g1.robot, g1.tasks, g1.steps) == ("g1", ["g1-button", "g1-reach"], 900)
    assert g1.gate == {"latency_budget_ms": 2.0, "improvement_margin": 0.1}  # the block adds to the shared
    # the shipped config: the G1's five tasks; --quick keeps reach and button on a smaller budget
    shipped = settings_from_config(None, robot="g1")
    assert shipped.tasks == ["g1-reach", "g1-lift", "g1-place", "g1-push", "g1-button"]
    quick = DemoSettings.quick(shipped)
    assert quick.tasks == ["g1-reach", "g1-button"] and quick.steps < shipped.steps
    assert DemoSettings.quick(g1).tasks == ["g1-button", "g1-reach"]  # the configured order
    assert DemoSettings.quick(DemoSettings.for_robot("g1", tasks=["g1-lift", "g1-push", "g1-place"])).tasks == [
        "g1-lift",
        "g1-push",
    ]
    # a Meta-World task is not a G1 task, and the message says which robot's tasks were expected
    with pytest.raises(ConfigError, match="unknown G1 task 'reach-v3'"):
        DemoSettings.for_robot("g1", tasks=["reach-v3"]).validate()
    with pytest.raises(ConfigError, match="unknown robot 'h1'"):
        settings_from_config(str(cfg), robot="h1")


def test_the_robot_of_a_versions_tasks_is_found_for_the_gates_rollouts():
    from lifelong_ros.sim.backends import robot_for_tasks

    assert robot_for_tasks(["g1-reach", "g1-button"]) == "g1"
    assert robot_for_tasks(["reach-v3", "drawer-open-v3"]) == "metaworld"
    with pytest.raises(ValueError, match="no simulated robot has all of the tasks"):
        robot_for_tasks(["g1-reach", "reach-v3"])
