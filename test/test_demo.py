"""The standalone loop end to end on a tiny budget: store, learner process, gate, hot-swap, results."""

import json

import numpy as np
import pytest

from lifelong_ros.cli.main import main as cli_main
from lifelong_ros.demo import DemoSettings, run_demo, settings_from_config
from lifelong_ros.experience.store import ExperienceStore
from lifelong_ros.safety.registry import ModelRegistry

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_demo_loop_learns_two_tasks_serves_while_learning_and_writes_results(tmp_path):
    settings = DemoSettings(
        tasks=["reach-v3", "button-press-topdown-v3"],
        demos_per_task=6,
        heldout_demos_per_task=2,
        eval_episodes=2,
        steps=150,
        max_steps=120,
        options={"hidden": [64, 64], "batch_size": 128},
        gate={"latency_budget_ms": 50.0},  # a loaded CI machine; the latency check is tested in test/safety
        gate_rollouts=0,  # the gate without a simulator (held-out BC only); the closed loop is tested below
        retries=0,
    )
    results = run_demo(settings, tmp_path, progress=False)

    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["tasks"] == settings.tasks
    m = np.array([[np.nan if v is None else v for v in row] for row in on_disk["success_matrix"]])
    assert m.shape == (2, 2) and np.isnan(m[0, 1])  # a task is evaluated only once it has been learned
    assert (tmp_path / "success_matrix.png").stat().st_size > 1000

    first, second = on_disk["updates"]
    assert (first["version"], second["version"]) == ("v0001", "v0002")
    assert second["parent"] == "v0001"
    assert first["decision"] == "approved" and np.isfinite(m[0, 0])
    # the policy kept serving in closed loop while the learner trained the second task
    assert second["served_steps_during_learning"] > 0
    assert second["timings_s"]["time_to_verdict"] >= second["timings_s"]["learning"] > 0

    # replay kept the first task: the gate approved the second version and the runtime hot-swapped to it
    assert second["decision"] == "approved", second["failed_checks"]
    assert ModelRegistry(tmp_path / "data" / "registry").active() == "v0002"
    assert np.isfinite(m[1]).all() and second["timings_s"]["swap_ms"] is not None
    assert second["timings_s"]["time_to_adapt"] == second["timings_s"]["time_to_verdict"]

    store = ExperienceStore(results["paths"]["store"], readonly=True)
    try:
        sources = set(store.task_arrays("reach-v3", split="all").source.tolist())
        assert {"demonstration", "policy"} <= sources
        assert len(store.task_arrays("button-press-topdown-v3", split="heldout")) > 0
    finally:
        store.close()


def test_config_file_drives_the_demo_settings(tmp_path):
    cfg = tmp_path / "params.yaml"
    cfg.write_text(
        "/**:\n  ros__parameters:\n    tasks: [reach-v3]\n"
        "demo:\n  ros__parameters:\n    demos_per_task: 7\n    method: naive\n    gate:\n      latency_budget_ms: 2.0\n"
    )
    s = settings_from_config(str(cfg))
    assert (s.demos_per_task, s.method, s.gate) == (7, "naive", {"latency_budget_ms": 2.0})
    assert s.tasks == ["reach-v3"]
    quick = DemoSettings.quick(s)  # caps the budget, never raises it
    assert quick.demos_per_task == 7 and quick.steps < s.steps and quick.eval_episodes < s.eval_episodes


def test_cli_lists_the_demo_and_store_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "import-bag", "export-bag", "store", "registry", "gate", "offline-learn"):
        assert command in out


def test_demo_refuses_a_misspelled_option_before_recording_anything(tmp_path):
    settings = DemoSettings(tasks=["reach-v3"], options={"ewc_lamda": 10.0})
    with pytest.raises(ValueError, match="ewc_lamda.*ewc_lambda"):
        run_demo(settings, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_demo_closed_loop_gate_retries_a_rejected_adaptation_and_shows_every_attempt(tmp_path, capsys):
    """A success floor no tiny budget reaches: the closed-loop gate rejects, the adaptation is retried
    once with a stronger recipe, and both attempts with their closed-loop evidence are reported."""
    settings = DemoSettings(
        tasks=["reach-v3"],
        demos_per_task=4,
        heldout_demos_per_task=1,
        eval_episodes=2,
        steps=60,
        max_steps=60,
        options={"hidden": [32, 32], "batch_size": 64},
        gate={"latency_budget_ms": 50.0, "closed_loop_min_success": 0.99},
        gate_rollouts=12,
        gate_workers=1,
        retries=1,
    )
    results = run_demo(settings, tmp_path, progress=False)
    (update,) = results["updates"]
    assert update["gate"] == "closed-loop" and update["decision"] == "rejected"
    first, second = update["attempts"]
    assert (first["attempt"], second["attempt"]) == (1, 2)
    assert second["steps"] > first["steps"] and second["seed"] != first["seed"]
    assert second["options"]["replay_ratio"] == "balanced" and second["options"]["ewc_lambda"] > 100
    for a in (first, second):
        assert a["decision"] == "rejected" and "closed_loop_success[reach-v3]" in a["failed_checks"]
        cl = a["closed_loop"]["reach-v3"]
        assert not cl["passed"] and 1 <= cl["pairs"] <= 12 and cl["threshold"] == 0.99
    assert ModelRegistry(tmp_path / "data" / "registry").active() is None  # nothing unsafe was promoted
    out = capsys.readouterr().out
    assert "attempt 1:" in out and "attempt 2:" in out and "FAIL reach-v3 (new)" in out


def test_console_lines_say_why_the_closed_loop_stage_could_not_run():
    """A closed-loop stage that errored (simulator crashed) is a failed check carrying the error; the
    demo's console line names it instead of crashing on the missing episode counts."""
    from types import SimpleNamespace

    from lifelong_ros.demo import _closed_loop_lines
    from lifelong_ros.safety.gate import CheckResult

    failed = CheckResult(
        "closed_loop", False, "RuntimeError: simulator crashed", "runs without error", detail={"error": True}
    )
    ok = CheckResult(
        "closed_loop",
        True,
        0.0,
        0.1,
        task="reach-v3",
        detail={"candidate_success": 1.0, "active_success": 1.0, "pairs": 13, "decided_by": "sequential"},
    )
    lines = _closed_loop_lines(SimpleNamespace(report=SimpleNamespace(checks=[failed, ok])))
    assert lines == [
        "FAIL closed_loop: could not run: RuntimeError: simulator crashed",
        "PASS reach-v3: success 1.00 vs active 1.00 on 13 paired episodes (sequential)",
    ]
