"""`lifelong-ros registry ...` and `lifelong-ros gate <version>`: the registry and the gate from a shell.

An operator must be able to see what is serving, why every version was approved or rejected, and
roll back, without ROS running; these commands read and write the same directories the nodes use.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from lifelong_ros.cli.errors import int_at_least
from lifelong_ros.experience.sources import GROUND_TRUTH_SOURCES, SOURCES
from lifelong_ros.paths import registry_dir, store_path

EXIT_APPROVED, EXIT_REJECTED, EXIT_ERROR = 0, 1, 2


def _load_gate_config(path: str | None):
    from lifelong_ros.safety.gate import GateConfig

    if path is None:
        try:
            from lifelong_ros.config import node_params
            from lifelong_ros.params import check_params_file

            check_params_file()
            params = node_params("safety_monitor")
        except FileNotFoundError:
            return GateConfig()
        return GateConfig.from_dict({k: v for k, v in params.items() if k.startswith("gate.")})
    return GateConfig.from_yaml(path)


def _open_registry(args: argparse.Namespace, write: bool = False):
    """An existing registry; writers also clean up after crashed writers, readers touch nothing."""
    from lifelong_ros.safety.registry import ModelRegistry

    root = Path(args.registry) if args.registry else registry_dir(args.data_dir)
    return ModelRegistry(root, create=False, recover=write)


def _gate_line(reg, vid: str) -> str:
    for r in reversed(reg.reports(vid)):
        if r.get("kind") in ("gate", "gate-offline"):
            return f"{r.get('decision')}: {r.get('reason', '')}"
    return ""


def cmd_list(args: argparse.Namespace) -> int:
    reg = _open_registry(args)
    infos = reg.list(args.state or None)
    problem = reg.active_problem()  # e.g. a dangling pointer: the active version does not exist
    if args.json:
        print(json.dumps([i.to_dict() for i in infos], indent=2, default=str))
        if problem:
            print(f"lifelong-ros: warning: {problem}", file=sys.stderr)
        return 0
    if problem:
        print(f"WARNING: {problem}")
    if not infos:
        print(f"no versions in {reg.root}")
        return 0
    print(f"{'ID':<7} {'STATE':<10} {'PARENT':<7} {'METHOD':<16} {'CREATED':<24} TASKS / GATE")
    for i in infos:
        mark = "*" if i.state == "active" else " "
        print(
            f"{i.id + mark:<7} {i.state:<10} {i.parent or '-':<7} {i.method[:16]:<16} {i.created[:23]:<24} "
            f"{','.join(i.tasks)}"
        )
        line = _gate_line(reg, i.id)
        if line:
            print(f"{'':<66}{line[:120]}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from lifelong_ros.safety.gate import GateReport

    reg = _open_registry(args)
    info = reg.info(args.version)
    reports = reg.reports(args.version)
    if args.json:
        print(json.dumps({"version": info.to_dict(), "reports": reports}, indent=2, default=str))
        return 0
    print(f"{info.id}  state={info.state}  decision={info.decision}  method={info.method}")
    print(f"  parent:   {info.parent or '-'}   lineage: {' <- '.join(v.id for v in reg.lineage(info.id))}")
    print(f"  tasks:    {info.tasks} (target {info.target_task})")
    print(f"  created:  {info.created}")
    print(f"  onnx:     {info.path / 'model.onnx'} sha256={info.onnx_sha256}")
    if info.weights_file:
        print(f"  weights:  {info.path / info.weights_file} sha256={info.weights_sha256}")
    for key in ("data_range", "metrics", "config"):
        if getattr(info, key):
            print(f"  {key + ':':<9} {json.dumps(getattr(info, key), default=str)[:400]}")
    for r in reports:
        print(f"\n  report {r['file']} ({r.get('saved', '')})")
        if r.get("kind") in ("gate", "gate-offline"):
            print("    " + GateReport.from_dict(r).summary().replace("\n", "\n    "))
        else:
            print("    " + json.dumps({k: v for k, v in r.items() if k != "file"}, default=str)[:1000])
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    reg = _open_registry(args, write=True)
    tr = reg.rollback(args.to, reason=args.reason or "lifelong-ros registry rollback", revoke=args.revoke)
    print(
        f"rolled back {tr.from_version} -> {tr.to_version}"
        + (" (revoked " + tr.from_version + ")" if tr.revoked else "")
    )
    for vid, why in tr.skipped:
        print(f"  skipped {vid}: {why}")
    print("running policy servers pick the new active version up from the registry")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    reg = _open_registry(args, write=True)
    tr = reg.promote(args.version, reason=args.reason or "lifelong-ros registry promote")
    print(f"active: {tr.to_version} (was {tr.from_version or '-'})")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    reg = _open_registry(args, write=True)
    rep = reg.gc(keep_approved=args.keep, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {len(rep.deleted)}: {' '.join(rep.deleted) or '-'}; kept {' '.join(rep.kept) or '-'}")
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from lifelong_ros.orchestration import gate_version
    from lifelong_ros.safety.gate import SafetyGate

    reg = _open_registry(args, write=True)
    cfg = _load_gate_config(args.config)
    spath = Path(args.store) if args.store else store_path(args.data_dir)
    pool = None
    if args.rollouts:
        from lifelong_ros.sim.backends import robot_for_tasks
        from lifelong_ros.sim.pool import RolloutPool

        active = reg.active()
        tasks = list(reg.info(args.version).tasks) + (list(reg.info(active).tasks) if active else [])
        pool = RolloutPool(robot=robot_for_tasks(tasks))  # the simulator that has the version's tasks
        cfg.closed_loop_max_pairs = args.rollouts
        cfg.closed_loop_seed = args.rollout_seed
        cfg.validate()
    try:
        rep = gate_version(
            reg,
            SafetyGate(reg, cfg),
            spath,
            args.version,
            target_task=args.target,
            episodes=pool,
            sources=args.sources,
            decide=not args.dry_run,
            progress=True,
        )
    finally:
        if pool is not None:
            pool.close()
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2, default=str))
    else:
        print(rep.summary())
        print("suites: " + ", ".join(f"{d['task']}={d['samples']}" for d in rep.data) + f" from {spath}")
    return EXIT_APPROVED if rep.decision in ("approved", "pending_shadow") else EXIT_REJECTED


def _error_line(exc: BaseException) -> str:
    """The failure as one line; an OSError as ``<path>: <reason>`` (e.g. a read-only registry)."""
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename is not None else exc.strerror
    else:
        text = str(exc)
    return " ".join(text.split()) or type(exc).__name__


def _wrap(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn expected failures (unknown or malformed version, refused rollback, bad config, a registry
    that cannot be written) into one clear line and exit code 2; ``--debug`` keeps the traceback."""
    from lifelong_ros.safety.registry import RegistryError

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (RegistryError, ValueError, OSError, KeyError) as exc:
            if getattr(args, "debug", False):
                raise
            print(f"lifelong-ros: error: {_error_line(exc)}", file=sys.stderr)
            return EXIT_ERROR

    return run


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir", help="data directory (default: $LIFELONG_ROS_DATA or ~/.local/share/lifelong_ros)"
    )
    common.add_argument("--registry", help="registry directory (default: <data dir>/registry)")

    reg = subparsers.add_parser("registry", help="list, inspect, roll back model versions")
    rsub = reg.add_subparsers(dest="registry_command", metavar="ACTION")
    rsub.required = True
    p = rsub.add_parser("list", parents=[common], help="all versions with state and gate verdict")
    p.add_argument("--state", action="append", help="only versions in this state (repeatable)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_wrap(cmd_list))
    p = rsub.add_parser("show", parents=[common], help="metadata, lineage and every report of a version")
    p.add_argument("version")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_wrap(cmd_show))
    p = rsub.add_parser("rollback", parents=[common], help="make the previous (or a named) approved version active")
    p.add_argument("--to", help="approved version to go to (default: the previous active one)")
    p.add_argument("--reason", default="")
    p.add_argument("--revoke", action="store_true", help="never serve the version rolled back from again")
    p.set_defaults(func=_wrap(cmd_rollback))
    p = rsub.add_parser("promote", parents=[common], help="make an approved version active")
    p.add_argument("version")
    p.add_argument("--reason", default="")
    p.set_defaults(func=_wrap(cmd_promote))
    p = rsub.add_parser("gc", parents=[common], help="delete versions nobody can serve or roll back to")
    p.add_argument("--keep", type=int_at_least(0), default=3, help="approved versions to keep besides the active one")
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(func=_wrap(cmd_gc))

    g = subparsers.add_parser("gate", parents=[common], help="gate a candidate against the active version")
    g.add_argument("version")
    g.add_argument("--store", help="experience store file (default: <data dir>/experience.sqlite3)")
    g.add_argument("--config", help="YAML with gate settings (plain, a 'gate:' section, or a ROS 2 params file)")
    g.add_argument("--target", help="task the update is for (default: the candidate's recorded target)")
    g.add_argument(
        "--sources",
        nargs="+",
        default=list(GROUND_TRUTH_SOURCES),
        choices=SOURCES,
        help="experience sources whose held-out episodes form the regression suites "
        f"(default: the ground truth, {' '.join(GROUND_TRUTH_SOURCES)})",
    )
    g.add_argument(
        "--rollouts",
        type=int,
        default=0,
        help="closed-loop gate: at most N paired episodes per task in the simulator (0 = off)",
    )
    g.add_argument("--rollout-seed", type=int, default=100_000, help="first variation seed of the closed-loop episodes")
    g.add_argument("--dry-run", action="store_true", help="run the checks without recording a decision")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=_wrap(cmd_gate))
