"""`lifelong-ros`: the standalone front end (no ROS needed) over the same core the ROS nodes use.

Each feature module contributes its own subcommands through ``add_cli(subparsers)``, so this file
only wires them together.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules that register subcommands. Imported lazily so `lifelong-ros --help` stays fast-ish and a
# module that is not present yet (or fails to import) does not take the whole CLI down.
COMMAND_MODULES = (
    "lifelong_ros.demo",
    "lifelong_ros.store_cli",
    "lifelong_ros.registry_cli",
    "lifelong_ros.offline",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lifelong-ros", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
