"""Few-shot grasp adaptation: put the object where K = 1 or 5 demonstrations put it.

The grasp task is Meta-World's pick-place with the goal hidden from the policy (its goal
coordinates are zeroed in every observation the policy sees, as in Meta-World's ML1 benchmark).
A *task* is one goal position; its demonstrations move the object from different start positions
to that goal. The demonstrations are the only way to learn where the goal is, so the policy must
adapt. Meta-training uses goals that are never tested; each held-out goal is adapted to from its
first K demonstrations and scored by closed-loop success from object positions not demonstrated.

Three initialisations get exactly the same adaptation (same optimiser, steps and data):
  scratch     a random network;
  pretrained  behaviour cloning on all meta-training demonstrations pooled (it learns to grasp
              and to carry the object towards the average goal);
  meta        the pretrained network meta-trained further with MAML (second order) over goals.
Two adaptation budgets: "fast" (the on-robot path: a few plain gradient steps, the inner loop the
meta-learner trained for) and "long" (Adam, a few hundred steps). Prints one JSON object.

    python bench/fewshot_grasp.py [--quick] [--seeds 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lifelong_ros.learning.meta import MetaConfig, MetaLearner
from lifelong_ros.learning.model import PolicyConfig, PolicyNet, bc_loss
from lifelong_ros.sim.episodes import stack_episodes
from lifelong_ros.sim.metaworld import MetaWorldSim

TASK = "pick-place-v3"
METHODS = ("scratch", "pretrained", "meta")
INNER_LR, INNER_STEPS = 0.05, 5  # the fast path: plain gradient steps on the K demonstrations


def hide_goal(obs: np.ndarray) -> np.ndarray:
    """The policy's view: the goal coordinates (the last 3 entries) zeroed."""
    out = np.array(obs, dtype=np.float32, copy=True)
    out[..., -3:] = 0.0
    return out


class GoalTasks:
    """Goals and object start positions for pick-place; a task is one goal."""

    def __init__(self, sim: MetaWorldSim, seed: int):
        self.sim = sim
        self.low, self.high, self.goal_dims = sim.placement_space
        self.rng = np.random.default_rng(seed)

    def goal(self) -> np.ndarray:
        return self.rng.uniform(self.low[-self.goal_dims :], self.high[-self.goal_dims :])

    def placements(self, goal: np.ndarray, n: int) -> list[np.ndarray]:
        """``n`` valid placements with this goal and random object positions."""
        out = []
        while len(out) < n:
            vec = np.concatenate([self.rng.uniform(self.low[: -self.goal_dims], self.high[: -self.goal_dims]), goal])
            try:
                self.sim.reset(0, vec)
            except ValueError:  # object too near the goal for this task's rules: draw again
                continue
            out.append(vec)
        return out

    def demos(self, goal: np.ndarray, n: int) -> list:
        expert = self.sim.expert()  # the expert sees the goal; the learner will not
        eps = []
        while len(eps) < n:
            ep = self.sim.run_episode(expert, 0, placement=self.placements(goal, 1)[0])
            if ep.success:
                eps.append(ep)
        return eps


def fresh(seed: int, normaliser: np.ndarray) -> PolicyNet:
    torch.manual_seed(seed)
    net = PolicyNet(PolicyConfig(hidden=(256, 256), num_heads=1, multi_head=False))
    net.set_normalizer(normaliser)
    return net


def as_tensors(episodes) -> tuple[torch.Tensor, torch.Tensor]:
    obs, act = stack_episodes(episodes)
    return torch.as_tensor(hide_goal(obs)), torch.as_tensor(act)


def fit(net: PolicyNet, obs: torch.Tensor, act: torch.Tensor, steps: int, seed: int, batch: int = 256) -> PolicyNet:
    """Behaviour cloning with Adam (pretraining, and the "long" adaptation budget)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.zeros(len(obs), dtype=torch.long)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(obs), (min(batch, len(obs)),), generator=gen)
        loss = bc_loss(net, obs[idx], t[idx], act[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def fast_adapt(net: PolicyNet, obs: torch.Tensor, act: torch.Tensor) -> PolicyNet:
    """The fast path: INNER_STEPS full-batch gradient steps of size INNER_LR (what MAML trains for)."""
    t = torch.zeros(len(obs), dtype=torch.long)
    opt = torch.optim.SGD(net.parameters(), INNER_LR)
    net.train()
    for _ in range(INNER_STEPS):
        loss = bc_loss(net, obs, t, act)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def meta_train(
    net: PolicyNet,
    tasks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    iterations: int,
    seed: int,
    meta_batch: int,
    rows: int,
) -> PolicyNet:
    """MAML over goals: support = 1 or more demonstrations of a goal, query = others of the same goal."""

    def draw(gen: torch.Generator):
        xs, ys, xq, yq = [], [], [], []
        for i in torch.randint(0, len(tasks), (meta_batch,), generator=gen).tolist():
            obs, act, ep = tasks[i]  # ep: episode index of every row
            n_eps = int(ep.max()) + 1
            order = torch.randperm(n_eps, generator=gen)
            k = int(torch.randint(1, 3, (1,), generator=gen))  # 1 or 2 support demonstrations
            sup = torch.isin(ep, order[:k])
            s_rows = torch.nonzero(sup).squeeze(1)
            q_rows = torch.nonzero(~sup).squeeze(1)
            s = s_rows[torch.randint(0, len(s_rows), (rows,), generator=gen)]
            q = q_rows[torch.randint(0, len(q_rows), (rows,), generator=gen)]
            xs.append(obs[s]), ys.append(act[s]), xq.append(obs[q]), yq.append(act[q])
        zeros = torch.zeros(meta_batch, rows, dtype=torch.long)
        return (torch.stack(xs), zeros), torch.stack(ys), (torch.stack(xq), zeros), torch.stack(yq)

    learner = MetaLearner(net, MetaConfig("maml", inner_lr=INNER_LR, inner_steps=INNER_STEPS, outer_lr=3e-4, seed=seed))
    with tqdm(total=iterations, desc="meta-train", file=sys.stderr, leave=False) as bar:
        learner.meta_train(draw, iterations, on_progress=lambda _p, it, _l: bar.update(it - bar.n), progress_every=10)
    return net.eval()


def success(net: PolicyNet, sim: MetaWorldSim, placements: list[np.ndarray]) -> float:
    def policy(obs):
        with torch.no_grad():
            return net(torch.as_tensor(hide_goal(obs))[None], torch.zeros(1, dtype=torch.long))[0].numpy()

    wins = 0
    for vec in placements:
        try:
            wins += sim.run_episode(policy, 0, placement=vec).success
        except ValueError:  # a non-finite action: a failed episode (the network diverged)
            pass
    return wins / len(placements)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer goals, iterations and episodes (< 3 minutes)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="directory for the plot")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        train_goals, demos_per_goal, test_goals, eval_per_goal = 12, 6, 4, 4
        pre_steps, meta_its, long_steps = 800, 150, 150
    else:
        train_goals, demos_per_goal, test_goals, eval_per_goal = 40, 8, 10, 6
        pre_steps, meta_its, long_steps = 3000, 600, 300
    max_steps = 200
    t0 = time.perf_counter()
    sim = MetaWorldSim(TASK, steps_after_success=0, max_steps=max_steps)
    gen_train, gen_test = GoalTasks(sim, 1), GoalTasks(sim, 2)  # disjoint streams of goals
    train = []
    for _ in tqdm(range(train_goals), desc="meta-train demos", file=sys.stderr, leave=False):
        eps = gen_train.demos(gen_train.goal(), demos_per_goal)
        obs, act = as_tensors(eps)
        ep = torch.cat([torch.full((len(e.obs),), i) for i, e in enumerate(eps)])
        train.append((obs, act, ep))
    test = []
    for _ in range(test_goals):
        goal = gen_test.goal()
        test.append((gen_test.demos(goal, 5), gen_test.placements(goal, eval_per_goal)))
    all_obs = torch.cat([o for o, _, _ in train])
    all_act = torch.cat([a for _, a, _ in train])
    budgets = ("fast", "long")
    results = {m: {f"{b}_k{k}": [] for b in budgets for k in (1, 5)} for m in METHODS}
    results["pretrained"]["no_adaptation"] = []
    bar = tqdm(total=args.seeds * test_goals * 2 * len(budgets) * len(METHODS), desc="adapt+evaluate", file=sys.stderr)
    for seed in range(args.seeds):
        pretrained = fit(fresh(seed, all_obs.numpy()), all_obs, all_act, pre_steps, seed)
        meta = meta_train(pretrained.clone(), train, meta_its, seed, meta_batch=8, rows=128)
        inits = {"scratch": fresh(seed + 1000, all_obs.numpy()), "pretrained": pretrained, "meta": meta}
        results["pretrained"]["no_adaptation"].append(
            float(np.mean([success(pretrained, sim, places) for _, places in test]))
        )
        cells: dict[str, list[float]] = {}
        for g, (demos, places) in enumerate(test):
            for k in (1, 5):
                obs, act = as_tensors(demos[:k])
                for b in budgets:
                    for name, init in inits.items():
                        net = (
                            fast_adapt(init.clone(), obs, act)
                            if b == "fast"
                            else fit(init.clone(), obs, act, long_steps, seed * 1000 + g)
                        )
                        cells.setdefault(f"{name}/{b}_k{k}", []).append(success(net, sim, places))
                        bar.update(1)
        for key, vals in cells.items():
            name, cell = key.split("/")
            results[name][cell].append(float(np.mean(vals)))
    bar.close()
    summary = {
        m: {cell: {"mean": float(np.mean(v)), "std": float(np.std(v)), "runs": v} for cell, v in r.items()}
        for m, r in results.items()
    }
    accept = {}
    for b in budgets:
        for k in (1, 5):
            cell = f"{b}_k{k}"
            meta_m = summary["meta"][cell]["mean"]
            accept[f"meta_beats_both_{cell}"] = bool(
                meta_m > summary["scratch"][cell]["mean"] and meta_m > summary["pretrained"][cell]["mean"]
            )
    if args.out is not None:
        plot(summary, budgets, args.out / "fewshot_grasp.png")
    print(
        json.dumps(
            {
                "benchmark": "fewshot_grasp",
                "task": TASK,
                "setting": "goal hidden; a task is a goal; held-out goals",
                "train_goals": train_goals,
                "demos_per_train_goal": demos_per_goal,
                "test_goals": test_goals,
                "eval_episodes_per_goal": eval_per_goal,
                "pretrain_steps": pre_steps,
                "meta_iterations": meta_its,
                "fast": {"optimizer": "sgd", "lr": INNER_LR, "steps": INNER_STEPS},
                "long": {"optimizer": "adam", "lr": 1e-3, "steps": long_steps},
                "seeds": args.seeds,
                "methods": summary,
                "acceptance": accept,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )
    return 0


def plot(summary: dict, budgets, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [(b, k) for b in budgets for k in (1, 5)]
    cells = [f"{b}_k{k}" for b, k in pairs]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(METHODS)
    for i, m in enumerate(METHODS):
        means = [summary[m][c]["mean"] for c in cells]
        stds = [summary[m][c]["std"] for c in cells]
        ax.bar(np.arange(len(cells)) + i * width, means, width, yerr=stds, label=m, capsize=3)
    ax.set_xticks(np.arange(len(cells)) + width, [f"{b}, K={k}" for b, k in pairs])
    ax.set_ylabel("success on held-out goals")
    ax.set_ylim(0, 1.2)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.legend(ncol=len(METHODS), loc="upper center")
    ax.set_title("Few-shot pick-place: goal shown only by K demonstrations")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
