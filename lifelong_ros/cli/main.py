"""`lifelong-ros`: the standalone front end (no ROS needed) over the same core the ROS nodes use.

Each command module contributes its own subcommands through ``add_cli(subparsers)``, so this file
only wires them together.
"""

from __future__ import annotations

import argparse
import sys

from lifelong_ros.cli import demo, offline, registry, store

COMMAND_MODULES = (demo, store, registry, offline)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lifelong-ros", description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMAND_MODULES:
        module.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
