"""Sinusoid regression as in the MAML paper (Finn et al. 2017, §5.1): MSE after 0, 1 and 10 steps.

Tasks: y = A sin(x + φ), A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[-5, 5]; a 1-40-40-1 ReLU MLP; inner
step α = 0.01; meta-batch 25; Adam 1e-3. Each method is meta-trained with K = 10 and evaluated
with K = 5 and K = 10 support points on the same 200 held-out tasks (100 query points each).
`pretrained` is the baseline: one network trained on all tasks jointly, then fine-tuned the same
way. Prints one JSON object; `--quick` is a reduced run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lifelong_ros.learning.meta import MetaConfig, MetaLearner, mse
from lifelong_ros.paths import data_dir as default_data_dir

STEPS = (0, 1, 10)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))


def sample(gen: torch.Generator, tasks: int, points: int):
    amp = torch.rand(tasks, 1, 1, generator=gen) * 4.9 + 0.1
    phase = torch.rand(tasks, 1, 1, generator=gen) * math.pi
    x = torch.rand(tasks, points, 1, generator=gen) * 10 - 5
    return x, amp * torch.sin(x + phase), amp, phase


def task_batch(k: int, meta_batch: int = 25):
    def draw(gen: torch.Generator):
        x, y, _, _ = sample(gen, meta_batch, 2 * k)
        return (x[:, :k],), y[:, :k], (x[:, k:],), y[:, k:]

    return draw


def pretrain(model: nn.Module, iterations: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(iterations):
        x, y, _, _ = sample(gen, 25, 20)
        loss = mse(model(x.reshape(-1, 1)), y.reshape(-1, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()


def evaluate(learner: MetaLearner, k: int, tasks: int = 200) -> list[float]:
    """Mean query MSE after 0, 1, 10 inner steps on K support points, over fixed held-out tasks."""
    gen = torch.Generator().manual_seed(12345)
    xs, ys, amp, phase = sample(gen, tasks, k)
    xq = torch.linspace(-5, 5, 100).view(1, 100, 1).expand(tasks, 100, 1)
    yq = amp * torch.sin(xq + phase)
    out = []
    for steps in STEPS:
        errs = []
        for t in range(tasks):
            fast = (
                learner.adapted_params((xs[t],), ys[t], steps=steps)
                if steps
                else {n: p.detach() for n, p in learner.params.items()}
            )
            with torch.no_grad():
                errs.append(float(learner.loss(fast, (xq[t],), yq[t])))
        out.append(float(np.mean(errs)))
    return out


def run(methods: list[str], iterations: int, seeds: list[int]) -> dict:
    results: dict = {}
    bar = tqdm(total=len(methods) * len(seeds) * iterations, desc="meta-train", unit="it", file=sys.stderr)
    for method in methods:
        per_seed = {"k5": [], "k10": []}
        t0 = time.perf_counter()
        for seed in seeds:
            torch.manual_seed(seed)
            model = mlp()
            bar.set_postfix_str(f"{method} seed {seed}")
            if method == "pretrained":
                pretrain(model, iterations, seed)
                learner = MetaLearner(model, MetaConfig("fomaml", seed=seed))  # only its adapt() is used
                bar.update(iterations)
            else:
                learner = MetaLearner(model, MetaConfig(method, seed=seed))
                done = [0]

                def advance(_phase: str, it: int, _loss: float, done=done) -> None:
                    bar.update(it - done[0])
                    done[0] = it

                learner.meta_train(task_batch(10), iterations, on_progress=advance, progress_every=100)
            for k in (5, 10):
                per_seed[f"k{k}"].append(evaluate(learner, k))
        entry = {key: np.mean(v, 0).round(4).tolist() for key, v in per_seed.items()}
        entry.update({f"{key}_std": np.std(v, 0).round(4).tolist() for key, v in per_seed.items()})
        entry["train_s_per_seed"] = round((time.perf_counter() - t0) / len(seeds), 1)
        results[method] = entry
        bar.write(f"{method}: k10 {entry['k10']} k5 {entry['k5']}", file=sys.stderr)
    bar.close()
    return results


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, key in zip(axes, ("k5", "k10")):
        for name, r in results.items():
            ax.errorbar(STEPS, r[key], yerr=r[f"{key}_std"], marker="o", label=name, capsize=3)
        ax.set_title(f"sinusoid, {key[1:]}-shot")
        ax.set_xlabel("gradient steps at test time")
        ax.set_xscale("symlog")
    axes[0].set_ylabel("query MSE")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1,500 meta-iterations, 3 seeds (about 3 minutes on 2 cores)")
    ap.add_argument("--iterations", type=int, default=None, help="meta-iterations per method and seed (default 10,000)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", default="maml,fomaml,reptile,metasgd,pretrained")
    ap.add_argument("--out", default=None, help="directory for the plot (default: <data dir>/bench)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    iterations = args.iterations or (1500 if args.quick else 10_000)
    results = run(args.methods.split(","), iterations, list(range(args.seeds)))
    out = Path(args.out) if args.out else default_data_dir() / "bench"
    out.mkdir(parents=True, exist_ok=True)
    plot(results, out / "sinusoid.png")
    print(
        json.dumps(
            {
                "benchmark": "sinusoid",
                "iterations": iterations,
                "seeds": args.seeds,
                "meta_batch": 25,
                "inner_lr": 0.01,
                "train_k": 10,
                "steps": list(STEPS),
                "methods": results,
                "plot": str(out / "sinusoid.png"),
            }
        )
    )


if __name__ == "__main__":
    main()
