"""rosbag2 import/export on real bags written and read with `rosbags`: export->import reproduces the
store, multi-rate streams align like a reference, and bad bags (unknown types, truncation, corrupt
messages, NaN) import nothing and say why. The CDR codecs themselves: test_codecs.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lifelong_ros.experience.store import ExperienceStore
from lifelong_ros.ros_io import bag as B
from lifelong_ros.ros_io.spec import load_spec, spec_from_dict

CONFIG = Path(__file__).resolve().parents[2] / "config"
MW = load_spec(CONFIG / "spec_metaworld.yaml")


@pytest.fixture(scope="module")
def ts():
    return B.jazzy_typestore()


def _header(ts, stamp_ns, frame_id=""):
    T = ts.types
    return T["std_msgs/msg/Header"](
        stamp=T["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=frame_id
    )


def _write_bag(path, conns, messages, storage="mcap", typestore=None):
    """conns: {topic: type}; messages: [(topic, t_ns, msg object or raw bytes)] written in order."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    typestore = typestore or B.jazzy_typestore()
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as w:
        cmap = {t: w.add_connection(t, typ, typestore=typestore) for t, typ in conns.items()}
        for topic, t, msg in messages:
            raw = msg if isinstance(msg, (bytes, bytearray)) else typestore.serialize_cdr(msg, conns[topic])
            w.write(cmap[topic], t, raw)
    return path


def _read_bag(path, ts):
    from rosbags.rosbag2 import Reader

    out = {}
    with Reader(path) as r:
        for conn, t, raw in r.messages():
            out.setdefault(conn.topic, []).append((t, ts.deserialize_cdr(raw, conn.msgtype)))
    return out


# --------------------------------------------------------------------------------- export / import
def _filled_store(path, n_eps=6, steps=50):
    s = ExperienceStore(path, 39, 4, heldout_fraction=0.3)
    rng = np.random.default_rng(1)
    for e in range(n_eps):
        task = ["reach-v3", "push-v3"][e % 2]
        s.append(
            task,
            f"ep{e}",
            np.arange(steps),
            rng.standard_normal((steps, 39)),
            rng.uniform(-1, 1, (steps, 4)),
            reward=rng.random(steps),
            done=np.arange(steps) == steps - 1,
            stamp_ns=1_700_000_000_000_000_000 + e * 10**9 + np.arange(steps) * 10**7,
            source=["demonstration", "policy", "correction"][e % 3],
            label=f"lbl{e}" if e % 2 else None,
        )
    return s


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_export_then_import_reproduces_the_store_and_rosbags_reads_it(tmp_path, ts, storage):
    src = _filled_store(tmp_path / "src.sqlite3")
    rep = B.export_bag(src, tmp_path / "out", MW, storage=storage)
    assert rep.records == 300 and rep.messages == 900
    # rosbags reads back exactly what is stored
    msgs = _read_bag(tmp_path / "out", ts)
    every = np.concatenate([src.task_arrays(t, split="all").stamp_ns for t in src.tasks()])
    order = np.argsort(every)
    obs_all = np.concatenate([src.task_arrays(t, split="all").obs for t in src.tasks()])[order]
    assert [t for t, _ in msgs["/lifelong_ros/observation"]] == every[order].tolist()
    np.testing.assert_array_equal(np.stack([m.data for _, m in msgs["/lifelong_ros/observation"]]), obs_all)
    info = json.loads(msgs["/lifelong_ros/experience"][0][1].data)
    assert set(info) == {"task", "episode", "step", "reward", "done", "source", "label"}
    # import reproduces every field
    with ExperienceStore(tmp_path / "dst.sqlite3", 39, 4, heldout_fraction=0.3) as dst:
        r = B.import_bag(tmp_path / "out", dst, MW, source=None)
        assert r.steps == 300 and not r.dropped
        for task in src.tasks():
            a, b = src.task_arrays(task, split="all"), dst.task_arrays(task, split="all")
            for field in ("obs", "action", "task", "episode", "step", "reward", "done", "stamp_ns", "source", "label"):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
            # same seed and fraction: the same episodes are held out
            assert {e.episode: e.split for e in src.episodes(task)} == {e.episode: e.split for e in dst.episodes(task)}
    src.close()


def test_export_refuses_duplicate_stamps_unless_retimed(tmp_path):
    with ExperienceStore(tmp_path / "s.sqlite3", 39, 4) as s:
        s.append("t", 0, np.arange(10), np.zeros((10, 39)), np.zeros((10, 4)), stamp_ns=123)
        with pytest.raises(B.BagExportError, match="share the stamp 123 ns.*retime_hz"):
            B.export_bag(s, tmp_path / "dup", MW)
        assert not (tmp_path / "dup").exists()
        rep = B.export_bag(s, tmp_path / "ok", MW, retime_hz=100.0)
        assert rep.records == 10
        with pytest.raises(B.BagExportError, match="exists already"):
            B.export_bag(s, tmp_path / "ok", MW, retime_hz=100.0)


ARM = {
    "observation": {
        "max_age_s": 0.05,
        "streams": [
            {
                "topic": "/joint_states",
                "type": "sensor_msgs/msg/JointState",
                "joints": ["elbow", "shoulder"],
                "fields": ["position", "velocity"],
            },
            {"topic": "/ee_pose", "type": "geometry_msgs/msg/PoseStamped", "fields": ["position"]},
            {"topic": "/features", "type": "std_msgs/msg/Float32MultiArray", "slice": [1, 3]},
        ],
    },
    "action": {
        "max_age_s": 0.05,
        "streams": [
            {
                "topic": "/cmd",
                "type": "sensor_msgs/msg/JointState",
                "joints": ["shoulder", "elbow"],
                "fields": ["velocity"],
            }
        ],
    },
}


def _robot_bag(path, ts, storage="mcap", header_offset_ns=0):
    """A 3 s recording: joints at 100 Hz (jittered), pose at 30 Hz with a 0.5 s dropout, features
    at 50 Hz, commands at 10 Hz. Returns the bag and, per topic, (log stamps, header stamps, vectors)."""
    T = ts.types
    rng = np.random.default_rng(7)
    t0 = 1_700_000_000 * 10**9
    msgs, truth = [], {}

    def add(topic, stamps, make):
        rows = []
        for t in stamps:
            hdr = int(t) - header_offset_ns
            msg, vec = make(hdr)
            msgs.append((topic, int(t), msg))
            rows.append(vec)
        log = np.asarray(stamps, np.int64)
        hdr = log if topic == "/features" else log - header_offset_ns  # Float32MultiArray has no header
        truth[topic] = (log, hdr, np.array(rows, np.float32))

    def joints(hdr):
        pos, vel = rng.standard_normal(3), rng.standard_normal(3)
        m = T["sensor_msgs/msg/JointState"](
            header=_header(ts, hdr), name=["shoulder", "elbow", "wrist"], position=pos, velocity=vel, effort=np.zeros(0)
        )
        return m, [pos[1], pos[0], vel[1], vel[0]]

    def pose(hdr):
        v = rng.standard_normal(3)
        m = T["geometry_msgs/msg/PoseStamped"](
            header=_header(ts, hdr, "base"),
            pose=T["geometry_msgs/msg/Pose"](
                position=T["geometry_msgs/msg/Point"](x=v[0], y=v[1], z=v[2]),
                orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
            ),
        )
        return m, v

    def feats(hdr):
        d = rng.standard_normal(4).astype(np.float32)
        return T["std_msgs/msg/Float32MultiArray"](
            layout=T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0), data=d
        ), d[1:3]

    def cmd(hdr):
        v = rng.standard_normal(2)
        m = T["sensor_msgs/msg/JointState"](
            header=_header(ts, hdr), name=["shoulder", "elbow"], position=np.zeros(0), velocity=v, effort=np.zeros(0)
        )
        return m, v

    add("/joint_states", t0 + np.arange(300) * 10**7 + rng.integers(0, 2 * 10**6, 300), joints)
    pose_t = t0 + np.arange(90) * 33_333_333
    add("/ee_pose", pose_t[(pose_t < t0 + 1_200_000_000) | (pose_t > t0 + 1_700_000_000)], pose)
    add("/features", t0 + 5 * 10**6 + np.arange(150) * 2 * 10**7, feats)
    add("/cmd", t0 + 3 * 10**6 + np.arange(30) * 10**8, cmd)
    msgs.sort(key=lambda m: m[1])
    conns = {
        "/joint_states": "sensor_msgs/msg/JointState",
        "/ee_pose": "geometry_msgs/msg/PoseStamped",
        "/features": "std_msgs/msg/Float32MultiArray",
        "/cmd": "sensor_msgs/msg/JointState",
        "/camera/info": "std_msgs/msg/String",
    }
    msgs.append(("/camera/info", t0, T["std_msgs/msg/String"](data="ignored")))
    _write_bag(path, conns, msgs, storage)
    return truth


def _reference_alignment(truth, spec, use_header):
    """The obvious per-step loop: for each command, the latest sample of each stream at or before it."""
    col = 1 if use_header else 0
    clock = truth["/cmd"][col]
    obs, act, stamps, dropped = [], [], [], {}
    for i, t in enumerate(clock.tolist()):
        parts = []
        for s in spec.observation.streams:
            st_, vals = truth[s.topic][col], truth[s.topic][2]
            earlier = [k for k in range(len(st_)) if st_[k] <= t]
            if not earlier or t - st_[earlier[-1]] > spec.observation.max_age_s * 1e9:
                key = f"{s.topic} missing or older than {spec.observation.max_age_s}s"
                dropped[key] = dropped.get(key, 0) + 1
                break
            parts.append(vals[earlier[-1]])
        else:
            obs.append(np.concatenate(parts))
            act.append(truth["/cmd"][2][i])
            stamps.append(t)
    return np.array(obs, np.float32), np.array(act, np.float32), np.array(stamps), dropped


@pytest.mark.parametrize("time_source", ["log", "header"])
def test_import_aligns_multirate_streams_like_the_reference_loop(tmp_path, ts, time_source):
    spec = spec_from_dict(ARM)
    truth = _robot_bag(tmp_path / "robot", ts, header_offset_ns=2_000_000 if time_source == "header" else 0)
    exp_obs, exp_act, exp_t, exp_dropped = _reference_alignment(truth, spec, time_source == "header")
    assert 0 < len(exp_obs) < 30 and exp_dropped["/ee_pose missing or older than 0.05s"] >= 4  # the pose dropout
    with ExperienceStore(tmp_path / "s.sqlite3", spec.obs_dim, spec.act_dim, heldout_fraction=0.0) as s:
        r = B.import_bag(tmp_path / "robot", s, spec, task="wipe", time_source=time_source)
        assert r.steps == len(exp_obs)
        assert r.dropped == exp_dropped
        assert r.skipped_topics == {"/camera/info": "std_msgs/msg/String"}
        b = s.task_arrays("wipe")
        np.testing.assert_array_equal(b.obs, exp_obs)
        np.testing.assert_array_equal(b.action, exp_act)
        np.testing.assert_array_equal(b.stamp_ns, exp_t)
        assert set(b.source) == {"bag"} and set(b.episode) == {"robot"} and b.done.tolist()[-1]


def _mw_messages(ts, n, nan_at=None):
    T = ts.types
    F, L = T["std_msgs/msg/Float32MultiArray"], T["std_msgs/msg/MultiArrayLayout"]
    msgs = []
    for i in range(n):
        o = np.full(39, i, np.float32)
        if i == nan_at:
            o[5] = np.nan
        msgs.append(("/lifelong_ros/observation", 10**9 + i * 10**7, F(layout=L(dim=[], data_offset=0), data=o)))
        msgs.append(
            (
                "/lifelong_ros/action",
                10**9 + i * 10**7 + 10**6,
                F(layout=L(dim=[], data_offset=0), data=np.zeros(4, np.float32)),
            )
        )
    return msgs


MW_CONNS = {
    "/lifelong_ros/observation": "std_msgs/msg/Float32MultiArray",
    "/lifelong_ros/action": "std_msgs/msg/Float32MultiArray",
}


def test_unknown_message_types_are_reported_or_refused(tmp_path, ts):
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    custom = get_typestore(Stores.ROS2_JAZZY)
    custom.register(get_types_from_msg("uint8[] payload\nstring note", "acme_msgs/msg/Blob"))
    blob = custom.types["acme_msgs/msg/Blob"](payload=np.zeros(3, np.uint8), note="x")
    msgs = [*_mw_messages(ts, 5), ("/acme/blob", 10**9, blob)]
    _write_bag(tmp_path / "extra", {**MW_CONNS, "/acme/blob": "acme_msgs/msg/Blob"}, msgs, typestore=custom)
    with ExperienceStore(tmp_path / "s.sqlite3", 39, 4) as s:
        r = B.import_bag(tmp_path / "extra", s, MW, task="t")
        assert r.steps == 5 and r.skipped_topics == {"/acme/blob": "acme_msgs/msg/Blob"}
        assert "/acme/blob [acme_msgs/msg/Blob]" in r.summary()
        _write_bag(
            tmp_path / "wrong",
            {
                "/lifelong_ros/observation": "acme_msgs/msg/Blob",
                "/lifelong_ros/action": MW_CONNS["/lifelong_ros/action"],
            },
            [("/lifelong_ros/observation", 10**9, blob)],
            typestore=custom,
        )
        with pytest.raises(
            B.BagImportError,
            match="topic /lifelong_ros/observation carries message type 'acme_msgs/msg/Blob'; the spec expects 'std_msgs/msg/Float32MultiArray'",
        ):
            B.import_bag(tmp_path / "wrong", s, MW, task="t")
        _write_bag(
            tmp_path / "partial",
            {"/lifelong_ros/action": MW_CONNS["/lifelong_ros/action"]},
            [m for m in _mw_messages(ts, 3) if m[0] == "/lifelong_ros/action"],
        )
        with pytest.raises(
            B.BagImportError, match=r"has no topic\(s\) \['/lifelong_ros/observation'\] required by the spec"
        ):
            B.import_bag(tmp_path / "partial", s, MW, task="t")
        assert len(s) == 5


@pytest.mark.parametrize("storage, ext", [("mcap", "mcap"), ("sqlite3", "db3")])
def test_truncated_bag_imports_nothing_and_says_where(tmp_path, ts, storage, ext):
    _write_bag(tmp_path / "bag", MW_CONNS, _mw_messages(ts, 3000), storage)
    (f,) = (tmp_path / "bag").glob(f"*.{ext}")
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * 0.6)])
    with ExperienceStore(tmp_path / "s.sqlite3", 39, 4) as s:
        with pytest.raises(B.BagImportError, match=r"(truncated|corrupt).*nothing was imported") as info:
            B.import_bag(tmp_path / "bag", s, MW, task="t")
        assert str(tmp_path / "bag") in str(info.value)
        assert len(s) == 0


def test_corrupt_message_and_nan_values_import_nothing(tmp_path, ts):
    msgs = _mw_messages(ts, 50)
    (short,) = MW.observation.streams[0].encode_cdr(np.zeros((1, 39)), [0])
    msgs[40] = (msgs[40][0], msgs[40][1], short[:-9])  # cut short
    _write_bag(tmp_path / "corrupt", MW_CONNS, msgs)
    _write_bag(tmp_path / "nan", MW_CONNS, _mw_messages(ts, 50, nan_at=17))
    with ExperienceStore(tmp_path / "s.sqlite3", 39, 4) as s:
        with pytest.raises(
            B.BagImportError, match=r"cannot decode /lifelong_ros/observation .*claims 39 values but the message has"
        ):
            B.import_bag(tmp_path / "corrupt", s, MW, task="t")
        with pytest.raises(B.BagImportError, match=r"record 17 of 50 .*observation\[5\] = nan.*nothing was imported"):
            B.import_bag(tmp_path / "nan", s, MW, task="t")
        assert len(s) == 0
    with ExperienceStore(tmp_path / "f.sqlite3", 39, 4, nonfinite="flag") as s:
        assert B.import_bag(tmp_path / "nan", s, MW, task="t").steps == 50
        assert s.stats()["flagged_nonfinite"] == 1 and len(s.task_arrays("t", split="all")) == 49


def test_cli_import_export_and_stats(tmp_path, ts, capsys):
    from lifelong_ros.cli.main import main

    spec = str(CONFIG / "spec_metaworld.yaml")
    _write_bag(tmp_path / "rec", MW_CONNS, _mw_messages(ts, 40))
    store = str(tmp_path / "s.sqlite3")
    assert (
        main(
            [
                "import-bag",
                str(tmp_path / "rec"),
                "--spec",
                spec,
                "--store",
                store,
                "--task",
                "reach-v3",
                "--episode",
                "run1",
            ]
        )
        == 0
    )
    assert "imported 40 steps" in capsys.readouterr().out
    assert main(["store", "stats", "--store", store, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["records"] == 40 and stats["tasks"]["reach-v3"]["by_source"] == {"bag": 40}
    assert main(["store", "stats", "--store", store]) == 0
    assert "reach-v3: 40 records" in capsys.readouterr().out
    assert main(["export-bag", str(tmp_path / "exp"), "--spec", spec, "--store", store, "--storage", "sqlite3"]) == 0
    assert "wrote 40 records" in capsys.readouterr().out
    assert (
        main(["import-bag", str(tmp_path / "rec"), "--spec", spec, "--store", store]) == 2
    )  # cli/main.py's error policy: one line, exit 2
    assert "give the task name (--task)" in capsys.readouterr().err
    # importing the same bag again is a reported no-op; --again imports it a second time
    rec = ["import-bag", str(tmp_path / "rec"), "--spec", spec, "--store", store, "--task", "reach-v3"]
    assert main(rec) == 0
    assert "skipped" in capsys.readouterr().out
    assert main(["store", "stats", "--store", store, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 40
    assert main([*rec, "--episode", "run2", "--again"]) == 0
    assert "imported 40 steps" in capsys.readouterr().out
    assert main(["store", "stats", "--store", store, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 80
    assert main(["store", "stats", "--store", str(tmp_path / "nope.sqlite3")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_importing_the_same_bag_twice_is_a_reported_no_op_unless_asked_again(tmp_path, ts):
    import shutil

    _write_bag(tmp_path / "rec", MW_CONNS, _mw_messages(ts, 30))
    with ExperienceStore(tmp_path / "s.sqlite3", 39, 4) as s:
        first = B.import_bag(tmp_path / "rec", s, MW, task="reach-v3", episode="run1")
        assert first.steps == 30 and not first.skipped and len(first.content_sha256) == 64
        again = B.import_bag(tmp_path / "rec", s, MW, task="reach-v3", episode="run1")
        assert again.skipped and again.steps == 0 and again.episodes == []
        assert again.content_sha256 == first.content_sha256
        assert again.already_imported["episodes"] == ["run1"] and again.already_imported["task"] == "reach-v3"
        assert "skipped" in again.summary() and "already holds" in again.summary()
        assert len(s) == 30 and [e.records for e in s.episodes()] == [30]
        # the same messages under another name (a copied bag) are the same data
        shutil.copytree(tmp_path / "rec", tmp_path / "copy")
        assert B.import_bag(tmp_path / "copy", s, MW, task="reach-v3").skipped and len(s) == 30
        # inside one transaction (as offline learning imports several bags) the second is skipped too
        _write_bag(tmp_path / "other", MW_CONNS, _mw_messages(ts, 20))
        with s.transaction():
            reps = [B.import_bag(tmp_path / b, s, MW, task="reach-v3") for b in ("other", "other")]
        assert [r.skipped for r in reps] == [False, True] and len(s) == 50
        # explicitly again: imported a second time
        forced = B.import_bag(tmp_path / "rec", s, MW, task="reach-v3", episode="run1-again", again=True)
        assert forced.steps == 30 and not forced.skipped and len(s) == 80
    with ExperienceStore(tmp_path / "s.sqlite3", readonly=True) as r:  # the record survives reopening
        assert r.imported(first.content_sha256)["steps"] == 30


def test_a_failed_import_does_not_mark_the_bag_imported(tmp_path, ts):
    _write_bag(tmp_path / "rec", MW_CONNS, _mw_messages(ts, 10))
    with ExperienceStore(tmp_path / "s.sqlite3", 39, 4) as s:
        with pytest.raises(B.BagImportError, match="give the task name"):
            B.import_bag(tmp_path / "rec", s, MW)
        with pytest.raises(RuntimeError, match="boom"), s.transaction():
            assert B.import_bag(tmp_path / "rec", s, MW, task="t").steps == 10
            raise RuntimeError("boom")  # the outer transaction rolls back records and mark together
        assert len(s) == 0
        assert B.import_bag(tmp_path / "rec", s, MW, task="t").steps == 10
