"""Shared pieces of the continual benchmarks: the method table, the sequence runner, JSON assembly.

Every method runs through the same loop (lifelong_ros.learning.trainer) with the same step budget, so the
numbers differ only by the consolidation plugins; naive and joint are run next to each of them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from lifelong_ros.learning import metrics
from lifelong_ros.learning.trainer import (
    EWC,
    ContinualTrainer,
    DefaultStrategyOptions,
    Experience,
    L2Anchor,
    LossFn,
    MemoryBuffer,
    OnlineEWC,
    Plugin,
    Replay,
    SynapticIntelligence,
    TrainOptions,
    default_strategy,
)

METHODS = ("naive", "joint", "l2", "ewc", "online_ewc", "si", "replay", "ewc_replay")


@dataclass(frozen=True)
class HParams:
    """One hyper-parameter per method (tuned per benchmark, reported in the JSON)."""

    l2_lambda: float = 1.0
    ewc_lambda: float = 100.0
    online_ewc_lambda: float = 100.0
    online_ewc_decay: float = 1.0
    si_c: float = 1.0
    replay_ratio: float | str = 0.5
    ewc_replay_lambda: float = 100.0
    memory_per_task: int = 100
    fisher_samples: int = 512


def build_plugins(method: str, hp: HParams, seed: int) -> list[Plugin]:
    """Plugins for ``method``; naive and joint have none (joint differs by the data it trains on)."""
    if method in ("naive", "joint"):
        return []
    if method == "l2":
        return [L2Anchor(hp.l2_lambda)]
    if method == "ewc":
        return [EWC(hp.ewc_lambda, hp.fisher_samples)]
    if method == "online_ewc":
        return [OnlineEWC(hp.online_ewc_lambda, hp.online_ewc_decay, hp.fisher_samples)]
    if method == "si":
        return [SynapticIntelligence(hp.si_c)]
    memory = MemoryBuffer(hp.memory_per_task, seed=seed)
    if method == "replay":
        return [Replay(memory, hp.replay_ratio), memory]
    if method == "ewc_replay":
        opts = DefaultStrategyOptions(hp.ewc_replay_lambda, hp.online_ewc_decay, hp.fisher_samples, hp.replay_ratio)
        return default_strategy(memory, opts) + [memory]
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def run_sequence(
    model: nn.Module,
    loss_fn: LossFn,
    experiences: Sequence[Experience],
    evaluate: Callable[[nn.Module, int], float],
    method: str,
    hp: HParams,
    options: TrainOptions,
    evaluate_future: bool = True,
    on_cell: Callable[[], None] | None = None,
) -> tuple[np.ndarray, list[float] | None]:
    """Train ``model`` through ``experiences`` with ``method``; return (R, initial accuracies b).

    R[i][j] = evaluate(model, j) after experience i. With ``evaluate_future`` False, cells j > i are
    NaN (never evaluated) and b is None (no FWT).
    """
    t = len(experiences)
    baseline = [evaluate(model, j) for j in range(t)] if evaluate_future else None
    trainer = ContinualTrainer(model, loss_fn, build_plugins(method, hp, options.seed), options)
    r = np.full((t, t), np.nan)
    for i, exp in enumerate(experiences):
        data = Experience.concat(list(experiences[: i + 1]), name=f"joint<={i}") if method == "joint" else exp
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
    for name, row in table.items():
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


def hparams_json(hp: HParams) -> dict:
    return asdict(hp)
