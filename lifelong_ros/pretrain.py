"""Pretraining: a base model from many tasks' expert demonstrations, registered as the first version.

Meta-World's ML45 train split (45 tasks with scripted experts; the five ML45 test tasks are never
seen) is demonstrated into the experience store, and one network is trained on all of it: a shared
backbone with one head per task (learning/model.py). That is what the default adaptation recipe
(``meta_ewc_replay``) builds on when a *new* task arrives: MAML over the frozen backbone's features
on the 45 tasks gives the new head its initialisation, a few head-only steps adapt it to the new
demonstrations, and online EWC (the Fisher estimated here, stored as the version's consolidation
state) plus replay of the stored demonstrations keep the 45 tasks while the whole network trains.

Every stage resumes: demonstrations already in the store are not recorded again, training restarts
from its last checkpoint (learner/pretrain-<fingerprint>/), and a finished run whose version is
registered is not trained twice.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lifelong_ros import paths
from lifelong_ros.experience.sources import DEMONSTRATION, TRAIN_SOURCES
from lifelong_ros.experience.store import ExperienceStore, copy_store
from lifelong_ros.fsutil import atomic_write_json
from lifelong_ros.orchestration import promote, register_candidate
from lifelong_ros.safety.registry import ModelRegistry, RegistryError

TRAIN_SEED0, HELDOUT_SEED0, EVAL_SEED0 = 0, 100_000, 200_000  # as the demo: variations never overlap
CONSOLIDATION = "ewc_replay"  # the strategy whose state (online EWC's Fisher) a child adaptation continues
PRETRAIN_METHOD = "pretrain"
# Recipe options for adapting a model that serves the pretraining tasks: four replayed samples of
# them per new-task sample, a gentler step and half the new-task batch keep the 45 tasks and the
# time (K = 5 on ML45's held-out tasks, bench/fewshot_newtask.py, one seed: with the five-task
# defaults success 0.86, pretraining tasks -0.11; with these 0.96 and +0.01, adaptation 59 s median).
BASE_ADAPT_OPTIONS: dict[str, Any] = {"replay_ratio": 0.8, "lr": 3e-4, "batch_size": 128}


def ml45_train_tasks() -> tuple[str, ...]:
    from lifelong_ros.sim.metaworld import benchmark_tasks

    return tuple(benchmark_tasks("ML45", "train"))


def ml45_test_tasks() -> tuple[str, ...]:
    from lifelong_ros.sim.metaworld import benchmark_tasks

    return tuple(benchmark_tasks("ML45", "test"))


@dataclass(frozen=True)
class PretrainSettings:
    """Budget of a pretraining run (the defaults fit in about an hour on 2 cores)."""

    tasks: tuple[str, ...] = ()  # () = ML45's 45 train tasks
    demos: int = 20  # training demonstrations per task
    heldout_demos: int = 2  # held-out demonstrations per task: the gate's regression suites
    steps: int = 20_000  # Adam steps over all tasks' demonstrations
    batch_size: int = 512
    lr: float = 1e-3
    lr_final: float = 1e-5
    hidden: tuple[int, ...] = (256, 256)
    seed: int = 0
    steps_after_success: int = 10
    max_steps: int = 500
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        if self.demos < 1 or self.heldout_demos < 0 or self.steps < 1 or self.batch_size < 1:
            raise ValueError(
                f"need demos >= 1, heldout_demos >= 0, steps >= 1, batch_size >= 1; got {self.demos}, "
                f"{self.heldout_demos}, {self.steps}, {self.batch_size}"
            )
        if not self.lr > 0 or not 0 <= self.lr_final <= self.lr:
            raise ValueError(f"need lr > 0 and 0 <= lr_final <= lr, got lr={self.lr}, lr_final={self.lr_final}")

    @classmethod
    def quick(cls, **kw: Any) -> PretrainSettings:
        """A smoke-sized run: three tasks, two demonstrations each, a few hundred steps."""
        return cls(
            **{
                "tasks": ("reach-v3", "button-press-v3", "drawer-close-v3"),
                "demos": 2,
                "heldout_demos": 1,
                "steps": 300,
                "batch_size": 128,
                "checkpoint_every": 100,
                **kw,
            }
        )

    def task_list(self) -> tuple[str, ...]:
        tasks = self.tasks or ml45_train_tasks()
        held_out = set(ml45_test_tasks()) & set(tasks)
        if held_out:
            raise ValueError(f"{sorted(held_out)} are ML45 test tasks: pretraining never sees them")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks {list(tasks)} name a task twice")
        return tuple(tasks)

    def fingerprint(self) -> str:
        d = asdict(self)
        d["tasks"] = list(self.task_list())
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class PretrainResult:
    version: str
    tasks: list[str]
    demos: dict[str, int]  # training demonstrations per task in the store
    timings_s: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False  # the version was already registered by an earlier run
    success: dict[str, float] = field(default_factory=dict)  # closed-loop success per task, if evaluated

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def record_demonstrations(store: ExperienceStore, task: str, settings: PretrainSettings, progress: bool = False) -> int:
    """The expert's train and held-out demonstrations of ``task`` missing from the store; returns the
    number of training demonstrations the store then holds (failed expert episodes are not stored)."""
    from lifelong_ros.sim.metaworld import MetaWorldSim, collect_demonstrations

    have = {e.episode for e in store.episodes(task)} if task in store.tasks() else set()
    splits: tuple[tuple[Literal["train", "heldout"], int, int], ...] = (
        ("train", TRAIN_SEED0, settings.demos),
        ("heldout", HELDOUT_SEED0, settings.heldout_demos),
    )
    sim = None
    for split, seed0, count in splits:
        seeds = [s for s in range(seed0, seed0 + count) if f"demo-{split}-{s}" not in have]
        if not seeds:
            continue
        sim = sim or MetaWorldSim(task, settings.steps_after_success, settings.max_steps)
        for ep in collect_demonstrations(task, seeds, sim=sim, progress=progress):
            name = f"demo-{split}-{ep.task.seed}"
            store.append_episode(task, name, ep.obs, ep.action, ep.reward, ep.done, source=DEMONSTRATION, split=split)
    if sim is not None:
        sim.close()
    return sum(1 for e in store.episodes(task, split="train") if e.episode.startswith("demo-train-"))


def _registered(registry: ModelRegistry, fingerprint: str) -> str | None:
    for info in registry.list():
        if info.extra.get("pretrain_fingerprint") == fingerprint:
            return info.id
    return None


def pretrain(
    data_dir: str | Path | None = None,
    settings: PretrainSettings | None = None,
    *,
    progress: bool = True,
    eval_episodes: int = 0,
    activate: bool = True,
    threads: int = 1,
    should_stop: Callable[[], bool] | None = None,
) -> PretrainResult:
    """Demonstrate, train, export and register the base model in ``data_dir``'s store and registry.

    ``activate``: promote it when nothing is active yet (the first version of a robot). ``eval_episodes``
    > 0 measures its closed-loop success on that many unseen variations per task (through PolicyRuntime)
    and records it in the version's metrics. ``threads``: torch threads (1 is fastest on a shared machine).
    """
    import torch
    from tqdm import tqdm

    from lifelong_ros.learning.jobs import AdaptCancelled, AdaptRequest
    from lifelong_ros.learning.model import PolicyConfig, PolicyNet, bc_loss
    from lifelong_ros.learning.recipes import NORMALIZER_STD_FLOOR, write_candidate
    from lifelong_ros.learning.strategies import build_plugins
    from lifelong_ros.learning.trainer import ContinualTrainer, Experience, TrainOptions

    torch.set_num_threads(threads)
    settings = settings or PretrainSettings()
    tasks = list(settings.task_list())
    data = paths.data_dir(data_dir)
    fingerprint = settings.fingerprint()
    registry = ModelRegistry(paths.registry_dir(data))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    store = ExperienceStore(paths.store_path(data), 39, 4)
    try:
        demos = {}
        bar = tqdm(tasks, desc="demonstrations", unit="task", disable=not progress)
        for task in bar:
            bar.set_postfix_str(task)
            demos[task] = record_demonstrations(store, task, settings)
        bar.close()
        missing = [t for t, n in demos.items() if n == 0]
        if missing:
            raise RuntimeError(f"the scripted expert never succeeded on {missing}; no demonstrations to learn from")
        timings["demonstrations"] = time.perf_counter() - t0
        done = _registered(registry, fingerprint)
        if done is not None:
            return PretrainResult(done, tasks, demos, timings, dict(registry.info(done).metrics), resumed=True)

        torch.manual_seed(settings.seed)
        parts, all_obs = [], []
        for head, task in enumerate(tasks):
            b = store.task_arrays(task, split="train", sources=list(TRAIN_SOURCES))
            parts.append(Experience.from_arrays(b.obs, b.action, head, task))
            all_obs.append(b.obs)
        exp = Experience.concat(parts, "pretrain")
        model = PolicyNet(PolicyConfig(39, 4, settings.hidden, num_heads=len(tasks), multi_head=True))
        model.set_normalizer(np.concatenate(all_obs))
        with torch.no_grad():
            model.obs_std.clamp_(min=NORMALIZER_STD_FLOOR)
        job_dir = paths.learner_dir(data) / f"pretrain-{fingerprint}"
        job_dir.mkdir(parents=True, exist_ok=True)
        train_bar = tqdm(total=settings.steps, desc="pretrain", unit="step", disable=not progress)

        def on_progress(phase: str, step: int, loss: float) -> None:
            if phase == "train" and step > train_bar.n:
                train_bar.update(step - train_bar.n)
                train_bar.set_postfix(loss=f"{loss:.4f}")

        trainer = ContinualTrainer(
            model,
            bc_loss,
            build_plugins(CONSOLIDATION),  # online EWC estimates the Fisher of all 45 tasks at the end
            TrainOptions(
                steps=settings.steps,
                batch_size=settings.batch_size,
                lr=settings.lr,
                lr_final=settings.lr_final,
                seed=settings.seed,
                progress_every=50,
                checkpoint_path=str(job_dir / paths.CHECKPOINT_FILE),
                checkpoint_every=settings.checkpoint_every,
            ),
            on_progress=on_progress,
            should_stop=should_stop,
        )
        t1 = time.perf_counter()
        result = trainer.train_exp(exp)
        train_bar.close()
        if result.cancelled:
            raise AdaptCancelled(f"pretraining stopped at step {result.steps}; run again to resume")
        timings["train"] = time.perf_counter() - t1
        request = AdaptRequest(
            task=tasks[0],
            store_path=str(store.path),
            method=CONSOLIDATION,
            steps=settings.steps,
            seed=settings.seed,
            out_dir=str(job_dir / "candidate"),
        )
        metrics: dict[str, Any] = {"final_loss": result.final_loss, "steps": result.steps, "train_s": timings["train"]}
        candidate = write_candidate(
            request,
            model,
            tasks,
            trainer,
            metrics=metrics,
            data_used={"tasks": tasks, "demonstrations": demos, "records": len(exp)},
            parent_version=None,
        )
        success: dict[str, float] = {}
        if eval_episodes > 0:
            t2 = time.perf_counter()
            success = evaluate_tasks(
                candidate.onnx_path, tasks, range(EVAL_SEED0, EVAL_SEED0 + eval_episodes), progress
            )
            timings["evaluate"] = time.perf_counter() - t2
            metrics["success"] = success
            metrics["avg_success"] = float(np.mean(list(success.values())))
        meta = dict(candidate.metadata)
        meta.update({"target_task": None, "method": PRETRAIN_METHOD, "metrics": {**meta["metrics"], **metrics}})
        meta["pretrain_fingerprint"] = fingerprint
        meta["pretrain_settings"] = {**asdict(settings), "tasks": tasks}
        atomic_write_json(Path(candidate.out_dir) / paths.META_FILE, meta)
        candidate.metadata = meta
        version = register_candidate(registry, candidate, parent=None)
        registry.set_decision(
            version,
            "approved",
            reason="pretrained base model: behaviour cloning of the scripted experts (no earlier version to gate against)",
        )
        if activate and registry.active() is None:
            promote(registry, version, reason="pretrained base model")
        timings["total"] = time.perf_counter() - t0
        return PretrainResult(version, tasks, demos, timings, meta["metrics"], success=success)
    finally:
        store.close()


def base_version(data_dir: str | Path) -> str | None:
    """The newest approved pretrained base (method ``pretrain``) in ``data_dir``'s registry, if any."""
    root = paths.registry_dir(Path(data_dir))
    if not root.is_dir():
        return None
    registry = ModelRegistry(root, create=False)
    found = [v.id for v in registry.list() if v.method == PRETRAIN_METHOD and v.decision == "approved"]
    return found[-1] if found else None


def find_base(where: str) -> Path | None:
    """The data directory whose pretrained base a new robot should start from.

    ``"none"``: none. ``"auto"``: the default data directory ($LIFELONG_ROS_DATA, else
    ~/.local/share/lifelong_ros) when ``lifelong-ros pretrain`` has registered a base there, else none.
    Anything else is a data directory that must hold one (ValueError naming it otherwise).
    """
    if where == "none":
        return None
    data = paths.data_dir(None if where == "auto" else where)
    if base_version(data) is not None:
        return data
    if where == "auto":
        return None
    raise ValueError(
        f"base={where!r}: no pretrained base model in {paths.registry_dir(data)}; expected a data directory "
        "where `lifelong-ros pretrain` has run, 'auto' or 'none'"
    )


def import_base(source: str | Path, registry: ModelRegistry, store_path: str | Path) -> str:
    """Start a new robot from ``source``'s pretrained base: copy its experience store (the pretraining
    tasks' demonstrations, which replay, the MAML head initialisation and the gate's held-out suites
    use) to ``store_path``, register the base version (model, weights, consolidation state) in the
    empty ``registry``, approve and promote it. Returns its id there."""
    if registry.ids():
        raise RegistryError(f"{registry.root} already holds versions; a base starts an empty registry")
    src = ModelRegistry(paths.registry_dir(Path(source)), create=False)
    vid = base_version(source)
    if vid is None:
        raise ValueError(f"no pretrained base model in {src.root}")
    info = src.info(vid)
    copy_store(paths.store_path(Path(source)), store_path)
    consolidation = info.path / paths.CONSOLIDATION_FILE
    new = registry.register(
        src.read_onnx(vid, verify=True),
        tasks=info.tasks,
        method=info.method,
        weights=src.weights_bytes(vid)[0] if info.weights_file else None,
        config=info.config,
        data_range=info.data_range,
        metrics=info.metrics,
        extra={**info.extra, "imported_from": f"{src.root}:{vid}"},
        files={paths.CONSOLIDATION_FILE: consolidation} if consolidation.exists() else None,
    )
    registry.set_decision(new, "approved", reason=f"pretrained base model imported from {src.root} ({vid})")
    promote(registry, new, reason="pretrained base model")
    return new


def evaluate_tasks(
    onnx_path: str | Path, tasks: Sequence[str], seeds: range, progress: bool = False, max_steps: int = 500
) -> dict[str, float]:
    """Closed-loop success of an ONNX model on each task's variations ``seeds``, through PolicyRuntime."""
    from tqdm import tqdm

    from lifelong_ros.serving.runtime import PolicyRuntime
    from lifelong_ros.sim.metaworld import MetaWorldSim
    from lifelong_ros.sim.rollout import successes

    runtime = PolicyRuntime(Path(onnx_path).read_bytes(), "eval")
    out = {}
    try:
        for task in tqdm(tasks, desc="evaluate", unit="task", disable=not progress):
            sim = MetaWorldSim(task, 0, max_steps)
            out[task] = float(np.mean(successes(runtime, sim, seeds)))
            sim.close()
    finally:
        runtime.close()
    return out
