"""The paired sequential test: its error rates hold on simulated outcomes, and it stops early on clear cases."""

from __future__ import annotations

import random

import pytest

from lifelong_ros.safety.sequential import PairedTest, SequentialSpec


def run(p_active: float, p_candidate: float, spec: SequentialSpec, trials: int, seed: int = 0, paired: bool = True):
    """Fraction rejected and mean pairs used; ``paired``: both models fail on the same hard variations."""
    rng = random.Random(seed)
    rejected, pairs = 0, 0
    for _ in range(trials):
        t = PairedTest(spec)
        while t.decision is None:
            u = rng.random()
            t.update(u < p_active, (u if paired else rng.random()) < p_candidate)
        rejected += t.decision == "reject"
        pairs += t.n
    return rejected / trials, pairs / trials


def test_a_safe_candidate_is_rarely_rejected_and_a_regressed_one_is_caught():
    spec = SequentialSpec(tolerance=0.1, safe_below=0.05, regressed_above=0.2, alpha=0.05, beta=0.05, max_pairs=60)
    false_rejection, _ = run(0.9, 0.9, spec, 600)
    assert false_rejection <= 0.05
    slight, _ = run(1.0, 0.95, spec, 600)  # within 0.05 of active
    assert slight <= 0.06
    detection, _ = run(0.9, 0.6, spec, 600)  # a drop of 0.3
    assert detection >= 0.95
    drop_02, _ = run(1.0, 0.8, spec, 600)  # right at tolerance + indifference
    assert drop_02 >= 0.9


def test_clear_cases_stop_long_before_the_cap():
    spec = SequentialSpec(max_pairs=50)
    t = PairedTest(spec)
    while t.update(True, True) is None:
        pass
    assert t.decision == "approve" and t.decided_by == "sequential" and t.n <= 20
    t = PairedTest(spec)
    while t.update(True, False) is None:
        pass
    assert t.decision == "reject" and t.decided_by == "sequential" and t.n <= 6
    assert t.to_dict()["evidence_of_regression"] >= 1 / spec.alpha


def test_at_the_cap_the_estimate_decides():
    spec = SequentialSpec(max_pairs=4)
    t = PairedTest(spec)
    for a, c in ((True, False), (False, True), (True, True), (True, True)):
        t.update(a, c)
    assert t.decision == "approve" and t.decided_by == "cap" and t.drop == 0.0
    t = PairedTest(spec)
    for a, c in ((True, False), (True, True), (False, False), (True, True)):
        t.update(a, c)
    assert t.decision == "reject" and t.decided_by == "cap" and t.drop == pytest.approx(0.25)
    assert t.update(False, True) == "reject" and t.n == 4  # decided: further outcomes change nothing


def test_a_floor_is_the_same_test_against_a_model_that_always_succeeds():
    spec = SequentialSpec(tolerance=0.2, safe_below=0.15, regressed_above=0.3, max_pairs=50)  # success >= 0.8
    good, _ = run(1.0, 0.97, spec, 300)
    bad, _ = run(1.0, 0.5, spec, 300)
    assert good <= 0.05 and bad >= 0.95


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tolerance": -0.1}, "tolerance=-0.1"),
        ({"alpha": 0.0}, "alpha=0.0"),
        ({"beta": 1.5}, "beta=1.5"),
        ({"max_pairs": 0}, "max_pairs=0"),
        ({"tolerance": 0.3}, "tolerance=0.3.*<= tolerance <= regressed_above"),
        ({"safe_below": -1.0}, "safe_below=-1.0"),
        ({"min_pairs": 9, "max_pairs": 5}, "min_pairs=9"),
    ],
)
def test_bad_settings_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SequentialSpec(**kwargs)
