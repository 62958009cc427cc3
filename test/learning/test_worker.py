"""The learner: adaptation jobs in a worker process, progress, cancel, errors, determinism, lineage."""

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lifelong_ros.experience.store import ExperienceStore
from lifelong_ros.learning.jobs import ModelPrior
from lifelong_ros.learning.recipes import load_parent
from lifelong_ros.learning.worker import AdaptCancelled, AdaptError, AdaptRequest, Learner
from lifelong_ros.orchestration import register_candidate
from lifelong_ros.safety.registry import ModelRegistry

OBS, ACT = 39, 4
SMALL = {"hidden": [32, 32], "batch_size": 64, "progress_every": 10}


def _task_data(rng, task_seed, n_eps=6, T=40):
    w = np.random.default_rng(task_seed).normal(size=(OBS, ACT)).astype(np.float32) / np.sqrt(OBS)
    for e in range(n_eps):
        obs = rng.normal(size=(T, OBS)).astype(np.float32)
        yield e, obs, np.tanh(obs @ w)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("learner") / "experience.sqlite3"
    store = ExperienceStore(path, OBS, ACT)
    rng = np.random.default_rng(0)
    for task, seed in (("task-a", 1), ("task-b", 2)):
        for e, obs, act in _task_data(rng, seed):
            store.append_episode(
                task, f"demo-{e}", obs, act, source="demonstration", split="train" if e < 5 else "heldout"
            )
    store.close()
    return str(path)


@pytest.fixture(scope="module")
def learner():
    with Learner(threads=1, nice=0) as lr:
        yield lr


def _request(store_path, tmp_path, name, **kw):
    base = dict(
        task="task-a",
        store_path=store_path,
        method="ewc_replay",
        steps=60,
        seed=3,
        out_dir=str(tmp_path / name),
        options=dict(SMALL),
    )
    base.update(kw)
    return AdaptRequest(**base)


def test_worker_trains_a_candidate_whose_onnx_matches_its_weights(learner, store_path, tmp_path):
    events = []
    cand = learner.submit(_request(store_path, tmp_path, "a"), lambda *e: events.append(e)).result(timeout=120)
    phases = [e[0] for e in events]
    assert phases[0] == "load" and "train" in phases and phases[-1] == "export"
    steps = [e[1] for e in events if e[0] == "train"]
    assert steps == sorted(steps) and steps[-1] == 60
    assert cand.metadata["tasks"] == ["task-a"] and cand.metadata["data_range"]["episodes"] == [
        f"demo-{i}" for i in range(5)
    ]
    model = load_parent(cand.out_dir).model
    obs = np.random.default_rng(1).normal(size=(8, OBS)).astype(np.float32)
    sess = ort.InferenceSession(Path(cand.onnx_path).read_bytes(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"obs": obs, "task_id": np.zeros(8, np.int64)})[0]
    ref = model(torch.as_tensor(obs), torch.zeros(8, dtype=torch.long)).detach().numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert learner.pid != os.getpid()


def test_a_given_observation_scale_and_action_prior_shape_the_first_model_and_its_onnx(learner, store_path, tmp_path):
    mean = np.linspace(-1.0, 1.0, OBS).astype(np.float32)
    std = np.linspace(0.5, 3.0, OBS).astype(np.float32)
    gain, bias = [0.5, -1.0, 2.0, 0.0], [0.1, 0.0, -0.3, 0.2]
    prior = ModelPrior(obs_scale=(mean.tolist(), std.tolist()), action_prior=(gain, bias), differences=((2, 0, 2),))
    req = _request(store_path, tmp_path, "scaled", prior=prior)
    cand = learner.submit(req).result(timeout=120)
    model = load_parent(cand.out_dir).model
    np.testing.assert_array_equal(model.obs_mean.numpy(), mean)
    np.testing.assert_array_equal(model.obs_std.numpy(), std)
    assert model.config.residual and model.act_gain.tolist() == gain
    assert model.config.differences == ((2, 0, 2),)
    obs = np.random.default_rng(2).normal(size=(8, OBS)).astype(np.float32) * 4
    sess = ort.InferenceSession(Path(cand.onnx_path).read_bytes(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"obs": obs, "task_id": np.zeros(8, np.int64)})[0]
    np.testing.assert_allclose(out, model(torch.as_tensor(obs), torch.zeros(8, dtype=torch.long)).detach(), atol=1e-5)
    with torch.no_grad():  # the graph really normalises by the given scale: another scale gives other actions
        model.set_input_scale(np.zeros(OBS), np.ones(OBS))
        assert not np.allclose(out, model(torch.as_tensor(obs), torch.zeros(8, dtype=torch.long)), atol=1e-3)
    with pytest.raises(ValueError, match=r"obs_scale: 39 means and 39 stds \(std min 0.0\)"):
        ModelPrior(obs_scale=(mean.tolist(), [0.0] * OBS))
    with pytest.raises(ValueError, match=r"action_prior: 4 gains and 3 biases"):
        ModelPrior(action_prior=(gain, bias[:3]))
    with pytest.raises(ValueError, match=r"input scale of \(3,\) means"):
        model.set_input_scale([0.0] * 3, [1.0] * 3)


def test_same_seed_gives_identical_weights_and_another_seed_does_not(learner, store_path, tmp_path):
    def weights(name, seed):
        cand = learner.submit(_request(store_path, tmp_path, name, seed=seed)).result(timeout=120)
        return Path(cand.weights_path).read_bytes()

    assert weights("s1", 3) == weights("s2", 3)
    assert weights("s3", 4) != weights("s1b", 3)


def test_cancel_stops_the_job_and_the_worker_takes_the_next_one(learner, store_path, tmp_path):
    job = learner.submit(_request(store_path, tmp_path, "long", steps=1_000_000))
    deadline = time.monotonic() + 60
    while not any(p[0] == "train" for p in job.progress) and time.monotonic() < deadline:
        time.sleep(0.05)
    job.cancel()
    with pytest.raises(AdaptCancelled):
        job.result(timeout=60)
    assert not (tmp_path / "long" / "model.onnx").exists()
    assert learner.submit(_request(store_path, tmp_path, "after")).result(timeout=120).metadata["tasks"] == ["task-a"]


def test_a_failing_request_reports_the_reason_and_keeps_the_worker(learner, store_path, tmp_path):
    with pytest.raises(AdaptError, match="no training demonstrations of task 'task-z'|unknown task 'task-z'"):
        learner.submit(_request(store_path, tmp_path, "z", task="task-z")).result(timeout=60)
    assert learner.alive()


def test_a_killed_worker_fails_the_job_instead_of_hanging(store_path, tmp_path):
    with Learner(threads=1, nice=0) as lr:
        job = lr.submit(_request(store_path, tmp_path, "killed", steps=1_000_000))
        deadline = time.monotonic() + 60
        while not job.progress and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(lr.pid, signal.SIGKILL)
        with pytest.raises(AdaptError, match="died"):
            job.result(timeout=30)
    assert not (tmp_path / "killed" / "model.onnx").exists()


def test_second_task_grows_a_head_and_ewc_state_travels_through_the_registry(learner, store_path, tmp_path):
    reg = ModelRegistry(tmp_path / "registry")
    first = learner.submit(_request(store_path, tmp_path, "v1", steps=150)).result(timeout=120)
    v1 = register_candidate(reg, first)
    assert "consolidation.safetensors" in json.loads((reg.versions_dir / v1 / "meta.json").read_text())["files"]
    parent_dir = str(reg.versions_dir / v1)

    def backbone_shift(method, strategy_options):
        opts = dict(SMALL, **strategy_options)
        cand = learner.submit(
            _request(
                store_path,
                tmp_path,
                f"b-{method}",
                task="task-b",
                method=method,
                steps=150,
                parent_dir=parent_dir,
                options=opts,
            )
        ).result(timeout=120)
        assert cand.metadata["tasks"] == ["task-a", "task-b"] and cand.metadata["parent"] == v1
        before, after = load_parent(parent_dir).model, load_parent(cand.out_dir).model
        assert after.num_heads == 2
        return sum(
            float((p0 - p1).detach().pow(2).sum())
            for (n, p0), (_, p1) in zip(before.named_parameters(), after.named_parameters())
            if n.startswith("backbone")
        )

    # The parent's Fisher (carried in its registry directory) anchors the backbone: a strong EWC
    # penalty moves it far less than naive fine-tuning does.
    assert backbone_shift("online_ewc", {"ewc_lambda": 1e4}) < 0.2 * backbone_shift("naive", {})


def test_a_job_killed_mid_training_resumes_from_its_checkpoint_to_the_same_result(store_path, tmp_path):
    opts = dict(SMALL, checkpoint_every=20, progress_every=5)
    reference = tmp_path / "ref"
    with Learner(threads=1, nice=0) as lr:
        ref = lr.submit(_request(store_path, tmp_path, "ref", steps=200, options=opts)).result(timeout=120)
        job = lr.submit(_request(store_path, tmp_path, "resumed", steps=200, options=opts))
        deadline = time.monotonic() + 60
        while not (tmp_path / "resumed" / "checkpoint.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(lr.pid, signal.SIGKILL)
        with pytest.raises(AdaptError):
            job.result(timeout=30)
    assert (tmp_path / "resumed" / "checkpoint.pt").exists() and not (tmp_path / "resumed" / "model.onnx").exists()
    with Learner(threads=1, nice=0) as lr:
        events = []
        cand = lr.submit(
            _request(store_path, tmp_path, "resumed", steps=200, options=opts), lambda *e: events.append(e)
        ).result(timeout=120)
    resumes = [e for e in events if e[0] == "resume"]
    assert resumes and resumes[0][1] >= 20 and resumes[0][1] % 20 == 0
    assert min(e[1] for e in events if e[0] == "train") > resumes[0][1]  # no step was trained twice
    assert Path(cand.weights_path).read_bytes() == Path(ref.weights_path).read_bytes()
    assert not (tmp_path / "resumed" / "checkpoint.pt").exists()
    assert reference.exists()


def test_meta_recipe_starts_the_new_head_from_a_meta_learned_init_then_consolidates(learner, store_path, tmp_path):
    first = learner.submit(_request(store_path, tmp_path, "m1", steps=150)).result(timeout=120)
    events = []
    opts = dict(SMALL, meta_iterations=40, meta_shots=16, head_steps=30)
    cand = learner.submit(
        _request(
            store_path,
            tmp_path,
            "m2",
            task="task-b",
            method="meta_ewc_replay",
            steps=20,
            parent_dir=first.out_dir,
            options=opts,
        ),
        lambda *e: events.append(e),
    ).result(timeout=120)
    phases = [e[0] for e in events]
    assert phases.index("meta-train") < phases.index("adapt-head") < phases.index("train")
    m = cand.metadata["metrics"]
    assert (
        m["meta_iterations"] == 40
        and m["head_loss_after_adapt"] < 1.0
        and cand.metadata["tasks"] == ["task-a", "task-b"]
    )
