"""Our msg/srv/action files parse, follow ROS conventions, and match what the nodes build and read.

Runs without ROS: `rosbags` generates classes from the very .msg/.srv/.action files rosidl builds
on a robot (same field names), and every builder the nodes use (nodes/messages.py) must produce a
complete instance that survives a CDR round trip. The nodes' reads of request/goal/message fields
are checked against the definitions by reading the node sources.
"""

from __future__ import annotations

import array
import ast
import math
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="rosbags (pip) parses our interface files")

from lifelong_ros.nodes import messages as m

ROOT = Path(__file__).resolve().parents[2]
NODES = ROOT / "lifelong_ros" / "nodes"
REQUIRED = {
    "lifelong_ros/msg/ExperienceRecord",
    "lifelong_ros/msg/ModelVersion",
    "lifelong_ros/msg/GateReport",
    "lifelong_ros/msg/GateCheck",
    "lifelong_ros/msg/PolicyOutput",
    "lifelong_ros/msg/EpisodeResult",
    "lifelong_ros/msg/Metric",
    "lifelong_ros/action/Adapt_Goal",
    "lifelong_ros/action/Adapt_Result",
    "lifelong_ros/action/Adapt_Feedback",
    "lifelong_ros/action/Gate_Goal",
    "lifelong_ros/action/Gate_Result",
    "lifelong_ros/action/Gate_Feedback",
    *(
        f"lifelong_ros/srv/{s}_{part}"
        for s in ("Rollback", "ListVersions", "GetStatus", "SetRecording", "GateCandidate")
        for part in ("Request", "Response")
    ),
}


@pytest.fixture(scope="module")
def kit() -> m.RosbagsKit:
    return m.RosbagsKit()


def roundtrip(kit: m.RosbagsKit, msg, name: str):
    stored = kit.stored_name(name)
    return kit.typestore.deserialize_cdr(kit.typestore.serialize_cdr(msg, stored), stored)


def fields(kit: m.RosbagsKit, name: str) -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(kit.cls(name)) if not f.name.isupper() and f.name != "__msgtype__"}


# --------------------------------------------------------------------------- the files themselves
def test_every_required_interface_is_defined_and_parses(kit):
    defined = set(m.interface_definitions(ROOT))
    assert defined >= REQUIRED, f"missing: {sorted(REQUIRED - defined)}"
    for name in defined:
        assert kit.cls(name) is not None


def test_fields_are_snake_case_typed_and_commented():
    field_re = re.compile(r"^([A-Za-z0-9_/]+(?:\[[^\]]*\])?)\s+([A-Za-z0-9_]+)\s*(=|#|$)")
    for path in sorted([*ROOT.glob("msg/*.msg"), *ROOT.glob("srv/*.srv"), *ROOT.glob("action/*.action")]):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            s = line.strip()
            if not s or s.startswith("#") or s == "---":
                continue
            mt = field_re.match(s)
            assert mt, f"{path.name}:{n}: cannot read {line!r}"
            typ, name, after = mt.groups()
            if after == "=":  # constant
                assert name.isupper(), f"{path.name}:{n}: constant {name} must be UPPER_CASE"
                continue
            assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", name), (
                f"{path.name}:{n}: field {name!r} is not snake_case"
            )
            assert "#" in line, f"{path.name}:{n}: field {name!r} has no comment (meaning/units)"
            assert typ != "Header", f"{path.name}:{n}: write std_msgs/Header"


def test_time_critical_messages_carry_a_header(kit):
    for name in ("ExperienceRecord", "ModelVersion", "GateReport", "PolicyOutput", "EpisodeResult"):
        assert "header" in fields(kit, f"lifelong_ros/msg/{name}"), name


def test_adapt_action_has_the_goal_feedback_result_the_issue_asks_for(kit):
    assert {"task", "method", "shots", "max_steps"} <= fields(kit, "lifelong_ros/action/Adapt_Goal")
    assert {"phase", "step", "loss"} <= fields(kit, "lifelong_ros/action/Adapt_Feedback")
    assert {"candidate_version", "approved", "gate_report", "metrics", "attempts"} <= fields(
        kit, "lifelong_ros/action/Adapt_Result"
    )


def test_a_bare_same_package_type_in_a_srv_resolves_to_our_msg(kit):
    import dataclasses

    f = {x.name: x.type for x in dataclasses.fields(kit.cls("lifelong_ros/srv/ListVersions_Response"))}
    assert "lifelong_ros__msg__ModelVersion" in f["versions"]


# --------------------------------------------------------------------------- conversions
def test_experience_record_round_trips_bit_exactly(kit):
    rng = np.random.default_rng(3)
    obs = rng.normal(size=39).astype(np.float32)
    obs[0], obs[1] = np.float32(-0.0), np.float32(1e-40)  # sign of zero and a subnormal survive
    act = rng.uniform(-1, 1, 4).astype(np.float32)
    step = m.ExperienceStep(
        stamp_ns=1_712_345_678_901_234_567,
        task="pick-place-v3",
        episode="robotA-0007",
        step=12,
        source="correction",
        obs=obs,
        action=act,
        reward=0.25,
        done=True,
        model_version="v0003",
    )
    back = m.experience_from_msg(
        roundtrip(kit, m.experience_msg(kit, step), "lifelong_ros/msg/ExperienceRecord"), 39, 4
    )
    assert back.obs.tobytes() == obs.tobytes() and back.action.tobytes() == act.tobytes()
    assert (back.stamp_ns, back.task, back.episode, back.step, back.source, back.done, back.model_version) == (
        step.stamp_ns,
        step.task,
        step.episode,
        step.step,
        step.source,
        True,
        "v0003",
    )
    assert back.reward == pytest.approx(0.25)


def test_experience_with_wrong_vector_length_names_the_field_and_sizes(kit):
    step = m.ExperienceStep(
        stamp_ns=5,
        task="reach-v3",
        episode="e",
        step=0,
        source="policy",
        obs=np.zeros(38, np.float32),
        action=np.zeros(4, np.float32),
    )
    msg = m.experience_msg(kit, step)
    with pytest.raises(ValueError, match=r"observation has 38 values, expected 39"):
        m.experience_from_msg(msg, 39, 4)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(source="teleop"), "source 'teleop' is not one of"),
        (dict(task=""), "task is empty"),
        (dict(step=-1), "step must be >= 0, got -1"),
    ],
)
def test_experience_step_refuses_bad_fields(bad, message):
    kw = dict(stamp_ns=0, task="reach-v3", episode="e", step=0, source="policy", obs=np.zeros(3), action=np.zeros(1))
    kw.update(bad)
    with pytest.raises(ValueError, match=message):
        m.ExperienceStep(**kw)


def test_stacked_steps_append_to_a_real_store(tmp_path, kit):
    from lifelong_ros.experience.store import ExperienceStore

    rng = np.random.default_rng(0)
    steps = [
        m.ExperienceStep(
            stamp_ns=1000 + i,
            task="reach-v3",
            episode=f"ep{i // 4}",
            step=i % 4,
            source="demonstration",
            obs=rng.normal(size=5).astype(np.float32),
            action=rng.normal(size=2).astype(np.float32),
            reward=float(i),
            done=i % 4 == 3,
        )
        for i in range(8)
    ]
    cols = m.stack_steps(steps)
    with ExperienceStore(tmp_path / "s.sqlite3", 5, 2) as store:
        store.append(
            cols["task"],
            cols["episode"],
            cols["step"],
            cols["obs"],
            cols["action"],
            reward=cols["reward"],
            done=cols["done"],
            stamp_ns=cols["stamp_ns"],
            source=cols["source"],
        )
        b = store.task_arrays("reach-v3", split="all")
    order = np.argsort(b.stamp_ns)
    assert np.array_equal(b.obs[order], np.stack([s.obs for s in steps]))
    assert list(b.step[order]) == [0, 1, 2, 3, 0, 1, 2, 3] and list(b.done[order]) == [False, False, False, True] * 2
    assert set(b.source) == {"demonstration"} and sorted(set(b.episode)) == ["ep0", "ep1"]


def tiny_onnx(obs_dim: int, act_dim: int) -> bytes:
    """A real, loadable ONNX policy (obs [N, D] -> action [N, A]) built without torch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((obs_dim, act_dim), 0.1, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["obs", "w"], ["action"])],
        "policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", obs_dim])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", act_dim])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_model_version_announces_a_real_registry_version(tmp_path, kit):
    from lifelong_ros.fsutil import sha256_file
    from lifelong_ros.safety.registry import ModelRegistry

    reg = ModelRegistry(tmp_path / "registry")
    config = {"obs_dim": 6, "act_dim": 2, "hidden": [8], "num_heads": 2}
    vid = reg.register(tiny_onnx(6, 2), tasks=["reach-v3", "push-v3"], method="ewc_replay", config=config)
    msg = roundtrip(kit, m.model_version_msg(kit, reg.info(vid), 42), "lifelong_ros/msg/ModelVersion")
    assert (msg.version, msg.state, msg.method, list(msg.tasks)) == (
        vid,
        "candidate",
        "ewc_replay",
        ["reach-v3", "push-v3"],
    )
    assert (msg.obs_dim, msg.act_dim, msg.parent_version) == (6, 2, "")
    assert sha256_file(msg.onnx_path) == msg.sha256 == reg.info(vid).onnx_sha256
    assert m.stamp_ns(msg.header.stamp) == 42
    nested = reg.register(
        tiny_onnx(6, 2),
        tasks=["reach-v3"],
        method="naive",
        parent=vid,
        config={"policy": config, "request": {"steps": 10}},
    )  # the learner's layout
    msg = m.model_version_msg(kit, reg.info(nested), 0)
    assert (msg.obs_dim, msg.act_dim, msg.parent_version) == (6, 2, vid)


def test_gate_report_carries_real_check_results(kit):
    from lifelong_ros.safety.gate import CheckResult

    checks = [
        CheckResult("regression", True, 0.012, 0.02, task="reach-v3", data="heldout reach-v3: 500 samples"),
        CheckResult("latency_p99", False, 1.7, 1.0, detail={"candidate_p50_ms": 0.2}),
        CheckResult("task_heads", False, ["push-v3"], ["reach-v3", "push-v3"]),
    ]
    msg = m.gate_report_msg(
        kit,
        stamp_ns=7,
        candidate_version="v0002",
        baseline_version=None,
        approved=False,
        reason="failed: latency_p99, task_heads",
        checks=m.gate_checks(checks),
        report_path="/r/0001-gate.json",
        duration_s=1.5,
    )
    back = m.gate_report_summary(roundtrip(kit, msg, "lifelong_ros/msg/GateReport"))
    assert back["baseline_version"] == "" and back["approved"] is False
    c0, c1, c2 = back["checks"]
    assert (c0["name"], c0["passed"], c0["value"], c0["threshold"], c0["unit"]) == (
        "regression[reach-v3]",
        True,
        0.012,
        0.02,
        "mse",
    )
    assert (c1["unit"], c1["passed"]) == ("ms", False) and "candidate_p50_ms" in c1["detail"]
    assert math.isnan(c2["value"]) and "push-v3" in c2["detail"]  # non-numeric values go to the detail text


def test_policy_output_episode_result_and_adapt_parts_round_trip(kit):
    out = roundtrip(
        kit,
        m.policy_output_msg(
            kit,
            stamp_ns=10,
            model_version="v0001",
            task="reach-v3",
            task_id=0,
            action=np.array([0.5, -1, 0, 1], np.float32),
            inference_us=9.5,
            observation_age_s=0.002,
        ),
        "lifelong_ros/msg/PolicyOutput",
    )
    assert list(out.action) == [0.5, -1, 0, 1] and out.model_version == "v0001"
    ep = roundtrip(
        kit,
        m.episode_result_msg(
            kit,
            stamp_ns=1,
            task="reach-v3",
            episode="sim-00001",
            seed=3,
            success=True,
            steps=40,
            total_reward=12.5,
            controller="policy",
            model_version="v0001",
        ),
        "lifelong_ros/msg/EpisodeResult",
    )
    assert (ep.success, ep.steps, ep.episode) == (True, 40, "sim-00001")
    fb = roundtrip(
        kit,
        m.adapt_feedback(kit, phase="train", step=5, total_steps=100, loss=0.5, elapsed_s=1.0),
        "lifelong_ros/action/Adapt_Feedback",
    )
    assert (fb.phase, fb.step, fb.total_steps) == ("train", 5, 100)
    res = roundtrip(
        kit,
        m.adapt_result(
            kit,
            success=True,
            message="ok",
            candidate_version="v0002",
            approved=True,
            metrics={"final_loss": 0.01, "train_s": 3.0, "note": "skipped", "flag": True},
            attempts=["attempt 1 (1500 steps): v0002 rejected: closed_loop[reach-v3]", "attempt 2 (2250 steps): ok"],
        ),
        "lifelong_ros/action/Adapt_Result",
    )
    assert {x.name: (x.value, x.unit) for x in res.metrics} == {"final_loss": (0.01, "mse"), "train_s": (3.0, "s")}
    assert len(res.attempts) == 2 and res.attempts[0].startswith("attempt 1 (1500 steps): v0002 rejected")


def test_gate_action_result_and_feedback_build_with_every_field(kit):
    res = m.gate_result(kit, success=False, message="cancelled while queued; v0002 was not evaluated")
    back = roundtrip(kit, res, "lifelong_ros/action/Gate_Result")
    assert back.message == res.message and not back.success and back.report.candidate_version == ""
    fb = m.gate_feedback(kit, phase="evaluating", elapsed_s=1.5)
    assert roundtrip(kit, fb, "lifelong_ros/action/Gate_Feedback") == fb


def test_service_responses_build_with_every_field(kit):
    st = m.Status(m.WARN, "no active version yet", {"records": 10, "rate": 0.5}, "")
    cases = {
        "GetStatus_Response": m.status_response(kit, "/safety_monitor", st),
        "GateCandidate_Response": m.gate_candidate_response(kit, success=False, message="unknown version 'v9'"),
        "Rollback_Response": m.rollback_response(
            kit, success=True, message="rolled back", active_version="v0001", previous_version="v0002"
        ),
        "ListVersions_Response": m.list_versions_response(kit, [m.empty_model_version(kit)], "v0001"),
        "SetRecording_Response": m.set_recording_response(
            kit, success=True, message="recording", recording=True, raw_topics=False, records_total=12
        ),
    }
    for name, msg in cases.items():
        back = roundtrip(kit, msg, f"lifelong_ros/srv/{name}")
        assert back == msg or name == "GateCandidate_Response"  # NaN duration_s != NaN
    status = cases["GetStatus_Response"]
    assert status.level == 1 and {kv.key: kv.value for kv in status.values} == {"records": "10", "rate": "0.5"}
    with pytest.raises(ValueError, match="status level must be one of"):
        m.Status(7, "x", {})


def test_rclpy_kit_float_arrays_are_the_array_type_rosidl_setters_accept():
    a = m.RclpyKit.float32s(np.array([1.5, -2.0, 3.25]))
    assert isinstance(a, array.array) and a.typecode == "f" and list(a) == [1.5, -2.0, 3.25]
    assert m.RclpyKit.float64s([0.1]).typecode == "d"
    assert np.array_equal(m.as_f32(a), np.array([1.5, -2.0, 3.25], np.float32))


# --------------------------------------------------------------------------- node sources vs definitions
# (module, function, variable) -> the type whose fields that variable's attribute reads must exist in.
READS = {
    ("safety_monitor", "_on_gate", "request"): "lifelong_ros/srv/GateCandidate_Request",
    ("safety_monitor", "_on_rollback", "request"): "lifelong_ros/srv/Rollback_Request",
    ("safety_monitor", "_on_list", "request"): "lifelong_ros/srv/ListVersions_Request",
    ("safety_monitor", "_on_experience", "msg"): "lifelong_ros/msg/ExperienceRecord",
    ("safety_monitor", "_on_policy_output", "msg"): "lifelong_ros/msg/PolicyOutput",
    ("safety_monitor", "_on_episode_result", "msg"): "lifelong_ros/msg/EpisodeResult",
    ("learner", "_on_goal", "goal"): "lifelong_ros/action/Adapt_Goal",
    ("learner", "_run", "goal"): "lifelong_ros/action/Adapt_Goal",
    ("learner", "_execute", "goal"): "lifelong_ros/action/Adapt_Goal",
    ("learner", "_attempt", "goal"): "lifelong_ros/action/Adapt_Goal",
    ("learner", "_budget", "goal"): "lifelong_ros/action/Adapt_Goal",
    ("learner", "_attempt", "response"): "lifelong_ros/action/Gate_Result",
    ("safety_monitor", "_on_gate_goal", "goal"): "lifelong_ros/action/Gate_Goal",
    ("safety_monitor", "_execute_gate", "goal"): "lifelong_ros/action/Gate_Goal",
    ("experience_buffer", "_on_set_recording", "request"): "lifelong_ros/srv/SetRecording_Request",
    ("policy_server", "_on_active", "msg"): "lifelong_ros/msg/ModelVersion",
    ("sim_bridge", "_on_policy_output", "msg"): "lifelong_ros/msg/PolicyOutput",
    ("messages", "experience_from_msg", "msg"): "lifelong_ros/msg/ExperienceRecord",
    ("messages", "gate_report_summary", "msg"): "lifelong_ros/msg/GateReport",
}


def _functions(module: str) -> dict[str, ast.FunctionDef]:
    tree = ast.parse((NODES / f"{module}.py").read_text())
    return {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


def test_nodes_read_only_fields_our_definitions_have(kit):
    for (module, func, var), typ in READS.items():
        fn = _functions(module).get(func)
        assert fn is not None, f"{module}.{func} no longer exists: update READS"
        used = {
            n.attr
            for n in ast.walk(fn)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == var
        }
        assert used, f"{module}.{func} reads nothing from {var}: update READS"
        unknown = used - fields(kit, typ)
        assert not unknown, f"{module}.{func} reads {sorted(unknown)} from {var}, which {typ} does not define"


def test_every_service_and_goal_callback_is_covered_by_the_field_check():
    covered = {(mod, fn) for mod, fn, _ in READS}
    for path in NODES.glob("*.py"):
        for name, fn in _functions(path.stem).items():
            args = {a.arg for a in fn.args.args} & {"request", "goal"}
            reads = any(
                isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in args
                for n in ast.walk(fn)
            )
            if reads:
                assert (path.stem, name) in covered, f"{path.stem}.{name} reads a request/goal: add it to READS"


def test_rosidl_itself_accepts_our_interface_files(tmp_path):
    """The first stage of `colcon build` (.msg/.srv/.action -> IDL -> parsed), where rosidl is installed."""
    pytest.importorskip("rosidl_adapter", reason="rosidl (ROS 2, or Debian's python3-rosidl) is not installed")
    pytest.importorskip("em", reason="empy (rosidl_adapter's template engine) is not installed")
    from rosidl_adapter.action import convert_action_to_idl
    from rosidl_adapter.msg import convert_msg_to_idl
    from rosidl_adapter.srv import convert_srv_to_idl
    from rosidl_parser.definition import IdlLocator
    from rosidl_parser.parser import parse_idl_file

    converters = {"msg": convert_msg_to_idl, "srv": convert_srv_to_idl, "action": convert_action_to_idl}
    for kind, convert in converters.items():
        for p in sorted((ROOT / kind).iterdir()):
            idl = convert(ROOT, "lifelong_ros", p.relative_to(ROOT), tmp_path / kind)
            parse_idl_file(IdlLocator(tmp_path / kind, idl.name))
