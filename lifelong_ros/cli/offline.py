"""`lifelong-ros offline-learn` (and `ros2 run lifelong_ros offline_learn`): learn a task from rosbag2 bags.

Import, adapt, register, gate: lifelong_ros.offline does the work; this module is its command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lifelong_ros.cli.errors import Parser, int_at_least, run_command
from lifelong_ros.config import check_value, load_params
from lifelong_ros.experience.sources import TEACHER_SOURCES
from lifelong_ros.learning.jobs import AdaptCancelled
from lifelong_ros.offline import DEFAULT_SPEC, offline_learn
from lifelong_ros.params import check_params_file
from lifelong_ros.paths import default_config_path
from lifelong_ros.safety.gate import GateConfig


def _defaults_from_config(path: str | None) -> dict[str, Any]:
    """Shared keys, the learner's and the safety monitor's sections of the params file (CLI flags win).

    Every value used here is type-checked (ConfigError naming the file and the key) before any work."""
    try:
        cfg = Path(path) if path else default_config_path()
    except FileNotFoundError:
        return {}
    if not path and not cfg.exists():
        return {}
    check_params_file(cfg)  # a missing file, invalid YAML, an unknown key or bad value anywhere in it: one clear error
    params = load_params(cfg)

    def node(name: str) -> tuple[dict[str, Any], str]:  # sections may be keyed `name`, `/name`, `/**/name`
        return params.get(name) or params["/**"], f"{cfg} [{name}]"

    (learner, lw), (monitor, _) = node("learner"), node("safety_monitor")

    def get(name: str, default: Any, kind: type, least: float | None = None) -> Any:
        return check_value(name, learner.get(name, default), kind, min=least, where=lw)

    gate_config = {k[len("gate.") :]: v for k, v in monitor.items() if k.startswith("gate.")}
    GateConfig.from_dict(gate_config)  # an unknown or out-of-range gate.* key fails now, not after the import
    return {
        "config_dir": str(Path(get("config_dir", "", str) or cfg.parent)),
        "data_dir": get("data_dir", "", str) or None,
        "spec": get("spec", DEFAULT_SPEC, str),
        "method": get("default_method", "ewc_replay", str),
        "steps": get("default_steps", 1500, int, 1),
        "seed": get("seed", 0, int, 0),
        "threads": get("threads", 1, int, 1),
        "gate_config": gate_config,
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bag",
        required=True,
        nargs="+",
        dest="bags",
        metavar="BAG",
        help="rosbag2 bag(s) to learn from (directory, .mcap or .db3); each bag is one episode",
    )
    p.add_argument("--task", required=True, help="task the bag demonstrates (the task to learn), e.g. reach-v3")
    p.add_argument("--config", help="ROS 2 params file with the defaults (default: config/lifelong.yaml)")
    p.add_argument(
        "--data-dir",
        help="store + registry directory (default: the config's data_dir, else "
        "$LIFELONG_ROS_DATA or ~/.local/share/lifelong_ros)",
    )
    p.add_argument("--spec", help="observation/action spec YAML (default: the config's spec)")
    p.add_argument(
        "--source",
        default="bag",
        choices=TEACHER_SOURCES,
        help="source tag of the imported records (default: bag)",
    )
    p.add_argument(
        "--time-source",
        default="log",
        choices=["log", "header"],
        help="align streams on the bag's receive time or on header stamps",
    )
    p.add_argument("--method", help="adaptation recipe (default: the learner's default_method)")
    p.add_argument("--shots", type=int_at_least(0), default=0, help="demonstration episodes to use; 0 = all")
    p.add_argument("--steps", type=int_at_least(1), help="optimiser steps (default: the learner's default_steps)")
    p.add_argument("--seed", type=int_at_least(0), help="seed (default: the learner's seed)")
    p.add_argument("--no-gate", action="store_true", help="register the candidate without running the safety gate")
    p.add_argument("--activate", action="store_true", help="make the candidate active if the gate approves it")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--reimport",
        action="store_true",
        help="import bags the store already holds again (default: a bag is imported once, by content hash)",
    )


def run(args: argparse.Namespace) -> int:
    """0 approved (or not gated), 1 rejected; a failure raises (the caller's error policy: one line, exit 2)."""
    d = _defaults_from_config(args.config)
    try:
        result = offline_learn(
            args.bags,
            args.task,
            data_dir=args.data_dir or d.get("data_dir"),
            spec=args.spec or d.get("spec", DEFAULT_SPEC),
            config_dir=d.get("config_dir"),
            source=args.source,
            time_source=args.time_source,
            method=args.method or d.get("method", "ewc_replay"),
            shots=args.shots,
            steps=args.steps if args.steps is not None else d.get("steps", 1500),
            seed=args.seed if args.seed is not None else d.get("seed", 0),
            threads=d.get("threads", 1),
            gate=not args.no_gate,
            activate=args.activate,
            gate_config=d.get("gate_config"),
            reimport=args.reimport,
            progress=not args.quiet,
        )
    except (AdaptCancelled, KeyboardInterrupt):
        print("offline-learn: cancelled; nothing was registered", file=sys.stderr)
        return 130
    print(json.dumps(result.to_dict(), indent=2))
    return 0 if result.decision in ("", "approved", "pending_shadow") else 1


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "offline-learn",
        help="learn a task from a rosbag2 bag: import, adapt, register, gate",
        description=__doc__.splitlines()[0],
    )
    add_arguments(p)
    p.set_defaults(func=run)


def _strip_ros_args(argv: list[str]) -> list[str]:
    """Drop a `--ros-args ... [--]` section, as rclpy.utilities.remove_ros_args does: under
    `ros2 run` this is a plain program (it needs no running graph), so ROS arguments are ignored."""
    out, inside = [], False
    for a in argv:
        if a == "--ros-args":
            inside = True
        elif inside and a == "--":
            inside = False
        elif not inside:
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    """`ros2 run lifelong_ros offline_learn ...` (the same command as `lifelong-ros offline-learn`,
    under the same error policy: one line and exit 2 for an expected failure, --debug for the traceback)."""
    parser = Parser(prog="offline_learn", description=(__doc__ or "").splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure instead of one line")
    args = parser.parse_args(_strip_ros_args(sys.argv[1:] if argv is None else argv))
    return run_command("offline_learn", run, args, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
