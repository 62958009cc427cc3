"""Resuming an interrupted job ends exactly where the uninterrupted job ends, parent and replay included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lifelong_ros.experience.store import ExperienceStore
from lifelong_ros.learning.jobs import AdaptCancelled, AdaptRequest
from lifelong_ros.learning.recipes import run_request
from lifelong_ros.paths import CHECKPOINT_FILE, CONSOLIDATION_FILE, WEIGHTS_FILE

OBS, ACT = 12, 3
SMALL = {"hidden": [16, 16], "batch_size": 32, "progress_every": 10, "checkpoint_every": 20}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "experience.sqlite3"
    rng = np.random.default_rng(0)
    with ExperienceStore(path, OBS, ACT) as store:
        for task, seed in (("task-a", 1), ("task-b", 2)):
            w = np.random.default_rng(seed).normal(size=(OBS, ACT)).astype(np.float32) / np.sqrt(OBS)
            for e in range(5):
                obs = rng.normal(size=(30, OBS)).astype(np.float32)
                store.append_episode(task, f"demo-{e}", obs, np.tanh(obs @ w), source="demonstration", split="train")
    return str(path)


def _request(store_path, out_dir, task, method, parent=None, steps=100):
    return AdaptRequest(
        task=task,
        store_path=store_path,
        method=method,
        steps=steps,
        seed=5,
        out_dir=str(out_dir),
        options=dict(SMALL),
        parent_dir=str(parent) if parent else None,
    )


def _run(req, stop_at=None):
    calls = [0]

    def should_stop():
        calls[0] += 1
        return stop_at is not None and calls[0] >= stop_at

    return run_request(req, lambda *e: None, should_stop)


@pytest.mark.parametrize("method", ["ewc_replay", "replay", "si"])
def test_a_second_task_job_resumed_mid_way_ends_bit_identical_to_an_uninterrupted_one(store_path, tmp_path, method):
    parent = tmp_path / "parent"
    _run(_request(store_path, parent, "task-a", method, steps=40))
    ref = _run(_request(store_path, tmp_path / "ref", "task-b", method, parent))

    resumed_dir = tmp_path / "resumed"
    with pytest.raises(AdaptCancelled):  # cancelled at step 55: the last checkpoint is step 40
        _run(_request(store_path, resumed_dir, "task-b", method, parent), stop_at=55)
    assert (resumed_dir / CHECKPOINT_FILE).exists()
    resumed = _run(_request(store_path, resumed_dir, "task-b", method, parent))
    assert not (resumed_dir / CHECKPOINT_FILE).exists()

    want, got = load_file(str(Path(ref.out_dir) / WEIGHTS_FILE)), load_file(str(Path(resumed.out_dir) / WEIGHTS_FILE))
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), f"{method}: {k} differs after resume"
    want_c = load_file(str(Path(ref.out_dir) / CONSOLIDATION_FILE))
    got_c = load_file(str(Path(resumed.out_dir) / CONSOLIDATION_FILE))
    assert want_c.keys() == got_c.keys()
    for k in want_c:
        assert torch.equal(want_c[k], got_c[k]), f"{method}: consolidation {k} differs after resume"
    if method == "si":
        omega = sum(float(v.sum()) for k, v in got_c.items() if "omega." in k)
        assert omega == sum(float(v.sum()) for k, v in want_c.items() if "omega." in k) and omega != 0.0


def test_a_memory_buffer_replay_resumed_from_a_checkpoint_matches_the_uninterrupted_run(tmp_path):
    from lifelong_ros.learning.model import PolicyConfig, PolicyNet, bc_loss
    from lifelong_ros.learning.plugins import MemoryBuffer, Replay, SynapticIntelligence
    from lifelong_ros.learning.trainer import ContinualTrainer, Experience, TrainOptions

    def task(seed, head):
        g = np.random.default_rng(seed)
        x = g.normal(size=(96, 4)).astype(np.float32)
        return Experience.from_arrays(x, np.tanh(x @ g.normal(size=(4, 2))).astype(np.float32), head, f"t{head}")

    def trainer(ckpt, stop_at=None):
        torch.manual_seed(0)
        model = PolicyNet(PolicyConfig(obs_dim=4, act_dim=2, hidden=(16,), num_heads=2))
        mem = MemoryBuffer(per_task=32, seed=1)
        calls = [0]

        def should_stop():
            calls[0] += 1
            return stop_at is not None and calls[0] >= stop_at

        opts = TrainOptions(steps=60, batch_size=16, seed=2, checkpoint_path=str(ckpt), checkpoint_every=10)
        plugins = [SynapticIntelligence(c=0.1), Replay(mem, 0.5), mem]
        return ContinualTrainer(model, bc_loss, plugins, opts, should_stop=should_stop)

    a, b = task(1, 0), task(2, 1)
    ref = trainer(tmp_path / "ref.pt")
    ref.train_exp(a)
    ref.train_exp(b)

    first = trainer(tmp_path / "run.pt", stop_at=60 + 35)  # cancelled in the second task, after its step-30 checkpoint
    first.train_exp(a)
    assert first.train_exp(b).cancelled and (tmp_path / "run.pt").exists()
    state = first.state()
    again = trainer(tmp_path / "run.pt")
    again.load_state(*state)  # the first task's consolidation, as a parent carries it
    with torch.no_grad():
        for p, q in zip(again.model.parameters(), first.model.parameters()):
            p.copy_(q)  # overwritten by the checkpoint anyway
    again.train_exp(b)
    for (n, p), q in zip(ref.model.named_parameters(), again.model.parameters()):
        assert torch.equal(p, q), n
    for k, v in ref.state()[0].items():
        assert torch.equal(v, again.state()[0][k]), k
