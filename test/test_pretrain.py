"""`lifelong-ros pretrain` end to end at smoke size: real Meta-World demonstrations into the on-disk
store, multi-task training with a checkpoint, ONNX export, the first registry version — and every
stage resumes: a run stopped mid-training finishes bit-identical to an uninterrupted one, and a
finished run is not trained twice."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lifelong_ros import paths
from lifelong_ros.cli.main import main
from lifelong_ros.config import ConfigError
from lifelong_ros.demo import DemoSettings, run_demo
from lifelong_ros.experience.store import ExperienceStore
from lifelong_ros.learning.jobs import AdaptCancelled
from lifelong_ros.pretrain import (
    PretrainSettings,
    find_base,
    import_base,
    ml45_test_tasks,
    ml45_train_tasks,
    pretrain,
)
from lifelong_ros.safety.registry import ModelRegistry, RegistryError
from lifelong_ros.serving.runtime import PolicyRuntime

torch.set_num_threads(1)
SETTINGS = PretrainSettings.quick(steps=200)


def test_ml45_split_is_45_train_and_5_unseen_test_tasks():
    train, test = ml45_train_tasks(), ml45_test_tasks()
    assert len(train) == 45 and len(test) == 5 and not set(train) & set(test)
    assert set(test) == {"bin-picking-v3", "box-close-v3", "hand-insert-v3", "door-lock-v3", "door-unlock-v3"}
    with pytest.raises(ValueError, match="never sees them"):
        PretrainSettings(tasks=("reach-v3", "door-lock-v3")).task_list()


def test_cli_registers_an_active_first_version_and_resumes(tmp_path, capsys):
    argv = ["pretrain", "--quick", "--quiet", "--steps", "200", "--data-dir", str(tmp_path)]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    registry = ModelRegistry(paths.registry_dir(tmp_path))
    info = registry.info(out["version"])
    assert registry.active() == out["version"] and info.decision == "approved" and info.parent is None
    assert info.tasks == list(SETTINGS.tasks) and info.method == "pretrain"
    assert (info.path / paths.CONSOLIDATION_FILE).exists()  # a child adaptation continues its EWC state
    with ExperienceStore(paths.store_path(tmp_path), readonly=True) as store:
        for task in SETTINGS.tasks:
            splits = [e.split for e in store.episodes(task)]
            assert splits.count("train") == 2 and splits.count("heldout") == 1
    runtime = PolicyRuntime((info.path / paths.MODEL_FILE).read_bytes(), info.id)
    assert runtime.num_heads == 3 and runtime.infer(torch.zeros(39).numpy(), 2).action.shape == (4,)
    runtime.close()

    assert main(argv) == 0  # again: nothing recorded or trained twice
    again = json.loads(capsys.readouterr().out)
    assert again["resumed"] and again["version"] == out["version"] and len(registry.list()) == 1
    assert main([*argv[:-2], "--tasks", "reach-v3,door-lock-v3", "--data-dir", str(tmp_path)]) == 2


def test_stopped_training_resumes_bit_identical(tmp_path):
    whole = pretrain(tmp_path / "a", SETTINGS, progress=False)
    polls = iter(range(10**6))
    with pytest.raises(AdaptCancelled):  # stopped after a checkpoint (every 100 steps), before the end
        pretrain(tmp_path / "b", SETTINGS, progress=False, should_stop=lambda: next(polls) >= 150)
    assert list((paths.learner_dir(tmp_path / "b")).glob(f"pretrain-*/{paths.CHECKPOINT_FILE}"))
    resumed = pretrain(tmp_path / "b", SETTINGS, progress=False)
    sha = [ModelRegistry(paths.registry_dir(d)).info("v0001").weights_sha256 for d in (tmp_path / "a", tmp_path / "b")]
    assert not resumed.resumed and whole.version == resumed.version == "v0001"
    assert sha[0] == sha[1]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A data directory holding a smoke-sized pretrained base."""
    d = tmp_path_factory.mktemp("base")
    pretrain(d, SETTINGS, progress=False)
    return d


def test_find_base_resolves_auto_none_and_a_directory(base_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(paths.DATA_ENV, str(base_dir))
    assert find_base("auto") == base_dir and find_base("none") is None and find_base(str(base_dir)) == base_dir
    monkeypatch.setenv(paths.DATA_ENV, str(tmp_path))  # an empty data directory: auto starts empty
    assert find_base("auto") is None
    with pytest.raises(ValueError, match=r"base='.*': no pretrained base model in .*expected a data directory"):
        find_base(str(tmp_path))
    with pytest.raises(ConfigError, match="a pretrained base is a Meta-World model"):
        DemoSettings.for_robot("g1", base=str(base_dir)).base_dir()
    assert DemoSettings.for_robot("g1").base_dir() is None  # auto: another robot starts empty


def test_import_base_copies_the_store_and_registers_the_base_as_the_active_first_version(base_dir, tmp_path):
    registry = ModelRegistry(tmp_path / "registry")
    vid = import_base(base_dir, registry, tmp_path / "store.sqlite3")
    src = ModelRegistry(paths.registry_dir(base_dir), create=False).info("v0001")
    got = registry.info(vid)
    assert registry.active() == vid == "v0001" and got.decision == "approved" and got.method == "pretrain"
    assert (got.onnx_sha256, got.weights_sha256, got.tasks) == (src.onnx_sha256, src.weights_sha256, src.tasks)
    assert (got.path / paths.CONSOLIDATION_FILE).read_bytes() == (src.path / paths.CONSOLIDATION_FILE).read_bytes()
    with (
        ExperienceStore(paths.store_path(base_dir), readonly=True) as a,
        ExperienceStore(tmp_path / "store.sqlite3", readonly=True) as b,
    ):
        for task in SETTINGS.tasks:
            x, y = a.task_arrays(task, split="all"), b.task_arrays(task, split="all")
            assert len(x) > 0 and (x.obs == y.obs).all() and (x.action == y.action).all()
    with pytest.raises(RegistryError, match="already holds versions"):
        import_base(base_dir, registry, tmp_path / "other.sqlite3")
    with pytest.raises(FileExistsError, match="expected the path of a new store file"):
        import_base(base_dir, ModelRegistry(tmp_path / "r2"), tmp_path / "store.sqlite3")


def test_demo_from_the_base_teaches_an_unseen_task_with_corrections(base_dir, tmp_path):
    """The demo starts from the base (served from the first step), adapts door-lock from three
    demonstrations, drives the new model for two corrected episodes (the expert taking over after 10
    steps without progress) and adapts again; the results show both rounds, the corrections and what
    the pretrained tasks kept."""
    settings = DemoSettings(
        tasks=["door-lock-v3"],
        demos_per_task=3,
        heldout_demos_per_task=2,
        eval_episodes=2,
        steps=100,
        max_steps=150,
        options={"batch_size": 128},
        gate={"latency_budget_ms": 50.0},
        gate_rollouts=0,
        retries=0,
        corrections=2,
        takeover_after=10,
        base=str(base_dir),
    )
    results = run_demo(settings, tmp_path / "run", progress=False)
    registry = ModelRegistry(tmp_path / "run" / "data" / "registry")
    assert registry.info("v0001").method == "pretrain" and results["base"]["version"] == "v0001"
    (update,) = results["updates"]
    assert [a["round"] for a in update["attempts"]] == ["demonstrations", "corrected"]
    first, second = (registry.info(a["version"]) for a in update["attempts"])
    assert first.parent == "v0001" and first.tasks == second.tasks == [*SETTINGS.tasks, "door-lock-v3"]
    assert second.parent == (first.id if first.decision == "approved" else "v0001")  # from the active version
    corr = update["corrections"]
    assert corr["episodes"] + corr["discarded"] == 2 and corr["episodes"] >= 1 and corr["records"] > 0
    assert corr["takeovers"] >= 1  # a 100-step three-demonstration policy stalls on door-lock
    assert update["corrections"]["version"] == first.id  # the first round's model drove
    assert set(results["base"]["kept"]) <= set(SETTINGS.tasks) and results["base"]["kept"]
    assert all(set(v) == {"before", "after"} for v in results["base"]["kept"].values())
    assert np.isfinite(results["base"]["mean_drop"])
    with ExperienceStore(results["paths"]["store"], readonly=True) as store:
        assert {"demonstration", "correction"} <= set(store.task_arrays("door-lock-v3", split="train").source.tolist())
