"""Safety gate cost on the default Meta-World task sequence: per-check time, total, with/without rollouts.

Collects expert demonstrations (train seeds) and held-out episodes (other seeds), trains an active
policy on the first four tasks and a candidate that adds the fifth (replaying the others), then
times SafetyGate.evaluate on the 5-task candidate vs the active one, and prints ONE JSON object.
The baseline, run in the same process, is plain batched inference of both models over the same
suites (the floor of any held-out comparison); the acceptance line is 60 s without rollouts.

    python bench/gate.py                         # full run (closed loop: at most 50 paired episodes per task)
    python bench/gate.py --quick                 # fewer demos/steps, at most 3 pairs per task
    python bench/gate.py --rollouts 0            # offline checks only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_TASKS = ["reach-v3", "push-v3", "pick-place-v3", "button-press-topdown-v3", "drawer-open-v3"]


def _collect(tasks, start, n, desc):
    from tqdm import tqdm

    from lifelong_ros.sim import metaworld as sim

    out = {}
    for t in tqdm(tasks, desc=desc, unit="task", file=sys.stderr):
        env = sim.MetaWorldSim(t, steps_after_success=10)
        out[t] = sim.collect_demonstrations(t, range(start, start + n), sim=env)
    return out


def _train(model, data, steps, lr=1e-3, seed=0):
    import torch
    from tqdm import tqdm

    from lifelong_ros.learning.model import bc_loss

    g = torch.Generator().manual_seed(seed)
    obs = torch.as_tensor(np.concatenate([d[0] for d in data]))
    act = torch.as_tensor(np.concatenate([d[1] for d in data]))
    head = torch.as_tensor(np.concatenate([np.full(len(d[0]), d[2], np.int64) for d in data]))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in tqdm(range(steps), desc=f"train {model.num_heads} heads", file=sys.stderr, leave=False):
        idx = torch.randint(0, len(obs), (256,), generator=g)
        loss = bc_loss(model, obs[idx], head[idx], act[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _stats(xs):
    xs = np.asarray(xs, float)
    return {
        "median": float(np.median(xs)),
        "p99": float(np.percentile(xs, 99)),
        "min": float(xs.min()),
        "max": float(xs.max()),
        "n": int(xs.size),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS)
    ap.add_argument("--demos", type=int, default=20, help="training demonstrations per task")
    ap.add_argument("--heldout", type=int, default=8, help="held-out episodes per task (the regression suites)")
    ap.add_argument("--steps", type=int, default=3000, help="BC steps per model")
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    ap.add_argument("--repeats", type=int, default=5, help="gate evaluations timed (offline checks)")
    ap.add_argument(
        "--rollouts", type=int, default=50, help="closed-loop gate: max paired episodes per task (0 = skip)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training")
    ap.add_argument("--quick", action="store_true", help="8 demos, 4 held-out, 1500 steps, 3 rollouts")
    args = ap.parse_args(argv)
    if args.quick:
        args.demos, args.heldout, args.steps, args.rollouts = 8, 4, 1500, min(args.rollouts, 3)

    import torch

    torch.set_num_threads(args.threads)
    from lifelong_ros.learning.model import PolicyConfig, PolicyNet, export_onnx
    from lifelong_ros.safety.gate import GateConfig, OnnxPolicy, RegressionSuite, SafetyGate
    from lifelong_ros.safety.registry import ModelRegistry
    from lifelong_ros.sim.episodes import stack_episodes
    from lifelong_ros.sim.pool import RolloutPool

    tasks = list(args.tasks)
    t0 = time.perf_counter()
    train_eps = _collect(tasks, 0, args.demos, "train demos")
    held_eps = _collect(tasks, 5000, args.heldout, "held-out demos")
    collect_s = time.perf_counter() - t0
    train_sets = [(*stack_episodes(train_eps[t]), i) for i, t in enumerate(tasks)]
    suites = {}
    for t in tasks:
        obs, act = stack_episodes(held_eps[t])
        ep = np.concatenate([np.full(len(e.obs), e.task.seed) for e in held_eps[t]])
        suites[t] = RegressionSuite(t, obs, act, ep, source="meta-world expert, held-out seeds")

    t0 = time.perf_counter()
    torch.manual_seed(0)
    active = PolicyNet(PolicyConfig(hidden=tuple(args.hidden), num_heads=len(tasks) - 1))
    active.set_normalizer(np.concatenate([d[0] for d in train_sets[:-1]]))
    active = _train(active, train_sets[:-1], args.steps)
    cand = active.clone()
    cand.ensure_heads(len(tasks))
    cand = _train(cand, train_sets, args.steps, seed=1)  # the new task plus replay of the others
    train_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        reg = ModelRegistry(Path(tmp) / "registry")
        a_id = reg.register(export_onnx(active, {"tasks": json.dumps(tasks[:-1])}), tasks=tasks[:-1], method="joint")
        reg.set_decision(a_id, "approved", "bench bootstrap")
        reg.promote(a_id)
        c_id = reg.register(
            export_onnx(cand, {"tasks": json.dumps(tasks)}),
            tasks=tasks,
            method="replay",
            parent=a_id,
            target_task=tasks[-1],
        )
        gate = SafetyGate(reg, GateConfig())

        # baseline: batched inference of both models over every suite (what any comparison costs)
        base_ms = []
        for _ in range(args.repeats):
            t1 = time.perf_counter()
            pc, pa = OnnxPolicy(reg.read_onnx(c_id)), OnnxPolicy(reg.read_onnx(a_id))
            for i, t in enumerate(tasks):
                pc.predict(suites[t].obs, i)
                if i < len(tasks) - 1:
                    pa.predict(suites[t].obs, i)
            base_ms.append((time.perf_counter() - t1) * 1e3)

        totals, per_check = [], {}
        report = None
        for _ in range(args.repeats):
            t1 = time.perf_counter()
            report = gate.evaluate(c_id, suites, decide=False)
            totals.append((time.perf_counter() - t1) * 1e3)
            for k, v in report.timings_ms.items():
                per_check.setdefault(k, []).append(v)

        rollout = None
        if args.rollouts > 0:
            rgate = SafetyGate(reg, GateConfig(closed_loop_max_pairs=args.rollouts))
            with RolloutPool() as pool:
                for f in pool.warm(tasks):  # worker start-up is paid once per run, not per gate
                    f.result()
                t1 = time.perf_counter()
                rrep = rgate.evaluate(c_id, suites, decide=False, episodes=pool, progress=True)
                total_r = (time.perf_counter() - t1) * 1e3
                workers = pool.workers
            rollout = {
                "max_pairs_per_task": args.rollouts,
                "workers": workers,
                "gate_ms_total": total_r,
                "gate_ms": rrep.timings_ms,
                "decision": rrep.decision,
                "failed": rrep.failed,
                "per_task": {
                    c.task: {
                        key: c.detail.get(key)
                        for key in ("pairs", "decided_by", "candidate_success", "active_success", "drop")
                    }
                    | {"passed": c.passed, "threshold": c.threshold}
                    for c in rrep.checks
                    if c.kind in ("closed_loop", "closed_loop_success")
                },
            }

    checks = {
        c.name: {"passed": c.passed, "value": c.value, "threshold": c.threshold}
        for c in report.checks
        if isinstance(c.value, (int, float)) or c.value is None
    }
    total = _stats(totals)
    out = {
        "bench": "gate",
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "gate_threads": 1,
            "note": "shared 2-core VM; timings are noisy",
        },
        "tasks": tasks,
        "suite_samples": {t: len(s) for t, s in suites.items()},
        "model": {"hidden": args.hidden, "obs_dim": 39, "act_dim": 4, "train_steps": args.steps, "demos": args.demos},
        "setup_s": {"collect": collect_s, "train": train_s},
        "without_rollouts": {
            "gate_ms_total": total,
            "gate_ms_per_check": {k: _stats(v) for k, v in per_check.items()},
            "baseline_batched_inference_ms": _stats(base_ms),
            "ratio_total_vs_baseline": total["median"] / float(np.median(base_ms)),
            "ratio_total_vs_60s_budget": total["median"] / 60_000.0,
            "decision": report.decision,
            "failed": report.failed,
            "checks": checks,
        },
        "with_rollouts": rollout,
        "acceptance": {"gate_under_60s_without_rollouts": bool(total["max"] < 60_000.0)},
    }
    print(json.dumps(out, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
