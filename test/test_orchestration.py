"""The one adapt -> register -> gate -> promote path: requests, registration, ground truth, verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from policies import OBS_DIM, base_and_candidate, export, register, task_data, train, train_data

from lifelong_ros import paths
from lifelong_ros.experience.sources import GROUND_TRUTH_SOURCES, SOURCES, TRAIN_SOURCES
from lifelong_ros.experience.store import ExperienceStore
from lifelong_ros.learning.jobs import Candidate
from lifelong_ros.orchestration import gate_suites, gate_version, new_request, promote, register_candidate
from lifelong_ros.safety.gate import GateConfig, SafetyGate
from lifelong_ros.safety.registry import ModelRegistry
from lifelong_ros.serving.runtime import PolicyRuntime

ACT_DIM = 4
LENIENT_LATENCY = GateConfig(latency_budget_ms=50.0)  # CI machines are loaded; latency is not what is tested


def _store_with(path: Path, tasks, sources_heldout: dict[str, str]) -> None:
    """Train and held-out episodes per task; the held-out ones tagged with the given source."""
    with ExperienceStore(path, OBS_DIM, ACT_DIM) as store:
        for t in tasks:
            o, a, e = task_data(t, 6, seed=99)
            for k, ep in enumerate(np.unique(e)):
                rows = e == ep
                store.append_episode(
                    t,
                    f"held-{k}",
                    o[rows],
                    a[rows],
                    np.zeros(rows.sum()),
                    np.arange(rows.sum()) == rows.sum() - 1,
                    source=sources_heldout.get(t, "demonstration"),
                    split="heldout",
                )
            o, a, e = task_data(t, 4, seed=1)
            store.append_episode(
                t,
                "train-0",
                o,
                a,
                np.zeros(len(o)),
                np.arange(len(o)) == len(o) - 1,
                source="demonstration",
                split="train",
            )


def test_source_vocabulary_is_one_set():
    assert set(TRAIN_SOURCES) <= set(SOURCES) and set(GROUND_TRUTH_SOURCES) <= set(SOURCES)
    assert "policy" not in GROUND_TRUTH_SOURCES and "policy" not in TRAIN_SOURCES  # its own actions are no label
    assert "bag" in GROUND_TRUTH_SOURCES  # what offline learning imports counts for every gate


def test_new_request_starts_from_the_active_version(tmp_path):
    reg = ModelRegistry(tmp_path / "registry")
    req = new_request(
        reg,
        "push",
        store_path=tmp_path / "s.sqlite3",
        work_dir=tmp_path / "learner",
        method="ewc_replay",
        steps=10,
        job_id="job-1",
    )
    assert req.parent_dir is None and req.out_dir == str(tmp_path / "learner" / "job-1")
    _base, v1, *_ = base_and_candidate(reg)
    req = new_request(
        reg, "pick", store_path=tmp_path / "s.sqlite3", work_dir=tmp_path / "learner", method="naive", steps=10
    )
    assert Path(req.parent_dir) == reg.info(v1).path and req.job_id.startswith("pick-")


def test_register_candidate_keeps_lineage_config_and_consolidation_state(tmp_path):
    reg = ModelRegistry(tmp_path / "registry")
    _, v1, cand, tasks = base_and_candidate(reg)
    out = tmp_path / "learner" / "job"
    out.mkdir(parents=True)
    (out / paths.MODEL_FILE).write_bytes(export(cand, tasks))
    from safetensors.torch import save

    (out / paths.WEIGHTS_FILE).write_bytes(save({k: v.contiguous() for k, v in cand.state_dict().items()}))
    (out / paths.CONSOLIDATION_FILE).write_bytes(b"state")
    meta = {
        "tasks": tasks,
        "method": "ewc_replay",
        "target_task": tasks[-1],
        "config": {"policy": cand.config.to_dict()},
        "metrics": {"final_loss": 0.1},
        "data_range": {"episodes": ["e"]},
        "note": "kept",
    }
    (out / paths.META_FILE).write_text(json.dumps(meta))
    version = register_candidate(
        reg, Candidate(str(out), str(out / paths.MODEL_FILE), str(out / paths.WEIGHTS_FILE), meta), parent=v1
    )
    info = reg.info(version)
    assert (info.parent, info.method, info.tasks, info.target_task) == (v1, "ewc_replay", tasks, tasks[-1])
    assert info.decision == "candidate" and info.metrics == {"final_loss": 0.1}
    assert (info.path / paths.CONSOLIDATION_FILE).read_bytes() == b"state"
    with pytest.raises(ValueError, match="has no 'tasks'"):
        register_candidate(reg, Candidate(str(out), str(out / paths.MODEL_FILE), "", {"method": "x"}))


def test_gate_suites_cover_candidate_and_active_tasks_from_ground_truth_only(tmp_path):
    reg = ModelRegistry(tmp_path / "registry")
    _, v1, cand, tasks = base_and_candidate(reg)  # active serves tasks[:2], the candidate adds tasks[2]
    v2 = register(reg, cand, tasks, parent=v1)
    store = tmp_path / "s.sqlite3"
    # the first task's held-out episodes came from a bag (offline learning), the third's from the policy itself
    _store_with(store, tasks, {tasks[0]: "bag", tasks[2]: "policy"})
    suites = gate_suites(reg, store, v2)
    rows = {t: len(s.obs) for t, s in suites.items()}
    # bag counts as ground truth; the policy's own actions never do (an empty suite: the gate fails closed)
    assert rows == {tasks[0]: 6 * 40, tasks[1]: 6 * 40, tasks[2]: 0}
    only_demos = gate_suites(reg, store, v2, sources=("demonstration",))
    assert {t: len(s.obs) for t, s in only_demos.items()} == {tasks[0]: 0, tasks[1]: 6 * 40, tasks[2]: 0}


def test_gate_version_records_the_verdict_and_promote_swaps(tmp_path):
    reg = ModelRegistry(tmp_path / "registry")
    base, v1, cand, tasks = base_and_candidate(reg)
    store = tmp_path / "s.sqlite3"
    _store_with(store, tasks, {})
    gate = SafetyGate(reg, LENIENT_LATENCY)
    good = register(reg, cand, tasks, parent=v1)
    report = gate_version(reg, gate, store, good)
    assert report.decision == "approved", report.summary()
    assert reg.info(good).decision == "approved"
    # forgetting: trained on the new task alone, the earlier tasks regress and the same path rejects it
    naive = base.clone()
    naive.ensure_heads(3)
    naive = train(naive, [train_data(tasks)[2]], steps=600)
    bad = register(reg, naive, tasks, parent=v1)
    rejected = gate_version(reg, gate, store, bad)
    assert rejected.decision == "rejected" and any(f.startswith("regression[") for f in rejected.failed)
    assert reg.info(bad).decision == "rejected" and reg.active() == v1

    onnx, sha = reg.load_for_serving(v1)
    with PolicyRuntime(onnx, v1, expected_sha256=sha) as runtime:  # the serving path, hot-swapped by promote
        promote(reg, good, runtime, reason="test")
        assert reg.active() == good and runtime.version == good and runtime.sha256 == reg.info(good).onnx_sha256
        assert runtime.infer(np.zeros(OBS_DIM, np.float32), 2).version == good


def test_retry_policy_strengthens_each_attempt_within_what_the_recipe_takes():
    from lifelong_ros.learning.jobs import parse_recipe_options
    from lifelong_ros.orchestration import RetryPolicy

    policy = RetryPolicy(retries=2, step_factor=2.0, ewc_factor=4.0)
    assert policy.attempt(0, "meta_ewc_replay", 1000, {"lr": 1e-3}, 7) == (1000, {"lr": 1e-3}, 7)
    steps, opts, seed = policy.attempt(2, "meta_ewc_replay", 1000, {"ewc_lambda": 10.0}, 7)
    assert steps == 4000 and seed != 7
    assert opts == {"ewc_lambda": 160.0, "replay_ratio": "balanced"}
    parse_recipe_options("meta_ewc_replay", opts)  # a stronger recipe is still a valid one
    # from a parent with many tasks (a 45-task base) the requested replay ratio stays
    _, opts, _ = policy.attempt(1, "meta_ewc_replay", 1000, {"replay_ratio": 0.8}, 7, known_tasks=45)
    assert opts == {"replay_ratio": 0.8, "ewc_lambda": 400.0}
    # a recipe without EWC or replay only gets more steps: never an option it does not take
    steps, opts, _ = policy.attempt(1, "naive", 1000, {}, 0)
    assert steps == 2000 and opts == {}
    parse_recipe_options("naive", opts)
    with pytest.raises(ValueError, match="retries=-1"):
        RetryPolicy(retries=-1)
    with pytest.raises(ValueError, match="step_factor=0.5"):
        RetryPolicy(step_factor=0.5)
