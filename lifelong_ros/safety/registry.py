"""Model registry: every policy version as a self-contained directory, plus the active pointer.

The gate records its decisions here and the policy server loads only approved versions whose
sha256 still matches, so "what is serving, why, and what can we roll back to" is answerable from disk.

Layout under ``root`` (every mutation takes the ``.lock`` file lock; readers never lock)::

    state.json            active pointer, rollback stack, history, retired/revoked sets (replaced atomically)
    versions/<id>/        model.onnx, weights.safetensors | weights.pt, meta.json, reports/NNNN-<kind>.json
    building/<random>/    versions being written; never listed; removed on open once no writer is alive
    quarantine/<id>.<t>/  incomplete directories found under versions/ (crash of a non-atomic writer)
    tombstones/<id>/      meta.json and reports of garbage-collected versions (lineage and audit survive gc)

A version is born ``candidate``; the gate moves it once to ``approved`` or ``rejected`` (meta.json).
Being ``active``, ``retired`` (was active, replaced, still a rollback target) or ``revoked`` (rolled
back from as faulty, never served again) is lifecycle state kept in state.json, so the switch of
the serving model is a single atomic file replacement.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from lifelong_ros.fsutil import atomic_write_json, fsync_dir, sha256_bytes
from lifelong_ros.paths import META_FILE, MODEL_FILE, REPORTS_DIR, TORCH_WEIGHTS_FILE, WEIGHTS_FILE

log = logging.getLogger(__name__)

STATES = ("candidate", "approved", "rejected", "active", "retired", "revoked")
SERVABLE_STATES = ("approved", "active", "retired")
DECISIONS = ("approved", "rejected")
_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")
HISTORY_LIMIT = 1000
# The ids the registry issues (``_next_id``): "v" and at least four ASCII digits. _ID_RE reads the
# number at the start of a directory name (quarantine/ holds "v0003.<ms>"); VERSION_ID_RE is the
# one grammar every public method checks a version id against before it touches the disk.
_ID_RE = re.compile(r"^v([0-9]{4,})", re.ASCII)
VERSION_ID_RE = re.compile(r"v[0-9]{4,18}", re.ASCII)  # matched with fullmatch: no "./", "/", "..", NUL, spaces
VERSION_ID_FORM = "'v' followed by 4 to 18 ASCII digits, as the registry issues them (e.g. 'v0001')"
_KIND_RE = re.compile(r"^[a-z][a-z0-9_-]{0,40}$")
_CHUNK = 1 << 20


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (unknown version, wrong state, nothing to roll back to)."""


class InvalidVersionId(RegistryError, ValueError):
    """A version id that is not one the registry issues (a path, '', '../v0001', ' v0001', ...).

    Refused before anything is read or written, so no id can name a directory outside versions/."""


def is_version_id(value: object) -> bool:
    """Whether ``value`` is a version id of the form the registry issues (``v0001``)."""
    return isinstance(value, str) and VERSION_ID_RE.fullmatch(value) is not None


def check_version_id(value: object, what: str = "version id") -> str:
    """``value`` if it is a version id the registry could have issued, else raise InvalidVersionId
    naming the value and the expected form. Every entry point (API, CLI, ROS services and topics)
    checks ids with this one function."""
    if isinstance(value, str) and VERSION_ID_RE.fullmatch(value) is not None:
        return value
    raise InvalidVersionId(f"invalid {what} {value!r}: expected {VERSION_ID_FORM}")


class NotApprovedError(RegistryError):
    """A version that the gate has not approved (or that was revoked) was asked for serving."""


class IntegrityError(RegistryError):
    """A stored artifact no longer matches the sha256 recorded when it was registered."""


class Swappable(Protocol):
    """What promote/rollback need from a PolicyRuntime: its atomic hot swap."""

    @property
    def version(self) -> str: ...

    def swap(self, model: bytes, version: str, expected_sha256: str | None = None) -> Any: ...


@dataclass(frozen=True)
class VersionInfo:
    """A version's metadata plus its effective lifecycle state."""

    id: str
    state: str
    decision: str
    parent: str | None
    method: str
    tasks: list[str]
    target_task: str | None
    created: str
    onnx_sha256: str
    weights_sha256: str | None
    weights_file: str | None
    metrics: dict[str, Any]
    data_range: dict[str, Any]
    config: dict[str, Any]
    extra: dict[str, Any]
    path: Path

    @property
    def servable(self) -> bool:
        return self.state in SERVABLE_STATES

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


@dataclass(frozen=True)
class Transition:
    """One move of the active pointer (promotion or rollback), as recorded in the history."""

    kind: str
    from_version: str | None
    to_version: str
    at: str
    reason: str
    seq: int
    revoked: bool = False
    skipped: list[list[str]] = field(default_factory=list)  # [version, why] of rollback targets passed over

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GcReport:
    deleted: list[str]
    kept: list[str]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _id_num(name: str) -> int | None:
    m = _ID_RE.match(name)
    return int(m.group(1)) if m else None


def _id_order(name: str) -> int:
    """Sort key of version ids (v0001 < v0002 < v10000)."""
    n = _id_num(name)
    return -1 if n is None else n


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _weights_blob(weights: Any) -> tuple[bytes, str]:
    """(bytes, file name) for weights given as a state dict, or safetensors / torch-zip bytes or file."""
    if isinstance(weights, (str, os.PathLike)):
        weights = Path(weights).read_bytes()
    if isinstance(weights, (bytes, bytearray, memoryview)):
        blob = bytes(weights)
        if blob[:4] == b"PK\x03\x04":
            return blob, TORCH_WEIGHTS_FILE
        if len(blob) >= 9 and blob[8:9] == b"{":
            return blob, WEIGHTS_FILE
        raise ValueError("weights bytes are neither safetensors nor a torch zip archive (weights-only state dict)")
    if isinstance(weights, Mapping):
        from safetensors.numpy import save

        arrays = {}
        for k, v in weights.items():
            if hasattr(v, "detach"):  # a torch tensor, converted without importing torch here
                v = v.detach().cpu().numpy()
            if not isinstance(v, np.ndarray):
                raise TypeError(f"weights[{k!r}] is {type(v).__name__}; expected a numpy array or torch tensor")
            arrays[str(k)] = np.ascontiguousarray(v)
        return save(arrays), WEIGHTS_FILE
    raise TypeError(f"weights must be a state dict, safetensors bytes or torch-zip bytes, got {type(weights).__name__}")


class ModelRegistry:
    """Versions on disk, the gate's decisions, and the active pointer with its rollback stack.

    One writer at a time (the safety monitor, or the learner registering a candidate) is enforced
    with an fcntl lock; readers (the policy server) see only complete versions and atomically
    replaced files. Opening the registry cleans up what a crashed writer left behind.
    """

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True, recover: bool = True):
        self.root = Path(root).expanduser()
        self.versions_dir = self.root / "versions"
        if create:
            for sub in ("versions", "building", "quarantine", "tombstones", "trash"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        elif not self.versions_dir.is_dir():
            raise RegistryError(f"no model registry at {self.root} (expected a 'versions' directory)")
        self._state_path = self.root / "state.json"
        self._thread_lock = threading.RLock()
        self._local = threading.local()
        if recover:
            self.recover()

    # ------------------------------------------------------------------ locking and recovery
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Exclusive mutation lock: re-entrant within a thread, exclusive across threads and processes."""
        with self._thread_lock:
            depth = getattr(self._local, "depth", 0)
            if depth:
                self._local.depth = depth + 1
                try:
                    yield
                finally:
                    self._local.depth -= 1
                return
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._local.depth = 1
                try:
                    yield
                finally:
                    self._local.depth = 0
            finally:
                os.close(fd)  # closing releases the flock

    def recover(self) -> dict[str, builtins.list[str]]:
        """Remove dead writers' build directories and quarantine incomplete version directories."""
        removed: builtins.list[str] = []
        quarantined: builtins.list[str] = []
        fd = os.open(self.root / ".build.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # succeeds only when no builder is alive
            except BlockingIOError:
                pass
            else:
                for d in sorted((self.root / "building").iterdir()):
                    shutil.rmtree(d, ignore_errors=True)
                    removed.append(d.name)
        finally:
            os.close(fd)
        with self._lock():
            for d in sorted(self.versions_dir.iterdir()):
                if self._read_meta_dir(d) is None:
                    dest = self.root / "quarantine" / f"{d.name}.{int(time.time() * 1000)}"
                    os.rename(d, dest)
                    quarantined.append(d.name)
            for d in (self.root / "trash").iterdir():
                shutil.rmtree(d, ignore_errors=True)
            if quarantined:
                fsync_dir(self.versions_dir)
        if removed or quarantined:
            log.warning(
                "registry %s: removed %d unfinished builds %s, quarantined incomplete versions %s",
                self.root,
                len(removed),
                removed,
                quarantined,
            )
        return {"removed_builds": removed, "quarantined": quarantined}

    # ------------------------------------------------------------------ reading
    def _read_meta_dir(self, d: Path) -> dict[str, Any] | None:
        """meta.json of a complete version directory, else None (never raises on garbage)."""
        try:
            meta: dict[str, Any] = json.loads((d / META_FILE).read_text())
            if meta.get("id") != d.name or meta.get("state") not in ("candidate", "approved", "rejected"):
                return None
            if (d / MODEL_FILE).stat().st_size != meta["onnx_size"]:
                return None
            wf = meta.get("weights_file")
            if wf and (d / wf).stat().st_size != meta["weights_size"]:
                return None
            return meta
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _read_state(self) -> dict[str, Any]:
        try:
            st: dict[str, Any] = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            st = {}
        st.setdefault("active", None)
        st.setdefault("active_sha256", None)
        st.setdefault("seq", 0)
        for k in ("stack", "history", "retired", "revoked"):
            st.setdefault(k, [])
        return st

    def _meta(self, vid: str) -> dict[str, Any]:
        check_version_id(vid)
        meta = self._read_meta_dir(self.versions_dir / vid)
        if meta is None:
            if (self.root / "tombstones" / vid / META_FILE).exists():
                raise RegistryError(f"version {vid!r} was garbage-collected (tombstone only)")
            raise RegistryError(f"unknown version {vid!r}; known: {self.ids()}")
        return meta

    @staticmethod
    def _effective_state(meta: dict[str, Any], st: dict[str, Any]) -> str:
        vid = meta["id"]
        if vid == st["active"]:
            return "active"
        if vid in st["revoked"]:
            return "revoked"
        if meta["state"] == "approved" and vid in st["retired"]:
            return "retired"
        state: str = meta["state"]
        return state

    def _info(self, meta: dict[str, Any], st: dict[str, Any], path: Path, state: str | None = None) -> VersionInfo:
        return VersionInfo(
            id=meta["id"],
            state=state or self._effective_state(meta, st),
            decision=meta["state"],
            parent=meta.get("parent"),
            method=meta.get("method", ""),
            tasks=list(meta.get("tasks", [])),
            target_task=meta.get("target_task"),
            created=meta.get("created", ""),
            onnx_sha256=meta["onnx_sha256"],
            weights_sha256=meta.get("weights_sha256"),
            weights_file=meta.get("weights_file"),
            metrics=dict(meta.get("metrics") or {}),
            data_range=dict(meta.get("data_range") or {}),
            config=dict(meta.get("config") or {}),
            extra=dict(meta.get("extra") or {}),
            path=path,
        )

    def ids(self) -> list[str]:
        """Ids of complete versions, oldest first (half-written directories are never listed)."""
        out = []
        for d in self.versions_dir.iterdir():
            if is_version_id(d.name) and self._read_meta_dir(d) is not None:
                out.append(d.name)
        return sorted(out, key=_id_order)

    def list(self, states: Sequence[str] | None = None) -> list[VersionInfo]:
        """Complete versions, oldest first, optionally filtered by effective state."""
        if states is not None:
            bad = [s for s in states if s not in STATES]
            if bad:
                raise ValueError(f"unknown state(s) {bad}; expected some of {STATES}")
        st = self._read_state()
        infos = []
        for vid in self.ids():
            meta = self._read_meta_dir(self.versions_dir / vid)
            if meta is None:  # deleted between the listing and now
                continue
            info = self._info(meta, st, self.versions_dir / vid)
            if states is None or info.state in states:
                infos.append(info)
        return infos

    def info(self, version: str) -> VersionInfo:
        """Metadata of ``version``; a garbage-collected one comes back from its tombstone as 'deleted'."""
        d = self.versions_dir / check_version_id(version)
        meta = self._read_meta_dir(d)
        if meta is not None:
            return self._info(meta, self._read_state(), d)
        tomb = self.root / "tombstones" / version
        try:
            meta = json.loads((tomb / META_FILE).read_text())
        except (OSError, ValueError):
            raise RegistryError(f"unknown version {version!r}; known: {self.ids()}") from None
        return self._info(meta, self._read_state(), tomb, state="deleted")

    def exists(self, version: str) -> bool:
        """Whether ``version`` is a complete version (raises InvalidVersionId for a malformed id)."""
        return self._read_meta_dir(self.versions_dir / check_version_id(version)) is not None

    def active(self) -> str | None:
        """Id of the version the policy server should be serving, or None before the first promotion."""
        active: str | None = self._read_state()["active"]
        return active

    def active_problem(self) -> str | None:
        """Why the active pointer cannot be served as it stands (malformed, dangling: its version
        does not exist or was garbage-collected, or no longer servable), or None when it is fine
        or nothing is active yet."""
        st = self._read_state()
        active = st["active"]
        if active is None:
            return None
        where = f"the active pointer ({self._state_path}) names {active!r}"
        if not is_version_id(active):
            return f"{where}, which is not a valid version id (expected {VERSION_ID_FORM})"
        meta = self._read_meta_dir(self.versions_dir / active)
        if meta is None:
            gone = "was garbage-collected" if (self.root / "tombstones" / active).is_dir() else "does not exist"
            return f"{where}, which {gone} (dangling pointer: promote or roll back to an existing version)"
        if meta["state"] != "approved":
            return f"{where}, whose gate decision is {meta['state']!r}, not 'approved'"
        return None

    def history(self) -> builtins.list[dict[str, Any]]:
        """Promotions and rollbacks, oldest first (the last HISTORY_LIMIT)."""
        return list(self._read_state()["history"])

    def rollback_targets(self) -> builtins.list[str]:
        """What ``rollback()`` would try, in order: earlier active versions that are still servable."""
        st = self._read_state()
        out: builtins.list[str] = []
        for vid in reversed(st["stack"]):
            if vid == st["active"] or vid in out or not is_version_id(vid):
                continue
            meta = self._read_meta_dir(self.versions_dir / vid)
            if meta is not None and self._effective_state(meta, st) in SERVABLE_STATES:
                out.append(vid)
        return out

    def lineage(self, version: str) -> builtins.list[VersionInfo]:
        """``version``, its parent, grandparent, ... up to the root (garbage-collected ones as 'deleted')."""
        chain: builtins.list[VersionInfo] = []
        seen: set[str] = set()
        vid: str | None = check_version_id(version)
        while vid is not None:
            if vid in seen:
                raise RegistryError(f"lineage of {version!r} has a cycle at {vid!r}")
            seen.add(vid)
            info = self.info(vid)
            chain.append(info)
            vid = info.parent
        return chain

    def children(self, version: str) -> builtins.list[str]:
        """Versions whose parent is ``version``."""
        check_version_id(version)
        return [i.id for i in self.list() if i.parent == version]

    def read_onnx(self, version: str, verify: bool = True) -> bytes:
        """The ONNX bytes of ``version``; ``verify`` checks them against the sha256 recorded at registration."""
        meta = self._meta(version)
        data = (self.versions_dir / version / MODEL_FILE).read_bytes()
        if verify:
            got = sha256_bytes(data)
            if got != meta["onnx_sha256"]:
                raise IntegrityError(
                    f"{version}/{MODEL_FILE} sha256 is {got}, expected {meta['onnx_sha256']} (file changed after registration)"
                )
        return data

    def weights_bytes(self, version: str, verify: bool = True) -> tuple[bytes, str]:
        """(bytes, file name) of ``version``'s weights, checked against the sha256 recorded at registration.

        The learning side turns them into tensors (``lifelong_ros.learning.model.state_dict_from_bytes``);
        the registry itself never imports torch.
        """
        meta = self._meta(version)
        wf = meta.get("weights_file")
        if not wf:
            raise RegistryError(f"version {version} was registered without weights")
        data = (self.versions_dir / version / wf).read_bytes()
        if verify and sha256_bytes(data) != meta["weights_sha256"]:
            raise IntegrityError(f"{version}/{wf} sha256 does not match the one recorded at registration")
        return data, wf

    def load_weights(self, version: str, verify: bool = True) -> dict[str, npt.NDArray[Any]]:
        """The state dict of ``version`` as numpy arrays (safetensors weights)."""
        data, wf = self.weights_bytes(version, verify)
        if wf != WEIGHTS_FILE:
            raise RegistryError(
                f"{version}/{wf} is a torch archive; read it with "
                f"lifelong_ros.learning.model.state_dict_from_bytes(*registry.weights_bytes(version))"
            )
        from safetensors.numpy import load

        return load(data)

    def load_for_serving(self, version: str | None = None) -> tuple[bytes, str]:
        """(ONNX bytes, sha256) of an approved version (default: the active one), verified against its record.

        Raises NotApprovedError for candidates, rejected and revoked versions and IntegrityError when
        the file on disk no longer matches: a server must never load such a model.
        """
        st = self._read_state()
        if version is None:
            version = st["active"]
            if version is None:
                raise RegistryError(f"no active version in {self.root} yet (promote an approved version first)")
            check_version_id(version, f"active version in {self._state_path}")
        meta = self._meta(check_version_id(version))
        state = self._effective_state(meta, st)
        if state not in SERVABLE_STATES:
            raise NotApprovedError(f"version {version} is {state!r}; only {SERVABLE_STATES} versions may be served")
        return self.read_onnx(version, verify=True), meta["onnx_sha256"]

    def reports(self, version: str) -> builtins.list[dict[str, Any]]:
        """Every report persisted for ``version`` (gate, shadow, watchdog, ...), oldest first."""
        base = self.versions_dir / check_version_id(version)
        if not base.is_dir():
            base = self.root / "tombstones" / version
            if not base.is_dir():
                raise RegistryError(f"unknown version {version!r}; known: {self.ids()}")
        out: builtins.list[dict[str, Any]] = []
        rdir = base / REPORTS_DIR
        if rdir.is_dir():
            for p in sorted(rdir.glob("*.json")):
                try:
                    out.append({"file": p.name, **json.loads(p.read_text())})
                except ValueError:
                    out.append({"file": p.name, "kind": "unreadable"})
        return out

    # ------------------------------------------------------------------ writing versions
    @contextlib.contextmanager
    def _building(self) -> Iterator[Path]:
        """A private build directory; a shared lock on .build.lock tells recover() a builder is alive."""
        fd = os.open(self.root / ".build.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            d = self.root / "building" / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
            d.mkdir()
            try:
                yield d
            finally:
                if d.exists():
                    shutil.rmtree(d, ignore_errors=True)
        finally:
            os.close(fd)

    @staticmethod
    def _write_payload(dest: Path, src: bytes | os.PathLike[str] | str) -> tuple[str, int]:
        """Copy bytes or a file (streamed, so a pipe works) to ``dest``, fsync; returns (sha256, size)."""
        import hashlib

        h, size = hashlib.sha256(), 0
        with open(dest, "wb") as out:
            if isinstance(src, (bytes, bytearray, memoryview)):
                data = bytes(src)
                out.write(data)
                h.update(data)
                size = len(data)
            else:
                with open(src, "rb") as f:
                    for chunk in iter(lambda: f.read1(_CHUNK), b""):  # read1: a pipe yields what it has
                        out.write(chunk)
                        h.update(chunk)
                        size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        return h.hexdigest(), size

    def _next_id(self) -> str:
        n = 0
        for sub in ("versions", "tombstones", "quarantine"):
            for d in (self.root / sub).iterdir():
                k = _id_num(d.name)
                if k is not None:
                    n = max(n, k)
        return f"v{n + 1:04d}"

    def register(
        self,
        onnx: bytes | os.PathLike[str] | str,
        *,
        tasks: Sequence[str],
        method: str,
        parent: str | None = None,
        weights: Mapping[str, Any] | bytes | os.PathLike[str] | str | None = None,
        config: Mapping[str, Any] | None = None,
        data_range: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        target_task: str | None = None,
        extra: Mapping[str, Any] | None = None,
        files: Mapping[str, bytes | os.PathLike[str] | str] | None = None,
    ) -> str:
        """Store a new candidate version atomically and return its id (v0001, v0002, ...).

        ``files`` are further artifacts stored beside the model (name -> bytes or path), e.g. the
        learner's consolidation state, so a version directory is all a child version needs.

        ``tasks`` is the ordered task list (index = head index). ``onnx`` may be bytes or a path
        (streamed); ``weights`` a state dict (numpy or torch; stored as safetensors) or the bytes or
        path of a safetensors file or a weights-only ``torch.save`` archive. Nothing is visible until the finished directory is renamed into versions/, so
        a writer killed at any point leaves no partial version.
        """
        if isinstance(tasks, str) or not isinstance(tasks, Sequence) or not tasks:
            raise ValueError(f"tasks must be a non-empty list of task names (head order), got {tasks!r}")
        if any(not isinstance(t, str) or not t for t in tasks) or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must be distinct non-empty strings, got {list(tasks)!r}")
        if not isinstance(method, str) or not method:
            raise ValueError(f"method must be a non-empty string (e.g. 'ewc+replay'), got {method!r}")
        if target_task is not None and target_task not in tasks:
            raise ValueError(f"target_task {target_task!r} is not one of the version's tasks {list(tasks)}")
        if parent is not None:
            self.info(check_version_id(parent, "parent version id"))  # raises for an unknown parent
        if isinstance(onnx, (bytes, bytearray, memoryview)) and len(onnx) == 0:
            raise ValueError("onnx is empty; expected a serialised ONNX model")
        wblob, wfile = _weights_blob(weights) if weights is not None else (None, None)
        for name, obj in (("config", config), ("data_range", data_range), ("metrics", metrics), ("extra", extra)):
            try:
                json.dumps(obj or {})
            except TypeError as exc:
                raise TypeError(f"{name} must be JSON-serialisable: {exc}") from None

        with self._building() as bdir:
            onnx_sha, onnx_size = self._write_payload(bdir / MODEL_FILE, onnx)
            if onnx_size == 0:
                raise ValueError(f"onnx source {onnx!r} was empty; expected a serialised ONNX model")
            w_sha: str | None = None
            w_size: int | None = None
            if wblob is not None and wfile is not None:
                w_sha, w_size = self._write_payload(bdir / wfile, wblob)
            extra_files: dict[str, dict[str, Any]] = {}
            for name, src in (files or {}).items():
                if not _FILE_RE.match(name) or name in (MODEL_FILE, META_FILE, WEIGHTS_FILE, TORCH_WEIGHTS_FILE):
                    raise ValueError(
                        f"extra file name {name!r} must be a plain file name other than the model/meta/weights files"
                    )
                sha, size = self._write_payload(bdir / name, src)
                extra_files[name] = {"sha256": sha, "size": size}
            (bdir / REPORTS_DIR).mkdir()
            with self._lock():
                vid = self._next_id()
                meta = {
                    "id": vid,
                    "parent": parent,
                    "method": method,
                    "tasks": list(tasks),
                    "target_task": target_task,
                    "created": _now(),
                    "created_unix": time.time(),
                    "state": "candidate",
                    "onnx_sha256": onnx_sha,
                    "onnx_size": onnx_size,
                    "weights_file": wfile,
                    "weights_sha256": w_sha,
                    "weights_size": w_size,
                    "config": dict(config or {}),
                    "data_range": dict(data_range or {}),
                    "metrics": dict(metrics or {}),
                    "extra": dict(extra or {}),
                    "files": extra_files,
                    "state_history": [],
                }
                atomic_write_json(bdir / META_FILE, meta)
                fsync_dir(bdir)
                os.rename(bdir, self.versions_dir / vid)
                fsync_dir(self.versions_dir)
                fsync_dir(self.root / "building")
        log.info("registered %s (%s, tasks=%s, parent=%s)", vid, method, list(tasks), parent)
        return vid

    def save_report(self, version: str, kind: str, report: Mapping[str, Any]) -> Path:
        """Persist a report (gate, shadow, watchdog, ...) in ``version``'s directory; returns its path."""
        check_version_id(version)
        if not _KIND_RE.match(kind):
            raise ValueError(f"report kind must match {_KIND_RE.pattern}, got {kind!r}")
        with self._lock():
            self._meta(version)
            rdir = self.versions_dir / version / REPORTS_DIR
            rdir.mkdir(exist_ok=True)
            seq = 1 + max((int(p.name[:4]) for p in rdir.glob("[0-9][0-9][0-9][0-9]-*.json")), default=0)
            path = rdir / f"{seq:04d}-{kind}.json"
            atomic_write_json(path, {"kind": kind, "version": version, "saved": _now(), **dict(report)})
            return path

    def set_decision(
        self, version: str, decision: str, reason: str = "", report: Mapping[str, Any] | None = None
    ) -> VersionInfo:
        """The gate's one-time verdict on a candidate: 'approved' or 'rejected', with its report."""
        check_version_id(version)
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
        with self._lock():
            meta = self._meta(version)
            if meta["state"] != "candidate":
                raise RegistryError(f"version {version} was already decided ({meta['state']!r}); decisions are final")
            report_file = self.save_report(version, "gate", report).name if report is not None else None
            meta["state"] = decision
            meta["decided"] = _now()
            meta["decision_reason"] = reason
            meta["decision_report"] = report_file
            meta.setdefault("state_history", []).append({"state": decision, "at": meta["decided"], "reason": reason})
            atomic_write_json(self.versions_dir / version / META_FILE, meta)
        return self.info(version)

    # ------------------------------------------------------------------ the active pointer
    def _commit_state(self, st: dict[str, Any]) -> None:
        st["history"] = st["history"][-HISTORY_LIMIT:]
        st["stack"] = st["stack"][-HISTORY_LIMIT:]
        atomic_write_json(self._state_path, st)

    def _swap_runtime(self, runtime: Swappable | None, version: str, data: bytes, sha: str) -> None:
        if runtime is not None:
            runtime.swap(data, version, expected_sha256=sha)

    def _restore_runtime(self, runtime: Swappable | None, st: dict[str, Any]) -> None:
        """Best effort: put the previous model back in the runtime when the pointer could not be written."""
        if runtime is not None and st["active"] is not None:
            try:
                data, sha = self.load_for_serving(st["active"])
                runtime.swap(data, st["active"], expected_sha256=sha)
            except Exception:  # already failing; the original error is what matters
                log.exception("could not restore %s in the runtime", st["active"])

    def promote(self, version: str, *, runtime: Swappable | None = None, reason: str = "") -> Transition:
        """Make an approved ``version`` the active one; with ``runtime``, hot-swap it first.

        The sha256 is verified before anything changes; if the runtime refuses the model the
        pointer does not move and the runtime keeps serving what it had.
        """
        check_version_id(version)  # before the lock: a malformed id changes nothing on disk
        with self._lock():
            st = self._read_state()
            data, sha = self.load_for_serving(version)  # NotApprovedError / IntegrityError: nothing changed
            prev = st["active"]
            if prev == version:
                if runtime is not None and getattr(runtime, "version", None) != version:
                    self._swap_runtime(runtime, version, data, sha)
                return Transition("promote", prev, version, _now(), reason or "already active", st["seq"])
            self._swap_runtime(runtime, version, data, sha)
            new = dict(st)
            new["seq"] = st["seq"] + 1
            tr = Transition("promote", prev, version, _now(), reason, new["seq"])
            new.update(
                active=version,
                active_sha256=sha,
                stack=st["stack"] + [version],
                history=st["history"] + [tr.to_dict()],
                retired=sorted(set(st["retired"]) | ({prev} if prev else set())),
            )
            try:
                self._commit_state(new)
            except BaseException:
                self._restore_runtime(runtime, st)
                raise
        log.info("promoted %s (was %s)", version, prev)
        return tr

    def rollback(
        self, to: str | None = None, *, runtime: Swappable | None = None, reason: str = "", revoke: bool = False
    ) -> Transition:
        """Go back to the previous approved version (or the named one ``to``) in one call.

        ``revoke`` marks the version rolled back from as faulty so it is never served again (the
        watchdog does this). Without ``to``, targets whose files fail the sha256 check are skipped
        (and reported); a named target that fails raises and nothing changes.
        """
        if to is not None:
            check_version_id(to, "rollback target")  # '' is refused too: None means "the previous one"
        with self._lock():
            st = self._read_state()
            cur = st["active"]
            if cur is None:
                raise RegistryError("nothing is active, so there is nothing to roll back from")
            skipped: builtins.list[builtins.list[str]] = []
            target: str | None
            if to is not None:
                if to == cur:
                    raise RegistryError(f"{to} is already active")
                data, sha = self.load_for_serving(to)
                target = to
            else:
                target, data, sha = None, b"", ""
                for vid in self.rollback_targets():
                    try:
                        data, sha = self.load_for_serving(vid)
                    except RegistryError as exc:
                        skipped.append([vid, str(exc)])
                        continue
                    target = vid
                    break
                if target is None:
                    raise RegistryError(
                        f"no earlier approved version to roll back to from {cur}"
                        + (f" (skipped: {skipped})" if skipped else "")
                    )
            self._swap_runtime(runtime, target, data, sha)
            stack = list(st["stack"])
            if target in stack:
                stack = stack[: len(stack) - stack[::-1].index(target)]
            else:
                stack.append(target)
            new = dict(st)
            new["seq"] = st["seq"] + 1
            tr = Transition("rollback", cur, target, _now(), reason, new["seq"], revoked=revoke, skipped=skipped)
            retired, revoked = set(st["retired"]), set(st["revoked"])
            if revoke:
                revoked.add(cur)
                retired.discard(cur)
            else:
                retired.add(cur)
            new.update(
                active=target,
                active_sha256=sha,
                stack=stack,
                history=st["history"] + [tr.to_dict()],
                retired=sorted(retired),
                revoked=sorted(revoked),
            )
            try:
                self._commit_state(new)
            except BaseException:
                self._restore_runtime(runtime, st)
                raise
        log.warning("rolled back %s -> %s%s: %s", cur, target, " (revoked)" if revoke else "", reason)
        return tr

    def revoke(self, version: str, reason: str = "") -> None:
        """Mark a non-active version as never to be served again (e.g. found faulty after the fact)."""
        check_version_id(version)
        with self._lock():
            st = self._read_state()
            self._meta(version)
            if version == st["active"]:
                raise RegistryError(f"{version} is active; use rollback(revoke=True) to leave it and revoke it")
            new = dict(st)
            new["seq"] = st["seq"] + 1
            new["revoked"] = sorted(set(st["revoked"]) | {version})
            new["history"] = st["history"] + [
                {"kind": "revoke", "version": version, "at": _now(), "reason": reason, "seq": new["seq"]}
            ]
            self._commit_state(new)

    # ------------------------------------------------------------------ garbage collection
    def gc(self, keep_approved: int = 3, dry_run: bool = False) -> GcReport:
        """Delete artifacts of versions nobody can serve or roll back to; keep a tombstone of each.

        Kept: the active version, the ``keep_approved`` most recent rollback targets (always the
        first: the version ``rollback()`` returns to), the ``keep_approved`` newest servable
        versions, and undecided candidates. Deleted versions leave meta.json and their reports
        under tombstones/, so lineage and audit survive. A malformed active pointer or rollback
        stack in state.json makes gc refuse (RegistryError) rather than guess what is serving.
        """
        if isinstance(keep_approved, bool) or not isinstance(keep_approved, int) or keep_approved < 1:
            raise ValueError(f"keep_approved must be an integer >= 1 (the rollback target), got {keep_approved!r}")
        with self._lock():
            st = self._read_state()
            bad = [v for v in [st["active"], *st["stack"]] if v is not None and not is_version_id(v)]
            if bad:
                raise RegistryError(
                    f"{self._state_path} names malformed version id(s) {bad} (expected {VERSION_ID_FORM}); "
                    "refusing to garbage-collect until the active pointer is fixed (promote or roll back)"
                )
            infos = self.list()
            keep: set[str] = set()
            if st["active"]:
                keep.add(st["active"])
            targets = self.rollback_targets()
            keep.update(targets[: max(1, keep_approved)])  # never the active one nor the rollback target
            servable = [i.id for i in infos if i.state in SERVABLE_STATES and i.id != st["active"]]
            keep.update(servable[-keep_approved:])
            keep.update(i.id for i in infos if i.state == "candidate")
            doomed = [i.id for i in infos if i.id not in keep]
            protected = {st["active"], *targets[:1]} & set(doomed)
            if protected:  # cannot happen by construction; a last line of defence for the served model
                raise RegistryError(f"gc would delete {sorted(protected)} (active or rollback target); refused")
            if dry_run or not doomed:
                return GcReport(deleted=doomed, kept=sorted(keep, key=_id_order))
            for vid in doomed:
                src = self.versions_dir / vid
                tmp = self.root / "tombstones" / f".{vid}.{uuid.uuid4().hex[:8]}"
                tmp.mkdir()
                shutil.copy2(src / META_FILE, tmp / META_FILE)
                if (src / REPORTS_DIR).is_dir():
                    shutil.copytree(src / REPORTS_DIR, tmp / REPORTS_DIR)
                for p in tmp.rglob("*.json"):
                    _fsync_file(p)
                tomb = self.root / "tombstones" / vid
                if tomb.exists():
                    shutil.rmtree(tomb)
                os.rename(tmp, tomb)
                os.rename(src, self.root / "trash" / f"{vid}.{uuid.uuid4().hex[:8]}")
            fsync_dir(self.versions_dir)
            fsync_dir(self.root / "tombstones")
            new = dict(st)
            new["stack"] = [v for v in st["stack"] if v not in doomed]
            self._commit_state(new)
            for d in (self.root / "trash").iterdir():
                shutil.rmtree(d, ignore_errors=True)
        log.info("gc deleted %s", doomed)
        return GcReport(deleted=doomed, kept=sorted(keep, key=_id_order))
