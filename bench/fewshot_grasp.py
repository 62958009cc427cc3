"""Few-shot grasp adaptation: learn pick-place (held out) from K = 1 and K = 5 demonstrations.

Three initialisations get the same fine-tuning budget on the K demonstrations (Adam, same steps,
same data) and are scored by closed-loop success on unseen pick-place variations:
  scratch     a random network;
  pretrained  one network trained by behaviour cloning on all meta-training tasks jointly;
  meta        the same network meta-trained with first-order MAML across those tasks (each
              meta-task: support and query from different demonstrations of one task).
Meta-training tasks are other Meta-World manipulation tasks. Prints one JSON object.
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
from lifelong_ros.meta import MetaConfig, MetaLearner  # noqa: E402
from lifelong_ros.model import PolicyConfig, PolicyNet, bc_loss  # noqa: E402
from lifelong_ros.sim import MetaWorldSim, collect_demonstrations, stack_episodes  # noqa: E402

META_TASKS = ["reach-v3", "push-v3", "button-press-topdown-v3", "drawer-open-v3", "door-open-v3",
              "window-open-v3", "plate-slide-v3", "faucet-open-v3"]
TARGET = "pick-place-v3"
EVAL_SEED0 = 300_000


def fresh(seed: int, normaliser: np.ndarray) -> PolicyNet:
    torch.manual_seed(seed)
    net = PolicyNet(PolicyConfig(hidden=(256, 256), num_heads=1, multi_head=False))
    net.set_normalizer(normaliser)
    with torch.no_grad():
        net.obs_std.clamp_(min=0.05)
    return net


def fit(net: PolicyNet, obs: np.ndarray, act: np.ndarray, steps: int, seed: int, batch: int = 128) -> PolicyNet:
    gen = torch.Generator().manual_seed(seed)
    o, a = torch.as_tensor(obs), torch.as_tensor(act)
    t = torch.zeros(len(o), dtype=torch.long)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(o), (min(batch, len(o)),), generator=gen)
        loss = bc_loss(net, o[idx], t[idx], a[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def meta_train(net: PolicyNet, data: dict, iterations: int, seed: int) -> PolicyNet:
    """First-order MAML across tasks; support and query come from different demonstrations."""
    per_task = {t: [(torch.as_tensor(e.obs), torch.as_tensor(e.action)) for e in eps] for t, eps in data.items()}
    names = list(per_task)
    rows = 128

    def draw(gen: torch.Generator):
        xs, ts, ys, xq, tq, yq = [], [], [], [], [], []
        for i in torch.randint(0, len(names), (4,), generator=gen).tolist():
            eps = per_task[names[i]]
            pick = torch.randperm(len(eps), generator=gen)
            sup = torch.cat([eps[j][0] for j in pick[:2].tolist()]), torch.cat([eps[j][1] for j in pick[:2].tolist()])
            qry = torch.cat([eps[j][0] for j in pick[2:6].tolist()]), torch.cat([eps[j][1] for j in pick[2:6].tolist()])
            s_idx = torch.randint(0, len(sup[0]), (rows,), generator=gen)
            q_idx = torch.randint(0, len(qry[0]), (rows,), generator=gen)
            xs.append(sup[0][s_idx]), ys.append(sup[1][s_idx]), xq.append(qry[0][q_idx]), yq.append(qry[1][q_idx])
            ts.append(torch.zeros(rows, dtype=torch.long)), tq.append(torch.zeros(rows, dtype=torch.long))
        return (torch.stack(xs), torch.stack(ts)), torch.stack(ys), (torch.stack(xq), torch.stack(tq)), torch.stack(yq)

    learner = MetaLearner(net, MetaConfig("fomaml", inner_lr=0.01, inner_steps=5, outer_lr=1e-3, seed=seed))
    learner.meta_train(draw, iterations)
    return net.eval()


def success(net: PolicyNet, sim: MetaWorldSim, episodes: int) -> float:
    def policy(obs):
        with torch.no_grad():
            return net(torch.as_tensor(obs)[None], torch.zeros(1, dtype=torch.long))[0].numpy()

    wins = 0
    for k in range(episodes):
        try:
            wins += sim.run_episode(policy, EVAL_SEED0 + k).success
        except ValueError:  # a non-finite action: a failed episode (the network diverged)
            pass
    return wins / episodes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer demonstrations, iterations and episodes (~3 minutes)")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    demos = 10 if args.quick else 20
    pre_steps, meta_its, ft_steps = (800, 300, 200) if args.quick else (2000, 800, 300)
    episodes, max_steps = (5, 200) if args.quick else (10, 300)
    t0 = time.perf_counter()
    data = {t: collect_demonstrations(t, range(demos), max_steps=max_steps) for t in META_TASKS}
    data = {t: eps for t, eps in data.items() if len(eps) >= 6}
    target = collect_demonstrations(TARGET, range(1000, 1005), max_steps=max_steps)
    all_obs, all_act = stack_episodes([e for eps in data.values() for e in eps])
    sim = MetaWorldSim(TARGET, steps_after_success=0, max_steps=max_steps)
    results: dict = {m: {"k1": [], "k5": []} for m in ("scratch", "pretrained", "meta")}
    for seed in range(args.seeds):
        pretrained = fit(fresh(seed, all_obs), all_obs, all_act, pre_steps, seed)
        meta = meta_train(fresh(seed, all_obs), data, meta_its, seed)
        for k in (1, 5):
            obs, act = stack_episodes(target[:k])
            for name, init in (("scratch", fresh(seed, all_obs)), ("pretrained", pretrained.clone()), ("meta", meta.clone())):
                net = fit(init, obs, act, ft_steps, seed + 100 * k)
                results[name][f"k{k}"].append(success(net, sim, episodes))
                print(f"seed {seed} K={k} {name}: {results[name][f'k{k}'][-1]:.2f}", file=sys.stderr)
    summary = {m: {key: {"mean": float(np.mean(v)), "std": float(np.std(v)), "runs": v} for key, v in r.items()} for m, r in results.items()}
    print(json.dumps({"benchmark": "fewshot_grasp", "target": TARGET, "meta_tasks": list(data), "demos_per_meta_task": demos,
                      "finetune_steps": ft_steps, "meta_iterations": meta_its, "pretrain_steps": pre_steps,
                      "eval_episodes": episodes, "max_steps": max_steps, "seeds": args.seeds, "methods": summary,
                      "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
