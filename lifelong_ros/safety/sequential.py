"""Sequential test on paired closed-loop outcomes: is the candidate worse than the active model by more
than a tolerance, decided with as few episodes as the evidence allows.

Each pair is one held-out variation run by both models: x = active_success - candidate_success in
{-1, 0, 1}, and d = E[x] is the drop in success rate. The test separates "safe" (d <= safe_below) from
"regressed" (d >= regressed_above), an indifference zone around the tolerance, with two anytime-valid tests by
betting (Waudby-Smith & Ramdas, "Estimating means of bounded random variables by betting", 2023):
a wealth process that grows only when its hypothesis is false. Unlike a Wald SPRT on discordant
pairs, whose likelihood ratio depends on the unknown discordance rate, they hold for any
distribution of x, so "both models succeed" pairs (most of them for a good candidate) count as
evidence. By Ville's inequality a safe candidate is rejected with probability at most ``alpha``
and a regressed one approved with probability at most ``beta``, however early the test stops;
at ``max_pairs`` the estimate against the tolerance decides (the report says which rule decided).

Torch-free and simulator-free: the safety gate feeds it outcomes; where they come from is not its concern.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

_BET_CAP = 0.9  # fraction of the largest bet that keeps the wealth positive (never bet it all)


@dataclass(frozen=True)
class SequentialSpec:
    """What to decide and with which error rates; a bad value is a ValueError naming it."""

    tolerance: float = 0.1  # largest allowed drop in success rate (absolute): decides at the cap
    safe_below: float = 0.05  # a drop this small must pass (with probability >= 1 - alpha)
    regressed_above: float = 0.2  # a drop this large must fail (with probability >= 1 - beta)
    alpha: float = 0.05  # P(reject) for a safe candidate
    beta: float = 0.05  # P(approve) for a regressed candidate
    max_pairs: int = 50  # cap: then the estimate decides (drop <= tolerance: approve)
    min_pairs: int = 1  # never decide before this many pairs

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"sequential test {name}={getattr(self, name)!r}: expected {expected}")

        for name in ("tolerance", "safe_below", "regressed_above"):
            v = getattr(self, name)
            need(_num(v) and -1 < v < 1, name, "a drop in success rate in (-1, 1)")
        need(
            self.safe_below < self.regressed_above and self.safe_below <= self.tolerance <= self.regressed_above,
            "tolerance",
            f"safe_below ({self.safe_below}) <= tolerance <= regressed_above ({self.regressed_above}) "
            "and safe_below < regressed_above",
        )
        for name in ("alpha", "beta"):
            v = getattr(self, name)
            need(_num(v) and 0 < v < 1, name, "a probability in (0, 1)")
        for name in ("max_pairs", "min_pairs"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name, "an integer >= 1")
        need(self.min_pairs <= self.max_pairs, "min_pairs", f"<= max_pairs ({self.max_pairs})")


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class _Bettor:
    """Wealth of a bettor against H: E[y] <= 0 with y >= -floor; predictable bets (aGRAPA)."""

    floor: float  # y >= -floor
    prior_mean: float  # pseudo-observation that sets the first bet
    wealth: float = 1.0
    n: int = 0
    total: float = 0.0
    sq: float = 0.0

    def bet(self) -> float:
        k = self.n + 1
        mean = (self.total + self.prior_mean) / k
        var = (self.sq + 0.25) / k - mean * mean
        lam = mean / (max(var, 1e-6) + mean * mean) if mean > 0 else 0.0
        return min(max(lam, 0.0), _BET_CAP / self.floor)

    def update(self, y: float) -> None:
        self.wealth *= 1.0 + self.bet() * y
        self.n += 1
        self.total += y
        self.sq += y * y


@dataclass
class PairedTest:
    """Feed paired outcomes in a fixed order (the seed order), stop at the first decision.

    ``update(active_success, candidate_success)`` returns "approve", "reject" or None (go on).
    A one-sample test against a floor is the same test against an active model that always
    succeeds: ``update(True, success)`` with tolerance = 1 - floor.
    """

    spec: SequentialSpec = field(default_factory=SequentialSpec)
    decision: str | None = None
    decided_by: str | None = None  # "sequential" (a wealth crossed its bound) | "cap" (max_pairs reached)
    n: int = 0
    active_only: int = 0  # pairs the active model won (candidate failed)
    candidate_only: int = 0  # pairs the candidate won
    both: int = 0
    neither: int = 0

    def __post_init__(self) -> None:
        lo, hi = self.spec.safe_below, self.spec.regressed_above
        gap = max(hi - lo, 1e-3)
        # against "safe": y = x - lo grows with a drop; y >= -1 - lo
        self._against_safe = _Bettor(floor=1.0 + lo, prior_mean=gap)
        # against "regressed": y = hi - x grows with no drop; y >= hi - 1
        self._against_regressed = _Bettor(floor=1.0 - hi, prior_mean=gap)

    @property
    def drop(self) -> float:
        """Estimated drop in success rate, active - candidate."""
        return (self.active_only - self.candidate_only) / self.n if self.n else 0.0

    def update(self, active_success: bool, candidate_success: bool) -> str | None:
        if self.decision is not None:
            return self.decision
        a, c = bool(active_success), bool(candidate_success)
        self.n += 1
        if a and c:
            self.both += 1
        elif a:
            self.active_only += 1
        elif c:
            self.candidate_only += 1
        else:
            self.neither += 1
        x = float(a) - float(c)
        self._against_safe.update(x - self.spec.safe_below)
        self._against_regressed.update(self.spec.regressed_above - x)
        if self.n >= self.spec.min_pairs:
            if self._against_safe.wealth >= 1.0 / self.spec.alpha:
                self.decision, self.decided_by = "reject", "sequential"
            elif self._against_regressed.wealth >= 1.0 / self.spec.beta:
                self.decision, self.decided_by = "approve", "sequential"
        if self.decision is None and self.n >= self.spec.max_pairs:
            self.decision = "approve" if self.drop <= self.spec.tolerance else "reject"
            self.decided_by = "cap"
        return self.decision

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "decided_by": self.decided_by,
            "pairs": self.n,
            "drop": self.drop,
            "active_only": self.active_only,
            "candidate_only": self.candidate_only,
            "both": self.both,
            "neither": self.neither,
            "evidence_of_regression": self._against_safe.wealth,
            "evidence_of_safety": self._against_regressed.wealth,
            "bounds": {"reject_at": 1.0 / self.spec.alpha, "approve_at": 1.0 / self.spec.beta},
            "spec": {
                "tolerance": self.spec.tolerance,
                "safe_below": self.spec.safe_below,
                "regressed_above": self.spec.regressed_above,
                "alpha": self.spec.alpha,
                "beta": self.spec.beta,
                "max_pairs": self.spec.max_pairs,
            },
        }
