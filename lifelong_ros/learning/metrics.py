"""Continual-learning metrics with Avalanche's names: accuracy matrix, average accuracy, BWT, FWT, forgetting.

Every method is scored by the same functions on the same matrix R, where R[i][j] is the accuracy
(or closed-loop success) on task j after training on tasks 0..i; plus a heatmap of R.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "aggregate",
    "as_matrix",
    "average_accuracy",
    "backward_transfer",
    "forgetting",
    "forgetting_per_task",
    "forward_transfer",
    "plot_matrix",
    "summarize",
]


def as_matrix(r) -> np.ndarray:
    """Validate a square accuracy matrix (NaN allowed for cells never evaluated)."""
    m = np.asarray(r, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be square T x T with T >= 1, got shape {m.shape}")
    return m


def _need(m: np.ndarray, cells: list[tuple[int, int]], what: str) -> None:
    missing = [c for c in cells if not math.isfinite(m[c])]
    if missing:
        raise ValueError(
            f"{what} needs R{list(missing[0])} (and {len(missing) - 1} more cells), but it is {m[missing[0]]}"
        )


def average_accuracy(r) -> float:
    """Mean accuracy over all tasks after the last experience: mean_j R[T-1][j]."""
    m = as_matrix(r)
    t = m.shape[0]
    _need(m, [(t - 1, j) for j in range(t)], "average accuracy")
    return float(m[-1].mean())


def backward_transfer(r) -> float:
    """BWT (Lopez-Paz & Ranzato 2017): mean_{j<T-1} (R[T-1][j] - R[j][j]); negative = forgetting."""
    m = as_matrix(r)
    t = m.shape[0]
    if t < 2:
        return float("nan")
    _need(m, [(t - 1, j) for j in range(t - 1)] + [(j, j) for j in range(t - 1)], "BWT")
    return float(np.mean([m[t - 1, j] - m[j, j] for j in range(t - 1)]))


def forward_transfer(r, baseline: Sequence[float]) -> float:
    """FWT (GEM): mean_{j>=1} (R[j-1][j] - b[j]); b[j] = accuracy on task j of the initial model."""
    m = as_matrix(r)
    t = m.shape[0]
    b = np.asarray(baseline, dtype=np.float64)
    if b.shape != (t,):
        raise ValueError(f"FWT baseline must have one value per task ({t}), got shape {b.shape}")
    if t < 2:
        return float("nan")
    _need(m, [(j - 1, j) for j in range(1, t)], "FWT")
    return float(np.mean([m[j - 1, j] - b[j] for j in range(1, t)]))


def forgetting_per_task(r) -> np.ndarray:
    """f_j = max_{j <= l < T-1} R[l][j] - R[T-1][j] for j < T-1 (Chaudhry et al. 2018).

    The max runs over the evaluations after task j was learned and before the last one, so
    forgetting is measured from the best accuracy the task ever had. Length T-1.
    """
    m = as_matrix(r)
    t = m.shape[0]
    out = []
    for j in range(t - 1):
        _need(m, [(i, j) for i in range(j, t)], "forgetting")
        out.append(float(np.max(m[j : t - 1, j]) - m[t - 1, j]))
    return np.asarray(out)


def forgetting(r) -> float:
    """Average forgetting over tasks 0..T-2 (NaN for a single task)."""
    f = forgetting_per_task(r)
    return float(f.mean()) if f.size else float("nan")


def _json_float(v: float) -> float | None:
    return None if not math.isfinite(v) else float(v)


def summarize(r, baseline: Sequence[float] | None = None) -> dict:
    """All metrics of one run as JSON-ready values (None where undefined, e.g. FWT without a baseline)."""
    m = as_matrix(r)
    out = {
        "avg_acc": average_accuracy(m),
        "bwt": _json_float(backward_transfer(m)),
        "forgetting": _json_float(forgetting(m)),
        "fwt": _json_float(forward_transfer(m, baseline)) if baseline is not None else None,
        "matrix": [[_json_float(v) for v in row] for row in m],
    }
    return out


def aggregate(runs: Sequence[Mapping]) -> dict:
    """Mean and std over seeds of ``summarize`` outputs: scalars -> {"mean", "std"}, matrix -> mean + std."""
    if not runs:
        raise ValueError("aggregate needs at least one run")
    out: dict = {"seeds": len(runs)}
    for key in ("avg_acc", "bwt", "forgetting", "fwt"):
        vals = [r[key] for r in runs if r.get(key) is not None]
        out[key] = (
            {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "runs": [float(v) for v in vals]}
            if vals
            else None
        )
    mats = np.asarray(
        [[[np.nan if v is None else v for v in row] for row in r["matrix"]] for r in runs], dtype=np.float64
    )
    with warnings.catch_warnings():  # all-NaN cells (never evaluated) stay NaN without a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(mats, axis=0)
        std = np.nanstd(mats, axis=0)
    out["matrix"] = [[_json_float(v) for v in row] for row in mean]
    out["matrix_std"] = [[_json_float(v) for v in row] for row in std]
    return out


def plot_matrix(
    r,
    path: str | os.PathLike,
    task_names: Sequence[str] | None = None,
    title: str = "",
    label: str = "accuracy",
) -> Path:
    """Heatmap of R (rows: after training task i, columns: evaluated on task j) saved as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    m = as_matrix(r)
    t = m.shape[0]
    names = list(task_names) if task_names is not None else [str(i) for i in range(t)]
    if len(names) != t:
        raise ValueError(f"need {t} task names, got {len(names)}: {names}")
    fig, ax = plt.subplots(figsize=(1.2 * t + 2.5, 1.0 * t + 1.8))
    im = ax.imshow(np.ma.masked_invalid(m), vmin=0.0, vmax=1.0, cmap="viridis")
    for i in range(t):
        for j in range(t):
            if math.isfinite(m[i, j]):
                ax.text(
                    j,
                    i,
                    f"{m[i, j]:.2f}",
                    ha="center",
                    va="center",
                    color="white" if m[i, j] < 0.6 else "black",
                    fontsize=8,
                )
    ax.set_xticks(range(t), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(t), names, fontsize=8)
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task i")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label=label)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
