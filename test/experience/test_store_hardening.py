"""Hardening: readers opening while the writer appends, foreign databases, full disks, bad paths."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from lifelong_ros.experience.store import ExperienceStore, StoreError, StoreFullError, StoreWriteError

OBS, ACT = 8, 2

# Appends many small new episodes (and now and then a new task) as fast as it can until killed.
EPISODE_WRITER = textwrap.dedent(
    """
    import sys, time, numpy as np
    from lifelong_ros.experience.store import ExperienceStore
    s = ExperienceStore(sys.argv[1], 8, 2)
    e = 0
    while True:
        s.append_episode(f"t{e % 7 if e % 50 else e}", e, np.full((3, 8), e, np.float32), np.zeros((3, 2), np.float32))
        e += 1
        if e == 10:
            print("ready", flush=True)
    """
)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def test_readonly_opens_while_the_writer_appends_new_episodes_are_consistent(tmp_path):
    path = tmp_path / "live.sqlite3"
    with ExperienceStore(path, OBS, ACT) as s:
        s.append_episode("t0", "seed", np.zeros((3, OBS)), np.zeros((3, ACT)))
    writer = subprocess.Popen(
        [sys.executable, "-c", EPISODE_WRITER, str(path)], env=_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        opened, t_end = 0, time.monotonic() + 5.0
        while time.monotonic() < t_end:
            with ExperienceStore(path, readonly=True) as r:
                st = r.stats()
                assert st["records"] == sum(t["records"] for t in st["tasks"].values())
                b = r.task_arrays("t1", split="all")
                assert len(b) % 3 == 0 and (b.task == "t1").all()
                # every record's episode is the one its content says
                assert (b.obs[:, 0].astype(np.int64).astype(str) == b.episode).all()
            opened += 1
        assert opened > 20 and writer.poll() is None
    finally:
        writer.kill()
        writer.wait()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_unrelated_sqlite_database_is_refused_for_writing_and_left_unchanged(tmp_path):
    path = tmp_path / "app.db"
    c = sqlite3.connect(path)
    c.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)")
    c.execute("INSERT INTO users(name) VALUES ('ada')")
    c.commit()
    c.close()
    before = _digest(path)
    with pytest.raises(StoreError, match="not a lifelong_ros experience store") as info:
        ExperienceStore(path, OBS, ACT)
    assert str(path) in str(info.value) and "meta" in str(info.value)
    assert _digest(path) == before and not Path(f"{path}-wal").exists()
    c = sqlite3.connect(path)
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["users"]
    c.close()
    # a foreign table called meta (without our schema_version) is no store either
    c = sqlite3.connect(tmp_path / "meta.db")
    c.execute("CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    c.execute("INSERT INTO meta VALUES ('owner', 'someone else')")
    c.commit()
    c.close()
    before = _digest(tmp_path / "meta.db")
    with pytest.raises(StoreError, match="not a lifelong_ros experience store"):
        ExperienceStore(tmp_path / "meta.db", OBS, ACT)
    assert _digest(tmp_path / "meta.db") == before
    # an existing store and a new empty file still open
    with ExperienceStore(tmp_path / "ok.sqlite3", OBS, ACT) as s:
        s.append_episode("t", 0, np.zeros((2, OBS)), np.zeros((2, ACT)))
    with ExperienceStore(tmp_path / "ok.sqlite3", OBS, ACT) as s:
        assert len(s) == 2
    (tmp_path / "empty.sqlite3").touch()
    with ExperienceStore(tmp_path / "empty.sqlite3", OBS, ACT) as s:
        assert len(s) == 0


@pytest.mark.parametrize("readonly", [False, True])
def test_a_non_integer_schema_version_is_one_clear_store_error(tmp_path, readonly):
    path = tmp_path / "s.sqlite3"
    ExperienceStore(path, OBS, ACT).close()
    c = sqlite3.connect(path)
    c.execute("UPDATE meta SET value='1.x' WHERE key='schema_version'")
    c.commit()
    c.close()
    with pytest.raises(StoreError, match=r"schema version '1.x'; this code reads version 1") as info:
        ExperienceStore(path, readonly=readonly)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("readonly", [False, True])
def test_a_directory_as_the_store_path_is_one_clear_store_error(tmp_path, readonly):
    with pytest.raises(StoreError, match="is a directory") as info:
        ExperienceStore(tmp_path, OBS, ACT, readonly=readonly)
    assert str(tmp_path) in str(info.value)


FULL_OPENER = textwrap.dedent(
    """
    import resource, signal, sys
    from lifelong_ros.experience.store import ExperienceStore
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG from write(), as a full disk gives ENOSPC
    lim = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim, lim))
    try:
        ExperienceStore(sys.argv[1], 8, 2)
    except Exception as exc:
        print(type(exc).__name__, exc)
    """
)


@pytest.mark.parametrize("limit", [0, 100])
def test_a_full_disk_while_opening_names_the_store_and_says_it_is_full(tmp_path, limit):
    path = tmp_path / "full.sqlite3"
    out = subprocess.run(
        [sys.executable, "-c", FULL_OPENER, str(path), str(limit)], env=_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("StoreFullError ") and str(path) in out.stdout, out.stdout
    assert "is full" in out.stdout and ("File too large" in out.stdout or "disk I/O error" in out.stdout)


def test_an_os_write_error_of_the_lock_file_is_a_store_write_error_with_the_path(tmp_path, monkeypatch):
    import errno

    def no_space(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", no_space)
    with pytest.raises(StoreFullError, match="No space left") as info:
        ExperienceStore(tmp_path / "s.sqlite3", OBS, ACT)
    assert str(tmp_path / "s.sqlite3") in str(info.value)

    def io_error(fd, data, offset):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "pwrite", io_error)
    with pytest.raises(StoreWriteError, match="Input/output error") as info2:
        ExperienceStore(tmp_path / "s.sqlite3", OBS, ACT)
    assert not isinstance(info2.value, StoreFullError) and str(tmp_path / "s.sqlite3") in str(info2.value)
