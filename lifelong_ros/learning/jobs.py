"""What an adaptation job is: the request the learner worker runs, and the candidate it returns.

Plain data, free of torch, so the front ends (demo, offline learning, the learner node) build and
check requests without importing training code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

ProgressFn = Callable[[str, int, float], None]  # (phase, step, loss)


@dataclass
class AdaptRequest:
    """What to learn: a task from the experience store, with which recipe and budget."""

    task: str
    store_path: str
    method: str = "ewc_replay"  # a recipe name from lifelong_ros.learning.recipes.RECIPES
    shots: int = 0  # demonstrations of the new task to use; 0 = all in the store
    steps: int = 1500  # optimiser steps for the whole recipe
    seed: int = 0
    parent_dir: str | None = None  # directory of the parent version (weights + meta), None = from scratch
    out_dir: str = ""  # where the candidate files are written (created, must not exist)
    options: dict[str, Any] = field(default_factory=dict)  # recipe-specific knobs (lr, ewc_lambda, ...)
    job_id: str = ""  # stable id: a resubmitted job with the same id resumes from its checkpoint


@dataclass
class Candidate:
    """A trained model ready for the safety gate: files in ``out_dir`` plus its metadata."""

    out_dir: str
    onnx_path: str
    weights_path: str
    metadata: dict[str, Any]


class AdaptCancelled(Exception):
    """The job was cancelled before it produced a candidate."""


class AdaptError(RuntimeError):
    """The job failed in the worker; the message carries the worker's traceback."""


JobFn = Callable[[AdaptRequest, ProgressFn, Callable[[], bool]], Candidate]
"""What the worker runs per request: ``job(request, on_progress, should_stop) -> Candidate``.

A module-level function, or its ``"module:function"`` name: the worker process is spawned and
imports it there, so a caller that names it never imports training code (torch) itself."""

ADAPT_JOB = "lifelong_ros.learning.recipes:run_request"  # the adaptation recipes (learning/recipes.py)


def resolve_job(job: JobFn | str) -> JobFn:
    """The function a ``"module:function"`` name refers to (a callable is returned as is)."""
    if callable(job):
        return job
    module, _, name = str(job).partition(":")
    if not module or not name:
        raise ValueError(f"job {job!r}: expected a callable or 'package.module:function'")
    import importlib

    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise ValueError(f"job {job!r}: {module} has no function {name!r}")
    return fn
