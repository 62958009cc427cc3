"""Offline learning from rosbag2 bags (`ros2 run lifelong_ros offline_learn` / `lifelong-ros offline-learn`).

Real bags written with `rosbags` from Meta-World expert episodes (the topics and types of
config/spec_metaworld.yaml, no lifelong_ros metadata topic: what a robot records), a real store,
the learner's worker process, the registry and the safety gate. No ROS needed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lifelong_ros.cli.offline import main as offline_main
from lifelong_ros.offline import offline_learn

ROOT = Path(__file__).resolve().parents[2]
TASK = "reach-v3"


def write_robot_bag(path: Path, obs: np.ndarray, act: np.ndarray, t0_ns: int, period_ns: int = 20_000_000) -> None:
    """One episode as a robot would record it: observation, then the action 1 ms later, every period."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    arr, layout = ts.types["std_msgs/msg/Float32MultiArray"], ts.types["std_msgs/msg/MultiArrayLayout"]
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        co = w.add_connection("/lifelong_ros/observation", arr.__msgtype__, typestore=ts)
        ca = w.add_connection("/lifelong_ros/action", arr.__msgtype__, typestore=ts)
        for k, (o, a) in enumerate(zip(obs, act)):
            t = t0_ns + k * period_ns
            w.write(
                co,
                t,
                ts.serialize_cdr(arr(layout=layout(dim=[], data_offset=0), data=o.astype(np.float32)), arr.__msgtype__),
            )
            w.write(
                ca,
                t + 1_000_000,
                ts.serialize_cdr(arr(layout=layout(dim=[], data_offset=0), data=a.astype(np.float32)), arr.__msgtype__),
            )


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> list[Path]:
    from lifelong_ros.sim.metaworld import collect_demonstrations

    d = tmp_path_factory.mktemp("bags")
    episodes = collect_demonstrations(TASK, range(8), max_steps=120)
    out = []
    for k, e in enumerate(episodes):
        write_robot_bag(d / f"demo_{k:03d}", e.obs, e.action, 1_700_000_000_000_000_000 + k * 10**11)
        out.append(d / f"demo_{k:03d}")
    return out


def test_offline_learn_cli_imports_bags_adapts_gates_and_activates(tmp_path, bags, capsys):
    from lifelong_ros.experience.store import ExperienceStore
    from lifelong_ros.safety.registry import ModelRegistry

    cfg = tmp_path / "params.yaml"  # the CLI takes its defaults from a ROS params file, flags win
    cfg.write_text(
        "/**:\n  ros__parameters:\n    spec: spec_metaworld.yaml\n"
        f"    config_dir: {ROOT / 'config'}\n"
        "/**/learner:\n  ros__parameters:\n    default_steps: 60\n    threads: 1\n"
        "/**/safety_monitor:\n  ros__parameters:\n    gate:\n      latency_budget_ms: 50.0\n"  # not a latency test
    )
    data = tmp_path / "data"
    rc = offline_main(
        [
            "--bag",
            *map(str, bags),
            "--task",
            TASK,
            "--config",
            str(cfg),
            "--data-dir",
            str(data),
            "--activate",
            "--quiet",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out
    assert out["imported_steps"] > 0 and out["bags"] == [str(b) for b in bags]
    with ExperienceStore(data / "experience.sqlite3", readonly=True) as store:
        stats = store.stats()
        assert stats["records"] == out["imported_steps"] and stats["by_source"]["bag"] == out["imported_steps"]
        assert stats["tasks"][TASK]["episodes"] == len(bags)  # one episode per bag
        assert stats["tasks"][TASK]["heldout_episodes"] >= 1  # the gate needs held-out episodes
    reg = ModelRegistry(data / "registry")
    info = reg.info(out["candidate_version"])
    assert info.tasks == [TASK] and info.method == "ewc_replay" and info.metrics["steps"] == 60
    assert out["decision"] == "approved", out["reason"]
    assert reg.active() == out["active_version"] == out["candidate_version"]
    assert any(r["kind"] == "gate" for r in reg.reports(info.id))  # the verdict is persisted with its report

    # A retry with the same bags trains on the data already stored: nothing is imported twice ...
    again = ["--bag", *map(str, bags), "--task", TASK, "--config", str(cfg), "--data-dir", str(data)]
    assert offline_main([*again, "--no-gate", "--steps", "5", "--quiet"]) == 0
    retry = json.loads(capsys.readouterr().out)
    assert retry["imported_steps"] == 0 and "already holds" in retry["import_summary"]
    with ExperienceStore(data / "experience.sqlite3", readonly=True) as store:
        assert store.stats()["records"] == out["imported_steps"]
    # ... unless asked to (--reimport)
    assert offline_main([*again, "--no-gate", "--steps", "5", "--quiet", "--reimport"]) == 0
    assert json.loads(capsys.readouterr().out)["imported_steps"] == out["imported_steps"]
    with ExperienceStore(data / "experience.sqlite3", readonly=True) as store:
        assert store.stats()["records"] == 2 * out["imported_steps"]


def test_offline_learn_imports_nothing_when_one_bag_is_truncated(tmp_path, bags):
    from lifelong_ros.experience.store import ExperienceStore
    from lifelong_ros.ros_io.bag import BagImportError
    from lifelong_ros.safety.registry import ModelRegistry

    broken = tmp_path / "demo_broken"
    shutil.copytree(bags[1], broken)
    mcap = next(broken.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    data = tmp_path / "data"
    with pytest.raises(BagImportError, match="demo_broken"):
        offline_learn([bags[0], broken], TASK, data_dir=data, steps=10, progress=False)
    with ExperienceStore(data / "experience.sqlite3", readonly=True) as store:
        assert len(store) == 0  # the good first bag was rolled back with the broken one
    assert ModelRegistry(data / "registry").ids() == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(task=""), "task is empty"),
        (dict(steps=0), "steps=0: expected at least 1"),
        (dict(bags=[]), "no bag given"),
    ],
)
def test_offline_learn_refuses_bad_requests_before_touching_the_store(tmp_path, bags, kwargs, message):
    args = dict(bags=bags[:1], task=TASK, data_dir=tmp_path, steps=10, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        offline_learn(args.pop("bags"), args.pop("task"), **args)
    assert not (tmp_path / "experience.sqlite3").exists()


def test_offline_learn_refuses_two_bags_with_the_same_name(tmp_path, bags):
    twin = tmp_path / "other" / bags[0].name
    shutil.copytree(bags[0], twin)
    with pytest.raises(ValueError, match="bag names must be distinct"):
        offline_learn([bags[0], twin], TASK, data_dir=tmp_path / "data", steps=10, progress=False)
