"""Fault injection: whatever goes wrong in learning or on disk, production keeps serving what it
served, and the gate's or the registry's report names the reason.

Production here is real: a PolicyRuntime serving the active version loaded through the registry
(sha256-verified), and updates deployed only through gate -> promote(runtime=...).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from policies import base_and_candidate, export, register, suites, train, train_data

from lifelong_ros.safety.gate import SafetyGate
from lifelong_ros.safety.registry import IntegrityError, ModelRegistry, RegistryError
from lifelong_ros.safety.watchdog import Watchdog, WatchdogConfig
from lifelong_ros.serving.runtime import PolicyRuntime


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    reg = ModelRegistry(tmp_path_factory.mktemp("faults-fixture"))
    base, _, cand, tasks = base_and_candidate(reg)
    return base, cand, tasks


class Production:
    """The serving side: registry with v1 active, a runtime serving it, a probe to compare outputs."""

    def __init__(self, root, base, tasks):
        self.reg = ModelRegistry(root)
        self.v1 = register(self.reg, base, tasks[:2], method="joint")
        self.reg.set_decision(self.v1, "approved", "bootstrap")
        self.reg.promote(self.v1)
        data, sha = self.reg.load_for_serving()
        self.runtime = PolicyRuntime(data, self.reg.active(), expected_sha256=sha)
        self.tasks = tasks
        self.suites = suites(tasks)
        self.probe = self.suites["reach"].obs[:16]
        self.reference = self.outputs()

    def outputs(self) -> tuple[str, np.ndarray]:
        out = self.runtime.infer(self.probe, 1)
        return out.version, out.action.copy()

    def deploy(self, version: str, gate: SafetyGate | None = None):
        """The update path: gate, and only on approval, promote with the runtime's atomic swap."""
        rep = (gate or SafetyGate(self.reg)).evaluate(version, self.suites)
        if rep.decision == "approved":
            self.reg.promote(version, runtime=self.runtime, reason="gate approved")
        return rep

    def assert_unchanged(self):
        version, action = self.outputs()
        assert version == self.v1 and self.reg.active() == self.v1 and self.runtime.version == self.v1
        np.testing.assert_array_equal(action, self.reference[1])


@pytest.fixture
def prod(tmp_path, trained):
    base, _, tasks = trained
    return Production(tmp_path / "reg", base, tasks)


def _candidate(trained, **poison_or_lr):
    base, _, tasks = trained
    model = base.clone()
    model.ensure_heads(3)
    lr = poison_or_lr.pop("lr", 3e-3)
    steps = poison_or_lr.pop("steps", 400)
    return train(model, train_data(tasks, poison=poison_or_lr or None), steps=steps, lr=lr)


def _assert_rejected_for(prod: Production, rep, check: str):
    assert rep.decision == "rejected" and check in rep.failed, rep.summary()
    assert prod.reg.info(rep.candidate).state == "rejected"
    saved = prod.reg.reports(rep.candidate)[-1]  # the persisted report names the failing check
    assert saved["kind"] == "gate" and check in saved["failed"] and check in saved["reason"]
    prod.assert_unchanged()


@pytest.mark.parametrize(
    "poison, check",
    [
        ({"pick": "shuffle"}, "improvement[pick]"),  # demonstrations of the new task with shuffled actions
        ({"pick": "negate"}, "improvement[pick]"),  # adversarially wrong actions for the new task
        ({"reach": "negate"}, "regression[reach]"),  # poisoned replay/corrections for an earlier task
    ],
)
def test_poisoned_demonstrations_are_rejected(prod, trained, poison, check):
    v = register(prod.reg, _candidate(trained, **poison), prod.tasks, parent=prod.v1, method="replay")
    _assert_rejected_for(prod, prod.deploy(v), check)


def test_destructive_learning_rate_is_rejected(prod, trained):
    v = register(prod.reg, _candidate(trained, lr=5.0, steps=60), prod.tasks, parent=prod.v1)
    rep = prod.deploy(v)
    _assert_rejected_for(prod, rep, "regression[reach]")
    assert "regression[push]" in rep.failed


def test_nan_weights_are_rejected_by_the_finite_check(prod, trained):
    _, cand, _ = trained
    broken = cand.clone()
    with torch.no_grad():
        broken.backbone[2].weight[3, 5] = float("nan")
    v = register(prod.reg, broken, prod.tasks, parent=prod.v1)
    rep = prod.deploy(v)
    _assert_rejected_for(prod, rep, "finite")
    assert rep.check("finite").detail["non_finite_nominal"] == sum(len(s) for s in prod.suites.values())


def test_onnx_corrupted_after_approval_is_refused_at_load(prod, trained):
    _, cand, _ = trained
    v = register(prod.reg, cand, prod.tasks, parent=prod.v1)
    rep = SafetyGate(prod.reg).evaluate(v, prod.suites)
    assert rep.decision == "approved"
    path = prod.reg.info(v).path / "model.onnx"
    blob = bytearray(path.read_bytes())
    blob[-200] ^= 0x5A  # one flipped byte in the weights
    path.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match=r"sha256 .* expected") as err:
        prod.reg.promote(v, runtime=prod.runtime)
    assert v in str(err.value)
    prod.assert_unchanged()
    # a restarted server asking for it directly is refused as well
    with pytest.raises(IntegrityError):
        prod.reg.load_for_serving(v)


def test_onnx_corrupted_before_gating_fails_the_integrity_check(prod, trained):
    _, cand, _ = trained
    v = register(prod.reg, cand, prod.tasks, parent=prod.v1)
    path = prod.reg.info(v).path / "model.onnx"
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    rep = prod.deploy(v)
    _assert_rejected_for(prod, rep, "integrity")
    assert "sha256" in rep.check("integrity").value


def test_learner_killed_mid_write_leaves_no_partial_version(prod, trained, tmp_path):
    """The writer streams the ONNX from a pipe we control, so it is provably mid-write when killed."""
    _, cand, _ = trained
    fifo = tmp_path / "model.pipe"
    os.mkfifo(fifo)
    code = textwrap.dedent(f"""
        from lifelong_ros.safety.registry import ModelRegistry
        reg = ModelRegistry({str(prod.reg.root)!r}, recover=False)
        reg.register({str(fifo)!r}, tasks={list(prod.tasks)!r}, method="replay", parent={prod.v1!r})
        print("REGISTERED")
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    blob = export(cand, prod.tasks)
    with open(fifo, "wb") as pipe:
        pipe.write(blob[: len(blob) // 2])
        pipe.flush()
        building = prod.reg.root / "building"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # wait until half the model is on disk in the build dir
            parts = list(building.glob("*/model.onnx"))
            if parts and parts[0].stat().st_size >= len(blob) // 2:
                break
            time.sleep(0.02)
        else:
            pytest.fail("writer never started writing")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL and "REGISTERED" not in proc.stdout.read()
    assert prod.reg.ids() == [prod.v1]  # nothing partial is ever listed
    reopened = ModelRegistry(prod.reg.root)  # the safety monitor restarting
    assert reopened.ids() == [prod.v1] and list((prod.reg.root / "building").iterdir()) == []
    with pytest.raises(RegistryError, match="unknown version 'v0002'"):
        SafetyGate(reopened).evaluate("v0002", prod.suites)
    prod.assert_unchanged()
    # the next complete write works and takes the next id
    assert register(reopened, cand, prod.tasks, parent=prod.v1) == "v0002"


def test_half_written_version_from_a_crash_is_never_served(prod, trained):
    _, cand, _ = trained
    crashed = prod.reg.root / "versions" / "v0002"
    crashed.mkdir()
    blob = export(cand, prod.tasks)
    (crashed / "model.onnx").write_bytes(blob[:1000])  # the crash cut the model short; no meta.json
    assert prod.reg.ids() == [prod.v1]
    with pytest.raises(RegistryError, match="unknown version 'v0002'"):
        prod.reg.promote("v0002", runtime=prod.runtime)
    with pytest.raises(RegistryError, match="unknown version 'v0002'"):
        prod.reg.load_for_serving("v0002")
    reopened = ModelRegistry(prod.reg.root)
    assert not crashed.exists() and any((prod.reg.root / "quarantine").iterdir())
    assert register(reopened, cand, prod.tasks, parent=prod.v1) == "v0003"
    prod.assert_unchanged()


def _approve_without_gate(prod: Production, model, reason="operator override for the test"):
    """A bad model that got through (e.g. a gate configured too loosely): the watchdog's case."""
    v = register(prod.reg, model, prod.tasks, parent=prod.v1)
    prod.reg.set_decision(v, "approved", reason)
    prod.reg.promote(v, runtime=prod.runtime)
    return v


def test_watchdog_rolls_back_on_out_of_bounds_actions(prod, trained):
    _, cand, _ = trained
    loud = cand.clone()
    with torch.no_grad():
        loud.head_w.mul_(4.0)
        loud.head_b.add_(1.5)
    v = _approve_without_gate(prod, loud)
    events = []
    dog = Watchdog(
        prod.reg,
        prod.runtime,
        WatchdogConfig(action_window=100, min_actions=50, max_out_of_bounds_rate=0.1, bounds_slack=0.05),
        on_event=events.append,
    )
    assert dog.version == v
    tripped = None
    for obs in prod.suites["reach"].obs[:100]:
        out = prod.runtime.infer(obs, 0)
        ev = dog.observe_action(out.action, out.version)
        if ev is not None:
            tripped = ev
            break
    assert tripped is not None and tripped.signal == "out_of_bounds_rate" and tripped.value > 0.1
    assert tripped.rolled_back_to == prod.v1 and events == [tripped]
    assert prod.reg.info(v).state == "revoked" and dog.version == prod.v1
    assert prod.reg.reports(v)[-1]["kind"] == "watchdog"
    prod.assert_unchanged()
    # actions still tagged with the revoked version (in flight during the swap) are ignored
    assert dog.observe_action(np.full(4, 9.0), v) is None and dog.status()["actions"] == 0


def test_watchdog_rolls_back_on_task_failures_and_reports_when_it_cannot(prod, trained):
    _, cand, _ = trained
    v = _approve_without_gate(prod, cand)
    dog = Watchdog(prod.reg, prod.runtime, {"episode_window": 10, "min_episodes": 5, "max_failure_rate": 0.5})
    outcomes = [True, False, True, False, False]
    results = [dog.observe_episode(ok, v, "pick") for ok in outcomes[:4]]
    assert results == [None] * 4 and prod.reg.active() == v  # not enough episodes yet
    ev = dog.observe_episode(outcomes[4], v, "pick")
    assert ev.signal == "failure_rate" and ev.value == pytest.approx(0.6) and ev.rolled_back_to == prod.v1
    prod.assert_unchanged()
    # on the first version there is nothing to roll back to: the event says so, nothing changes
    for _ in range(5):
        last = dog.observe_episode(False, prod.v1)
    assert last.rolled_back_to is None and "no earlier approved version" in last.error
    assert dog.version is None and dog.observe_episode(False) is None
    prod.assert_unchanged()
    with pytest.raises(ValueError, match="max_failure_rate=1.5"):
        WatchdogConfig(max_failure_rate=1.5)
    with pytest.raises(ValueError, match=r"unknown watchdog config key\(s\) \['window'\]"):
        WatchdogConfig.from_dict({"window": 3})
