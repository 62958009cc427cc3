"""Retention: which records to evict so the experience store stays inside its budget.

Pure numpy over the store's in-memory index, so the policy is testable without a database.
Demonstrations and held-out episodes are *protected*: never evicted here; when the budget
cannot be met without them the caller gets a `RetentionOverflow` to raise or flag.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

PerTaskMode = Literal["reservoir", "recent"]
OverflowAction = Literal["raise", "flag"]


@dataclass(frozen=True)
class RetentionPolicy:
    """Budget and eviction rules. ``None`` disables a rule; all rules may be combined.

    - ``max_records`` / ``max_bytes``: global budget (bytes of the database's used pages). When
      exceeded, evictable records are removed task-balanced: every task is capped at the same
      per-task count (water-filling), each task choosing victims by ``per_task_mode``.
    - ``per_task_cap``: evictable records kept per task. ``per_task_mode="reservoir"`` keeps a
      uniform random sample of everything the task ever recorded (bottom-k on a random key
      drawn at insert, the batch equivalent of reservoir sampling); ``"recent"`` keeps the newest.
    - ``max_age_s``: recent window: evictable records older than the newest stamp minus this.
    - ``slack``: when a cap triggers, evict down to ``(1 - slack) * cap`` so that the O(n)
      selection runs once per ``slack * cap`` appends instead of on every append.
    - ``on_protected_overflow``: what happens when protected records (demonstrations, held-out
      episodes) alone exceed the global budget: ``"raise"`` rejects the append with
      `BudgetExceeded`; ``"flag"`` stores it, evicts every evictable record it can and marks the
      store ``over_budget`` in ``stats()`` (and logs a warning).
    """

    max_records: int | None = None
    max_bytes: int | None = None
    per_task_cap: int | None = None
    per_task_mode: PerTaskMode = "reservoir"
    max_age_s: float | None = None
    slack: float = 0.01
    on_protected_overflow: OverflowAction = "raise"

    def __post_init__(self) -> None:
        for name in ("max_records", "max_bytes", "per_task_cap"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 0):
                raise ValueError(f"RetentionPolicy.{name}={value!r}: expected a non-negative int or None")
        if self.max_age_s is not None and not self.max_age_s > 0:
            raise ValueError(f"RetentionPolicy.max_age_s={self.max_age_s!r}: expected a positive number or None")
        if self.per_task_mode not in ("reservoir", "recent"):
            raise ValueError(f"RetentionPolicy.per_task_mode={self.per_task_mode!r}: expected 'reservoir' or 'recent'")
        if self.on_protected_overflow not in ("raise", "flag"):
            raise ValueError(
                f"RetentionPolicy.on_protected_overflow={self.on_protected_overflow!r}: expected 'raise' or 'flag'"
            )
        if not 0.0 <= self.slack < 0.5:
            raise ValueError(f"RetentionPolicy.slack={self.slack!r}: expected 0 <= slack < 0.5")

    @property
    def active(self) -> bool:
        return not (
            self.max_records is None and self.max_bytes is None and self.per_task_cap is None and self.max_age_s is None
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> RetentionPolicy:
        if not d:
            return cls()
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"unknown retention keys {sorted(unknown)}; expected some of {sorted(cls.__dataclass_fields__)}"
            )
        return cls(**d)


@dataclass(frozen=True)
class RetentionOverflow:
    """The budget cannot be met without evicting protected records."""

    budget_records: int
    protected_records: int
    demonstration_records: int
    heldout_records: int

    def message(self, path: str = "") -> str:
        where = f" of store {path}" if path else ""
        return (
            f"retention budget{where} is {self.budget_records} records but {self.protected_records} protected "
            f"records would remain ({self.demonstration_records} demonstration, {self.heldout_records} in held-out "
            f"episodes); protected records are never evicted automatically: raise the budget or delete episodes "
            f"explicitly with ExperienceStore.delete_episodes()"
        )


def _cap_victims(ids: npt.NDArray[np.int64], priority: npt.NDArray[np.float64], keep: int) -> npt.NDArray[np.int64]:
    """Ids of all but the ``keep`` highest-priority entries."""
    n = ids.shape[0]
    if n <= keep:
        return ids[:0]
    if keep <= 0:
        return ids
    cut = np.argpartition(priority, n - keep)[: n - keep]
    return ids[cut]


def _water_fill(counts: npt.NDArray[np.intp], total: int) -> int:
    """Largest per-task cap c with sum(min(counts, c)) <= total."""
    if counts.sum() <= total:
        return int(counts.max(initial=0))
    lo, hi = 0, int(counts.max())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if np.minimum(counts, mid).sum() <= total:
            lo = mid
        else:
            hi = mid - 1
    return lo


def select_evictions(
    policy: RetentionPolicy,
    ids: npt.NDArray[np.int64],
    task: npt.NDArray[np.int32],
    protected: npt.NDArray[np.bool_],
    is_demo: npt.NDArray[np.bool_],
    rkey: npt.NDArray[np.float64],
    stamp_ns: npt.NDArray[np.int64],
    bytes_per_record: float,
) -> tuple[npt.NDArray[np.int64], RetentionOverflow | None]:
    """Return (sorted ids to evict, overflow or None) for the records described by the arrays.

    ``ids`` increase with insertion order; ``protected`` marks demonstrations and held-out records.
    """
    n = ids.shape[0]
    keep = np.ones(n, dtype=bool)
    evictable = ~protected
    prio_all = rkey if policy.per_task_mode == "reservoir" else ids.astype(np.float64)

    if policy.max_age_s is not None and n:
        # Evict a little past the window (slack) so the next trigger is slack * window away.
        cutoff = int(stamp_ns.max()) - int(policy.max_age_s * (1.0 - policy.slack) * 1e9)
        keep &= ~(evictable & (stamp_ns < cutoff))

    def apply_cap(cap_for_task: Callable[[int], int]) -> None:
        cand_pos = np.flatnonzero(keep & evictable)
        cand_task = task[cand_pos]
        order = np.argsort(cand_task, kind="stable")
        sorted_pos = cand_pos[order]
        uniq, starts, counts = np.unique(cand_task[order], return_index=True, return_counts=True)
        for t, s, c in zip(uniq.tolist(), starts.tolist(), counts.tolist()):
            cap = cap_for_task(t)
            if c > cap:
                seg = sorted_pos[s : s + c]
                keep[_cap_victims(seg, prio_all[seg], cap)] = False

    if policy.per_task_cap is not None:
        cap = policy.per_task_cap
        counts = np.bincount(task[keep & evictable], minlength=int(task.max(initial=0)) + 1)
        if (counts > cap).any():
            target = int(cap - np.floor(cap * policy.slack)) if cap > 0 else 0
            apply_cap(lambda t: target)

    overflow = None
    budget: int | None = None
    if policy.max_records is not None:
        budget = policy.max_records
    if policy.max_bytes is not None:
        by_bytes = int(policy.max_bytes // max(bytes_per_record, 1.0))
        budget = by_bytes if budget is None else min(budget, by_bytes)
    if budget is not None and int(keep.sum()) > budget:
        n_protected = int(protected.sum())
        if n_protected > budget:
            overflow = RetentionOverflow(
                budget_records=budget,
                protected_records=n_protected,
                demonstration_records=int(is_demo.sum()),
                heldout_records=int((protected & ~is_demo).sum()),
            )
            keep &= protected
        else:
            target_total = int(budget - np.floor(budget * policy.slack)) - n_protected
            cand = keep & evictable
            counts = np.bincount(task[cand], minlength=int(task.max(initial=0)) + 1)
            c = _water_fill(counts, max(target_total, 0))
            apply_cap(lambda t: c)

    return np.sort(ids[~keep]), overflow
