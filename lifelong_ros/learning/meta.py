"""Meta-learning for fast adaptation: MAML (second order), first-order MAML, Reptile, ANIL, Meta-SGD.

A new task should be learned from a handful of demonstrations. learn2learn's small surface
(meta-train an initialisation, then ``adapt`` it) without its per-task module copies: parameters
are plain dicts and tasks are batched with torch.func (``functional_call`` + ``grad`` + ``vmap``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, grad_and_value, vmap

Params = dict[str, Tensor]
ProgressFn = Callable[[str, int, float], None]
METHODS = ("maml", "fomaml", "reptile", "anil", "metasgd")


@dataclass(frozen=True)
class MetaConfig:
    """How to meta-train. ``adapt_params``: names adapted in the inner loop (None = all; ANIL's
    default is the heads, ``head_w``/``head_b`` of PolicyNet or the last layer otherwise)."""

    method: str = "maml"
    inner_lr: float = 0.01
    inner_steps: int = 1
    outer_lr: float = 1e-3
    reptile_inner_steps: int = 5
    adapt_params: tuple[str, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown meta-learning method {self.method!r}; expected one of {METHODS}")
        if not self.inner_lr > 0 or not self.outer_lr > 0 or self.inner_steps < 1 or self.reptile_inner_steps < 1:
            raise ValueError(f"need inner_lr, outer_lr > 0 and inner steps >= 1, got {self}")


# A task batch: (support inputs, support targets, query inputs, query targets), each with a leading
# task dimension; inputs are tuples of tensors (e.g. (obs, task_id) for PolicyNet, (x,) for an MLP).
TaskBatch = tuple[tuple[Tensor, ...], Tensor, tuple[Tensor, ...], Tensor]


def mse(pred: Tensor, target: Tensor) -> Tensor:
    return torch.mean((pred - target) ** 2)


def default_head_names(model: nn.Module) -> tuple[str, ...]:
    names = [n for n, _ in model.named_parameters()]
    if "head_w" in names:
        return ("head_w", "head_b")
    return tuple(names[-2:])  # the last Linear layer (weight, bias)


class MetaLearner:
    """Owns a model's meta-parameters (its own nn.Parameters, updated in place) and the outer optimiser."""

    def __init__(
        self, model: nn.Module, config: MetaConfig = MetaConfig(), loss_fn: Callable[[Tensor, Tensor], Tensor] = mse
    ):
        self.model = model
        self.config = config
        self.loss_fn = loss_fn
        self.params: Params = dict(model.named_parameters())
        self.buffers = dict(model.named_buffers())
        names = config.adapt_params or (default_head_names(model) if config.method == "anil" else tuple(self.params))
        unknown = sorted(set(names) - set(self.params))
        if unknown:
            raise ValueError(f"adapt_params {unknown} are not parameters of the model; it has {sorted(self.params)}")
        self.adapt_names = tuple(names)
        trainable = list(self.params.values())
        self.log_lr: Params = {}
        if config.method == "metasgd":  # learned per-parameter inner step sizes, kept positive via exp
            self.log_lr = {
                n: torch.full_like(self.params[n], math.log(config.inner_lr)).requires_grad_() for n in self.adapt_names
            }
            trainable += list(self.log_lr.values())
        self.optimizer = torch.optim.Adam(trainable, lr=config.outer_lr)
        self.iterations = 0

    # --- the functional core -----------------------------------------------------------------
    def loss(self, params: Params, inputs: tuple[Tensor, ...], target: Tensor) -> Tensor:
        return self.loss_fn(functional_call(self.model, (params, self.buffers), inputs), target)

    def adapt(
        self,
        params: Params,
        inputs: tuple[Tensor, ...],
        target: Tensor,
        steps: int | None = None,
        lr: float | None = None,
        first_order: bool = False,
        log_lr: Params | None = None,
    ) -> Params:
        """Inner loop: ``steps`` gradient steps on the support set, differentiable unless ``first_order``."""
        steps = self.config.inner_steps if steps is None else steps
        lr = self.config.inner_lr if lr is None else lr
        fast = dict(params)
        for _ in range(steps):
            sub = {n: fast[n] for n in self.adapt_names}
            g = grad(lambda s: self.loss({**fast, **s}, inputs, target))(sub)
            for n in self.adapt_names:
                step = g[n].detach() if first_order else g[n]
                rate = torch.exp(log_lr[n]) if log_lr else lr
                fast[n] = fast[n] - rate * step
        return fast

    def _query_loss(self, params: Params, log_lr: Params, xs, ys, xq, yq) -> Tensor:
        fast = self.adapt(params, xs, ys, first_order=self.config.method == "fomaml", log_lr=log_lr or None)
        return self.loss(fast, xq, yq)

    def meta_loss_and_grads(self, batch: TaskBatch) -> tuple[Tensor, Params]:
        """Mean post-adaptation query loss over the task batch and its gradient (vmap over tasks)."""
        xs, ys, xq, yq = batch
        params = {n: p.detach() for n, p in self.params.items()}
        log_lr = {n: p.detach() for n, p in self.log_lr.items()}

        def total(p: Params, lr_: Params) -> Tensor:
            per_task = vmap(self._query_loss, in_dims=(None, None, 0, 0, 0, 0))(p, lr_, xs, ys, xq, yq)
            return per_task.mean()

        (grads, lr_grads), value = grad_and_value(total, argnums=(0, 1))(params, log_lr)
        return value.detach(), {**grads, **{f"log_lr/{n}": g for n, g in lr_grads.items()}}

    def meta_step(self, batch: TaskBatch) -> float:
        """One outer update; returns the meta-loss (Reptile: the mean support loss after adaptation)."""
        if self.config.method == "reptile":
            return self._reptile_step(batch)
        value, grads = self.meta_loss_and_grads(batch)
        self.optimizer.zero_grad(set_to_none=True)
        for n, p in self.params.items():
            p.grad = grads[n]
        for n, p in self.log_lr.items():
            p.grad = grads[f"log_lr/{n}"]
        self.optimizer.step()
        self.iterations += 1
        return float(value)

    def _reptile_step(self, batch: TaskBatch) -> float:
        xs, ys, xq, yq = batch
        inputs = tuple(torch.cat([a, b], 1) for a, b in zip(xs, xq))
        target = torch.cat([ys, yq], 1)
        params = {n: p.detach() for n, p in self.params.items()}
        steps = self.config.reptile_inner_steps

        def one(x, y):
            fast = self.adapt(params, x, y, steps=steps, first_order=True)
            return {n: fast[n] for n in self.adapt_names}, self.loss(fast, x, y)

        adapted, losses = vmap(one)(inputs, target)
        self.optimizer.zero_grad(set_to_none=True)
        for n in self.adapt_names:  # Reptile's direction: move the init toward the adapted weights
            self.params[n].grad = params[n] - adapted[n].mean(0)
        self.optimizer.step()
        self.iterations += 1
        return float(losses.mean())

    def meta_train(
        self,
        sample_tasks: Callable[[torch.Generator], TaskBatch],
        iterations: int,
        on_progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress_every: int = 50,
    ) -> list[float]:
        """Outer loop over ``iterations`` task batches from ``sample_tasks(generator)``; stops early on ``should_stop``."""
        gen = torch.Generator().manual_seed(self.config.seed)
        losses: list[float] = []
        for it in range(1, iterations + 1):
            if should_stop is not None and should_stop():
                break
            losses.append(self.meta_step(sample_tasks(gen)))
            if on_progress is not None and (it % progress_every == 0 or it == iterations):
                on_progress("meta-train", it, losses[-1])
        return losses

    def adapted_params(self, inputs: tuple[Tensor, ...], target: Tensor, steps: int, lr: float | None = None) -> Params:
        """Adapt the current meta-parameters to one task's support set (no graph kept)."""
        params = {n: p.detach() for n, p in self.params.items()}
        log_lr = {n: p.detach() for n, p in self.log_lr.items()} or None
        fast = self.adapt(params, inputs, target, steps=steps, lr=lr, first_order=True, log_lr=log_lr)
        return {n: t.detach() for n, t in fast.items()}


def loop_meta_grads(model: nn.Module, batch: TaskBatch, inner_lr: float, loss_fn=mse) -> Params:
    """Reference MAML (one inner step, second order) with a Python loop over tasks and
    autograd.grad(create_graph=True): what the vmap path is measured and tested against."""
    names, params = zip(*model.named_parameters())
    xs, ys, xq, yq = batch
    total = torch.zeros(())
    for t in range(ys.shape[0]):
        support = loss_fn(model(*(x[t] for x in xs)), ys[t])
        g = torch.autograd.grad(support, params, create_graph=True)
        fast = {n: p - inner_lr * gi for n, p, gi in zip(names, params, g)}
        total = total + loss_fn(functional_call(model, fast, tuple(x[t] for x in xq)), yq[t])
    total = total / ys.shape[0]
    return dict(zip(names, torch.autograd.grad(total, params)))
