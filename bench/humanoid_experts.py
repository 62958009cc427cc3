"""Scripted experts of the G1 humanoid tasks: success on held-out variations, episode length, speed.

Runs every task's scripted expert (IK + grasp sequence) on ``--episodes`` variation seeds that no
test or demonstration uses (10_000 onwards), and, as the baseline in the same process, a policy
that holds the start pose (zero action is *not* the start pose: it commands the middle of every
command range) on the same seeds: it must fail, so the success check can fail. Prints ONE JSON
object: per task success rate, episodes, mean episode length (control steps at 50 Hz), control
steps/s with the expert and with the hold-still baseline (physics only), and the ratio.

    python bench/humanoid_experts.py                    # 50 held-out variations per task
    python bench/humanoid_experts.py --episodes 10      # quicker
    python bench/humanoid_experts.py --tasks g1-lift g1-place
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from lifelong_ros.sim.humanoid.env import G1Sim, available_tasks

SEED0 = 10_000  # held out: tests use seeds < 100, demonstrations 0.., the demo's held-out/eval ranges 100_000+


def run(task: str, episodes: int) -> dict:
    sim = G1Sim(task, steps_after_success=0)
    expert = sim.expert()
    seeds = range(SEED0, SEED0 + episodes)
    t0, steps, wins, kinds = time.perf_counter(), 0, [], {}
    failed = []
    for s in seeds:
        ep = sim.run_episode(expert, s)
        steps += len(ep.obs)
        wins.append(ep.success)
        assert sim.variation is not None
        kind = sim.variation.kind
        kinds.setdefault(kind, []).append(ep.success)
        if not ep.success:
            failed.append(s)
    expert_s = time.perf_counter() - t0
    sim.reset(SEED0)
    hold = sim.ix.to_action(sim.joint_positions())  # the start pose, held: physics only
    t0, base_steps, base_wins = time.perf_counter(), 0, []
    for s in seeds:
        ep = sim.run_episode(lambda _obs: hold, s)
        base_steps += len(ep.obs)
        base_wins.append(ep.success)
    base_s = time.perf_counter() - t0
    expert_rate, base_rate = steps / expert_s, base_steps / base_s
    return {
        "success": float(np.mean(wins)),
        "episodes": episodes,
        "seeds": [SEED0, SEED0 + episodes - 1],
        "failed_seeds": failed,
        "success_by_object": {k: round(float(np.mean(v)), 3) for k, v in sorted(kinds.items())},
        "mean_episode_steps": round(steps / episodes, 1),
        "expert_control_steps_per_s": round(expert_rate, 1),
        "hold_baseline_success": float(np.mean(base_wins)),
        "hold_baseline_control_steps_per_s": round(base_rate, 1),
        "expert_cost_ratio": round(base_rate / expert_rate, 2),  # > 1: IK costs on top of the physics
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=50, help="held-out variations per task (default 50)")
    parser.add_argument("--tasks", nargs="+", default=available_tasks(), choices=available_tasks())
    args = parser.parse_args()
    if args.episodes < 1:
        parser.error(f"--episodes {args.episodes}: expected at least 1")
    t0 = time.perf_counter()
    per_task = {task: run(task, args.episodes) for task in args.tasks}
    result = {
        "benchmark": "humanoid_experts",
        "robot": "Unitree G1 with hands (MuJoCo Menagerie), fixed pelvis, 50 Hz control, 10 physics steps of 2 ms",
        "tasks": per_task,
        "min_success": min(r["success"] for r in per_task.values()),
        "acceptance": {"expert_success_per_task": ">= 0.9"},
        "passed": all(r["success"] >= 0.9 for r in per_task.values()),
        "wall_s": round(time.perf_counter() - t0, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
