"""Safety gate: decides, with evidence, whether a candidate policy may replace the active one.

A robot that keeps learning must never start running a model that is worse, broken or poisoned;
the gate runs candidate and active side by side on held-out data in one run and persists its verdict.

Runs in the safety monitor process, which loads models with onnxruntime only: this module must not
import torch (a test checks it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from lifelong_ros.experience.sources import GROUND_TRUTH_SOURCES
from lifelong_ros.safety.registry import ModelRegistry, RegistryError, VersionInfo
from lifelong_ros.safety.sequential import PairedTest, SequentialSpec
from lifelong_ros.serving.interface import OBS_INPUT, TASK_INPUT

# the policy server's session settings, so gate latencies match production
from lifelong_ros.serving.runtime import session_options

log = logging.getLogger(__name__)


class GateCancelled(Exception):
    """The caller stopped an evaluation (``should_stop``) before its verdict: nothing was recorded,
    the version stays a candidate and can be gated again."""


_BATCH = 8192
# the offline checks that measure behaviour the closed loop measures better (GateConfig.offline_reject_factor)
_DEFERRABLE = frozenset({"regression", "improvement", "action_bounds", "action_bounds_perturbed"})


class EpisodeRunner(Protocol):
    """Runs closed-loop episodes for the gate (lifelong_ros.sim.pool.RolloutPool is the simulator's).

    ``submit(models, task, seed)``: every model (role -> ONNX bytes) runs one episode of ``task``
    on variation ``seed``; the Future resolves to role -> success. ``cancel(future)``: drop a job
    that has not started. ``workers``: how many episodes run at once.
    """

    workers: int

    def submit(self, models: Mapping[str, bytes], task: str, seed: int) -> Future[dict[str, bool]]: ...

    def cancel(self, future: Future[Any]) -> bool: ...


# ---------------------------------------------------------------------------------------- config
@dataclass
class GateConfig:
    """Every threshold the gate applies; defaults live here and nowhere else.

    MSE values are behaviour-cloning mean squared errors on held-out demonstrations (per action
    element). A check's threshold is computed from these fields; the report records both.
    """

    # (a) an earlier task may get worse by at most rel * active_mse + abs (abs covers near-zero MSE).
    # Calibration (bench/gate.py, Meta-World 256x256 BC): replay candidates moved earlier tasks by
    # -40 %..+13 %; poisoned or destructive updates raise them 10x and more (test_production_under_faults.py).
    regression_rel_tol: float = 0.3
    regression_abs_tol: float = 0.005
    # (b) the target task must reach <= (1 - margin) * baseline MSE
    improvement_margin: float = 0.05
    require_all_tasks: bool = True  # every task the active model serves needs a held-out suite
    min_suite_samples: int = 50
    # (c) outputs: finite everywhere; rows with an action outside [low - slack, high + slack] at a
    # rate of at most active model's rate on the same rows + rate: an unsquashed BC network
    # overshoots saturated expert actions now and then (Meta-World BC, 256x256: 1-2 % of held-out
    # rows beyond +-1.5, bench/gate.py), garbage overshoots everywhere
    action_low: float | list[float] = -1.0
    action_high: float | list[float] = 1.0
    bounds_slack: float = 0.5
    max_out_of_bounds_rate: float = 0.02
    max_out_of_bounds_rate_perturbed: float = 0.05
    perturb_scale: float = 0.05  # Gaussian noise std, as a fraction of each feature's std on the suite
    perturb_seed: int = 0
    # (d) single-observation latency (best p99 over rounds, candidate and active interleaved)
    latency_budget_ms: float = 1.0
    latency_samples: int = 1000
    latency_rounds: int = 3
    intra_op_threads: int = 1
    # (e) closed loop (only with an episode runner, i.e. a simulator): paired episodes, candidate
    # and active on the same held-out variations, per task, decided by a sequential test
    # (safety/sequential.py). An earlier task may lose at most `closed_loop_tolerance` success; a
    # drop <= `closed_loop_safe_drop` passes except with probability alpha (over all tasks
    # together), a drop >= `closed_loop_regressed_drop` fails except with probability beta (per
    # task). The target task must reach `closed_loop_min_success` (the same test against a model
    # that always succeeds, with the same margins). At most `closed_loop_max_pairs` variations a
    # task, from seed `closed_loop_seed` on (disjoint from training and evaluation seeds).
    closed_loop_tolerance: float = 0.1
    closed_loop_safe_drop: float = 0.05
    closed_loop_regressed_drop: float = 0.2
    closed_loop_alpha: float = 0.05
    closed_loop_beta: float = 0.05
    closed_loop_max_pairs: int = 50
    closed_loop_min_success: float = 0.8
    closed_loop_seed: int = 100_000
    # at most this many earlier tasks get paired episodes (0 = every one): those whose held-out BC
    # error rose most against the active model (ratio), so a base model that serves 45 tasks is
    # gated in seconds; the others are judged by the offline stage alone, and the report says which
    closed_loop_max_tasks: int = 0
    # With a simulator the offline BC and out-of-bounds checks (regression, improvement,
    # action_bounds*) are a first stage: a finding up to `offline_reject_factor` x its threshold is
    # deferred to the closed loop, which decides; only a grosser one rejects without episodes.
    # Non-finite outputs, signature, integrity, latency and missing suites always reject.
    # Calibration (bench/gate_power.py, 15 drawer-open candidates): a candidate with unchanged true
    # success had 23.6x the regression threshold (noise on one head); the destructive ones the
    # offline stage should stop alone had 140x-390x (naive fine-tuning, noise x1 on all weights or
    # on a head whose task then fails). Without a simulator every threshold decides as it is.
    offline_reject_factor: float = 50.0
    # (f) shadow stage: 0 disables it; otherwise the candidate runs beside the active model
    shadow_steps: int = 0
    shadow_max_mean_divergence: float = 0.2
    shadow_max_latency_ratio: float = 3.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"gate config {name}={getattr(self, name)!r}: expected {expected}")

        for name in ("regression_rel_tol", "regression_abs_tol", "bounds_slack", "perturb_scale"):
            need(_is_num(getattr(self, name)) and getattr(self, name) >= 0, name, "a number >= 0")
        need(
            _is_num(self.offline_reject_factor) and self.offline_reject_factor >= 1,
            "offline_reject_factor",
            "a number >= 1 (1: the offline thresholds reject alone also with a simulator)",
        )
        need(
            _is_num(self.improvement_margin) and 0 <= self.improvement_margin < 1,
            "improvement_margin",
            "0 <= margin < 1",
        )
        for name in ("max_out_of_bounds_rate", "max_out_of_bounds_rate_perturbed", "closed_loop_min_success"):
            need(_is_num(getattr(self, name)) and 0 <= getattr(self, name) <= 1, name, "a rate in [0, 1]")
        for name in ("closed_loop_alpha", "closed_loop_beta"):
            need(_is_num(getattr(self, name)) and 0 < getattr(self, name) < 1, name, "a probability in (0, 1)")
        for name in ("closed_loop_tolerance", "closed_loop_safe_drop", "closed_loop_regressed_drop"):
            need(_is_num(getattr(self, name)) and 0 <= getattr(self, name) < 1, name, "a number in [0, 1)")
        need(
            self.closed_loop_safe_drop <= self.closed_loop_tolerance <= self.closed_loop_regressed_drop
            and self.closed_loop_safe_drop < self.closed_loop_regressed_drop,
            "closed_loop_tolerance",
            f"closed_loop_safe_drop ({self.closed_loop_safe_drop}) <= tolerance <= closed_loop_regressed_drop "
            f"({self.closed_loop_regressed_drop}), safe < regressed",
        )
        need(
            1 - self.closed_loop_min_success + self.closed_loop_regressed_drop - self.closed_loop_tolerance < 1,
            "closed_loop_min_success",
            "min_success > regressed_drop - tolerance (a failing target must be possible)",
        )
        need(_is_num(self.latency_budget_ms) and self.latency_budget_ms > 0, "latency_budget_ms", "a number > 0")
        need(
            _is_num(self.shadow_max_mean_divergence) and self.shadow_max_mean_divergence >= 0,
            "shadow_max_mean_divergence",
            "a number >= 0",
        )
        need(
            _is_num(self.shadow_max_latency_ratio) and self.shadow_max_latency_ratio >= 1,
            "shadow_max_latency_ratio",
            "a number >= 1",
        )
        for name, least in (
            ("min_suite_samples", 1),
            ("latency_samples", 10),
            ("latency_rounds", 1),
            ("intra_op_threads", 1),
            ("closed_loop_max_pairs", 1),
            ("closed_loop_seed", 0),
            ("closed_loop_max_tasks", 0),
            ("shadow_steps", 0),
            ("perturb_seed", 0),
        ):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= least, name, f"an integer >= {least}")
        need(isinstance(self.require_all_tasks, bool), "require_all_tasks", "true or false")
        for name in ("action_low", "action_high"):
            v = getattr(self, name)
            ok = _is_num(v) or (isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_num(x) for x in v))
            need(ok, name, "a number or a non-empty list of numbers")
        lo, hi = np.atleast_1d(np.asarray(self.action_low, float)), np.atleast_1d(np.asarray(self.action_high, float))
        if lo.size != hi.size and lo.size != 1 and hi.size != 1:
            raise ValueError(
                f"gate config action_low has {lo.size} values and action_high {hi.size}; expected equal lengths"
            )
        if np.any(np.broadcast_to(lo, np.broadcast(lo, hi).shape) >= np.broadcast_to(hi, np.broadcast(lo, hi).shape)):
            raise ValueError(f"gate config action_low={self.action_low!r} must be < action_high={self.action_high!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> GateConfig:
        """From a mapping: plain keys, a ``gate:`` section, flattened ``gate.<key>`` names (as
        lifelong_ros.config and ROS 2 produce them), or a whole ROS 2 params file section."""
        d = dict(_unwrap(d or {}, "gate"))
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ValueError(f"unknown gate config key(s) {unknown}; expected some of {sorted(fields)}")
        kwargs = {}
        for k, v in d.items():
            default = fields[k].default
            if isinstance(default, float) and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)  # YAML '1' for a float field
            kwargs[k] = v
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> GateConfig:
        import yaml

        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: expected a mapping of gate settings, got {type(data).__name__}")
        return cls.from_dict(data)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _unwrap(d: Mapping[str, Any], section: str) -> Mapping[str, Any]:
    """Dig through ``<node>: ros__parameters:`` and a ``section:`` key when present."""
    if len(d) == 1:
        (only,) = d.values()
        if isinstance(only, Mapping) and "ros__parameters" in only:
            d = only["ros__parameters"] or {}
    if "ros__parameters" in d:
        d = d["ros__parameters"] or {}
    if section in d and isinstance(d[section], Mapping):
        inner: Mapping[str, Any] = d[section]
        return inner
    prefix = section + "."
    if any(isinstance(k, str) and k.startswith(prefix) for k in d):  # flattened ROS 2 names: gate.margin
        return {k[len(prefix) :]: v for k, v in d.items() if isinstance(k, str) and k.startswith(prefix)}
    return d


# ---------------------------------------------------------------------------------------- data
@dataclass
class RegressionSuite:
    """Held-out demonstrations of one task: obs [N, D] float32, action [N, A] float32, episode ids [N]."""

    task: str
    obs: npt.NDArray[np.float32]
    action: npt.NDArray[np.float32]
    episodes: npt.NDArray[Any] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise ValueError(f"suite task must be a non-empty string, got {self.task!r}")
        self.obs = np.asarray(self.obs, dtype=np.float32)
        self.action = np.asarray(self.action, dtype=np.float32)
        if self.obs.ndim != 2 or self.action.ndim != 2 or self.obs.shape[0] != self.action.shape[0]:
            raise ValueError(
                f"suite {self.task!r}: expected obs [N, D] and action [N, A] with the same N, "
                f"got {self.obs.shape} and {self.action.shape}"
            )
        if self.episodes is not None:
            self.episodes = np.asarray(self.episodes)
            if self.episodes.shape != (self.obs.shape[0],):
                raise ValueError(
                    f"suite {self.task!r}: episodes shape {self.episodes.shape}, expected ({self.obs.shape[0]},)"
                )
        if not (np.isfinite(self.obs).all() and np.isfinite(self.action).all()):
            raise ValueError(f"suite {self.task!r} contains non-finite observations or actions")

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    def describe(self) -> dict[str, Any]:
        h = hashlib.sha256(self.obs.tobytes())
        h.update(self.action.tobytes())
        d: dict[str, Any] = {"task": self.task, "samples": len(self), "source": self.source, "sha256": h.hexdigest()}
        if self.episodes is not None and len(self):
            ep = np.unique(self.episodes)
            d.update(episodes=int(ep.size), episode_ids=[_jsonable(x) for x in ep[:50]])
        return d


def _jsonable(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x


def suites_from_store(
    store: Any, tasks: Sequence[str], sources: Sequence[str] | None = GROUND_TRUTH_SOURCES
) -> dict[str, RegressionSuite]:
    """Regression suites from an ExperienceStore's held-out split (by default demonstrations and
    corrections: actions the policy produced itself are no ground truth). A task the store does
    not know is left out, so the gate reports it as missing held-out data (and fails closed)."""
    out: dict[str, RegressionSuite] = {}
    for task in tasks:
        try:
            b = store.task_arrays(task, split="heldout", sources=list(sources) if sources else None)
        except KeyError:
            log.warning("no experience for task %r in the store: no regression suite", task)
            continue
        out[task] = RegressionSuite(
            task, b.obs, b.action, getattr(b, "episode", None), source="store:heldout:" + ",".join(sources or ["all"])
        )
    return out


def _normalise_suites(suites: Mapping[str, RegressionSuite] | Sequence[RegressionSuite]) -> dict[str, RegressionSuite]:
    items = list(suites.values()) if isinstance(suites, Mapping) else list(suites)
    out: dict[str, RegressionSuite] = {}
    for s in items:
        if not isinstance(s, RegressionSuite):
            raise TypeError(f"suites must be RegressionSuite objects, got {type(s).__name__}")
        if s.task in out:
            raise ValueError(f"two suites for task {s.task!r}")
        out[s.task] = s
    return out


# ---------------------------------------------------------------------------------------- onnx
class OnnxPolicy:
    """An onnxruntime session over a policy's ONNX bytes, with batched and single-observation calls."""

    def __init__(self, onnx_bytes: bytes, threads: int = 1):
        self.session = ort.InferenceSession(
            onnx_bytes, sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        if OBS_INPUT not in self.inputs:
            raise ValueError(f"ONNX model has inputs {sorted(self.inputs)}; expected {OBS_INPUT!r}")
        self.has_task = TASK_INPUT in self.inputs
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.num_heads = int(self.metadata.get("num_heads", "1"))

    @property
    def signature(self) -> dict[str, Any]:
        sig: dict[str, Any] = {
            "inputs": [[i.name, i.type, [str(d) for d in i.shape]] for i in self.session.get_inputs()],
            "outputs": [[o.name, o.type, [str(d) for d in o.shape]] for o in self.session.get_outputs()],
        }
        for k in ("obs_dim", "act_dim"):
            if k in self.metadata:
                sig[k] = self.metadata[k]
        return sig

    def feeds(self, obs: npt.NDArray[np.float32], task_id: int) -> dict[str, npt.NDArray[Any]]:
        f: dict[str, npt.NDArray[Any]] = {OBS_INPUT: obs}
        if self.has_task:
            f[TASK_INPUT] = np.full(obs.shape[0], task_id, dtype=np.int64)
        return f

    def predict(self, obs: npt.NDArray[np.float32], task_id: int) -> npt.NDArray[np.float32]:
        outs: list[npt.NDArray[np.float32]] = []
        for i in range(0, obs.shape[0], _BATCH):
            chunk = np.ascontiguousarray(obs[i : i + _BATCH], dtype=np.float32)
            outs.append(self.session.run([self.outputs[0]], self.feeds(chunk, task_id))[0])
        return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)

    def head(self, tasks: Sequence[str], task: str) -> int | None:
        """Head index of ``task`` (0 in single-head mode), None when this model has no head for it."""
        if task in tasks:
            return 0 if self.num_heads == 1 else tasks.index(task)
        return None


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a success rate: a bound that stays honest at 0/n and n/n."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got successes={successes}, n={n}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


# ---------------------------------------------------------------------------------------- report
@dataclass
class CheckResult:
    """One check: what was measured (value), against what (threshold), on which data, and the verdict."""

    kind: str
    passed: bool
    value: Any = None
    threshold: Any = None
    task: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    data: str = ""
    # over its threshold, but left to the closed-loop stage to decide (passed is then True: it does
    # not reject by itself; the closed-loop checks in the same report do or do not)
    deferred: bool = False

    @property
    def name(self) -> str:
        return f"{self.kind}[{self.task}]" if self.task else self.kind

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["name"] = self.name
        return d

    def line(self) -> str:
        mark = "DEFER" if self.deferred else "PASS" if self.passed else "FAIL"
        return f"{mark} {self.name:<36} value={_fmt(self.value)} threshold={_fmt(self.threshold)}"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


@dataclass
class GateReport:
    """The full record of one gate run; persisted in the candidate's directory."""

    candidate: str
    active: str | None
    target_task: str | None
    decision: str  # approved | rejected | pending_shadow
    checks: list[CheckResult]
    data: list[dict[str, Any]]
    config: dict[str, Any]
    timings_ms: dict[str, float]
    started: str
    duration_ms: float
    persisted: bool = False  # False for a dry run: the verdict was not recorded

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.passed]

    @property
    def deferred(self) -> list[str]:
        """Offline findings the closed-loop stage decided instead (see GateConfig.offline_reject_factor)."""
        return [c.name for c in self.checks if c.deferred]

    @property
    def failed_kinds(self) -> set[str]:
        return {c.kind for c in self.checks if not c.passed}

    @property
    def passed(self) -> bool:
        return not self.failed

    def check(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check {name!r} in report; checks: {[c.name for c in self.checks]}")

    def reason(self) -> str:
        why = "failed: " + ", ".join(self.failed) if self.failed else f"all {len(self.checks)} checks passed"
        if self.deferred:
            why += f" (offline findings left to the closed loop: {', '.join(self.deferred)})"
        return why

    def summary(self) -> str:
        dry = "" if self.persisted else " [dry run, not recorded]"
        head = (
            f"{self.candidate} vs {self.active or '(none active)'} target={self.target_task}: "
            f"{self.decision.upper()}{dry} ({self.reason()})"
        )
        return "\n".join([head] + ["  " + c.line() for c in self.checks])

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "active": self.active,
            "target_task": self.target_task,
            "decision": self.decision,
            "reason": self.reason(),
            "failed": self.failed,
            "deferred": self.deferred,
            "checks": [c.to_dict() for c in self.checks],
            "data": self.data,
            "config": self.config,
            "timings_ms": self.timings_ms,
            "started": self.started,
            "duration_ms": self.duration_ms,
            "persisted": self.persisted,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GateReport:
        checks = [CheckResult(**{k: v for k, v in c.items() if k != "name"}) for c in d["checks"]]
        return cls(
            candidate=d["candidate"],
            active=d.get("active"),
            target_task=d.get("target_task"),
            decision=d["decision"],
            checks=checks,
            data=list(d.get("data", [])),
            config=dict(d.get("config", {})),
            timings_ms=dict(d.get("timings_ms", {})),
            started=d.get("started", ""),
            duration_ms=float(d.get("duration_ms", 0.0)),
            persisted=bool(d.get("persisted", False)),
        )


# ---------------------------------------------------------------------------------------- shadow
class ShadowRunner:
    """Runs the candidate beside the active model on live observations; never serves its actions.

    Call ``step(obs, task)`` for each live observation (own sessions, so the production runtime's
    latency is untouched), then ``checks()``: action divergence on tasks the active model already
    serves (the target task is expected to change and is only reported), candidate outputs finite
    and in bounds, and the candidate's p99 latency against the budget and the active model's.
    """

    def __init__(
        self,
        candidate_onnx: bytes,
        active_onnx: bytes,
        candidate_tasks: Sequence[str],
        active_tasks: Sequence[str],
        config: GateConfig | None = None,
        target_task: str | None = None,
    ):
        self.config = config or GateConfig()
        self.candidate = OnnxPolicy(candidate_onnx, self.config.intra_op_threads)
        self.active = OnnxPolicy(active_onnx, self.config.intra_op_threads)
        self.candidate_tasks, self.active_tasks = list(candidate_tasks), list(active_tasks)
        self.target_task = target_task
        self.candidate_id: str | None = None
        self._div: dict[str, list[float]] = {}
        self._lat_c: list[float] = []
        self._lat_a: list[float] = []
        self._bad = 0
        self._oob = 0
        self._warm = False
        self.steps = 0

    @property
    def done(self) -> bool:
        return self.steps >= self.config.shadow_steps

    def step(self, obs: npt.ArrayLike, task: str) -> npt.NDArray[np.float32]:
        """Run both models on one observation; returns the candidate's action (for logging only)."""
        x = np.asarray(obs, dtype=np.float32).reshape(1, -1)
        hc = self.candidate.head(self.candidate_tasks, task)
        if hc is None:
            raise ValueError(
                f"shadow observation for task {task!r}, which the candidate has no head for "
                f"(tasks {self.candidate_tasks})"
            )
        ha = self.active.head(self.active_tasks, task)
        if not self._warm:  # first runs of a fresh session allocate; keep them out of the timings
            for _ in range(3):
                self.candidate.session.run(None, self.candidate.feeds(x, hc))
                if ha is not None:
                    self.active.session.run(None, self.active.feeds(x, ha))
            self._warm = True
        t0 = time.perf_counter_ns()
        ac: npt.NDArray[np.float32] = self.candidate.session.run(None, self.candidate.feeds(x, hc))[0][0]
        t1 = time.perf_counter_ns()
        self._lat_c.append((t1 - t0) / 1e6)
        if ha is not None:
            t0 = time.perf_counter_ns()
            aa = self.active.session.run(None, self.active.feeds(x, ha))[0][0]
            self._lat_a.append((time.perf_counter_ns() - t0) / 1e6)
            if np.isfinite(ac).all():
                self._div.setdefault(task, []).append(float(np.sqrt(np.mean((ac - aa) ** 2))))
        if not np.isfinite(ac).all():
            self._bad += 1
        else:
            lo, hi = _bounds(self.config, ac.shape[-1])
            if np.any(ac < lo - self.config.bounds_slack) or np.any(ac > hi + self.config.bounds_slack):
                self._oob += 1
        self.steps += 1
        return ac

    def run(self, source: Iterable[tuple[npt.ArrayLike, str]], steps: int | None = None) -> int:
        """Feed up to ``steps`` (default: config.shadow_steps) (obs, task) pairs from ``source``."""
        limit = self.config.shadow_steps if steps is None else steps
        n = 0
        for obs, task in source:
            if n >= limit:
                break
            self.step(obs, task)
            n += 1
        return n

    def checks(self) -> list[CheckResult]:
        cfg = self.config
        out = [
            CheckResult(
                "shadow_steps", self.steps >= cfg.shadow_steps, self.steps, cfg.shadow_steps, data="live observations"
            )
        ]
        rate = (self._bad + self._oob) / max(self.steps, 1)
        out.append(
            CheckResult(
                "shadow_outputs",
                self._bad == 0 and rate <= cfg.max_out_of_bounds_rate_perturbed,
                rate,
                cfg.max_out_of_bounds_rate_perturbed,
                detail={"non_finite": self._bad, "out_of_bounds": self._oob, "steps": self.steps},
                data="live observations",
            )
        )
        guarded = {t: v for t, v in self._div.items() if t != self.target_task}
        allv = [x for v in guarded.values() for x in v]
        mean_div = float(np.mean(allv)) if allv else 0.0
        detail = {
            t: {"steps": len(v), "mean": float(np.mean(v)), "p95": float(np.percentile(v, 95))}
            for t, v in self._div.items()
        }
        out.append(
            CheckResult(
                "shadow_divergence",
                bool(mean_div <= cfg.shadow_max_mean_divergence),
                mean_div,
                cfg.shadow_max_mean_divergence,
                detail={"per_task": detail, "target_excluded": self.target_task},
                data="RMS action difference candidate vs active, live observations",
            )
        )
        pc = np.percentile(self._lat_c, [50, 99]) if self._lat_c else np.array([np.nan, np.nan])
        pa = np.percentile(self._lat_a, [50, 99]) if self._lat_a else None
        # Measured interleaved: a spike that hits both models alike is the machine, not the candidate.
        within = bool(pc[1] <= cfg.latency_budget_ms)
        ratio50 = None
        ok = within
        if pa is not None and pa[0] > 0:
            ratio50 = float(pc[0] / pa[0])
            ok = ratio50 <= cfg.shadow_max_latency_ratio and (within or pc[1] <= pa[1] * cfg.shadow_max_latency_ratio)
        out.append(
            CheckResult(
                "shadow_latency",
                bool(ok),
                float(pc[1]),
                cfg.latency_budget_ms,
                detail={
                    "candidate_p50_ms": float(pc[0]),
                    "candidate_p99_ms": float(pc[1]),
                    "active_p50_ms": None if pa is None else float(pa[0]),
                    "active_p99_ms": None if pa is None else float(pa[1]),
                    "p50_ratio": ratio50,
                    "max_ratio": cfg.shadow_max_latency_ratio,
                    "rule": "p50 ratio <= max_ratio and (p99 <= budget or p99 <= active p99 * max_ratio)",
                },
                data="single-observation latency on live observations",
            )
        )
        return out


def _bounds(cfg: GateConfig, act_dim: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    out: list[npt.NDArray[np.float32]] = []
    for name in ("action_low", "action_high"):
        v = np.atleast_1d(np.asarray(getattr(cfg, name), np.float32))
        if v.size not in (1, act_dim):
            raise ValueError(f"gate config {name} has {v.size} values; the actions have {act_dim} dimensions")
        out.append(np.broadcast_to(v, (act_dim,)))
    return out[0], out[1]


# ---------------------------------------------------------------------------------------- gate
class SafetyGate:
    """Evaluates candidates against the active version and records the decision in the registry."""

    def __init__(self, registry: ModelRegistry, config: GateConfig | Mapping[str, Any] | None = None):
        self.registry = registry
        self.config = config if isinstance(config, GateConfig) else GateConfig.from_dict(config)

    def shadow_runner(self, candidate: str, target_task: str | None = None) -> ShadowRunner:
        """A ShadowRunner for ``candidate`` beside the currently active version."""
        active = self.registry.active()
        if active is None:
            raise RegistryError("shadow stage needs an active version to compare against")
        cinfo, ainfo = self.registry.info(candidate), self.registry.info(active)
        cbytes = self.registry.read_onnx(candidate)
        abytes, _ = self.registry.load_for_serving(active)
        runner = ShadowRunner(
            cbytes, abytes, cinfo.tasks, ainfo.tasks, self.config, target_task or cinfo.target_task or cinfo.tasks[-1]
        )
        runner.candidate_id = candidate
        return runner

    def evaluate(
        self,
        candidate: str,
        suites: Mapping[str, RegressionSuite] | Sequence[RegressionSuite],
        target_task: str | None = None,
        *,
        episodes: EpisodeRunner | None = None,
        shadow_source: Iterable[tuple[npt.ArrayLike, str]] | None = None,
        decide: bool = True,
        progress: bool = False,
        should_stop: Callable[[], bool] | None = None,
    ) -> GateReport:
        """Run every check on ``candidate`` vs the active version and (with ``decide``) persist the verdict.

        ``suites``: held-out regression data per task. ``target_task``: the task the update is
        for (default: the candidate's recorded target, else its last task). ``episodes``: a simulator's
        episode runner; with it, a candidate that passes the offline checks (which may reject but
        never approve alone then; a BC or out-of-bounds finding short of
        ``offline_reject_factor`` x its threshold is deferred to the closed loop) must also pass
        the paired closed-loop test on every task. ``shadow_source``: (obs, task) pairs for the shadow stage when
        config.shadow_steps > 0; without it a passing candidate stays a candidate with decision
        'pending_shadow' until ``conclude_shadow``. ``should_stop``: polled between stages and
        between closed-loop episodes; when it returns True, GateCancelled is raised and nothing is
        recorded.
        """
        t_start = time.perf_counter()

        def stop_point(stage: str) -> None:
            if should_stop is not None and should_stop():
                raise GateCancelled(f"evaluation of {candidate} stopped before {stage}; nothing recorded")

        started = _utcnow()
        cfg = self.config
        timings: dict[str, float] = {}
        suites = _normalise_suites(suites)
        cinfo = self.registry.info(candidate)
        if decide and cinfo.decision != "candidate":
            raise RegistryError(
                f"{candidate} was already decided ({cinfo.decision!r}); use decide=False to re-run checks"
            )
        target = target_task or cinfo.target_task or cinfo.tasks[-1]
        active_id = self.registry.active()
        checks: list[CheckResult] = []

        def timed(name: str) -> _Timer:
            return _Timer(timings, name)

        # ---- load: the candidate must be intact and loadable; the active model must be servable
        with timed("load"):
            cand = act = None
            try:
                cbytes = self.registry.read_onnx(candidate, verify=True)
                cand = OnnxPolicy(cbytes, cfg.intra_op_threads)
                checks.append(
                    CheckResult(
                        "integrity",
                        True,
                        cinfo.onnx_sha256[:16],
                        "sha256 recorded at registration",
                        data=f"{candidate}/model.onnx",
                    )
                )
            except Exception as exc:  # noqa: BLE001 - any load failure is a rejection with its reason
                checks.append(
                    CheckResult(
                        "integrity",
                        False,
                        f"{type(exc).__name__}: {exc}"[:500],
                        "loads in onnxruntime with matching sha256",
                        data=f"{candidate}/model.onnx",
                    )
                )
            ainfo = None
            if active_id is not None:
                ainfo = self.registry.info(active_id)
                abytes, _ = self.registry.load_for_serving(active_id)  # a corrupted production model is an error
                act = OnnxPolicy(abytes, cfg.intra_op_threads)
        data = [s.describe() for s in suites.values()]
        if cand is None:
            return self._finish(candidate, active_id, target, checks, data, timings, started, t_start, decide)

        def guarded(kind: str, fn: Callable[[], list[CheckResult]]) -> list[CheckResult]:
            """Fail closed: a check that cannot run (the candidate errors in onnxruntime, the
            simulator breaks) is a failed check carrying the error, never a crash or a pass."""
            stop_point(kind)
            with timed(kind):
                try:
                    return fn()
                except GateCancelled:
                    raise
                except Exception as exc:  # noqa: BLE001
                    log.warning("gate %s: %s check raised %s", candidate, kind, exc)
                    return [
                        CheckResult(
                            kind,
                            False,
                            f"{type(exc).__name__}: {exc}"[:500],
                            "runs without error",
                            detail={"error": True},
                        )
                    ]

        # ---- signature and head order
        checks += guarded("signature", lambda: self._signature_checks(cand, cinfo, act, ainfo, suites))
        # ---- outputs on the suites, nominal and perturbed; BC error for regression/improvement
        mse: dict[str, dict[str, Any]] = {}

        def outputs() -> list[CheckResult]:
            out_checks, m = self._output_checks(cand, cinfo, act, ainfo, suites, target)
            mse.update(m)
            return out_checks

        out_checks = guarded("outputs", outputs)
        checks += out_checks
        if all(c.kind != "outputs" for c in out_checks):  # regression needs the outputs
            checks += guarded("regression", lambda: self._regression_checks(cinfo, ainfo, suites, target, mse))
        # ---- latency
        checks += guarded("latency", lambda: [self._latency_check(cand, act, suites)])
        # ---- closed loop: only for a candidate the cheap offline stage did not already reject
        if episodes is not None:
            checks = [self._defer(c) for c in checks]
            if all(c.passed for c in checks):
                abytes_cl = self.registry.read_onnx(ainfo.id) if ainfo is not None else None
                checks += guarded(
                    "closed_loop",
                    lambda: self._closed_loop_checks(
                        episodes,
                        cbytes,
                        cinfo,
                        abytes_cl,
                        ainfo,
                        target,
                        progress,
                        stop_point,
                        mse,
                        {c.task for c in checks if c.deferred and c.task},
                    ),
                )
            else:
                timings["closed_loop"] = 0.0  # skipped: already rejected offline

        # ---- shadow stage
        if cfg.shadow_steps > 0 and all(c.passed for c in checks):
            if act is None or ainfo is None:
                checks.append(
                    CheckResult(
                        "shadow_steps", True, 0, cfg.shadow_steps, detail={"skipped": "no active version to shadow"}
                    )
                )
            elif shadow_source is not None:

                def shadow() -> list[CheckResult]:
                    runner = ShadowRunner(cbytes, abytes, cinfo.tasks, ainfo.tasks, cfg, target)
                    runner.run(shadow_source)
                    return runner.checks()

                checks += guarded("shadow", shadow)
            else:
                rep = GateReport(
                    candidate,
                    active_id,
                    target,
                    "pending_shadow",
                    checks,
                    data,
                    cfg.to_dict(),
                    timings,
                    started,
                    (time.perf_counter() - t_start) * 1e3,
                    persisted=decide,
                )
                if decide:
                    self.registry.save_report(candidate, "gate-offline", rep.to_dict())
                return rep
        return self._finish(candidate, active_id, target, checks, data, timings, started, t_start, decide)

    def conclude_shadow(self, candidate: str, runner: ShadowRunner) -> GateReport:
        """Finish a 'pending_shadow' evaluation with the shadow checks and persist the verdict."""
        offline = [r for r in self.registry.reports(candidate) if r.get("kind") == "gate-offline"]
        if not offline:
            raise RegistryError(f"{candidate} has no offline gate report awaiting a shadow stage")
        rep = GateReport.from_dict(offline[-1])
        if runner.candidate_id not in (None, candidate):
            raise ValueError(f"this ShadowRunner ran {runner.candidate_id}, not {candidate}")
        t0 = time.perf_counter()
        checks = rep.checks + runner.checks()
        now_active = self.registry.active()
        if now_active != rep.active:
            checks.append(
                CheckResult(
                    "active_unchanged",
                    False,
                    now_active,
                    rep.active,
                    detail={"reason": "the active version changed since the offline checks; re-gate"},
                )
            )
        rep.timings_ms["shadow"] = (time.perf_counter() - t0) * 1e3
        return self._finish(
            candidate,
            rep.active,
            rep.target_task,
            checks,
            rep.data,
            rep.timings_ms,
            rep.started,
            time.perf_counter() - rep.duration_ms / 1e3,
            True,
        )

    # ------------------------------------------------------------------ checks
    def _defer(self, c: CheckResult) -> CheckResult:
        """With a simulator: a BC or out-of-bounds finding within offline_reject_factor x its
        threshold goes to the closed loop instead of rejecting; anything else is returned as is."""
        if c.kind not in _DEFERRABLE or not _is_num(c.threshold):
            return c
        limit = c.threshold * self.config.offline_reject_factor
        detail = {**c.detail, "rejects_alone_above": limit, "offline_reject_factor": self.config.offline_reject_factor}
        # over its threshold and under the gross limit (a missing or too small suite is under its
        # threshold, an infinite error is no number: both stay failures; so do non-finite outputs,
        # which the `finite` check, never deferred, rejects)
        if c.passed or not _is_num(c.value) or not c.threshold < c.value <= limit:
            return dataclasses.replace(c, detail=detail)
        return dataclasses.replace(c, passed=True, deferred=True, detail=detail)

    def _signature_checks(
        self,
        cand: OnnxPolicy,
        cinfo: VersionInfo,
        act: OnnxPolicy | None,
        ainfo: VersionInfo | None,
        suites: dict[str, RegressionSuite],
    ) -> list[CheckResult]:
        out: list[CheckResult] = []
        if act is not None and ainfo is not None:
            same = cand.signature == act.signature
            out.append(
                CheckResult(
                    "signature",
                    same,
                    "unchanged" if same else "changed",
                    "identical to active",
                    detail={} if same else {"candidate": cand.signature, "active": act.signature},
                    data=f"ONNX inputs/outputs of {cinfo.id} vs {ainfo.id}",
                )
            )
            prefix_ok = cinfo.tasks[: len(ainfo.tasks)] == ainfo.tasks
            out.append(
                CheckResult(
                    "task_heads",
                    prefix_ok,
                    cinfo.tasks,
                    ainfo.tasks,
                    detail={"rule": "candidate task order must extend the active one (head i = task i)"},
                    data="meta.json tasks",
                )
            )
        else:
            dims = {s.obs.shape[1] for s in suites.values()}, {s.action.shape[1] for s in suites.values()}
            obs_dim, act_dim = cand.metadata.get("obs_dim"), cand.metadata.get("act_dim")
            ok = (obs_dim is None or {int(obs_dim)} >= dims[0]) and (act_dim is None or {int(act_dim)} >= dims[1])
            out.append(
                CheckResult(
                    "signature",
                    bool(ok),
                    {"obs_dim": obs_dim, "act_dim": act_dim},
                    {"obs_dim": sorted(dims[0]), "act_dim": sorted(dims[1])},
                    detail={"candidate": cand.signature, "note": "no active version: checked against the suites"},
                    data="ONNX metadata vs suite shapes",
                )
            )
        meta_tasks = cand.metadata.get("tasks")
        if meta_tasks is not None:
            try:
                embedded = json.loads(meta_tasks)
            except ValueError:
                embedded = meta_tasks
            heads_ok = cand.num_heads == 1 or cand.num_heads >= len(cinfo.tasks)
            ok = embedded == cinfo.tasks and heads_ok
            out.append(
                CheckResult(
                    "onnx_metadata",
                    ok,
                    {"tasks": embedded, "num_heads": cand.num_heads},
                    {"tasks": cinfo.tasks},
                    data="ONNX metadata_props vs meta.json",
                )
            )
        return out

    def _output_checks(
        self,
        cand: OnnxPolicy,
        cinfo: VersionInfo,
        act: OnnxPolicy | None,
        ainfo: VersionInfo | None,
        suites: dict[str, RegressionSuite],
        target: str,
    ) -> tuple[list[CheckResult], dict[str, dict[str, Any]]]:
        cfg = self.config
        rng = np.random.default_rng(cfg.perturb_seed)
        # [nominal, perturbed] x [rows, non-finite, out of bounds]; active: [rows, out of bounds]
        cnt = np.zeros((2, 3), np.int64)
        acnt = np.zeros((2, 2), np.int64)
        mse: dict[str, dict[str, Any]] = {}
        per_task_bounds: dict[str, dict[str, float | None]] = {}
        missing: list[str] = []
        for task, s in suites.items():
            hc = cand.head(cinfo.tasks, task)
            if hc is None:
                missing.append(task)
                continue
            if len(s) == 0:
                mse[task] = {"samples": 0}
                continue
            lo, hi = _bounds(cfg, s.action.shape[1])
            lo, hi = lo - cfg.bounds_slack, hi + cfg.bounds_slack
            std = np.maximum(s.obs.std(0), 1e-2)
            noisy = s.obs + rng.normal(0.0, 1.0, s.obs.shape).astype(np.float32) * (cfg.perturb_scale * std)
            pc = cand.predict(s.obs, hc)
            if pc.shape != s.action.shape:
                raise ValueError(
                    f"candidate outputs {pc.shape} on suite {task!r}; the suite's actions are {s.action.shape}"
                )
            pp = cand.predict(noisy, hc)
            for k, arr in enumerate((pc, pp)):
                finite = np.isfinite(arr).all(1)
                with np.errstate(invalid="ignore"):
                    oob = finite & (np.any(arr < lo, 1) | np.any(arr > hi, 1))
                cnt[k] += (len(arr), int((~finite).sum()), int(oob.sum()))
            per_task_bounds[task] = {"max_abs_action": float(np.nanmax(np.abs(pc))) if np.isfinite(pc).any() else None}
            entry: dict[str, Any] = {
                "samples": len(s),
                "candidate": _mse(pc, s.action),
                "mean_predictor": _mse(np.broadcast_to(s.action.mean(0), s.action.shape), s.action),
            }
            if s.episodes is not None:
                entry["candidate_worst_episode"] = _worst_episode(pc, s.action, s.episodes)
            ha = act.head(ainfo.tasks, task) if act is not None and ainfo is not None else None
            if act is not None and ha is not None:
                pa = act.predict(s.obs, ha)
                entry["active"] = _mse(pa, s.action)
                if s.episodes is not None:
                    entry["active_worst_episode"] = _worst_episode(pa, s.action, s.episodes)
                for k, arr in enumerate((pa, act.predict(noisy, ha))):
                    with np.errstate(invalid="ignore"):
                        oob = ~np.isfinite(arr).all(1) | np.any(arr < lo, 1) | np.any(arr > hi, 1)
                    acnt[k] += (len(arr), int(oob.sum()))
            mse[task] = entry
        checks: list[CheckResult] = []
        if missing:
            checks.append(
                CheckResult(
                    "task_heads",
                    False,
                    missing,
                    "a head for every suite task",
                    detail={"candidate_tasks": cinfo.tasks},
                    data="suite tasks",
                )
            )
        checks.append(
            CheckResult(
                "finite",
                int(cnt[:, 1].sum()) == 0,
                int(cnt[:, 1].sum()),
                0,
                detail={
                    "nominal_rows": int(cnt[0, 0]),
                    "perturbed_rows": int(cnt[1, 0]),
                    "non_finite_nominal": int(cnt[0, 1]),
                    "non_finite_perturbed": int(cnt[1, 1]),
                },
                data="all suites, nominal and perturbed observations",
            )
        )
        bounds: dict[str, Any] = {
            "low": cfg.action_low,
            "high": cfg.action_high,
            "slack": cfg.bounds_slack,
            "rule": "rate <= active rate + limit (limit alone without an active model); non-finite rows fail",
        }
        for k, (kind, limit, data) in enumerate(
            (
                ("action_bounds", cfg.max_out_of_bounds_rate, "all suites, nominal observations"),
                (
                    "action_bounds_perturbed",
                    cfg.max_out_of_bounds_rate_perturbed,
                    f"all suites, observations + N(0, ({cfg.perturb_scale} * feature std)^2), seed {cfg.perturb_seed}",
                ),
            )
        ):
            rate = cnt[k, 2] / max(cnt[k, 0], 1)
            arate = acnt[k, 1] / acnt[k, 0] if acnt[k, 0] else None
            thr = arate + limit if arate is not None else limit
            detail = {**bounds, "rows": int(cnt[k, 0]), "out_of_bounds": int(cnt[k, 2]), "active_rate": arate}
            if k == 0:
                detail["per_task"] = per_task_bounds
            checks.append(
                CheckResult(
                    kind, bool(cnt[k, 1] == 0 and rate <= thr), float(rate), float(thr), detail=detail, data=data
                )
            )
        return checks, mse

    def _regression_checks(
        self,
        cinfo: VersionInfo,
        ainfo: VersionInfo | None,
        suites: dict[str, RegressionSuite],
        target: str,
        mse: dict[str, dict[str, Any]],
    ) -> list[CheckResult]:
        cfg = self.config
        out: list[CheckResult] = []
        active_tasks = list(ainfo.tasks) if ainfo is not None else []
        active_id = ainfo.id if ainfo is not None else None  # "active" results exist only with an active version
        guarded = [t for t in dict.fromkeys(active_tasks + list(suites)) if t != target]
        for task in guarded:
            e = mse.get(task)
            if task not in suites or e is None or e.get("samples", 0) == 0:
                if task in suites and e is None:
                    continue  # no candidate head: already failed under task_heads
                out.append(
                    CheckResult(
                        "regression",
                        not cfg.require_all_tasks,
                        None,
                        "a held-out suite",
                        task=task,
                        detail={"reason": f"no held-out data for {task!r}"},
                        data="none",
                    )
                )
                continue
            if e["samples"] < cfg.min_suite_samples:
                out.append(
                    CheckResult(
                        "regression",
                        False,
                        e["samples"],
                        cfg.min_suite_samples,
                        task=task,
                        detail={"reason": "suite too small to certify"},
                        data=f"heldout {task}",
                    )
                )
                continue
            if "active" in e:
                base, base_name = e["active"], f"active {active_id}"
            else:
                base, base_name = e["mean_predictor"], "mean-action predictor (active has no head for this task)"
            thr = base * (1 + cfg.regression_rel_tol) + cfg.regression_abs_tol
            val = e["candidate"]
            out.append(
                CheckResult(
                    "regression",
                    bool(math.isfinite(val) and val <= thr),
                    val,
                    thr,
                    task=task,
                    detail={
                        **e,
                        "baseline": base_name,
                        "rule": "cand <= base*(1+rel)+abs",
                        "rel_tol": cfg.regression_rel_tol,
                        "abs_tol": cfg.regression_abs_tol,
                    },
                    data=f"heldout {task}: {e['samples']} samples, BC MSE",
                )
            )
        e = mse.get(target)
        if target not in suites or e is None or e.get("samples", 0) == 0:
            if not (target in suites and e is None):
                out.append(
                    CheckResult(
                        "improvement",
                        False,
                        None,
                        "a held-out suite",
                        task=target,
                        detail={"reason": f"no held-out data for target task {target!r}"},
                        data="none",
                    )
                )
        elif e["samples"] < cfg.min_suite_samples:
            out.append(
                CheckResult(
                    "improvement",
                    False,
                    e["samples"],
                    cfg.min_suite_samples,
                    task=target,
                    detail={"reason": "suite too small to certify"},
                    data=f"heldout {target}",
                )
            )
        else:
            options: dict[str, float] = {"mean-action predictor": e["mean_predictor"]}
            if "active" in e:
                options[f"active {active_id}"] = e["active"]
            base_name = min(options, key=options.__getitem__)
            thr = options[base_name] * (1 - cfg.improvement_margin)
            val = e["candidate"]
            out.append(
                CheckResult(
                    "improvement",
                    bool(math.isfinite(val) and val <= thr),
                    val,
                    thr,
                    task=target,
                    detail={
                        **e,
                        "baseline": base_name,
                        "rule": "cand <= min(active, mean predictor)*(1-margin)",
                        "margin": cfg.improvement_margin,
                    },
                    data=f"heldout {target}: {e['samples']} samples, BC MSE",
                )
            )
        return out

    def _latency_check(
        self, cand: OnnxPolicy, act: OnnxPolicy | None, suites: dict[str, RegressionSuite]
    ) -> CheckResult:
        cfg = self.config
        obs = np.concatenate([s.obs[:64] for s in suites.values() if len(s)] or [np.zeros((1, 1), np.float32)])
        rows = [np.ascontiguousarray(obs[i % len(obs)][None]) for i in range(cfg.latency_samples)]
        fc = [cand.feeds(r, 0) for r in rows]
        fa = [act.feeds(r, 0) for r in rows] if act is not None else None
        # Without an active model, a fixed computation that takes as long as the candidate's median
        # call, interleaved with it, stands in for it: its tail is the machine's (preemption on a
        # loaded computer, which hits calls in proportion to their duration), not a model's.
        ref_w = np.full((obs.shape[1], 64), 0.01, np.float32)
        reps = 1
        if act is None:
            t0 = time.perf_counter_ns()
            for i in range(100):
                cand.session.run(None, fc[i % len(fc)])
            t_cand = (time.perf_counter_ns() - t0) / 100
            t0 = time.perf_counter_ns()
            for i in range(100):
                np.dot(rows[i % len(rows)], ref_w)
            reps = max(1, round(t_cand / max((time.perf_counter_ns() - t0) / 100, 1.0)))
        best_c, best_a, p50c = math.inf, math.inf, math.inf
        for _ in range(cfg.latency_rounds):
            lc, la = np.empty(len(rows)), np.empty(len(rows))
            for i in range(len(rows)):
                t0 = time.perf_counter_ns()
                cand.session.run(None, fc[i])
                lc[i] = time.perf_counter_ns() - t0
                t0 = time.perf_counter_ns()
                if act is not None and fa is not None:
                    act.session.run(None, fa[i])
                else:
                    for _ in range(reps):
                        np.dot(rows[i], ref_w)
                la[i] = time.perf_counter_ns() - t0
            p99 = float(np.percentile(lc, 99)) / 1e6
            if p99 < best_c:
                best_c, p50c = p99, float(np.percentile(lc, 50)) / 1e6
            best_a = min(best_a, float(np.percentile(la, 99)) / 1e6)
        detail: dict[str, Any] = {
            "candidate_p50_ms": p50c,
            "candidate_p99_ms": best_c,
            "samples": cfg.latency_samples,
            "rounds": cfg.latency_rounds,
            "threads": cfg.intra_op_threads,
            "statistic": "best p99 over rounds (candidate and active interleaved)",
        }
        ok = best_c <= cfg.latency_budget_ms
        rule = "p99 <= budget"
        if fa is not None:
            detail.update(active_p99_ms=best_a, ratio_vs_active=best_c / best_a if best_a > 0 else None)
            # Over budget while production, measured interleaved on the same rows, is just as slow
            # means the machine is loaded, not that the candidate is slower: judge it relative to
            # production then (the median must still fit the budget).
            rule = "p99 <= budget, or (p50 <= budget and p99 <= active p99 * shadow_max_latency_ratio)"
            ok = ok or (p50c <= cfg.latency_budget_ms and best_c <= best_a * cfg.shadow_max_latency_ratio)
        else:
            detail.update(reference_p99_ms=best_a)
            rule = (
                "p99 <= budget, or (p50 <= budget and p99 - reference p99 <= budget), reference: a fixed "
                "small matmul interleaved with the candidate (the machine's tail latency)"
            )
            ok = ok or (p50c <= cfg.latency_budget_ms and best_c - best_a <= cfg.latency_budget_ms)
        detail["rule"] = rule
        return CheckResult(
            "latency_p99",
            bool(ok),
            best_c,
            cfg.latency_budget_ms,
            detail=detail,
            data="single observations drawn from the suites",
        )

    def _closed_loop_checks(
        self,
        runner: EpisodeRunner,
        cbytes: bytes,
        cinfo: VersionInfo,
        abytes: bytes | None,
        ainfo: VersionInfo | None,
        target: str,
        progress: bool,
        stop_point: Callable[[str], None] = lambda stage: None,
        mse: Mapping[str, Mapping[str, Any]] | None = None,
        deferred: set[str] | None = None,
    ) -> list[CheckResult]:
        """One sequential test per task the candidate serves (or, with ``closed_loop_max_tasks``, the
        target, every task with a ``deferred`` offline finding and, up to the cap, the earlier tasks
        most at risk by ``mse``), all tasks' episodes interleaved on the
        runner's workers. Outcomes are fed to each test in seed order (never in completion order,
        which depends on episode length and so on the outcome), and a task stops at its decision."""
        cfg = self.config
        tasks = list(cinfo.tasks)
        compared = {t for t in tasks if t != target and ainfo is not None and abytes is not None and t in ainfo.tasks}
        out: list[CheckResult] = []
        if 0 < cfg.closed_loop_max_tasks < len(compared):
            must = compared & (deferred or set())  # an offline finding left to the closed loop is judged there
            picked = must | at_risk(compared - must, mse or {}, max(0, cfg.closed_loop_max_tasks - len(must)))
            out.append(
                CheckResult(
                    "closed_loop_tasks",
                    True,
                    len(picked),
                    cfg.closed_loop_max_tasks,
                    detail={
                        "rule": "earlier tasks with a deferred offline finding, then those with the largest "
                        "held-out BC error ratio (candidate / active), get paired episodes; the others are "
                        "judged by the offline stage alone",
                        "closed_loop": sorted(picked),
                        "offline_only": sorted(compared - picked),
                    },
                    data=f"{len(compared)} earlier tasks",
                )
            )
            tasks = [t for t in tasks if t in picked or t not in compared]
            compared = picked
        k = len(tasks)

        def spec(task: str) -> SequentialSpec:
            tol = cfg.closed_loop_tolerance if task in compared else 1.0 - cfg.closed_loop_min_success
            return SequentialSpec(
                tolerance=tol,
                safe_below=tol - (cfg.closed_loop_tolerance - cfg.closed_loop_safe_drop),
                regressed_above=tol + (cfg.closed_loop_regressed_drop - cfg.closed_loop_tolerance),
                alpha=cfg.closed_loop_alpha / k,  # Bonferroni: any one task's false alarm rejects
                beta=cfg.closed_loop_beta,
                max_pairs=cfg.closed_loop_max_pairs,
            )

        tests = {t: PairedTest(spec(t)) for t in tasks}
        models: dict[str, dict[str, bytes]] = {
            t: {"candidate": cbytes, "active": abytes} if t in compared and abytes else {"candidate": cbytes}
            for t in tasks
        }
        submitted = dict.fromkeys(tasks, 0)
        fed = dict.fromkeys(tasks, 0)
        futures: dict[tuple[str, int], Future[dict[str, bool]]] = {}
        limit = runner.workers + 1  # one queued job per worker keeps it busy; more is waste at a decision
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=k, desc=f"closed-loop gate {cinfo.id}", unit="task")

        finished: set[str] = set()

        def drop_task(task: str) -> None:
            for key in [key for key in futures if key[0] == task]:
                runner.cancel(futures.pop(key))

        try:
            while any(t.decision is None for t in tests.values()):
                # top up: the task with the fewest episodes asked for first
                while sum(1 for f in futures.values() if not f.done()) < limit:
                    open_tasks = [
                        t for t in tasks if tests[t].decision is None and submitted[t] < cfg.closed_loop_max_pairs
                    ]
                    if not open_tasks:
                        break
                    task = min(open_tasks, key=submitted.__getitem__)
                    seed = cfg.closed_loop_seed + submitted[task]
                    futures[(task, submitted[task])] = runner.submit(models[task], task, seed)
                    submitted[task] += 1
                progressed = False
                for task in tasks:
                    test = tests[task]
                    while test.decision is None and (task, fed[task]) in futures and futures[(task, fed[task])].done():
                        got = futures.pop((task, fed[task])).result()
                        fed[task] += 1
                        progressed = True
                        test.update(got.get("active", True), got["candidate"])
                    if test.decision is not None and task not in finished:
                        finished.add(task)
                        drop_task(task)
                        if bar is not None:
                            bar.update(1)
                if not progressed:
                    pending = [f for f in futures.values() if not f.done()]
                    if not pending:
                        raise RuntimeError("closed-loop test stalled: no episodes pending and no decision")
                    wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                stop_point(f"closed-loop episode {sum(fed.values()) + 1}")
        finally:
            for f in futures.values():
                runner.cancel(f)
            if bar is not None:
                bar.close()
        for task in tasks:
            t = tests[task]
            detail = t.to_dict()
            detail["candidate_success"] = (t.both + t.candidate_only) / t.n if t.n else None
            if task in compared:
                detail["active_success"] = (t.both + t.active_only) / t.n if t.n else None
                detail["rule"] = "drop in success (active - candidate, paired) <= tolerance: sequential test"
                kind, value, thr = "closed_loop", t.drop, cfg.closed_loop_tolerance
                data = (
                    f"{t.n} paired episodes vs {ainfo.id if ainfo else None}, variation seeds {cfg.closed_loop_seed}+"
                )
            else:
                detail["rule"] = "candidate success >= min_success: sequential test"
                kind, value, thr = "closed_loop_success", 1.0 - t.drop, cfg.closed_loop_min_success
                data = f"{t.n} candidate episodes, variation seeds {cfg.closed_loop_seed}+"
            out.append(CheckResult(kind, t.decision == "approve", value, thr, task=task, detail=detail, data=data))
        return out

    # ------------------------------------------------------------------ decision
    def _finish(
        self,
        candidate: str,
        active_id: str | None,
        target: str | None,
        checks: list[CheckResult],
        data: list[dict[str, Any]],
        timings: dict[str, float],
        started: str,
        t_start: float,
        decide: bool,
    ) -> GateReport:
        decision = "approved" if checks and all(c.passed for c in checks) else "rejected"
        rep = GateReport(
            candidate,
            active_id,
            target,
            decision,
            checks,
            data,
            self.config.to_dict(),
            timings,
            started,
            (time.perf_counter() - t_start) * 1e3,
            persisted=decide,
        )
        if decide:
            self.registry.set_decision(candidate, decision, rep.reason(), rep.to_dict())
            log.info("gate %s: %s", candidate, rep.reason())
        return rep


class _Timer:
    def __init__(self, sink: dict[str, float], name: str):
        self.sink, self.name = sink, name

    def __enter__(self) -> _Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        self.sink[self.name] = self.sink.get(self.name, 0.0) + (time.perf_counter() - self.t0) * 1e3
        return False


def at_risk(tasks: Iterable[str], mse: Mapping[str, Mapping[str, Any]], k: int) -> set[str]:
    """The ``k`` tasks whose held-out BC error rose most against the active model (candidate / active
    MSE; a task without that evidence counts as most at risk), ties broken by name."""

    def ratio(task: str) -> float:
        e = mse.get(task) or {}
        cand, act = e.get("candidate"), e.get("active")
        if not (isinstance(cand, (int, float)) and isinstance(act, (int, float)) and math.isfinite(cand)):
            return math.inf
        return float(cand) / max(float(act), 1e-12)

    return set(sorted(tasks, key=lambda t: (-ratio(t), t))[:k])


def _mse(pred: npt.NDArray[np.floating[Any]], target: npt.NDArray[np.floating[Any]]) -> float:
    with np.errstate(over="ignore", invalid="ignore"):
        v = float(np.mean((pred.astype(np.float64) - target) ** 2))
    return v if math.isfinite(v) else float("inf")


def _worst_episode(
    pred: npt.NDArray[np.float32], target: npt.NDArray[np.float32], episodes: npt.NDArray[Any]
) -> dict[str, Any]:
    with np.errstate(over="ignore", invalid="ignore"):
        err = np.mean((pred.astype(np.float64) - target) ** 2, axis=1)
    ids, inv = np.unique(episodes, return_inverse=True)
    per = np.bincount(inv, weights=np.nan_to_num(err, nan=np.inf, posinf=np.inf)) / np.bincount(inv)
    i = int(np.argmax(per))
    return {"episode": _jsonable(ids[i]), "mse": float(per[i])}


def _utcnow() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="milliseconds")
