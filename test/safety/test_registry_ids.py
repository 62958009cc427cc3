"""Registry version ids: one strict grammar (what the registry issues, ``v0001``), checked at every
entry point before anything is read or written; gc never deletes what is serving or what a
rollback returns to; the CLI turns a refused id and a read-only registry into one line."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from policies import export, new_model

from lifelong_ros.cli import main as cli
from lifelong_ros.safety.registry import (
    InvalidVersionId,
    ModelRegistry,
    RegistryError,
    check_version_id,
    is_version_id,
)

TASKS = ["reach", "push"]

BAD_IDS = [
    "../v0001",
    "versions/../v0001",
    "/tmp/elsewhere/v0001",
    "./v0001",
    "v0001/",
    "",
    "v0001\x00",
    "\x00",
    " v0001",
    "v0001 ",
    "v0001\n",
    "\tv0001",
    "V0001",
    "x0001",
    "v001",
    "v0001a",
    "v\u0661\u0662\u0663\u0664",  # Arabic-Indic digits: \d would take them
    "..",
    ".",
]


@pytest.fixture(scope="module")
def models():
    out = []
    for seed in range(4):
        m = new_model(2, seed=seed)
        out.append((m, export(m, TASKS)))
    return out


def add(reg: ModelRegistry, models, i: int, approve: bool = True, parent: str | None = None) -> str:
    m, onnx = models[i]
    vid = reg.register(onnx, tasks=TASKS, method="bc", parent=parent, weights=m.state_dict())
    if approve:
        reg.set_decision(vid, "approved", "test")
    return vid


@pytest.fixture
def reg(tmp_path, models) -> ModelRegistry:
    """v0001 (retired, the rollback target), v0002 (active), v0003 (approved), v0004 (candidate)."""
    r = ModelRegistry(tmp_path / "reg")
    v1 = add(r, models, 0)
    v2 = add(r, models, 1, parent=v1)
    add(r, models, 2, parent=v2)
    add(r, models, 3, approve=False, parent=v2)
    r.promote(v1)
    r.promote(v2)
    return r


def snapshot(root: Path) -> dict[str, str]:
    """Every path under the registry with a hash of its content ('dir' for directories)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ------------------------------------------------------------------------------ the grammar
@pytest.mark.parametrize("good", ["v0001", "v0042", "v9999", "v10000", "v123456789"])
def test_ids_the_registry_issues_are_valid(good):
    assert is_version_id(good) and check_version_id(good) == good


@pytest.mark.parametrize("bad", [*BAD_IDS, None, 1, b"v0001"])
def test_everything_else_is_refused_naming_the_value_and_the_form(bad):
    assert not is_version_id(bad)
    with pytest.raises(InvalidVersionId) as ei:
        check_version_id(bad)
    msg = str(ei.value)
    assert repr(bad) in msg and "'v0001'" in msg and "digits" in msg
    assert isinstance(ei.value, RegistryError) and isinstance(ei.value, ValueError)


# ------------------------------------------------------------------------------ the Python API
CALLS = {
    "info": lambda r, v: r.info(v),
    "exists": lambda r, v: r.exists(v),
    "promote": lambda r, v: r.promote(v),
    "rollback": lambda r, v: r.rollback(to=v),
    "set_decision": lambda r, v: r.set_decision(v, "approved"),
    "load_for_serving": lambda r, v: r.load_for_serving(v),
    "read_onnx": lambda r, v: r.read_onnx(v),
    "weights_bytes": lambda r, v: r.weights_bytes(v),
    "load_weights": lambda r, v: r.load_weights(v),
    "reports": lambda r, v: r.reports(v),
    "lineage": lambda r, v: r.lineage(v),
    "children": lambda r, v: r.children(v),
    "save_report": lambda r, v: r.save_report(v, "note", {"x": 1}),
    "revoke": lambda r, v: r.revoke(v),
    "register_parent": lambda r, v: r.register(b"\x08\x07", tasks=TASKS, method="bc", parent=v),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_every_public_method_refuses_malformed_ids_and_changes_nothing(reg, call):
    before = snapshot(reg.root)
    for bad in BAD_IDS:
        with pytest.raises(InvalidVersionId, match="expected 'v' followed by"):
            CALLS[call](reg, bad)
    assert snapshot(reg.root) == before
    assert reg.active() == "v0002"


def test_promote_of_a_path_to_a_version_outside_the_registry_is_refused(reg, tmp_path):
    """The measured problem: `promote /some/dir/v0001` made a never-gated copy outside active."""
    outside = tmp_path / "elsewhere" / "v0001"
    shutil.copytree(reg.versions_dir / "v0004", outside)  # the candidate, never approved
    meta = json.loads((outside / "meta.json").read_text())
    meta.update(id="v0001", state="approved")
    (outside / "meta.json").write_text(json.dumps(meta))
    before = snapshot(reg.root)
    for path in (str(outside), os.path.relpath(outside), os.path.relpath(outside, reg.versions_dir)):
        with pytest.raises(InvalidVersionId):
            reg.promote(path)
    assert snapshot(reg.root) == before and reg.active() == "v0002"


def test_dot_slash_promote_can_no_longer_make_gc_delete_the_served_model(reg):
    with pytest.raises(InvalidVersionId, match=r"'\./v0001'"):
        reg.promote("./v0001")
    assert reg.active() == "v0002"
    reg.gc(keep_approved=1)
    assert {"v0001", "v0002"} <= set(reg.ids())


def test_rollback_without_a_target_is_not_an_empty_id(reg):
    with pytest.raises(InvalidVersionId):
        reg.rollback(to="")
    assert reg.rollback().to_version == "v0001"


# ------------------------------------------------------------------------------ gc
@pytest.mark.parametrize("keep", [1, 2, 5])
def test_gc_never_deletes_the_active_version_or_the_rollback_target(reg, models, keep):
    for i in range(4):  # more approved versions than any keep
        add(reg, models, i % 4)
    target = reg.rollback_targets()[0]
    rep = reg.gc(keep_approved=keep)
    assert "v0002" not in rep.deleted and target not in rep.deleted
    assert {"v0002", target} <= set(reg.ids())
    assert reg.rollback().to_version == target


def test_gc_refuses_when_state_json_names_a_malformed_active_version(reg):
    """A state.json written by an older version (or by hand) with a path as the active pointer:
    gc must not guess what is serving and delete it."""
    state_path = reg.root / "state.json"
    st = json.loads(state_path.read_text())
    st["active"] = "./v0002"
    state_path.write_text(json.dumps(st))
    before = snapshot(reg.root)
    with pytest.raises(RegistryError, match=r"malformed version id.*\./v0002"):
        reg.gc(keep_approved=1)
    assert snapshot(reg.root) == before
    with pytest.raises(InvalidVersionId, match="active version"):
        reg.load_for_serving()
    assert "not a valid version id" in (reg.active_problem() or "")


def test_a_tampered_rollback_stack_entry_is_never_a_rollback_target(reg):
    state_path = reg.root / "state.json"
    st = json.loads(state_path.read_text())
    st["stack"].insert(-1, "../../v0001")
    state_path.write_text(json.dumps(st))
    assert reg.rollback_targets() == ["v0001"]


# ------------------------------------------------------------------------------ the CLI
def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("bad", ["../v0001", "/abs/v0001", "", "./v0001", "v0001\x00", " v0001", "v0001 "])
@pytest.mark.parametrize("command", ["promote", "rollback", "show"])
def test_cli_refuses_malformed_ids_with_one_line_and_changes_nothing(reg, capsys, bad, command):
    before = snapshot(reg.root)
    argv = ["registry", command, *(["--to", bad] if command == "rollback" else [bad]), "--registry", str(reg.root)]
    code, out, err = _cli(capsys, *argv)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lifelong-ros: error: invalid")
    assert repr(bad) in lines[0] and "'v0001'" in lines[0]
    assert snapshot(reg.root) == before and reg.active() == "v0002"


def test_cli_list_says_when_the_active_pointer_dangles(reg, capsys):
    shutil.rmtree(reg.versions_dir / "v0002")  # e.g. deleted by hand
    code, out, err = _cli(capsys, "registry", "list", "--registry", str(reg.root))
    assert code == 0
    assert "WARNING" in out and "'v0002'" in out and "does not exist" in out and "dangling" in out
    code, out, err = _cli(capsys, "registry", "list", "--json", "--registry", str(reg.root))
    assert code == 0 and json.loads(out) and "dangling" in err
    assert "does not exist" in (reg.active_problem() or "")


def test_cli_list_is_quiet_when_the_pointer_is_fine(reg, capsys):
    code, out, err = _cli(capsys, "registry", "list", "--registry", str(reg.root))
    assert code == 0 and "WARNING" not in out and err == ""


def _make_read_only(root: Path, monkeypatch) -> None:
    """Make the registry unwritable: chmod where that stops writes (not root); as root (the test
    machine), refuse writes under ``root`` at os.open, the registry's first write of every command."""
    for p in [root, *root.rglob("*")]:
        if p.is_dir():
            p.chmod(0o555)
    probe = root / ".probe"
    try:
        probe.touch()
    except OSError:
        return  # chmod works here
    probe.unlink()
    for p in [root, *root.rglob("*")]:
        if p.is_dir():
            p.chmod(0o755)
    real_open = os.open
    prefix = str(root)

    def read_only_open(path, flags, *args, **kwargs):
        if str(path).startswith(prefix) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)


@pytest.mark.parametrize(
    "argv", [["promote", "v0003"], ["rollback"], ["rollback", "--to", "v0001"], ["gc", "--keep", "1"]]
)
def test_cli_on_a_read_only_registry_prints_one_line(reg, capsys, monkeypatch, argv):
    before = snapshot(reg.root)
    _make_read_only(reg.root, monkeypatch)
    try:
        code, out, err = _cli(capsys, "registry", *argv, "--registry", str(reg.root))
    finally:
        monkeypatch.undo()
        for p in [reg.root, *reg.root.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)
    lines = err.strip().splitlines()
    assert code == 2 and out == "", (code, out, err)
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith(f"lifelong-ros: error: {reg.root}")
    assert "Read-only file system" in lines[0] or "Permission denied" in lines[0]
    assert snapshot(reg.root) == before
