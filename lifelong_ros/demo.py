"""The demo: the whole lifelong-adaptation loop, standalone, against an embedded simulator.

The robot is a name (``sim.backends``): Meta-World's Sawyer arm (``metaworld``, the default) or the
Unitree G1 humanoid with hands at a table (``g1``); the loop below is the same for both. For each
task of the sequence: record expert demonstrations into the experience store, adapt in
the learner's worker process while the current policy keeps serving in closed loop, gate the
candidate on held-out data, hot-swap it in, and evaluate every task learned so far. The result is
a success matrix R[i][j] (after learning task i, success on task j) and the time to adapt.
"""

from __future__ import annotations

import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lifelong_ros import paths
from lifelong_ros.config import ConfigError, check_known_keys, check_value, did_you_mean
from lifelong_ros.corrections import TAKEOVER_AFTER, collect_corrections
from lifelong_ros.experience.store import ExperienceStore
from lifelong_ros.fsutil import atomic_write_json
from lifelong_ros.learning.jobs import parse_recipe_options
from lifelong_ros.learning.metrics import plot_matrix, summarize
from lifelong_ros.learning.worker import AdaptJob, Learner
from lifelong_ros.orchestration import Orchestrator, RetryPolicy, Update, robot_prior
from lifelong_ros.params import check_params_file
from lifelong_ros.pretrain import BASE_ADAPT_OPTIONS, find_base, import_base
from lifelong_ros.safety.gate import GateConfig, SafetyGate
from lifelong_ros.safety.registry import ModelRegistry
from lifelong_ros.serving.runtime import PolicyRuntime
from lifelong_ros.sim.backends import BACKENDS, SimBackend, backend
from lifelong_ros.sim.episodes import Simulator
from lifelong_ros.sim.pool import RolloutPool

# Variation seeds: training demonstrations, held-out demonstrations (gate), evaluation rollouts.
# Disjoint ranges, so every number below is measured on variations the learner never saw.
TRAIN_SEED0, HELDOUT_SEED0, EVAL_SEED0 = 0, 100_000, 200_000
CORRECTION_SEED0 = 50_000  # corrected episodes of task i: CORRECTION_SEED0 + 1000 * i + k

# Starting from a pretrained base (``base``): the closed-loop gate pairs episodes on at most this
# many of its earlier tasks (those most at risk, safety/gate.py), and this many of the base's tasks
# are evaluated before and after the run to show what the pretrained tasks kept.
BASE_CLOSED_LOOP_TASKS = 5
BASE_SAMPLE_TASKS = 5

# Written into ``<out>/data`` by every demo run: only a directory holding it is ever deleted by a
# later run with the same --out (anything else there is the user's, and the demo refuses to start).
DEMO_MARKER = ".lifelong-ros-demo"

# The schema of the numeric/boolean settings: name -> (type, minimum, maximum, minimum exclusive).
_RULES: dict[str, tuple[type, float | None, float | None, bool]] = {
    "demos_per_task": (int, 1, None, False),
    "heldout_demos_per_task": (int, 1, None, False),
    "eval_episodes": (int, 1, None, False),
    "steps": (int, 1, None, False),
    "seed": (int, 0, 2**31 - 1, False),
    "steps_after_success": (int, 0, 500, False),
    "max_steps": (int, 1, 500, False),
    "learner_threads": (int, 1, 256, False),
    "serve_rate_hz": (float, 0, 100_000, False),  # 0 = as fast as possible; negative is an error
    "gate_enabled": (bool, None, None, False),
    "gate_rollouts": (int, 0, None, False),
    "gate_workers": (int, 0, 256, False),
    "retries": (int, 0, 10, False),
    "corrections": (int, 0, 100, False),
    "takeover_after": (int, 0, 500, False),
}

DEFAULT_ROBOT = "metaworld"

# --quick: caps on the budget (never raises a setting) per robot, and which tasks of the sequence it
# keeps (None = all; else the sequence's tasks among these, or its first two if it has none of them).
# The G1's episodes cost several times Meta-World's (IK experts, 17 joints, longer tasks): its quick
# loop teaches the two tasks a small budget learns (reach, then button), with more demonstrations.
QUICK: dict[str, tuple[dict[str, int], tuple[str, ...] | None]] = {
    "metaworld": (
        {
            "demos_per_task": 15,
            "heldout_demos_per_task": 3,
            "eval_episodes": 5,
            "steps": 400,
            "max_steps": 150,
            "gate_rollouts": 20,
            "retries": 1,
        },
        None,
    ),
    "g1": (
        {
            "demos_per_task": 30,
            "heldout_demos_per_task": 4,
            "eval_episodes": 10,
            "steps": 1000,
            "max_steps": 150,
            "gate_rollouts": 10,
            "retries": 0,  # a retry costs 1.5x the learning: a rejection is shown, not retried
        },
        ("g1-reach", "g1-button"),
    ),
}


def check_robot(name: Any, where: str = "robot") -> SimBackend:
    """The simulator backend called ``name``, or ConfigError naming it with a did-you-mean."""
    if not isinstance(name, str) or name not in BACKENDS:
        hint = did_you_mean(str(name), BACKENDS)
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}unknown robot {name!r}{hint}; expected one of {', '.join(sorted(BACKENDS))}")
    return backend(name)


def check_task_names(names: Any, where: str = "tasks", robot: str = DEFAULT_ROBOT) -> list[str]:
    """The task list, or ConfigError naming the first bad entry: not a non-empty list of distinct,
    non-empty strings, or a name that is not a task of ``robot``'s simulator (with a did-you-mean)."""
    sim = check_robot(robot)
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
        raise ConfigError(
            f"{where}={names!r}: expected a non-empty list of {sim.label} task names, e.g. [{sim.default_tasks[0]}]"
        )
    known = sim.available_tasks()
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}: task name {name!r} in {list(names)!r}: expected a non-empty task name")
        if name not in known:
            hint = did_you_mean(name, known)
            choices = "" if hint else f"; expected one of {', '.join(known)}"
            raise ConfigError(f"{where}: unknown {sim.label} task {name!r}{hint}{choices}")
        if name in seen:
            raise ConfigError(f"{where}: task {name!r} appears twice in {list(names)!r}; expected each task once")
        seen.add(name)
    return list(names)


@dataclass
class DemoSettings:
    """Everything the demo loop does; defaults come from config/lifelong.yaml's ``demo`` section
    (and its block named after the robot, e.g. ``demo.g1``)."""

    robot: str = DEFAULT_ROBOT  # the simulator (sim.backends): metaworld | g1
    tasks: list[str] = field(default_factory=lambda: list(backend(DEFAULT_ROBOT).default_tasks))
    demos_per_task: int = 50
    heldout_demos_per_task: int = 10
    eval_episodes: int = 20
    steps: int = 2000
    method: str = "meta_ewc_replay"
    seed: int = 0
    steps_after_success: int = 10
    max_steps: int = 500
    learner_threads: int = 1
    serve_rate_hz: float = 100.0  # control rate of the closed loop while learning (0 = as fast as possible)
    gate_enabled: bool = True  # False only for baselines: every candidate is promoted unchecked
    # closed-loop gate: at most this many paired episodes (candidate and active on the same held-out
    # variation) per task, decided by a sequential test; 0 = off (held-out BC error only)
    gate_rollouts: int = 50
    gate_workers: int = 0  # closed-loop episode worker processes (0 = cores - 1)
    retries: int = 2  # a rejected adaptation is retried this many times, each with a stronger recipe
    # after a task's adaptation, this many episodes driven by the new model are labelled by the expert
    # (DAgger, lifelong_ros/corrections.py) and the task is adapted again on demonstrations + corrections
    corrections: int = 0
    # the expert takes a corrected episode over after this many steps without a new best reward
    # (0 = never: pure DAgger, every episode kept)
    takeover_after: int = TAKEOVER_AFTER
    # the pretrained base to start from (Meta-World): 'auto' = the data directory's, if `lifelong-ros
    # pretrain` put one there; 'none'; or a data directory holding one
    base: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_robot(cls, robot: str, **settings: Any) -> DemoSettings:
        """Settings for ``robot`` with its default task sequence unless ``tasks`` is given."""
        settings.setdefault("tasks", list(check_robot(robot).default_tasks))
        return cls(robot=robot, **settings)

    @property
    def sim(self) -> SimBackend:
        return check_robot(self.robot)

    @classmethod
    def quick(cls, base: DemoSettings) -> DemoSettings:
        """The smoke-test loop: the robot's sequence (or its first few tasks), far fewer
        demonstrations, steps and episodes (``QUICK``)."""
        caps, keep = QUICK[check_robot(base.robot).name]
        quick = cls(**{**asdict(base), **{k: min(getattr(base, k), v) for k, v in caps.items()}})
        if keep is not None:
            quick.tasks = [t for t in base.tasks if t in keep] or list(base.tasks[:2])
        # a smoke-test budget learns less: a lower success floor for the new task (regressions on
        # earlier tasks are still judged against the active model with the configured tolerance)
        quick.gate = {"closed_loop_min_success": 0.5, **base.gate}
        return quick

    def validate(self, where: str = "demo settings", check_tasks: bool = True) -> None:
        """ConfigError/ValueError naming the first bad setting and what was expected; runs before any work."""
        check_robot(self.robot, f"{where}: robot")
        if check_tasks:
            self.tasks = check_task_names(self.tasks, f"{where}: tasks", self.robot)
        for name, (kind, lo, hi, exclusive) in _RULES.items():
            setattr(
                self,
                name,
                check_value(name, getattr(self, name), kind, min=lo, max=hi, exclusive_min=exclusive, where=where),
            )
        if not isinstance(self.method, str) or not self.method:
            raise ConfigError(f"{where}: method={self.method!r}: expected the name of an adaptation recipe")
        if not isinstance(self.base, str) or not self.base:
            raise ConfigError(f"{where}: base={self.base!r}: expected 'auto', 'none' or a data directory")
        for name in ("options", "gate"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(f"{where}: {name}={getattr(self, name)!r}: expected a mapping")
        try:
            parse_recipe_options(self.method, self.options)  # unknown method / option: ValueError, did-you-mean
            GateConfig.from_dict(self.gate_config())
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from exc

    def base_dir(self) -> Path | None:
        """The data directory of the pretrained base this run starts from, if any (``base``); a base
        is a Meta-World model, so another robot starts empty unless one is named explicitly (an error)."""
        if self.base == "none" or (self.base == "auto" and self.robot != "metaworld"):
            return None
        if self.robot != "metaworld":
            raise ConfigError(f"base={self.base!r}: a pretrained base is a Meta-World model; robot {self.robot!r}")
        try:
            return find_base(self.base)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def gate_config(self) -> dict[str, Any]:
        """The gate's settings: the ``gate`` mapping, plus the episode cap when the closed loop is on."""
        cfg = dict(self.gate)
        if self.gate_rollouts > 0:
            cfg.setdefault("closed_loop_max_pairs", self.gate_rollouts)
            cfg.setdefault("closed_loop_seed", HELDOUT_SEED0)
        return cfg


def _parse_section(own: dict[str, Any], known: list[str], where: str) -> dict[str, Any]:
    """One flattened block of demo settings -> DemoSettings keyword arguments (``gate.x`` -> gate={x})."""
    nested = ("options", "gate")
    plain = [k for k in own if k.partition(".")[0] not in nested or "." not in k]
    check_known_keys(plain, known, where)
    out: dict[str, Any] = {}
    for key, value in own.items():
        head, _, rest = key.partition(".")
        if head in nested and rest:
            out.setdefault(head, {})[rest] = value
        elif head in nested:
            raise ConfigError(f"{where}: {head}={value!r}: expected a mapping of {head} names to values")
        else:
            out[head] = value
    return out


def settings_from_config(path: str | None, robot: str | None = None) -> DemoSettings:
    """The ``demo`` section (and the shared ``tasks``) of a params file, checked against DemoSettings:
    an unknown key, a wrong type or an unknown task is a ConfigError naming the file and the key.

    ``robot`` (default: the section's ``robot``, else metaworld) picks the simulator; the section's
    block named after it (``demo.g1.*``) overrides the shared settings for that robot. Its tasks come
    from that block, else (Meta-World only, whose tasks the nodes share) ``demo.tasks`` or the
    ``/**`` block's ``tasks``, else the robot's default sequence (``sim.backends``)."""
    try:
        file = str(path or paths.default_config_path())
        sections = check_params_file(file)  # the whole file against the one schema, not only [demo]
    except FileNotFoundError:
        if path:
            raise
        file, sections = "built-in defaults", {"/**": {}}
    where = f"{file} [demo]"
    own = sections.get("demo", {})
    known = [k for k in asdict(DemoSettings()) if k not in ("options", "gate")] + ["options", "gate"]
    shared = {k: v for k, v in own.items() if k.partition(".")[0] not in BACKENDS}
    for key in shared:  # a block of a misspelled robot: name the robot, not "unknown key 'g2.steps'"
        head, dot, _ = key.partition(".")
        if dot and head not in ("options", "gate") and head not in known:
            check_robot(head, f"{where}: block {head!r}")
    out = _parse_section(shared, known, where)
    robot = robot if robot is not None else out.get("robot", DEFAULT_ROBOT)
    sim = check_robot(robot, f"{where}: robot" if "robot" in out else "robot")
    out["robot"] = sim.name
    blocks: dict[str, dict[str, Any]] = {}
    for key, value in own.items():
        head, _, rest = key.partition(".")
        if head in BACKENDS:
            blocks.setdefault(head, {})[rest] = value
    per_robot: dict[str, Any] = {}
    for name, block in blocks.items():  # every robot's block is checked, the chosen one applies
        parsed = _parse_section(block, [k for k in known if k != "robot"], f"{file} [demo.{name}]")
        if "tasks" in parsed:
            check_task_names(parsed["tasks"], f"{file} [demo.{name}]: tasks", name)
        if name == sim.name:
            per_robot = parsed
    for name in ("options", "gate"):
        if name in per_robot:
            per_robot[name] = {**out.get(name, {}), **per_robot[name]}
    if "tasks" in per_robot:
        where = f"{file} [demo.{sim.name}]"
    elif sim.name != DEFAULT_ROBOT:
        out.pop("tasks", None)  # demo.tasks and /** tasks are Meta-World's
    elif "tasks" not in out and "tasks" in sections["/**"]:
        out["tasks"] = sections["/**"]["tasks"]
        check_task_names(out["tasks"], f"{file} [/**]: tasks")
    settings = DemoSettings(**{**asdict(DemoSettings()), "tasks": list(sim.default_tasks), **out, **per_robot})
    settings.validate(where)
    return settings


class ClosedLoop:
    """The serving side: runs the active policy in the simulator step by step, recording experience."""

    def __init__(self, runtime: PolicyRuntime, store: ExperienceStore, settings: DemoSettings):
        self.runtime = runtime
        self.store = store
        self.settings = settings
        self.sims: dict[str, Simulator] = {}
        self.latencies_us: list[float] = []
        self.steps = 0
        self.late_ticks = 0  # control ticks that started late (the loop could not keep the rate)
        self.episodes = 0
        self.versions_seen: set[str] = set()

    def sim(self, task: str) -> Simulator:
        if task not in self.sims:
            self.sims[task] = self.settings.sim.make(task, 0, self.settings.max_steps)
        return self.sims[task]

    def run_until(self, job: AdaptJob, task: str, head: int, seed: int) -> None:
        """Serve episodes of ``task`` until ``job`` finishes; every served step is stored as experience."""
        sim = self.sim(task)
        period = 1.0 / self.settings.serve_rate_hz if self.settings.serve_rate_hz > 0 else 0.0
        next_tick = time.perf_counter()
        while not job.done():
            obs = sim.reset(seed)
            rows_o, rows_a = [], []
            done = False
            while not done and not job.done():
                if period:  # a robot's controller ticks at a fixed rate; sleeping leaves the CPU to the learner
                    next_tick += period
                    delay = next_tick - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    else:
                        self.late_ticks += 1
                        next_tick = max(next_tick, time.perf_counter() - period)  # no catch-up burst
                t0 = time.perf_counter_ns()
                out = self.runtime.infer(obs, head)
                self.latencies_us.append((time.perf_counter_ns() - t0) / 1e3)
                self.versions_seen.add(out.version)
                rows_o.append(obs)
                rows_a.append(np.clip(out.action, -1.0, 1.0))
                obs, _, done, _ = sim.step(out.action)
                self.steps += 1
            if rows_o:
                self.store.append(
                    task,
                    f"policy-{seed}-{self.episodes}",
                    np.arange(len(rows_o)),
                    np.stack(rows_o),
                    np.stack(rows_a),
                    source="policy",
                )
            self.episodes += 1
            seed += 1

    def success(self, task: str, head: int, episodes: int) -> float:
        sim = self.sim(task)
        return float(
            np.mean(
                [
                    sim.run_episode(lambda o: self.runtime.infer(o, head).action, EVAL_SEED0 + k).success
                    for k in range(episodes)
                ]
            )
        )


def record_demonstrations(store: ExperienceStore, task: str, settings: DemoSettings, progress: bool = True) -> int:
    """Expert demonstrations into the store: a training split and a held-out split for the gate."""
    robot = settings.sim
    sim = robot.make(task, settings.steps_after_success, settings.max_steps)
    n = 0
    splits: tuple[tuple[Literal["train", "heldout"], int, int], ...] = (
        ("train", TRAIN_SEED0, settings.demos_per_task),
        ("heldout", HELDOUT_SEED0, settings.heldout_demos_per_task),
    )
    for split, seed0, count in splits:
        episodes = robot.collect_demonstrations(task, range(seed0, seed0 + count), sim=sim, progress=progress)
        for ep in episodes:
            store.append_episode(
                task,
                f"demo-{split}-{ep.task.seed}",
                ep.obs,
                ep.action,
                ep.reward,
                ep.done,
                source="demonstration",
                split=split,
            )
            n += len(ep.obs)
    sim.close()
    return n


def collect_demo_corrections(
    store: ExperienceStore, registry: ModelRegistry, version: str, task: str, i: int, settings: DemoSettings
) -> dict[str, Any]:
    """``settings.corrections`` episodes of ``task`` driven by ``version`` (in the simulator, through
    PolicyRuntime), every visited state labelled by the scripted expert, who takes over a stalled
    episode (``settings.takeover_after``), into the store."""
    sim = settings.sim.make(task, settings.steps_after_success, settings.max_steps)
    seed0 = CORRECTION_SEED0 + 1000 * i
    try:
        with PolicyRuntime(registry.read_onnx(version), version) as runtime:
            rnd = collect_corrections(
                runtime,
                task,
                store,
                range(seed0, seed0 + settings.corrections),
                sim=sim,
                takeover_after=settings.takeover_after,
            )
    finally:
        sim.close()
    return rnd.to_dict()


def _base_tasks_success(
    loop: ClosedLoop, registry: ModelRegistry, settings: DemoSettings, tasks: list[str] | None = None
) -> dict[str, float]:
    """Closed-loop success of the active model on ``tasks`` (default: a sample of the active version's
    tasks outside the demo's sequence), ``settings.eval_episodes`` unseen variations each."""
    active = registry.active()
    known = registry.info(active).tasks if active else []
    if tasks is None:
        pool = [t for t in known if t not in settings.tasks]
        rng = np.random.default_rng(settings.seed)
        tasks = sorted(rng.choice(pool, min(BASE_SAMPLE_TASKS, len(pool)), replace=False).tolist()) if pool else []
    return {t: loop.success(t, known.index(t), settings.eval_episodes) for t in tasks}


def check_out_dir(out: Path) -> None:
    """ConfigError unless ``out`` can hold a demo run: a directory (or nothing yet) whose ``data``
    is absent, empty, or a previous demo run's (it holds DEMO_MARKER); nothing else is ever deleted."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; expected a directory for the demo's results")
    data = out / "data"
    if data.is_symlink() or (data.exists() and not data.is_dir()):
        raise ConfigError(
            f"{data} exists and is not a directory; expected a new --out directory or a previous demo run's"
        )
    if data.is_dir() and any(data.iterdir()) and not (data / DEMO_MARKER).is_file():
        raise ConfigError(
            f"{data} exists and is not a previous demo run's data (no {DEMO_MARKER} marker); refusing to delete it: "
            "expected a new --out directory or one a demo run wrote"
        )


def _attempt_record(
    k: int,
    update: Update,
    steps: int,
    options: dict[str, Any],
    seed: int,
    learn_s: float,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """One adaptation attempt for results.json: its recipe, verdict and the gate's per-task evidence."""
    closed_loop = {}
    if update.report is not None:
        for c in update.report.checks:
            if c.kind in ("closed_loop", "closed_loop_success") and c.task:
                closed_loop[c.task] = {
                    "passed": c.passed,
                    "value": c.value,
                    "threshold": c.threshold,
                    **{
                        key: c.detail.get(key)
                        for key in ("pairs", "decided_by", "candidate_success", "active_success", "drop")
                    },
                }
    return {
        "attempt": k + 1,
        "version": update.version,
        "decision": update.decision,
        "failed_checks": update.failed_checks,
        "steps": steps,
        "options": options,
        "seed": seed,
        "learning_s": round(learn_s, 3),
        "gate_s": round(update.timings_s["gate"], 3),
        "closed_loop": closed_loop,
        "final_loss": metadata.get("metrics", {}).get("final_loss"),
    }


def _closed_loop_lines(update: Update) -> list[str]:
    """The gate's closed-loop evidence per task, one line each, for the console."""
    out = []
    for c in update.report.checks if update.report is not None else []:
        if c.kind.startswith("closed_loop") and c.detail.get("error"):  # the stage could not run: say why
            out.append(f"FAIL {c.name}: could not run: {c.value}")
        elif c.kind == "closed_loop":
            out.append(
                f"{'PASS' if c.passed else 'FAIL'} {c.task}: success {c.detail['candidate_success']:.2f} vs active "
                f"{c.detail['active_success']:.2f} on {c.detail['pairs']} paired episodes ({c.detail['decided_by']})"
            )
        elif c.kind == "closed_loop_success":
            out.append(
                f"{'PASS' if c.passed else 'FAIL'} {c.task} (new): success {c.detail['candidate_success']:.2f} "
                f"(floor {c.threshold}) on {c.detail['pairs']} episodes ({c.detail['decided_by']})"
            )
    return out


def run_demo(settings: DemoSettings, out: Path, progress: bool = True) -> dict:
    """Run the loop; write results.json and the success-matrix heatmap under ``out``."""
    from tqdm import tqdm

    settings.validate()  # every setting (tasks, numbers, method, options, gate) before anything is touched
    base_dir = settings.base_dir()
    data = out / "data"
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    if data.exists():
        shutil.rmtree(data)  # a previous demo run's data (check_out_dir): a demo run starts from an empty robot
    data.mkdir(parents=True)
    (data / DEMO_MARKER).write_text("data of a `lifelong-ros demo` run; the next run with the same --out replaces it\n")
    registry = ModelRegistry(paths.registry_dir(data))
    gate_cfg = settings.gate_config()
    base: dict[str, Any] | None = None
    if base_dir is not None:  # start from the pretrained base: its store (replay, suites) and version
        base_version = import_base(base_dir, registry, paths.store_path(data))
        base = {"source": str(base_dir), "version": base_version, "tasks": len(registry.info(base_version).tasks)}
        gate_cfg.setdefault("closed_loop_max_tasks", BASE_CLOSED_LOOP_TASKS)
        print(f"pretrained base {base_version} from {base_dir}: {base['tasks']} tasks already served")
    store = ExperienceStore(paths.store_path(data), settings.sim.obs_dim, settings.sim.act_dim)
    pool = None
    if settings.gate_enabled and settings.gate_rollouts > 0:
        pool = RolloutPool(settings.gate_workers or None, max_steps=settings.max_steps, robot=settings.robot)
        pool.warm(settings.tasks[:1])  # start the workers while the first demonstrations are recorded
    # from a base: its recipe options (more replay of the 45 tasks; RetryPolicy keeps that ratio)
    options = {**BASE_ADAPT_OPTIONS, **settings.options} if base is not None else settings.options
    retry = RetryPolicy(retries=settings.retries)
    gate = SafetyGate(registry, GateConfig.from_dict(gate_cfg))
    tasks = settings.tasks
    n = len(tasks)
    matrix = np.full((n, n), np.nan)
    updates: list[dict] = []
    runtime: PolicyRuntime | None = None
    loop: ClosedLoop | None = None
    if base is not None:  # the base serves from the start
        onnx_bytes, sha = registry.load_for_serving(base["version"])
        runtime = PolicyRuntime(onnx_bytes, base["version"], expected_sha256=sha)
        loop = ClosedLoop(runtime, store, settings)
        base["kept"] = _base_tasks_success(loop, registry, settings)
    rounds = 2 if settings.corrections > 0 else 1
    t_run = time.perf_counter()
    with Learner(threads=settings.learner_threads) as learner, pool or nullcontext():
        orchestrator = Orchestrator(
            registry,
            store.path,
            learner,
            gate if settings.gate_enabled else None,
            work_dir=paths.learner_dir(data),
            episodes=pool,
            approve_ungated=not settings.gate_enabled,
            prior=robot_prior(settings.sim),
        )
        for i, task in enumerate(tasks):
            print(f"\n[{i + 1}/{n}] new task {task}: recording {settings.demos_per_task} demonstrations")
            records = record_demonstrations(store, task, settings, progress)
            t_last_demo = time.perf_counter()
            attempts: list[dict[str, Any]] = []
            update: Update | None = None
            learn_total = gate_total = 0.0
            served = late = 0
            swap_ms = None
            t_approved: float | None = None
            corrections: dict[str, Any] | None = None
            for rnd in range(rounds):  # round 1: the same adaptation again, on demonstrations + corrections
                if rnd == 1:
                    assert update is not None
                    corrections = collect_demo_corrections(store, registry, update.version, task, i, settings)
                    print(
                        f"  corrections: {settings.corrections} episodes driven by {update.version}, labelled by "
                        f"the expert: it finished {corrections['policy_success']:.2f} alone, the expert took over "
                        f"{corrections['takeovers']}, {corrections['discarded']} failed and were dropped "
                        f"({corrections['records']} records, {corrections['seconds']:.1f} s)"
                    )
                for k in range(retry.retries + 1):  # a rejection retries with a stronger recipe
                    active = registry.active()
                    n_known = len(registry.info(active).tasks) if active else 0
                    steps_k, options_k, seed_k = retry.attempt(
                        k, settings.method, settings.steps, options, settings.seed + i, n_known
                    )
                    bar = tqdm(
                        total=steps_k,
                        desc=f"learning {task} ({settings.method}, attempt {len(attempts) + 1})",
                        unit="step",
                        disable=not progress,
                        leave=False,
                    )

                    def on_progress(phase: str, step: int, loss: float, _bar=bar) -> None:
                        if phase == "train":
                            _bar.n = step
                            _bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                            _bar.refresh()

                    job = orchestrator.submit(
                        task,
                        method=settings.method,
                        steps=steps_k,
                        seed=seed_k,
                        options=options_k,
                        job_id=f"demo-{i:03d}" + (f"-corrected{rnd}" if rnd else "") + (f"-retry{k}" if k else ""),
                        on_progress=on_progress,
                    )
                    served_before = loop.steps if loop else 0
                    late_before = loop.late_ticks if loop else 0
                    t_learn = time.perf_counter()
                    if loop is not None and active:  # keep serving the newest task the active model knows
                        known = registry.info(active).tasks
                        loop.run_until(job, known[-1], len(known) - 1, EVAL_SEED0 + 10_000 * i)
                    candidate = job.result()
                    bar.close()
                    learn_s = time.perf_counter() - t_learn
                    learn_total += learn_s
                    served += (loop.steps - served_before) if loop else 0
                    late += (loop.late_ticks - late_before) if loop else 0

                    update = orchestrator.finish(job, runtime=runtime, progress=progress)  # register, gate, promote
                    gate_total += update.timings_s["gate"]
                    if update.promoted and runtime is None:  # the first approved version: start serving
                        onnx_bytes, sha = registry.load_for_serving(update.version)
                        runtime = PolicyRuntime(onnx_bytes, update.version, expected_sha256=sha)
                        loop = ClosedLoop(runtime, store, settings)
                    elif update.promoted:  # the runtime was hot-swapped (sha256-verified, atomic) while serving
                        swap_ms = round(update.timings_s["swap"] * 1e3, 2)
                    if update.approved:
                        t_approved = time.perf_counter()
                    record = _attempt_record(k, update, steps_k, options_k, seed_k, learn_s, candidate.metadata)
                    record.update(attempt=len(attempts) + 1, round="corrected" if rnd else "demonstrations")
                    attempts.append(record)
                    verdict = (
                        ("approved" if settings.gate_enabled else "disabled")
                        if update.approved
                        else f"rejected ({update.reason})"
                    )
                    print(
                        f"  attempt {len(attempts)}: candidate {update.version} ({steps_k} steps"
                        + (f", {options_k}" if k else "")
                        + (", with corrections" if rnd else "")
                        + f"): gate {verdict} in {update.timings_s['gate']:.1f} s (learning {learn_s:.1f} s)"
                    )
                    for line in _closed_loop_lines(update):
                        print("    " + line)
                    if update.approved:
                        break
            assert update is not None
            passed = t_approved is not None  # a later rejected round leaves the earlier approved version serving
            version = registry.active() if passed else update.version
            to_verdict = (t_approved if t_approved is not None else time.perf_counter()) - t_last_demo
            time_to_adapt = to_verdict if passed else None
            what = "time to adapt" if passed else "production unchanged after all attempts; time to verdict"
            rate = served / learn_total if learn_total else 0.0
            print(
                f"  {task}: {'approved' if passed else 'rejected'} after {len(attempts)} attempt(s); {what} "
                f"{to_verdict:.1f} s (learning {learn_total:.1f} s, gate {gate_total:.1f} s; meanwhile {served} "
                f"policy steps served at {rate:.0f} Hz)"
            )

            active = registry.active()
            head_of = {t: k for k, t in enumerate(registry.info(active).tasks)} if active else {}
            for j in range(i + 1):  # a task whose update the gate rejected is not served: success 0
                if tasks[j] in head_of and loop is not None:
                    matrix[i, j] = loop.success(tasks[j], head_of[tasks[j]], settings.eval_episodes)
                else:
                    matrix[i, j] = 0.0
            row = " ".join("  -  " if np.isnan(v) else f"{v:5.2f}" for v in matrix[i])
            print(f"  success after {task}: {row}")
            updates.append(
                {
                    "task": task,
                    "version": version,
                    "parent": update.parent,
                    "method": settings.method,
                    "decision": "approved" if passed else "rejected",
                    "gate": ("closed-loop" if pool is not None else "offline") if settings.gate_enabled else "off",
                    "failed_checks": [] if passed else update.failed_checks,
                    "attempts": attempts,
                    "corrections": corrections,
                    "demonstration_records": records,
                    "timings_s": {
                        "time_to_adapt": time_to_adapt and round(time_to_adapt, 3),
                        "time_to_verdict": round(to_verdict, 3),
                        "learning": round(learn_total, 3),
                        "gate": round(gate_total, 3),
                        "corrections": corrections and corrections["seconds"],
                        "swap_ms": swap_ms,
                        "train": candidate.metadata["metrics"].get("train_s"),
                    },
                    "served_steps_during_learning": served,
                    "serving_rate_hz_during_learning": round(rate, 1) if served else None,
                    "late_control_ticks_during_learning": late,
                    "final_loss": candidate.metadata["metrics"].get("final_loss"),
                }
            )
    if base is not None and loop is not None:  # what the pretrained tasks kept through all of it
        after = _base_tasks_success(loop, registry, settings, list(base["kept"]))
        base["kept"] = {t: {"before": base["kept"][t], "after": after[t]} for t in after}
        base["mean_drop"] = float(np.mean([v["before"] - v["after"] for v in base["kept"].values()]))
        print(f"pretrained tasks (a sample of {len(after)}): mean success drop {base['mean_drop']:.3f}")
    lat = np.asarray(loop.latencies_us) if loop and loop.latencies_us else np.zeros(0)
    results: dict[str, Any] = {
        "robot": settings.robot,
        "tasks": tasks,
        "success_matrix": [[None if np.isnan(v) else float(v) for v in row] for row in matrix],
        "metrics": {k: v for k, v in summarize(matrix).items() if k != "matrix"},
        "updates": updates,
        "base": base,
        "serving": {
            "steps": loop.steps if loop else 0,
            "p50_us": float(np.median(lat)) if lat.size else None,
            "p99_us": float(np.percentile(lat, 99)) if lat.size else None,
        },
        "settings": asdict(settings),
        "wall_s": round(time.perf_counter() - t_run, 1),
        "paths": {"store": str(store.path), "registry": str(registry.root)},
    }
    store.close()
    plot = plot_matrix(
        matrix, out / "success_matrix.png", tasks, title=f"success R[i][j] ({settings.method})", label="success rate"
    )
    results["paths"]["plot"] = str(plot)
    atomic_write_json(out / "results.json", results)
    return results
