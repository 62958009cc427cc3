"""Offline learning from rosbag2 bags: import a robot's bag, adapt, register the candidate, gate it.

Bags recorded on a robot feed learning on any machine, with no live robot and no ROS installed:
the same spec, store, learner worker, registry and safety gate the ROS nodes use, in one call
(`lifelong-ros offline-learn`, or `ros2 run lifelong_ros offline_learn` on a ROS machine).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .fsutil import default_data_dir
from .learner import CONSOLIDATION_FILE, AdaptCancelled, AdaptRequest, Candidate, Learner
from .registry import ModelRegistry
from .registry_cli import registry_dir, store_path

DEFAULT_SPEC = "spec_metaworld.yaml"
SUITE_SOURCES = ("demonstration", "correction", "bag")  # ground truth for the gate's regression suites


def register_candidate(registry: ModelRegistry, candidate: Candidate, parent: str | None = None) -> str:
    """Store a learner candidate (ONNX + weights + meta.json) in the registry as a new candidate version.

    ``parent``: the version the candidate was trained from (default: the one its metadata names).
    The registry's meta.json keeps the learner's ``config`` (with ``policy``), so the version
    directory can be the parent of the next adaptation.
    """
    meta = dict(candidate.metadata)
    if not meta.get("tasks"):
        raise ValueError(f"candidate in {candidate.out_dir} has no 'tasks' in its metadata; expected the head order")
    weights = Path(candidate.weights_path).read_bytes() if candidate.weights_path else None
    extra = {k: v for k, v in meta.items()
             if k not in ("tasks", "method", "parent", "config", "data_range", "metrics", "target_task", "onnx_sha256")}
    consolidation = Path(candidate.out_dir) / CONSOLIDATION_FILE
    return registry.register(
        candidate.onnx_path, tasks=list(meta["tasks"]), method=str(meta.get("method") or "unknown"),
        files={CONSOLIDATION_FILE: consolidation} if consolidation.exists() else None,
        parent=parent if parent is not None else meta.get("parent"), weights=weights,
        config=meta.get("config") or {}, data_range=meta.get("data_range") or {},
        metrics=meta.get("metrics") or {}, target_task=meta.get("target_task"),
        extra={**extra, "learner_out_dir": str(candidate.out_dir)},
    )


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
    metrics: dict = field(default_factory=dict)
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
    progress: bool = True,
    on_progress: Callable[[str, int, float], None] | None = None,
) -> OfflineResult:
    """Import ``bags`` into the store under ``data_dir`` (as ``task``/``source``), adapt to ``task``
    from the active version (or from scratch), register the candidate and, with ``gate``, run the
    safety gate on it; ``activate`` promotes an approved candidate.

    Each bag is one episode (named after the bag) unless it carries the /lifelong_ros/experience
    topic that `lifelong-ros export-bag` writes; the held-out split is by episode, so the gate
    needs several. All bags import in one transaction: a truncated or corrupt bag imports nothing.
    The store must not be open for writing elsewhere (stop the experience_buffer node first).
    """
    from .bag import import_bag
    from .spec import load_spec
    from .store import ExperienceStore

    t0 = time.perf_counter()
    if not task:
        raise ValueError("task is empty; expected the name of the task the bag demonstrates, e.g. 'reach-v3'")
    if steps < 1:
        raise ValueError(f"steps={steps}: expected at least 1 optimiser step")
    data = Path(data_dir).expanduser() if data_dir else default_data_dir()
    spec_path = Path(spec)
    if not spec_path.is_absolute() and not spec_path.exists():
        from .config import PACKAGE_ROOT

        spec_path = Path(config_dir) / spec_path if config_dir else PACKAGE_ROOT / "config" / spec_path
    the_spec = load_spec(spec_path)
    spath = store_path(data)
    bag_list = [Path(b) for b in ([bags] if isinstance(bags, (str, Path)) else bags)]
    if not bag_list:
        raise ValueError("no bag given; expected at least one rosbag2 bag")
    names = [b.name for b in bag_list]
    if len(set(names)) != len(names):
        raise ValueError(f"bag names must be distinct (each bag becomes the episode of that name), got {names}")
    with ExperienceStore(spath, the_spec.obs_dim, the_spec.act_dim) as store:
        with store.transaction():
            reports = [import_bag(b, store, the_spec, task=task, source=source, time_source=time_source, progress=progress)
                       for b in bag_list]
    result = OfflineResult(bags=[str(b) for b in bag_list], task=task, imported_steps=sum(r.steps for r in reports),
                           import_summary="\n".join(r.summary() for r in reports))

    registry = ModelRegistry(registry_dir(data))
    parent = registry.active()
    job_id = f"offline-{task}-{uuid.uuid4().hex[:8]}"
    request = AdaptRequest(task=task, store_path=str(spath), method=method, shots=shots, steps=steps, seed=seed,
                           parent_dir=str(registry.info(parent).path) if parent else None,
                           out_dir=str(data / "learner" / job_id), job_id=job_id)
    bar = _Progress(steps, progress, on_progress)
    with Learner(threads=threads) as learner:
        try:
            candidate = learner.submit(request, on_progress=bar).result()
        finally:
            bar.close()
    version = register_candidate(registry, candidate, parent=parent)
    result.candidate_version = version
    result.metrics = dict(registry.info(version).metrics)
    if gate:
        from .gate import GateConfig, SafetyGate, suites_from_store

        info = registry.info(version)
        with ExperienceStore(spath, readonly=True) as store:
            present = set(store.tasks())
            # Bags imported to learn from are ground truth, like demonstrations.
            suites = suites_from_store(store, [t for t in info.tasks if t in present], SUITE_SOURCES)
        rep = SafetyGate(registry, GateConfig.from_dict(gate_config or {})).evaluate(version, suites, progress=progress)
        result.decision, result.reason = rep.decision, rep.reason()
        if activate and rep.decision == "approved":
            registry.promote(version, reason="offline-learn --activate")
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


# --------------------------------------------------------------------------------------------- CLI
def _defaults_from_config(path: str | None) -> dict[str, Any]:
    """Shared keys, the learner's and the safety monitor's sections of the params file (CLI flags win)."""
    from .config import default_config_path, load_params

    try:
        cfg = Path(path) if path else default_config_path()
    except FileNotFoundError:
        return {}
    params = load_params(cfg)

    def node(name: str) -> dict:  # sections may be keyed `name`, `/name` or `/**/name` (any namespace)
        return params.get(name) or params.get(f"**/{name}") or params["/**"]

    learner, monitor = node("learner"), node("safety_monitor")
    return {
        "config_dir": str(Path(learner.get("config_dir") or cfg.parent)),
        "data_dir": learner.get("data_dir") or None,
        "spec": learner.get("spec", DEFAULT_SPEC),
        "method": learner.get("default_method", "ewc_replay"),
        "steps": int(learner.get("default_steps", 1500)),
        "seed": int(learner.get("seed", 0)),
        "threads": int(learner.get("threads", 1)),
        "gate_config": {k[len("gate."):]: v for k, v in monitor.items() if k.startswith("gate.")},
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bag", required=True, nargs="+", dest="bags", metavar="BAG",
                   help="rosbag2 bag(s) to learn from (directory, .mcap or .db3); each bag is one episode")
    p.add_argument("--task", required=True, help="task the bag demonstrates (the task to learn), e.g. reach-v3")
    p.add_argument("--config", help="ROS 2 params file with the defaults (default: config/lifelong.yaml)")
    p.add_argument("--data-dir", help="store + registry directory (default: the config's data_dir, else "
                                      "$LIFELONG_ROS_DATA or ~/.local/share/lifelong_ros)")
    p.add_argument("--spec", help="observation/action spec YAML (default: the config's spec)")
    p.add_argument("--source", default="bag", choices=["bag", "demonstration", "correction"],
                   help="source tag of the imported records (default: bag)")
    p.add_argument("--time-source", default="log", choices=["log", "header"],
                   help="align streams on the bag's receive time or on header stamps")
    p.add_argument("--method", help="adaptation recipe (default: the learner's default_method)")
    p.add_argument("--shots", type=int, default=0, help="demonstration episodes to use; 0 = all")
    p.add_argument("--steps", type=int, help="optimiser steps (default: the learner's default_steps)")
    p.add_argument("--seed", type=int, help="seed (default: the learner's seed)")
    p.add_argument("--no-gate", action="store_true", help="register the candidate without running the safety gate")
    p.add_argument("--activate", action="store_true", help="make the candidate active if the gate approves it")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    d = _defaults_from_config(args.config)
    try:
        result = offline_learn(
            args.bags, args.task, data_dir=args.data_dir or d.get("data_dir"), spec=args.spec or d.get("spec", DEFAULT_SPEC),
            config_dir=d.get("config_dir"), source=args.source, time_source=args.time_source,
            method=args.method or d.get("method", "ewc_replay"), shots=args.shots,
            steps=args.steps if args.steps is not None else d.get("steps", 1500),
            seed=args.seed if args.seed is not None else d.get("seed", 0), threads=d.get("threads", 1),
            gate=not args.no_gate, activate=args.activate, gate_config=d.get("gate_config"), progress=not args.quiet,
        )
    except (AdaptCancelled, KeyboardInterrupt):
        print("offline-learn: cancelled; nothing was registered", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line for the operator, exit code 2
        print(f"offline-learn: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict(), indent=2))
    return 0 if result.decision in ("", "approved", "pending_shadow") else 1


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser("offline-learn", help="learn a task from a rosbag2 bag: import, adapt, register, gate",
                              description=__doc__.splitlines()[0])
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="offline_learn", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
