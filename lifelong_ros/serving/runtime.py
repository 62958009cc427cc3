"""PolicyRuntime: the policy server's inference core, an onnxruntime session with atomic hot-swap.

It exists so a robot can keep acting on every control tick while a newer model is loaded beside
the current one: inputs are validated, each action says which model version computed it, and a
model that fails to load never replaces the one that is serving.

Design (the hot path is ``infer``; everything else is kept off it):

* All per-model state lives in one immutable :class:`_Snapshot` (session, version, sha256,
  signature, head count). ``infer`` reads ``self._snap`` once and uses only that object, so a call
  that started before a swap finishes on the old session and is tagged with the old version.
  ``swap`` builds, checks and warms the new snapshot on the runtime's own builder thread (run at
  a lower CPU priority on Linux), then replaces the reference in one assignment — atomic under
  the GIL. Inference never takes a lock and never waits on a swap.
* Swaps are serialised (one builder thread, plus a lock). Retired snapshots stay loaded (the last
  ``keep_warm`` of them), so the last reference to an old session is almost always dropped by the
  builder thread (a control thread never pays for tearing a session down), and swapping back to a
  recent version (rollback) builds nothing.
* In one Python process the builder shares the GIL with the control thread: building a session
  holds it for ~0.1-0.2 ms at a time, and each hold can delay one inference call. Swaps are
  arranged so a cold swap holds it as few times as possible (see ``_evict_warm``).
* Sessions run single-threaded by default (``intra_op_num_threads=1``: the work happens on the
  calling thread, no pool to wake up), sequential execution, all graph optimisations, and thread
  spinning disabled so idle pool threads (with ``intra_op_threads > 1``) do not burn the cores the
  learner needs.
* Outputs: an :class:`OutputGuard` (default: finiteness only) checks every action after inference;
  a non-finite action, or one beyond the configured bounds plus slack, is never returned: the
  runtime returns the safe action instead ("hold": the last good action for that task id, or
  "zero"), marks the output (``guarded``, ``reason``) and counts it in ``stats()``. On the single
  observation path this costs one ``tolist`` and a few comparisons of Python floats.
* Observations: float32 is used as is; other real floating dtypes (float64 from numpy, float16)
  are converted to float32, because robotics code produces float64 all the time and the cast is
  exact enough for a float32 network. Integers, booleans, complex, objects and strings are refused
  rather than guessed at. Lists/tuples of floats are accepted through ``np.asarray``.
"""

from __future__ import annotations

import math
import operator
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple, Union

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from lifelong_ros.fsutil import sha256_bytes
from lifelong_ros.serving.interface import ACTION_OUTPUT, OBS_INPUT, TASK_INPUT

ModelSource = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]
# InferenceSession.run(output_names, feeds, run_options) -> one array per output name
RunFn = Callable[[list[str], dict[str, npt.NDArray[Any]], Any], list[Any]]

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


class InvalidObservation(ValueError):
    """An input to ``infer`` was refused (shape, dtype, non-finite value or task id); nothing ran."""


class ModelLoadError(RuntimeError):
    """A model could not be loaded or swapped in; the runtime keeps serving what it had."""


class PolicyOutput(NamedTuple):
    """The action and the id of the model version that actually computed it.

    Unpacks as ``(action, version)``. ``guarded`` is True when the model's action was refused by
    the output guard and ``action`` is the safe action instead (then it is a :class:`GuardedOutput`,
    ``reason`` says why and ``model_action`` holds what the model computed)."""

    action: npt.NDArray[np.float32]
    version: str

    @property
    def guarded(self) -> bool:
        return False

    @property
    def reason(self) -> str:
        return ""

    @property
    def model_action(self) -> npt.NDArray[np.float32]:
        """What the model computed (the same array as ``action`` unless the output was guarded)."""
        return self.action


class GuardedOutput(PolicyOutput):
    """A PolicyOutput whose ``action`` is the guard's safe action, not the model's (rows of a batch:
    only the refused rows were replaced)."""

    _guard_reason: str
    _model_action: npt.NDArray[np.float32]

    @property
    def guarded(self) -> bool:
        return True

    @property
    def reason(self) -> str:
        return str(self.__dict__.get("_guard_reason", "guarded"))

    @property
    def model_action(self) -> npt.NDArray[np.float32]:
        raw: npt.NDArray[np.float32] = self.__dict__.get("_model_action", self.action)
        return raw


def _guarded_output(
    action: npt.NDArray[np.float32], version: str, reason: str, model_action: npt.NDArray[np.float32]
) -> GuardedOutput:
    out = GuardedOutput(action, version)
    out._guard_reason = reason
    out._model_action = model_action
    return out


SAFE_ACTIONS = ("hold", "zero")
Bound = float | Sequence[float] | None


@dataclass(frozen=True)
class OutputGuard:
    """Which actions ``infer`` may return, and what it returns instead.

    An action is refused when any element is NaN or infinite, or (with bounds) below ``low -
    slack`` or above ``high + slack``. ``low``/``high`` are scalars or one value per action element
    (a single value applies to every element; -inf/inf or None = unbounded on that side).
    ``safe_action`` is what is returned instead: "hold" = the last good action the runtime returned
    for that task id (single observations; before the first one, and for batch rows, the zero
    action), or "zero" = all zeros. The zero action is clipped into [low, high] when 0 lies outside.
    """

    low: Bound = None
    high: Bound = None
    slack: float = 0.0
    safe_action: str = "hold"

    def __post_init__(self) -> None:
        if self.safe_action not in SAFE_ACTIONS:
            raise ValueError(f"output guard safe_action={self.safe_action!r}; expected one of {SAFE_ACTIONS}")
        if isinstance(self.slack, bool) or not isinstance(self.slack, (int, float)) or not 0 <= self.slack < math.inf:
            raise ValueError(f"output guard slack={self.slack!r}; expected a finite number >= 0")
        lo, hi = self._vector("low", -math.inf), self._vector("high", math.inf)
        if len(lo) > 1 and len(hi) > 1 and len(lo) != len(hi):
            raise ValueError(f"output guard low has {len(lo)} values and high {len(hi)}; expected the same length")
        n = max(len(lo), len(hi))
        lo, hi = lo * (n // len(lo)), hi * (n // len(hi))
        bad = [i for i in range(n) if lo[i] > hi[i]]
        if bad:
            raise ValueError(f"output guard low > high at element(s) {bad}: low={list(lo)}, high={list(hi)}")

    def _vector(self, name: str, unbounded: float) -> list[float]:
        raw = getattr(self, name)
        if raw is None:
            return [unbounded]
        values = [raw] if isinstance(raw, (int, float, np.floating, np.integer)) else list(np.asarray(raw).reshape(-1))
        try:
            out = [float(v) for v in values if not isinstance(v, (bool, np.bool_))]
        except (TypeError, ValueError):
            out = []
        if not out or len(out) != len(values) or any(math.isnan(v) for v in out):
            raise ValueError(f"output guard {name}={raw!r}; expected a number or a non-empty list of numbers (no NaN)")
        return out

    def bounds(self, act_dim: int) -> tuple[list[float], list[float]]:
        """(low, high) without slack, one value per action element."""
        lo, hi = self._vector("low", -math.inf), self._vector("high", math.inf)
        for name, v in (("low", lo), ("high", hi)):
            if len(v) not in (1, act_dim):
                raise ValueError(
                    f"output guard {name} has {len(v)} values; expected 1 or act_dim={act_dim} (one per action element)"
                )
        return (lo * act_dim if len(lo) == 1 else lo), (hi * act_dim if len(hi) == 1 else hi)

    def to_dict(self) -> dict[str, Any]:
        def plain(b: Bound) -> Any:
            return b if b is None or isinstance(b, (int, float)) else [float(v) for v in b]

        return {"low": plain(self.low), "high": plain(self.high), "slack": self.slack, "safe_action": self.safe_action}


class _Limits:
    """An OutputGuard compiled for one act_dim: what the hot path compares against."""

    __slots__ = ("bounded", "guard", "hi", "hi_arr", "hold", "lo", "lo_arr", "scalar", "zero")

    def __init__(self, guard: OutputGuard, act_dim: int):
        low, high = guard.bounds(act_dim)
        self.guard = guard
        self.lo = [v - guard.slack for v in low]
        self.hi = [v + guard.slack for v in high]
        self.bounded = any(math.isfinite(v) for v in self.lo + self.hi)
        self.scalar = len(set(self.lo)) == 1 and len(set(self.hi)) == 1
        self.lo_arr = np.asarray(self.lo, np.float64)
        self.hi_arr = np.asarray(self.hi, np.float64)
        self.hold = guard.safe_action == "hold"
        zero = np.clip(np.zeros(act_dim), np.asarray(low), np.asarray(high)).astype(np.float32)
        zero.flags.writeable = False
        self.zero = zero

    def within(self, v: list[float]) -> bool:
        """Finite values ``v`` within bounds + slack."""
        if self.scalar:
            return self.lo[0] <= min(v) and max(v) <= self.hi[0]
        return all(map(operator.le, self.lo, v)) and all(map(operator.le, v, self.hi))

    def why(self, a: npt.NDArray[np.float32]) -> str:
        """Why ``a`` (one action) was refused."""
        x = np.asarray(a, np.float64)
        bad = ~np.isfinite(x)
        if bad.any():
            return f"non-finite action {x.tolist()} ({int(bad.sum())} NaN/Inf value(s))"
        i = int(np.argmax((x < self.lo_arr) | (x > self.hi_arr)))
        g = self.guard
        return f"action[{i}]={float(x[i])!r} outside [{self.lo[i] + g.slack:g}, {self.hi[i] - g.slack:g}]" + (
            f" ± slack {g.slack:g}" if g.slack else ""
        )


@dataclass(frozen=True)
class SwapReport:
    """What a successful swap did and how long it took (build = read + verify + load + check +
    warm-up; ``reused``: the model was still loaded from an earlier swap, nothing was built)."""

    old_version: str
    new_version: str
    sha256: str
    build_ms: float
    total_ms: float
    reused: bool = False


@dataclass(frozen=True)
class ModelSignature:
    """The I/O contract two models must share to be hot-swappable (head count may grow)."""

    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]
    obs_dim: int
    act_dim: int

    def mismatch(self, other: ModelSignature) -> str | None:
        """Why ``other`` cannot replace a model with this signature, or None if it can."""
        problems = []
        for what in ("inputs", "outputs", "obs_dim", "act_dim"):
            mine, theirs = getattr(self, what), getattr(other, what)
            if mine != theirs:
                problems.append(f"{what} {theirs!r} (serving model has {mine!r})")
        return "; ".join(problems) or None

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [list(i) for i in self.inputs],
            "outputs": [list(o) for o in self.outputs],
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
        }


def session_options(intra_op_threads: int = 1) -> ort.SessionOptions:
    """The serving configuration: tuned for one observation at a time, on the calling thread."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


class _Snapshot:
    """Everything ``infer`` needs about one loaded model. Never mutated once published."""

    __slots__ = (
        "act_dim",
        "has_task",
        "metadata",
        "num_heads",
        "obs_dim",
        "obs_shape",
        "out_names",
        "run",
        "session",
        "sha256",
        "signature",
        "task_ones",
        "version",
    )

    def __init__(
        self,
        session: ort.InferenceSession,
        version: str,
        sha256: str,
        signature: ModelSignature,
        num_heads: int,
        has_task: bool,
        metadata: dict[str, str],
    ):
        self.session = session
        # run(output_names, feeds, run_options): InferenceSession.run, or its C++ binding directly
        # once _warm_up has shown they agree.
        self.run: RunFn = session.run
        self.version = version
        self.sha256 = sha256
        self.signature = signature
        self.num_heads = num_heads
        self.obs_dim = signature.obs_dim
        self.act_dim = signature.act_dim
        self.obs_shape = (signature.obs_dim,)
        self.has_task = has_task
        # One read-only [1] int64 array per head: single-observation calls allocate no task array.
        ones: list[npt.NDArray[np.int64]] = []
        for k in range(num_heads):
            a = np.full(1, k, dtype=np.int64)
            a.flags.writeable = False
            ones.append(a)
        self.task_ones = tuple(ones)
        self.out_names = [ACTION_OUTPUT]
        self.metadata = metadata

    def relabel(self, version: str) -> _Snapshot:
        """The same loaded model under another version id (same bytes registered twice)."""
        if version == self.version:
            return self
        twin = object.__new__(_Snapshot)
        for name in _Snapshot.__slots__:
            setattr(twin, name, getattr(self, name))
        twin.version = version
        return twin


# ------------------------------------------------------------------------------------- loading
def _read_model(model: ModelSource, version: str) -> bytes:
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
    elif isinstance(model, (str, os.PathLike)):
        try:
            with open(model, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ModelLoadError(f"cannot read model file {os.fspath(model)!r} for version {version!r}: {exc}") from exc
    else:
        raise TypeError(f"model must be ONNX bytes or a path to an .onnx file, got {type(model).__name__}")
    if not data:
        raise ModelLoadError(f"model for version {version!r} is empty (0 bytes); expected a serialized ONNX model")
    return data


def _dim(d: Any) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def _signature(session: ort.InferenceSession, version: str, meta: dict[str, str]) -> tuple[ModelSignature, bool]:
    """Read and check the I/O contract: obs [batch, D] float, optional task_id [batch] int64,
    action [batch, A] float, with D and A known from the graph or the metadata (and consistent)."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    where = f"model {version!r}"
    if OBS_INPUT not in inputs:
        raise ModelLoadError(f"{where} has inputs {sorted(inputs)}; expected an input named {OBS_INPUT!r}")
    extra = sorted(set(inputs) - {OBS_INPUT, TASK_INPUT})
    if extra:
        raise ModelLoadError(f"{where} has unexpected inputs {extra}; expected only {OBS_INPUT!r} and {TASK_INPUT!r}")
    if ACTION_OUTPUT not in outputs:
        raise ModelLoadError(f"{where} has outputs {sorted(outputs)}; expected an output named {ACTION_OUTPUT!r}")
    obs, act = inputs[OBS_INPUT], outputs[ACTION_OUTPUT]
    if obs.type != "tensor(float)" or len(obs.shape) != 2:
        raise ModelLoadError(
            f"{where}: input {OBS_INPUT!r} is {obs.type} with shape {obs.shape}; "
            "expected tensor(float) with shape [batch, obs_dim]"
        )
    if act.type != "tensor(float)" or len(act.shape) != 2:
        raise ModelLoadError(
            f"{where}: output {ACTION_OUTPUT!r} is {act.type} with shape {act.shape}; "
            "expected tensor(float) with shape [batch, act_dim]"
        )
    if _dim(obs.shape[0]) is not None:
        raise ModelLoadError(
            f"{where}: input {OBS_INPUT!r} has a fixed batch size {obs.shape[0]} (shape {obs.shape}); "
            "expected a dynamic batch axis (export with dynamic_axes, as model.export_onnx does)"
        )
    has_task = TASK_INPUT in inputs
    if has_task and (inputs[TASK_INPUT].type != "tensor(int64)" or len(inputs[TASK_INPUT].shape) != 1):
        t = inputs[TASK_INPUT]
        raise ModelLoadError(
            f"{where}: input {TASK_INPUT!r} is {t.type} with shape {t.shape}; expected tensor(int64) with shape [batch]"
        )
    dims: dict[str, int] = {}
    for key, graph_dim in (("obs_dim", _dim(obs.shape[1])), ("act_dim", _dim(act.shape[1]))):
        raw = meta.get(key)
        try:
            meta_dim = int(raw) if raw is not None else None
        except ValueError:
            raise ModelLoadError(f"{where}: metadata {key}={meta.get(key)!r} is not an integer") from None
        if graph_dim is not None and meta_dim is not None and graph_dim != meta_dim:
            raise ModelLoadError(f"{where}: graph says {key}={graph_dim} but metadata says {meta_dim}")
        value = graph_dim if graph_dim is not None else meta_dim
        if value is None or value <= 0:
            raise ModelLoadError(f"{where}: cannot tell {key} (graph shape is symbolic and metadata has no {key})")
        dims[key] = value
    sig = ModelSignature(
        inputs=tuple(sorted((i.name, i.type) for i in inputs.values())),
        outputs=tuple(sorted((o.name, o.type) for o in outputs.values())),
        obs_dim=dims["obs_dim"],
        act_dim=dims["act_dim"],
    )
    return sig, has_task


def _num_heads(meta: dict[str, str], has_task: bool, version: str) -> int:
    """Head count from metadata ``num_heads``. A model without it accepts task 0 only (refusing
    other ids is safe; the exported graph would silently clamp them to the last head)."""
    if not has_task:
        return 1
    raw = meta.get("num_heads", "1")
    try:
        n = int(raw)
    except ValueError:
        raise ModelLoadError(f"model {version!r}: metadata num_heads={raw!r} is not an integer") from None
    if n < 1:
        raise ModelLoadError(f"model {version!r}: metadata num_heads={n}; expected >= 1")
    return n


def _warm_up(snap: _Snapshot) -> None:
    """Warm the session and choose how ``infer`` calls it; refuse a model whose outputs are
    wrong-shaped or non-finite on ordinary inputs.

    Three real inferences: one observation (the first run of a session costs ~4x a steady one;
    one run is enough to pay it), one batch covering every head (so every head is checked), and
    the single observation again through the binding's own ``run`` (see below). Kept this short
    on purpose: it runs beside live inference, and on a loaded machine every hand-over of the GIL
    between the swapping thread and the control thread is a chance for the control thread to wait.

    ``InferenceSession.run`` re-validates input names and OrtValue ownership in Python on every
    call (~3 us of a ~25 us call here); ``infer`` has already validated its feeds, so it calls
    the binding underneath (``session._sess.run``, a private attribute of onnxruntime's Python
    API) when that exists and returns bit-identical results, else the public ``run``.
    """
    n = snap.num_heads
    single = np.random.default_rng(0).standard_normal((1, snap.obs_dim)).astype(np.float32)
    probes = [
        (single, snap.task_ones[0]),
        (np.zeros((n + 1, snap.obs_dim), np.float32), np.arange(n + 1, dtype=np.int64) % n),
    ]
    outputs: list[tuple[dict[str, npt.NDArray[Any]], npt.NDArray[np.float32]]] = []
    for x, task in probes:
        feeds: dict[str, npt.NDArray[Any]] = {OBS_INPUT: x, TASK_INPUT: task} if snap.has_task else {OBS_INPUT: x}
        try:
            y = snap.session.run(snap.out_names, feeds)[0]
        except Exception as exc:  # any failure here means: do not serve this model
            raise ModelLoadError(f"model {snap.version!r} failed its warm-up inference: {exc}") from exc
        if not isinstance(y, np.ndarray) or y.shape != (x.shape[0], snap.act_dim) or y.dtype != _F32:
            raise ModelLoadError(
                f"model {snap.version!r} returned {getattr(y, 'dtype', type(y))} "
                f"{getattr(y, 'shape', '')} in warm-up; expected float32 {(x.shape[0], snap.act_dim)}"
            )
        bad_rows = np.flatnonzero(~np.isfinite(y).all(axis=1))
        if bad_rows.size:
            raise ModelLoadError(
                f"model {snap.version!r} produced non-finite actions in warm-up, e.g. "
                f"{y[bad_rows[0]].tolist()} for task id(s) {sorted(set(task[bad_rows].tolist()))}; "
                "refusing to serve it"
            )
        outputs.append((feeds, y))
    snap.run = snap.session.run
    fast = getattr(getattr(snap.session, "_sess", None), "run", None)
    if fast is not None:
        feeds, expected = outputs[0]
        try:
            y = fast(snap.out_names, feeds, None)[0]
        except Exception:  # noqa: BLE001 - private API changed: keep the public one
            return
        if (
            type(y) is np.ndarray
            and y.dtype == expected.dtype
            and y.shape == expected.shape
            and y.tobytes() == expected.tobytes()
        ):
            snap.run = fast


def _read_verified(model: ModelSource, version: str, expected_sha256: str | None) -> tuple[bytes, str]:
    """The model's bytes and their sha256, which must equal ``expected_sha256`` when given."""
    if not isinstance(version, str) or not version:
        raise ValueError(f"version must be a non-empty string, got {version!r}")
    data = _read_model(model, version)
    sha = sha256_bytes(data)
    if expected_sha256 is not None and sha != expected_sha256.strip().lower():
        raise ModelLoadError(
            f"sha256 mismatch for model {version!r}: expected {expected_sha256}, got {sha} "
            f"({len(data)} bytes); refusing to serve it"
        )
    return data, sha


def _build(
    data: bytes, sha: str, version: str, options: ort.SessionOptions, before_build: Callable[[], None] | None = None
) -> _Snapshot:
    """Build, check and warm a session for verified model bytes. ``before_build`` runs just before
    the session constructor (see PolicyRuntime._evict_warm for why)."""
    if before_build is not None:
        before_build()
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several types for bad models
        raise ModelLoadError(
            f"onnxruntime cannot load model {version!r} ({len(data)} bytes, sha256 {sha[:12]}…): {exc}"
        ) from exc
    meta = dict(session.get_modelmeta().custom_metadata_map)
    sig, has_task = _signature(session, version, meta)
    snap = _Snapshot(session, version, sha, sig, _num_heads(meta, has_task, version), has_task, meta)
    _warm_up(snap)
    return snap


# ------------------------------------------------------------------------------------- runtime
_DEFAULT_GUARD = OutputGuard()


class PolicyRuntime:
    """Serve one ONNX policy at a time; ``infer`` is lock-free, ``swap`` replaces it atomically.

    ``model`` is the ONNX model as bytes (as the registry hands it out) or a path to a file.
    ``expected_sha256``, when given, must match the bytes exactly. Raises ModelLoadError if the
    initial model cannot be served.

    The ``keep_warm`` models served most recently before the current one stay loaded, so a swap
    back to one of them (a rollback, or flipping between two versions) only switches a reference:
    no session is built or torn down, and the control thread is not disturbed at all.

    ``output_guard`` (default: finiteness only, "hold") decides which actions ``infer`` may return;
    ``None`` turns the guard off (benchmarks, and callers that check outputs themselves).
    """

    def __init__(
        self,
        model: ModelSource,
        version: str,
        expected_sha256: str | None = None,
        intra_op_threads: int = 1,
        *,
        build_niceness: int = 10,
        keep_warm: int = 2,
        output_guard: OutputGuard | None = _DEFAULT_GUARD,
    ):
        if not isinstance(intra_op_threads, int) or intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be an integer >= 1, got {intra_op_threads!r}")
        if not isinstance(build_niceness, int) or not 0 <= build_niceness <= 19:
            raise ValueError(f"build_niceness must be an integer in [0, 19], got {build_niceness!r}")
        if not isinstance(keep_warm, int) or keep_warm < 1:
            raise ValueError(f"keep_warm must be an integer >= 1, got {keep_warm!r}")
        self._intra_op_threads = intra_op_threads
        self._build_niceness = build_niceness
        self._options = session_options(intra_op_threads)
        self._swap_lock = threading.Lock()
        self._builder_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._builder_ident: list[int | None] = [None]  # set by the builder thread when it starts
        if output_guard is not None and not isinstance(output_guard, OutputGuard):
            raise TypeError(f"output_guard must be an OutputGuard or None, got {type(output_guard).__name__}")
        self._snap: _Snapshot = _build(*_read_verified(model, version, expected_sha256), version, self._options)
        # act_dim never changes across swaps (a different one is refused), so the limits hold for good.
        self._limits: _Limits | None = None if output_guard is None else _Limits(output_guard, self._snap.act_dim)
        self._held: dict[int, list[float]] = {}  # task id -> last good single action ("hold")
        self._guarded = 0
        self._guarded_non_finite = 0
        self._last_guard_reason: str | None = None
        # Models retired by swaps, oldest first, keyed by sha256. Only the builder touches it.
        self._keep_warm = keep_warm
        self._warm: OrderedDict[str, _Snapshot] = OrderedDict()
        self._warm_versions: tuple[str, ...] = ()  # for stats(), which other threads call
        self._reused_swaps = 0
        self._calls = 0
        self._errors = 0
        self._swaps = 0
        self._failed_swaps = 0
        self._last_swap_error: str | None = None
        self._last_swap_ms: float | None = None

    # -- the hot path ------------------------------------------------------------------------
    def infer(
        self, obs: npt.NDArray[np.floating[Any]], task_id: int | npt.NDArray[np.integer[Any]] = 0
    ) -> PolicyOutput:
        """Action for ``obs`` ([obs_dim] -> [act_dim], or [N, obs_dim] -> [N, act_dim]) with head
        ``task_id`` (an int, or one id per row), tagged with the version that computed it.

        Raises InvalidObservation (nothing is run) for a wrong shape, a non-float dtype, a NaN or
        infinite value, or a task id outside [0, num_heads).
        """
        snap = self._snap  # the one read of shared state: this call uses this model throughout
        self._calls += 1
        try:
            dt = obs.dtype if type(obs) is np.ndarray else None
            if (dt is _F32 or dt is _F64) and obs.shape == snap.obs_shape and obs.flags.c_contiguous:
                # One observation, the common case. Finiteness is tested by summing the values as
                # Python floats: NaN/Inf (or a float64 beyond float32 range, which the cast turns
                # into Inf) make the sum non-finite, and a sum of float32 magnitudes cannot
                # overflow a double. Measured here: a numpy reduction instead (isfinite().all(),
                # a dot product) slows the onnxruntime call that follows by 5-10 us; this ~1 us.
                try:
                    xf = obs if dt is _F32 else obs.astype(_F32)
                    ok = math.isfinite(sum(xf.tolist()))
                except (ArithmeticError, RuntimeWarning):  # only if numpy errors/warnings raise
                    ok = False
                if ok:
                    x = xf.reshape(1, snap.obs_dim)
                    single = True
                else:
                    x, single = _coerce(obs, snap)
            else:
                x, single = _coerce(obs, snap)
            if type(task_id) is int and 0 <= task_id < snap.num_heads and single:
                t = snap.task_ones[task_id]
            else:
                t = _task_array(task_id, x.shape[0], snap)
            feeds = {OBS_INPUT: x, TASK_INPUT: t} if snap.has_task else {OBS_INPUT: x}
            out = snap.run(snap.out_names, feeds, None)[0]
        except BaseException:
            self._errors += 1
            raise
        lim = self._limits
        if lim is None:
            return PolicyOutput(out[0] if single else out, snap.version)
        if not single:
            return self._guard_batch(out, t, snap, lim)
        a = out[0]
        # The output guard. As for the observation, finiteness is a sum of Python floats (NaN/Inf
        # make it non-finite; float32 magnitudes cannot overflow a double); then, only once finite,
        # the bound comparisons (NaN would compare False everywhere).
        v = a.tolist()
        if math.isfinite(sum(v)) and (not lim.bounded or lim.within(v)):
            if lim.hold:
                self._held[task_id if type(task_id) is int else int(t[0])] = v  # a list: the caller cannot alter it
            return PolicyOutput(a, snap.version)
        return self._guard_one(a, task_id if type(task_id) is int else int(t[0]), snap, lim)

    def _guard_one(self, a: npt.NDArray[np.float32], task: int, snap: _Snapshot, lim: _Limits) -> GuardedOutput:
        """The model's action ``a`` was refused: the safe action, marked, counted."""
        held = self._held.get(task) if lim.hold else None
        safe = np.array(held, np.float32) if held is not None else lim.zero.copy()
        what = "the held action (last good one for this task)" if held is not None else "the zero action"
        reason = f"{lim.why(a)} from model {snap.version!r} for task id {task}; returned {what} instead"
        self._count_guarded(1, not np.isfinite(a).all(), reason)
        return _guarded_output(safe, snap.version, reason, a)

    def _guard_batch(
        self, out: npt.NDArray[np.float32], t: npt.NDArray[np.int64], snap: _Snapshot, lim: _Limits
    ) -> PolicyOutput:
        """The guard over the rows of a batch: refused rows become the safe action of their task
        ("hold" uses the last good single action; a batch never updates it)."""
        finite = np.isfinite(out).all(axis=1)
        ok = finite
        if lim.bounded:
            with np.errstate(invalid="ignore"):
                ok = finite & (out >= lim.lo_arr).all(axis=1) & (out <= lim.hi_arr).all(axis=1)
        if ok.all():
            return PolicyOutput(out, snap.version)
        bad = np.flatnonzero(~ok)
        safe = out.copy()
        for i in bad:
            held = self._held.get(int(t[i])) if lim.hold else None
            safe[i] = held if held is not None else lim.zero
        reason = (
            f"{bad.size} of {out.shape[0]} actions refused from model {snap.version!r}, e.g. row {int(bad[0])}: "
            f"{lim.why(out[bad[0]])}; those rows hold the safe action ({lim.guard.safe_action})"
        )
        self._count_guarded(int(bad.size), int((~finite).sum()), reason)
        return _guarded_output(safe, snap.version, reason, out)

    def _count_guarded(self, n: int, non_finite: int, reason: str) -> None:
        self._guarded += n
        self._guarded_non_finite += int(non_finite)
        self._last_guard_reason = reason

    __call__ = infer

    # -- swapping ------------------------------------------------------------------------------
    def swap(self, model: ModelSource, version: str, expected_sha256: str | None = None) -> SwapReport:
        """Load ``model`` as ``version``, check it, warm it up, then switch to it atomically.

        The work runs on the runtime's builder thread (the caller waits; use :meth:`swap_async`
        not to); inference continues on the current model meanwhile and calls in flight finish
        on it. Raises ModelLoadError with the reason (unreadable/corrupt/truncated model, sha256
        mismatch, signature different from the serving model's, wrong or non-finite warm-up
        output) and then the current model keeps serving, untouched.
        """
        return self.swap_async(model, version, expected_sha256).result()

    def swap_async(self, model: ModelSource, version: str, expected_sha256: str | None = None) -> Future[SwapReport]:
        """:meth:`swap` without waiting: the future holds the SwapReport or the ModelLoadError."""
        t0 = time.perf_counter()
        if threading.get_ident() == self._builder_ident[0]:  # called from the builder itself: no queueing
            fut: Future[SwapReport] = Future()
            try:
                fut.set_result(self._swap_now(model, version, expected_sha256, t0))
            except BaseException as exc:  # noqa: BLE001 - delivered through the future
                fut.set_exception(exc)
            return fut
        return self._builder().submit(self._swap_now, model, version, expected_sha256, t0)

    def close(self) -> None:
        """Stop the builder thread (after queued swaps finish). Inference keeps working."""
        with self._builder_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    def __enter__(self) -> PolicyRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _builder(self) -> ThreadPoolExecutor:
        """One background thread builds every new session. On Linux, with single-threaded sessions,
        it runs at a lower CPU priority (``build_niceness``) so the control thread wins the CPU
        while a swap is being built; measured on 2 loaded cores: p99 during swaps every 10 ms went
        from 1-3 ms to ~80 us. (With intra_op_threads > 1 it is not lowered: onnxruntime's pool
        threads are created by this thread and would inherit the lower priority.)"""
        with self._builder_lock:
            if self._executor is None:
                nice = self._build_niceness if self._intra_op_threads == 1 else 0
                # The initializer must not reference self: the worker keeps it alive for its lifetime.
                self._executor = ThreadPoolExecutor(
                    max_workers=1,
                    thread_name_prefix="policy-runtime-build",
                    initializer=_init_builder,
                    initargs=(nice, self._builder_ident),
                )
            return self._executor

    def _swap_now(self, model: ModelSource, version: str, expected_sha256: str | None, t0: float) -> SwapReport:
        with self._swap_lock:
            started = time.perf_counter()
            try:
                data, sha = _read_verified(model, version, expected_sha256)
                old = self._snap
                if sha == old.sha256:
                    new, reused = old.relabel(version), True
                elif sha in self._warm:
                    new, reused = self._warm[sha].relabel(version), True
                else:
                    new, reused = _build(data, sha, version, self._options, self._evict_warm), False
                why = old.signature.mismatch(new.signature)
                if why:
                    raise ModelLoadError(f"model {version!r} is not a drop-in replacement for {old.version!r}: {why}")
            except ModelLoadError as exc:
                self._failed_swaps += 1
                err = ModelLoadError(f"{exc}; still serving {self._snap.version!r}")
                self._last_swap_error = str(err)
                raise err from exc
            except BaseException as exc:
                self._failed_swaps += 1
                self._last_swap_error = str(exc)
                raise
            build_ms = (time.perf_counter() - started) * 1e3
            self._snap = new  # the switch: one reference assignment
            # The model just replaced stays loaded (an inference thread may still be using it, and
            # a swap back to it is then free); the oldest beyond keep_warm go at the next build.
            self._warm.pop(new.sha256, None)
            if old.sha256 != new.sha256:
                self._warm[old.sha256] = old
            self._warm_versions = tuple(w.version for w in self._warm.values())
            self._swaps += 1
            self._reused_swaps += reused
            total_ms = (time.perf_counter() - t0) * 1e3
            self._last_swap_ms = total_ms
            self._last_swap_error = None
        return SwapReport(old.version, new.version, new.sha256, build_ms, total_ms, reused)

    def _evict_warm(self) -> None:
        """Tear down the oldest kept models so that, with the one about to be retired, at most
        ``keep_warm`` stay loaded. Runs on the builder thread just before a session constructor.

        Destroying an onnxruntime session holds the GIL for ~0.1 ms, and so does the start of the
        session constructor; every such hold can stall one inference call on the control thread.
        Doing the teardown immediately before the constructor merges the two holds into one, so a
        cold swap disturbs one call where it disturbed two (measured with bench/serving.py)."""
        while len(self._warm) >= self._keep_warm:
            self._warm.popitem(last=False)
        self._warm_versions = tuple(w.version for w in self._warm.values())

    # -- introspection -------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self._snap.version

    @property
    def sha256(self) -> str:
        return self._snap.sha256

    @property
    def signature(self) -> ModelSignature:
        return self._snap.signature

    @property
    def num_heads(self) -> int:
        return self._snap.num_heads

    @property
    def obs_dim(self) -> int:
        return self._snap.obs_dim

    @property
    def act_dim(self) -> int:
        return self._snap.act_dim

    @property
    def metadata(self) -> dict[str, str]:
        """The serving model's ONNX metadata_props (a copy)."""
        return dict(self._snap.metadata)

    def stats(self) -> dict[str, Any]:
        """Counters for health reporting (call/error counts are approximate under concurrent callers)."""
        s = self._snap
        return {
            "version": s.version,
            "sha256": s.sha256,
            "num_heads": s.num_heads,
            "calls": self._calls,
            "errors": self._errors,
            "swaps": self._swaps,
            "reused_swaps": self._reused_swaps,
            "failed_swaps": self._failed_swaps,
            "warm_versions": list(self._warm_versions),
            "last_swap_ms": self._last_swap_ms,
            "last_swap_error": self._last_swap_error,
            "guarded": self._guarded,  # actions refused by the output guard (safe action returned)
            "guarded_non_finite": self._guarded_non_finite,
            "guarded_out_of_bounds": self._guarded - self._guarded_non_finite,
            "last_guard_reason": self._last_guard_reason,
        }

    @property
    def output_guard(self) -> OutputGuard | None:
        return None if self._limits is None else self._limits.guard

    def __repr__(self) -> str:
        s = self._snap
        return (
            f"PolicyRuntime(version={s.version!r}, obs_dim={s.obs_dim}, act_dim={s.act_dim}, "
            f"num_heads={s.num_heads}, sha256={s.sha256[:12]}…)"
        )


def _init_builder(niceness: int, ident: list[int | None]) -> None:
    ident[0] = threading.get_ident()
    if niceness > 0 and sys.platform.startswith("linux"):
        try:  # Linux: PRIO_PROCESS with a thread id re-nices that thread only
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + niceness))
        except OSError:
            pass  # best effort; a swap still works at normal priority


# ------------------------------------------------------------------------------ slow-path checks
def _check_finite(x: npt.NDArray[np.floating[Any]]) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        where = idx[0] if len(idx) == 1 else list(idx)
        raise InvalidObservation(
            f"obs[{where}] is {float(x[idx])!r} ({int(bad.sum())} non-finite value(s)); "
            "expected finite numbers (no NaN or Inf)"
        )


def _coerce(obs: Any, snap: _Snapshot) -> tuple[npt.NDArray[np.float32], bool]:
    """Everything that is not already a contiguous float32 [obs_dim] vector: validate, convert."""
    if not isinstance(obs, np.ndarray):
        if isinstance(obs, (list, tuple)):
            try:
                obs = np.asarray(obs)
            except ValueError as exc:
                raise InvalidObservation(
                    f"obs could not be read as an array ({exc}); expected "
                    f"{snap.obs_dim} floats or [N, {snap.obs_dim}] floats"
                ) from None
        else:
            raise InvalidObservation(
                f"obs is a {type(obs).__name__}; expected a numpy float32 array "
                f"of shape ({snap.obs_dim},) or (N, {snap.obs_dim})"
            )
    if obs.dtype.kind != "f":
        raise InvalidObservation(
            f"obs has dtype {obs.dtype}; expected float32 (other real float dtypes "
            "are converted; integer, bool, complex and object arrays are refused)"
        )
    if obs.ndim == 1:
        if obs.shape[0] != snap.obs_dim:
            raise InvalidObservation(
                f"obs has length {obs.shape[0]}; expected {snap.obs_dim} "
                f"(model {snap.version!r} takes obs_dim={snap.obs_dim})"
            )
        single = True
    elif obs.ndim == 2:
        if obs.shape[1] != snap.obs_dim or obs.shape[0] == 0:
            raise InvalidObservation(
                f"obs has shape {obs.shape}; expected (N, {snap.obs_dim}) with N >= 1 "
                f"(model {snap.version!r} takes obs_dim={snap.obs_dim})"
            )
        single = False
    else:
        raise InvalidObservation(f"obs has shape {obs.shape}; expected ({snap.obs_dim},) or (N, {snap.obs_dim})")
    _check_finite(obs)
    with np.errstate(over="ignore"):
        x = np.ascontiguousarray(obs, dtype=_F32)
    if x is not obs and not np.isfinite(x).all():
        raise InvalidObservation(
            f"obs has {obs.dtype} values beyond float32 range (max |obs| = "
            f"{float(np.abs(obs).max())!r}); expected finite values within ±3.4e38"
        )
    return (x.reshape(1, snap.obs_dim) if single else x), single


def _bad_task_id(task_id: Any, snap: _Snapshot) -> None:
    hint = f"an integer in [0, {snap.num_heads})" if snap.has_task else "0 (this model has no task_id input)"
    raise InvalidObservation(f"task_id {task_id!r} is out of range; expected {hint} for model {snap.version!r}")


def _task_array(task_id: Any, n: int, snap: _Snapshot) -> npt.NDArray[np.int64]:
    """Validate ``task_id`` (an int, or an integer array of length ``n``) and return [n] int64."""
    if isinstance(task_id, (bool, np.bool_)):
        raise InvalidObservation(f"task_id is a bool ({task_id!r}); expected an integer in [0, {snap.num_heads})")
    if isinstance(task_id, (int, np.integer)):
        k = int(task_id)
        if not 0 <= k < snap.num_heads:
            _bad_task_id(task_id, snap)
        return np.full(n, k, dtype=np.int64) if n > 1 else snap.task_ones[k]
    t = np.asarray(task_id)
    if t.dtype.kind not in "iu":
        raise InvalidObservation(f"task_id has dtype {t.dtype}; expected integers in [0, {snap.num_heads})")
    if t.shape != (n,):
        raise InvalidObservation(f"task_id has shape {t.shape}; expected ({n},) (one id per observation) or an int")
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= snap.num_heads:
        bad = lo if lo < 0 else hi
        _bad_task_id(bad, snap)
    return np.ascontiguousarray(t, dtype=np.int64)
