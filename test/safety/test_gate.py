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
    GateConfig,
    GateReport,
    OnnxPolicy,
    RegressionSuite,
    SafetyGate,
    ShadowRunner,
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


def heldout_rollout_fn(suite_map, tol=0.05):
    """Scores each held-out episode as a success when the policy tracks the expert within ``tol``
    MSE (real onnxruntime inference on the given bytes; the simulator-backed version is the
    integrator's and is exercised by test_gate_runs_closed_loop_rollouts_in_the_simulator)."""
    calls = []

    def fn(onnx: bytes, task: str, n: int) -> int:
        pol = OnnxPolicy(onnx)
        head = json.loads(pol.metadata["tasks"]).index(task)
        s = suite_map[task]
        ids = np.unique(s.episodes)
        k = 0
        for i in range(n):
            m = s.episodes == ids[i % len(ids)]
            k += int(np.mean((pol.predict(s.obs[m], head) - s.action[m]) ** 2) < tol)
        calls.append((task, n, k))
        return k

    fn.calls = calls
    return fn


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


def test_rollouts_use_a_wilson_lower_bound(setup):
    reg, _v1, v2, tasks = setup
    s = suites(tasks)
    fn = heldout_rollout_fn(s)
    rep = SafetyGate(reg, {"rollout_episodes": 6}).evaluate(v2, s, rollout_fn=fn, decide=False)
    for task in tasks:
        c = rep.check(f"rollout[{task}]")
        k = c.detail["successes"]
        assert c.value == pytest.approx(wilson_interval(k, 6)[0])
    assert ("pick", 6) in [(t, n) for t, n, _ in fn.calls]
    assert sum(1 for t, _, _ in fn.calls if t == "pick") == 1  # the active model has no pick head
    # demanding a floor that 6 episodes cannot certify even at 6/6 rejects on the target task
    strict = SafetyGate(reg, {"rollout_episodes": 6, "rollout_min_success": 0.7}).evaluate(
        v2, s, rollout_fn=fn, decide=False
    )
    assert "rollout[pick]" in strict.failed and strict.check("rollout[pick]").value < 0.7


def test_a_broken_rollout_function_fails_closed(setup):
    reg, _v1, v2, tasks = setup

    def broken(onnx, task, n):
        return n + 1  # more successes than episodes

    rep = SafetyGate(reg, {"rollout_episodes": 3}).evaluate(v2, suites(tasks), rollout_fn=broken)
    assert rep.decision == "rejected" and rep.failed == ["rollouts"]
    assert "expected an int in [0, 3]" in rep.check("rollouts").value


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


@pytest.mark.filterwarnings("ignore::UserWarning")  # Meta-World's scripted experts are chatty
def test_gate_runs_closed_loop_rollouts_in_the_simulator(tmp_path):
    """Real Meta-World rollouts through sim.rollout.sim_rollout_fn: a policy that outputs no
    motion never reaches the goal, and the rollout check says so with its Wilson bound."""
    from lifelong_ros.learning.model import PolicyConfig, PolicyNet
    from lifelong_ros.sim import metaworld as sim
    from lifelong_ros.sim.rollout import sim_rollout_fn

    env = sim.MetaWorldSim("reach-v3", steps_after_success=5, max_steps=150)
    eps = sim.collect_demonstrations("reach-v3", range(10), sim=env)
    obs, act = sim.stack_episodes(eps[:7])
    torch.manual_seed(0)
    model = PolicyNet(PolicyConfig(obs_dim=39, act_dim=4, hidden=(64, 64), num_heads=1))
    model.set_normalizer(obs)
    model = train(model, [(obs, act, 0)], steps=300)
    still = model.clone()
    with torch.no_grad():
        still.head_w.zero_()
        still.head_b.zero_()
    reg = ModelRegistry(tmp_path)
    v1 = register(reg, model, ["reach-v3"])
    reg.set_decision(v1, "approved")
    reg.promote(v1)
    v2 = register(reg, still, ["reach-v3"], parent=v1)
    hobs, hact = sim.stack_episodes(eps[7:])
    suite = RegressionSuite("reach-v3", hobs, hact)
    rep = SafetyGate(reg, {"rollout_episodes": 2, "rollout_min_success": 0.1}).evaluate(
        v2, [suite], rollout_fn=sim_rollout_fn(max_steps=150)
    )
    c = rep.check("rollout[reach-v3]")
    assert c.detail["successes"] == 0 and c.value == 0.0 and not c.passed
    assert rep.decision == "rejected" and reg.info(v2).state == "rejected"
