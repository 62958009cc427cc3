"""Shared pieces of the continual benchmarks: each method's registry options, the sequence runner, JSON assembly.

Every method runs through the same loop (lifelong_ros.learning.trainer) with the same step budget, and is built
by the strategy registry the learner's recipes use (lifelong_ros.learning.strategies), so the numbers differ
only by the consolidation plugins; naive and joint are run next to each of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn

from lifelong_ros.learning import metrics
from lifelong_ros.learning.strategies import STRATEGIES, StrategyOptions, build_plugins, strategy_options
from lifelong_ros.learning.trainer import ContinualTrainer, Experience, LossFn, MemoryBuffer, TrainOptions

METHODS = tuple(STRATEGIES)
# The benchmarks estimate the Fisher on 512 samples (the recipes' default is 1024), set for every method with EWC.
BENCH_DEFAULTS: dict[str, Any] = {"fisher_samples": 512}


def method_options(tuned: Mapping[str, Mapping[str, Any]]) -> dict[str, StrategyOptions]:
    """Every method's registry options: BENCH_DEFAULTS where the method has the key, then its ``tuned`` values."""
    out = {}
    for method in METHODS:
        keys = STRATEGIES[method].options.field_names()
        out[method] = strategy_options(
            method, {**{k: v for k, v in BENCH_DEFAULTS.items() if k in keys}, **tuned.get(method, {})}
        )
    return out


def run_sequence(
    model: nn.Module,
    loss_fn: LossFn,
    experiences: Sequence[Experience],
    evaluate: Callable[[nn.Module, int], float],
    method: str,
    strategy: StrategyOptions,
    options: TrainOptions,
    memory_per_task: int,
    evaluate_future: bool = True,
    on_cell: Callable[[], None] | None = None,
) -> tuple[np.ndarray, list[float] | None]:
    """Train ``model`` through ``experiences`` with ``method`` (registry options ``strategy``); return (R,
    initial accuracies b). Replaying methods replay from an in-memory MemoryBuffer of ``memory_per_task``
    samples per finished task.

    R[i][j] = evaluate(model, j) after experience i. With ``evaluate_future`` False, cells j > i are
    NaN (never evaluated) and b is None (no FWT).
    """
    t = len(experiences)
    baseline = [evaluate(model, j) for j in range(t)] if evaluate_future else None
    spec = STRATEGIES[method]
    memory = MemoryBuffer(memory_per_task, seed=options.seed) if spec.uses_replay else None
    trainer = ContinualTrainer(model, loss_fn, build_plugins(method, strategy, memory), options)
    r = np.full((t, t), np.nan)
    for i, exp in enumerate(experiences):
        data = Experience.concat(list(experiences[: i + 1]), name=f"joint<={i}") if spec.trains_on_all_tasks else exp
        trainer.train_exp(data)
        for j in range(t if evaluate_future else i + 1):
            r[i, j] = evaluate(model, j)
            if on_cell is not None:
                on_cell()
    return r, baseline


def method_table(per_method_runs: dict[str, list[dict]]) -> dict:
    """Aggregate each method's runs; add the gaps to the joint upper bound and the naive baseline."""
    table = {name: metrics.aggregate(runs) for name, runs in per_method_runs.items()}
    joint = table.get("joint")
    naive = table.get("naive")
    for row in table.values():
        if joint is not None:
            row["joint_avg_acc"] = joint["avg_acc"]["mean"]
            row["gap_to_joint"] = joint["avg_acc"]["mean"] - row["avg_acc"]["mean"]
        if naive is not None:
            row["naive_avg_acc"] = naive["avg_acc"]["mean"]
            row["naive_forgetting"] = naive["forgetting"]["mean"] if naive["forgetting"] else None
    return table


def acceptance(table: dict, method: str = "ewc_replay", gap: float = 0.03, max_forgetting: float = 0.03) -> dict:
    """Issue 4's bar: ``method`` within ``gap`` of joint, forgetting <= ``max_forgetting``, naive forgets."""
    if method not in table or "joint" not in table or "naive" not in table:
        return {}
    row = table[method]
    f = row["forgetting"]["mean"] if row["forgetting"] else math.nan
    naive_f = table["naive"]["forgetting"]["mean"] if table["naive"]["forgetting"] else math.nan
    return {
        f"{method}_gap_to_joint": row["gap_to_joint"],
        f"{method}_within_{gap:g}_of_joint": bool(row["gap_to_joint"] <= gap),
        f"{method}_forgetting": f,
        f"{method}_forgetting_le_{max_forgetting:g}": bool(f <= max_forgetting),
        "naive_forgetting": naive_f,
        # "clear": at least 5 points, and at least 5x what the method keeps
        "naive_forgets_clearly": bool(naive_f >= max(0.05, 5 * f)),
    }


def seeded(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def options_json(per_method: Mapping[str, StrategyOptions], memory_per_task: int) -> dict:
    """What the JSON reports as the methods' options: the registry's names, plus the replay memory size."""
    return {"strategies": {m: asdict(o) for m, o in per_method.items()}, "memory_per_task": memory_per_task}
