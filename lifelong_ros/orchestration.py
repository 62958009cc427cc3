"""Adapt -> register -> gate -> promote: the one path from new demonstrations to a served model.

Every front end takes it: the standalone demo and offline learning run all of it in one process
(``Orchestrator``); the ROS learner node builds requests and registers candidates with these
functions, the safety monitor node and ``lifelong-ros gate`` gate and promote with them. So a
candidate is trained, recorded and judged the same way, on the same ground truth, whoever asked.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifelong_ros import paths
from lifelong_ros.experience.sources import GROUND_TRUTH_SOURCES
from lifelong_ros.experience.store import ExperienceStore
from lifelong_ros.learning.jobs import RECIPES, AdaptRequest, Candidate, ModelPrior, ProgressFn
from lifelong_ros.learning.strategies import STRATEGIES
from lifelong_ros.learning.worker import AdaptJob, Learner
from lifelong_ros.safety.gate import EpisodeRunner, GateReport, RegressionSuite, SafetyGate, suites_from_store
from lifelong_ros.safety.registry import ModelRegistry, Swappable, Transition
from lifelong_ros.sim.backends import SimBackend

# Metadata keys of a learner candidate that the registry records in their own fields.
_RECORDED_KEYS = ("tasks", "method", "parent", "config", "data_range", "metrics", "target_task", "onnx_sha256")


@dataclass(frozen=True)
class RetryPolicy:
    """How an adaptation the gate rejected is tried again: a bounded number of times, each attempt
    with a stronger recipe than the one before.

    Attempt k (0 = as requested) trains ``step_factor**k`` times the steps, with ``ewc_factor**k``
    times the EWC penalty (recipes that have one), task-balanced replay (recipes that replay; only
    while the parent knows at most ``balanced_max_tasks`` tasks: balanced replay gives every earlier
    task a new-task batch, so a 45-task base would make each step 46 batches; beyond that the
    requested replay ratio stays) and a new seed. A regression on an earlier task calls for stronger
    consolidation; a target task that fell short of its success floor, for more steps.
    """

    retries: int = 2
    step_factor: float = 1.5
    ewc_factor: float = 4.0
    balanced_replay: bool = True
    balanced_max_tasks: int = 10

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries={self.retries!r}: expected an integer >= 0")
        for name in ("step_factor", "ewc_factor"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 1 <= v <= 100:
                raise ValueError(f"{name}={v!r}: expected a number in [1, 100]")

    def attempt(
        self, k: int, method: str, steps: int, options: Mapping[str, Any] | None, seed: int, known_tasks: int = 0
    ) -> tuple[int, dict[str, Any], int]:
        """(steps, options, seed) of attempt ``k`` of an adaptation requested with these, from a parent
        that serves ``known_tasks`` tasks."""
        opts = dict(options or {})
        if k == 0:
            return steps, opts, seed
        recipe = RECIPES.get(method)
        fields = set(STRATEGIES[recipe.strategy].options.field_names()) if recipe else set()
        if "ewc_lambda" in fields:
            defaults = dataclasses.asdict(STRATEGIES[recipe.strategy].options()) if recipe else {}
            base = float(opts.get("ewc_lambda", defaults.get("ewc_lambda", 1.0)))
            opts["ewc_lambda"] = base * self.ewc_factor**k
        if "replay_ratio" in fields and self.balanced_replay and known_tasks <= self.balanced_max_tasks:
            opts["replay_ratio"] = "balanced"
        return max(1, round(steps * self.step_factor**k)), opts, seed + 1000 * k


def new_request(
    registry: ModelRegistry,
    task: str,
    *,
    store_path: str | Path,
    work_dir: str | Path,
    method: str,
    steps: int,
    shots: int = 0,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    job_id: str | None = None,
    prior: ModelPrior | None = None,
) -> AdaptRequest:
    """A request to learn ``task`` from the store, starting from the active version (or from scratch).

    The request checks its method and options when it is built, before any work starts.
    ``prior``: what the robot tells a model started from scratch (ModelPrior); a parent keeps its own.
    """
    parent = registry.active()
    job_id = job_id or f"{task}-{uuid.uuid4().hex[:8]}"
    return AdaptRequest(
        task=task,
        store_path=str(store_path),
        method=method,
        shots=shots,
        steps=steps,
        seed=seed,
        parent_dir=str(registry.info(parent).path) if parent else None,
        out_dir=str(Path(work_dir) / job_id),
        options=dict(options or {}),
        job_id=job_id,
        prior=prior if parent is None else None,
    )


def robot_prior(robot: SimBackend | None) -> ModelPrior | None:
    """What ``robot``'s simulator backend tells a model trained from scratch; None without one."""
    fields = robot.model_prior() if robot else None
    return ModelPrior(**fields) if fields else None


def register_candidate(registry: ModelRegistry, candidate: Candidate, parent: str | None = None) -> str:
    """Record a learner candidate (ONNX + weights + consolidation state + meta.json) as a new version.

    ``parent``: the version the candidate was trained from (default: the one its metadata names).
    The registry keeps the learner's ``config`` (with ``policy``), so the version directory can be
    the parent of the next adaptation.
    """
    meta = dict(candidate.metadata)
    if not meta.get("tasks"):
        raise ValueError(f"candidate in {candidate.out_dir} has no 'tasks' in its metadata; expected the head order")
    weights = Path(candidate.weights_path).read_bytes() if candidate.weights_path else None
    extra = {k: v for k, v in meta.items() if k not in _RECORDED_KEYS}
    consolidation = Path(candidate.out_dir) / paths.CONSOLIDATION_FILE
    return registry.register(
        candidate.onnx_path,
        tasks=list(meta["tasks"]),
        method=str(meta.get("method") or "unknown"),
        files={paths.CONSOLIDATION_FILE: consolidation} if consolidation.exists() else None,
        parent=parent if parent is not None else meta.get("parent"),
        weights=weights,
        config=meta.get("config") or {},
        data_range=meta.get("data_range") or {},
        metrics=meta.get("metrics") or {},
        target_task=meta.get("target_task"),
        extra={**extra, "learner_out_dir": str(candidate.out_dir)},
    )


def gate_suites(
    registry: ModelRegistry,
    store_path: str | Path,
    version: str,
    sources: Sequence[str] = GROUND_TRUTH_SOURCES,
) -> dict[str, RegressionSuite]:
    """The held-out regression suites ``version`` is judged on.

    Every task the candidate or the active version serves that the store holds: the held-out
    episodes of the ground-truth sources (never the policy's own actions).
    """
    tasks = list(registry.info(version).tasks)
    active = registry.active()
    if active and active != version:
        tasks += [t for t in registry.info(active).tasks if t not in tasks]
    with ExperienceStore(store_path, readonly=True) as store:
        present = set(store.tasks())
        return suites_from_store(store, [t for t in tasks if t in present], sources)


def gate_version(
    registry: ModelRegistry,
    gate: SafetyGate,
    store_path: str | Path,
    version: str,
    *,
    target_task: str | None = None,
    episodes: EpisodeRunner | None = None,
    sources: Sequence[str] = GROUND_TRUTH_SOURCES,
    decide: bool = True,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> GateReport:
    """Run the safety gate on ``version`` against the active version; ``decide`` records the verdict.

    ``episodes``: a simulator's episode runner (sim.pool.RolloutPool) for the closed-loop test.
    ``should_stop``: polled during the evaluation; True stops it (GateCancelled, nothing recorded).
    """
    suites = gate_suites(registry, store_path, version, sources)
    return gate.evaluate(
        version, suites, target_task, episodes=episodes, decide=decide, progress=progress, should_stop=should_stop
    )


def promote(registry: ModelRegistry, version: str, runtime: Swappable | None = None, reason: str = "") -> Transition:
    """Make an approved ``version`` active; with ``runtime``, hot-swap it in (sha256-checked) first."""
    return registry.promote(version, runtime=runtime, reason=reason)


@dataclass
class Update:
    """What one adapt -> register -> gate -> promote pass did."""

    task: str
    parent: str | None
    version: str
    candidate: Candidate
    decision: str  # approved | rejected | pending_shadow | candidate (not gated) | ungated (approved unchecked)
    report: GateReport | None
    promoted: bool
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def approved(self) -> bool:
        return self.decision in ("approved", "ungated")

    @property
    def reason(self) -> str:
        return self.report.reason() if self.report is not None else ""

    @property
    def failed_checks(self) -> list[str]:
        return list(self.report.failed) if self.report is not None else []


class Orchestrator:
    """The whole loop in one process, over one data directory: used by the demo and offline learning.

    ``gate=None`` registers candidates without gating them (they stay candidates, to be gated
    later); with ``approve_ungated`` too, every candidate is approved unchecked instead, and its
    decision says so (baseline runs only: what the robot would serve without a gate).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        store_path: str | Path,
        learner: Learner,
        gate: SafetyGate | None,
        *,
        work_dir: str | Path,
        episodes: EpisodeRunner | None = None,
        sources: Sequence[str] = GROUND_TRUTH_SOURCES,
        approve_ungated: bool = False,
        prior: ModelPrior | None = None,
    ):
        self.registry = registry
        self.store_path = Path(store_path)
        self.learner = learner
        self.gate = gate
        self.work_dir = Path(work_dir)
        self.episodes = episodes
        self.sources = tuple(sources)
        self.approve_ungated = approve_ungated
        self.prior = prior  # what the robot tells a first model (new_request)

    def submit(
        self,
        task: str,
        *,
        method: str,
        steps: int,
        shots: int = 0,
        seed: int = 0,
        options: Mapping[str, Any] | None = None,
        job_id: str | None = None,
        on_progress: ProgressFn | None = None,
    ) -> AdaptJob:
        """Start adapting to ``task`` in the learner's worker process; returns at once."""
        request = new_request(
            self.registry,
            task,
            store_path=self.store_path,
            work_dir=self.work_dir,
            method=method,
            steps=steps,
            shots=shots,
            seed=seed,
            options=options,
            job_id=job_id,
            prior=self.prior,
        )
        return self.learner.submit(request, on_progress)

    def finish(
        self,
        job: AdaptJob,
        *,
        activate: bool = True,
        runtime: Swappable | None = None,
        progress: bool = False,
    ) -> Update:
        """Wait for ``job``'s candidate, register it, gate it and (``activate``) promote it if approved.

        With ``runtime`` the promotion hot-swaps the serving runtime to the new version.
        """
        candidate = job.result()
        parent = Path(job.request.parent_dir).name if job.request.parent_dir else None
        version = register_candidate(self.registry, candidate, parent=parent)
        t0 = time.perf_counter()
        report: GateReport | None = None
        if self.gate is not None:
            report = gate_version(
                self.registry,
                self.gate,
                self.store_path,
                version,
                target_task=job.request.task,
                episodes=self.episodes,
                sources=self.sources,
                progress=progress,
            )
            decision = report.decision
        elif self.approve_ungated:
            self.registry.set_decision(version, "approved", reason="gate disabled (baseline run)")
            decision = "ungated"
        else:
            decision = "candidate"
        timings = {"gate": time.perf_counter() - t0}
        promoted = False
        if activate and decision in ("approved", "ungated"):
            t1 = time.perf_counter()
            promote(self.registry, version, runtime, reason=f"{decision}: {report.reason() if report else 'no gate'}")
            timings["swap"] = time.perf_counter() - t1
            promoted = True
        return Update(job.request.task, parent, version, candidate, decision, report, promoted, timings)
