"""Consolidation plugins for the continual training loop: L2 anchor, EWC (separate/online), SI, replay.

Each plugin hooks named moments of ``ContinualTrainer`` (trainer.py) and returns what it adds (a
penalty, replayed samples) instead of mutating the loop; its state is a dict of tensors plus a
small config, so a learner can persist it beside a model version and resume after a restart.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

# loss_fn(model, x, task_idx, y) -> scalar mean loss. ``model`` is called only as model(x, task_idx):
# during Fisher estimation it is a functional stand-in for the module, not the module itself.
LossFn = Callable[[Callable[[Tensor, Tensor], Tensor], Tensor, Tensor, Tensor], Tensor]
Triple = tuple[Tensor, Tensor, Tensor]


class ReplaySource(Protocol):
    """``source(n) -> (x [n, ...], task_idx [n] int64, y [n, ...])`` of earlier tasks' samples.

    May return fewer rows than asked (zero when nothing is stored yet); the plugin then replays less.
    Sources also say how many tasks they replay (``num_tasks``), which balanced replay needs.
    """

    def __call__(self, n: int) -> Triple: ...


@dataclass(frozen=True)
class Experience:
    """One task's training data (or, for joint training, several tasks' data concatenated)."""

    x: Tensor
    task_idx: Tensor  # [N] int64 head index per sample
    y: Tensor
    name: str = ""

    def __post_init__(self) -> None:
        n = self.x.shape[0] if self.x.dim() > 0 else -1
        if n <= 0:
            raise ValueError(
                f"experience {self.name!r} needs at least one sample, got x of shape {tuple(self.x.shape)}"
            )
        if self.task_idx.dtype != torch.int64 or self.task_idx.shape != (n,):
            raise ValueError(
                f"experience {self.name!r}: task_idx must be int64 of shape ({n},), "
                f"got {self.task_idx.dtype} {tuple(self.task_idx.shape)}"
            )
        if self.y.shape[0] != n:
            raise ValueError(f"experience {self.name!r}: x has {n} rows but y has {self.y.shape[0]}")
        if int(self.task_idx.min()) < 0:
            raise ValueError(f"experience {self.name!r}: task_idx must be >= 0, got {int(self.task_idx.min())}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @classmethod
    def from_arrays(
        cls,
        x: np.ndarray | Tensor,
        y: np.ndarray | Tensor,
        task_idx: int | Sequence[int] | np.ndarray | Tensor,
        name: str = "",
    ) -> Experience:
        """Build from numpy/tensors; float inputs become float32, integer labels int64."""
        xt = _as_tensor(x)
        yt = _as_tensor(y)
        if isinstance(task_idx, (int, np.integer)):
            tt = torch.full((xt.shape[0],), int(task_idx), dtype=torch.int64)
        else:
            tt = torch.as_tensor(np.asarray(task_idx), dtype=torch.int64)
        return cls(xt, tt, yt, name)

    @staticmethod
    def concat(experiences: Sequence[Experience], name: str = "") -> Experience:
        if not experiences:
            raise ValueError("concat needs at least one experience")
        return Experience(
            torch.cat([e.x for e in experiences]),
            torch.cat([e.task_idx for e in experiences]),
            torch.cat([e.y for e in experiences]),
            name or "+".join(e.name for e in experiences),
        )


def _as_tensor(a: np.ndarray | Tensor) -> Tensor:
    t = torch.as_tensor(np.asarray(a)) if not isinstance(a, Tensor) else a
    if t.is_floating_point():
        return t.to(torch.float32)
    if t.dtype == torch.bool:
        raise ValueError("boolean arrays are not valid inputs/targets")
    return t.to(torch.int64)


@dataclass
class ExpContext:
    """What hooks see of the experience being trained: the model, its loss, the data, the rng."""

    model: nn.Module
    loss_fn: LossFn
    exp: Experience
    generator: torch.Generator
    index: int  # how many experiences this trainer has trained before this one


class Plugin:
    """Base class: every hook is a no-op. Subclasses override the moments they need.

    Order inside one training step: replay_batch -> forward/loss -> penalty -> backward(loss) ->
    after_backward (grads of the task loss only) -> backward(penalties) -> optimizer step ->
    after_update.
    """

    name = "plugin"

    def before_training_exp(self, ctx: ExpContext) -> None:
        pass

    def replay_batch(self, ctx: ExpContext, n_new: int) -> Triple | None:
        """Extra (old-task) samples to append to a batch of ``n_new`` current samples."""
        return None

    def penalty(self, model: nn.Module) -> Tensor | None:
        """A regulariser added to the loss (before_backward in Avalanche's vocabulary)."""
        return None

    def after_backward(self, model: nn.Module) -> None:
        pass

    def after_update(self, model: nn.Module) -> None:
        pass

    def after_training_exp(self, ctx: ExpContext) -> None:
        pass

    # --- persistence -------------------------------------------------------------------------
    def config(self) -> dict:
        """Small JSON-able description (kind + hyper-parameters + counters)."""
        return {"kind": type(self).__name__}

    def tensors(self) -> dict[str, Tensor]:
        return {}

    def load_state(self, tensors: Mapping[str, Tensor], config: Mapping) -> None:
        if config.get("kind") != type(self).__name__:
            raise ValueError(
                f"plugin {self.name!r}: saved state is for {config.get('kind')!r}, expected {type(self).__name__!r}"
            )

    # --- resume within one experience (the trainer's checkpoint, not the consolidation state) ---
    def running_state(self) -> dict[str, Any]:
        """What this plugin accumulates *during* an experience (running sums, rng states), for the
        trainer's mid-experience checkpoint: tensors, str, int, float, lists and dicts of them."""
        return {}

    def load_running_state(self, state: Mapping[str, Any]) -> None:
        """Restore ``running_state()`` output after ``before_training_exp`` on resume."""


def rng_state(rng: np.random.Generator) -> str:
    """A numpy Generator's exact state as a JSON string (checkpoint-safe: no 128-bit ints in pickles)."""
    return json.dumps(rng.bit_generator.state)


def set_rng_state(rng: np.random.Generator, state: str) -> None:
    rng.bit_generator.state = json.loads(state)


# ---------------------------------------------------------------------------------------------
# helpers shared by the parameter-space regularisers
# ---------------------------------------------------------------------------------------------
def trainable(model: nn.Module) -> dict[str, Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in trainable(model).items()}


def _matching(name: str, current: Tensor, stored: Tensor) -> Tensor:
    """The part of ``current`` that ``stored`` describes: all of it, or its first rows after heads grew."""
    if current.shape == stored.shape:
        return current
    if current.dim() == stored.dim() and current.shape[1:] == stored.shape[1:] and current.shape[0] >= stored.shape[0]:
        return current[: stored.shape[0]]
    raise ValueError(
        f"parameter {name!r} has shape {tuple(current.shape)} but the consolidated state has "
        f"{tuple(stored.shape)}; expected the same shape or the same with more heads (rows)"
    )


def _grow(stored: Tensor, shape: torch.Size) -> Tensor:
    """Zero-pad ``stored`` along dim 0 to ``shape`` (new heads carry no importance yet)."""
    if stored.shape == shape:
        return stored
    _matching("(grow)", torch.empty(shape), stored)
    out = torch.zeros(shape, dtype=stored.dtype)
    out[: stored.shape[0]] = stored
    return out


def _quadratic(model: nn.Module, anchor: Mapping[str, Tensor], weight: Mapping[str, Tensor] | None) -> Tensor:
    params = trainable(model)
    total = torch.zeros(())
    for n, a in anchor.items():
        if n not in params:
            raise ValueError(f"consolidated parameter {n!r} is missing from the model (has {sorted(params)})")
        d = _matching(n, params[n], a) - a
        total = total + ((weight[n] * d * d).sum() if weight is not None else (d * d).sum())
    return total


def empirical_fisher(
    model: nn.Module,
    loss_fn: LossFn,
    exp: Experience,
    max_samples: int = 1024,
    chunk: int = 128,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Diagonal empirical Fisher: the mean over samples of the squared PER-SAMPLE loss gradient.

    Per-sample gradients come from ``vmap(grad(.))`` over a functional call of the model, so this is
    exact (not the squared minibatch gradient Avalanche uses). At most ``max_samples`` samples, drawn
    without replacement with ``generator``.
    """
    if max_samples < 1 or chunk < 1:
        raise ValueError(f"max_samples and chunk must be >= 1, got {max_samples}, {chunk}")
    n = len(exp)
    idx = torch.randperm(n, generator=generator)[:max_samples] if n > max_samples else torch.arange(n)
    params = {k: v.detach() for k, v in trainable(model).items()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def one(p: dict[str, Tensor], x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        def fmodel(xx: Tensor, tt: Tensor) -> Tensor:
            return functional_call(model, (p, buffers), (xx, tt))

        return loss_fn(fmodel, x.unsqueeze(0), t.unsqueeze(0), y.unsqueeze(0))

    per_sample = vmap(grad(one), in_dims=(None, 0, 0, 0))
    sums = {k: torch.zeros_like(v) for k, v in params.items()}
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(idx), chunk):
            sel = idx[start : start + chunk]
            grads = per_sample(params, exp.x[sel], exp.task_idx[sel], exp.y[sel])
            for k, g in grads.items():
                sums[k] += (g * g).sum(0)
    finally:
        model.train(was_training)
    return {k: s / len(idx) for k, s in sums.items()}


# ---------------------------------------------------------------------------------------------
# regularisers
# ---------------------------------------------------------------------------------------------
class L2Anchor(Plugin):
    """penalty = lam/2 * ||theta - theta*||^2, theta* = the parameters after the previous experience."""

    name = "l2"

    def __init__(self, lam: float = 1.0):
        if not lam >= 0:
            raise ValueError(f"L2Anchor lam must be >= 0, got {lam}")
        self.lam = float(lam)
        self.anchor: dict[str, Tensor] = {}

    def penalty(self, model: nn.Module) -> Tensor | None:
        if not self.anchor or self.lam == 0:
            return None
        return 0.5 * self.lam * _quadratic(model, self.anchor, None)

    def after_training_exp(self, ctx: ExpContext) -> None:
        self.anchor = _snapshot(ctx.model)

    def config(self) -> dict:
        return {**super().config(), "lam": self.lam}

    def tensors(self) -> dict[str, Tensor]:
        return {f"anchor.{k}": v for k, v in self.anchor.items()}

    def load_state(self, tensors: Mapping[str, Tensor], config: Mapping) -> None:
        super().load_state(tensors, config)
        self.anchor = {k[len("anchor.") :]: v.clone() for k, v in tensors.items() if k.startswith("anchor.")}


class EWC(Plugin):
    """Elastic Weight Consolidation, separate form (Kirkpatrick et al. 2017).

    One (Fisher, anchor) pair per consolidated experience; penalty = lam/2 * sum_k sum_i
    F_k,i (theta_i - theta*_k,i)^2. Memory grows with the number of tasks: see OnlineEWC.
    """

    name = "ewc"

    def __init__(self, lam: float = 100.0, fisher_samples: int = 1024):
        if not lam >= 0:
            raise ValueError(f"EWC lam must be >= 0, got {lam}")
        if fisher_samples < 1:
            raise ValueError(f"fisher_samples must be >= 1, got {fisher_samples}")
        self.lam = float(lam)
        self.fisher_samples = int(fisher_samples)
        self.fishers: list[dict[str, Tensor]] = []
        self.anchors: list[dict[str, Tensor]] = []

    def penalty(self, model: nn.Module) -> Tensor | None:
        if not self.fishers or self.lam == 0:
            return None
        total = sum((_quadratic(model, a, f) for a, f in zip(self.anchors, self.fishers)), torch.zeros(()))
        return 0.5 * self.lam * total

    def after_training_exp(self, ctx: ExpContext) -> None:
        self.fishers.append(
            empirical_fisher(ctx.model, ctx.loss_fn, ctx.exp, self.fisher_samples, generator=ctx.generator)
        )
        self.anchors.append(_snapshot(ctx.model))

    def config(self) -> dict:
        return {**super().config(), "lam": self.lam, "fisher_samples": self.fisher_samples, "tasks": len(self.fishers)}

    def tensors(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for k, (f, a) in enumerate(zip(self.fishers, self.anchors)):
            out.update({f"fisher.{k}.{n}": v for n, v in f.items()})
            out.update({f"anchor.{k}.{n}": v for n, v in a.items()})
        return out

    def load_state(self, tensors: Mapping[str, Tensor], config: Mapping) -> None:
        super().load_state(tensors, config)
        count = int(config["tasks"])
        self.fishers = [{} for _ in range(count)]
        self.anchors = [{} for _ in range(count)]
        for key, v in tensors.items():
            kind, k, n = key.split(".", 2)
            (self.fishers if kind == "fisher" else self.anchors)[int(k)][n] = v.clone()


class OnlineEWC(Plugin):
    """Online EWC (Schwarz et al. 2018): one Fisher, decayed and accumulated, one anchor.

    After experience k: F <- decay * F + F_k and theta* <- theta_k (the same update as Avalanche's
    "online" mode); penalty = lam/2 * sum_i F_i (theta_i - theta*_i)^2. decay = 1 keeps every task's
    importance at full weight, decay < 1 lets old importance fade.
    """

    name = "online_ewc"

    def __init__(self, lam: float = 100.0, decay: float = 1.0, fisher_samples: int = 1024):
        if not lam >= 0:
            raise ValueError(f"OnlineEWC lam must be >= 0, got {lam}")
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"OnlineEWC decay must be in [0, 1], got {decay}")
        if fisher_samples < 1:
            raise ValueError(f"fisher_samples must be >= 1, got {fisher_samples}")
        self.lam = float(lam)
        self.decay = float(decay)
        self.fisher_samples = int(fisher_samples)
        self.fisher: dict[str, Tensor] = {}
        self.anchor: dict[str, Tensor] = {}
        self.tasks = 0

    def penalty(self, model: nn.Module) -> Tensor | None:
        if not self.fisher or self.lam == 0:
            return None
        return 0.5 * self.lam * _quadratic(model, self.anchor, self.fisher)

    def consolidate(self, new_fisher: Mapping[str, Tensor], params: Mapping[str, Tensor]) -> None:
        """F <- decay * F_old + F_new (old importance zero-padded if heads grew); anchor <- params."""
        merged = {}
        for n, f in new_fisher.items():
            old = self.fisher.get(n)
            merged[n] = f.clone() if old is None else self.decay * _grow(old, f.shape) + f
        self.fisher = merged
        self.anchor = {n: p.detach().clone() for n, p in params.items()}
        self.tasks += 1

    def after_training_exp(self, ctx: ExpContext) -> None:
        f = empirical_fisher(ctx.model, ctx.loss_fn, ctx.exp, self.fisher_samples, generator=ctx.generator)
        self.consolidate(f, trainable(ctx.model))

    def config(self) -> dict:
        return {
            **super().config(),
            "lam": self.lam,
            "decay": self.decay,
            "fisher_samples": self.fisher_samples,
            "tasks": self.tasks,
        }

    def tensors(self) -> dict[str, Tensor]:
        return {
            **{f"fisher.{n}": v for n, v in self.fisher.items()},
            **{f"anchor.{n}": v for n, v in self.anchor.items()},
        }

    def load_state(self, tensors: Mapping[str, Tensor], config: Mapping) -> None:
        super().load_state(tensors, config)
        self.fisher = {k[len("fisher.") :]: v.clone() for k, v in tensors.items() if k.startswith("fisher.")}
        self.anchor = {k[len("anchor.") :]: v.clone() for k, v in tensors.items() if k.startswith("anchor.")}
        self.tasks = int(config["tasks"])


class SynapticIntelligence(Plugin):
    """Synaptic Intelligence (Zenke et al. 2017): importance from the path integral of the loss.

    During an experience, w_i += -g_i * delta_theta_i every step (g = gradient of the task loss,
    without the penalty, as in the paper). After it, Omega_i += w_i / (Delta_i^2 + xi) with Delta the
    total parameter change over the experience; penalty = c * sum_i Omega_i (theta_i - theta*_i)^2.
    """

    name = "si"

    def __init__(self, c: float = 1.0, xi: float = 1e-3):
        if not c >= 0 or not xi > 0:
            raise ValueError(f"SI needs c >= 0 and xi > 0, got c={c}, xi={xi}")
        self.c = float(c)
        self.xi = float(xi)
        self.omega: dict[str, Tensor] = {}
        self.anchor: dict[str, Tensor] = {}
        self.w: dict[str, Tensor] = {}
        self._start: dict[str, Tensor] = {}
        self._before: dict[str, Tensor] = {}
        self._grad: dict[str, Tensor] = {}
        self.tasks = 0

    def before_training_exp(self, ctx: ExpContext) -> None:
        self._start = _snapshot(ctx.model)
        self.w = {n: torch.zeros_like(p) for n, p in self._start.items()}

    def penalty(self, model: nn.Module) -> Tensor | None:
        if not self.omega or self.c == 0:
            return None
        return self.c * _quadratic(model, self.anchor, self.omega)

    def after_backward(self, model: nn.Module) -> None:
        self._before = _snapshot(model)
        self._grad = {
            n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in trainable(model).items()
        }

    def after_update(self, model: nn.Module) -> None:
        for n, p in trainable(model).items():
            if n in self._grad:
                self.w[n] -= self._grad[n] * (p.detach() - self._before[n])

    def after_training_exp(self, ctx: ExpContext) -> None:
        params = _snapshot(ctx.model)
        merged = {}
        for n, p in params.items():
            delta = p - self._start[n]
            new = self.w[n] / (delta * delta + self.xi)
            old = self.omega.get(n)
            merged[n] = new if old is None else _grow(old, new.shape) + new
        self.omega = merged
        self.anchor = params
        self.tasks += 1

    def running_state(self) -> dict[str, Any]:
        # the path integral so far and where the experience started: without them a resumed job
        # would integrate only the steps after the checkpoint
        return {"w": {n: v.clone() for n, v in self.w.items()}, "start": {n: v.clone() for n, v in self._start.items()}}

    def load_running_state(self, state: Mapping[str, Any]) -> None:
        if "w" in state:
            self.w = {n: v.clone() for n, v in state["w"].items()}
            self._start = {n: v.clone() for n, v in state["start"].items()}

    def config(self) -> dict:
        return {**super().config(), "c": self.c, "xi": self.xi, "tasks": self.tasks}

    def tensors(self) -> dict[str, Tensor]:
        return {
            **{f"omega.{n}": v for n, v in self.omega.items()},
            **{f"anchor.{n}": v for n, v in self.anchor.items()},
        }

    def load_state(self, tensors: Mapping[str, Tensor], config: Mapping) -> None:
        super().load_state(tensors, config)
        self.omega = {k[len("omega.") :]: v.clone() for k, v in tensors.items() if k.startswith("omega.")}
        self.anchor = {k[len("anchor.") :]: v.clone() for k, v in tensors.items() if k.startswith("anchor.")}
        self.tasks = int(config["tasks"])


# ---------------------------------------------------------------------------------------------
# replay
# ---------------------------------------------------------------------------------------------
class Replay(Plugin):
    """Experience replay: each batch of n new samples gets replayed samples of earlier tasks.

    ``ratio`` (a float in [0, 1)) is the fraction of every mixed batch that comes from ``source``:
    round(n * ratio / (1 - ratio)) replayed samples. ``ratio="balanced"`` gives every earlier task
    as many samples as the new one (n per task the source holds), the composition joint training
    on all tasks has; the batch then grows with the number of tasks. Either way the current task
    keeps its full batch size, so every method sees the same new-data budget.
    """

    name = "replay"
    BALANCED = "balanced"

    def __init__(self, source: ReplaySource, ratio: float | str = 0.5):
        if ratio != self.BALANCED:
            try:
                ratio = float(ratio)
            except (TypeError, ValueError):
                raise ValueError(
                    f"replay ratio must be a number in [0, 1) or {self.BALANCED!r}, got {ratio!r}"
                ) from None
            if not 0.0 <= ratio < 1.0:
                raise ValueError(f"replay ratio must be in [0, 1) or {self.BALANCED!r}, got {ratio}")
        self.source = source
        self.ratio: float | str = ratio  # a float in [0, 1), or BALANCED (the only str __init__ lets through)

    def replay_count(self, n_new: int) -> int:
        if isinstance(self.ratio, str):  # == BALANCED
            return n_new * _task_count(self.source)
        return int(round(n_new * self.ratio / (1.0 - self.ratio)))

    def replay_batch(self, ctx: ExpContext, n_new: int) -> Triple | None:
        k = self.replay_count(n_new)
        if k == 0:
            return None
        x, t, y = self.source(k)
        return (x, t, y) if len(t) else None

    def config(self) -> dict:
        return {**super().config(), "ratio": self.ratio}

    def running_state(self) -> dict[str, Any]:
        # a source that is itself a plugin (MemoryBuffer) checkpoints its own rng
        get = getattr(self.source, "rng_state", None)
        return {"source_rng": get()} if get is not None and not isinstance(self.source, Plugin) else {}

    def load_running_state(self, state: Mapping[str, Any]) -> None:
        if "source_rng" in state:
            self.source.set_rng_state(state["source_rng"])  # type: ignore[attr-defined]


def _task_count(source: ReplaySource) -> int:
    """How many earlier tasks ``source`` replays (its ``num_tasks``); balanced replay needs it."""
    n = getattr(source, "num_tasks", None)
    if n is None:
        raise TypeError(f"balanced replay needs a source with num_tasks; {type(source).__name__} has none")
    return int(n)


class MemoryBuffer(Plugin):
    """An in-memory replay source: keeps a random subset of each finished experience.

    Calling it samples task-balanced (a task uniformly, then a stored sample of it), like the store's
    "task_balanced" sampler. Put it in the plugin list (after Replay) so it records experiences.
    """

    name = "memory"

    def __init__(self, per_task: int = 200, seed: int = 0):
        if per_task < 1:
            raise ValueError(f"MemoryBuffer per_task must be >= 1, got {per_task}")
        self.per_task = int(per_task)
        self.seed = int(seed)
        self._rng = np.random.default_rng(seed)
        self.items: list[Triple] = []

    def add(self, exp: Experience) -> None:
        keep = self._rng.permutation(len(exp))[: self.per_task]
        sel = torch.as_tensor(keep, dtype=torch.int64)
        self.items.append((exp.x[sel].clone(), exp.task_idx[sel].clone(), exp.y[sel].clone()))

    def after_training_exp(self, ctx: ExpContext) -> None:
        self.add(ctx.exp)

    def __call__(self, n: int) -> Triple:
        if not self.items or n <= 0:
            return torch.empty(0), torch.empty(0, dtype=torch.int64), torch.empty(0)
        which = self._rng.integers(0, len(self.items), size=n)
        xs, ts, ys = [], [], []
        for k in np.unique(which):
            count = int((which == k).sum())
            x, t, y = self.items[k]
            sel = torch.as_tensor(self._rng.integers(0, len(t), size=count), dtype=torch.int64)
            xs.append(x[sel])
            ts.append(t[sel])
            ys.append(y[sel])
        return torch.cat(xs), torch.cat(ts), torch.cat(ys)

    @property
    def num_tasks(self) -> int:
        return len(self.items)

    def running_state(self) -> dict[str, Any]:
        return {"rng": rng_state(self._rng)}

    def load_running_state(self, state: Mapping[str, Any]) -> None:
        if "rng" in state:
            set_rng_state(self._rng, state["rng"])

    def config(self) -> dict:
        return {**super().config(), "per_task": self.per_task, "tasks": len(self.items)}

    def tensors(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for k, (x, t, y) in enumerate(self.items):
            out.update({f"x.{k}": x, f"t.{k}": t, f"y.{k}": y})
        return out

    def load_state(self, tensors: Mapping[str, Tensor], config: Mapping) -> None:
        super().load_state(tensors, config)
        self.items = [
            (tensors[f"x.{k}"].clone(), tensors[f"t.{k}"].clone(), tensors[f"y.{k}"].clone())
            for k in range(int(config["tasks"]))
        ]


class StoreReplay:
    """A ReplaySource over an ExperienceStore: samples earlier tasks' train split, maps names to heads.

    ``task_order`` is the model's ordered task list (metadata ``tasks``); ``tasks`` are the ones to
    replay (normally every task except the one being learned).
    """

    def __init__(
        self, store, tasks: Sequence[str], task_order: Sequence[str], sampler: str = "task_balanced", seed: int = 0
    ):
        missing = [t for t in tasks if t not in task_order]
        if missing:
            raise ValueError(f"replay tasks {missing} are not in the model's task list {list(task_order)}")
        self.store = store
        self.tasks = list(tasks)
        self.head_of = {name: i for i, name in enumerate(task_order)}
        self.sampler = sampler
        self.rng = np.random.default_rng(seed)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def rng_state(self) -> str:
        """The sampling rng's state (Replay puts it in the trainer's resume checkpoint)."""
        return rng_state(self.rng)

    def set_rng_state(self, state: str) -> None:
        set_rng_state(self.rng, state)

    def __call__(self, n: int) -> Triple:
        if not self.tasks or n <= 0:
            return torch.empty(0), torch.empty(0, dtype=torch.int64), torch.empty(0)
        batch = self.store.sample(n, tasks=self.tasks, sampler=self.sampler, split="train", rng=self.rng)
        heads = torch.as_tensor([self.head_of[str(t)] for t in batch.task], dtype=torch.int64)
        return (
            torch.as_tensor(batch.obs, dtype=torch.float32),
            heads,
            torch.as_tensor(batch.action, dtype=torch.float32),
        )
