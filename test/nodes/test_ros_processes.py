"""Every node as its own process on a real ROS 2 graph: clean exit on SIGINT and SIGTERM (exit code 0,
no traceback, the learner's worker process gone too), and a learner whose worker is killed mid-goal
aborts the goal with the reason and registers nothing; a misspelled or invalid parameter stops a
node before it does anything, with one line and exit code 2.

Needs a sourced ROS 2 Jazzy workspace with lifelong_ros built (`colcon test` registers this file),
plus the pip packages of the core. Without ROS the whole module is skipped, with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip(
    "rclpy",
    reason="ROS 2 is not installed (no rclpy): these tests need a sourced ROS 2 Jazzy workspace with lifelong_ros built",
)
pytest.importorskip(
    "lifelong_ros.msg", reason="lifelong_ros interfaces are not built: colcon build, then source install/setup.bash"
)

from rclpy.action import ActionClient  # noqa: E402
from ros_graph import Probe, running  # noqa: E402

from lifelong_ros.action import Adapt  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

NODES = ("policy_server", "experience_buffer", "learner", "safety_monitor", "sim_bridge")


def _start(node: str, data: Path, log: Path, *params: str) -> subprocess.Popen:
    args = [sys.executable, "-m", f"lifelong_ros.nodes.{node}", "--ros-args", "-p", f"data_dir:={data}"]
    for p in params:
        args += ["-p", p]
    return subprocess.Popen(
        args,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # a signal reaches this node only, as when launch signals one process
    )


@pytest.fixture
def probe():
    p = Probe("lifelong_ros_process_probe").start()
    yield p
    p.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_every_node_exits_cleanly_on_a_signal(sig, probe, tmp_path):
    procs = {
        n: _start(n, tmp_path / "data", tmp_path / f"{n}.log", *(["autostart:=true"] if n == "policy_server" else []))
        for n in NODES
    }
    try:
        for n in NODES:
            st = probe.status(n)
            assert st.node_name == f"/{n}", st.node_name
        worker = int({kv.key: kv.value for kv in probe.status("learner").values}["worker_pid"])
        assert running(worker)
        for p in procs.values():
            p.send_signal(sig)
        codes = {}
        for n, p in procs.items():
            try:
                codes[n] = p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                codes[n] = "still running 15 s after the signal"
        logs = {n: (tmp_path / f"{n}.log").read_text() for n in NODES}
        assert codes == dict.fromkeys(NODES, 0), {n: (codes[n], logs[n][-1500:]) for n in NODES if codes[n] != 0}
        tracebacks = {n: text[-2000:] for n, text in logs.items() if "Traceback" in text}
        assert not tracebacks, tracebacks
        end = time.monotonic() + 10
        while running(worker) and time.monotonic() < end:
            time.sleep(0.1)
        assert not running(worker), f"learner worker pid {worker} outlived its node"
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.parametrize(
    "node, param, offending",
    [
        ("learner", "default_step:=300", "'default_step' is declared by no lifelong_ros node (did you mean"),
        ("safety_monitor", "gate.regresion_rel_tol:=0.2", "'gate.regresion_rel_tol'"),
        ("experience_buffer", "durability:=disk", "durability='disk'"),
        ("sim_bridge", "rate_hz:=0.0", "rate_hz"),
    ],
    ids=["unknown", "unknown-section-key", "bad-choice", "out-of-range"],
)
def test_a_node_refuses_a_bad_parameter_with_one_line_and_exit_2(node, param, offending, tmp_path):
    """rclpy ignores parameters nobody declares; a lifelong_ros node refuses them (and bad values)
    before it does anything: one fatal log line naming the parameter, exit code 2, no traceback."""
    log = tmp_path / "node.log"
    proc = _start(node, tmp_path / "data", log, param)
    try:
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    fatal = [line for line in text.splitlines() if "FATAL" in line]
    assert code == 2, text[-2000:]
    assert len(fatal) == 1 and offending in fatal[0], text[-2000:]
    assert "Traceback" not in text, text[-2000:]
    assert not (tmp_path / "data" / "experience.sqlite3").exists()  # refused before the store was opened


def _seed_store(data: Path, task: str, episodes: int = 20) -> None:
    from lifelong_ros.experience.store import ExperienceStore
    from lifelong_ros.sim.metaworld import collect_demonstrations

    data.mkdir(parents=True, exist_ok=True)
    with ExperienceStore(data / "experience.sqlite3", 39, 4) as store:
        for k, ep in enumerate(collect_demonstrations(task, range(episodes), max_steps=150)):
            store.append_episode(task, f"seed-{k}", ep.obs, ep.action, ep.reward, source="demonstration")


def _long_goal_in_training(probe):
    """Send the learner an Adapt goal far too long to finish, and return its handle once the worker trains."""
    client = ActionClient(probe.node, Adapt, "/learner/adapt")
    assert client.wait_for_server(timeout_sec=30.0)
    feedback: list = []
    goal = Adapt.Goal(task="reach-v3", method="ewc_replay", shots=0, max_steps=100_000, max_seconds=0.0)
    handle = probe.wait(
        client.send_goal_async(goal, feedback_callback=lambda fb: feedback.append(fb.feedback)), 30, "goal"
    )
    assert handle.accepted
    end = time.monotonic() + 120
    while not any(f.step > 0 for f in feedback):  # training has begun in the worker
        assert time.monotonic() < end, f"no training progress within 120 s: {[f.phase for f in feedback]}"
        time.sleep(0.1)
    return handle


def test_worker_killed_mid_goal_aborts_with_the_reason_and_registers_nothing(probe, tmp_path):
    from lifelong_ros.safety.registry import ModelRegistry

    data = tmp_path / "data"
    _seed_store(data, "reach-v3")
    procs = {n: _start(n, data, tmp_path / f"{n}.log") for n in ("learner", "safety_monitor")}
    try:
        worker = int({kv.key: kv.value for kv in probe.status("learner").values}["worker_pid"])
        handle = _long_goal_in_training(probe)
        os.kill(worker, signal.SIGKILL)
        res = probe.wait(handle.get_result_async(), 60, "Adapt result")
        assert res.status == 6, f"goal status {res.status}, expected ABORTED (6): {res.result.message}"  # ABORTED
        assert not res.result.success and "worker" in res.result.message and "died" in res.result.message, (
            res.result.message
        )
        assert res.result.candidate_version == ""
        assert ModelRegistry(data / "registry").list() == [], "a version was registered from a killed job"
        st = probe.status("learner")
        assert st.level == 2 and "not running" in st.message, (st.level, st.message)  # ERROR: the worker is gone
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGINT)
        for p in procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_learner_node_killed_mid_goal_leaves_no_orphan_and_registers_nothing(probe, tmp_path):
    """kill -9 of the learner node itself (no cleanup runs): its worker notices the lost parent and
    exits, nothing is registered, and a restarted learner serves goals again on the same data."""
    from lifelong_ros.safety.registry import ModelRegistry

    data = tmp_path / "data"
    _seed_store(data, "reach-v3")
    learner = _start("learner", data, tmp_path / "learner.log")
    restarted = None
    try:
        worker = int({kv.key: kv.value for kv in probe.status("learner").values}["worker_pid"])
        _long_goal_in_training(probe)
        learner.kill()  # SIGKILL: no destroy_node, no cancel, no close
        learner.wait(timeout=15)
        end = time.monotonic() + 30
        while running(worker) and time.monotonic() < end:
            time.sleep(0.1)
        assert not running(worker), f"learner worker pid {worker} outlived its killed node"
        assert ModelRegistry(data / "registry").list() == [], "a version was registered from a killed learner"
        restarted = _start("learner", data, tmp_path / "learner2.log")
        end = time.monotonic() + 90  # the killed node's service may still be discovered: ask once the new one is up
        while "learner worker pid" not in (tmp_path / "learner2.log").read_text():
            assert restarted.poll() is None and time.monotonic() < end, (tmp_path / "learner2.log").read_text()
            time.sleep(0.2)
        time.sleep(1.0)
        st = probe.status("learner")
        assert st.message == "idle", st.message
    finally:
        for p in (learner, restarted):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()


def _ros2(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(["ros2", *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.skipif(shutil.which("ros2") is None, reason="the ros2 CLI is not on PATH")
def test_cli_store_bag_and_registry_commands_run_with_ros2_run(tmp_path):
    from lifelong_ros.experience.store import ExperienceStore
    from lifelong_ros.paths import config_dir

    data = tmp_path / "data"
    _seed_store(data, "reach-v3", episodes=4)
    with ExperienceStore(data / "experience.sqlite3", readonly=True) as store:
        records = len(store)
    out = _ros2(
        "run", "lifelong_ros", "lifelong-ros", "store", "stats", "--store", str(data / "experience.sqlite3"), "--json"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["records"] == records
    bag = tmp_path / "bag"
    spec = str(config_dir() / "spec_metaworld.yaml")
    store_file = str(data / "experience.sqlite3")
    out = _ros2(
        "run",
        "lifelong_ros",
        "lifelong-ros",
        "export-bag",
        str(bag),
        "--store",
        store_file,
        "--spec",
        spec,
        "--retime",
        "50",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    out = _ros2("bag", "info", str(bag))
    assert out.returncode == 0 and "/lifelong_ros/observation" in out.stdout, out.stdout + out.stderr
    # offline_learn with no --config and no --spec: the installed defaults from the share directory
    learned = tmp_path / "learned"
    out = _ros2(
        *("run", "lifelong_ros", "offline_learn", "--bag", str(bag), "--task", "reach-v3"),
        *("--data-dir", str(learned), "--no-gate", "--steps", "5", "--quiet"),
    )
    assert out.returncode == 0, out.stdout[-1000:] + out.stderr[-2000:]
    assert json.loads(out.stdout)["imported_steps"] == records
    version = _approved_model(data)
    out = _ros2("run", "lifelong_ros", "lifelong-ros", "registry", "list", "--data-dir", str(data))
    assert out.returncode == 0 and version in out.stdout, out.stdout + out.stderr[-2000:]


def _approved_model(data: Path, task: str = "reach-v3") -> str:
    """An approved, active model in ``data``'s registry (a freshly initialised network: serving is what is tested)."""
    import numpy as np
    import torch

    from lifelong_ros.learning.model import PolicyConfig, PolicyNet, export_onnx
    from lifelong_ros.safety.registry import ModelRegistry

    torch.manual_seed(0)
    cfg = PolicyConfig(obs_dim=39, act_dim=4, hidden=(64, 64), num_heads=1)
    net = PolicyNet(cfg)
    net.set_normalizer(np.random.default_rng(0).normal(size=(64, 39)).astype(np.float32))
    reg = ModelRegistry(data / "registry")
    v = reg.register(export_onnx(net.eval()), tasks=[task], method="test", config={"policy": cfg.to_dict()})
    reg.set_decision(v, "approved", reason="test model")
    reg.promote(v, reason="test")
    return v


@pytest.mark.skipif(shutil.which("ros2") is None, reason="the ros2 CLI is not on PATH")
def test_an_observation_from_ros2_topic_pub_produces_an_action(probe, tmp_path):
    from std_msgs.msg import Float32MultiArray

    from lifelong_ros.msg import PolicyOutput

    data = tmp_path / "data"
    version = _approved_model(data)
    actions: list = []
    outputs: list = []
    probe.node.create_subscription(Float32MultiArray, "/lifelong_ros/action", actions.append, 10)
    probe.node.create_subscription(PolicyOutput, "/policy_server/output", outputs.append, 10)
    server = _start("policy_server", data, tmp_path / "policy_server.log", "autostart:=true")
    try:
        st = probe.status("policy_server")
        end = time.monotonic() + 60
        while st.active_version != version:
            assert time.monotonic() < end, f"model {version} not loaded: {st.message}"
            time.sleep(0.2)
            st = probe.status("policy_server")
        obs = ", ".join(["0.1"] * 39)
        pub = _ros2(
            "topic",
            "pub",
            "--times",
            "3",
            "-w",
            "1",
            "/lifelong_ros/observation",
            "std_msgs/msg/Float32MultiArray",
            f"{{data: [{obs}]}}",
        )
        assert pub.returncode == 0, pub.stderr[-2000:]
        end = time.monotonic() + 10
        while not actions and time.monotonic() < end:
            time.sleep(0.05)
        assert actions, "no action on /lifelong_ros/action after `ros2 topic pub` of an observation"
        assert len(actions[0].data) == 4 and all(abs(x) < 1e6 for x in actions[0].data)
        assert outputs and outputs[0].model_version == version
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=15) == 0


def test_corrections_through_sim_bridge_and_the_experience_buffer(probe, tmp_path):
    """controller:=correction: the policy's action drives sim_bridge (here a probe that always
    commands zero), every step goes out on ~/demonstrations labelled with the scripted expert's
    action for the state reached, source `correction`, and the experience buffer stores it."""
    import numpy as np
    from std_msgs.msg import Float32MultiArray

    from lifelong_ros.experience.store import ExperienceStore
    from lifelong_ros.msg import ExperienceRecord
    from lifelong_ros.nodes import _common as c
    from lifelong_ros.nodes import messages as m
    from lifelong_ros.sim.metaworld import MetaWorldSim

    data = tmp_path / "data"
    records: list = []
    probe.node.create_subscription(ExperienceRecord, "/sim_bridge/demonstrations", records.append, 100)
    act = probe.node.create_publisher(Float32MultiArray, "/lifelong_ros/action", 10)
    probe.node.create_subscription(  # sensor data is best effort: a reliable subscription would get nothing
        Float32MultiArray,
        "/lifelong_ros/observation",
        lambda _o: act.publish(Float32MultiArray(data=[0.0] * 4)),
        c.SENSOR_QOS,
    )
    buffer = _start("experience_buffer", data, tmp_path / "experience_buffer.log")
    bridge = _start(
        "sim_bridge", data, tmp_path / "sim_bridge.log", "controller:=correction", "task:=reach-v3", "max_steps:=30"
    )
    try:
        assert probe.status("experience_buffer").level < 2 and probe.status("sim_bridge").level < 2
        end = time.monotonic() + 60
        written = 0
        while len(records) < 40 or written < 40:  # heard here, and written by the buffer (a race otherwise)
            assert time.monotonic() < end, (
                f"{len(records)} correction records in 60 s, {written} written; sim_bridge log: "
                + (tmp_path / "sim_bridge.log").read_text()[-2000:]
            )
            time.sleep(0.1)
            if len(records) >= 40:
                written = int({kv.key: kv.value for kv in probe.status("experience_buffer").values}["written"])
    finally:
        for p in (bridge, buffer):
            p.send_signal(signal.SIGINT)
        assert bridge.wait(timeout=15) == 0 and buffer.wait(timeout=15) == 0
    steps = [m.experience_from_msg(r, 39, 4) for r in records]
    expert = MetaWorldSim("reach-v3").expert()
    assert {s.source for s in steps} == {"correction"} and {s.task for s in steps} == {"reach-v3"}
    labels = np.stack([s.action for s in steps])
    assert np.abs(labels).max() > 0.1  # the expert's labels, not the zero commands that drove
    np.testing.assert_allclose(labels, np.clip([expert(s.obs) for s in steps], -1, 1), atol=1e-5)
    with ExperienceStore(data / "experience.sqlite3", readonly=True) as store:
        stored = store.task_arrays("reach-v3", split="all")
        assert len(stored) >= 40 and set(stored.source.tolist()) == {"correction"}


def test_the_expert_takes_over_a_stalled_policy_in_sim_bridge(probe, tmp_path):
    """controller:=correction with takeover_after:=10: a policy that always commands zero stalls, the
    expert drives the rest of the episode and reaches the goal; every step is still labelled with
    the expert's action."""
    import numpy as np
    from std_msgs.msg import Float32MultiArray

    from lifelong_ros.msg import EpisodeResult, ExperienceRecord
    from lifelong_ros.nodes import _common as c
    from lifelong_ros.nodes import messages as m
    from lifelong_ros.sim.metaworld import MetaWorldSim

    records: list = []
    results: list = []
    probe.node.create_subscription(ExperienceRecord, "/sim_bridge/demonstrations", records.append, 1000)
    probe.node.create_subscription(EpisodeResult, "/sim_bridge/episode_result", results.append, 10)
    act = probe.node.create_publisher(Float32MultiArray, "/lifelong_ros/action", 10)
    probe.node.create_subscription(
        Float32MultiArray,
        "/lifelong_ros/observation",
        lambda _o: act.publish(Float32MultiArray(data=[0.0] * 4)),
        c.SENSOR_QOS,
    )
    bridge = _start(
        "sim_bridge",
        tmp_path / "data",
        tmp_path / "sim_bridge.log",
        "controller:=correction",
        "task:=reach-v3",
        "max_steps:=150",
        "takeover_after:=10",
        "steps_after_success:=0",
    )
    try:
        end = time.monotonic() + 90
        while not results:
            assert time.monotonic() < end, (
                "no episode ended in 90 s: " + (tmp_path / "sim_bridge.log").read_text()[-2000:]
            )
            time.sleep(0.1)
    finally:
        bridge.send_signal(signal.SIGINT)
        assert bridge.wait(timeout=15) == 0
    first = results[0]
    assert first.success and first.steps < 150, (first.success, first.steps)  # zero commands alone never succeed
    steps = [m.experience_from_msg(r, 39, 4) for r in records if r.episode == first.episode]
    assert len(steps) == first.steps and {s.source for s in steps} == {"correction"}
    expert = MetaWorldSim("reach-v3").expert()
    labels = np.stack([s.action for s in steps])
    np.testing.assert_allclose(labels, np.clip([expert(s.obs) for s in steps], -1, 1), atol=1e-5)
