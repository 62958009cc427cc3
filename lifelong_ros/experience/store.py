"""ExperienceStore: the durable record of what the robot saw and did, for replay and safety gating.

Everything the robot learns comes from here, so losing or corrupting experience silently is the
worst failure it can have: SQLite in WAL mode (one writer process, any number of readers), obs and
actions as float32 blobs, one transaction per append batch; an in-memory numpy index in every
process makes filtered random sampling cost O(batch) at millions of records.

Durability: ``durability="process"`` (default, ``synchronous=NORMAL``): a record is acknowledged
when ``append`` returns; it then survives ``kill -9`` or a crash of the writer process (the
committed WAL frames are in the OS page cache), not a power loss or kernel crash, after which the
last transactions may be missing but the store is never corrupt. ``durability="power"``
(``synchronous=FULL``, fsync per commit) also survives power loss, at ~6x the single-append cost.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import resource
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from lifelong_ros.experience import samplers as _samplers
from lifelong_ros.experience.retention import RetentionPolicy, select_evictions
from lifelong_ros.experience.sources import SOURCES
from lifelong_ros.paths import store_path as default_store_path

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SOURCE_CODE = {s: i for i, s in enumerate(SOURCES)}
_DEMO = _SOURCE_CODE["demonstration"]
FLAG_NONFINITE = 1
SPLITS = ("train", "heldout", "all")
Durability = Literal["process", "power"]
NonFinitePolicy = Literal["reject", "flag"]
_FilterKey = tuple[tuple[str, ...] | None, tuple[str, ...] | None, str]  # (tasks, sources, split)
_ScalarT = TypeVar("_ScalarT", bound=np.generic)
_T = TypeVar("_T")

_INDEX_DTYPE = np.dtype(
    [
        ("id", "<i8"),
        ("task", "<i4"),
        ("ep", "<i4"),
        ("source", "i1"),
        ("flags", "u1"),
        ("heldout", "?"),
        ("rkey", "<f8"),
        ("stamp", "<i8"),
    ]
)
_LOAD_FIELDS = ("id", "ep", "source", "flags", "stamp")
_LOAD_DTYPE = np.dtype([(n, _INDEX_DTYPE[n]) for n in _LOAD_FIELDS])
_IN_CHUNK = 20000  # ids per `WHERE id IN (...)` statement

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state(
    one INTEGER PRIMARY KEY CHECK (one = 1),
    next_id INTEGER NOT NULL, evict_gen INTEGER NOT NULL, evicted_total INTEGER NOT NULL,
    over_budget INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tasks(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS episodes(
    id INTEGER PRIMARY KEY, task INTEGER NOT NULL, name TEXT NOT NULL,
    heldout INTEGER NOT NULL, first_seen_ns INTEGER NOT NULL, UNIQUE(task, name));
-- data = float32 observation followed by float32 action (one blob per record: fewer bound
-- parameters and Python objects per row is what makes batched ingest fast)
CREATE TABLE IF NOT EXISTS records(
    id INTEGER PRIMARY KEY, ep INTEGER NOT NULL, step INTEGER NOT NULL, stamp_ns INTEGER NOT NULL,
    source INTEGER NOT NULL, flags INTEGER NOT NULL, reward REAL, done INTEGER NOT NULL, data BLOB NOT NULL);
-- optional per-record label / free-form metadata (JSON), only for records that have them
CREATE TABLE IF NOT EXISTS extras(id INTEGER PRIMARY KEY, label TEXT, meta TEXT);
CREATE TABLE IF NOT EXISTS evictions(gen INTEGER PRIMARY KEY, ids BLOB NOT NULL, reason TEXT NOT NULL, stamp_ns INTEGER NOT NULL);
-- content digests of imported files (rosbag2 bags) so that importing the same data twice is a no-op
CREATE TABLE IF NOT EXISTS imports(digest TEXT PRIMARY KEY, info TEXT NOT NULL, stamp_ns INTEGER NOT NULL);
INSERT OR IGNORE INTO state(one, next_id, evict_gen, evicted_total, over_budget) VALUES (1, 1, 0, 0, 0);
"""
_TABLES = frozenset({"meta", "state", "tasks", "episodes", "records", "extras", "evictions", "imports"})
_EVICTION_LOG_KEEP = 2000  # eviction-log entries kept for readers to catch up incrementally


# ----------------------------------------------------------------------------------------- errors
class StoreError(RuntimeError):
    """Base class for experience-store failures."""


class StoreLockedError(StoreError):
    """Another process already has the store open for writing."""


class StoreWriteError(StoreError):
    """A write failed at the storage level; the batch was rolled back, earlier records are intact."""


class StoreFullError(StoreWriteError):
    """The disk (or file-size limit) is full; the batch was rolled back, earlier records are intact."""


class BudgetExceeded(StoreError):
    """The retention budget cannot be met without evicting protected records; the batch was rejected."""


class InvalidRecord(ValueError):
    """A record failed validation (NaN/Inf under ``nonfinite="reject"``, unknown source, ...)."""


class EmptySelection(ValueError):
    """A sampler was asked to draw from a filter that matches no record."""


# ------------------------------------------------------------------------------------- data types
@dataclass
class Batch:
    """Records as numpy arrays, ready for ``torch.from_numpy`` (obs/action are writable float32)."""

    obs: npt.NDArray[np.float32]  # [N, D] float32
    action: npt.NDArray[np.float32]  # [N, A] float32
    task: npt.NDArray[np.str_]  # [N] str
    episode: npt.NDArray[np.str_]  # [N] str
    step: npt.NDArray[np.int64]  # [N] int64
    stamp: npt.NDArray[np.float64]  # [N] float64 seconds
    source: npt.NDArray[np.str_]  # [N] str
    reward: npt.NDArray[np.float32]  # [N] float32
    done: npt.NDArray[np.bool_]  # [N] bool
    id: npt.NDArray[np.int64]  # [N] int64 record ids (insertion order)
    label: npt.NDArray[np.object_]  # [N] object: str or None
    stamp_ns: npt.NDArray[np.int64]  # [N] int64 nanoseconds (exact; ``stamp`` is the same in float seconds)

    def __len__(self) -> int:
        return int(self.obs.shape[0])


@dataclass(frozen=True)
class AppendResult:
    """What an acknowledged append wrote: record ids, how many were flagged non-finite, evictions."""

    ids: npt.NDArray[np.int64]
    flagged: int = 0
    evicted: int = 0


@dataclass(frozen=True)
class EpisodeInfo:
    task: str
    episode: str
    split: str
    records: int


def reservoir_keys(ids: npt.ArrayLike, salt: int) -> npt.NDArray[np.float64]:
    """Uniform [0, 1) key per record id (splitmix64 of id ^ salt): keeping the highest keys of a
    task is a uniform random subset of everything it recorded, i.e. reservoir sampling, and the
    key never needs storing."""
    # array (not scalar) uint64 arithmetic wraps modulo 2**64 without warnings, as splitmix64 needs
    z = np.atleast_1d(np.asarray(ids, dtype=np.uint64)) ^ np.uint64(salt)
    z += np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def episode_is_heldout(task: str, episode: str, seed: int, fraction: float) -> bool:
    """Deterministic held-out assignment: sha256(seed, task, episode) mapped to [0, 1) < fraction."""
    h = hashlib.sha256(f"{seed}\x00{task}\x00{episode}".encode()).digest()
    return int.from_bytes(h[:8], "little") / 2.0**64 < fraction


# ------------------------------------------------------------------------------- in-memory index
class _Grow(Generic[_ScalarT]):
    """Append-only numpy array with amortised doubling."""

    def __init__(self, dtype: type[_ScalarT] | np.dtype[_ScalarT], capacity: int = 1024):
        self.a: npt.NDArray[_ScalarT] = np.empty(capacity, dtype=dtype)
        self.n = 0

    def extend(self, x: npt.NDArray[_ScalarT]) -> None:
        need = self.n + x.shape[0]
        if need > self.a.shape[0]:
            new = np.empty(max(need, 2 * self.a.shape[0]), dtype=self.a.dtype)
            new[: self.n] = self.a[: self.n]
            self.a = new
        self.a[self.n : need] = x
        self.n = need

    def keep(self, mask: npt.NDArray[np.bool_]) -> None:
        kept = self.a[: self.n][mask]
        self.a[: kept.shape[0]] = kept
        self.n = kept.shape[0]

    @property
    def v(self) -> npt.NDArray[_ScalarT]:
        return self.a[: self.n]


@dataclass
class _Candidates:
    """Cached sampler candidates for one (tasks, sources, split) filter, extended incrementally."""

    epoch: int
    upto: int
    ids: _Grow[np.int64]
    by_task: dict[int, _Grow[np.int64]] = field(default_factory=dict)


@dataclass
class _Pending:
    """What the open write transaction added (merged into the caches only after COMMIT)."""

    next_id: int
    rows: list[npt.NDArray[np.void]] = field(default_factory=list)  # structured _INDEX_DTYPE arrays
    tasks: dict[str, int] = field(default_factory=dict)  # name -> id
    episodes: dict[tuple[int, str], tuple[int, bool]] = field(
        default_factory=dict
    )  # (task_id, name) -> (ep_id, heldout)


# ---------------------------------------------------------------------------------------- store
class ExperienceStore:
    """Durable experience records with retention, a persisted held-out split and fast samplers.

    ``ExperienceStore(path, obs_dim, act_dim)`` opens (creating if needed) the store for writing;
    only one process may write at a time (a lock file enforces it). ``readonly=True`` opens it for
    reading from any number of other processes while the writer writes; dims are then read from
    the store. See the module docstring for the durability guarantee.
    """

    # Retention counters, recomputed by _retention_triggered whenever _counts_dirty is set.
    _ev_counts: npt.NDArray[np.intp]  # evictable records per task id
    _ev_min_stamp: int | None  # oldest evictable stamp_ns
    _max_stamp: int | None  # newest stamp_ns

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        obs_dim: int | None = None,
        act_dim: int | None = None,
        *,
        readonly: bool = False,
        durability: Durability = "process",
        retention: RetentionPolicy | dict[str, Any] | None = None,
        nonfinite: NonFinitePolicy = "reject",
        heldout_fraction: float | None = None,
        split_seed: int | None = None,
        busy_timeout_s: float = 10.0,
    ) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self.readonly = readonly
        if durability not in ("process", "power"):
            raise ValueError(f"durability={durability!r}: expected 'process' or 'power'")
        if nonfinite not in ("reject", "flag"):
            raise ValueError(f"nonfinite={nonfinite!r}: expected 'reject' or 'flag'")
        self.durability = durability
        self.nonfinite = nonfinite
        self.retention = retention if isinstance(retention, RetentionPolicy) else RetentionPolicy.from_dict(retention)
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._txn_depth = 0
        self._pending: _Pending | None = None
        self._closed = False
        self._has_extras = False

        if self.path.is_dir():
            raise StoreError(
                f"experience store path {self.path} is a directory; expected the store's file "
                f"(e.g. {self.path / 'experience.sqlite3'})"
            )
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"experience store {self.path} does not exist (opened readonly)")
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise self._os_error(exc, f"creating the directory {self.path.parent}") from exc
            self._acquire_writer_lock()
        try:
            try:
                self._conn = sqlite3.connect(
                    str(self.path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
                )
            except sqlite3.Error as exc:
                raise StoreError(f"experience store {self.path} cannot be opened: {exc}") from exc
            self._setup(obs_dim, act_dim, heldout_fraction, split_seed)
            self._reset_index()
            # one read transaction: a writer committing between the reads of tasks, episodes and
            # records would otherwise hand us records of episodes we have not loaded
            with self._read_snapshot(full=True):
                pass
        except BaseException:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._release()
            raise

    # ----------------------------------------------------------------------------- open / close
    def _acquire_writer_lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreLockedError(
                f"experience store {self.path} is already open for writing by another process (pid {holder}); "
                f"open it with readonly=True to read while that process writes"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError as exc:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise self._os_error(exc, f"writing the lock file {lock_path}") from exc
        self._lock_fd = fd

    def _os_error(self, exc: OSError, what: str) -> StoreWriteError:
        """An OSError of a write as StoreFullError (ENOSPC, EFBIG, EDQUOT) or StoreWriteError, with the path."""
        free_s, limit_s = self._space()
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            return StoreFullError(
                f"experience store {self.path} is full while {what}: {exc} ({free_s}{limit_s}); nothing was written; "
                f"free space or raise the file-size limit"
            )
        return StoreWriteError(f"experience store {self.path}: write failed while {what}: {exc} ({free_s}{limit_s})")

    def _space(self) -> tuple[str, str]:
        try:
            free_s = f"{shutil.disk_usage(self.path.parent).free} bytes free on {self.path.parent}"
        except OSError:
            free_s = "free space unknown"
        fsize = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        limit_s = "" if fsize == resource.RLIM_INFINITY else f", file-size limit {fsize} bytes (RLIMIT_FSIZE)"
        return free_s, limit_s

    def _setup(
        self, obs_dim: int | None, act_dim: int | None, heldout_fraction: float | None, split_seed: int | None
    ) -> None:
        c = self._conn
        if not self.readonly:
            self._refuse_foreign_database()  # before any pragma or table changes the file
        try:
            if self.readonly:
                c.execute("PRAGMA query_only=ON")
            else:
                c.execute("PRAGMA page_size=16384")  # only takes effect on a new, empty database
                mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"experience store {self.path}: could not enable WAL mode (got {mode!r})")
                c.execute(f"PRAGMA synchronous={'FULL' if self.durability == 'power' else 'NORMAL'}")
                c.execute("PRAGMA journal_size_limit=67108864")
            c.execute("PRAGMA cache_size=-65536")
            c.execute("PRAGMA mmap_size=268435456")
        except sqlite3.DatabaseError as exc:
            if not self.readonly and _is_io_error(exc):
                raise self._translate(exc, "opening the store") from exc
            raise StoreError(f"{self.path} is not a readable experience store: {exc}") from exc

        if not self.readonly:
            self._exec_write(lambda: c.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;"), "creating the schema")
        try:
            meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not an experience store (no meta table): {exc}") from exc

        wanted = {
            "obs_dim": obs_dim,
            "act_dim": act_dim,
            "heldout_fraction": heldout_fraction,
            "split_seed": split_seed,
        }
        if not meta:
            if self.readonly:
                raise StoreError(f"{self.path} is an empty experience store (no writer has initialised it yet)")
            if obs_dim is None or act_dim is None:
                raise ValueError(
                    f"creating experience store {self.path} needs obs_dim and act_dim (got {obs_dim}, {act_dim})"
                )
            for name in ("obs_dim", "act_dim"):
                v = wanted[name]
                if not isinstance(v, (int, np.integer)) or v <= 0:
                    raise ValueError(f"{name}={v!r}: expected a positive int")
            frac = 0.2 if heldout_fraction is None else float(heldout_fraction)
            if not 0.0 <= frac < 1.0:
                raise ValueError(f"heldout_fraction={heldout_fraction!r}: expected 0 <= fraction < 1")
            meta = {
                "schema_version": str(SCHEMA_VERSION),
                "obs_dim": str(int(obs_dim)),
                "act_dim": str(int(act_dim)),
                "heldout_fraction": repr(frac),
                "split_seed": str(int(split_seed or 0)),
                "reservoir_salt": str(int.from_bytes(os.urandom(8), "little")),
                "created_ns": str(time.time_ns()),
            }
            self._exec_write(
                lambda: (
                    c.execute("BEGIN IMMEDIATE"),
                    c.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", meta.items()),
                    c.execute("COMMIT"),
                ),
                "initialising the store",
            )
        self._check_version(meta.get("schema_version"))
        self.obs_dim = int(meta["obs_dim"])
        self.act_dim = int(meta["act_dim"])
        self.heldout_fraction = float(meta["heldout_fraction"])
        self.split_seed = int(meta["split_seed"])
        self._salt = int(meta["reservoir_salt"])
        stored = {
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "heldout_fraction": self.heldout_fraction,
            "split_seed": self.split_seed,
        }
        for name, value in wanted.items():
            if value is not None and stored[name] != (float(value) if name == "heldout_fraction" else int(value)):
                raise ValueError(
                    f"experience store {self.path} was created with {name}={stored[name]!r}; opened with {name}={value!r}"
                )

    def _check_version(self, version: object) -> None:
        try:
            ok = version is not None and int(str(version)) == SCHEMA_VERSION
        except ValueError:
            ok = False
        if not ok:
            raise StoreError(
                f"experience store {self.path}: schema version {version!r}; this code reads version {SCHEMA_VERSION}"
            )

    def _refuse_foreign_database(self) -> None:
        """Refuse (changing nothing) an SQLite database that is not a lifelong_ros store: a store has a
        ``meta`` table with a ``schema_version`` row (or, half-initialised, exactly our tables)."""
        c = self._conn
        try:
            tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a readable experience store: {exc}") from exc
        tables = {t for t in tables if not t.startswith("sqlite_")}
        if not tables:
            return  # a new (or empty) database: it becomes a store
        version = None
        if "meta" in tables:
            with contextlib.suppress(sqlite3.DatabaseError):
                row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                version = None if row is None else row[0]
        if version is None:
            if tables <= _TABLES and {"meta", "state", "records"} <= tables:
                with contextlib.suppress(sqlite3.DatabaseError):
                    if c.execute("SELECT count(*) FROM meta").fetchone()[0] == 0:
                        return  # our schema without meta rows: a writer died before initialising it
            raise StoreError(
                f"{self.path} is an SQLite database but not a lifelong_ros experience store (tables "
                f"{sorted(tables)[:10]}; expected a 'meta' table with a schema_version); refusing to open it for "
                f"writing, nothing was changed: give the path of an experience store or of a new file"
            )
        self._check_version(version)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not self.readonly:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._release()

    def _release(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> ExperienceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; close() is the contract
        with contextlib.suppress(Exception):
            self.close()

    # ------------------------------------------------------------------------------ the index
    def _reset_index(self) -> None:
        self._idx = _Grow(_INDEX_DTYPE, 4096)
        self._task_names: list[str] = [""]  # task ids start at 1
        self._task_lookup: dict[str, int] = {}
        self._ep_task = _Grow(np.int32, 256)
        self._ep_heldout = _Grow(np.bool_, 256)
        self._ep_names: list[str] = [""]
        self._ep_task.extend(np.zeros(1, np.int32))
        self._ep_heldout.extend(np.zeros(1, np.bool_))
        self._ep_lookup: dict[tuple[int, str], int] = {}
        self._names_cache: tuple[int, npt.NDArray[np.str_], npt.NDArray[np.str_]] | None = None
        self._max_id = 0
        self._gen = 0
        self._epoch = 0  # bumps when records are removed from the index
        self._cands: dict[_FilterKey, _Candidates] = {}
        self._evicted_total = 0
        self._over_budget = False
        self._counts_dirty = True
        self._last_evicted = 0

    def _add_tasks(self, rows: Iterable[tuple[int, str]]) -> None:
        for tid, name in rows:
            while len(self._task_names) <= tid:
                self._task_names.append("")
            self._task_names[tid] = name
            self._task_lookup[name] = tid

    def _add_episodes(self, rows: Iterable[tuple[int, int, str, int]]) -> None:
        for eid, tid, name, heldout in rows:
            if eid >= self._ep_task.n:
                grow = eid + 1 - self._ep_task.n
                self._ep_task.extend(np.zeros(grow, np.int32))
                self._ep_heldout.extend(np.zeros(grow, np.bool_))
                self._ep_names.extend([""] * grow)
            self._ep_task.a[eid] = tid
            self._ep_heldout.a[eid] = bool(heldout)
            self._ep_names[eid] = name
            self._ep_lookup[(tid, name)] = eid

    def _add_index_rows(self, rows: npt.NDArray[np.void]) -> None:
        if rows.shape[0]:
            self._idx.extend(rows)
            self._max_id = max(self._max_id, int(rows["id"][-1]))
            if not self._counts_dirty:  # keep the retention counters current without an O(n) pass
                ev = (rows["source"] != _DEMO) & ~rows["heldout"]
                add = np.bincount(rows["task"][ev], minlength=self._ev_counts.shape[0])
                if add.shape[0] > self._ev_counts.shape[0]:
                    self._ev_counts = np.pad(self._ev_counts, (0, add.shape[0] - self._ev_counts.shape[0]))
                self._ev_counts = self._ev_counts + add
                if ev.any():
                    m = int(rows["stamp"][ev].min())
                    self._ev_min_stamp = m if self._ev_min_stamp is None else min(self._ev_min_stamp, m)
                m = int(rows["stamp"].max())
                self._max_stamp = m if self._max_stamp is None else max(self._max_stamp, m)

    def _remove_index_ids(self, ids: npt.NDArray[np.int64]) -> None:
        if ids.shape[0] == 0:
            return
        cur = self._idx.v["id"]
        pos = np.searchsorted(cur, ids)
        inside = pos < cur.shape[0]
        pos = pos[inside]
        pos = pos[cur[pos] == ids[inside]]
        if pos.shape[0] == 0:
            return
        mask = np.ones(cur.shape[0], dtype=bool)
        mask[pos] = False
        self._idx.keep(mask)
        self._epoch += 1
        self._cands.clear()
        self._counts_dirty = True

    def _load_records(self, where: str, args: tuple[int, ...]) -> npt.NDArray[np.void]:
        raw = np.fromiter(
            self._conn.execute(f"SELECT id, ep, source, flags, stamp_ns FROM records {where} ORDER BY id", args),
            dtype=_LOAD_DTYPE,
        )
        out = np.empty(raw.shape[0], dtype=_INDEX_DTYPE)
        for name in _LOAD_FIELDS:
            out[name] = raw[name]
        out["task"] = self._ep_task.v[raw["ep"]]
        out["heldout"] = self._ep_heldout.v[raw["ep"]]
        out["rkey"] = reservoir_keys(raw["id"], self._salt)
        return out

    def _refresh(self, force_full: bool = False) -> None:
        """Bring the index up to date with the database (call inside a read snapshot)."""
        c = self._conn
        # state.next_id is only rewritten by commits that evict; max(id) is one b-tree descent.
        next_id, gen, evicted_total, over, max_id, extras = c.execute(
            "SELECT next_id, evict_gen, evicted_total, over_budget, (SELECT max(id) FROM records), "
            "EXISTS(SELECT 1 FROM extras) FROM state"
        ).fetchone()
        self._has_extras = self._has_extras or bool(extras)
        next_id = max(next_id, (max_id or 0) + 1)
        self._evicted_total = evicted_total
        self._over_budget = bool(over)
        if not force_full and next_id - 1 <= self._max_id and gen == self._gen:
            return
        if not force_full and gen > self._gen:
            rows = c.execute("SELECT gen, ids FROM evictions WHERE gen > ? ORDER BY gen", (self._gen,)).fetchall()
            if not rows or rows[0][0] != self._gen + 1 or rows[-1][0] != gen:
                force_full = True  # the log was pruned past us: reload
        if force_full:
            self._reset_index()
            self._evicted_total = evicted_total
            self._over_budget = bool(over)
        self._add_tasks(c.execute("SELECT id, name FROM tasks WHERE id > ? ORDER BY id", (len(self._task_names) - 1,)))
        self._add_episodes(
            c.execute("SELECT id, task, name, heldout FROM episodes WHERE id > ? ORDER BY id", (self._ep_task.n - 1,))
        )
        self._add_index_rows(self._load_records("WHERE id > ?", (self._max_id,)))
        if not force_full and gen > self._gen:
            ids = np.concatenate([np.frombuffer(b, dtype=np.int64) for _, b in rows])
            self._remove_index_ids(np.sort(ids))
        self._gen = gen
        self._max_id = max(self._max_id, next_id - 1)

    @contextlib.contextmanager
    def _read_snapshot(self, full: bool = False) -> Iterator[None]:
        """A consistent view: refresh the index and read records inside one read transaction
        (``full``: rebuild the index, as at open; the writer's is rebuilt without a transaction)."""
        if self.readonly and not self._conn.in_transaction:
            self._conn.execute("BEGIN")
            try:
                self._refresh(force_full=full)
                yield
            finally:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("COMMIT")
        else:
            if full:
                self._refresh(force_full=True)
            yield  # the writer's index is always current for committed data

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"experience store {self.path} is closed")

    def refresh(self) -> None:
        """Pick up what the writer committed since the last call (samplers do this themselves)."""
        with self._lock:
            self._check_open()
            with self._read_snapshot():
                pass

    # ------------------------------------------------------------------------------- writing
    def _exec_write(self, fn: Callable[[], _T], what: str) -> _T:
        try:
            return fn()
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            raise self._translate(exc, what) from exc

    def _translate(self, exc: sqlite3.Error, what: str) -> Exception:
        code = getattr(exc, "sqlite_errorname", "") or ""
        msg = str(exc)
        free_s, limit_s = self._space()
        fsize = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        sizes = [f.stat().st_size for f in (self.path, Path(f"{self.path}-wal")) if f.exists()]
        at_limit = fsize != resource.RLIM_INFINITY and max(sizes, default=0) + (1 << 16) >= fsize
        if code.startswith("SQLITE_FULL") or "full" in msg or (code.startswith("SQLITE_IOERR") and at_limit):
            return StoreFullError(
                f"experience store {self.path} is full while {what}: {msg} ({free_s}{limit_s}); the batch was rolled back "
                f"and every record acknowledged before it is intact; free space or lower the retention budget"
            )
        if code.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN")) or "I/O" in msg:
            return StoreWriteError(
                f"experience store {self.path}: write failed while {what}: {msg} [{code}] ({free_s}{limit_s}); "
                f"the batch was rolled back and every record acknowledged before it is intact"
            )
        if code.startswith("SQLITE_BUSY") or "locked" in msg:
            return StoreError(f"experience store {self.path}: database busy while {what}: {msg}")
        return StoreError(f"experience store {self.path}: {what} failed: {msg} [{code}]")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group several appends into one atomic commit (all acknowledged together, or none)."""
        self._check_writable()
        with self._lock, self._write_txn("committing a transaction"):
            yield

    @contextlib.contextmanager
    def _write_txn(self, what: str) -> Iterator[None]:
        outer = self._txn_depth == 0
        if outer:
            # Deferred BEGIN is enough: the lock file makes this the only writer process.
            self._exec_write(lambda: self._conn.execute("BEGIN"), what)
            self._pending = _Pending(next_id=self._max_id + 1)
        self._txn_depth += 1
        evicted = np.zeros(0, np.int64)
        saved = (self._gen, self._evicted_total, self._over_budget)
        try:
            yield
            if outer:
                evicted = self._exec_write(self._commit_pending, what)
        except BaseException:
            if outer:
                with contextlib.suppress(sqlite3.Error):
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                self._pending = None
                self._gen, self._evicted_total, self._over_budget = saved
            raise
        finally:
            self._txn_depth -= 1
        if outer:
            p, self._pending = self._txn(), None
            self._add_tasks((tid, name) for name, tid in p.tasks.items())
            self._add_episodes((eid, tid, name, h) for (tid, name), (eid, h) in p.episodes.items())
            for rows in p.rows:
                self._add_index_rows(rows)
            self._max_id = max(self._max_id, p.next_id - 1)
            self._remove_index_ids(evicted)
            self._last_evicted = int(evicted.shape[0])

    def _txn(self) -> _Pending:
        """What the open write transaction has added so far (only inside ``_write_txn``)."""
        if self._pending is None:
            raise StoreError(f"experience store {self.path}: no write transaction is open")
        return self._pending

    def _commit_pending(self) -> npt.NDArray[np.int64]:
        p = self._txn()
        c = self._conn
        evicted = self._retention_victims(p)
        if evicted.shape[0]:
            self._delete_ids(evicted)
            self._gen += 1
            c.execute(
                "INSERT INTO evictions(gen, ids, reason, stamp_ns) VALUES (?, ?, ?, ?)",
                (self._gen, evicted.astype("<i8").tobytes(), "retention", time.time_ns()),
            )
            c.execute("DELETE FROM evictions WHERE gen <= ?", (self._gen - _EVICTION_LOG_KEEP,))
            self._evicted_total += int(evicted.shape[0])
            self._write_state(p.next_id)
        c.execute("COMMIT")
        return evicted

    def _delete_ids(self, ids: npt.NDArray[np.int64]) -> None:
        for s in range(0, ids.shape[0], _IN_CHUNK):
            in_list = ",".join(map(str, ids[s : s + _IN_CHUNK].tolist()))
            self._conn.execute(f"DELETE FROM records WHERE id IN ({in_list})")
            if self._has_extras:
                self._conn.execute(f"DELETE FROM extras WHERE id IN ({in_list})")

    def _retention_victims(self, p: _Pending) -> npt.NDArray[np.int64]:
        pol = self.retention
        if not pol.active:
            return np.zeros(0, np.int64)
        new = np.concatenate(p.rows) if p.rows else np.zeros(0, _INDEX_DTYPE)
        if not self._retention_triggered(new):
            if self._over_budget:
                self._set_over_budget(False)
            return np.zeros(0, np.int64)
        allrows = np.concatenate([self._idx.v, new])
        protected = (allrows["source"] == _DEMO) | allrows["heldout"]
        victims, overflow = select_evictions(
            pol,
            allrows["id"],
            allrows["task"],
            protected,
            allrows["source"] == _DEMO,
            allrows["rkey"],
            allrows["stamp"],
            self._bytes_per_record(),
        )
        if overflow is not None:
            if pol.on_protected_overflow == "raise":
                raise BudgetExceeded(overflow.message(str(self.path)) + "; the batch was rejected")
            log.warning("%s", overflow.message(str(self.path)))
            self._set_over_budget(True)
        elif self._over_budget:
            self._set_over_budget(False)
        return victims

    def _set_over_budget(self, value: bool) -> None:
        self._over_budget = value
        self._write_state(self._txn().next_id)

    def _write_state(self, next_id: int) -> None:
        self._conn.execute(
            "UPDATE state SET next_id=?, evict_gen=?, evicted_total=?, over_budget=? WHERE one=1",
            (next_id, self._gen, self._evicted_total, int(self._over_budget)),
        )

    def _bytes_per_record(self) -> float:
        c = self._conn
        pages: int = c.execute("PRAGMA page_count").fetchone()[0] - c.execute("PRAGMA freelist_count").fetchone()[0]
        page: int = c.execute("PRAGMA page_size").fetchone()[0]
        n: int = self._idx.n + sum(r.shape[0] for r in (self._pending.rows if self._pending else []))
        estimate = 4.0 * (self.obs_dim + self.act_dim) + 64.0
        if n < 1000:
            return estimate
        return max(pages * page / n, estimate * 0.5)

    def _retention_triggered(self, new: npt.NDArray[np.void]) -> bool:
        """Cheap check (no O(n) work on the common path) whether any budget may be exceeded."""
        pol = self.retention
        if self._counts_dirty:
            v = self._idx.v
            evictable = (v["source"] != _DEMO) & ~v["heldout"]
            self._ev_counts = np.bincount(v["task"][evictable], minlength=len(self._task_names) + 1)
            self._ev_min_stamp = int(v["stamp"][evictable].min()) if evictable.any() else None
            self._max_stamp = int(v["stamp"].max()) if v.shape[0] else None
            self._counts_dirty = False
        n_total = self._idx.n + new.shape[0]
        budget = None
        if pol.max_records is not None:
            budget = pol.max_records
        if pol.max_bytes is not None:
            b = int(pol.max_bytes // self._bytes_per_record())
            budget = b if budget is None else min(budget, b)
        if budget is not None and n_total > budget:
            return True
        new_ev = (new["source"] != _DEMO) & ~new["heldout"]
        if pol.per_task_cap is not None:
            counts = self._ev_counts
            add = np.bincount(new["task"][new_ev], minlength=counts.shape[0])
            if add.shape[0] > counts.shape[0]:
                counts = np.pad(counts, (0, add.shape[0] - counts.shape[0]))
            if ((counts + add) > pol.per_task_cap).any():
                return True
        if pol.max_age_s is not None and n_total:
            stamps = [s for s in (self._max_stamp, int(new["stamp"].max()) if new.shape[0] else None) if s is not None]
            mins = [
                s
                for s in (self._ev_min_stamp, int(new["stamp"][new_ev].min()) if new_ev.any() else None)
                if s is not None
            ]
            if stamps and mins and min(mins) < max(stamps) - int(pol.max_age_s * 1e9):
                return True
        return False

    def _check_writable(self) -> None:
        self._check_open()
        if self.readonly:
            raise StoreError(f"experience store {self.path} was opened readonly; only the writer process may append")

    def _task_id(self, name: str) -> int:
        tid = self._task_lookup.get(name)
        if tid is None:
            tid = self._txn().tasks.get(name)
        if tid is None:
            if not name:
                raise InvalidRecord("task name is empty; expected a non-empty string such as 'pick-place-v3'")
            cur = self._conn.execute("INSERT INTO tasks(name) VALUES (?)", (name,))
            tid = _rowid(cur)
            self._txn().tasks[name] = tid
        return tid

    def _episode_id(self, tid: int, task: str, name: str, split: str | None, stamp_ns: int) -> tuple[int, bool]:
        eid = self._ep_lookup.get((tid, name))
        if eid is not None:
            heldout = bool(self._ep_heldout.a[eid])
        elif (tid, name) in self._txn().episodes:
            eid, heldout = self._txn().episodes[(tid, name)]
        else:
            if split is None:
                heldout = episode_is_heldout(task, name, self.split_seed, self.heldout_fraction)
            else:
                heldout = split == "heldout"
            cur = self._conn.execute(
                "INSERT INTO episodes(task, name, heldout, first_seen_ns) VALUES (?, ?, ?, ?)",
                (tid, name, int(heldout), stamp_ns),
            )
            eid = _rowid(cur)
            self._txn().episodes[(tid, name)] = (eid, heldout)
            return eid, heldout
        if split is not None and heldout != (split == "heldout"):
            raise InvalidRecord(
                f"episode {name!r} of task {task!r} is already stored as {'heldout' if heldout else 'train'}; "
                f"append asked for split={split!r} (the split of an episode is fixed at first sight)"
            )
        return eid, heldout

    def append(
        self,
        task: str | Sequence[str] | npt.NDArray[np.str_],
        episode: str | int | Sequence[str | int] | npt.NDArray[Any],
        step: int | Sequence[int] | npt.NDArray[np.integer[Any]],
        obs: npt.ArrayLike,
        action: npt.ArrayLike,
        *,
        reward: float | npt.NDArray[np.floating[Any]] = 0.0,
        done: bool | npt.NDArray[np.bool_] = False,
        stamp: float | npt.NDArray[np.floating[Any]] | None = None,
        stamp_ns: int | npt.NDArray[np.integer[Any]] | None = None,
        source: str | Sequence[str] | npt.NDArray[np.str_] = "policy",
        label: str | Sequence[str | None] | None = None,
        meta: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
        split: Literal["train", "heldout"] | None = None,
    ) -> AppendResult:
        """Append N records (one transaction); returns once they are durable per ``durability``.

        ``obs`` [N, obs_dim] or [obs_dim]; ``action`` [N, act_dim] or [act_dim]; ``task``,
        ``episode``, ``source``, ``step``, ``reward``, ``done``, ``stamp`` (float seconds) or
        ``stamp_ns`` (int ns; default: now), ``label`` are scalars or length-N sequences. An
        episode's split is decided at its first record: ``split`` forces it, else a hash of
        (split_seed, task, episode) against ``heldout_fraction``.
        """
        self._check_writable()
        obs = np.asarray(obs, dtype=np.float32)
        action = np.asarray(action, dtype=np.float32)
        if obs.ndim == 1:
            obs = obs[None, :]
        if action.ndim == 1:
            action = action[None, :]
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs has shape {obs.shape}; expected (N, {self.obs_dim}) or ({self.obs_dim},)")
        if action.ndim != 2 or action.shape[1] != self.act_dim:
            raise ValueError(f"action has shape {action.shape}; expected (N, {self.act_dim}) or ({self.act_dim},)")
        n = obs.shape[0]
        if action.shape[0] != n:
            raise ValueError(f"obs has {n} rows but action has {action.shape[0]}; expected the same number")
        if n == 0:
            return AppendResult(ids=np.zeros(0, np.int64))
        if split not in (None, "train", "heldout"):
            raise ValueError(f"split={split!r}: expected None, 'train' or 'heldout'")
        obs = np.ascontiguousarray(obs)
        action = np.ascontiguousarray(action)
        tasks = _strs(task, n, "task")
        episodes = _strs(episode, n, "episode")
        sources = _strs(source, n, "source")
        steps = _ints(step, n, "step")
        rewards = _floats(reward, n, "reward")
        dones = _bools(done, n, "done")
        if stamp_ns is not None:
            stamps = _ints(stamp_ns, n, "stamp_ns")
        elif stamp is not None:
            stamps = np.round(_floats(stamp, n, "stamp", np.float64) * 1e9).astype(np.int64)
        else:
            stamps = np.full(n, time.time_ns(), np.int64)
        labels = _labels(label, n)
        metas = _metas(meta, n)

        src_codes = _source_codes(sources, n)
        finite = np.isfinite(obs).all(axis=1) & np.isfinite(action).all(axis=1) & np.isfinite(rewards)
        n_bad = int(n - np.count_nonzero(finite))
        flags = (~finite).astype(np.uint8) * np.uint8(FLAG_NONFINITE)
        if n_bad and self.nonfinite == "reject":
            i = int(np.flatnonzero(~finite)[0])
            what = _first_nonfinite(obs[i], action[i], rewards[i])
            raise InvalidRecord(
                f"record {i} of {n} (task={_at(tasks, i)!r}, episode={_at(episodes, i)!r}, step={int(steps[i])}): "
                f"{what}; expected finite values ({n_bad} non-finite record(s) in the batch, nothing stored; "
                f"ExperienceStore(nonfinite='flag') stores them flagged and excluded from sampling)"
            )

        with self._lock:
            self._check_writable()
            outer = self._txn_depth == 0
            with self._write_txn(f"appending {n} records"):
                p = self._txn()
                ids = np.arange(p.next_id, p.next_id + n, dtype=np.int64)
                task_ids, ep_ids, heldout = self._resolve_episodes(tasks, episodes, split, n, int(stamps[0]))
                rows = zip(
                    ids.tolist(),
                    ep_ids.tolist(),
                    steps.tolist(),
                    stamps.tolist(),
                    src_codes.tolist(),
                    flags.tolist(),
                    _reward_list(rewards),
                    dones.astype(np.int8).tolist(),
                    map(bytes, np.concatenate([obs, action], axis=1)),
                )
                self._conn.executemany(
                    "INSERT INTO records(id, ep, step, stamp_ns, source, flags, reward, done, data) VALUES (?,?,?,?,?,?,?,?,?)",
                    rows,
                )
                if labels is not None or metas is not None:
                    ex = [
                        (i, lb, m)
                        for i, lb, m in zip(ids.tolist(), labels or [None] * n, metas or [None] * n)
                        if lb is not None or m is not None
                    ]
                    if ex:
                        self._conn.executemany("INSERT INTO extras(id, label, meta) VALUES (?,?,?)", ex)
                        self._has_extras = True
                idx = np.empty(n, _INDEX_DTYPE)
                idx["id"] = ids
                idx["task"] = task_ids
                idx["ep"] = ep_ids
                idx["source"] = src_codes
                idx["flags"] = flags
                idx["heldout"] = heldout
                idx["rkey"] = reservoir_keys(ids, self._salt)
                idx["stamp"] = stamps
                p.rows.append(idx)
                p.next_id += n
            return AppendResult(ids=ids, flagged=n_bad, evicted=self._last_evicted if outer else 0)

    def _resolve_episodes(
        self,
        tasks: str | npt.NDArray[np.str_],
        episodes: str | npt.NDArray[np.str_],
        split: Literal["train", "heldout"] | None,
        n: int,
        stamp_ns: int,
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32], npt.NDArray[np.bool_]]:
        if isinstance(tasks, str) and isinstance(episodes, str):
            tid = self._task_id(tasks)
            eid, h = self._episode_id(tid, tasks, episodes, split, stamp_ns)
            return np.full(n, tid, np.int32), np.full(n, eid, np.int32), np.full(n, h)
        t_arr = np.broadcast_to(np.asarray(tasks, dtype=str), (n,))
        e_arr = np.broadcast_to(np.asarray(episodes, dtype=str), (n,))
        t_u, t_inv = np.unique(t_arr, return_inverse=True)
        e_u, e_inv = np.unique(e_arr, return_inverse=True)
        pairs, inverse = np.unique(t_inv.astype(np.int64) * e_u.shape[0] + e_inv, return_inverse=True)
        tids = np.empty(pairs.shape[0], np.int32)
        eids = np.empty(pairs.shape[0], np.int32)
        hs = np.empty(pairs.shape[0], bool)
        for k, pair in enumerate(pairs.tolist()):
            t, e = str(t_u[pair // e_u.shape[0]]), str(e_u[pair % e_u.shape[0]])
            tids[k] = self._task_id(t)
            eids[k], hs[k] = self._episode_id(int(tids[k]), t, e, split, stamp_ns)
        return tids[inverse], eids[inverse], hs[inverse]

    def append_episode(
        self,
        task: str,
        episode: str | int,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray | float = 0.0,
        done: np.ndarray | None = None,
        *,
        source: str = "demonstration",
        stamp_ns: np.ndarray | None = None,
        split: Literal["train", "heldout"] | None = None,
    ) -> AppendResult:
        """Append a whole episode (steps 0..T-1, ``done`` on the last step unless given)."""
        obs = np.asarray(obs, dtype=np.float32)
        t = obs.shape[0] if obs.ndim == 2 else 1
        if done is None:
            done = np.zeros(t, bool)
            done[-1] = True
        if stamp_ns is None:
            stamp_ns = time.time_ns() + np.arange(t, dtype=np.int64)  # distinct, ordered stamps
        return self.append(
            task,
            episode,
            np.arange(t),
            obs,
            action,
            reward=reward,
            done=done,
            stamp_ns=stamp_ns,
            source=source,
            split=split,
        )

    def delete_episodes(self, task: str, episodes: Sequence[str | int]) -> int:
        """Explicitly delete episodes (protected ones included); returns the number of records removed."""
        self._check_writable()
        with self._lock:
            tid = self._task_lookup.get(task)
            if tid is None:
                raise KeyError(f"unknown task {task!r}; known tasks: {self.tasks()}")
            eids = [self._ep_lookup.get((tid, str(e))) for e in episodes]
            missing = [str(e) for e, i in zip(episodes, eids) if i is None]
            if missing:
                raise KeyError(f"task {task!r} has no episode(s) {missing}")
            v = self._idx.v
            ids = v["id"][np.isin(v["ep"], np.asarray(eids, np.int32))]
            with self._write_txn("deleting episodes"):
                self._delete_ids(ids)
                self._gen += 1
                self._conn.execute(
                    "INSERT INTO evictions(gen, ids, reason, stamp_ns) VALUES (?, ?, ?, ?)",
                    (
                        self._gen,
                        ids.astype("<i8").tobytes(),
                        f"explicit delete of {len(eids)} episode(s)",
                        time.time_ns(),
                    ),
                )
                self._evicted_total += int(ids.shape[0])
                self._write_state(self._txn().next_id)
            self._remove_index_ids(ids)
            return int(ids.shape[0])

    # ----------------------------------------------------------------------- imported files
    def imported(self, digest: str) -> dict[str, Any] | None:
        """What ``mark_imported(digest, info)`` recorded (plus ``stamp_ns``), or None: lets an importer
        recognise data it already imported (e.g. the same bag twice)."""
        with self._lock:
            self._check_open()
            try:
                row = self._conn.execute("SELECT info, stamp_ns FROM imports WHERE digest=?", (digest,)).fetchone()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):  # a store written before imports were recorded
                    return None
                raise StoreError(f"experience store {self.path}: reading the import log failed: {exc}") from exc
            if row is None:
                return None
            info: dict[str, Any] = json.loads(row[0])
            info["stamp_ns"] = int(row[1])
            return info

    def mark_imported(self, digest: str, info: dict[str, Any]) -> None:
        """Record that content ``digest`` was imported (``info``: JSON-able, e.g. task and episodes), in
        the open ``transaction()`` if any: it commits or rolls back with the records it describes."""
        if not digest:
            raise ValueError("digest is empty; expected the content hash of the imported data")
        self._check_writable()
        with self._lock, self._write_txn("recording an import"):
            self._conn.execute(
                "INSERT OR REPLACE INTO imports(digest, info, stamp_ns) VALUES (?, ?, ?)",
                (digest, json.dumps(info, sort_keys=True), time.time_ns()),
            )

    # ------------------------------------------------------------------------------- reading
    def _filter_key(
        self, tasks: str | Sequence[str] | None, sources: str | Sequence[str] | None, split: str
    ) -> _FilterKey:
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: expected one of {SPLITS}")
        if isinstance(tasks, str):
            tasks = (tasks,)
        if isinstance(sources, str):
            sources = (sources,)
        tkey = None if tasks is None else tuple(sorted(set(tasks)))
        skey = None if sources is None else tuple(sorted(set(sources)))
        if skey is not None:
            bad = [s for s in skey if s not in _SOURCE_CODE]
            if bad:
                raise ValueError(f"unknown source(s) {bad}; expected some of {SOURCES}")
        return (tkey, skey, split)

    def _mask(
        self, rows: npt.NDArray[np.void], key: _FilterKey, include_flagged: bool = False
    ) -> npt.NDArray[np.bool_]:
        tkey, skey, split = key
        m = np.ones(rows.shape[0], bool) if include_flagged else (rows["flags"] & FLAG_NONFINITE) == 0
        if split == "train":
            m &= ~rows["heldout"]
        elif split == "heldout":
            m &= rows["heldout"]
        if tkey is not None:
            lut = np.zeros(len(self._task_names) + 1, bool)
            for t in tkey:
                tid = self._task_lookup.get(t)
                if tid is not None:
                    lut[tid] = True
            m &= lut[rows["task"]]
        if skey is not None:
            lut = np.zeros(len(SOURCES), bool)
            lut[[_SOURCE_CODE[s] for s in skey]] = True
            m &= lut[rows["source"]]
        return m

    def _candidates(self, key: _FilterKey) -> _Candidates:
        c = self._cands.get(key)
        if c is None or c.epoch != self._epoch:
            c = _Candidates(epoch=self._epoch, upto=0, ids=_Grow(np.int64, 1024))
            self._cands[key] = c
        if c.upto < self._idx.n:
            new = self._idx.v[c.upto :]
            sel = new[self._mask(new, key)]
            c.ids.extend(sel["id"])
            if sel.shape[0]:
                for t in np.unique(sel["task"]).tolist():
                    g = c.by_task.get(t)
                    if g is None:
                        g = c.by_task[t] = _Grow(np.int64, 256)
                    g.extend(sel["id"][sel["task"] == t])
            c.upto = self._idx.n
        return c

    def sample(
        self,
        n: int,
        tasks: str | Sequence[str] | None = None,
        sources: str | Sequence[str] | None = None,
        sampler: str = "uniform",
        split: str = "train",
        rng: np.random.Generator | int | None = None,
        half_life: float | None = None,
    ) -> Batch:
        """Draw ``n`` records with replacement. ``split="train"`` (default) never returns a held-out
        episode; flagged (non-finite) records are never returned. ``sampler``: "uniform",
        "task_balanced" (each task equally likely) or "recent" (P ∝ 2^(-age/half_life) records).
        """
        if sampler not in _samplers.SAMPLERS:
            raise ValueError(f"sampler={sampler!r}: expected one of {_samplers.SAMPLERS}")
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n={n!r}: expected a non-negative int")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        key = self._filter_key(tasks, sources, split)
        with self._lock:
            self._check_open()
            with self._read_snapshot():
                cand = self._candidates(key)
                m = cand.ids.n
                if m == 0:
                    raise EmptySelection(
                        f"no records match tasks={key[0]}, sources={key[1]}, split={split!r} in {self.path} "
                        f"(stored tasks: {self.tasks()}, {self._idx.n} records)"
                    )
                if sampler == "uniform":
                    ids = cand.ids.v[_samplers.uniform(m, n, rng)]
                elif sampler == "recent":
                    ids = cand.ids.v[_samplers.recent(m, n, rng, half_life)]
                else:
                    groups = [g for g in cand.by_task.values() if g.n]
                    counts = np.array([g.n for g in groups], np.int64)
                    gi, within = _samplers.task_balanced(counts, n, rng)
                    ids = np.empty(n, np.int64)
                    for k, g in enumerate(groups):
                        sel = gi == k
                        ids[sel] = g.v[within[sel]]
                return self._fetch(ids)

    def task_arrays(
        self,
        task: str,
        split: str = "train",
        sources: str | Sequence[str] | None = None,
        include_flagged: bool = False,
    ) -> Batch:
        """Every record of ``task`` in ``split`` (insertion order); the safety gate's regression data
        comes from ``split="heldout"``. Unknown task: KeyError; no matching record: an empty Batch."""
        key = self._filter_key(task, sources, split)
        with self._lock:
            self._check_open()
            with self._read_snapshot():
                if task not in self._task_lookup:
                    raise KeyError(f"unknown task {task!r} in {self.path}; stored tasks: {self.tasks()}")
                v = self._idx.v
                ids = v["id"][self._mask(v, key, include_flagged)]
                return self._fetch(ids)

    def episode_arrays(self, task: str, episode: str | int, include_flagged: bool = False) -> Batch:
        """Every record of one episode in insertion order (KeyError if the episode is unknown)."""
        with self._lock:
            self._check_open()
            with self._read_snapshot():
                eid = self._ep_lookup.get((self._task_lookup.get(task, -1), str(episode)))
                if eid is None:
                    raise KeyError(f"no episode {str(episode)!r} of task {task!r} in {self.path}")
                v = self._idx.v
                m = v["ep"] == eid
                if not include_flagged:
                    m &= (v["flags"] & FLAG_NONFINITE) == 0
                return self._fetch(v["id"][m])

    def get(self, ids: Sequence[int] | npt.NDArray[np.integer[Any]]) -> Batch:
        """Records by id (in the order given); KeyError names ids that do not exist (evicted?)."""
        id_arr = np.asarray(ids, dtype=np.int64)
        with self._lock:
            self._check_open()
            with self._read_snapshot():
                return self._fetch(id_arr)

    def metadata(self, ids: Sequence[int] | npt.NDArray[np.integer[Any]]) -> list[dict[str, Any] | None]:
        """The free-form metadata dicts stored with records ``ids`` (None where absent)."""
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64)]
        with self._lock:
            self._check_open()
            got: dict[int, str | None] = {}
            for s in range(0, len(ids), _IN_CHUNK):
                chunk = ids[s : s + _IN_CHUNK]
                q = f"SELECT id, meta FROM extras WHERE id IN ({','.join(map(str, chunk))})"
                got.update(self._conn.execute(q).fetchall())
            return [json.loads(m) if (m := got.get(i)) else None for i in ids]

    def _names(self) -> tuple[npt.NDArray[np.str_], npt.NDArray[np.str_]]:
        if self._names_cache is None or self._names_cache[0] != len(self._ep_names) + 7919 * len(self._task_names):
            tn = np.array(self._task_names, dtype=str)
            en = np.array(self._ep_names, dtype=str)
            self._names_cache = (len(self._ep_names) + 7919 * len(self._task_names), tn, en)
        return self._names_cache[1], self._names_cache[2]

    def _fetch(self, ids: npt.NDArray[np.int64]) -> Batch:
        d, a = self.obs_dim, self.act_dim
        if ids.shape[0] == 0:
            return _empty_batch(d, a)
        uniq, inverse = np.unique(ids, return_inverse=True)
        rows: list[tuple[Any, ...]] = []
        for s in range(0, uniq.shape[0], _IN_CHUNK):
            chunk = uniq[s : s + _IN_CHUNK]
            q = (
                "SELECT id, ep, step, stamp_ns, source, reward, done, data FROM records "
                f"WHERE id IN ({','.join(map(str, chunk.tolist()))})"
            )
            rows.extend(self._conn.execute(q).fetchall())
        if len(rows) != uniq.shape[0]:
            got = {r[0] for r in rows}
            missing = [int(i) for i in uniq if int(i) not in got][:10]
            raise KeyError(f"record id(s) {missing} are not in {self.path} (evicted or never written)")
        cols = list(zip(*rows))
        rid = np.array(cols[0], np.int64)
        order = np.argsort(rid, kind="stable") if (rid[1:] < rid[:-1]).any() else None
        sel = inverse if order is None else order[inverse]
        data = np.frombuffer(b"".join(cols[7]), dtype=np.float32)
        if data.shape[0] != rid.shape[0] * (d + a):
            raise StoreError(f"{self.path}: stored records have the wrong size (expected {d}+{a} float32 each)")
        data = data.reshape(-1, d + a)
        obs, act = data[:, :d], data[:, d:]
        labels = np.full(rid.shape[0], None, dtype=object)
        if self._has_extras:
            for s in range(0, uniq.shape[0], _IN_CHUNK):
                q = f"SELECT id, label FROM extras WHERE label IS NOT NULL AND id IN ({','.join(map(str, uniq[s : s + _IN_CHUNK].tolist()))})"
                found = self._conn.execute(q).fetchall()
                if found:
                    gid, glab = zip(*found)
                    labels[np.searchsorted(uniq, np.array(gid, np.int64))] = list(glab)
            if order is not None:  # labels were placed in uniq (sorted id) order; rows are in rid order
                labels = labels[np.argsort(order)]
        ep = np.array(cols[1], np.int64)[sel]
        stamp_ns = np.array(cols[3], np.int64)[sel]
        tnames, enames = self._names()
        src_names = np.array(SOURCES, dtype=str)
        return Batch(
            obs=obs[sel],  # fancy indexing copies: writable arrays in request order
            action=act[sel],
            task=tnames[self._ep_task.v[ep]],
            episode=enames[ep],
            step=np.array(cols[2], np.int64)[sel],
            stamp=stamp_ns / 1e9,
            stamp_ns=stamp_ns,
            source=src_names[np.array(cols[4], np.int64)[sel]],
            reward=np.array(cols[5], np.float32)[sel],
            done=np.array(cols[6], bool)[sel],
            id=rid[sel],
            label=labels[sel],
        )

    # --------------------------------------------------------------------------- inspection
    def tasks(self) -> list[str]:
        """Tasks that have records, in first-seen order (the order heads are usually assigned)."""
        with self._lock:
            self._check_open()
            with self._read_snapshot():
                present = np.unique(self._idx.v["task"]).tolist()
                return [self._task_names[t] for t in present]

    def episodes(self, task: str | None = None, split: str = "all") -> list[EpisodeInfo]:
        """Episodes with their split and record count."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: expected one of {SPLITS}")
        with self._lock, self._read_snapshot():
            v = self._idx.v
            counts = np.bincount(v["ep"], minlength=self._ep_task.n)
            out = []
            for eid in np.flatnonzero(counts).tolist():
                tname = self._task_names[self._ep_task.a[eid]]
                h = bool(self._ep_heldout.a[eid])
                if task is not None and tname != task:
                    continue
                if split != "all" and h != (split == "heldout"):
                    continue
                out.append(EpisodeInfo(tname, self._ep_names[eid], "heldout" if h else "train", int(counts[eid])))
            return out

    def __len__(self) -> int:
        with self._lock, self._read_snapshot():
            return self._idx.n

    def stats(self) -> dict[str, Any]:
        """Counts per task / split / source, protected and flagged records, size on disk, retention."""
        with self._lock:
            self._check_open()
            with self._read_snapshot():
                v = self._idx.v
                nt = len(self._task_names)
                ns = len(SOURCES)
                key = (v["task"].astype(np.int64) * 2 + v["heldout"]) * ns + v["source"]
                cube = np.bincount(key, minlength=nt * 2 * ns).reshape(nt, 2, ns)
                ep_counts = np.bincount(v["ep"], minlength=self._ep_task.n)
                eps = np.flatnonzero(ep_counts)
                ep_t = self._ep_task.v[eps]
                ep_h = self._ep_heldout.v[eps]
                tasks: dict[str, dict[str, Any]] = {}
                for t in np.flatnonzero(cube.sum(axis=(1, 2))).tolist():
                    tasks[self._task_names[t]] = {
                        "records": int(cube[t].sum()),
                        "train": int(cube[t, 0].sum()),
                        "heldout": int(cube[t, 1].sum()),
                        "episodes": int((ep_t == t).sum()),
                        "heldout_episodes": int(((ep_t == t) & ep_h).sum()),
                        "by_source": {
                            s: int(cube[t, :, i].sum()) for i, s in enumerate(SOURCES) if cube[t, :, i].sum()
                        },
                    }
                files = [self.path, Path(str(self.path) + "-wal")]
                size = sum(f.stat().st_size for f in files if f.exists())
                return {
                    "path": str(self.path),
                    "records": int(v.shape[0]),
                    "obs_dim": self.obs_dim,
                    "act_dim": self.act_dim,
                    "tasks": tasks,
                    "by_source": {s: int(cube[:, :, i].sum()) for i, s in enumerate(SOURCES)},
                    "heldout_records": int(v["heldout"].sum()),
                    "protected_records": int(((v["source"] == _DEMO) | v["heldout"]).sum()),
                    "flagged_nonfinite": int(((v["flags"] & FLAG_NONFINITE) != 0).sum()),
                    "evicted_total": int(self._evicted_total),
                    "over_budget": bool(self._over_budget),
                    "bytes_on_disk": int(size),
                    "heldout_fraction": self.heldout_fraction,
                    "split_seed": self.split_seed,
                    "durability": self.durability,
                    "retention": self.retention.to_dict(),
                }

    def check(self) -> None:
        """Full integrity check (SQLite's plus blob sizes); raises StoreError naming the problem."""
        with self._lock:
            res = self._conn.execute("PRAGMA integrity_check").fetchall()
            if res != [("ok",)]:
                raise StoreError(f"{self.path} failed SQLite's integrity check: {res[:5]}")
            bad = self._conn.execute(
                "SELECT count(*) FROM records WHERE length(data) != ?",
                (4 * (self.obs_dim + self.act_dim),),
            ).fetchone()[0]
            if bad:
                raise StoreError(f"{self.path}: {bad} record(s) have observation/action blobs of the wrong size")


# ------------------------------------------------------------------------------------- helpers
def _is_io_error(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorname", "") or ""
    return code.startswith(("SQLITE_IOERR", "SQLITE_FULL", "SQLITE_CANTOPEN")) or "I/O" in str(exc)


def _rowid(cur: sqlite3.Cursor) -> int:
    """The id an INSERT just gave its row."""
    if cur.lastrowid is None:
        raise StoreError("INSERT returned no row id")
    return int(cur.lastrowid)


def _empty_batch(d: int, a: int) -> Batch:
    return Batch(
        obs=np.zeros((0, d), np.float32),
        action=np.zeros((0, a), np.float32),
        task=np.zeros(0, dtype=str),
        episode=np.zeros(0, dtype=str),
        step=np.zeros(0, np.int64),
        stamp=np.zeros(0, np.float64),
        source=np.zeros(0, dtype=str),
        reward=np.zeros(0, np.float32),
        done=np.zeros(0, bool),
        id=np.zeros(0, np.int64),
        label=np.zeros(0, dtype=object),
        stamp_ns=np.zeros(0, np.int64),
    )


def _strs(x: npt.ArrayLike, n: int, name: str) -> str | npt.NDArray[np.str_]:
    if isinstance(x, (str, int, np.integer)):
        return str(x)
    arr = np.asarray(x)
    if arr.ndim == 0:
        return str(arr.item())
    if arr.shape != (n,):
        raise ValueError(f"{name} has shape {arr.shape}; expected a scalar or ({n},)")
    arr = arr.astype(str)
    first = arr[0]
    if (arr == first).all():
        return str(first)
    return arr


def _at(x: str | npt.NDArray[np.str_], i: int) -> str:
    return x if isinstance(x, str) else str(x[i])


def _ints(x: npt.ArrayLike, n: int, name: str) -> npt.NDArray[np.int64]:
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return np.full(n, x, np.int64)
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name} has dtype {arr.dtype}; expected integers")
    if arr.ndim == 0:
        return np.full(n, int(arr), np.int64)
    if arr.shape != (n,):
        raise ValueError(f"{name} has shape {arr.shape}; expected a scalar or ({n},)")
    return arr.astype(np.int64)


def _floats(
    x: npt.ArrayLike, n: int, name: str, dtype: type[np.floating[Any]] = np.float32
) -> npt.NDArray[np.floating[Any]]:
    try:
        arr = np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}={x!r}: expected numbers ({exc})") from None
    if arr.ndim == 0:
        return np.full(n, arr, dtype)
    if arr.shape != (n,):
        raise ValueError(f"{name} has shape {arr.shape}; expected a scalar or ({n},)")
    return arr


def _bools(x: npt.ArrayLike, n: int, name: str) -> npt.NDArray[np.bool_]:
    if isinstance(x, (bool, np.bool_)):
        return np.full(n, x, bool)
    arr = np.asarray(x)
    if arr.ndim == 0:
        return np.full(n, bool(arr))
    if arr.shape != (n,):
        raise ValueError(f"{name} has shape {arr.shape}; expected a scalar or ({n},)")
    return arr.astype(bool)


def copy_store(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """A consistent copy of the store file ``src`` as the new file ``dst`` (SQLite's online backup,
    read-only on ``src``: safe while a writer appends). A killed copy leaves no ``dst``."""
    src_p, dst_p = Path(src), Path(dst)
    if not src_p.is_file():
        raise FileNotFoundError(f"no experience store at {src_p}; expected an existing store file")
    if dst_p.exists():
        raise FileExistsError(f"{dst_p} exists; expected the path of a new store file")
    part = dst_p.with_name(dst_p.name + ".part")
    part.unlink(missing_ok=True)
    with (
        contextlib.closing(sqlite3.connect(f"{src_p.resolve().as_uri()}?mode=ro", uri=True)) as source,
        contextlib.closing(sqlite3.connect(part)) as target,
    ):
        source.backup(target)
    os.replace(part, dst_p)
    return dst_p


def _labels(label: str | Sequence[str | None] | None, n: int) -> list[str | None] | None:
    if label is None:
        return None
    if isinstance(label, str):
        return [label] * n
    lst = list(label)
    if len(lst) != n:
        raise ValueError(f"label has {len(lst)} entries; expected a scalar or {n}")
    return [None if v is None else str(v) for v in lst]


def _metas(meta: dict[str, Any] | Sequence[dict[str, Any] | None] | None, n: int) -> list[str | None] | None:
    if meta is None:
        return None
    if isinstance(meta, dict):
        return [json.dumps(meta, sort_keys=True)] * n
    lst = list(meta)
    if len(lst) != n:
        raise ValueError(f"meta has {len(lst)} entries; expected a dict or {n}")
    return [None if m is None else json.dumps(m, sort_keys=True) for m in lst]


def _source_codes(sources: str | npt.NDArray[np.str_], n: int) -> npt.NDArray[np.int8]:
    if isinstance(sources, str):
        if sources not in _SOURCE_CODE:
            raise InvalidRecord(f"source={sources!r}: expected one of {SOURCES}")
        return np.full(n, _SOURCE_CODE[sources], np.int8)
    uniq, inv = np.unique(sources, return_inverse=True)
    bad = [s for s in uniq.tolist() if s not in _SOURCE_CODE]
    if bad:
        raise InvalidRecord(f"source(s) {bad}: expected one of {SOURCES}")
    return np.array([_SOURCE_CODE[s] for s in uniq.tolist()], np.int8)[inv]


def _reward_list(r: npt.NDArray[np.floating[Any]]) -> list[float]:
    # SQLite stores NaN as NULL, read back as NaN; +-Inf round-trip as is.
    out: list[float] = r.astype(np.float64).tolist()
    return out


def _first_nonfinite(
    obs: npt.NDArray[np.float32], action: npt.NDArray[np.float32], reward: float | np.floating[Any]
) -> str:
    for name, arr in (("observation", obs), ("action", action)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.shape[0]:
            j = int(bad[0])
            return f"{name}[{j}] = {float(arr[j])!r}"
    return f"reward = {float(reward)!r}"
