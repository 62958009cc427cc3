"""Offline learning from rosbag2 bags: import a robot's bag, adapt, register the candidate, gate it.

Bags recorded on a robot feed learning on any machine, with no live robot and no ROS installed:
the same spec, store, learner worker, registry and safety gate the ROS nodes use, in one call
(`lifelong-ros offline-learn`, or `ros2 run lifelong_ros offline_learn` on a ROS machine).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lifelong_ros import paths
from lifelong_ros.config import check_value
from lifelong_ros.experience.sources import TEACHER_SOURCES
from lifelong_ros.learning.jobs import parse_recipe_options
from lifelong_ros.learning.worker import Learner
from lifelong_ros.orchestration import Orchestrator
from lifelong_ros.safety.gate import GateConfig, SafetyGate
from lifelong_ros.safety.registry import ModelRegistry

DEFAULT_SPEC = "spec_metaworld.yaml"


@dataclass
class OfflineResult:
    """What one offline run did; printed as JSON by the CLI."""

    bags: list[str]
    task: str
    imported_steps: int
    import_summary: str
    candidate_version: str = ""
    decision: str = ""  # approved | rejected | pending_shadow | "" (not gated)
    reason: str = ""
    active_version: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def offline_learn(
    bags: str | Path | list[str | Path],
    task: str,
    *,
    data_dir: str | Path | None = None,
    spec: str | Path = DEFAULT_SPEC,
    config_dir: str | Path | None = None,
    source: str = "bag",
    time_source: str = "log",
    method: str = "ewc_replay",
    shots: int = 0,
    steps: int = 1500,
    seed: int = 0,
    threads: int = 1,
    gate: bool = True,
    activate: bool = False,
    gate_config: dict | None = None,
    reimport: bool = False,
    progress: bool = True,
    on_progress: Callable[[str, int, float], None] | None = None,
) -> OfflineResult:
    """Import ``bags`` into the store under ``data_dir`` (as ``task``/``source``), adapt to ``task``
    from the active version (or from scratch), register the candidate and, with ``gate``, run the
    safety gate on it; ``activate`` promotes an approved candidate.

    Each bag is one episode (named after the bag) unless it carries the /lifelong_ros/experience
    topic that `lifelong-ros export-bag` writes; the held-out split is by episode, so the gate
    needs several. All bags import in one transaction: a truncated or corrupt bag imports nothing.
    A bag the store already holds (same content hash) is not imported again unless ``reimport``,
    so retrying after a failed or rejected run trains on the same data, not on a duplicate.
    The store must not be open for writing elsewhere (stop the experience_buffer node first).
    """
    from lifelong_ros.experience.store import ExperienceStore
    from lifelong_ros.ros_io.bag import import_bag
    from lifelong_ros.ros_io.spec import load_spec

    t0 = time.perf_counter()
    if not task:
        raise ValueError("task is empty; expected the name of the task the bag demonstrates, e.g. 'reach-v3'")
    # Everything is checked before anything is imported, trained or registered.
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}: expected at least 1 optimiser step (an integer)")
    check_value("shots", shots, int, min=0)
    check_value("seed", seed, int, min=0)
    check_value("threads", threads, int, min=1)
    if source not in TEACHER_SOURCES:
        raise ValueError(f"source={source!r}: expected one of {', '.join(TEACHER_SOURCES)}")
    if time_source not in ("log", "header"):
        raise ValueError(f"time_source={time_source!r}: expected 'log' or 'header'")
    parse_recipe_options(method)  # an unknown method fails before anything is imported
    gate_cfg = GateConfig.from_dict(gate_config or {}) if gate else None
    data = paths.data_dir(data_dir)
    the_spec = load_spec(paths.resolve_config_file(spec, config_dir))
    spath = paths.store_path(data)
    bag_list = [Path(b) for b in ([bags] if isinstance(bags, (str, Path)) else bags)]
    if not bag_list:
        raise ValueError("no bag given; expected at least one rosbag2 bag")
    names = [b.name for b in bag_list]
    if len(set(names)) != len(names):
        raise ValueError(f"bag names must be distinct (each bag becomes the episode of that name), got {names}")
    for b in bag_list:
        if not b.exists():
            raise FileNotFoundError(f"bag {b} does not exist; expected a rosbag2 directory, .mcap or .db3 file")
    with ExperienceStore(spath, the_spec.obs_dim, the_spec.act_dim) as store, store.transaction():
        reports = [
            import_bag(
                b, store, the_spec, task=task, source=source, time_source=time_source, progress=progress, again=reimport
            )
            for b in bag_list
        ]
    result = OfflineResult(
        bags=[str(b) for b in bag_list],
        task=task,
        imported_steps=sum(r.steps for r in reports),
        import_summary="\n".join(r.summary() for r in reports),
    )

    registry = ModelRegistry(paths.registry_dir(data))
    bar = _Progress(steps, progress, on_progress)
    with Learner(threads=threads) as learner:
        orchestrator = Orchestrator(
            registry,
            spath,
            learner,
            SafetyGate(registry, gate_cfg) if gate_cfg is not None else None,
            work_dir=paths.learner_dir(data),
        )
        try:
            job = orchestrator.submit(
                task,
                method=method,
                steps=steps,
                shots=shots,
                seed=seed,
                job_id=f"offline-{task}-{uuid.uuid4().hex[:8]}",
                on_progress=bar,
            )
            job.result()
        finally:
            bar.close()
        update = orchestrator.finish(job, activate=activate, progress=progress)
    result.candidate_version = update.version
    result.metrics = dict(registry.info(update.version).metrics)
    if gate:
        result.decision, result.reason = update.decision, update.reason
    result.active_version = registry.active() or ""
    result.seconds = time.perf_counter() - t0
    return result


class _Progress:
    """tqdm bar over the learner's (phase, step, loss) events; forwards them to ``on_progress`` too."""

    def __init__(self, total: int, enabled: bool, forward: Callable[[str, int, float], None] | None):
        self._forward = forward
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="adapt", unit="step", leave=False)

    def __call__(self, phase: str, step: int, loss: float) -> None:
        if self._bar is not None:
            self._bar.set_description(f"adapt [{phase}]")
            if step > self._bar.n:
                self._bar.update(step - self._bar.n)
            if not math.isnan(loss):
                self._bar.set_postfix(loss=f"{loss:.4g}")
        if self._forward is not None:
            self._forward(phase, step, loss)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
