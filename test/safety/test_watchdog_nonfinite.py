"""The watchdog counts a non-finite (or empty) served action as out of bounds, so a model whose
outputs the policy server had to guard is rolled back; NaN bounds are refused (they would make
every comparison False and accept every action)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from lifelong_ros.safety.watchdog import Watchdog, WatchdogConfig


class FakeRegistry:
    def __init__(self) -> None:
        self.rollbacks: list[dict] = []
        self.reports: list[tuple] = []

    def active(self) -> str:
        return "v0002"

    def rollback(self, **kw):
        self.rollbacks.append(kw)
        return SimpleNamespace(to_version="v0001")

    def save_report(self, version, kind, report):
        self.reports.append((version, kind))


def watchdog(**cfg) -> tuple[Watchdog, FakeRegistry]:
    reg = FakeRegistry()
    base = {"min_actions": 4, "action_window": 4, "max_out_of_bounds_rate": 0.5}
    return Watchdog(reg, None, WatchdogConfig(**{**base, **cfg})), reg  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        [np.nan, 0.0, 0.0, 0.0],
        [0.0, np.inf, 0.0, 0.0],
        [-np.inf, 0.0, 0.0, 0.0],
        [np.nan] * 4,
        np.float32(np.nan),
        [],
    ],
)
def test_non_finite_or_empty_actions_count_as_out_of_bounds(bad):
    wd, _ = watchdog(max_out_of_bounds_rate=1.0)
    wd.observe_action(np.asarray(bad, np.float32), "v0002")
    wd.observe_action(np.zeros(4, np.float32), "v0002")
    assert wd.status()["out_of_bounds_rate"] == 0.5


def test_a_model_emitting_nan_is_rolled_back_and_revoked():
    wd, reg = watchdog()
    events = [wd.observe_action(np.full(4, np.nan, np.float32), "v0002") for _ in range(4)]
    ev = events[-1]
    assert events[:3] == [None, None, None] and ev is not None
    assert ev.signal == "out_of_bounds_rate" and ev.value == 1.0 and ev.rolled_back_to == "v0001"
    assert reg.rollbacks[0]["revoke"] is True and reg.reports == [("v0002", "watchdog")]


def test_nan_in_a_batch_row_counts_that_row():
    wd, _ = watchdog(max_out_of_bounds_rate=1.0)
    wd.observe_action(np.array([[0, 0, 0, 0], [0, np.nan, 0, 0]], np.float32), "v0002")
    assert wd.status()["actions"] == 2 and wd.status()["out_of_bounds_rate"] == 0.5


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"action_low": float("nan")}, "action_low"),
        ({"action_high": [1.0, float("nan")]}, "action_high"),
        ({"action_low": []}, "action_low"),
        ({"action_low": "x"}, "action_low"),
        ({"action_low": 2.0, "action_high": 1.0}, "exceeds"),
        ({"action_low": [-1, -1], "action_high": [1, 1, 1]}, "2 values"),
    ],
)
def test_nan_or_inconsistent_bounds_are_refused(cfg, message):
    with pytest.raises(ValueError, match=message):
        WatchdogConfig(**cfg)
