"""Tiny real policies for the registry, gate and fault tests: tiny real policies trained with torch.

Tasks are synthetic but shaped like Meta-World's: each task has its own goal (part of the
observation) and its own expert mapping into [-1, 1]; episodes are smooth trajectories, and the
held-out split holds whole episodes never used for training.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from lifelong_ros.learning.model import PolicyConfig, PolicyNet, bc_loss, export_onnx
from lifelong_ros.safety.gate import RegressionSuite
from lifelong_ros.safety.registry import ModelRegistry

OBS_DIM, ACT_DIM, HIDDEN = 12, 4, (64, 64)
TASKS = ("reach", "push", "pick", "drawer", "button")
torch.set_num_threads(1)


def _expert_weights(task: str) -> np.ndarray:
    rng = np.random.default_rng(TASKS.index(task) + 100)
    return rng.normal(0, 0.2, (OBS_DIM, ACT_DIM)).astype(np.float32)


def task_data(task: str, episodes: int, steps: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(obs [E*T, D], expert action [E*T, A] in [-1, 1], episode id [E*T])."""
    rng = np.random.default_rng(seed * 1000 + TASKS.index(task))
    w = _expert_weights(task)
    obs, ep = [], []
    for e in range(episodes):
        start = rng.normal(0, 1, OBS_DIM)
        drift = rng.normal(0, 0.8, (steps, OBS_DIM))
        x = start + drift
        x[:, -2:] = rng.uniform(-1, 1, 2)  # the episode's goal, constant within the episode
        obs.append(x)
        ep.append(np.full(steps, seed * 10_000 + e))
    o = np.concatenate(obs).astype(np.float32)
    a = np.tanh(o @ w).astype(np.float32)
    return o, a, np.concatenate(ep)


def suites(tasks, episodes: int = 6) -> dict[str, RegressionSuite]:
    out = {}
    for t in tasks:
        o, a, e = task_data(t, episodes, seed=99)  # held-out seed: never used for training
        out[t] = RegressionSuite(t, o, a, e, source="synthetic-heldout")
    return out


def new_model(n_heads: int, seed: int = 0) -> PolicyNet:
    torch.manual_seed(seed)
    return PolicyNet(PolicyConfig(obs_dim=OBS_DIM, act_dim=ACT_DIM, hidden=HIDDEN, num_heads=n_heads))


def train(
    model: PolicyNet,
    data: list[tuple[np.ndarray, np.ndarray, int]],
    steps: int = 400,
    lr: float = 3e-3,
    seed: int = 0,
    batch: int = 256,
) -> PolicyNet:
    """Behaviour cloning on the union of (obs, action, head) sets (replay = including earlier tasks' data)."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.as_tensor(np.concatenate([d[0] for d in data]))
    act = torch.as_tensor(np.concatenate([d[1] for d in data]))
    head = torch.as_tensor(np.concatenate([np.full(len(d[0]), d[2], dtype=np.int64) for d in data]))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(obs), (batch,), generator=g)
        loss = bc_loss(model, obs[idx], head[idx], act[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def train_data(tasks, episodes: int = 20, seed: int = 1, poison: dict | None = None):
    """Training sets per task; ``poison`` maps task -> 'shuffle' | 'negate' to corrupt its actions."""
    out = []
    for i, t in enumerate(tasks):
        o, a, _ = task_data(t, episodes, seed=seed)
        mode = (poison or {}).get(t)
        if mode == "shuffle":
            a = a[np.random.default_rng(5).permutation(len(a))]
        elif mode == "negate":
            a = -a
        out.append((o, a, i))
    return out


def export(model: PolicyNet, tasks) -> bytes:
    return export_onnx(model, {"tasks": json.dumps(list(tasks))})


def register(reg: ModelRegistry, model: PolicyNet, tasks, *, parent=None, method="bc", target=None, **kw) -> str:
    return reg.register(
        export(model, tasks),
        tasks=list(tasks),
        method=method,
        parent=parent,
        weights=model.state_dict(),
        config=model.config.to_dict(),
        target_task=target or tasks[-1],
        **kw,
    )


def base_and_candidate(reg: ModelRegistry, tasks=TASKS[:2], new=TASKS[2]):
    """An approved+active base on ``tasks`` and a genuine-improvement candidate adding ``new`` with replay."""
    base = train(new_model(len(tasks)), train_data(tasks), steps=500)
    v1 = register(reg, base, tasks, method="joint")
    reg.set_decision(v1, "approved", "bootstrap for tests")
    reg.promote(v1)
    cand = base.clone()
    cand.ensure_heads(len(tasks) + 1)
    all_tasks = [*list(tasks), new]
    cand = train(cand, train_data(all_tasks), steps=400)
    return base, v1, cand, all_tasks
