"""MAML meta-iteration time: torch.func vmap over tasks vs a Python loop with autograd.grad(create_graph=True).

Same model (the paper's 1-40-40-1 sinusoid MLP), same 25 tasks, one inner step, second order,
both measured in this process with the arms interleaved. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lifelong_ros.learning.meta import MetaConfig, MetaLearner, loop_meta_grads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sinusoid import mlp, task_batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rounds = args.rounds or (10 if args.quick else 40)
    torch.manual_seed(0)
    model = mlp()
    learner = MetaLearner(model, MetaConfig("maml", inner_lr=0.01))
    batch = task_batch(10)(torch.Generator().manual_seed(0))
    ref, got = loop_meta_grads(model, batch, 0.01), learner.meta_loss_and_grads(batch)[1]
    max_diff = max(float((ref[n] - got[n]).abs().max()) for n in ref)
    for _ in range(3):  # warm both paths
        loop_meta_grads(model, batch, 0.01)
        learner.meta_loss_and_grads(batch)
    loop_ms, vmap_ms = [], []
    for _ in range(rounds):  # interleaved, so machine noise hits both arms alike
        t0 = time.perf_counter()
        loop_meta_grads(model, batch, 0.01)
        loop_ms.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        learner.meta_loss_and_grads(batch)
        vmap_ms.append((time.perf_counter() - t0) * 1e3)
    loop, vm = float(np.median(loop_ms)), float(np.median(vmap_ms))
    print(
        json.dumps(
            {
                "benchmark": "maml_speed",
                "tasks": 25,
                "k": 10,
                "rounds": rounds,
                "loop_ms": round(loop, 3),
                "vmap_ms": round(vm, 3),
                "ratio": round(loop / vm, 2),
                "loop_p90_ms": round(float(np.percentile(loop_ms, 90)), 3),
                "vmap_p90_ms": round(float(np.percentile(vmap_ms, 90)), 3),
                "max_grad_diff": max_diff,
            }
        )
    )


if __name__ == "__main__":
    main()
