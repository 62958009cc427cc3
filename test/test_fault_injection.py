"""Fault injection through the `lifelong-ros` entry point: every class of bad input is refused with
exactly one line on stderr (`lifelong-ros: error: ...` naming the offending value), exit code 2, no
traceback, and nothing written or deleted. Every case fails in validation, so nothing trains."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from lifelong_ros.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
SPEC = str(ROOT / "config" / "spec_metaworld.yaml")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def params(tmp: Path, demo: str = "", shared: str = "", nodes: str = "", name: str = "params.yaml") -> str:
    """A ROS 2 params file with the given (already indented) demo / shared / node blocks."""
    text = ""
    if shared:
        text += "/**:\n  ros__parameters:\n" + shared
    if demo:
        text += "demo:\n  ros__parameters:\n" + demo
    text += nodes
    path = tmp / name
    path.write_text(text)
    return str(path)


def user_data(tmp: Path) -> Path:
    """An --out directory whose data/ holds the user's own files (no demo marker)."""
    data = tmp / "out" / "data"
    data.mkdir(parents=True)
    (data / "thesis.tex").write_text("years of work\n")
    return tmp / "out"


def registry(tmp: Path) -> str:
    from lifelong_ros.safety.registry import ModelRegistry

    ModelRegistry(tmp / "reg")
    return str(tmp / "reg")


Case = tuple[str, Callable[[Path], list[str]], str]
CASES: list[Case] = [
    # ---- demo: flags
    ("demo-tasks-only-comma", lambda t: ["demo", "--tasks", ",", "--out", str(t / "out")], "','"),
    ("demo-tasks-empty-name", lambda t: ["demo", "--tasks", "reach-v3,,push-v3"], "reach-v3,,push-v3"),
    ("demo-tasks-unknown", lambda t: ["demo", "--tasks", "rech-v3", "--out", str(t / "out")], "'rech-v3'"),
    ("demo-tasks-unknown-2nd", lambda t: ["demo", "--tasks", "reach-v3,pushh-v3"], "'pushh-v3'"),
    ("demo-tasks-duplicate", lambda t: ["demo", "--tasks", "reach-v3,reach-v3"], "'reach-v3'"),
    ("demo-steps-negative", lambda t: ["demo", "--steps", "-5"], "-5"),
    ("demo-steps-not-int", lambda t: ["demo", "--steps", "abc"], "'abc'"),
    ("demo-gate-rollouts-negative", lambda t: ["demo", "--gate-rollouts", "-1"], "-1"),
    ("demo-seed-negative", lambda t: ["demo", "--seed", "-2"], "-2"),
    ("demo-method-unknown", lambda t: ["demo", "--method", "ewc_replai", "--out", str(t / "out")], "'ewc_replai'"),
    ("demo-unknown-flag", lambda t: ["demo", "--stpes", "5"], "--stpes"),
    # ---- demo: config files
    ("config-missing", lambda t: ["demo", "--config", str(t / "missing.yaml")], "missing.yaml"),
    ("config-directory", lambda t: ["demo", "--config", str(t)], str(Path("config file"))),
    ("config-invalid-yaml", lambda t: ["demo", "--config", params(t, demo="    steps: [1, 2\n")], "params.yaml"),
    ("config-not-a-mapping", lambda t: ["demo", "--config", _write(t, "- a\n- b\n")], "list"),
    (
        "config-section-misspelled",
        lambda t: ["demo", "--config", _write(t, "demo:\n  ros__paramters:\n    steps: 5\n")],
        "ros__paramters",
    ),
    ("config-tasks-int", lambda t: ["demo", "--config", params(t, demo="    tasks: 5\n")], "tasks=5"),
    ("config-tasks-unknown", lambda t: ["demo", "--config", params(t, demo="    tasks: [rech-v3]\n")], "'rech-v3'"),
    (
        "config-shared-tasks-unknown",
        lambda t: ["demo", "--config", params(t, shared="    tasks: [reach-v3, drawr-open-v3]\n")],
        "'drawr-open-v3'",
    ),
    ("config-tasks-empty", lambda t: ["demo", "--config", params(t, demo="    tasks: []\n")], "tasks=[]"),
    (
        "config-demos-negative",
        lambda t: ["demo", "--config", params(t, demo="    demos_per_task: -3\n")],
        "demos_per_task=-3",
    ),
    (
        "config-serve-rate-negative",
        lambda t: ["demo", "--config", params(t, demo="    serve_rate_hz: -100\n")],
        "serve_rate_hz=-100",
    ),
    (
        "config-gate-rollouts-negative",
        lambda t: ["demo", "--config", params(t, demo="    gate_rollouts: -1\n")],
        "gate_rollouts=-1",
    ),
    ("config-steps-string", lambda t: ["demo", "--config", params(t, demo="    steps: many\n")], "'many'"),
    ("config-steps-bool", lambda t: ["demo", "--config", params(t, demo="    steps: true\n")], "steps=True"),
    ("config-max-steps-too-big", lambda t: ["demo", "--config", params(t, demo="    max_steps: 1000\n")], "1000"),
    (
        "config-unknown-key",
        lambda t: ["demo", "--config", params(t, demo="    demos_per_tsk: 3\n")],
        "'demos_per_tsk' (did you mean 'demos_per_task'?)",
    ),
    (
        "config-unknown-option",
        lambda t: ["demo", "--config", params(t, demo="    options:\n      ewc_lamda: 10.0\n")],
        "ewc_lamda",
    ),
    ("config-options-not-mapping", lambda t: ["demo", "--config", params(t, demo="    options: 5\n")], "options=5"),
    (
        "config-unknown-gate-key",
        lambda t: ["demo", "--config", params(t, demo="    gate:\n      latency_budget: 1.0\n")],
        "latency_budget",
    ),
    (
        "config-gate-value-out-of-range",
        lambda t: ["demo", "--config", params(t, demo="    gate:\n      latency_budget_ms: -1.0\n")],
        "latency_budget_ms=-1.0",
    ),
    ("config-method-unknown", lambda t: ["demo", "--config", params(t, demo="    method: magic\n")], "'magic'"),
    # ---- demo: the robot (one schema for every robot's block)
    ("demo-robot-unknown", lambda t: ["demo", "--robot", "metawrld"], "'metawrld' (did you mean 'metaworld'?)"),
    ("demo-robot-task-of-another-robot", lambda t: ["demo", "--robot", "g1", "--tasks", "reach-v3"], "'reach-v3'"),
    ("demo-robot-task-misspelled", lambda t: ["demo", "--robot", "g1", "--tasks", "g1-rech"], "'g1-rech'"),
    (
        "config-robot-unknown",
        lambda t: ["demo", "--config", params(t, demo="    robot: metaworl\n")],
        "'metaworl' (did you mean 'metaworld'?)",
    ),
    (
        "config-robot-block-unknown",
        lambda t: ["demo", "--config", params(t, demo="    g2:\n      steps: 5\n")],
        "'g2'",
    ),
    (
        "config-robot-block-unknown-key",
        lambda t: ["demo", "--config", params(t, demo="    g1:\n      stpes: 5\n")],
        "'stpes' (did you mean 'steps'?)",
    ),
    (
        "config-robot-block-bad-value",
        lambda t: ["demo", "--robot", "g1", "--config", params(t, demo="    g1:\n      serve_rate_hz: -50\n")],
        "serve_rate_hz=-50",
    ),
    (
        "config-robot-block-task-unknown",
        lambda t: ["demo", "--config", params(t, demo="    g1:\n      tasks: [g1-lfit]\n")],
        "'g1-lfit' (did you mean 'g1-lift'?)",
    ),
    # ---- demo: the output directory
    ("demo-out-user-data", lambda t: ["demo", "--tasks", "reach-v3", "--out", str(user_data(t))], "out/data"),
    (
        "demo-out-user-data-bad-tasks",
        lambda t: ["demo", "--tasks", "rech-v3", "--out", str(user_data(t))],
        "'rech-v3'",
    ),
    ("demo-out-is-a-file", lambda t: ["demo", "--tasks", "reach-v3", "--out", _write(t, "x", "out.txt")], "out.txt"),
    # ---- experience store and bags
    ("store-stats-missing", lambda t: ["store", "stats", "--store", str(t / "nope.sqlite3")], "nope.sqlite3"),
    (
        "import-bag-missing-spec",
        lambda t: ["import-bag", str(t), "--spec", str(t / "nospec.yaml"), "--store", str(t / "s.sqlite3")],
        "nospec.yaml",
    ),
    (
        "import-bag-invalid-spec",
        lambda t: ["import-bag", str(t), "--spec", _write(t, "observation: [1, 2\n", "spec.yaml")],
        "spec.yaml",
    ),
    (
        "import-bag-missing-bag",
        lambda t: ["import-bag", str(t / "nobag"), "--spec", SPEC, "--store", str(t / "s.sqlite3")],
        "nobag",
    ),
    (
        "export-bag-missing-store",
        lambda t: ["export-bag", str(t / "exp"), "--spec", SPEC, "--store", str(t / "none.sqlite3")],
        "none.sqlite3",
    ),
    # ---- registry (cli/registry.py's commands under the same policy)
    ("registry-missing", lambda t: ["registry", "list", "--registry", str(t / "noreg")], "noreg"),
    ("registry-unknown-version", lambda t: ["registry", "show", "v0009", "--registry", registry(t)], "v0009"),
    ("gate-unknown-version", lambda t: ["gate", "v0042", "--registry", registry(t)], "v0042"),
    # ---- offline learning
    (
        "offline-missing-bag",
        lambda t: ["offline-learn", "--bag", str(t / "nobag"), "--task", "reach-v3", "--data-dir", str(t / "d")],
        "nobag",
    ),
    (
        "offline-steps-negative",
        lambda t: ["offline-learn", "--bag", str(t), "--task", "reach-v3", "--steps", "-5"],
        "-5",
    ),
    (
        "offline-method-unknown",
        lambda t: ["offline-learn", "--bag", str(t), "--task", "x", "--method", "nope", "--data-dir", str(t / "d")],
        "'nope'",
    ),
    (
        "offline-empty-task",
        lambda t: ["offline-learn", "--bag", str(t), "--task", "", "--data-dir", str(t / "d")],
        "task is empty",
    ),
    (
        "offline-config-bad-steps",
        lambda t: [
            "offline-learn",
            "--bag",
            str(t),
            "--task",
            "reach-v3",
            "--config",
            params(t, nodes="/**/learner:\n  ros__parameters:\n    default_steps: -3\n"),
        ],
        "default_steps=-3",
    ),
    (
        "offline-config-unknown-gate-key",
        lambda t: [
            "offline-learn",
            "--bag",
            str(t),
            "--task",
            "reach-v3",
            "--config",
            params(t, nodes="/**/safety_monitor:\n  ros__parameters:\n    gate:\n      latency_budgt_ms: 5.0\n"),
        ],
        "latency_budgt_ms",
    ),
    # ---- the whole params file against the one schema (lifelong_ros/params.py), whoever reads it
    (
        "offline-config-unknown-learner-key",
        lambda t: _offline(t, nodes="/**/learner:\n  ros__parameters:\n    default_step: 300\n"),
        "'default_step' (did you mean 'default_steps'?)",
    ),
    (
        "offline-config-misspelled-node-section",
        lambda t: _offline(t, nodes="/**/lerner:\n  ros__parameters:\n    default_steps: 300\n"),
        "'lerner' names no lifelong_ros node (did you mean 'learner'?)",
    ),
    (
        "offline-config-unknown-shared-key",
        lambda t: _offline(t, shared="    data_dri: /tmp/x\n"),
        "'data_dri' is a parameter of no lifelong_ros node (did you mean 'data_dir'?)",
    ),
    (
        "offline-config-bad-choice",
        lambda t: _offline(t, nodes="/**/experience_buffer:\n  ros__parameters:\n    durability: disk\n"),
        "durability='disk'",
    ),
    (
        "offline-config-wrong-type-other-node",
        lambda t: _offline(t, nodes="/**/policy_server:\n  ros__parameters:\n    control_rate_hz: fast\n"),
        "control_rate_hz='fast'",
    ),
    (
        "offline-config-out-of-range-other-node",
        lambda t: _offline(t, nodes="/**/sim_bridge:\n  ros__parameters:\n    rate_hz: 0.0\n"),
        "rate_hz=0.0",
    ),
    (
        "offline-config-bad-list-item",
        lambda t: _offline(t, nodes="/**/policy_server:\n  ros__parameters:\n    action_low: [-1.0, low]\n"),
        "action_low='low'",
    ),
    (
        "offline-config-bad-watchdog-key",
        lambda t: _offline(
            t, nodes="/**/safety_monitor:\n  ros__parameters:\n    watchdog:\n      max_failur_rate: 0.5\n"
        ),
        "max_failur_rate",
    ),
    (
        "demo-config-unknown-node-key",
        lambda t: ["demo", "--config", params(t, nodes="/**/policy_server:\n  ros__parameters:\n    tsak: push-v3\n")],
        "'tsak' (did you mean 'task'?)",
    ),
    (
        "check-config-unknown-key",
        lambda t: ["check-config", params(t, nodes="/**/learner:\n  ros__parameters:\n    nicee: 3\n")],
        "'nicee' (did you mean 'nice'?)",
    ),
    (
        "offline-config-missing",
        lambda t: ["offline-learn", "--bag", str(t), "--task", "reach-v3", "--config", str(t / "gone.yaml")],
        "gone.yaml",
    ),
]


def _offline(tmp: Path, shared: str = "", nodes: str = "") -> list[str]:
    """offline-learn with a params file holding the given blocks (the bag is never reached)."""
    return [
        "offline-learn",
        "--bag",
        str(tmp),
        "--task",
        "reach-v3",
        "--config",
        params(tmp, shared=shared, nodes=nodes),
    ]


def _write(tmp: Path, text: str, name: str = "params.yaml") -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.stat()
            out[str(p)] = (st.st_size, st.st_mtime_ns if p.is_file() else 0)
    return out


def run_cli(argv: list[str]) -> int:
    try:
        return cli_main.main(argv)
    except SystemExit as exc:  # argparse's usage errors
        return int(exc.code or 0)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Default data directory under tmp_path; the case's files under tmp_path/case."""
    monkeypatch.setenv("LIFELONG_ROS_DATA", str(tmp_path / "default-data"))
    case = tmp_path / "case"
    case.mkdir()
    return case


@pytest.mark.parametrize("name, make_argv, offending", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(isolated, capsys, name, make_argv, offending):
    argv = make_argv(isolated)
    before = snapshot(isolated.parent)
    rc = run_cli(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2, (rc, captured.err)
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("lifelong-ros: error: "), lines[0]
    assert offending in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert snapshot(isolated.parent) == before  # nothing written, nothing deleted
    if name.startswith("demo-out-user-data"):
        assert (isolated / "out" / "data" / "thesis.tex").read_text() == "years of work\n"


def test_debug_shows_the_traceback_instead(isolated, capsys):
    rc = run_cli(["--debug", "demo", "--config", str(isolated / "missing.yaml")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" in err and "missing.yaml" in err


def test_keyboard_interrupt_is_one_line_and_130(isolated, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("lifelong_ros.cli.demo.run_demo", interrupted)
    rc = run_cli(["demo", "--tasks", "reach-v3", "--out", str(isolated / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 130 and len(err) == 1 and "interrupted" in err[0]


def test_an_unexpected_failure_is_still_one_line_with_its_type(isolated, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr("lifelong_ros.cli.demo.run_demo", broken)
    rc = run_cli(["demo", "--tasks", "reach-v3", "--out", str(isolated / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "ZeroDivisionError" in err[0] and "--debug" in err[0]


def test_a_previous_demo_runs_data_is_recognised_by_its_marker(tmp_path):
    from lifelong_ros.config import ConfigError
    from lifelong_ros.demo import DEMO_MARKER, check_out_dir

    data = tmp_path / "data"
    data.mkdir()
    check_out_dir(tmp_path)  # empty: fine
    (data / "experience.sqlite3").write_text("")
    with pytest.raises(ConfigError, match="not a previous demo run's data"):
        check_out_dir(tmp_path)
    (data / DEMO_MARKER).write_text("")
    check_out_dir(tmp_path)  # a demo run's: may be replaced
