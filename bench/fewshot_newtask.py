"""Learn a new task from K demonstrations (and a few corrected episodes), starting from a pretrained base.

The base model is `lifelong-ros pretrain`'s: Meta-World's ML45 train split (45 tasks) demonstrated
and learned by one shared-backbone, multi-head network, registered as the first version of a data
directory. Each of ML45's five held-out test tasks (never seen in pretraining) is then learned from
its first K ∈ {1, 5} demonstrations, and again after C = 5 corrected episodes (lifelong_ros/corrections.py:
the adapted ONNX model drives, the scripted expert labels every state it visits, source `correction`;
the task is re-adapted from the same base on demonstrations + corrections). Methods, all through the
learner's own job function (learning/recipes.py:run_request) on a copy of the base's on-disk store:

  ours       meta_ewc_replay from the base (MAML head init over the 45 tasks, online EWC + replay)
  nearest    nearest_ewc_replay from the base (head inference: the known head that fits the K
             demonstrations best starts the new head; then the same EWC + replay)
  finetune   naive from the base: plain fine-tuning of every weight, a fresh head, no EWC or replay
  scratch    naive from a random network

Scored by closed-loop success on unseen variations (through PolicyRuntime); time to adapt is the
wall time of the adaptation(s) plus the corrected episodes. The base's loss on pretraining tasks
after each method from the base adapts (without corrections) is measured on a sample of them. One
JSON object; a plot with --out.

    python bench/fewshot_newtask.py --data-dir DIR [--quick] [--seeds 3] [--out DIR]
    (without --data-dir a pretraining run is made first: the default budget, or --quick's;
    --jobs N runs cells in N processes; with --out an interrupted run resumes from its finished cells,
    and --report makes the JSON and plot of those alone)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lifelong_ros import paths
from lifelong_ros.corrections import TAKEOVER_AFTER, collect_corrections
from lifelong_ros.experience.sources import DEMONSTRATION
from lifelong_ros.experience.store import ExperienceStore
from lifelong_ros.learning.jobs import AdaptRequest
from lifelong_ros.learning.recipes import run_request
from lifelong_ros.pretrain import BASE_ADAPT_OPTIONS, PretrainSettings, evaluate_tasks, ml45_test_tasks, pretrain
from lifelong_ros.safety.registry import ModelRegistry
from lifelong_ros.serving.runtime import PolicyRuntime
from lifelong_ros.sim.metaworld import MetaWorldSim
from lifelong_ros.sim.rollout import successes

METHODS = {
    "ours": ("meta_ewc_replay", True),
    "nearest": ("nearest_ewc_replay", True),
    "finetune": ("naive", True),
    "scratch": ("naive", False),
}
DEMO_SEED0, CORR_SEED0, EVAL_SEED0, FORGET_SEED0 = 300_000, 400_000, 500_000, 200_000


def sign_test_greater(a: list[float], b: list[float]) -> float:
    """One-sided exact sign test: P(at least this many pairs with a > b | no difference); ties dropped."""
    wins = sum(x > y for x, y in zip(a, b))
    n = wins + sum(x < y for x, y in zip(a, b))
    if n == 0:
        return 1.0
    return float(sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n)


def demos_into(store: ExperienceStore, sim: MetaWorldSim, task: str, k: int, seed0: int) -> int:
    """The first ``k`` successful expert episodes from seed ``seed0`` on; returns the seeds used."""
    expert, got, s = sim.expert(), 0, seed0
    while got < k:
        ep = sim.run_episode(expert, s)
        if ep.success:
            store.append_episode(
                task, f"demo-{s}", ep.obs, ep.action, ep.reward, ep.done, source=DEMONSTRATION, split="train"
            )
            got += 1
        s += 1
    return s - seed0


def adapt(
    store_path: Path,
    task: str,
    method: str,
    parent: Path | None,
    k: int,
    steps: int,
    seed: int,
    out: Path,
    options: dict | None = None,
):
    t0 = time.perf_counter()
    req = AdaptRequest(
        task,
        str(store_path),
        method=method,
        shots=k,
        steps=steps,
        seed=seed,
        options=dict(options or {}),
        parent_dir=str(parent) if parent else None,
        out_dir=str(out),
    )
    cand = run_request(req, lambda *_: None, lambda: False)
    return cand, time.perf_counter() - t0


def run_cell(base: Path, work: Path, task: str, seed: int, k: int, corr: int, name: str, a: argparse.Namespace) -> dict:
    method, from_base = METHODS[name]
    d = work / f"{task}-s{seed}-k{k}-c{corr}-{name}"
    d.mkdir(parents=True)
    store_path = d / paths.STORE_FILE
    if from_base:  # the base's store: the 45 tasks' demonstrations that replay and the MAML head init use
        shutil.copy(paths.store_path(base), store_path)
    registry = ModelRegistry(paths.registry_dir(base), create=False)
    parent = registry.info(registry.active()).path if from_base else None
    sim = MetaWorldSim(task, 0, a.max_steps)
    with ExperienceStore(store_path, 39, 4) as store:
        demos_into(store, sim, task, k, DEMO_SEED0 + 1000 * seed)
        opts = (BASE_ADAPT_OPTIONS if a.options is None else a.options) if name in ("ours", "nearest") else {}
        cand, adapt_s = adapt(store_path, task, method, parent, k, a.steps, seed, d / "c0", opts)
        row: dict = {"adapt_s": adapt_s}
        if corr:
            with PolicyRuntime(Path(cand.onnx_path).read_bytes(), "c0") as runtime:
                seeds = range(CORR_SEED0 + 1000 * seed, CORR_SEED0 + 1000 * seed + corr)
                rnd = collect_corrections(runtime, task, store, seeds, sim=sim, takeover_after=a.takeover_after)
            cand, again_s = adapt(store_path, task, method, parent, k, a.steps, seed, d / "c1", opts)
            row.update(
                corrections_s=rnd.seconds,
                corrections_policy_success=rnd.policy_success,
                corrections_takeovers=sum(t is not None for t in rnd.takeovers),
                corrections_records=rnd.records,
                corrections_discarded=rnd.discarded,
            )
            row["adapt_s"] = adapt_s + rnd.seconds + again_s
    with PolicyRuntime(Path(cand.onnx_path).read_bytes(), "eval") as runtime:
        row["success"] = float(np.mean(successes(runtime, sim, range(EVAL_SEED0, EVAL_SEED0 + a.eval_episodes))))
    sim.close()
    if from_base and a.forget_tasks and corr == 0:  # what adapting cost the pretraining tasks
        old = list(registry.info(registry.active()).tasks)
        pick = [old[i] for i in np.random.default_rng(seed).choice(len(old), a.forget_tasks, replace=False)]
        seeds = range(FORGET_SEED0, FORGET_SEED0 + a.forget_episodes)
        row["pretrain_tasks"] = {"tasks": pick, "after": evaluate_tasks(cand.onnx_path, pick, seeds)}
    if not a.keep:
        shutil.rmtree(d)
    return row


def _worker_init() -> None:
    torch.set_num_threads(1)


def cells_file(a: argparse.Namespace) -> Path:
    """Finished cells of runs with these settings (``--out``): an interrupted run picks up from them."""
    keys = ("data_dir", "steps", "eval_episodes", "max_steps", "forget_tasks", "forget_episodes", "options")
    settings = {k: str(getattr(a, k)) for k in keys} | {"takeover_after": a.takeover_after}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return a.out / f"cells-{digest}.jsonl"


def finished_cells(a: argparse.Namespace) -> dict[tuple, dict]:
    path = cells_file(a)
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out[tuple(rec["cell"])] = rec["row"]
    return out


def summarise(rows: list[dict]) -> dict:
    succ = [r["success"] for r in rows]
    t = [r["adapt_s"] for r in rows]
    return {
        "mean": float(np.mean(succ)),
        "median": float(np.median(succ)),
        "per_task": {
            task: float(np.mean([r["success"] for r in rows if r["task"] == task]))
            for task in dict.fromkeys(r["task"] for r in rows)
        },
        "adapt_s": {"median": float(np.median(t)), "max": float(np.max(t))},
        "runs": [{k: v for k, v in r.items() if k != "pretrain_tasks"} for r in rows],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data-dir", type=Path, help="a data directory `lifelong-ros pretrain` filled (default: pretrain one)"
    )
    ap.add_argument("--quick", action="store_true", help="two tasks, one seed, 10 evaluation episodes, 500 steps")
    ap.add_argument("--tasks", help="comma-separated held-out tasks (default: ML45's five test tasks)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--shots", default="1,5")
    ap.add_argument("--corrections", default="0,5")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="optimiser steps per adaptation (default 1500)")
    ap.add_argument("--eval-episodes", type=int, default=None)
    ap.add_argument("--max-steps", type=int, default=500)
    ap.add_argument("--forget-tasks", type=int, default=None, help="pretraining tasks checked for loss")
    ap.add_argument("--forget-episodes", type=int, default=10)
    ap.add_argument(
        "--takeover-after",
        type=int,
        default=TAKEOVER_AFTER,
        help="steps without a new best reward before the expert takes a corrected episode over (0: never, pure DAgger)",
    )
    ap.add_argument("--keep", action="store_true", help="keep every cell's store and candidates")
    ap.add_argument(
        "--options",
        type=json.loads,
        default=None,
        help='recipe options of "ours" and "nearest" as JSON, e.g. {"replay_ratio": 0.8} '
        "(default: pretrain.BASE_ADAPT_OPTIONS)",
    )
    ap.add_argument(
        "--out", type=Path, help="directory for the plot, the JSON and finished cells (a rerun resumes from them)"
    )
    ap.add_argument("--jobs", type=int, default=1, help="cells run in this many worker processes")
    ap.add_argument(
        "--report", action="store_true", help="with --out: report the cells earlier runs finished, run nothing"
    )
    a = ap.parse_args(argv)
    q = a.quick
    a.seeds = a.seeds or (1 if q else 3)
    a.steps = a.steps or (500 if q else 1500)
    a.eval_episodes = a.eval_episodes or (10 if q else 20)
    a.forget_tasks = (3 if q else 10) if a.forget_tasks is None else a.forget_tasks
    if q:
        a.forget_episodes = min(a.forget_episodes, 5)
    tasks = a.tasks.split(",") if a.tasks else (["door-lock-v3", "door-unlock-v3"] if q else list(ml45_test_tasks()))
    names = a.methods.split(",")
    shots = [int(x) for x in a.shots.split(",")]
    corrs = [int(x) for x in a.corrections.split(",")]
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="fewshot_newtask-"))
    base = a.data_dir
    if base is None:
        base = work / "base"
        pretrain(base, PretrainSettings.quick() if q else PretrainSettings(), progress=True)
    registry = ModelRegistry(paths.registry_dir(base), create=False)
    active = registry.active()
    if active is None:
        raise SystemExit(f"{base} has no active version; run `lifelong-ros pretrain --data-dir {base}` first")
    info = registry.info(active)
    seen = set(info.tasks) & set(tasks)
    if seen:
        raise SystemExit(f"{sorted(seen)} were pretrained on; expected held-out tasks")
    base_pretrain = {}
    if a.forget_tasks:  # the base's own success on the same sample of pretraining tasks and seeds
        for seed in range(a.seeds):
            pick = [
                info.tasks[i]
                for i in np.random.default_rng(seed).choice(len(info.tasks), a.forget_tasks, replace=False)
            ]
            base_pretrain[seed] = evaluate_tasks(
                info.path / paths.MODEL_FILE, pick, range(FORGET_SEED0, FORGET_SEED0 + a.forget_episodes)
            )
    # seed by seed, so a run stopped early (--report) holds whole seeds; baselines with corrections last
    cells = sorted(
        (
            (task, seed, k, c, name)
            for task in tasks
            for seed in range(a.seeds)
            for k in shots
            for c in corrs
            for name in names
        ),
        key=lambda cell: (cell[4] != "ours" and cell[3] > 0, cell[1]),
    )
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
    done = finished_cells(a) if a.out else {}
    results: dict[tuple, dict] = {}
    rows: dict[str, list[dict]] = {}
    bar = tqdm(total=len(cells), desc="cells", file=sys.stderr)

    def finish(cell: tuple, row: dict, fresh: bool) -> None:
        task, seed, k, c, name = cell
        row.update(task=task, seed=seed)
        results[cell] = row
        if fresh and a.out:
            with open(cells_file(a), "a") as f:
                f.write(json.dumps({"cell": list(cell), "row": row}) + "\n")
        tqdm.write(
            f"{task} seed {seed} K={k} C={c} {name}: success {row['success']:.2f}, adapt {row['adapt_s']:.0f} s"
            + ("" if fresh else " (from an earlier run)"),
            file=sys.stderr,
        )
        bar.update(1)

    for cell in cells:
        if cell in done:
            finish(cell, done[cell], fresh=False)
    todo = [cell for cell in cells if cell not in done]
    if a.report:  # the table of what earlier runs finished, nothing run
        cells, todo = [cell for cell in cells if cell in done], []
    if a.jobs > 1:  # cells in parallel worker processes, one torch thread each
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(a.jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init) as pool:
            futures = {pool.submit(run_cell, base, work, *cell, a): cell for cell in todo}
            for fut in as_completed(futures):
                finish(futures[fut], fut.result(), fresh=True)
    else:
        for cell in todo:
            finish(cell, run_cell(base, work, *cell, a), fresh=True)
    bar.close()
    for cell in cells:  # the table in the cells' order, whichever finished first
        rows.setdefault(f"{cell[4]}/k{cell[2]}_c{cell[3]}", []).append(results[cell])
    table: dict[str, dict] = {}
    for key, rs in rows.items():
        name, cell = key.split("/")
        table.setdefault(name, {})[cell] = summarise(rs)
    p_values = {}
    if "ours" in table:
        for base_name in (n for n in names if n != "ours"):
            for cell in table["ours"]:
                if f"{base_name}/{cell}" not in rows:
                    continue
                other = {(r["task"], r["seed"]): r["success"] for r in rows[f"{base_name}/{cell}"]}
                pairs = [
                    (r["success"], other[r["task"], r["seed"]])
                    for r in rows[f"ours/{cell}"]
                    if (r["task"], r["seed"]) in other
                ]
                p_values[f"ours_gt_{base_name}_{cell}"] = sign_test_greater(
                    [x for x, _ in pairs], [y for _, y in pairs]
                )
    loss = []
    for key, rs in rows.items():
        for r in rs:
            if "pretrain_tasks" in r:
                before = base_pretrain[r["seed"]]
                after = r["pretrain_tasks"]["after"]
                loss.append(
                    {
                        "task": r["task"],
                        "seed": r["seed"],
                        "cell": key,
                        "before": float(np.mean(list(before.values()))),
                        "after": float(np.mean(list(after.values()))),
                    }
                )
    ours5 = table.get("ours", {})
    ours_loss = [x["before"] - x["after"] for x in loss if x["cell"].startswith("ours/")]
    result = {
        "benchmark": "fewshot_newtask",
        "base": {"version": active, "pretrain_tasks": len(info.tasks), "pretrain": info.extra.get("pretrain_settings")},
        "held_out_tasks": tasks,
        "seeds": a.seeds,
        "eval_episodes": a.eval_episodes,
        "max_steps": a.max_steps,
        "steps": a.steps,
        "takeover_after": a.takeover_after,
        "options_ours": BASE_ADAPT_OPTIONS if a.options is None else a.options,
        "methods": {n: {"recipe": METHODS[n][0], "from_base": METHODS[n][1]} for n in names},
        "table": table,
        "p_values_sign_test": p_values,
        "pretrain_tasks_loss": {
            "runs": loss,
            "mean_loss_by_method": {
                n: float(np.mean([x["before"] - x["after"] for x in loss if x["cell"].startswith(f"{n}/")]))
                for n in sorted({x["cell"].split("/")[0] for x in loss})
            },
            "tasks_sampled": a.forget_tasks,
            "episodes": a.forget_episodes,
        },
        "targets": {
            "k5_c0_ge_0.6": ours5.get("k5_c0", {}).get("mean", math.nan) >= 0.6,
            "k5_c5_ge_0.9": ours5.get("k5_c5", {}).get("mean", math.nan) >= 0.9,
            "adapt_le_60s": all(c["adapt_s"]["median"] <= 60 for c in ours5.values()),
            "pretrain_loss_le_0.05": bool(ours_loss) and float(np.mean(ours_loss)) <= 0.05,
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "fewshot_newtask.json").write_text(json.dumps(result, indent=2))
        plot(table, names, a.out / "fewshot_newtask.png")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 0


def plot(table: dict, names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = sorted({c for n in names for c in table.get(n, {})}, key=lambda c: (int(c[1:].split("_")[0]), c))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.6))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        means = [table[n][c]["mean"] for c in cells]
        secs = [table[n][c]["adapt_s"]["median"] for c in cells]
        ax.bar(np.arange(len(cells)) + i * width, means, width, label=n)
        bx.bar(np.arange(len(cells)) + i * width, secs, width, label=n)
    labels = [c.replace("_c", ", C=").replace("k", "K=") for c in cells]
    for axis in (ax, bx):
        axis.set_xticks(np.arange(len(cells)) + width * (len(names) - 1) / 2, labels)
    ax.set_ylabel("success, held-out ML45 tasks")
    ax.set_ylim(0, 1.05)
    ax.axhline(0.6, color="grey", lw=0.8, ls="--")
    ax.axhline(0.9, color="grey", lw=0.8, ls=":")
    ax.legend()
    bx.set_ylabel("time to adapt (s, median)")
    bx.axhline(60, color="grey", lw=0.8, ls="--")
    fig.suptitle("New task from K demonstrations (+ C corrected episodes)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
