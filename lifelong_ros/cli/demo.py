"""`lifelong-ros demo`: the whole lifelong-adaptation loop against the embedded simulator (lifelong_ros.demo)."""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path
from typing import Any

from lifelong_ros import paths
from lifelong_ros.cli.errors import int_at_least
from lifelong_ros.config import ConfigError
from lifelong_ros.demo import (
    DEFAULT_ROBOT,
    DemoSettings,
    check_out_dir,
    check_robot,
    check_task_names,
    run_demo,
    settings_from_config,
)
from lifelong_ros.pretrain import ml45_test_tasks
from lifelong_ros.sim.backends import BACKENDS


def task_list(text: str) -> list[str]:
    """argparse type for --tasks: comma-separated, non-empty task names (checked against the robot's
    tasks once --robot is known, before any work)."""
    names = [t.strip() for t in text.split(",")]
    if any(not t for t in names):
        raise argparse.ArgumentTypeError(
            f"{text!r} has an empty task name; expected comma-separated task names, e.g. reach-v3,push-v3"
        )
    return names


def robot_name(text: str) -> str:
    """argparse type for --robot: a simulator of sim.backends, with a did-you-mean."""
    try:
        return check_robot(text, "").name
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_demo(args: argparse.Namespace) -> int:
    settings = settings_from_config(args.config, robot=args.robot)
    if args.tasks is not None:
        args.tasks = check_task_names(args.tasks, "--tasks", settings.robot)
    if args.quick:
        settings = DemoSettings.quick(settings)
    names = ("method", "steps", "seed", "gate_rollouts", "gate_enabled", "retries", "tasks", "corrections", "base")
    for name in names:
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    if args.demos is not None:
        settings.demos_per_task = args.demos
    settings.validate("demo settings (config and flags)")
    base = settings.base_dir()
    if base is not None and args.tasks is None:  # the base knows the default tasks: teach the unseen ones
        settings.tasks = list(ml45_test_tasks())
        print(
            f"starting from the pretrained base in {base}: teaching ML45's held-out tasks {', '.join(settings.tasks)} "
            "(--tasks to choose, --base none for an empty robot)"
        )
    out = (
        Path(args.out)
        if args.out
        else paths.data_dir() / paths.RUNS_DIR / datetime.now().strftime("demo-%Y%m%d-%H%M%S")
    )
    check_out_dir(out)  # before anything is written or deleted; run_demo checks again
    results = run_demo(settings, out, progress=not args.no_progress)
    print(f"\n{results['robot']}: success matrix R[i][j] (row: after learning task i; column: task j)")
    for name, row in zip(results["tasks"], results["success_matrix"]):
        print(f"  {name:>26s} " + " ".join("  -  " if v is None else f"{v:5.2f}" for v in row))
    m = results["metrics"]
    print(
        f"average success {m['avg_acc']:.3f}, BWT {m['bwt'] if m['bwt'] is None else round(m['bwt'], 3)}, "
        f"forgetting {m['forgetting'] if m['forgetting'] is None else round(m['forgetting'], 3)}; "
        f"whole run {results['wall_s']} s"
    )
    print(f"results: {out / 'results.json'}")
    return 0


def add_cli(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the whole lifelong-adaptation loop against the embedded simulator")
    p.add_argument(
        "--out", help="directory for results.json, the heatmap and the run's data (default: under the data dir)"
    )
    p.add_argument(
        "--robot",
        type=robot_name,
        help=f"the simulated robot: {', '.join(sorted(BACKENDS))} (default from config: {DEFAULT_ROBOT}); "
        "g1 = the Unitree G1 humanoid with hands at a table",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="shortened loop for smoke tests (metaworld < 2 min; g1: reach then button, ~2 min)",
    )
    p.add_argument("--config", help="ROS 2 params file to read (default: config/lifelong.yaml)")
    p.add_argument("--method", help="adaptation recipe (default from config: meta_ewc_replay)")
    p.add_argument("--steps", type=int_at_least(1), help="optimiser steps per adaptation")
    p.add_argument("--seed", type=int_at_least(0))
    p.add_argument(
        "--no-gate",
        dest="gate_enabled",
        action="store_false",
        default=None,
        help="baseline only: promote every candidate without the safety gate",
    )
    p.add_argument(
        "--gate-rollouts",
        type=int_at_least(0),
        metavar="N",
        help="closed-loop gate: at most N paired episodes (candidate and active) per task; 0 = off, held-out "
        "BC error only (default from config: 50)",
    )
    p.add_argument(
        "--retries",
        type=int_at_least(0),
        metavar="N",
        help="retry a rejected adaptation up to N times, each with a stronger recipe (default from config: 2)",
    )
    p.add_argument("--tasks", type=task_list, help="comma-separated task names of the robot (default from config)")
    p.add_argument(
        "--demos",
        type=int_at_least(1),
        metavar="K",
        help="expert demonstrations per new task (default from config: 50; g1: 100)",
    )
    p.add_argument(
        "--corrections",
        type=int_at_least(0),
        metavar="N",
        help="after each adaptation, N episodes driven by the new model are labelled by the scripted expert "
        "(DAgger; the expert takes over a stalled episode, config demo.takeover_after) and the task is adapted "
        "again on demonstrations + corrections (default: 0)",
    )
    p.add_argument(
        "--base",
        metavar="auto|none|DIR",
        help="start from the pretrained base of `lifelong-ros pretrain` (Meta-World): auto = the data "
        "directory's if there is one (then the tasks default to ML45's five held-out tasks), none, or its "
        "data directory (default from config: auto)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)
