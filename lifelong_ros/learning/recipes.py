"""Adaptation recipes: what the learner worker does with one request, from store to candidate files.

A recipe reads the new task's demonstrations from the experience store, starts from the parent
version (or from scratch), trains with a continual strategy of the registry (strategies.py: EWC +
replay by default; naive and joint as baselines), and writes a self-contained candidate directory
(ONNX, weights, consolidation state, metadata) for the safety gate.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lifelong_ros.experience.sources import CORRECTION, TRAIN_SOURCES
from lifelong_ros.experience.store import ExperienceStore
from lifelong_ros.fsutil import atomic_write_bytes, atomic_write_json, sha256_bytes, sha256_file
from lifelong_ros.learning.jobs import (
    RECIPES,
    AdaptCancelled,
    AdaptRequest,
    Candidate,
    ModelPrior,
    RecipeOptions,
    parse_recipe_options,
)
from lifelong_ros.learning.model import PolicyConfig, PolicyNet, bc_loss, export_onnx, load_policy
from lifelong_ros.learning.strategies import STRATEGIES, build_plugins
from lifelong_ros.learning.trainer import ContinualTrainer, Experience, StoreReplay, TrainOptions, read_plugin_state
from lifelong_ros.paths import CHECKPOINT_FILE, CONSOLIDATION_FILE, META_FILE, MODEL_FILE, WEIGHTS_FILE

NORMALIZER_STD_FLOOR = 0.05  # metres-scale features: never scale a near-constant input by more than 20x


@dataclass
class ParentVersion:
    model: PolicyNet
    tasks: list[str]
    consolidation: tuple[dict, dict] | None
    version: str | None


def load_parent(parent_dir: str | Path) -> ParentVersion:
    """Read a version directory (registry or learner layout): meta.json + weights (+ consolidation)."""
    from safetensors.torch import load_file

    d = Path(parent_dir)
    meta = json.loads((d / META_FILE).read_text())
    recorded = {
        WEIGHTS_FILE: meta.get("weights_sha256"),
        CONSOLIDATION_FILE: meta.get("files", {}).get(CONSOLIDATION_FILE, {}).get("sha256"),
    }
    for name, sha in recorded.items():  # registry versions record sha256s: never train on a corrupted parent
        if sha and (d / name).exists() and sha256_file(d / name) != sha:
            raise ValueError(f"parent {d}: {name} does not match the sha256 recorded at registration")
    weights = load_file(str(d / WEIGHTS_FILE))
    model = load_policy(meta["config"]["policy"], weights)
    cons = read_plugin_state(d / CONSOLIDATION_FILE) if (d / CONSOLIDATION_FILE).exists() else None
    return ParentVersion(model, list(meta["tasks"]), cons, meta.get("id") or meta.get("version"))


def init_head_by_meta_learning(
    model: PolicyNet,
    store: ExperienceStore,
    old_tasks: list[str],
    head: int,
    obs: np.ndarray,
    act: np.ndarray,
    opts: RecipeOptions,
    seed: int,
    on_progress: Callable[[str, int, float], None],
    should_stop: Callable[[], bool],
) -> dict:
    """The fast path for a new task: a meta-learned head initialisation, then a few head-only steps.

    MAML over the frozen backbone's features (ANIL: only the head adapts) on the tasks the robot
    already knows gives an initial head that few gradient steps turn into a good one; that head is
    then adapted to the new task's demonstrations before the whole network is consolidated with
    EWC + replay. Cheap: features are computed once, the meta-model is one linear layer.
    """
    from lifelong_ros.learning.meta import MetaConfig, MetaLearner

    t0 = time.perf_counter()
    k = opts.meta_shots  # support (and query) rows per meta-task
    with torch.no_grad():
        feats = {}
        for t in old_tasks:
            b = store.sample(min(4096, 50 * k), tasks=t, split="train", rng=seed)
            x = torch.as_tensor(b.obs)  # the head learns what the backbone adds to the prior action
            feats[t] = (model.features(x), torch.as_tensor(b.action) - model.prior(x))
        # Gradient steps on a linear head are stable only for lr < 2 / (largest eigenvalue of the
        # feature covariance): learn on features scaled to unit mean squared norm, unscale at the end.
        scale = float(torch.cat([f for f, _ in feats.values()]).pow(2).sum(1).mean().sqrt().clamp_min(1e-6))
        feats = {t: (f / scale, a) for t, (f, a) in feats.items()}
        linear = torch.nn.Linear(model.feature_dim, model.config.act_dim)
        linear.weight.copy_(model.head_w[:head].mean(0).T * scale)
        linear.bias.copy_(model.head_b[:head].mean(0))
    cfg = MetaConfig(
        "maml", inner_lr=opts.meta_inner_lr, inner_steps=opts.meta_inner_steps, outer_lr=opts.meta_outer_lr, seed=seed
    )
    learner = MetaLearner(linear, cfg)

    def draw(g: torch.Generator):
        xs, ys, xq, yq = [], [], [], []
        for i in torch.randint(0, len(old_tasks), (opts.meta_batch,), generator=g).tolist():
            f, a = feats[old_tasks[i]]
            rows = torch.randint(0, f.shape[0], (2 * k,), generator=g)
            xs.append(f[rows[:k]])
            ys.append(a[rows[:k]])
            xq.append(f[rows[k:]])
            yq.append(a[rows[k:]])
        return (torch.stack(xs),), torch.stack(ys), (torch.stack(xq),), torch.stack(yq)

    losses = learner.meta_train(draw, opts.meta_iterations, on_progress, should_stop)
    if should_stop():
        raise AdaptCancelled("cancelled during meta-training")
    with torch.no_grad():  # adapt the meta-learned head to the new task's demonstrations (head only)
        x = torch.as_tensor(obs)
        new_f, new_a = model.features(x) / scale, torch.as_tensor(act) - model.prior(x)
    fast = learner.adapted_params((new_f,), new_a, steps=opts.head_steps)
    head_loss = float(torch.mean((new_f @ fast["weight"].T + fast["bias"] - new_a) ** 2))
    if not np.isfinite(head_loss):
        raise FloatingPointError(f"meta-learned head diverged (loss {head_loss}); lower meta_inner_lr")
    with torch.no_grad():
        model.head_w[head] = fast["weight"].T / scale
        model.head_b[head] = fast["bias"]
    on_progress("adapt-head", len(losses), head_loss)
    return {
        "meta_iterations": len(losses),
        "meta_loss": losses[-1] if losses else None,
        "head_loss_after_adapt": head_loss,
        "meta_s": round(time.perf_counter() - t0, 3),
    }


def init_head_from_nearest(
    model: PolicyNet, known: list[str], obs: np.ndarray, act: np.ndarray
) -> dict[str, float | str]:
    """Head inference for a new task: of the known tasks' heads (``known``, in head order, the new
    head right after them) on the shared backbone, the one whose actions fit the new demonstrations
    best (BC error) becomes the new head's start."""
    head = len(known)
    with torch.no_grad():
        x = torch.as_tensor(obs)
        f, a = model.features(x), torch.as_tensor(act) - model.prior(x)  # a residual head predicts the change
        errors = [float(torch.mean((f @ model.head_w[h] + model.head_b[h] - a) ** 2)) for h in range(head)]
        best = int(np.argmin(errors))
        model.head_w[head] = model.head_w[best]
        model.head_b[head] = model.head_b[best]
    return {"nearest_task": known[best], "nearest_head_loss": errors[best]}


def _task_data(store: ExperienceStore, task: str, shots: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """The new task's training rows: ``shots`` teacher episodes (all if 0) plus every correction.

    Demonstrations weigh at least as much as corrections: when corrected rows outnumber them, the
    demonstrations' rows are repeated to match. A corrected episode shows the way out of states the
    policy strayed into; five of them outnumbered one clean demonstration up to ten to one and the
    adapted policy lost the demonstrated path (README, "A new task from a few demonstrations")."""
    batch = store.task_arrays(task, split="train", sources=list(TRAIN_SOURCES))
    if len(batch.obs) == 0:
        raise ValueError(f"no training demonstrations of task {task!r} in {store.path}; record some first")
    episodes = batch.episode
    corrected = batch.source == CORRECTION
    if shots > 0:
        # ``shots`` counts the teacher's own episodes (demonstrations, bags); corrections — expert
        # labels on the states the policy itself visited — come on top of them, every one.
        keep = list(dict.fromkeys(episodes[~corrected].tolist()))[:shots]
        mask = np.isin(episodes, keep) | corrected
        obs, act, episodes, corrected = batch.obs[mask], batch.action[mask], episodes[mask], corrected[mask]
    else:
        obs, act = batch.obs, batch.action
    used = sorted({str(e) for e in episodes.tolist()})
    n_corr = len({str(e) for e in episodes[corrected].tolist()})
    info = {"task": task, "episodes": used, "records": len(obs), "correction_episodes": n_corr}
    n_demo, n_corrected = int((~corrected).sum()), int(corrected.sum())
    if n_demo and n_corrected > n_demo:
        reps = int(round(n_corrected / n_demo))
        obs = np.concatenate([np.tile(obs[~corrected], (reps, 1)), obs[corrected]])
        act = np.concatenate([np.tile(act[~corrected], (reps, 1)), act[corrected]])
        info["demonstration_repeats"] = reps
    return obs, act, info


def run_request(
    req: AdaptRequest,
    on_progress: Callable[[str, int, float], None],
    should_stop: Callable[[], bool],
) -> Candidate:
    """Train one candidate for ``req`` and write it to ``req.out_dir``. Deterministic under req.seed."""
    started = time.perf_counter()
    torch.manual_seed(req.seed)
    opts, strategy_opts = parse_recipe_options(req.method, req.options)  # again: the request may come unpickled
    recipe = RECIPES[req.method]
    on_progress("load", 0, float("nan"))
    Path(req.out_dir).mkdir(parents=True, exist_ok=True)
    store = ExperienceStore(req.store_path, readonly=True)
    try:
        parent = load_parent(req.parent_dir) if req.parent_dir else None
        tasks = list(parent.tasks) if parent else []
        if req.task not in tasks:
            tasks.append(req.task)
        head = tasks.index(req.task)
        obs, act, data_used = _task_data(store, req.task, req.shots)
        if parent is not None:
            model = parent.model
            model.ensure_heads(len(tasks))
        else:
            prior = req.prior or ModelPrior()
            cfg = PolicyConfig(
                obs_dim=store.obs_dim,
                act_dim=store.act_dim,
                hidden=opts.hidden,
                num_heads=1,
                multi_head=opts.multi_head,
                residual=prior.action_prior is not None,
                differences=prior.differences,
            )
            model = PolicyNet(cfg)
            if prior.action_prior is not None:
                model.set_action_prior(*prior.action_prior)
            if prior.obs_scale is not None:
                model.set_input_scale(*prior.obs_scale)
            else:
                model.set_normalizer(obs)
                with torch.no_grad():
                    model.obs_std.clamp_(min=NORMALIZER_STD_FLOOR)

        old_tasks = [t for t in tasks if t != req.task and t in store.tasks()]
        if STRATEGIES[recipe.strategy].trains_on_all_tasks:
            parts = [Experience.from_arrays(obs, act, head, req.task)]
            for t in old_tasks:
                b = store.task_arrays(t, split="train", sources=list(TRAIN_SOURCES))
                if len(b.obs):
                    parts.append(Experience.from_arrays(b.obs, b.action, tasks.index(t), t))
            exp = Experience.concat(parts, "joint")
        else:
            exp = Experience.from_arrays(obs, act, head, req.task)
        replay = StoreReplay(store, old_tasks, tasks, seed=req.seed) if old_tasks else None
        plugins = build_plugins(recipe.strategy, strategy_opts, replay)
        trainer = ContinualTrainer(
            model,
            bc_loss,
            plugins,
            TrainOptions(
                steps=int(req.steps),
                batch_size=opts.batch_size,
                lr=opts.lr,
                lr_final=opts.lr_final,
                seed=req.seed,
                progress_every=opts.progress_every,
                checkpoint_path=str(Path(req.out_dir) / CHECKPOINT_FILE),
                checkpoint_every=opts.checkpoint_every,
            ),
            on_progress=on_progress,
            should_stop=should_stop,
        )
        meta_metrics = {}
        if recipe.meta_head_init and old_tasks and head == model.num_heads - 1:
            meta_metrics = init_head_by_meta_learning(
                model, store, old_tasks, head, obs, act, opts, req.seed, on_progress, should_stop
            )
        elif recipe.nearest_head_init and old_tasks and head == model.num_heads - 1:
            meta_metrics = init_head_from_nearest(model, tasks[:head], obs, act)
        if parent is not None and parent.consolidation is not None and plugins:
            tensors, config = parent.consolidation
            trainer.load_state(tensors, config)
        result = trainer.train_exp(exp)
        if result.cancelled:
            raise AdaptCancelled(f"cancelled at step {result.steps}")
        train_s = time.perf_counter() - started
        on_progress("export", result.steps, result.final_loss)
        return write_candidate(
            req,
            model,
            tasks,
            trainer,
            metrics={
                "final_loss": result.final_loss,
                "steps": result.steps,
                "train_s": round(train_s, 3),
                **meta_metrics,
            },
            data_used=data_used,
            parent_version=parent.version if parent else None,
        )
    finally:
        store.close()


def write_candidate(
    req: AdaptRequest,
    model: PolicyNet,
    tasks: list[str],
    trainer: ContinualTrainer,
    metrics: dict,
    data_used: dict,
    parent_version: str | None,
) -> Candidate:
    """Write ONNX + weights + consolidation state + meta.json into req.out_dir (each file atomically)."""
    from safetensors.torch import save

    out = Path(req.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    onnx_bytes = export_onnx(model, {"tasks": json.dumps(tasks), "method": req.method})
    metrics = {**metrics, "export_ms": round((time.perf_counter() - t0) * 1e3, 2)}
    weights = save({k: v.detach().contiguous() for k, v in model.state_dict().items()})
    atomic_write_bytes(out / MODEL_FILE, onnx_bytes)
    atomic_write_bytes(out / WEIGHTS_FILE, weights)
    if trainer.plugins:
        trainer.save(out / CONSOLIDATION_FILE)
    meta = {
        "tasks": tasks,
        "target_task": req.task,
        "method": req.method,
        "parent": parent_version,
        "config": {
            "policy": model.config.to_dict(),
            "request": {"shots": req.shots, "steps": req.steps, "seed": req.seed, "options": req.options},
        },
        "data_range": data_used,
        "metrics": metrics,
        "onnx_sha256": sha256_bytes(onnx_bytes),
    }
    atomic_write_json(out / META_FILE, meta)
    return Candidate(str(out), str(out / MODEL_FILE), str(out / WEIGHTS_FILE), meta)
