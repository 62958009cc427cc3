"""ModelRegistry: atomic versions, the gate's decisions, the active pointer, rollback, lineage, gc."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from policies import OBS_DIM, export, new_model

from lifelong_ros.fsutil import sha256_bytes, sha256_file
from lifelong_ros.learning.model import load_policy, state_dict_from_bytes
from lifelong_ros.safety.registry import (
    IntegrityError,
    ModelRegistry,
    NotApprovedError,
    RegistryError,
)

TASKS = ["reach", "push"]


@pytest.fixture(scope="module")
def models():
    """Three untrained but distinct tiny policies and their ONNX bytes."""
    out = []
    for seed in range(3):
        m = new_model(2, seed=seed)
        out.append((m, export(m, TASKS)))
    return out


def add(reg: ModelRegistry, models, i: int = 0, parent=None, approve: bool | None = True, **kw) -> str:
    m, onnx = models[i]
    vid = reg.register(
        onnx, tasks=TASKS, method="bc", parent=parent, weights=m.state_dict(), config=m.config.to_dict(), **kw
    )
    if approve is True:
        reg.set_decision(vid, "approved", "test")
    elif approve is False:
        reg.set_decision(vid, "rejected", "test")
    return vid


def test_register_writes_a_self_contained_version_with_hashes(tmp_path, models):
    reg = ModelRegistry(tmp_path / "reg")
    m, onnx = models[0]
    vid = reg.register(
        onnx,
        tasks=TASKS,
        method="ewc+replay",
        weights=m.state_dict(),
        config=m.config.to_dict(),
        data_range={"reach": {"episodes": [0, 19]}},
        metrics={"loss": 0.01},
        target_task="push",
    )
    assert vid == "v0001"
    d = tmp_path / "reg" / "versions" / vid
    meta = json.loads((d / "meta.json").read_text())
    assert meta["state"] == "candidate" and meta["tasks"] == TASKS and meta["target_task"] == "push"
    assert meta["onnx_sha256"] == sha256_file(d / "model.onnx") == sha256_bytes(onnx)
    assert meta["weights_sha256"] == sha256_file(d / "weights.safetensors")
    assert meta["data_range"] == {"reach": {"episodes": [0, 19]}} and meta["metrics"] == {"loss": 0.01}
    assert list((tmp_path / "reg" / "building").iterdir()) == []
    info = reg.info(vid)
    assert info.state == "candidate" and not info.servable and info.method == "ewc+replay"
    assert add(reg, models, 1) == "v0002" and reg.ids() == ["v0001", "v0002"]


def test_weights_round_trip_reproduces_the_policy(tmp_path, models):
    reg = ModelRegistry(tmp_path)
    m, _ = models[1]
    vid = add(reg, models, 1, approve=None)
    restored = load_policy(reg.info(vid).config, state_dict_from_bytes(*reg.weights_bytes(vid)))
    x = torch.randn(5, OBS_DIM)
    t = torch.tensor([0, 1, 0, 1, 1])
    assert torch.equal(restored(x, t), m(x, t))
    np.testing.assert_array_equal(reg.load_weights(vid)["head_w"], m.head_w.detach().numpy())
    # a weights-only torch.save archive is accepted as well
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    v2 = reg.register(models[1][1], tasks=TASKS, method="bc", weights=buf.getvalue())
    assert reg.info(v2).weights_file == "weights.pt"
    assert torch.equal(state_dict_from_bytes(*reg.weights_bytes(v2))["head_b"], m.head_b.detach())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tasks": []}, "non-empty list"),
        ({"tasks": ["a", "a"]}, "distinct"),
        ({"tasks": "reach"}, "non-empty list"),
        ({"method": ""}, "method"),
        ({"parent": "v0042"}, "unknown version 'v0042'"),
        ({"target_task": "drawer"}, "target_task 'drawer'"),
        ({"onnx": b""}, "empty"),
        ({"weights": b"not weights"}, "neither safetensors"),
    ],
)
def test_register_rejects_bad_input_naming_it(tmp_path, models, kwargs, message):
    reg = ModelRegistry(tmp_path)
    args = {"onnx": models[0][1], "tasks": TASKS, "method": "bc", **kwargs}
    with pytest.raises((ValueError, RegistryError), match=message):
        reg.register(args.pop("onnx"), **args)
    assert reg.ids() == [] and list((tmp_path / "building").iterdir()) == []


def test_decisions_are_final_and_only_approved_versions_serve(tmp_path, models):
    reg = ModelRegistry(tmp_path)
    cand = add(reg, models, 0, approve=None)
    rej = add(reg, models, 1, approve=False)
    with pytest.raises(NotApprovedError, match="candidate"):
        reg.load_for_serving(cand)
    with pytest.raises(NotApprovedError, match="rejected"):
        reg.promote(rej)
    reg.set_decision(cand, "approved")
    with pytest.raises(RegistryError, match="already decided"):
        reg.set_decision(cand, "rejected")
    with pytest.raises(ValueError, match="'maybe'"):
        reg.set_decision(rej, "maybe")
    data, sha = reg.load_for_serving(cand)
    assert data == models[0][1] and sha == sha256_bytes(data)
    with pytest.raises(RegistryError, match="no active version"):
        reg.load_for_serving()


def test_promote_and_rollback_move_the_pointer_with_history(tmp_path, models):
    reg = ModelRegistry(tmp_path)
    v1, v2, v3 = (add(reg, models, i) for i in range(3))
    reg.promote(v1)
    reg.promote(v2)
    reg.promote(v3)
    assert [i.state for i in reg.list()] == ["retired", "retired", "active"]
    assert reg.rollback_targets() == [v2, v1]
    tr = reg.rollback(reason="operator")
    assert (tr.from_version, tr.to_version) == (v3, v2) and reg.active() == v2
    assert reg.rollback().to_version == v1  # a second rollback keeps going back, not forth
    with pytest.raises(RegistryError, match="no earlier approved version"):
        reg.rollback()
    assert reg.rollback(to=v3).to_version == v3
    # state survives reopening (another process's view)
    again = ModelRegistry(tmp_path)
    assert again.active() == v3 and again.load_for_serving()[1] == reg.info(v3).onnx_sha256
    assert [h["kind"] for h in again.history()] == ["promote"] * 3 + ["rollback"] * 3
    with pytest.raises(RegistryError, match="already active"):
        reg.rollback(to=v3)


def test_revoked_versions_are_never_served_or_rolled_back_to(tmp_path, models):
    reg = ModelRegistry(tmp_path)
    v1, v2, v3 = (add(reg, models, i) for i in range(3))
    for v in (v1, v2, v3):
        reg.promote(v)
    reg.rollback(revoke=True, reason="watchdog")
    assert reg.info(v3).state == "revoked" and reg.active() == v2
    with pytest.raises(NotApprovedError, match="revoked"):
        reg.promote(v3)
    reg.revoke(v1, "found faulty")
    with pytest.raises(RegistryError, match="no earlier approved version"):
        reg.rollback()
    with pytest.raises(RegistryError, match="is active"):
        reg.revoke(v2)


def test_corrupted_rollback_target_is_skipped_and_reported(tmp_path, models):
    reg = ModelRegistry(tmp_path)
    v1, v2, v3 = (add(reg, models, i) for i in range(3))
    for v in (v1, v2, v3):
        reg.promote(v)
    path = tmp_path / "versions" / v2 / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        reg.rollback(to=v2)
    assert reg.active() == v3
    tr = reg.rollback()
    assert tr.to_version == v1 and tr.skipped[0][0] == v2 and "sha256" in tr.skipped[0][1]


def test_lineage_children_and_gc_keep_what_rollback_needs(tmp_path, models):
    reg = ModelRegistry(tmp_path)
    ids = [add(reg, models, 0)]
    for i in range(1, 6):
        ids.append(add(reg, models, i % 3, parent=ids[-1]))
    rejected = add(reg, models, 1, parent=ids[-1], approve=False)
    pending = add(reg, models, 2, parent=ids[-1], approve=None)
    for v in ids[:5]:
        reg.promote(v)
    reg.save_report(rejected, "gate", {"decision": "rejected", "failed": ["regression[reach]"]})
    assert [i.id for i in reg.lineage(ids[5])] == ids[::-1]
    assert set(reg.children(ids[5])) == {rejected, pending}

    report = reg.gc(keep_approved=2)
    # active v0005, rollback targets v0004 v0003, newest servable v0006 (and v0004), the pending candidate
    assert report.deleted == [ids[0], ids[1], rejected]
    assert reg.ids() == [ids[2], ids[3], ids[4], ids[5], pending]
    assert reg.rollback().to_version == ids[3] and reg.rollback().to_version == ids[2]
    # lineage and audit survive gc through tombstones
    chain = reg.lineage(ids[5])
    assert [i.id for i in chain] == ids[::-1] and [i.state for i in chain][-2:] == ["deleted", "deleted"]
    assert reg.reports(rejected)[0]["failed"] == ["regression[reach]"]
    with pytest.raises(RegistryError, match="garbage-collected"):
        reg.load_for_serving(ids[0])
    # ids never go backwards, even though the newest version was deleted
    assert add(reg, models, 0) == "v0009"
    with pytest.raises(ValueError, match="keep_approved"):
        reg.gc(keep_approved=0)


def test_half_written_versions_are_never_listed_and_are_cleaned_on_open(tmp_path, models):
    reg = ModelRegistry(tmp_path)
    v1 = add(reg, models, 0)
    reg.promote(v1)
    # a crash of a non-atomic writer: model truncated, meta.json missing; and one with garbage meta
    broken = tmp_path / "versions" / "v0002"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(models[1][1][:100])
    garbage = tmp_path / "versions" / "v0003"
    garbage.mkdir()
    (garbage / "meta.json").write_text('{"id": "v0003", "sta')
    # a dead writer's build directory
    stale = tmp_path / "building" / "12345-deadbeef"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"partial")
    assert reg.ids() == [v1]  # readers skip them without touching anything
    assert broken.exists()

    reopened = ModelRegistry(tmp_path)
    assert reopened.ids() == [v1] and reopened.active() == v1
    assert not broken.exists() and not stale.exists()
    assert sorted(p.name.split(".")[0] for p in (tmp_path / "quarantine").iterdir()) == ["v0002", "v0003"]
    assert add(reopened, models, 1) == "v0004"  # quarantined ids are not reused


def test_a_live_writers_build_directory_survives_another_open(tmp_path, models):
    reg = ModelRegistry(tmp_path)
    with reg._building() as d:  # a writer in the middle of building a version
        (d / "model.onnx").write_bytes(b"in progress")
        ModelRegistry(tmp_path)
        assert d.exists()
    ModelRegistry(tmp_path)
    assert list((tmp_path / "building").iterdir()) == []


def test_concurrent_writers_in_two_processes_get_distinct_monotonic_ids(tmp_path, models):
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(models[0][1])
    code = textwrap.dedent(f"""
        from lifelong_ros.safety.registry import ModelRegistry
        reg = ModelRegistry({str(tmp_path / "reg")!r})
        print(" ".join(reg.register({str(onnx_path)!r}, tasks=["reach"], method="bc") for _ in range(6)))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    for ids in outs:
        assert ids == sorted(ids)
    allids = sorted(outs[0] + outs[1])
    assert allids == [f"v{i:04d}" for i in range(1, 13)]
    assert ModelRegistry(tmp_path / "reg").ids() == allids


def test_list_filters_by_state_and_rejects_unknown_states(tmp_path, models):
    reg = ModelRegistry(tmp_path)
    v1, v2 = add(reg, models, 0), add(reg, models, 1, approve=False)
    reg.promote(v1)
    assert [i.id for i in reg.list(["active"])] == [v1]
    assert [i.id for i in reg.list(["rejected"])] == [v2]
    with pytest.raises(ValueError, match="'live'"):
        reg.list(["live"])
    with pytest.raises(RegistryError, match="no model registry"):
        ModelRegistry(tmp_path / "nowhere", create=False)
    assert not (tmp_path / "nowhere").exists()


def test_registry_cli_lists_shows_and_rolls_back(tmp_path, models, capsys):
    from lifelong_ros.cli import main as cli_module

    reg = ModelRegistry(tmp_path / "reg")
    v1, v2 = add(reg, models, 0), add(reg, models, 1, parent="v0001")
    reg.save_report(
        v2,
        "gate",
        {
            "decision": "approved",
            "reason": "all 3 checks passed",
            "candidate": v2,
            "active": v1,
            "target_task": "push",
            "checks": [
                {
                    "kind": "regression",
                    "task": "reach",
                    "passed": True,
                    "value": 0.01,
                    "threshold": 0.02,
                    "detail": {},
                    "data": "heldout reach",
                }
            ],
        },
    )
    reg.promote(v1)
    reg.promote(v2)
    root = ["--registry", str(tmp_path / "reg")]
    assert cli_module.main(["registry", "list", *root]) == 0
    out = capsys.readouterr().out
    assert "v0002*" in out and "retired" in out and "approved: all 3 checks passed" in out
    assert cli_module.main(["registry", "show", v2, *root]) == 0
    out = capsys.readouterr().out
    assert "lineage: v0002 <- v0001" in out and "PASS regression[reach]" in out
    assert cli_module.main(["registry", "rollback", *root]) == 0
    assert "rolled back v0002 -> v0001" in capsys.readouterr().out and reg.active() == v1
    assert cli_module.main(["registry", "rollback", "--to", "v0009", *root]) == 2
    assert "unknown version 'v0009'" in capsys.readouterr().err
    assert cli_module.main(["registry", "list", "--json", "--state", "active", *root]) == 0
    assert [v["id"] for v in json.loads(capsys.readouterr().out)] == [v1]
    assert cli_module.main(["registry", "list", "--registry", str(tmp_path / "none")]) == 2
    assert "no model registry" in capsys.readouterr().err


def test_promote_rollback_cycles_under_full_speed_inference_never_fail_a_call(tmp_path, models):
    """≥ 100 promote/rollback cycles through the runtime's atomic swap while a thread calls it
    flat out: zero failed calls, and every action matches the version it is tagged with."""
    import threading

    from lifelong_ros.serving.runtime import PolicyRuntime

    reg = ModelRegistry(tmp_path)
    v1, v2 = add(reg, models, 0), add(reg, models, 1)
    reg.promote(v1)
    data, sha = reg.load_for_serving()
    runtime = PolicyRuntime(data, reg.active(), expected_sha256=sha)
    probe = np.random.default_rng(0).normal(size=OBS_DIM).astype(np.float32)
    expected = {v: PolicyRuntime(reg.load_for_serving(v)[0], v).infer(probe, 1).action for v in (v1, v2)}
    assert not np.allclose(expected[v1], expected[v2])
    stop = threading.Event()
    calls, failures, seen = [0], [], set()

    def serve():
        while not stop.is_set():
            try:
                out = runtime.infer(probe, 1)
                if not np.allclose(out.action, expected[out.version], atol=1e-6):
                    failures.append(f"action of {out.version} does not match it")
                seen.add(out.version)
                calls[0] += 1
            except Exception as exc:  # noqa: BLE001 - counting every failure is the point
                failures.append(repr(exc))

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        for _ in range(100):
            reg.promote(v2, runtime=runtime, reason="cycle")
            assert runtime.version == v2
            reg.rollback(runtime=runtime, reason="cycle")
            assert runtime.version == v1
    finally:
        stop.set()
        thread.join()
    assert failures == [] and seen == {v1, v2} and calls[0] > 200
    assert reg.active() == runtime.version == v1
    assert len(reg.history()) == 1 + 200
