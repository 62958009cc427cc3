"""`lifelong-ros pretrain` end to end at smoke size: real Meta-World demonstrations into the on-disk
store, multi-task training with a checkpoint, ONNX export, the first registry version — and every
stage resumes: a run stopped mid-training finishes bit-identical to an uninterrupted one, and a
finished run is not trained twice."""

from __future__ import annotations

import json

import pytest
import torch

from lifelong_ros import paths
from lifelong_ros.cli.main import main
from lifelong_ros.experience.store import ExperienceStore
from lifelong_ros.learning.jobs import AdaptCancelled
from lifelong_ros.pretrain import PretrainSettings, ml45_test_tasks, ml45_train_tasks, pretrain
from lifelong_ros.safety.registry import ModelRegistry
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
