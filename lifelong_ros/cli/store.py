"""`lifelong-ros import-bag | export-bag | store stats`: the experience store from the command line.

Bags recorded on any robot become training data here, and stored experience goes back out as a
bag, without ROS installed; `store stats` shows what a store holds and what its budget does.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from lifelong_ros.experience.sources import SOURCES
from lifelong_ros.paths import store_path as default_store_path


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        type=Path,
        default=None,
        help=f"experience store file (default: {default_store_path()}, or $LIFELONG_ROS_DATA/experience.sqlite3)",
    )


def _import_bag(args: argparse.Namespace) -> int:
    from lifelong_ros.experience.store import ExperienceStore
    from lifelong_ros.ros_io.bag import import_bag
    from lifelong_ros.ros_io.spec import load_spec

    # failures (bad spec, bag or store) go to lifelong-ros's one error policy (cli/main.py): one line, exit 2
    spec = load_spec(args.spec)
    if not args.bag.exists():
        raise FileNotFoundError(f"bag {args.bag} does not exist; expected a rosbag2 directory, .mcap or .db3 file")
    with ExperienceStore(
        args.store or default_store_path(), spec.obs_dim, spec.act_dim, nonfinite=args.nonfinite
    ) as store:
        report = import_bag(
            args.bag,
            store,
            spec,
            task=args.task,
            episode=args.episode,
            source=None if args.source == "keep" else args.source,
            time_source=args.time_source,
            progress=sys.stderr.isatty(),
            again=args.again,
        )
    print(report.summary())
    return 0


def _export_bag(args: argparse.Namespace) -> int:
    from lifelong_ros.experience.store import ExperienceStore
    from lifelong_ros.ros_io.bag import export_bag
    from lifelong_ros.ros_io.spec import load_spec

    spec = load_spec(args.spec)
    if args.retime is not None and not (math.isfinite(args.retime) and args.retime > 0):
        raise ValueError(f"--retime {args.retime}: expected a rate in Hz > 0")
    path = args.store or default_store_path()
    with ExperienceStore(path, readonly=True) as store:
        report = export_bag(
            store,
            args.out,
            spec,
            tasks=args.task or None,
            split=args.split,
            sources=args.source or None,
            storage=args.storage,
            with_info=not args.no_info,
            retime_hz=args.retime,
            progress=sys.stderr.isatty(),
        )
    print(f"wrote {report.records} records ({report.messages} messages, {report.storage}) to {report.bag}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from lifelong_ros.experience.store import ExperienceStore

    path = args.store or default_store_path()
    with ExperienceStore(path, readonly=True) as store:
        st = store.stats()
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
        return 0
    print(
        f"{st['path']}: {st['records']} records, {st['bytes_on_disk'] / 1e6:.1f} MB, obs {st['obs_dim']} / action {st['act_dim']}"
    )
    print(
        f"held-out: {st['heldout_records']} records (fraction {st['heldout_fraction']}, seed {st['split_seed']}); "
        f"protected {st['protected_records']}; flagged non-finite {st['flagged_nonfinite']}; evicted so far {st['evicted_total']}"
    )
    if st["over_budget"]:
        print("OVER BUDGET: protected records alone exceed the retention budget")
    for name, t in st["tasks"].items():
        src = ", ".join(f"{k} {v}" for k, v in t["by_source"].items())
        print(
            f"  {name}: {t['records']} records ({t['train']} train / {t['heldout']} held-out), "
            f"{t['episodes']} episodes ({t['heldout_episodes']} held-out); {src}"
        )
    return 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("import-bag", help="import a rosbag2 bag (MCAP or sqlite3) into the experience store")
    p.add_argument("bag", type=Path, help="bag directory (or .mcap / .db3 file)")
    p.add_argument(
        "--spec", type=Path, required=True, help="observation/action spec YAML (e.g. config/spec_metaworld.yaml)"
    )
    _store_arg(p)
    p.add_argument(
        "--task", help="task name for the records (required unless the bag carries /lifelong_ros/experience)"
    )
    p.add_argument("--episode", help="episode id (default: the bag's name)")
    p.add_argument(
        "--source", default="bag", choices=[*SOURCES, "keep"], help="record source (default: bag; keep: as exported)"
    )
    p.add_argument(
        "--time-source", default="log", choices=["log", "header"], help="align on receive time or header stamps"
    )
    p.add_argument(
        "--nonfinite",
        default="reject",
        choices=["reject", "flag"],
        help="NaN/Inf values: reject the bag or flag the records",
    )
    p.add_argument(
        "--again",
        action="store_true",
        help="import a bag the store already holds again (default: skipped, recognised by content hash)",
    )
    p.set_defaults(func=_import_bag)

    p = subparsers.add_parser("export-bag", help="write stored experience to a new rosbag2 bag")
    p.add_argument("out", type=Path, help="new bag directory to create")
    p.add_argument("--spec", type=Path, required=True, help="observation/action spec YAML")
    _store_arg(p)
    p.add_argument("--task", action="append", help="task to export (repeatable; default: all)")
    p.add_argument("--split", default="all", choices=["train", "heldout", "all"])
    p.add_argument(
        "--source", action="append", choices=list(SOURCES), help="source to export (repeatable; default: all)"
    )
    p.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"])
    p.add_argument("--no-info", action="store_true", help="omit the /lifelong_ros/experience topic")
    p.add_argument("--retime", type=float, default=None, metavar="HZ", help="rewrite stamps as a uniform clock at HZ")
    p.set_defaults(func=_export_bag)

    p = subparsers.add_parser("store", help="inspect the experience store")
    sub = p.add_subparsers(dest="store_command", metavar="SUBCOMMAND")
    sub.required = True
    s = sub.add_parser("stats", help="records per task / split / source, size, retention")
    _store_arg(s)
    s.add_argument("--json", action="store_true", help="print the stats as JSON")
    s.set_defaults(func=_stats)
