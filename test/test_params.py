"""The one parameter schema (lifelong_ros/params.py) as a checker of whole params files: what it
refuses, what it lets through (another package's nodes in the same file, unbounded floats), and the
per-node check of parameters given to a running node."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifelong_ros import params as P
from lifelong_ros.config import ConfigError


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_another_packages_node_sections_are_left_to_that_package(tmp_path):
    path = _file(
        tmp_path,
        "controller_manager:\n  ros__parameters:\n    update_rate: 500\n"
        "/**/learner:\n  ros__parameters:\n    default_steps: 300\n",
    )
    assert set(P.check_params_file(path)) == {"/**", "controller_manager", "learner"}


def test_unbounded_action_limits_are_valid_but_nan_is_not(tmp_path):
    ok = _file(tmp_path, "/**/policy_server:\n  ros__parameters:\n    action_low: [-.inf, -1]\n")
    P.check_params_file(ok)
    bad = _file(tmp_path, "/**/policy_server:\n  ros__parameters:\n    action_high: [.nan]\n")
    with pytest.raises(ConfigError, match="action_high=nan"):
        P.check_params_file(bad)


@pytest.mark.parametrize(
    "text, message",
    [
        ("/**:\n  ros__parameters:\n    spec: 5\n", r"\[/\*\*\]: spec=5: expected a string"),
        ("/**:\n  ros__parameters:\n    tasks: reach-v3\n", "tasks='reach-v3': expected a list"),
        ("/**/learner:\n  ros__parameters:\n    nice: 25\n", "nice=25: expected an integer >= 0 and <= 19"),
        (
            "/**/policy_server:\n  ros__parameters:\n    executor: event\n",
            r"executor='event' \(did you mean 'events'\?\)",
        ),
        ("/**/safety_monitor:\n  ros__parameters:\n    gate:\n      shadow_steps: -1\n", "gate"),
        (
            "/**/safety_monitor:\n  ros__parameters:\n    gate:\n      offline_reject_factor: 0.5\n",
            r"offline_reject_factor=0.5: expected a number >= 1",
        ),
        ("/**/sim_bridg:\n  ros__parameters:\n    rate_hz: 5.0\n", r"did you mean 'sim_bridge'\?"),
    ],
    ids=["shared-type", "shared-list", "range", "choice", "gate-section", "gate-offline-factor", "section-name"],
)
def test_a_bad_value_anywhere_in_the_file_is_one_config_error(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        P.check_params_file(_file(tmp_path, text))


def test_a_shared_gate_key_counts_for_the_safety_monitor(tmp_path):
    """gate.* in the /** block reaches the safety monitor too, so it is validated as its section."""
    path = _file(tmp_path, "/**:\n  ros__parameters:\n    gate:\n      regression_rel_tol: -3.0\n")
    with pytest.raises(ConfigError, match="regression_rel_tol"):
        P.check_params_file(path)


def test_overrides_given_to_a_node_may_be_shared_keys_but_not_unknown_ones():
    P.check_overrides("learner", ["data_dir", "spec", "task", "default_steps"])  # /** keys reach every node
    with pytest.raises(ConfigError, match=r"'default_stpes' is declared by no lifelong_ros node \(did you mean"):
        P.check_overrides("learner", ["default_stpes"])


def test_every_declared_default_passes_its_own_check():
    for node, params in P.NODES.items():
        for p in params:
            if p.default is not None:
                p.check(p.default, node)
