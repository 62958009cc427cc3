"""`lifelong-ros check-config [FILE]`: check a ROS 2 params file against the one parameter schema.

The same check the CLI, the launch files and every node run before they start (lifelong_ros/params.py),
offered on its own so a robot's params file can be checked before `ros2 launch`.
"""

from __future__ import annotations

import argparse
from typing import Any

from lifelong_ros.params import NODES, check_params_file
from lifelong_ros.paths import default_config_path


def _cmd(args: argparse.Namespace) -> int:
    path = args.file or str(default_config_path())
    sections = check_params_file(path)
    ours = [s for s in sections if s in NODES]
    others = [s for s in sections if s not in NODES and s != "/**"]
    keys = sum(len(v) for v in sections.values())
    print(
        f"{path}: ok ({keys} keys; nodes: {', '.join(ours) or 'none'}; other sections: {', '.join(others) or 'none'})"
    )
    return 0


def add_cli(sub: Any) -> None:
    p = sub.add_parser(
        "check-config",
        help="check a ROS 2 params file against every lifelong_ros node's declared parameters",
        description=(__doc__ or "").splitlines()[0],
    )
    p.add_argument("file", nargs="?", help="params file (default: the package's config/lifelong.yaml)")
    p.set_defaults(func=_cmd)
