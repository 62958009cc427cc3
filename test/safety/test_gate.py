"""SafetyGate: every check can fail on the data it names, decisions are persisted and readable."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from policies import base_and_candidate, export, new_model, register, suites, train, train_data

from lifelong_ros.safety.gate import (
    GateCancelled,
    GateConfig,
    GateReport,
    RegressionSuite,
    SafetyGate,
    ShadowRunner,
    at_risk,
    wilson_interval,
)
from lifelong_ros.safety.registry import ModelRegistry, RegistryError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A base policy on reach+push (active) and a genuine improvement adding pick with replay."""
    reg = ModelRegistry(tmp_path_factory.mktemp("gate-fixture"))
    base, _, cand, tasks = base_and_candidate(reg)
    return base, cand, tasks


@pytest.fixture
def setup(tmp_path, trained):
    """A fresh registry with the base approved and active, the improvement registered as a candidate."""
    base, cand, tasks = trained
    reg = ModelRegistry(tmp_path / "reg")
    v1 = register(reg, base, tasks[:2], method="joint")
    reg.set_decision(v1, "approved", "bootstrap")
    reg.promote(v1)
    v2 = register(reg, cand, tasks, parent=v1, method="replay")
    return reg, v1, v2, tasks


def test_genuine_improvement_is_approved_and_the_report_is_persisted(setup):
    reg, v1, v2, tasks = setup
    rep = SafetyGate(reg).evaluate(v2, suites(tasks))
    assert rep.decision == "approved", rep.summary()
    names = [c.name for c in rep.checks]
    for n in (
        "integrity",
        "signature",
        "task_heads",
        "finite",
        "action_bounds",
        "action_bounds_perturbed",
        "regression[reach]",
        "regression[push]",
        "improvement[pick]",
        "latency_p99",
    ):
        assert n in names
    imp = rep.check("improvement[pick]")
    assert imp.value <= imp.threshold and imp.detail["baseline"].startswith("mean-action predictor")
    reg_check = rep.check("regression[reach]")
    assert reg_check.detail["baseline"] == f"active {v1}" and reg_check.detail["active"] > 0
    assert reg.info(v2).state == "approved"
    saved = reg.reports(v2)
    assert saved[-1]["kind"] == "gate" and saved[-1]["decision"] == "approved"
    again = GateReport.from_dict(saved[-1])
    assert [c.name for c in again.checks] == names and again.persisted
    assert {d["task"] for d in saved[-1]["data"]} == set(tasks)
    assert all(len(d["sha256"]) == 64 and d["samples"] == 240 for d in saved[-1]["data"])
    with pytest.raises(RegistryError, match="already decided"):
        SafetyGate(reg).evaluate(v2, suites(tasks))


def test_dry_run_reports_without_recording(setup):
    reg, _v1, v2, tasks = setup
    rep = SafetyGate(reg).evaluate(v2, suites(tasks), decide=False)
    assert rep.decision == "approved" and not rep.persisted and "dry run" in rep.summary()
    assert reg.info(v2).state == "candidate" and reg.reports(v2) == []


def test_regression_tolerance_is_relative_plus_absolute(setup):
    reg, _v1, v2, tasks = setup
    strict = SafetyGate(reg, {"regression_rel_tol": 0.0, "regression_abs_tol": 0.0}).evaluate(
        v2, suites(tasks), decide=False
    )
    loose = SafetyGate(reg).evaluate(v2, suites(tasks), decide=False)
    c = strict.check("regression[reach]")
    assert c.threshold == pytest.approx(c.detail["active"])
    lc = loose.check("regression[reach]")
    assert lc.threshold == pytest.approx(lc.detail["active"] * 1.3 + 0.005)
    # the same numbers, only the tolerance differs
    assert c.value == lc.value


def test_improvement_margin_is_applied_to_the_best_baseline(setup):
    reg, v1, v2, tasks = setup
    s = suites(tasks)
    # evaluated with "reach" as the target, which the active model already does well
    rep = SafetyGate(reg, {"improvement_margin": 0.5}).evaluate(v2, s, target_task="reach", decide=False)
    c = rep.check("improvement[reach]")
    assert c.detail["baseline"] == f"active {v1}"
    assert c.threshold == pytest.approx(c.detail["active"] * 0.5)
    assert not c.passed and "improvement[reach]" in rep.failed
    assert "regression[pick]" in [x.name for x in rep.checks]  # pick is now guarded against a constant


def test_missing_or_tiny_suites_fail_closed(setup):
    reg, _v1, v2, tasks = setup
    s = suites(tasks)
    rep = SafetyGate(reg).evaluate(v2, {t: s[t] for t in ("reach", "pick")}, decide=False)
    c = rep.check("regression[push]")
    assert not c.passed and "no held-out data" in c.detail["reason"]
    relaxed = SafetyGate(reg, {"require_all_tasks": False}).evaluate(
        v2, {t: s[t] for t in ("reach", "pick")}, decide=False
    )
    assert relaxed.decision == "approved"
    tiny = dict(s)
    tiny["pick"] = RegressionSuite("pick", s["pick"].obs[:10], s["pick"].action[:10])
    rep = SafetyGate(reg).evaluate(v2, tiny, decide=False)
    assert rep.failed == ["improvement[pick]"] and rep.check("improvement[pick]").value == 10


def test_head_order_change_is_rejected(tmp_path, trained):
    base, cand, tasks = trained
    reg = ModelRegistry(tmp_path)
    v1 = register(reg, base, tasks[:2])
    reg.set_decision(v1, "approved")
    reg.promote(v1)
    swapped = ["push", "reach", "pick"]  # same network, heads relabelled: reach would run push's head
    v2 = reg.register(export(cand, swapped), tasks=swapped, method="bc", target_task="pick")
    rep = SafetyGate(reg).evaluate(v2, suites(tasks))
    assert rep.decision == "rejected" and "task_heads" in rep.failed
    assert reg.info(v2).state == "rejected"
    assert "task_heads" in json.loads((reg.info(v2).path / "meta.json").read_text())["decision_reason"]


def test_signature_change_is_rejected(tmp_path, trained):
    """A graph exported with a fixed batch of 2 has another signature (and cannot serve single obs)."""
    import io

    base, cand, tasks = trained
    reg = ModelRegistry(tmp_path)
    v1 = register(reg, base, tasks[:2])
    reg.set_decision(v1, "approved")
    reg.promote(v1)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            cand.eval(),
            (torch.zeros(2, cand.config.obs_dim), torch.zeros(2, dtype=torch.int64)),
            buf,
            input_names=["obs", "task_id"],
            output_names=["action"],
            opset_version=17,
            dynamo=False,
        )
    v2 = reg.register(buf.getvalue(), tasks=tasks, method="bc")
    rep = SafetyGate(reg).evaluate(v2, suites(tasks))
    assert rep.decision == "rejected" and "signature" in rep.failed
    assert rep.check("signature").detail["active"]["inputs"][0][2] == ["batch", "12"]


def test_latency_over_budget_is_rejected(setup):
    reg, _v1, v2, tasks = setup
    rep = SafetyGate(reg, {"latency_budget_ms": 1e-6, "latency_samples": 50, "latency_rounds": 1}).evaluate(
        v2, suites(tasks)
    )
    assert rep.failed == ["latency_p99"]
    c = rep.check("latency_p99")
    assert c.value > c.threshold and c.detail["active_p99_ms"] > 0
    assert reg.info(v2).state == "rejected"


def test_out_of_bounds_outputs_are_rejected_relative_to_the_active_model(setup, trained):
    reg, v1, v2, tasks = setup
    _, cand, _ = trained
    loud = cand.clone()
    with torch.no_grad():  # same policy, actions three times as large
        loud.head_w.mul_(3.0)
        loud.head_b.mul_(3.0)
    v3 = register(reg, loud, tasks, parent=v1)
    rep = SafetyGate(reg).evaluate(v3, suites(tasks))
    c = rep.check("action_bounds")
    assert not c.passed and c.value > 0.1 and c.detail["active_rate"] < 0.01
    assert c.threshold == pytest.approx(c.detail["active_rate"] + 0.02)
    assert "action_bounds_perturbed" in rep.failed
    # with bounds so tight that the active model violates them as often, the allowance follows it
    tight = SafetyGate(reg, {"action_low": -0.3, "action_high": 0.3, "bounds_slack": 0.0}).evaluate(
        v2, suites(tasks), decide=False
    )
    t = tight.check("action_bounds")
    assert t.detail["active_rate"] > 0.3 and t.threshold == pytest.approx(t.detail["active_rate"] + 0.02)


def test_first_version_is_judged_against_a_constant_predictor(tmp_path, trained):
    base, _cand, tasks = trained
    reg = ModelRegistry(tmp_path)
    good = register(reg, base, tasks[:2], target="push")
    untrained = register(reg, new_model(2, seed=7), tasks[:2], target="push")
    gate = SafetyGate(reg)
    rep = gate.evaluate(good, suites(tasks[:2]))
    assert rep.decision == "approved" and rep.active is None
    assert rep.check("regression[reach]").detail["baseline"].startswith("mean-action predictor")
    bad = gate.evaluate(untrained, suites(tasks[:2]))
    assert bad.decision == "rejected" and "improvement[push]" in bad.failed


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(20, 20, 0.95)
    assert lo == pytest.approx(0.8389, abs=1e-4) and hi == 1.0
    lo, hi = wilson_interval(0, 10, 0.95)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(5, 10, 0.95)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    with pytest.raises(ValueError, match="successes=11, n=10"):
        wilson_interval(11, 10)


def test_shadow_stage_defers_the_decision_until_live_steps_are_seen(setup):
    reg, _v1, v2, tasks = setup
    s = suites(tasks)
    gate = SafetyGate(reg, {"shadow_steps": 90, "latency_budget_ms": 100.0})  # about deferral, not timing
    rep = gate.evaluate(v2, s)
    assert rep.decision == "pending_shadow" and reg.info(v2).state == "candidate"
    runner = gate.shadow_runner(v2)
    live = [(s[t].obs[i], t) for i in range(30) for t in tasks]
    assert runner.run(iter(live)) == 90 and runner.done
    final = gate.conclude_shadow(v2, runner)
    assert final.decision == "approved", final.summary()
    div = final.check("shadow_divergence")
    assert set(div.detail["per_task"]) == {"reach", "push"} and div.detail["target_excluded"] == "pick"
    assert reg.info(v2).state == "approved" and reg.reports(v2)[-1]["kind"] == "gate"


def test_shadow_divergence_on_earlier_tasks_rejects(setup, trained):
    reg, v1, _v2, tasks = setup
    base, _, _ = trained
    drifted = base.clone()
    drifted.ensure_heads(3)
    drifted = train(drifted, train_data(tasks, poison={"push": "negate"}), steps=150)
    v3 = register(reg, drifted, tasks, parent=v1)
    s = suites(tasks)
    gate = SafetyGate(reg, {"shadow_steps": 60, "latency_budget_ms": 100.0})
    live = iter([(s[t].obs[i], t) for i in range(30) for t in ("reach", "push")])
    runner = gate.shadow_runner(v3)
    runner.run(live)
    checks = {c.name: c for c in runner.checks()}
    assert not checks["shadow_divergence"].passed
    assert checks["shadow_divergence"].detail["per_task"]["push"]["mean"] > 0.5
    too_few = ShadowRunner(reg.read_onnx(v3), reg.read_onnx(v1), tasks, tasks[:2], GateConfig(shadow_steps=10))
    too_few.step(s["reach"].obs[0], "reach")
    assert not {c.name: c for c in too_few.checks()}["shadow_steps"].passed
    with pytest.raises(ValueError, match="'drawer'"):
        too_few.step(s["reach"].obs[0], "drawer")


def test_gate_config_validation_names_the_offending_value(tmp_path):
    cfg = GateConfig()
    assert GateConfig.from_dict({}) == cfg
    with pytest.raises(ValueError, match=r"unknown gate config key\(s\) \['margin'\]"):
        GateConfig.from_dict({"margin": 0.1})
    with pytest.raises(ValueError, match="improvement_margin=1.5"):
        GateConfig.from_dict({"improvement_margin": 1.5})
    with pytest.raises(ValueError, match="latency_samples=5"):
        GateConfig(latency_samples=5)
    with pytest.raises(ValueError, match="must be < action_high"):
        GateConfig(action_low=1.0, action_high=-1.0)
    path = tmp_path / "safety.yaml"
    path.write_text(
        "safety_monitor:\n  ros__parameters:\n    gate:\n      improvement_margin: 0.1\n"
        "      latency_budget_ms: 2\n      action_low: [-1, -1, -1, 0]\n"
    )
    loaded = GateConfig.from_yaml(path)
    assert loaded.improvement_margin == 0.1 and loaded.latency_budget_ms == 2.0 and loaded.action_low == [-1, -1, -1, 0]
    flat = GateConfig.from_dict({"gate.shadow_steps": 5, "gate.regression_rel_tol": 0.1, "learner.steps": 3})
    assert flat.shadow_steps == 5 and flat.regression_rel_tol == 0.1


def test_suites_reject_malformed_arrays():
    with pytest.raises(ValueError, match=r"\(10, 3\) and \(9, 4\)"):
        RegressionSuite("reach", np.zeros((10, 3)), np.zeros((9, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        RegressionSuite("reach", np.full((2, 3), np.nan), np.zeros((2, 4)))


def test_the_gate_never_imports_torch():
    code = (
        "import sys; import lifelong_ros.safety.gate, lifelong_ros.safety.registry, lifelong_ros.safety.watchdog, "
        "lifelong_ros.cli.registry; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def _store_with_heldout(path, tasks):
    """A real ExperienceStore holding the held-out suites as demonstrations, plus policy-sourced noise."""
    from lifelong_ros.experience.store import ExperienceStore

    s = suites(tasks)
    store = ExperienceStore(path, obs_dim=12, act_dim=4)
    for t in tasks:
        for e in np.unique(s[t].episodes):
            m = s[t].episodes == e
            store.append_episode(t, f"demo-{e}", s[t].obs[m], s[t].action[m], source="demonstration", split="heldout")
        rng = np.random.default_rng(0)  # what the policy did: no ground truth, must not enter the suites
        store.append_episode(
            t, "policy-0", s[t].obs[:40], rng.uniform(-1, 1, (40, 4)), source="policy", split="heldout"
        )
    store.close()
    return s


def test_suites_from_store_use_heldout_demonstrations_only(tmp_path):
    from lifelong_ros.experience.store import ExperienceStore
    from lifelong_ros.safety.gate import suites_from_store

    tasks = ["reach", "push"]
    ref = _store_with_heldout(tmp_path / "exp.sqlite3", tasks)
    store = ExperienceStore(tmp_path / "exp.sqlite3", readonly=True)
    try:
        got = suites_from_store(store, [*tasks, "drawer"])
    finally:
        store.close()
    assert list(got) == tasks  # unknown task left out -> the gate reports it missing
    for t in tasks:
        order = np.lexsort(ref[t].obs.T)
        mine = np.lexsort(got[t].obs.T)
        np.testing.assert_array_equal(got[t].obs[mine], ref[t].obs[order])
        np.testing.assert_array_equal(got[t].action[mine], ref[t].action[order])
        assert len(np.unique(got[t].episodes)) == 6


def test_gate_cli_gates_a_candidate_with_the_stores_suites(tmp_path, trained, capsys):
    from lifelong_ros.cli import main as cli_module

    base, cand, tasks = trained
    data = tmp_path / "data"
    _store_with_heldout(data / "experience.sqlite3", tasks)
    reg = ModelRegistry(data / "registry")
    v1 = register(reg, base, tasks[:2])
    reg.set_decision(v1, "approved")
    reg.promote(v1)
    v2 = register(reg, cand, tasks, parent=v1)
    assert cli_module.main(["gate", v2, "--data-dir", str(data), "--dry-run"]) == 0
    assert "APPROVED [dry run" in capsys.readouterr().out and reg.info(v2).state == "candidate"
    assert cli_module.main(["gate", v2, "--data-dir", str(data), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["decision"] == "approved" and {d["task"] for d in out["data"]} == set(tasks)
    assert reg.info(v2).state == "approved"
    assert cli_module.main(["gate", v2, "--data-dir", str(data)]) == 2
    assert "already decided" in capsys.readouterr().err
    bad = register(reg, new_model(3, seed=3), tasks, parent=v1)
    assert cli_module.main(["gate", bad, "--data-dir", str(data)]) == 1
    assert "REJECTED" in capsys.readouterr().out and reg.info(bad).state == "rejected"


# The closed-loop tests are about the episodes, not timing: a loaded machine must not fail latency.
NOT_TIMING = {"latency_budget_ms": 100.0}


class ScriptedRunner:
    """An EpisodeRunner whose episodes succeed with a fixed probability per (role, task), drawn per
    seed so the same seed gives the same outcome; records every job it was given."""

    workers = 2

    def __init__(self, success: dict[tuple[str, str], float], fail_with: Exception | None = None):
        self.success, self.fail_with = success, fail_with
        self.jobs: list[tuple[tuple[str, ...], str, int]] = []
        self.cancelled = 0

    def submit(self, models, task, seed):
        from concurrent.futures import Future

        self.jobs.append((tuple(sorted(models)), task, seed))
        f: Future = Future()
        if self.fail_with is not None:
            f.set_exception(self.fail_with)
            return f
        u = np.random.default_rng(seed).random()  # the variation's difficulty, shared by both models
        f.set_result({role: bool(u < self.success[(role, task)]) for role in models})
        return f

    def cancel(self, future):
        self.cancelled += 1
        return future.cancel()


def test_closed_loop_pairs_candidate_and_active_on_the_same_seeds_and_stops_early(setup):
    reg, _v1, v2, tasks = setup
    runner = ScriptedRunner(
        {("candidate", "reach"): 1.0, ("active", "reach"): 1.0, ("candidate", "push"): 1.0, ("active", "push"): 1.0}
        | {("candidate", "pick"): 1.0}
    )
    rep = SafetyGate(reg, {"closed_loop_max_pairs": 50, **NOT_TIMING}).evaluate(
        v2, suites(tasks), episodes=runner, decide=False
    )
    assert rep.decision == "approved", rep.summary()
    for task in ("reach", "push"):
        c = rep.check(f"closed_loop[{task}]")
        assert c.passed and c.detail["decided_by"] == "sequential" and c.detail["pairs"] < 50
        assert c.detail["active_success"] == 1.0
        seeds = [s for roles, t, s in runner.jobs if t == task]
        assert seeds == list(range(100_000, 100_000 + len(seeds)))  # held-out seeds, in order
        assert all(roles == ("active", "candidate") for roles, t, _ in runner.jobs if t == task)
    target = rep.check("closed_loop_success[pick]")  # no active head: candidate against the floor
    assert target.passed and all(roles == ("candidate",) for roles, t, _ in runner.jobs if t == "pick")


def test_closed_loop_rejects_a_regression_on_one_earlier_task(setup):
    reg, _v1, v2, tasks = setup
    success = {("candidate", t): 1.0 for t in tasks} | {("active", t): 1.0 for t in tasks}
    success[("candidate", "push")] = 0.6  # push drops by 0.4; reach and pick are fine
    rep = SafetyGate(reg, NOT_TIMING).evaluate(v2, suites(tasks), episodes=ScriptedRunner(success), decide=True)
    assert rep.decision == "rejected" and rep.failed == ["closed_loop[push]"], rep.summary()
    c = rep.check("closed_loop[push]")
    assert c.value >= 0.2 and c.detail["decided_by"] == "sequential" and c.detail["active_only"] > 0
    assert reg.info(v2).state == "rejected"


def test_closed_loop_target_must_reach_the_floor(setup):
    reg, _v1, v2, tasks = setup
    success = {(r, t): 1.0 for r in ("candidate", "active") for t in tasks} | {("candidate", "pick"): 0.3}
    rep = SafetyGate(reg, NOT_TIMING).evaluate(v2, suites(tasks), episodes=ScriptedRunner(success), decide=False)
    assert rep.failed == ["closed_loop_success[pick]"] and rep.check("closed_loop_success[pick]").value < 0.8


def test_a_hard_offline_finding_rejects_alone_and_skips_the_closed_loop(setup):
    """Latency (like integrity, signature, non-finite outputs) is never left to the closed loop."""
    reg, _v1, v2, tasks = setup
    runner = ScriptedRunner({(r, t): 1.0 for r in ("candidate", "active") for t in tasks})
    rep = SafetyGate(reg, {"latency_budget_ms": 1e-6}).evaluate(v2, suites(tasks), episodes=runner, decide=False)
    assert rep.decision == "rejected" and rep.failed == ["latency_p99"] and runner.jobs == []
    assert not any(c.kind.startswith("closed_loop") for c in rep.checks) and rep.deferred == []


def noisy_head(model, head: int, scale: float):
    """``model`` with Gaussian noise (``scale`` x the heads' weight std) on one task's head only."""
    m = model.clone()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        m.head_w[head].add_(torch.randn(m.head_w[head].shape, generator=g) * scale * m.head_w.std())
    return m


def test_with_a_simulator_a_mild_bc_regression_is_left_to_the_closed_loop(setup, trained):
    """Held-out BC error over its threshold, but not grossly (10x here): without a simulator it
    rejects; with one the closed loop decides, approving or rejecting, and the report says so."""
    reg, v1, _v2, tasks = setup
    mild = register(reg, noisy_head(trained[1], 1, 1.0), tasks, parent=v1)
    offline = SafetyGate(reg, NOT_TIMING).evaluate(mild, suites(tasks), decide=False)
    c = offline.check("regression[push]")
    assert offline.decision == "rejected" and offline.failed == ["regression[push]"], offline.summary()
    assert offline.deferred == [] and c.threshold < c.value < 50 * c.threshold
    fine = ScriptedRunner({(r, t): 1.0 for r in ("candidate", "active") for t in tasks})
    rep = SafetyGate(reg, NOT_TIMING).evaluate(mild, suites(tasks), episodes=fine, decide=False)
    assert rep.decision == "approved" and rep.deferred == ["regression[push]"], rep.summary()
    d = rep.check("regression[push]")
    assert d.passed and d.deferred and d.value == pytest.approx(c.value)
    assert d.detail["rejects_alone_above"] == pytest.approx(50 * d.threshold)
    assert rep.check("closed_loop[push]").passed and any(t == "push" for _, t, _ in fine.jobs)
    assert "left to the closed loop: regression[push]" in rep.reason() and "DEFER regression[push]" in rep.summary()
    assert GateReport.from_dict(rep.to_dict()).deferred == ["regression[push]"]
    worse = {(r, t): 1.0 for r in ("candidate", "active") for t in tasks} | {("candidate", "push"): 0.6}
    rep = SafetyGate(reg, NOT_TIMING).evaluate(mild, suites(tasks), episodes=ScriptedRunner(worse), decide=True)
    assert rep.decision == "rejected" and rep.failed == ["closed_loop[push]"], rep.summary()
    assert rep.deferred == ["regression[push]"] and reg.info(mild).state == "rejected"


def test_with_a_simulator_a_gross_bc_regression_still_rejects_without_episodes(setup, trained):
    reg, v1, _v2, tasks = setup
    gross = register(reg, noisy_head(trained[1], 1, 5.0), tasks, parent=v1)
    runner = ScriptedRunner({(r, t): 1.0 for r in ("candidate", "active") for t in tasks})
    rep = SafetyGate(reg, NOT_TIMING).evaluate(gross, suites(tasks), episodes=runner, decide=False)
    c = rep.check("regression[push]")
    assert rep.decision == "rejected" and "regression[push]" in rep.failed and runner.jobs == []
    assert c.value > c.detail["rejects_alone_above"] == pytest.approx(50 * c.threshold)
    # the factor is what separates the two: raised, the same finding goes to the closed loop
    lenient = SafetyGate(reg, NOT_TIMING | {"offline_reject_factor": 1e4}).evaluate(
        gross, suites(tasks), episodes=runner, decide=False
    )
    assert "regression[push]" in lenient.deferred and runner.jobs != []


def test_a_broken_episode_runner_fails_closed(setup):
    reg, _v1, v2, tasks = setup
    runner = ScriptedRunner({}, fail_with=RuntimeError("simulator crashed"))
    rep = SafetyGate(reg, NOT_TIMING).evaluate(v2, suites(tasks), episodes=runner)
    assert rep.decision == "rejected" and rep.failed == ["closed_loop"]
    assert "simulator crashed" in rep.check("closed_loop").value


@pytest.mark.parametrize("stop_after_jobs", [0, 7], ids=["before-any-stage", "mid-closed-loop"])
def test_a_stopped_evaluation_records_nothing_and_can_run_again(setup, stop_after_jobs):
    """should_stop (a cancelled Gate goal) ends the evaluation at its next stop point: GateCancelled,
    no verdict, no report, the version still a candidate, no episode submitted after the stop."""
    reg, _v1, v2, tasks = setup
    runner = ScriptedRunner({(r, t): 0.9 for r in ("candidate", "active") for t in tasks})
    stopped_at: list[int] = []

    def should_stop() -> bool:
        if len(runner.jobs) >= stop_after_jobs and not stopped_at:
            stopped_at.append(len(runner.jobs))
        return bool(stopped_at)

    with pytest.raises(GateCancelled, match=f"{v2} stopped before"):
        SafetyGate(reg, {"closed_loop_max_pairs": 50, **NOT_TIMING}).evaluate(
            v2, suites(tasks), episodes=runner, should_stop=should_stop
        )
    assert len(runner.jobs) <= stopped_at[0] + runner.workers + 1  # at most the episodes already in flight
    assert reg.info(v2).decision == "candidate" and reg.reports(v2) == []
    rep = SafetyGate(reg, {"closed_loop_max_pairs": 50, **NOT_TIMING}).evaluate(v2, suites(tasks), episodes=runner)
    assert rep.decision in ("approved", "rejected") and reg.info(v2).decision == rep.decision


def test_closed_loop_max_tasks_pairs_only_the_earlier_tasks_most_at_risk(setup):
    """With more earlier tasks than closed_loop_max_tasks, the ones whose held-out BC error rose most
    get paired episodes, the report names the others, and a regression on a picked task rejects."""
    reg, _v1, v2, tasks = setup
    fine = {(r, t): 1.0 for r in ("candidate", "active") for t in tasks}
    cfg = {"closed_loop_max_tasks": 1, **NOT_TIMING}
    runner = ScriptedRunner(fine)
    rep = SafetyGate(reg, cfg).evaluate(v2, suites(tasks), episodes=runner, decide=False)
    ratio = {
        t: rep.check(f"regression[{t}]").detail["candidate"] / rep.check(f"regression[{t}]").detail["active"]
        for t in ("reach", "push")
    }
    worst = max(ratio, key=ratio.__getitem__)
    other = ({"reach", "push"} - {worst}).pop()
    picked = rep.check("closed_loop_tasks")
    assert picked.passed and picked.detail["closed_loop"] == [worst] and picked.detail["offline_only"] == [other]
    assert {t for _, t, _ in runner.jobs} == {worst, "pick"}  # no episode of the offline-only task
    assert rep.decision == "approved", rep.summary()
    broken = SafetyGate(reg, cfg).evaluate(
        v2, suites(tasks), episodes=ScriptedRunner(fine | {("candidate", worst): 0.5}), decide=False
    )
    assert broken.failed == [f"closed_loop[{worst}]"], broken.summary()


def test_at_risk_ranks_by_bc_error_ratio_and_treats_missing_evidence_as_risky():
    mse = {"a": {"candidate": 2.0, "active": 1.0}, "b": {"candidate": 1.0, "active": 1.0}, "c": {"candidate": 1.0}}
    assert at_risk(["a", "b", "c"], mse, 1) == {"c"}  # no active error: nothing says it is safe
    assert at_risk(["a", "b", "c"], mse, 2) == {"a", "c"}
    assert at_risk(["a", "b"], {"a": {"candidate": float("inf"), "active": 1.0}}, 1) == {"a"}


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"closed_loop_max_tasks": -1}, "closed_loop_max_tasks=-1"),
        ({"closed_loop_tolerance": 0.3}, "closed_loop_tolerance=0.3"),
        ({"closed_loop_alpha": 0}, "closed_loop_alpha=0"),
        ({"closed_loop_max_pairs": 0}, "closed_loop_max_pairs=0"),
        ({"closed_loop_min_success": 1.5}, "closed_loop_min_success=1.5"),
        ({"offline_reject_factor": 0.5}, "offline_reject_factor=0.5"),
    ],
)
def test_closed_loop_settings_are_checked(cfg, match):
    with pytest.raises(ValueError, match=match):
        GateConfig.from_dict(cfg)


def test_latency_without_an_active_model_is_judged_beside_an_interleaved_reference(tmp_path, trained):
    base, _cand, tasks = trained
    reg = ModelRegistry(tmp_path)
    v1 = register(reg, base, tasks[:2])
    rep = SafetyGate(reg).evaluate(v1, suites(tasks[:2]), decide=False)
    c = rep.check("latency_p99")
    assert c.passed and c.detail["reference_p99_ms"] > 0 and "reference" in c.detail["rule"]
    slow = SafetyGate(reg, {"latency_budget_ms": 1e-6, "latency_samples": 50, "latency_rounds": 1})
    assert "latency_p99" in slow.evaluate(v1, suites(tasks[:2]), decide=False).failed  # the median counts


def test_a_deferred_finding_is_always_judged_in_closed_loop_even_beyond_closed_loop_max_tasks(
    setup, trained, monkeypatch
):
    """closed_loop_max_tasks never leaves a deferred offline finding unjudged: the task with it gets
    paired episodes even when the BC ranking would pick another task for the one closed-loop slot."""
    import lifelong_ros.safety.gate as gate_module

    reg, v1, _v2, tasks = setup
    mild = register(reg, noisy_head(trained[1], 1, 1.0), tasks, parent=v1)  # push: a mild BC regression
    monkeypatch.setattr(gate_module, "at_risk", lambda tasks, mse, k: set(sorted(t for t in tasks if t != "push")[:k]))
    runner = ScriptedRunner({(r, t): 1.0 for r in ("candidate", "active") for t in tasks})
    rep = SafetyGate(reg, NOT_TIMING | {"closed_loop_max_tasks": 1}).evaluate(
        mild, suites(tasks), episodes=runner, decide=False
    )
    assert rep.deferred == ["regression[push]"], rep.summary()
    picked = rep.check("closed_loop_tasks")
    assert picked.detail["closed_loop"] == ["push"] and picked.detail["offline_only"] == ["reach"]
    assert rep.check("closed_loop[push]").passed and {t for _, t, _ in runner.jobs} == {"push", "pick"}
