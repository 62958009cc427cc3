"""Message codecs against `rosbags`: for every supported type our CDR and rosbags' agree bit for bit in both
directions and through message objects, and Float64MultiArray bags (ros2_control commands) keep float64."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong_ros.experience.store import ExperienceStore
from lifelong_ros.ros_io import bag as B
from lifelong_ros.ros_io.codecs import (
    FLOAT32_ARRAY,
    FLOAT64_ARRAY,
    JOINT_FIELDS,
    JOINT_STATE,
    POSE_STAMPED,
    SpecError,
    codec_for,
    header_stamps_ns,
    jazzy_typestore,
)
from lifelong_ros.ros_io.spec import ArrayStream, JointStateStream, PoseStream, rosbags_classes, spec_from_dict

STREAMS = [
    JointStateStream(
        topic="/js", type=JOINT_STATE, joints=("b", "a", "c"), fields=("effort", "position"), frame_id="base"
    ),
    PoseStream(topic="/pose", type=POSE_STAMPED, fields=("orientation", "position"), frame_id="map"),
    ArrayStream(topic="/f32", type=FLOAT32_ARRAY, start=0, stop=5, exact=True),
    ArrayStream(topic="/f32s", type=FLOAT32_ARRAY, start=2, stop=5, exact=False),
    ArrayStream(topic="/f64", type=FLOAT64_ARRAY, start=0, stop=5, exact=True),
    ArrayStream(topic="/f64s", type=FLOAT64_ARRAY, start=2, stop=5, exact=False),
]
STREAM_IDS = [s.topic.strip("/") for s in STREAMS]
# float64 values float32 cannot hold (0.1, 1e-300, subnormals, 2**53 - 1), and float32 edge values
TRICKY = {
    8: [0.1, 1e-300, -1.25, 1 / 3, 5e-324, -0.0, 9007199254740991.0, math.pi, 2.0**-1022, -123456789.123456789],
    4: [0.1, 1e-45, -1.25, 1 / 3, -0.0, 3.4028234663852886e38, math.pi, 2.0**-126, 16777217.0, -7.5e-39],
}
STAMPS = [0, 1_700_000_000_123_456_789, 5_000_000_001, 2**31 * 10**9 - 1]


@pytest.fixture(scope="module")
def ts():
    return jazzy_typestore()


def _values(stream, rows: int, seed: int = 0) -> np.ndarray:
    """[rows, dim] in the message's element type: tricky values first, then random ones."""
    dtype = codec_for(stream.type).dtype
    rng = np.random.default_rng(seed)
    pool = np.r_[TRICKY[dtype.itemsize], rng.standard_normal(rows * stream.dim)]
    return pool[: rows * stream.dim].reshape(rows, stream.dim).astype(dtype)


def assert_bits_equal(got, want) -> None:
    got, want = np.ascontiguousarray(got), np.ascontiguousarray(want)
    assert (got.dtype, got.shape) == (want.dtype, want.shape)
    np.testing.assert_array_equal(got.view(f"u{got.dtype.itemsize}"), want.view(f"u{want.dtype.itemsize}"))


def _header(ts, stamp_ns: int, frame_id: str = ""):
    T = ts.types
    stamp = T["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
    return T["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)


def _rosbags_msg(ts, stream, row: np.ndarray, stamp: int, variant: int):
    """A rosbags message carrying ``row`` where ``stream`` selects it, built field by field (not by our codecs).
    ``variant`` varies what the selection ignores: joint order and extra joints, frame id, array layout."""
    T = ts.types
    if stream.type == JOINT_STATE:
        k = len(stream.joints)
        names = list(stream.joints[variant % k :] + stream.joints[: variant % k]) + ["extra"] * (variant % 2)
        arrays = {}
        for f in JOINT_FIELDS:
            if f in stream.fields:
                block = row[stream.fields.index(f) * k :][:k]
                arrays[f] = np.array([block[stream.joints.index(n)] if n != "extra" else 99.5 for n in names])
            else:
                arrays[f] = np.full(len(names) * (variant % 3 == 0), -2.5)
        return T[JOINT_STATE](header=_header(ts, stamp, "f" * variant), name=names, **arrays)
    if stream.type == POSE_STAMPED:
        full = {"position": [0.0, 0.0, 0.0], "orientation": [0.0, 0.0, 0.0, 1.0]}
        at = 0
        for f in stream.fields:
            full[f] = row[at : at + len(full[f])].tolist()
            at += len(full[f])
        pose = T["geometry_msgs/msg/Pose"](
            position=T["geometry_msgs/msg/Point"](**dict(zip("xyz", full["position"], strict=True))),
            orientation=T["geometry_msgs/msg/Quaternion"](**dict(zip("xyzw", full["orientation"], strict=True))),
        )
        return T[POSE_STAMPED](header=_header(ts, stamp, "p" * variant), pose=pose)
    dim_cls = T["std_msgs/msg/MultiArrayDimension"]
    dims = [dim_cls(label="l" * (i + variant), size=i, stride=3) for i in range(variant % 3)]
    data = np.full(stream.stop + (0 if stream.exact else variant), 4.25, dtype=codec_for(stream.type).dtype)
    data[stream.start : stream.stop] = row
    return T[stream.type](layout=T["std_msgs/msg/MultiArrayLayout"](dim=dims, data_offset=variant), data=data)


def _read_back(stream, msg) -> np.ndarray:
    """The selected values of a rosbags message our encoder wrote, checking the fields it must have left as
    written: joint names in spec order and unselected fields empty, identity orientation, zero padding."""
    if stream.type == JOINT_STATE:
        assert list(msg.name) == list(stream.joints)
        assert all(len(getattr(msg, f)) == 0 for f in JOINT_FIELDS if f not in stream.fields)
        assert msg.header.frame_id == stream.frame_id
        return np.concatenate([getattr(msg, f) for f in stream.fields])
    if stream.type == POSE_STAMPED:
        p, q = msg.pose.position, msg.pose.orientation
        parts = {"position": [p.x, p.y, p.z], "orientation": [q.x, q.y, q.z, q.w]}
        assert msg.header.frame_id == stream.frame_id
        return np.array([v for f in stream.fields for v in parts[f]], dtype=np.float64)
    assert msg.data.dtype == codec_for(stream.type).dtype and msg.data.shape == (stream.stop,)
    assert not msg.data[: stream.start].any() and msg.layout.dim == []
    return msg.data[stream.start :]


# --------------------------------------------------------------------------------------- raw CDR
@pytest.mark.parametrize("stream", STREAMS, ids=STREAM_IDS)
def test_our_cdr_is_rosbags_cdr_and_reads_back_bit_exact(ts, stream):
    codec = codec_for(stream.type)
    rows = _values(stream, len(STAMPS))
    raws = stream.encode_cdr(rows, STAMPS)
    for raw, row, stamp in zip(raws, rows, STAMPS, strict=True):
        msg = ts.deserialize_cdr(raw, stream.type)
        assert bytes(ts.serialize_cdr(msg, stream.type)) == raw  # same layout, padding and all
        assert_bits_equal(_read_back(stream, msg), row)
        if codec.has_header:
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == divmod(stamp, 10**9)
    assert_bits_equal(codec.decode_cdr(raws, stream), rows)
    if codec.has_header:
        np.testing.assert_array_equal(header_stamps_ns(raws), STAMPS)


@pytest.mark.parametrize("stream", STREAMS, ids=STREAM_IDS)
def test_rosbags_cdr_decodes_bit_exact_in_every_layout_and_byte_order(ts, stream):
    rows = _values(stream, 12, seed=1)
    msgs = [_rosbags_msg(ts, stream, row, STAMPS[v % 4], v) for v, row in enumerate(rows)]
    raws = [bytes(ts.serialize_cdr(m, stream.type, little_endian=v % 5 != 4)) for v, m in enumerate(msgs)]
    assert len({len(r) for r in raws}) > 1 and any(r[1] == 0 for r in raws)  # several layouts, some big endian
    assert_bits_equal(codec_for(stream.type).decode_cdr(raws, stream), rows)
    assert_bits_equal(stream.decode_cdr(raws), rows.astype(np.float32))  # what the store gets


@pytest.mark.parametrize("stream", STREAMS, ids=STREAM_IDS)
def test_message_objects_convert_bit_exact_and_serialize_like_our_cdr(ts, stream):
    codec = codec_for(stream.type)
    classes = rosbags_classes(ts)
    given64 = _values(stream, 3, seed=2).astype(np.float64)  # float32 streams round these once, on the way in
    want = given64.astype(codec.dtype)
    for row, expect, stamp in zip(given64, want, STAMPS, strict=False):
        msg = stream.encode(row, classes, stamp)
        assert type(msg) is classes(stream.type)
        assert_bits_equal(_read_back(stream, msg), expect)
        assert_bits_equal(codec.to_vector(msg, stream), expect)
        assert_bits_equal(stream.decode(msg), expect.astype(np.float32))
        assert bytes(ts.serialize_cdr(msg, stream.type)) == stream.encode_cdr(row[None], [stamp])[0]


def test_float64_multi_array_is_eight_byte_aligned_float64_on_the_wire(ts):
    stream = ArrayStream(topic="/cmd", type=FLOAT64_ARRAY, start=0, stop=3, exact=True)
    (raw,) = stream.encode_cdr(np.array([[0.5, -1.25, 2.0]]), [0])
    # header, empty dims, data_offset, length 3, 4 pad bytes (payload offset 12 -> 16), 3 float64
    assert len(raw) == 44 and raw[16:20] == b"\0\0\0\0"
    np.testing.assert_array_equal(np.frombuffer(raw, "<f8", 3, 20), [0.5, -1.25, 2.0])
    assert ts.deserialize_cdr(raw, FLOAT64_ARRAY).data.tolist() == [0.5, -1.25, 2.0]


NAMES = ["shoulder", "elbow", "wrist", "gripper_finger_joint"]


@settings(max_examples=30, deadline=None)
@given(
    msgs=st.lists(
        st.tuples(
            st.permutations(NAMES),
            st.text(alphabet="abcxyz_/", max_size=9),
            st.lists(st.booleans(), min_size=3, max_size=3),
            st.integers(0, 2**31 * 10**9 - 1),
        ),
        min_size=1,
        max_size=12,
    ),
    seed=st.integers(0, 1000),
)
def test_joint_state_codec_matches_rosbags_on_mixed_layouts(msgs, seed):
    ts = jazzy_typestore()
    codec = codec_for(JOINT_STATE)
    rng = np.random.default_rng(seed)
    stream = JointStateStream(
        topic="/js", type=JOINT_STATE, joints=("wrist", "shoulder"), fields=("position", "effort")
    )
    raws, expected = [], []
    for names, frame, present, stamp in msgs:
        present[0] = present[2] = True  # the spec needs position and effort
        fields = tuple(f for f, p in zip(JOINT_FIELDS, present, strict=True) if p)
        arrays = {f: (rng.standard_normal(4) if f in fields else np.zeros(0)) for f in JOINT_FIELDS}
        obj = ts.types[JOINT_STATE](header=_header(ts, stamp, frame), name=list(names), **arrays)
        ref = bytes(ts.serialize_cdr(obj, JOINT_STATE))
        writer = JointStateStream(topic="/js", type=JOINT_STATE, joints=tuple(names), fields=fields, frame_id=frame)
        assert writer.encode_cdr(np.concatenate([arrays[f] for f in fields])[None], [stamp]) == [ref]
        raws.append(ref)
        expected.append(codec.to_vector(ts.deserialize_cdr(ref, JOINT_STATE), stream))
    assert_bits_equal(codec.decode_cdr(raws, stream), np.array(expected))
    np.testing.assert_array_equal(header_stamps_ns(raws), [m[3] for m in msgs])


def test_codec_errors_name_the_value_and_what_was_expected(ts):
    with pytest.raises(SpecError, match=r"no codec for message type 'nav_msgs/Odometry'; supported: \['sensor_msgs"):
        codec_for("nav_msgs/Odometry")
    assert codec_for("std_msgs/Float64MultiArray") is codec_for(FLOAT64_ARRAY)
    stream = ArrayStream(topic="/cmd", type=FLOAT64_ARRAY, start=0, stop=3, exact=True)
    with pytest.raises(SpecError, match=r"/cmd: values have shape \(2, 2\); expected \(messages, 3\)"):
        stream.encode_cdr(np.zeros((2, 2)), [0, 1])
    with pytest.raises(SpecError, match="/cmd: 1 stamps for 2 rows of values"):
        stream.encode_cdr(np.zeros((2, 3)), [0])
    with pytest.raises(SpecError, match="/cmd: got 2 values; the spec maps 3 values to this topic"):
        stream.encode(np.zeros(2), rosbags_classes(ts))
    (raw,) = stream.encode_cdr(np.zeros((1, 3)), [0])
    with pytest.raises(ValueError, match="Float64MultiArray claims 3 values but the message has 40 bytes"):
        stream.decode_cdr([raw[:-4]])
    four = ArrayStream(topic="/cmd", type=FLOAT64_ARRAY, start=0, stop=4, exact=True)
    with pytest.raises(SpecError, match="Float64MultiArray on /cmd has 3 values; the spec expects exactly 4"):
        four.decode_cdr([raw])


# ------------------------------------------------------------------------------------------ bags
HUMANOID_LIKE = {  # a humanoid with Float64 commands (as config/spec_g1.yaml), small
    "observation": {
        "streams": [
            {"topic": "/joint_states", "type": JOINT_STATE, "joints": ["knee", "hip"], "fields": ["position", "effort"]}
        ]
    },
    "action": {"streams": [{"topic": "/effort_controller/commands", "type": FLOAT64_ARRAY, "size": 3}]},
}


def _bag_raws(path: Path) -> dict[str, list[bytes]]:
    from rosbags.rosbag2 import Reader

    out: dict[str, list[bytes]] = {}
    with Reader(path) as r:
        for conn, _, raw in r.messages():
            out.setdefault(conn.topic, []).append(raw)
    return out


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_float64_actions_export_as_float64_and_import_bit_exact(tmp_path, ts, storage):
    spec = spec_from_dict(HUMANOID_LIKE)
    n = 30
    rng = np.random.default_rng(4)
    act = rng.standard_normal((n, 3)).astype(np.float32)
    act[:2] = [[0.1, -1.25, 1e-45], [3.4028235e38, -0.0, 1 / 3]]  # float32 extremes: subnormal, max, -0
    obs = rng.standard_normal((n, 4)).astype(np.float32)
    with ExperienceStore(tmp_path / "src.sqlite3", 4, 3, heldout_fraction=0.0) as src:
        src.append("walk", "ep0", np.arange(n), obs, act, stamp_ns=10**9 + np.arange(n) * 10**7)
        B.export_bag(src, tmp_path / "out", spec, storage=storage)
    raws = _bag_raws(tmp_path / "out")["/effort_controller/commands"]
    assert {len(r) for r in raws} == {20 + 8 * 3}  # float64 elements, 8-byte aligned
    wire = np.stack([ts.deserialize_cdr(r, FLOAT64_ARRAY).data for r in raws])
    assert_bits_equal(wire, act.astype(np.float64))
    with ExperienceStore(tmp_path / "dst.sqlite3", 4, 3, heldout_fraction=0.0) as dst:
        rep = B.import_bag(tmp_path / "out", dst, spec, source=None)
        assert rep.steps == n and not rep.dropped
        got = dst.task_arrays("walk", split="all")
        assert_bits_equal(got.action, act)
        assert_bits_equal(got.obs, obs)


def test_float64_bag_written_by_rosbags_imports_exact_values(tmp_path, ts):
    from rosbags.rosbag2 import StoragePlugin, Writer

    spec = spec_from_dict(
        {
            "observation": {
                "streams": [{"topic": "/features", "type": "std_msgs/msg/Float64MultiArray", "slice": [1, 3]}]
            },
            "action": {"streams": [{"topic": "/commands", "type": "std_msgs/msg/Float64MultiArray", "size": 3}]},
        }
    )
    T = ts.types
    L, Dm, F = T["std_msgs/msg/MultiArrayLayout"], T["std_msgs/msg/MultiArrayDimension"], T[FLOAT64_ARRAY]
    cmds = [[0.5, -1.25, 2.0], [0.1, 1e-300, -3.0], [1.0, 2.0, 3.0]]
    with Writer(tmp_path / "rec", version=9, storage_plugin=StoragePlugin.MCAP) as w:
        cf = w.add_connection("/features", FLOAT64_ARRAY, typestore=ts)
        cc = w.add_connection("/commands", FLOAT64_ARRAY, typestore=ts)
        for i, cmd in enumerate(cmds):
            t = 10**9 + i * 10**8
            # a labelled layout moves the data off the fast path's offsets
            feats = F(
                layout=L(dim=[Dm(label="joint" * (i + 1), size=4, stride=4)], data_offset=0),
                data=np.array([9.0, 0.25 * i, -3.5, 7.0]),
            )
            w.write(cf, t, bytes(ts.serialize_cdr(feats, FLOAT64_ARRAY)))
            command = F(layout=L(dim=[], data_offset=0), data=np.array(cmd))
            w.write(cc, t + 10**6, bytes(ts.serialize_cdr(command, FLOAT64_ARRAY)))
    with ExperienceStore(tmp_path / "s.sqlite3", 2, 3, heldout_fraction=0.0) as s:
        assert B.import_bag(tmp_path / "rec", s, spec, task="t").steps == 3
        got = s.task_arrays("t", split="all")
        assert got.action[0].tolist() == [0.5, -1.25, 2.0]  # the old Float32 reading gave [0, 0, 1.75]
        assert_bits_equal(got.action, np.array(cmds, np.float32))  # 0.1, 1e-300 rounded once to float32
        assert_bits_equal(got.obs, np.array([[0.25 * i, -3.5] for i in range(3)], np.float32))
