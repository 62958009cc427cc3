"""Post-promotion watchdog: rolls the policy back by itself when online signals go bad.

The gate judges a candidate on held-out data; the watchdog covers what only shows on the robot
(actions outside their limits, tasks failing) and undoes the promotion without waiting for a human.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from lifelong_ros.safety.registry import ModelRegistry, RegistryError, Swappable

log = logging.getLogger(__name__)


@dataclass
class WatchdogConfig:
    """Online thresholds, judged over sliding windows once enough samples are in."""

    action_low: float | list[float] = -1.0
    action_high: float | list[float] = 1.0
    bounds_slack: float = 0.0  # tolerance beyond the bounds before an action counts as out of bounds
    action_window: int = 200
    min_actions: int = 50
    max_out_of_bounds_rate: float = 0.05  # non-finite actions count as out of bounds
    episode_window: int = 20
    min_episodes: int = 5
    max_failure_rate: float = 0.5
    revoke: bool = True  # the version rolled back from is never served again

    def __post_init__(self) -> None:
        for name in ("action_window", "min_actions", "episode_window", "min_episodes"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"watchdog config {name}={v!r}: expected an integer >= 1")
        if self.min_actions > self.action_window or self.min_episodes > self.episode_window:
            raise ValueError(
                f"watchdog config: min_actions/min_episodes ({self.min_actions}/{self.min_episodes}) "
                f"must not exceed their windows ({self.action_window}/{self.episode_window})"
            )
        for name in ("max_out_of_bounds_rate", "max_failure_rate"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1:
                raise ValueError(f"watchdog config {name}={v!r}: expected a rate in [0, 1]")
        if not isinstance(self.bounds_slack, (int, float)) or not self.bounds_slack >= 0:
            raise ValueError(f"watchdog config bounds_slack={self.bounds_slack!r}: expected a number >= 0")
        # A NaN bound would make every comparison False, i.e. silently accept every action.
        bounds = []
        for name in ("action_low", "action_high"):
            v = getattr(self, name)
            try:
                b = np.asarray(v, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                b = np.empty(0)
            if b.size == 0 or np.isnan(b).any() or isinstance(v, bool):
                raise ValueError(
                    f"watchdog config {name}={v!r}: expected a number or a non-empty list of numbers (no NaN)"
                )
            bounds.append(b)
        lo, hi = bounds
        if lo.size != hi.size and 1 not in (lo.size, hi.size):
            raise ValueError(f"watchdog config action_low has {lo.size} values and action_high {hi.size}")
        if np.any(lo > hi):
            raise ValueError(f"watchdog config action_low={self.action_low!r} exceeds action_high={self.action_high!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> WatchdogConfig:
        """From a mapping; accepts a ROS 2 params layout and a ``watchdog:`` section."""
        from lifelong_ros.safety.gate import _unwrap

        d = dict(_unwrap(d or {}, "watchdog"))
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown watchdog config key(s) {unknown}; expected some of {sorted(names)}")
        return cls(**d)


@dataclass
class WatchdogEvent:
    """A tripped threshold and what was done about it."""

    version: str
    signal: str  # out_of_bounds_rate | failure_rate
    value: float
    threshold: float
    window: int
    at: str
    rolled_back_to: str | None = None
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Watchdog:
    """Watches the active version's online behaviour and rolls back (revoking it) on a breach.

    ``observe_action`` / ``observe_episode`` are cheap (a deque append) and may be called from the
    serving loop; the rollback runs in the call that crosses a threshold, exactly once per breach.
    Samples tagged with a version other than the watched one (produced just before a swap) are
    ignored. After a rollback the watchdog re-arms on the new active version with empty windows.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        runtime: Swappable | None = None,
        config: WatchdogConfig | Mapping[str, Any] | None = None,
        on_event: Callable[[WatchdogEvent], None] | None = None,
    ):
        self.registry = registry
        self.runtime = runtime
        self.config = config if isinstance(config, WatchdogConfig) else WatchdogConfig.from_dict(config)
        self.on_event = on_event
        self.events: list[WatchdogEvent] = []
        self._lock = threading.Lock()
        self._actions: deque[bool] = deque(maxlen=self.config.action_window)
        self._episodes: deque[bool] = deque(maxlen=self.config.episode_window)
        self._version: str | None = None
        self.arm()

    @property
    def version(self) -> str | None:
        """The version being watched (None when nothing is active or after a failed rollback)."""
        return self._version

    def arm(self, version: str | None = None) -> None:
        """Start watching ``version`` (default: the registry's active one) with empty windows."""
        with self._lock:
            self._version = version if version is not None else self.registry.active()
            self._actions.clear()
            self._episodes.clear()

    def observe_action(self, action: npt.ArrayLike, version: str | None = None) -> WatchdogEvent | None:
        """Record one served action (or a batch [N, A]); returns an event when this call tripped it.

        An action with a NaN or infinite element counts as out of bounds (NaN compares False with
        any bound, so finiteness is checked on its own), and so does an empty one."""
        a = np.asarray(action, dtype=np.float64)
        if a.size == 0:
            bad = np.ones(1, dtype=bool)  # nothing to actuate: a malformed action
        else:
            a = a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)
            slack = self.config.bounds_slack
            lo = np.broadcast_to(np.asarray(self.config.action_low, np.float64), a.shape[-1:]) - slack
            hi = np.broadcast_to(np.asarray(self.config.action_high, np.float64), a.shape[-1:]) + slack
            with np.errstate(invalid="ignore"):
                bad = ~np.isfinite(a).all(1) | np.any(a < lo, 1) | np.any(a > hi, 1)
        with self._lock:
            if self._version is None or (version is not None and version != self._version):
                return None
            self._actions.extend(bool(b) for b in bad)
            n = len(self._actions)
            if n < self.config.min_actions:
                return None
            rate = sum(self._actions) / n
            if rate <= self.config.max_out_of_bounds_rate:
                return None
            tripped, self._version = self._version, None
        return self._trip(tripped, "out_of_bounds_rate", rate, self.config.max_out_of_bounds_rate, n)

    def observe_episode(
        self, success: bool, version: str | None = None, task: str | None = None
    ) -> WatchdogEvent | None:
        """Record one finished task attempt; returns an event when this call tripped the failure rate."""
        with self._lock:
            if self._version is None or (version is not None and version != self._version):
                return None
            self._episodes.append(not bool(success))
            n = len(self._episodes)
            if n < self.config.min_episodes:
                return None
            rate = sum(self._episodes) / n
            if rate <= self.config.max_failure_rate:
                return None
            tripped, self._version = self._version, None
        return self._trip(tripped, "failure_rate", rate, self.config.max_failure_rate, n, {"last_task": task})

    def status(self) -> dict[str, Any]:
        with self._lock:
            na, ne = len(self._actions), len(self._episodes)
            return {
                "version": self._version,
                "actions": na,
                "out_of_bounds_rate": sum(self._actions) / na if na else None,
                "episodes": ne,
                "failure_rate": sum(self._episodes) / ne if ne else None,
                "events": len(self.events),
            }

    def _trip(
        self,
        version: str,
        signal: str,
        value: float,
        threshold: float,
        window: int,
        detail: dict[str, Any] | None = None,
    ) -> WatchdogEvent:
        ev = WatchdogEvent(
            version,
            signal,
            float(value),
            float(threshold),
            window,
            datetime.now(UTC).isoformat(timespec="milliseconds"),
            detail=dict(detail or {}),
        )
        reason = f"watchdog: {signal} {value:.3g} > {threshold:.3g} over the last {window}"
        log.error("%s on %s; rolling back", reason, version)
        try:
            tr = self.registry.rollback(runtime=self.runtime, reason=reason, revoke=self.config.revoke)
            ev.rolled_back_to = tr.to_version
        except (RegistryError, RuntimeError, OSError) as exc:
            ev.error = f"{type(exc).__name__}: {exc}"
            log.error("watchdog could not roll back from %s: %s", version, ev.error)
        try:
            self.registry.save_report(
                version, "watchdog", {**ev.to_dict(), "reason": reason, "config": dataclasses.asdict(self.config)}
            )
        except (RegistryError, OSError):
            log.exception("could not persist the watchdog report for %s", version)
        self.events.append(ev)
        if ev.rolled_back_to is not None:
            self.arm(ev.rolled_back_to)
        if self.on_event is not None:
            self.on_event(ev)
        return ev
