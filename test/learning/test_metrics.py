"""Continual-learning metrics against values computed by hand on a small accuracy matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lifelong_ros.learning import metrics

# R[i][j]: accuracy on task j after training task i. Task 0 peaks after task 1 (0.9), so forgetting
# (from the best) and BWT (from the diagonal) differ; task 1 improves later (negative forgetting).
R = [
    [0.7, 0.1, 0.2],
    [0.9, 0.8, 0.3],
    [0.6, 0.85, 0.95],
]
B = [0.1, 0.2, 0.25]


def test_average_accuracy_is_the_mean_of_the_last_row():
    assert metrics.average_accuracy(R) == pytest.approx((0.6 + 0.85 + 0.95) / 3)


def test_backward_transfer_matches_hand_computation():
    # ((0.6 - 0.7) + (0.85 - 0.8)) / 2
    assert metrics.backward_transfer(R) == pytest.approx(-0.025)


def test_forward_transfer_uses_the_baseline_vector():
    # ((R[0][1] - b1) + (R[1][2] - b2)) / 2 = ((0.1 - 0.2) + (0.3 - 0.25)) / 2
    assert metrics.forward_transfer(R, B) == pytest.approx(-0.025)
    assert metrics.forward_transfer(R, [0, 0, 0]) == pytest.approx(0.2)


def test_forgetting_is_max_over_earlier_evaluations_minus_final():
    per_task = metrics.forgetting_per_task(R)
    # task 0: max(0.7, 0.9) - 0.6 = 0.3 ; task 1: max(0.8) - 0.85 = -0.05
    np.testing.assert_allclose(per_task, [0.3, -0.05])
    assert metrics.forgetting(R) == pytest.approx(0.125)
    assert metrics.forgetting(R) != pytest.approx(-metrics.backward_transfer(R))


def test_single_task_has_undefined_transfer_and_forgetting():
    assert metrics.average_accuracy([[0.5]]) == 0.5
    assert math.isnan(metrics.backward_transfer([[0.5]]))
    assert math.isnan(metrics.forgetting([[0.5]]))
    s = metrics.summarize([[0.5]], [0.1])
    assert s["bwt"] is None and s["forgetting"] is None and s["fwt"] is None


def test_unevaluated_upper_triangle_is_allowed_except_for_fwt():
    r = np.array(R, dtype=float)
    r[0, 1] = r[0, 2] = r[1, 2] = np.nan
    s = metrics.summarize(r)
    assert s["avg_acc"] == pytest.approx(0.8) and s["bwt"] == pytest.approx(-0.025) and s["fwt"] is None
    assert s["matrix"][0][1] is None
    with pytest.raises(ValueError, match=r"FWT needs R\[0, 1\]"):
        metrics.forward_transfer(r, B)


def test_missing_required_cell_and_bad_shapes_are_reported():
    r = np.array(R, dtype=float)
    r[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"forgetting needs R\[1, 0\]"):
        metrics.forgetting(r)
    with pytest.raises(ValueError, match=r"square.*\(2, 3\)"):
        metrics.average_accuracy([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match="one value per task"):
        metrics.forward_transfer(R, [0.1, 0.2])


def test_aggregate_reports_mean_and_std_over_seeds():
    other = [[0.5, 0.1, 0.2], [0.5, 0.6, 0.3], [0.4, 0.6, 0.8]]
    agg = metrics.aggregate([metrics.summarize(R, B), metrics.summarize(other, B)])
    a1, a2 = metrics.average_accuracy(R), metrics.average_accuracy(other)
    assert agg["seeds"] == 2
    assert agg["avg_acc"]["mean"] == pytest.approx((a1 + a2) / 2)
    assert agg["avg_acc"]["std"] == pytest.approx(abs(a1 - a2) / 2)
    assert agg["matrix"][2][0] == pytest.approx(0.5) and agg["matrix_std"][2][0] == pytest.approx(0.1)


def test_heatmap_is_written_as_png(tmp_path):
    r = np.array(R, dtype=float)
    r[0, 2] = np.nan
    path = metrics.plot_matrix(r, tmp_path / "plots" / "r.png", ["reach", "push", "pick"], title="test")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    with pytest.raises(ValueError, match="need 3 task names"):
        metrics.plot_matrix(R, tmp_path / "x.png", ["a"])
