"""Continual consolidation: a small loop that trains one experience (task) at a time, plus plugins.

The robot must learn new tasks without forgetting old ones (DESIGN §2). Like Avalanche, the loop is
fixed and methods (EWC, online EWC, L2, SI, replay; plugins.py) hook its named moments.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lifelong_ros.fsutil import atomic_write_bytes
from lifelong_ros.learning.plugins import (
    EWC,
    ExpContext,
    Experience,
    L2Anchor,
    LossFn,
    MemoryBuffer,
    OnlineEWC,
    Plugin,
    Replay,
    ReplaySource,
    StoreReplay,
    SynapticIntelligence,
    empirical_fisher,
)

__all__ = [
    "EWC",
    "ContinualTrainer",
    "ExpContext",
    "ExpResult",
    "Experience",
    "L2Anchor",
    "LossFn",
    "MemoryBuffer",
    "OnlineEWC",
    "Plugin",
    "Replay",
    "ReplaySource",
    "StoreReplay",
    "SynapticIntelligence",
    "TrainOptions",
    "cross_entropy_loss",
    "empirical_fisher",
    "load_plugin_state",
    "plugin_state",
    "read_plugin_state",
    "save_plugin_state",
]

STATE_FORMAT = "lifelong_ros.plugins/1"
ProgressFn = Callable[[str, int, float], None]


def cross_entropy_loss(model: Callable[[Tensor, Tensor], Tensor], x: Tensor, task_idx: Tensor, y: Tensor) -> Tensor:
    """Classification loss with the same signature as model.bc_loss (for the digits benchmarks)."""
    return F.cross_entropy(model(x, task_idx), y)


@dataclass(frozen=True)
class TrainOptions:
    """Budget and optimiser for one experience; every method gets the same budget."""

    steps: int = 1000  # optimiser steps per experience
    batch_size: int = 64  # current-task samples per step (replay adds on top)
    lr: float = 1e-3  # Adam, a fresh optimiser per experience
    lr_final: float | None = None  # cosine decay from lr to this over the experience; None = constant lr
    weight_decay: float = 0.0
    grad_clip: float | None = None  # max global grad norm, None = off
    seed: int = 0
    progress_every: int = 10  # on_progress cadence in steps (the last step is always reported)
    checkpoint_path: str | None = None  # resume file: a restarted job continues from its last checkpoint
    checkpoint_every: int = 200  # steps between checkpoints (when checkpoint_path is set)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.progress_every < 1:
            raise ValueError(
                f"steps, batch_size and progress_every must be >= 1, got {self.steps}, {self.batch_size}, {self.progress_every}"
            )
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"need lr > 0 and weight_decay >= 0, got lr={self.lr}, weight_decay={self.weight_decay}")
        if self.lr_final is not None and not 0 <= self.lr_final <= self.lr:
            raise ValueError(f"lr_final must be in [0, lr={self.lr}] or None, got {self.lr_final}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")

    def lr_at(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (1-based): constant, or cosine from lr to
        lr_final. A function of the step alone, so a resumed job follows the same schedule."""
        if self.lr_final is None or self.steps == 1:
            return self.lr
        frac = (step - 1) / (self.steps - 1)
        return self.lr_final + (self.lr - self.lr_final) * 0.5 * (1.0 + math.cos(math.pi * frac))


@dataclass
class ExpResult:
    name: str
    steps: int  # steps actually taken
    final_loss: float  # mean task loss over the last 20 steps (NaN if none)
    cancelled: bool
    seconds: float
    losses: list[float] = field(default_factory=list)


class ContinualTrainer:
    """Trains ``model`` one experience at a time; ``plugins`` add penalties, replay, consolidation.

    ``loss_fn(model, x, task_idx, y)`` is the task loss (model.bc_loss for policies,
    cross_entropy_loss for classification). ``should_stop()`` is checked before every step; a
    cancelled experience is not consolidated. Deterministic for a given model init, data and seed
    (replay sources carry their own seeded rng); a job resumed from ``checkpoint_path`` ends
    bit-identical to an uninterrupted one (the checkpoint holds the plugins' running state too:
    SI's path integral, the replay rng states).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        plugins: Sequence[Plugin] = (),
        options: TrainOptions = TrainOptions(),
        on_progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None,
    ):
        names = [p.name for p in plugins]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"plugin names must be unique within a trainer, got duplicates {dupes} in {names}")
        self.model = model
        self.loss_fn = loss_fn
        self.plugins = list(plugins)
        self.options = options
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.experiences_seen = 0

    def _report(self, phase: str, step: int, loss: float) -> None:
        if self.on_progress is not None:
            self.on_progress(phase, step, loss)

    def train_exp(self, exp: Experience) -> ExpResult:
        opt = self.options
        model = self.model
        gen = torch.Generator().manual_seed(opt.seed * 1_000_003 + self.experiences_seen)
        ctx = ExpContext(model, self.loss_fn, exp, gen, self.experiences_seen)
        for p in self.plugins:
            p.before_training_exp(ctx)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=opt.lr, weight_decay=opt.weight_decay)
        model.train()
        n = len(exp)
        bs = min(opt.batch_size, n)
        order = torch.randperm(n, generator=gen)
        cursor = 0
        losses: list[float] = []
        cancelled = False
        started = time.perf_counter()
        first = 1
        resumed = self._load_checkpoint(exp, optimizer, gen)
        if resumed is not None:
            first, order, cursor, losses = resumed
            self._report("resume", first - 1, losses[-1] if losses else float("nan"))
        for step in range(first, opt.steps + 1):
            if self.should_stop is not None and self.should_stop():
                cancelled = True
                break
            if cursor + bs > n:
                order, cursor = torch.randperm(n, generator=gen), 0
            sel = order[cursor : cursor + bs]
            cursor += bs
            x, t, y = exp.x[sel], exp.task_idx[sel], exp.y[sel]
            extra = [b for b in (p.replay_batch(ctx, bs) for p in self.plugins) if b is not None]
            if extra:
                x = torch.cat([x] + [b[0].to(x.dtype) for b in extra])
                t = torch.cat([t] + [b[1] for b in extra])
                y = torch.cat([y] + [b[2].to(y.dtype) for b in extra])
            if opt.lr_final is not None:
                for group in optimizer.param_groups:
                    group["lr"] = opt.lr_at(step)
            optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(model, x, t, y)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"task loss became {value} at step {step} of experience {exp.name!r}; lower lr"
                )
            penalties = [q for q in (p.penalty(model) for p in self.plugins) if q is not None]
            loss.backward()
            for p in self.plugins:
                p.after_backward(model)  # gradients of the task loss alone (what SI integrates)
            if penalties:
                total_penalty = torch.stack([q.reshape(()) for q in penalties]).sum()
                if not math.isfinite(float(total_penalty.detach())):
                    raise FloatingPointError(f"penalty became non-finite at step {step} of {exp.name!r}; lower lambda")
                total_penalty.backward()
            if opt.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, opt.grad_clip)
            optimizer.step()
            for p in self.plugins:
                p.after_update(model)
            losses.append(value)
            if step % opt.progress_every == 0 or step == opt.steps:
                self._report("train", step, value)
            if opt.checkpoint_path and step % opt.checkpoint_every == 0 and step < opt.steps:
                self._save_checkpoint(opt.checkpoint_path, exp, optimizer, gen, step, order, cursor, losses)
        tail = losses[-20:]
        final = sum(tail) / len(tail) if tail else float("nan")
        if not cancelled:
            self._report("consolidate", len(losses), final)
            model.eval()
            for p in self.plugins:
                p.after_training_exp(ctx)
            self.experiences_seen += 1
        model.eval()
        if not cancelled and opt.checkpoint_path and os.path.exists(opt.checkpoint_path):
            os.unlink(opt.checkpoint_path)  # finished: a rerun must start over, not resume
        return ExpResult(exp.name, len(losses), final, cancelled, time.perf_counter() - started, losses)

    # --- checkpoint / resume within one experience --------------------------------------------
    def _save_checkpoint(self, path: str, exp, optimizer, gen, step, order, cursor, losses) -> None:
        import io

        tensors, config = plugin_state(self.plugins)
        state = {
            "exp": exp.name,
            "n": len(exp),
            "step": step,
            "cursor": cursor,
            "order": order,
            "losses": losses,
            "model": self.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": gen.get_state(),
            "plugins": tensors,
            "plugin_config": json.dumps(config),
            # running sums and replay rng states: without them a resumed job would differ from an
            # uninterrupted one (SI's path integral, the order replay draws samples in)
            "plugin_running": {p.name: p.running_state() for p in self.plugins},
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(path, buf.getvalue())

    def _load_checkpoint(self, exp, optimizer, gen):
        """(next step, order, cursor, losses) from a checkpoint of this same experience, else None."""
        path = self.options.checkpoint_path
        if not path or not os.path.exists(path):
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["exp"] != exp.name or state["n"] != len(exp):
            raise ValueError(
                f"checkpoint {path} is for experience {state['exp']!r} with {state['n']} samples, not "
                f"{exp.name!r} with {len(exp)}; delete it to start over"
            )
        self.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        load_plugin_state(self.plugins, state["plugins"], json.loads(state["plugin_config"]))
        running = state.get("plugin_running", {})
        for p in self.plugins:
            if p.name in running:
                p.load_running_state(running[p.name])
        return state["step"] + 1, state["order"], state["cursor"], list(state["losses"])

    # --- persistence of consolidation state ---------------------------------------------------
    def state(self) -> tuple[dict[str, Tensor], dict]:
        tensors, config = plugin_state(self.plugins)
        config["trainer"] = {"experiences_seen": self.experiences_seen}
        return tensors, config

    def load_state(self, tensors: Mapping[str, Tensor], config: Mapping, strict: bool = True) -> None:
        """Resume consolidation from ``state()`` output (see load_plugin_state for ``strict``)."""
        load_plugin_state(self.plugins, tensors, {k: v for k, v in config.items() if k != "trainer"}, strict)
        self.experiences_seen = int(config.get("trainer", {}).get("experiences_seen", 0))

    def save(self, path: str | os.PathLike) -> None:
        """Write the consolidation state (all plugins + counters) atomically as one safetensors file."""
        tensors, config = self.state()
        atomic_write_bytes(path, _encode(tensors, config))

    def restore(self, path: str | os.PathLike, strict: bool = True) -> None:
        tensors, config = read_plugin_state(path)
        self.load_state(tensors, config, strict)


# ---------------------------------------------------------------------------------------------
# plugin state <-> dict / file
# ---------------------------------------------------------------------------------------------
def plugin_state(plugins: Sequence[Plugin]) -> tuple[dict[str, Tensor], dict]:
    """(tensors keyed "<plugin>/<key>", {plugin name: config}) for every plugin."""
    tensors: dict[str, Tensor] = {}
    config: dict = {}
    for p in plugins:
        config[p.name] = p.config()
        for k, v in p.tensors().items():
            tensors[f"{p.name}/{k}"] = v.detach().contiguous().clone()
    return tensors, config


def load_plugin_state(
    plugins: Sequence[Plugin], tensors: Mapping[str, Tensor], config: Mapping, strict: bool = True
) -> None:
    """Restore state saved by ``plugin_state`` into the plugins of the same name.

    A plugin absent from the saved state keeps its fresh state (e.g. Replay added once there are
    earlier tasks to replay). A saved plugin absent from ``plugins`` would silently drop
    consolidation (importance of earlier tasks): ValueError unless ``strict`` is False.
    """
    have = {p.name for p in plugins}
    dropped = sorted(set(config) - have)
    if dropped and strict:
        raise ValueError(
            f"saved consolidation state has plugins {dropped} that the strategy {sorted(have)} lacks; "
            "their importance of earlier tasks would be lost (pass strict=False to drop it on purpose)"
        )
    for p in plugins:
        if p.name not in config:
            continue
        prefix = p.name + "/"
        p.load_state({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}, config[p.name])


def _encode(tensors: Mapping[str, Tensor], config: Mapping) -> bytes:
    from safetensors.torch import save

    return save(dict(tensors), metadata={"format": STATE_FORMAT, "config": json.dumps(config, sort_keys=True)})


def save_plugin_state(plugins: Sequence[Plugin], path: str | os.PathLike) -> None:
    tensors, config = plugin_state(plugins)
    atomic_write_bytes(path, _encode(tensors, config))


def read_plugin_state(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(
                f"{path} is not a consolidation state file (format {meta.get('format')!r}, expected {STATE_FORMAT!r})"
            )
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    return tensors, json.loads(meta["config"])
