"""`lifelong-ros pretrain`: a base model from Meta-World's ML45 train tasks, registered as the first version.

lifelong_ros.pretrain does the work (demonstrations into the store, multi-task training with a
checkpoint, ONNX export, registration); this module is its command line. Run it again after an
interruption: recorded demonstrations are kept, training resumes from its checkpoint, and a run
that already registered its version reports it instead of training again.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lifelong_ros.cli.errors import int_at_least
from lifelong_ros.learning.jobs import AdaptCancelled
from lifelong_ros.pretrain import PretrainSettings, pretrain


def run(args: argparse.Namespace) -> int:
    budget = {
        k: v
        for k, v in {
            "demos": args.demos,
            "heldout_demos": args.heldout_demos,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "seed": args.seed,
        }.items()
        if v is not None
    }
    if args.tasks:
        budget["tasks"] = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    settings = PretrainSettings.quick(**budget) if args.quick else PretrainSettings(**budget)
    try:
        result = pretrain(
            args.data_dir,
            settings,
            progress=not args.quiet,
            eval_episodes=args.eval_episodes,
            activate=not args.no_activate,
            threads=args.threads,
        )
    except (AdaptCancelled, KeyboardInterrupt):
        print("pretrain: stopped; run the same command again to resume from the checkpoint", file=sys.stderr)
        return 130
    print(json.dumps(result.to_dict(), indent=2))
    return 0


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="demonstrate Meta-World's ML45 train tasks, train a base model, register it as the first version",
        description=(__doc__ or "").splitlines()[0],
    )
    p.add_argument(
        "--data-dir", help="store + registry directory (default: $LIFELONG_ROS_DATA or ~/.local/share/lifelong_ros)"
    )
    p.add_argument("--quick", action="store_true", help="smoke-sized: 3 tasks, 2 demonstrations each, 300 steps")
    p.add_argument("--tasks", help="comma-separated Meta-World tasks (default: ML45's 45 train tasks)")
    p.add_argument("--demos", type=int_at_least(1), help="training demonstrations per task (default 20)")
    p.add_argument("--heldout-demos", type=int_at_least(0), help="held-out demonstrations per task (default 2)")
    p.add_argument("--steps", type=int_at_least(1), help="optimiser steps (default 20000)")
    p.add_argument("--batch-size", type=int_at_least(1), help="samples per step (default 512)")
    p.add_argument("--seed", type=int_at_least(0), help="seed (default 0)")
    p.add_argument(
        "--eval-episodes",
        type=int_at_least(0),
        default=0,
        help="measure closed-loop success on this many unseen variations per task (default 0: skip)",
    )
    p.add_argument("--threads", type=int_at_least(1), default=1, help="torch threads (default 1)")
    p.add_argument("--no-activate", action="store_true", help="register and approve, but do not make it active")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
