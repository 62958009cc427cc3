"""Replay samplers: which candidate records a training batch draws, as vectorised numpy.

Each sampler maps a candidate set (record ids in insertion order, optionally grouped by task) to
``n`` positions with replacement, with no per-record Python loop, so sampling stays O(n).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

SamplerName = Literal["uniform", "task_balanced", "recent"]
SAMPLERS: tuple[str, ...] = ("uniform", "task_balanced", "recent")


def uniform(n_candidates: int, n: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Positions drawn uniformly with replacement."""
    return rng.integers(0, n_candidates, size=n)


def task_balanced(
    group_counts: npt.NDArray[np.int64], n: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(group, position within group) pairs: a task uniformly, then one of its records uniformly."""
    g = rng.integers(0, group_counts.shape[0], size=n)
    within = (rng.random(n) * group_counts[g]).astype(np.int64)
    return g, within


def recent(
    n_candidates: int, n: int, rng: np.random.Generator, half_life: float | None = None
) -> npt.NDArray[np.int64]:
    """Positions biased to the newest: P(age) ∝ 2^(-age / half_life), age 0 = newest candidate.

    Drawn by inverting the CDF of the exponential truncated to the candidate count. The default
    half-life is a tenth of the candidates (at least one record).
    """
    if half_life is None:
        half_life = max(1.0, n_candidates / 10.0)
    if not half_life > 0:
        raise ValueError(f"half_life={half_life!r}: expected a positive number of records")
    lam = np.log(2.0) / half_life
    u = rng.random(n)
    mass = -np.expm1(-lam * n_candidates)  # 1 - exp(-lam * N)
    age: npt.NDArray[np.int64] = np.floor(-np.log1p(-u * mass) / lam).astype(np.int64)
    np.clip(age, 0, n_candidates - 1, out=age)
    return (n_candidates - 1) - age
