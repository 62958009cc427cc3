"""Observation/action specs: YAML validated at load, messages <-> vectors by field name for rosbags
and rclpy-shaped messages, and stream alignment that picks the nearest earlier fresh sample."""

from __future__ import annotations

import array
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong_ros.ros_io.spec import (
    SpecError,
    StreamAligner,
    load_spec,
    rosbags_classes,
    spec_from_dict,
)

CONFIG = Path(__file__).resolve().parents[2] / "config"


@pytest.fixture(scope="module")
def typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_JAZZY)


def test_metaworld_spec_is_39_floats_in_and_4_out():
    spec = load_spec(CONFIG / "spec_metaworld.yaml")
    assert (spec.obs_dim, spec.act_dim) == (39, 4)
    assert [s.type for s in spec.observation.streams + spec.action.streams] == ["std_msgs/msg/Float32MultiArray"] * 2


def test_vectors_round_trip_through_serialized_rosbags_messages(typestore):
    spec = load_spec(CONFIG / "spec_example_arm.yaml")
    assert (spec.obs_dim, spec.act_dim) == (23, 7)
    classes = rosbags_classes(typestore)
    rng = np.random.default_rng(0)
    for vspec in (spec.observation, spec.action):
        vec = rng.standard_normal(vspec.dim).astype(np.float32)
        msgs = vspec.encode(vec, classes, stamp_ns=1_700_000_000_123_456_789)
        wire = {
            t: typestore.deserialize_cdr(typestore.serialize_cdr(m, m.__msgtype__), m.__msgtype__)
            for t, m in msgs.items()
        }
        np.testing.assert_array_equal(vspec.decode(wire), vec)
    js = spec.observation.encode(np.arange(23, dtype=np.float32), classes, 5_000_000_001)["/joint_states"]
    assert js.header.stamp.sec == 5 and js.header.stamp.nanosec == 1
    assert js.position.tolist() == list(range(7)) and js.velocity.tolist() == list(range(7, 14)) and len(js.effort) == 0
    pose = spec.observation.encode(np.arange(23, dtype=np.float32), classes)["/ee_pose"].pose
    assert (pose.position.x, pose.orientation.w) == (14.0, 20.0)


def test_joint_state_is_read_by_joint_name_not_position(typestore):
    spec = spec_from_dict(
        {
            "observation": {
                "streams": [
                    {
                        "topic": "/js",
                        "type": "sensor_msgs/JointState",
                        "joints": ["b", "a"],
                        "fields": ["effort", "position"],
                    }
                ]
            },
            "action": {"streams": [{"topic": "/a", "type": "std_msgs/msg/Float32MultiArray", "size": 1}]},
        }
    )
    T = typestore.types
    h = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id="")
    msg = T["sensor_msgs/msg/JointState"](
        header=h,
        name=["a", "extra", "b"],
        position=np.array([1.0, 2.0, 3.0]),
        velocity=np.zeros(0),
        effort=np.array([10.0, 20.0, 30.0]),
    )
    assert spec.observation.decode({"/js": msg}).tolist() == [30.0, 10.0, 3.0, 1.0]
    msg.name = ["a", "extra", "c"]
    with pytest.raises(SpecError, match=r"JointState on /js has no joint\(s\) \['b'\]; it has \['a', 'extra', 'c'\]"):
        spec.observation.decode({"/js": msg})
    msg.name = ["a", "b", "c"]
    msg.effort = np.zeros(0)
    with pytest.raises(SpecError, match="effort has 0 values for 3 joints"):
        spec.observation.decode({"/js": msg})
    with pytest.raises(SpecError, match=r"no message for topic\(s\) \['/js'\]"):
        spec.observation.decode({})


def test_float32_array_size_is_exact_and_slice_takes_a_window(typestore):
    spec = spec_from_dict(
        {
            "observation": {"streams": [{"topic": "/f", "type": "std_msgs/msg/Float32MultiArray", "slice": [2, 5]}]},
            "action": {"streams": [{"topic": "/a", "type": "std_msgs/msg/Float32MultiArray", "size": 3}]},
        }
    )
    classes = rosbags_classes(typestore)
    F = typestore.types["std_msgs/msg/Float32MultiArray"]
    L = typestore.types["std_msgs/msg/MultiArrayLayout"]
    m = F(layout=L(dim=[], data_offset=0), data=np.arange(8, dtype=np.float32))
    assert spec.observation.decode({"/f": m}).tolist() == [2.0, 3.0, 4.0]
    with pytest.raises(SpecError, match="Float32MultiArray on /a has 8 values; the spec expects exactly 3"):
        spec.action.decode({"/a": m})
    out = spec.observation.encode(np.array([7, 8, 9]), classes)["/f"]
    assert out.data.tolist() == [0.0, 0.0, 7.0, 8.0, 9.0]
    with pytest.raises(SpecError, match="got 2 values; the spec maps 3"):
        spec.action.streams[0].encode(np.zeros(2), classes)


class _RclpyShaped:
    """The shape of an rclpy-generated message (rclpy is not installed here): a keyword constructor
    with defaults, not a dataclass, primitive sequences held as array.array."""

    _defaults: ClassVar[dict] = {}

    def __init__(self, **kw):
        for k, default in self._defaults.items():
            setattr(self, k, kw.pop(k) if k in kw else default())
        if kw:
            raise TypeError(f"unexpected fields {sorted(kw)}")


def _rclpy_like_classes():
    def mk(cls_name, **defaults):
        return type(cls_name, (_RclpyShaped,), {"_defaults": defaults})

    Time = mk("Time", sec=int, nanosec=int)
    Header = mk("Header", stamp=Time, frame_id=str)
    table = {
        "builtin_interfaces/msg/Time": Time,
        "std_msgs/msg/Header": Header,
        "std_msgs/msg/MultiArrayLayout": mk("MultiArrayLayout", dim=list, data_offset=int),
        "std_msgs/msg/Float32MultiArray": mk("Float32MultiArray", layout=dict, data=lambda: array.array("f")),
        "sensor_msgs/msg/JointState": mk(
            "JointState",
            header=Header,
            name=list,
            position=lambda: array.array("d"),
            velocity=lambda: array.array("d"),
            effort=lambda: array.array("d"),
        ),
    }
    return table.__getitem__


def test_rclpy_shaped_messages_convert_both_ways():
    spec = spec_from_dict(
        {
            "observation": {
                "streams": [
                    {
                        "topic": "/js",
                        "type": "sensor_msgs/msg/JointState",
                        "joints": ["j1", "j2"],
                        "fields": ["position", "velocity"],
                    }
                ]
            },
            "action": {"streams": [{"topic": "/cmd", "type": "std_msgs/msg/Float32MultiArray", "size": 2}]},
        }
    )
    classes = _rclpy_like_classes()
    act = spec.action.encode(np.array([0.25, -0.5]), classes)["/cmd"]
    assert isinstance(act.data, array.array) and act.data.typecode == "f" and list(act.data) == [0.25, -0.5]
    js = spec.observation.encode(np.array([1, 2, 3, 4]), classes, stamp_ns=3_000_000_007)["/js"]
    assert isinstance(js.position, array.array) and js.position.typecode == "d"
    assert (js.header.stamp.sec, js.header.stamp.nanosec) == (3, 7)
    assert spec.observation.decode({"/js": js}).tolist() == [1.0, 2.0, 3.0, 4.0]
    assert spec.action.decode({"/cmd": act}).tolist() == [0.25, -0.5]


OK_OBS = {"streams": [{"topic": "/o", "type": "std_msgs/msg/Float32MultiArray", "size": 3}]}
OK_ACT = {"streams": [{"topic": "/a", "type": "std_msgs/msg/Float32MultiArray", "size": 1}]}


@pytest.mark.parametrize(
    "obs, match",
    [
        (
            {"streams": [{"topic": "/o", "type": "nav_msgs/msg/Odometry"}]},
            r"observation\.streams\[0\]\.type: unsupported message type 'nav_msgs/msg/Odometry'",
        ),
        (
            {"streams": [{"topic": "/o", "type": "sensor_msgs/msg/JointState"}]},
            r"observation\.streams\[0\]\.joints: expected a non-empty list of names, got None",
        ),
        (
            {"streams": [{"topic": "/o", "type": "sensor_msgs/msg/JointState", "joints": ["a"], "fields": ["torque"]}]},
            r"fields: unknown value\(s\) \['torque'\]",
        ),
        (
            {"streams": [{"topic": "/o", "type": "std_msgs/msg/Float32MultiArray", "slice": [3, 1]}]},
            r"slice: expected \[start, stop\] with 0 <= start < stop, got \[3, 1\]",
        ),
        (
            {"streams": [{"topic": "/o", "type": "std_msgs/msg/Float32MultiArray", "size": 2, "slice": [0, 2]}]},
            "give exactly one of 'size: N'",
        ),
        (
            {"streams": [{"topic": "o", "type": "std_msgs/msg/Float32MultiArray", "size": 2}]},
            "expected an absolute topic name",
        ),
        ({"streams": OK_OBS["streams"] * 2}, r"topic\(s\) \['/o'\] listed more than once"),
        ({"max_age_s": -1, **OK_OBS}, r"observation\.max_age_s: expected a positive number of seconds, got -1"),
        ({"streams": [], "max_age_s": 0.1}, "expected a non-empty list of streams"),
        (
            {"streams": [{"topic": "/o", "type": "geometry_msgs/msg/PoseStamped", "size": 3}]},
            r"unknown key\(s\) \['size'\] for geometry_msgs/msg/PoseStamped",
        ),
        ({"stream": []}, r"observation: unknown key\(s\) \['stream'\]"),
    ],
)
def test_invalid_spec_yaml_names_the_key_and_what_was_expected(tmp_path, obs, match):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"observation": obs, "action": OK_ACT}))
    with pytest.raises(SpecError, match=match) as info:
        load_spec(path)
    assert str(path) in str(info.value)


def test_unparseable_or_incomplete_yaml_is_a_spec_error(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("observation: [unclosed")
    with pytest.raises(SpecError, match="is not valid YAML"):
        load_spec(p)
    p.write_text("observation: {}\n")
    with pytest.raises(SpecError, match="missing 'action'"):
        load_spec(p)
    with pytest.raises(SpecError, match=r"topic\(s\) \['/o'\] appear in both"):
        spec_from_dict({"observation": OK_OBS, "action": OK_OBS})
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path / "missing.yaml")


def test_aligner_returns_nearest_earlier_fresh_sample_per_topic():
    al = StreamAligner(["/a", "/b"], max_age_s=0.1)
    assert al.get(0) is None and al.stale(0) == {"/a": "no sample yet", "/b": "no sample yet"}
    al.push("/a", 100_000_000, "a0")
    al.push("/a", 200_000_000, "a1")
    al.push("/b", 150_000_000, "b0")
    al.push("/a", 120_000_000, "a-late")  # out of order: slotted in by stamp
    assert al.get(199_999_999) == ["a-late", "b0"]
    assert al.get(200_000_000) == ["a1", "b0"]  # equal stamps count as earlier
    assert al.get(260_000_000) is None  # b0 is 0.11 s old
    assert "0.110s old (max_age 0.100s)" in al.stale(260_000_000)["/b"]
    with pytest.raises(KeyError, match="'/c' is not aligned here"):
        al.push("/c", 0, None)


@settings(max_examples=40, deadline=None)
@given(
    streams=st.lists(st.lists(st.integers(0, 2000), max_size=30), min_size=1, max_size=3),
    triggers=st.lists(st.integers(0, 2200), min_size=1, max_size=30),
    max_age=st.integers(1, 500),
)
def test_batch_alignment_matches_streaming_alignment(streams, triggers, max_age):
    stamps = [np.unique(np.array(s, dtype=np.int64)) for s in streams]
    topics = [f"/t{k}" for k in range(len(stamps))]
    al = StreamAligner(topics, max_age_s=max_age / 1e9, history=10_000)
    for t, sts in zip(topics, stamps):
        for s in sts.tolist():
            al.push(t, s, (t, s))
    idx, valid = StreamAligner.align(np.array(triggers), stamps, max_age)
    for row, trig in enumerate(triggers):
        got = al.get(trig)
        assert (got is not None) == bool(valid[row].all())
        if got is not None:
            assert [g[1] for g in got] == [int(stamps[k][idx[row, k]]) for k in range(len(stamps))]


def test_g1_position_commands_round_trip_as_float64_arrays(typestore):
    spec = load_spec(CONFIG / "spec_g1.yaml")
    (stream,) = spec.action.streams
    assert stream.type == "std_msgs/msg/Float64MultiArray"
    vec = np.linspace(-1, 1, spec.act_dim).astype(np.float32)
    msgs = spec.action.encode(vec, rosbags_classes(typestore))
    (msg,) = msgs.values()
    assert msg.data.dtype == np.float64
    np.testing.assert_array_equal(msg.data[[0, -1]], [stream.low[0], stream.high[-1]])  # -1 -> low, 1 -> high (rad)
    wire = typestore.deserialize_cdr(typestore.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)
    np.testing.assert_array_equal(spec.action.decode({stream.topic: wire}), vec)
