"""The G1's ros2_control interfaces (config/spec_g1.yaml, spec_g1_camera.yaml, g1_controllers.yaml)
against the simulator's observation/action layout, the Image codec against rosbags' message classes,
and a G1-shaped rosbag2 bag (Float64 joint commands, JointState, PoseStamped, Image) through import
into the store and export again, value for value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from lifelong_ros.experience.store import ExperienceStore
from lifelong_ros.ros_io.bag import export_bag, import_bag
from lifelong_ros.ros_io.codecs import IMAGE, SpecError
from lifelong_ros.ros_io.spec import ImageStream, load_spec, rosbags_classes, spec_from_dict

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
SPEC = load_spec(CONFIG / "spec_g1.yaml")
CAMERA_SPEC = load_spec(CONFIG / "spec_g1_camera.yaml")


@pytest.fixture(scope="module")
def ts():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_JAZZY)


@pytest.fixture(scope="module")
def g1():
    pytest.importorskip("mujoco", reason="the G1 simulator needs mujoco (the `sim` extra)")
    from lifelong_ros.sim.humanoid.env import G1Sim

    try:
        return G1Sim("g1-lift")
    except ImportError as exc:
        pytest.skip(f"the G1 model is not installed: {exc}")


# ------------------------------------------------------------------------------------ the spec files
def test_g1_spec_matches_the_simulators_layout_and_command_ranges(g1):
    from lifelong_ros.sim.humanoid.env import ACT_DIM, OBS_DIM
    from lifelong_ros.sim.humanoid.scene import COMMANDED_JOINTS

    assert (SPEC.obs_dim, SPEC.act_dim) == (OBS_DIM, ACT_DIM)
    joints, pose, target, extents, hand = SPEC.observation.streams
    assert joints.joints == COMMANDED_JOINTS and joints.fields == ("position", "velocity")
    (cmd,) = SPEC.action.streams
    assert cmd.topic == "/forward_position_controller/commands" and cmd.type == "std_msgs/msg/Float64MultiArray"
    np.testing.assert_array_equal(cmd.low, g1.ix.low)  # the spec's range is the simulator's command range
    np.testing.assert_array_equal(cmd.high, g1.ix.high)
    # an observation published through the spec reads back as the simulator's own vector
    obs = g1.reset(12)
    for _ in range(3):
        obs, *_ = g1.step(np.linspace(-0.5, 0.5, ACT_DIM))
    msgs = SPEC.observation.encode(obs, rosbags_classes())
    np.testing.assert_array_equal(SPEC.observation.decode(msgs), obs)
    _, quat = g1.object_pose()  # the PoseStamped carries ROS's x y z w; the vector has MuJoCo's w x y z
    q = msgs[pose.topic].pose.orientation
    np.testing.assert_allclose([q.w, q.x, q.y, q.z], quat, atol=1e-7)
    np.testing.assert_allclose(msgs[target.topic].pose.position.x, g1.variation.target[0], atol=1e-7)
    assert msgs[extents.topic].data.shape == (3,)
    hand_pos = msgs[hand.topic].pose.position  # the hand's grasp point, as TF would report it
    np.testing.assert_allclose([hand_pos.x, hand_pos.y, hand_pos.z], g1.grasp_point(), atol=1e-6)
    # a command in radians reaches the same joint targets the simulator computes from the action
    action = np.linspace(-1, 1, ACT_DIM).astype(np.float32)
    rad = SPEC.action.encode(action, rosbags_classes())[cmd.topic].data
    np.testing.assert_allclose(rad, g1.ix.to_target(action), rtol=0, atol=1e-12)


def test_controller_joints_are_the_commands_order():
    params = yaml.safe_load((CONFIG / "g1_controllers.yaml").read_text())
    joints = params["forward_position_controller"]["ros__parameters"]["joints"]
    assert tuple(joints) == SPEC.observation.streams[0].joints
    assert len(joints) == SPEC.act_dim


def test_camera_spec_is_the_g1_spec_plus_the_image():
    assert CAMERA_SPEC.observation.streams[:-1] == SPEC.observation.streams
    assert CAMERA_SPEC.action == SPEC.action
    image = CAMERA_SPEC.observation.streams[-1]
    assert isinstance(image, ImageStream) and (image.width, image.height, image.encoding) == (128, 96, "rgb8")
    assert CAMERA_SPEC.obs_dim == SPEC.obs_dim + 128 * 96 * 3


def test_every_launch_path_uses_the_same_spec_and_topics():
    params = yaml.safe_load((CONFIG / "g1.yaml").read_text())
    assert params["/**"]["ros__parameters"]["spec"] == "spec_g1.yaml"
    assert params["/**/sim_bridge"]["ros__parameters"]["robot"] == "g1"
    bridge = yaml.safe_load((CONFIG / "g1_gz_bridge.yaml").read_text())
    bridged = {b["ros_topic_name"]: b["ros_type_name"] for b in bridge}
    streams = {s.topic: s.type for s in CAMERA_SPEC.observation.streams}
    for topic, typ in bridged.items():  # what Gazebo brings in is what the spec reads, type for type
        assert topic == "/clock" or streams[topic] == typ, topic
    assert not (CONFIG / "spec_gazebo_humanoid.yaml").exists()  # one humanoid spec


def test_base_spec_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nobservation: {streams: []}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(SpecError, match="includes itself"):
        load_spec(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(SpecError, match="cannot read base"):
        load_spec(tmp_path / "c.yaml")


@pytest.mark.parametrize(
    "rng, match",
    [
        ({"low": [0.0], "high": [0.0]}, "low must be below high"),
        ({"low": [0.0, 1.0, 2.0], "high": [1.0]}, "expected one number or 2 numbers"),
        ({"low": -1.0}, "expected \\{low"),
        ({"low": [float("nan")], "high": [1.0]}, "expected one number or 2 numbers"),
    ],
)
def test_range_is_validated(rng, match):
    d = {
        "observation": {"streams": [{"topic": "/o", "type": "std_msgs/msg/Float32MultiArray", "size": 1}]},
        "action": {"streams": [{"topic": "/a", "type": "std_msgs/msg/Float64MultiArray", "size": 2, "range": rng}]},
    }
    with pytest.raises(SpecError, match=match):
        spec_from_dict(d)


def test_range_scales_every_path_alike(ts):
    d = {
        "observation": {"streams": [{"topic": "/o", "type": "std_msgs/msg/Float32MultiArray", "size": 1}]},
        "action": {
            "streams": [
                {"topic": "/a", "type": "std_msgs/msg/Float64MultiArray", "size": 2, "range": {"low": 0.0, "high": 4.0}}
            ]
        },
    }
    (s,) = spec_from_dict(d).action.streams
    assert spec_from_dict(spec_from_dict(d).to_dict()).action.streams[0] == s  # to_dict keeps the range
    vals = np.array([[-1.0, 1.0], [0.0, 0.5]], np.float32)
    raws = s.encode_cdr(vals, [1, 2])
    msg = ts.deserialize_cdr(raws[1], "std_msgs/msg/Float64MultiArray")
    np.testing.assert_array_equal(msg.data, [2.0, 3.0])
    np.testing.assert_array_equal(s.decode_cdr(raws), vals)
    np.testing.assert_array_equal(s.decode(msg), vals[1])


# ------------------------------------------------------------------------------------------ images
def _image_stream(encoding: str = "rgb8", w: int = 5, h: int = 3) -> ImageStream:
    return ImageStream(topic="/cam", type=IMAGE, width=w, height=h, encoding=encoding, frame_id="head_camera")


@pytest.mark.parametrize("encoding, channels", [("rgb8", 3), ("mono8", 1), ("bgra8", 4)])
def test_image_codec_round_trips_against_rosbags(ts, encoding, channels):
    s = _image_stream(encoding)
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (4, s.dim)).astype(np.float32)
    pixels[0, :2] = [0, 255]
    raws = s.encode_cdr(pixels, [10, 20, 30, 40])
    for raw, row in zip(raws, pixels, strict=True):
        msg = ts.deserialize_cdr(raw, IMAGE)  # rosbags reads what we write ...
        assert (msg.width, msg.height, msg.encoding, msg.step) == (5, 3, encoding, 5 * channels)
        assert msg.header.frame_id == "head_camera"
        np.testing.assert_array_equal(msg.data, row.astype(np.uint8))
        assert ts.serialize_cdr(msg, IMAGE) == raw  # ... byte for byte as it would write it
    np.testing.assert_array_equal(s.decode_cdr(raws), pixels)
    obj = s.encode(pixels[1], rosbags_classes(ts), stamp_ns=5)
    assert obj.header.stamp.nanosec == 5
    np.testing.assert_array_equal(s.decode(obj), pixels[1])


def test_image_rows_with_padding_and_wrong_images(ts):
    s = _image_stream()
    Image = ts.types[IMAGE]
    hdr = ts.types["std_msgs/msg/Header"](stamp=ts.types["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id="")
    rows = np.arange(3 * 16, dtype=np.uint8).reshape(3, 16)  # 15 bytes of pixels + 1 of padding per row
    padded = Image(header=hdr, height=3, width=5, encoding="rgb8", is_bigendian=0, step=16, data=rows.reshape(-1))
    want = rows[:, :15].reshape(-1).astype(np.float32)
    np.testing.assert_array_equal(s.decode(padded), want)
    np.testing.assert_array_equal(s.decode_cdr([ts.serialize_cdr(padded, IMAGE)])[0], want)
    other = Image(header=hdr, height=3, width=5, encoding="mono8", is_bigendian=0, step=5, data=np.zeros(15, np.uint8))
    with pytest.raises(SpecError, match="Image on /cam is 5x3 mono8; the spec expects 5x3 rgb8"):
        s.decode_cdr([ts.serialize_cdr(other, IMAGE)])
    with pytest.raises(SpecError, match="pixel values must lie in 0..255"):
        s.encode_cdr(np.full((1, s.dim), 256.0), [0])
    with pytest.raises(SpecError, match="an image has no range"):
        spec_from_dict(
            {
                "observation": {
                    "streams": [{"topic": "/c", "type": IMAGE, "width": 2, "height": 2, "range": {"low": 0, "high": 1}}]
                },
                "action": {"streams": [{"topic": "/a", "type": "std_msgs/msg/Float64MultiArray", "size": 1}]},
            }
        )


# --------------------------------------------------------------------------- a G1 bag, there and back
def _write_g1_bag(path: Path, ts, n: int, storage: str) -> dict[str, list[bytes]]:
    """A bag as a G1 robot (or sim_bridge) records it: JointState, PoseStamped x2, Float64MultiArray
    extents, a 10 Hz head camera, and Float64 commands in radians, written by rosbags' own serializer."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    classes = rosbags_classes(ts)
    rng = np.random.default_rng(7)
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3)
    streams = [*CAMERA_SPEC.observation.streams, *CAMERA_SPEC.action.streams]
    written: dict[str, list[bytes]] = {s.topic: [] for s in streams}
    with writer:
        conns = {s.topic: writer.add_connection(s.topic, s.type, typestore=ts) for s in streams}
        image = CAMERA_SPEC.observation.streams[-1]
        for k in range(n):
            t = 1_000_000_000 + k * 20_000_000  # 50 Hz
            obs = rng.uniform(-1, 1, SPEC.obs_dim).astype(np.float32)
            msgs = SPEC.observation.encode(obs, classes, t)
            if k % 5 == 0:  # the camera at 10 Hz
                pixels = rng.integers(0, 256, image.dim).astype(np.uint8)
                msgs[image.topic] = image.encode(pixels, classes, t)
            # commands as a controller gets them: radians of a float32 policy action
            act = rng.uniform(-1, 1, SPEC.act_dim).astype(np.float32)
            msgs.update(SPEC.action.encode(act, classes, t))
            for topic, msg in msgs.items():
                raw = bytes(ts.serialize_cdr(msg, msg.__msgtype__))
                written[topic].append(raw)
                writer.write(conns[topic], t + (1000 if topic in SPEC.action.topics else 0), raw)
    return written


def _read(path: Path) -> dict[str, list[bytes]]:
    from rosbags.rosbag2 import Reader

    out: dict[str, list[bytes]] = {}
    with Reader(path) as r:
        for conn, _, raw in r.messages():
            out.setdefault(conn.topic, []).append(bytes(raw))
    return out


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_g1_bag_imports_and_exports_with_identical_values(tmp_path, ts, storage):
    n = 40
    src = tmp_path / "g1_src"
    _write_g1_bag(src, ts, n, storage)
    for spec, name in ((SPEC, "g1"), (CAMERA_SPEC, "g1cam")):
        store = ExperienceStore(tmp_path / f"{name}.sqlite3", spec.obs_dim, spec.act_dim)
        report = import_bag(src, store, spec, task="g1-lift")
        assert report.steps == n, report.summary()
        out = tmp_path / f"{name}_out"
        export_bag(store, out, spec, storage=storage)
        store2 = ExperienceStore(tmp_path / f"{name}2.sqlite3", spec.obs_dim, spec.act_dim)
        assert import_bag(out, store2, spec, source=None).steps == n
        a, b = store.task_arrays("g1-lift", split="all"), store2.task_arrays("g1-lift", split="all")
        assert len(a) == len(b) == n
        np.testing.assert_array_equal(a.obs, b.obs)
        np.testing.assert_array_equal(a.action, b.action)
        # value for value in the messages' own types: the commands' float64 radians, the joint states,
        # the poses, and (camera spec) the images, at every step of the exported bag
        original, exported = _read(src), _read(out)
        for s in (*spec.observation.streams, *spec.action.streams):
            got = [ts.deserialize_cdr(r, s.type) for r in exported[s.topic]]
            if s.type == IMAGE:
                frames = [ts.deserialize_cdr(r, s.type) for r in original[s.topic]]
                for k, msg in enumerate(got):  # each step carries the newest frame at or before it
                    np.testing.assert_array_equal(msg.data, frames[k // 5].data)
                continue
            want = [ts.deserialize_cdr(r, s.type) for r in original[s.topic]]
            assert len(got) == len(want) == n
            for g, w in zip(got, want, strict=True):
                if s.type == "std_msgs/msg/Float64MultiArray":
                    assert g.data.dtype == np.float64
                    np.testing.assert_array_equal(g.data, w.data)
                elif s.type == "sensor_msgs/msg/JointState":
                    assert list(g.name) == list(w.name)
                    np.testing.assert_array_equal(g.position, w.position)
                    np.testing.assert_array_equal(g.velocity, w.velocity)
                else:
                    np.testing.assert_array_equal(
                        [g.pose.position.x, g.pose.position.y, g.pose.position.z, g.pose.orientation.w],
                        [w.pose.position.x, w.pose.position.y, w.pose.position.z, w.pose.orientation.w],
                    )
