"""The learner component: adaptation jobs run in a separate, long-lived worker process.

Learning must never steal the policy server's latency, so training happens in another
process with a bounded thread count and a lower scheduling priority; the caller gets progress
events (phase, step, loss), can cancel, and receives a candidate (ONNX + weights + metadata).
The worker stays up between jobs so each adaptation does not pay torch's import again.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import traceback
from typing import Any

from lifelong_ros.learning.jobs import (
    ADAPT_JOB,
    AdaptCancelled,
    AdaptError,
    AdaptRequest,
    Candidate,
    JobFn,
    ProgressFn,
    resolve_job,
)

log = logging.getLogger(__name__)


def _worker_main(
    job: JobFn | str, jobs: mp.Queue, events: mp.Queue, cancel_flags: Any, threads: int, nice: int
) -> None:
    """Worker loop: take jobs, run them, report progress/results. Runs in the child process."""
    # The parent owns this process's lifetime: a Ctrl-C reaches the whole process group, and the
    # parent then cancels the job and closes the worker (no KeyboardInterrupt traceback here).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if nice:
        try:
            os.nice(nice)
        except OSError:
            pass
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    # The first optimiser imports torch._dynamo (~4 s): pay it now.
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    job_fn = resolve_job(job)
    while True:
        try:
            item = jobs.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the parent died without closing us: never linger as an orphan
                return
            continue
        if item is None:
            return
        slot, request = item
        cancel_flags[slot] = 0

        def on_progress(phase: str, step: int, loss: float, _slot=slot) -> None:
            events.put((_slot, "progress", (phase, int(step), float(loss))))

        def should_stop(_slot=slot) -> bool:
            return bool(cancel_flags[_slot]) or os.getppid() != parent

        try:
            candidate = job_fn(request, on_progress, should_stop)
            events.put((slot, "result", candidate))
        except AdaptCancelled:
            events.put((slot, "cancelled", None))
        except BaseException:  # noqa: BLE001 - report everything; the worker stays alive for the next job
            events.put((slot, "error", traceback.format_exc()))


class AdaptJob:
    """Handle on one submitted adaptation: progress callback, cancel(), result()."""

    def __init__(self, learner: Learner, slot: int, request: AdaptRequest, on_progress: ProgressFn | None):
        self._learner = learner
        self.slot = slot
        self.request = request
        self.on_progress = on_progress
        self.progress: list[tuple[str, int, float]] = []
        self._done = threading.Event()
        self._outcome: tuple[str, Any] | None = None

    def cancel(self) -> None:
        self._learner._cancel_flags[self.slot] = 1

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> Candidate:
        if not self._done.wait(timeout):
            raise TimeoutError(f"adaptation job {self.request.job_id} still running after {timeout} s")
        assert self._outcome is not None  # _finish sets it before it sets _done
        kind, payload = self._outcome
        if kind == "result":
            return payload
        if kind == "cancelled":
            raise AdaptCancelled(f"adaptation of {self.request.task!r} was cancelled")
        raise AdaptError(f"adaptation of {self.request.task!r} failed in the worker:\n{payload}")

    def _finish(self, kind: str, payload: Any) -> None:
        self._outcome = (kind, payload)
        self._done.set()


class Learner:
    """Owns the worker process. ``submit()`` queues a request; requests run one at a time, in order.

    ``job``: what the worker runs per request (default: the adaptation recipes), a module-level
    function or its ``"module:function"`` name (imported in the worker only).
    """

    MAX_SLOTS = 64

    def __init__(self, job: JobFn | str = ADAPT_JOB, threads: int = 1, nice: int = 5):
        ctx = mp.get_context("spawn")  # never fork a process that holds torch/onnxruntime threads
        self._jobs = ctx.Queue()
        self._events = ctx.Queue()
        self._cancel_flags = ctx.Array("b", self.MAX_SLOTS, lock=False)
        self._proc = ctx.Process(
            target=_worker_main,
            args=(job, self._jobs, self._events, self._cancel_flags, threads, nice),
            name="lifelong-learner",
            daemon=True,
        )
        self._proc.start()
        self._pending: dict[int, AdaptJob] = {}
        self._slots = itertools.cycle(range(self.MAX_SLOTS))
        self._lock = threading.Lock()
        self._closed = False
        self._listener = threading.Thread(target=self._listen, name="learner-events", daemon=True)
        self._listener.start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.is_alive()

    def submit(self, request: AdaptRequest, on_progress: ProgressFn | None = None) -> AdaptJob:
        if self._closed:
            raise RuntimeError("learner is closed")
        if not self._proc.is_alive():
            raise AdaptError(f"learner worker (pid {self._proc.pid}) is not running (exit code {self._proc.exitcode})")
        with self._lock:
            slot = next(self._slots)
            if slot in self._pending:
                raise RuntimeError(f"more than {self.MAX_SLOTS} adaptation jobs in flight")
            job = AdaptJob(self, slot, request, on_progress)
            self._pending[slot] = job
        self._jobs.put((slot, request))
        return job

    def _listen(self) -> None:
        while True:
            try:
                slot, kind, payload = self._events.get(timeout=0.2)
            except queue.Empty:
                if not self._proc.is_alive():
                    self._fail_pending(f"learner worker died (exit code {self._proc.exitcode})")
                    if self._closed:
                        return
                continue
            except (EOFError, OSError):
                return
            job = self._pending.get(slot)
            if job is None:
                continue
            if kind == "progress":
                job.progress.append(payload)
                if job.on_progress is not None:
                    try:
                        job.on_progress(*payload)
                    except Exception:  # a broken callback must not stop result delivery
                        log.exception("progress callback of job %s failed", job.request.job_id)
            else:
                with self._lock:
                    self._pending.pop(slot, None)
                job._finish(kind, payload)

    def _fail_pending(self, why: str) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for job in pending.values():
            job._finish("error", why)

    def close(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._jobs.put(None)
        except (ValueError, OSError):
            pass
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._fail_pending("learner closed")

    def __enter__(self) -> Learner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
