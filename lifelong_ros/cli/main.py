"""`lifelong-ros`: the standalone front end (no ROS needed) over the same core the ROS nodes use.

Each command module contributes its own subcommands through ``add_cli(subparsers)``, so this file
only wires them together under the one error policy of every command (cli/errors.py): an
expected failure prints one line ``lifelong-ros: error: ...`` and exits 2, ``--debug`` shows the
traceback instead, Ctrl-C exits 130. Commands keep their own success codes (offline-learn and
gate: 0 approved, 1 rejected).
"""

from __future__ import annotations

import argparse
import sys

from lifelong_ros.cli import check_config, demo, offline, pretrain, registry, store
from lifelong_ros.cli.errors import Parser, run_command

COMMAND_MODULES = (demo, store, registry, offline, check_config, pretrain)
PROG = "lifelong-ros"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure instead of one line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMAND_MODULES:
        module.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, args.func, args, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
