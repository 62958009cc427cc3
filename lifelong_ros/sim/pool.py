"""A bounded pool of niced worker processes that run closed-loop episodes through the serving path.

The safety gate's paired regression test needs many short episodes, fast, without taking the CPU
the policy server needs to keep its control rate: at most ``cores - 1`` workers (one core stays
with serving), each at a lower CPU priority, each running the policy through PolicyRuntime (the
same validated, output-guarded inference the robot uses) in the embedded simulator of the pool's
robot (``sim.backends``: Meta-World's arm or the G1 humanoid).
Outcomes are deterministic per (model sha256, task, variation seed, max_steps), so they are cached:
the active model's episodes, measured when it was itself a candidate, are not run again.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import threading
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from typing import Any

DEFAULT_NICENESS = 5


def default_workers() -> int:
    """cores - 1 (at least 1): one core stays with the policy server."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


# ------------------------------------------------------------------ worker process side
_ENVS: dict[tuple[str, str, int], Any] = {}
_RUNTIMES: OrderedDict[str, Any] = OrderedDict()
_MODELS_KEPT = 4


def _init_worker(niceness: int) -> None:
    # Ctrl-C in a terminal reaches the whole process group: the owner decides when workers stop
    # (close()), a worker must not die mid-episode with a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    # Workers simulate, never render. The parent's PyOpenGL binding (PYOPENGL_PLATFORM=osmesa once a
    # camera rendered there) is inherited but means nothing in a fresh process, and beside the
    # simulator's MUJOCO_GL=egl it makes MuJoCo's import fail ("Cannot use EGL rendering platform").
    os.environ.pop("PYOPENGL_PLATFORM", None)
    if niceness > 0 and hasattr(os, "nice"):
        try:
            os.nice(niceness)
        except OSError:  # not allowed here: run at normal priority rather than not at all
            pass


def _runtime(sha: str, onnx: bytes) -> Any:
    from lifelong_ros.serving.runtime import PolicyRuntime

    rt = _RUNTIMES.pop(sha, None)
    if rt is None:
        rt = PolicyRuntime(onnx, version=sha[:12], expected_sha256=sha)
    _RUNTIMES[sha] = rt
    while len(_RUNTIMES) > _MODELS_KEPT:
        _RUNTIMES.popitem(last=False)[1].close()
    return rt


def _env(robot: str, task: str, max_steps: int) -> Any:
    """This worker's simulator of ``task`` (built once per robot, task and episode cap)."""
    from lifelong_ros.sim.backends import backend

    key = (robot, task, max_steps)
    if key not in _ENVS:
        _ENVS[key] = backend(robot).make(task, steps_after_success=0, max_steps=max_steps)
    return _ENVS[key]


def _run_episodes(
    models: dict[str, tuple[str, bytes]], robot: str, task: str, seed: int, max_steps: int
) -> dict[str, bool]:
    """In a worker: each model (role -> (sha256, onnx)) runs one episode of ``task`` variation ``seed``."""
    from lifelong_ros.sim.rollout import successes

    env = _env(robot, task, max_steps)
    out: dict[str, bool] = {}
    for role, (sha, onnx) in models.items():
        out[role] = successes(_runtime(sha, onnx), env, [seed])[0]
    return out


def _warm(robot: str, task: str | None, max_steps: int) -> int:
    """Import the simulator (and build ``task``'s environment) in a worker before the first gate."""
    from lifelong_ros.sim.backends import backend

    if task is not None:
        _env(robot, task, max_steps)
    else:
        backend(robot).available_tasks()  # imports the simulator
    return os.getpid()


# ------------------------------------------------------------------ caller side
class RolloutPool:
    """Paired episodes in worker processes: ``submit({"candidate": onnx, "active": onnx}, task, seed)``
    returns a Future of ``{"candidate": success, "active": success}``.

    ``workers``: default ``default_workers()``; ``niceness``: added to each worker's nice value;
    ``max_steps``: episode length cap (an episode ends at the first success; the G1's tasks have
    shorter episodes of their own); ``robot``: the simulator (``sim.backends.BACKENDS``).
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        max_steps: int = 500,
        niceness: int = DEFAULT_NICENESS,
        robot: str = "metaworld",
    ):
        from lifelong_ros.sim.backends import backend

        backend(robot)  # ValueError naming the robots for an unknown one, before any worker starts
        if workers is None:
            workers = default_workers()
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"rollout workers={workers!r}: expected an integer >= 1")
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or not 1 <= max_steps <= 500:
            raise ValueError(f"rollout max_steps={max_steps!r}: expected an integer in [1, 500]")
        if isinstance(niceness, bool) or not isinstance(niceness, int) or not 0 <= niceness <= 19:
            raise ValueError(f"rollout niceness={niceness!r}: expected an integer in [0, 19]")
        self.workers = workers
        self.max_steps = max_steps
        self.niceness = niceness
        self.robot = robot
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str, int], bool] = {}
        self.episodes_run = 0
        self.episodes_cached = 0

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                # spawn: the caller may hold onnxruntime/torch threads that a fork would copy half-alive
                self._executor = ProcessPoolExecutor(
                    self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_worker,
                    initargs=(self.niceness,),
                )
            return self._executor

    def warm(self, tasks: list[str] | None = None) -> list[Future[int]]:
        """Start the workers (and build environments for ``tasks``) now, so the first gate does not wait."""
        pool = self._pool()
        names: list[str | None] = [*tasks] if tasks else [None]
        return [
            pool.submit(_warm, self.robot, names[i % len(names)], self.max_steps)
            for i in range(max(self.workers, len(names)))
        ]

    def submit(self, models: Mapping[str, bytes], task: str, seed: int) -> Future[dict[str, bool]]:
        shas = {role: hashlib.sha256(bytes(onnx)).hexdigest() for role, onnx in models.items()}
        known = {role: self._cache[(sha, task, seed)] for role, sha in shas.items() if (sha, task, seed) in self._cache}
        self.episodes_cached += len(known)
        todo = {role: (shas[role], bytes(models[role])) for role in models if role not in known}
        result: Future[dict[str, bool]] = Future()
        if not todo:
            result.set_result(known)
            return result
        inner = self._pool().submit(_run_episodes, todo, self.robot, task, int(seed), self.max_steps)

        def done(f: Future[dict[str, bool]]) -> None:
            if f.cancelled():
                result.set_exception(CancelledError(f"episode of {task!r} seed {seed} cancelled"))
                return
            exc = f.exception()
            if exc is not None:
                result.set_exception(exc)
                return
            got = f.result()
            with self._lock:
                for role, ok in got.items():
                    self._cache[(shas[role], task, seed)] = ok
                self.episodes_run += len(got)
            result.set_result({**known, **got})

        result.set_running_or_notify_cancel()
        inner.add_done_callback(done)
        result.inner = inner  # type: ignore[attr-defined]  # so cancel() can reach the queued job
        return result

    @staticmethod
    def cancel(future: Future[Any]) -> bool:
        """Cancel a submitted job if it has not started yet."""
        inner = getattr(future, "inner", None)
        return bool(inner.cancel()) if inner is not None else False

    def close(self) -> None:
        with self._lock:
            ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> RolloutPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
