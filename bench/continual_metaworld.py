"""Meta-World behaviour-cloning sequence: success matrix from closed-loop rollouts for every method.

Five manipulation tasks learned one after another from scripted-expert demonstrations with a
per-task-head PolicyNet; after each task every task learned so far is rolled out in the simulator
on held-out variations. Prints ONE JSON object (mean ± std over seeds); heatmaps go to --out.

    python bench/continual_metaworld.py --out /tmp/mw            # full run (3 seeds, 8 methods)
    python bench/continual_metaworld.py --quick --out /tmp/mw    # reduced run (< 3 min)
    python bench/continual_metaworld.py --tune                   # grid search on held-out BC loss
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import METHODS, acceptance, method_options, method_table, options_json, run_sequence, seeded

from lifelong_ros.learning import metrics
from lifelong_ros.learning.model import PolicyConfig, PolicyNet, bc_loss
from lifelong_ros.learning.strategies import StrategyOptions
from lifelong_ros.learning.trainer import Experience, TrainOptions
from lifelong_ros.sim.episodes import stack_episodes
from lifelong_ros.sim.metaworld import MetaWorldSim, collect_demonstrations, evaluate

DEFAULT_TASKS = ("reach-v3", "push-v3", "pick-place-v3", "button-press-topdown-v3", "drawer-open-v3")
QUICK_TASKS = ("reach-v3", "button-press-topdown-v3", "drawer-open-v3")
HIDDEN = (256, 256)
DEMO_SEEDS = range(0, 1000)  # variation seeds for demonstrations (training)
VAL_SEEDS = range(2000, 3000)  # held-out demonstrations for tuning (BC loss only)
EVAL_SEEDS = range(5000, 6000)  # held-out variations for closed-loop success

# Every demonstration is kept for replay, and replay is balanced: each earlier task gets as many
# samples per batch as the new one (joint training's composition). With a fixed ratio of 0.5
# the grasp (pick-place) was forgotten as later tasks took half of every batch: EWC + replay
# 0.89 vs joint 0.96, forgetting 0.13 (3 seeds, 10 rollouts, constant lr). Other values (the
# registry's defaults, fisher_samples from _common.BENCH_DEFAULTS) as `--tune` chose on held-out
# demonstration BC loss; see "strategy_options" in the JSON. The learning rate decays (cosine)
# within each task for every method: with a constant rate closed-loop success swung from one
# evaluation to the next (joint's own "forgetting" was 0.05-0.06).
TUNED: dict[str, dict] = {"replay": {"replay_ratio": "balanced"}, "ewc_replay": {"replay_ratio": "balanced"}}
MEMORY_PER_TASK = 100_000

# Each tuned method's own knob and its grid, in this order: ewc_replay after replay, whose chosen ratio it takes.
GRID: dict[str, tuple[str, list]] = {
    "l2": ("l2_lambda", [0.01, 0.1, 1.0, 10.0]),
    "ewc": ("ewc_lambda", [10.0, 100.0, 1e3, 1e4, 1e5]),
    "online_ewc": ("ewc_lambda", [10.0, 100.0, 1e3, 1e4, 1e5]),
    "si": ("si_lambda", [0.01, 0.1, 1.0, 10.0]),
    "replay": ("replay_ratio", [0.25, 0.5, 0.75, "balanced"]),
    "ewc_replay": ("ewc_lambda", [10.0, 100.0, 1e3, 1e4, 1e5]),
}


def demos(task: str, seeds, cache: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(obs, action) of successful expert episodes on ``seeds``; cached as .npz under ``cache``."""
    seeds = list(seeds)
    path = cache / f"demos_{task}_{seeds[0]}_{len(seeds)}.npz" if cache is not None else None
    if path is not None and path.exists():
        data = np.load(path)
        return data["obs"], data["action"]
    obs, act = stack_episodes(collect_demonstrations(task, seeds, progress=True))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, obs=obs, action=act)
    return obs, act


@dataclass
class Sequence_:
    tasks: tuple[str, ...]
    experiences: list[Experience]
    val: list[Experience]
    obs_mean: torch.Tensor
    obs_std: torch.Tensor


def load_sequence(tasks, n_demos: int, n_val: int, cache: Path | None) -> Sequence_:
    exps, val = [], []
    for k, task in enumerate(tasks):
        obs, act = demos(task, DEMO_SEEDS[:n_demos], cache)
        exps.append(Experience.from_arrays(obs, act, k, name=task))
        vobs, vact = demos(task, VAL_SEEDS[:n_val], cache)
        val.append(Experience.from_arrays(vobs, vact, k, name=task))
    # The normaliser comes from the first task only (what a deployed model was built from); every
    # method, joint included, uses the same one. Std floor 0.05 keeps unused-then-used features sane.
    first = exps[0].x
    return Sequence_(tuple(tasks), exps, val, first.mean(0), first.std(0).clamp_min(0.05))


def make_model(seq: Sequence_, seed: int) -> PolicyNet:
    seeded(seed)
    model = PolicyNet(PolicyConfig(39, 4, HIDDEN, len(seq.tasks)))
    model.obs_mean.copy_(seq.obs_mean)
    model.obs_std.copy_(seq.obs_std)
    return model


class RolloutEvaluator:
    """Success rate of head j on task j over fixed held-out variations (one simulator per task)."""

    def __init__(self, tasks, n_rollouts: int, max_steps: int):
        self.tasks = tasks
        self.seeds = list(EVAL_SEEDS[:n_rollouts])
        self.sims = [MetaWorldSim(t, steps_after_success=0, max_steps=max_steps) for t in tasks]

    def __call__(self, model: torch.nn.Module, j: int) -> float:
        head = torch.tensor([j], dtype=torch.int64)

        def policy(obs: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model(torch.from_numpy(obs).unsqueeze(0), head)[0].numpy()

        return evaluate(policy, self.tasks[j], self.seeds, sim=self.sims[j])


def bc_evaluator(val: list[Experience]):
    """-MSE on held-out demonstrations (higher is better), used for tuning instead of success."""

    def evaluate_bc(model: torch.nn.Module, j: int) -> float:
        with torch.no_grad():
            return -float(bc_loss(model, val[j].x, val[j].task_idx, val[j].y))

    return evaluate_bc


def tune(
    seq: Sequence_, options: TrainOptions, base: dict[str, StrategyOptions], seed: int = 1000
) -> tuple[dict[str, StrategyOptions], dict]:
    """Coordinate-wise grid search in GRID order; the replay ratio chosen for replay is ewc_replay's too."""
    per_method, trace = dict(base), {}
    for method, (key, values) in tqdm(GRID.items(), desc="tune", file=sys.stderr):
        scores = {}
        for v in values:
            trial = replace(per_method[method], **{key: v})
            r, _ = run_sequence(
                make_model(seq, seed),
                bc_loss,
                seq.experiences,
                bc_evaluator(seq.val),
                method,
                trial,
                replace(options, seed=seed),
                MEMORY_PER_TASK,
                evaluate_future=False,
            )
            scores[v] = float(r[-1].mean())  # mean held-out -MSE over all tasks after the last one
        best = max(scores, key=lambda v: scores[v])
        per_method[method] = replace(per_method[method], **{key: best})
        if method == "replay":
            per_method["ewc_replay"] = replace(per_method["ewc_replay"], replay_ratio=best)
        trace[method] = {"option": key, "chosen": best, "val_neg_mse": {str(k): round(s, 5) for k, s in scores.items()}}
    return per_method, trace


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--demos", type=int, default=50, help="expert demonstrations per task")
    ap.add_argument("--val-demos", type=int, default=10, help="held-out demonstrations per task (tuning)")
    ap.add_argument("--steps", type=int, default=2000, help="optimiser steps per task (every method)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument(
        "--lr-final",
        type=float,
        default=1e-5,
        help="cosine decay of the learning rate to this within each task (every method); "
        "a negative value keeps it constant",
    )
    ap.add_argument("--rollouts", type=int, default=20, help="held-out variations per matrix cell")
    ap.add_argument("--max-steps", type=int, default=200, help="rollout length cap (experts finish in < 100)")
    ap.add_argument("--quick", action="store_true", help="3 tasks, naive/joint/ewc_replay, small budgets: < 3 min")
    ap.add_argument("--tune", action="store_true", help="grid-search hyper-parameters on held-out BC loss first")
    ap.add_argument("--out", type=Path, default=None, help="directory for heatmaps (and the demo cache)")
    ap.add_argument("--cache", type=Path, default=None, help="demo cache directory (default: --out)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.quick:
        tasks = QUICK_TASKS if args.tasks == ",".join(DEFAULT_TASKS) else tasks
        methods = ["naive", "joint", "ewc_replay"] if args.methods == ",".join(METHODS) else methods
        args.demos, args.steps, args.rollouts, args.val_demos = (
            min(args.demos, 10),
            min(args.steps, 300),
            min(args.rollouts, 5),
            min(args.val_demos, 3),
        )
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown methods {bad}; expected a subset of {METHODS}")
    cache = args.cache or args.out
    started = time.perf_counter()
    seq = load_sequence(tasks, args.demos, args.val_demos, cache)
    lr_final = args.lr_final if args.lr_final >= 0 else None
    options = TrainOptions(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, lr_final=lr_final, progress_every=10**9
    )
    per_method, tuning = method_options(TUNED), None
    if args.tune:
        per_method, tuning = tune(seq, options, per_method)
    evaluator = RolloutEvaluator(tasks, args.rollouts, args.max_steps)
    seeds = list(range(args.seeds))
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    with tqdm(total=len(methods) * len(seeds), desc="metaworld", file=sys.stderr) as bar:
        for method in methods:
            for seed in seeds:
                r, _ = run_sequence(
                    make_model(seq, seed),
                    bc_loss,
                    seq.experiences,
                    evaluator,
                    method,
                    per_method[method],
                    replace(options, seed=seed),
                    MEMORY_PER_TASK,
                    evaluate_future=False,
                )
                runs[method].append(metrics.summarize(r))
                bar.update(1)
    table = method_table(runs)
    if args.out is not None:
        for method, row in table.items():
            metrics.plot_matrix(
                row["matrix"],
                args.out / f"metaworld_{method}.png",
                list(tasks),
                title=f"Meta-World BC {method}: avg success {row['avg_acc']['mean']:.2f}",
                label="success",
            )
    result = {
        "benchmark": "metaworld_bc_sequence",
        "tasks": list(tasks),
        "methods": table,
        "acceptance": acceptance(table),
        "strategy_options": options_json({m: per_method[m] for m in methods}, MEMORY_PER_TASK),
        "options": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "lr_final": lr_final,
            "hidden": list(HIDDEN),
            "demos": args.demos,
            "rollouts": args.rollouts,
            "max_steps": args.max_steps,
            "quick": args.quick,
        },
        "seeds": seeds,
        "seconds": round(time.perf_counter() - started, 1),
        "note": "matrix cells above the diagonal are not evaluated (untrained heads), so FWT is null",
    }
    if tuning is not None:
        result["tuning"] = tuning
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
