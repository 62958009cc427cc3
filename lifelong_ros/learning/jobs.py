"""What an adaptation job is: the recipes, their typed options, the request the learner worker runs,
and the candidate it returns.

Plain data, free of torch, so the front ends (demo, offline learning, the learner node) build and
check requests without importing training code: a bad method or option fails when the request is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from lifelong_ros.learning.strategies import STRATEGIES, Options, StrategyOptions, check_keys, option

ProgressFn = Callable[[str, int, float], None]  # (phase, step, loss)


@dataclass(frozen=True)
class Recipe:
    """An adaptation recipe: the continual strategy it trains with, and whether it meta-learns the new head."""

    strategy: str  # a name from lifelong_ros.learning.strategies.STRATEGIES
    meta_head_init: bool = False  # meta-learned initialisation of the new task's head (the meta_* options)
    nearest_head_init: bool = False  # the new head starts as the known task's head that fits its demonstrations best


# Every strategy is a recipe of the same name; meta_ewc_replay adds the meta-learned head init to
# ewc_replay, nearest_ewc_replay the head inferred from the known tasks (no meta-training).
RECIPES: Mapping[str, Recipe] = MappingProxyType(
    {
        "ewc_replay": Recipe("ewc_replay"),
        "meta_ewc_replay": Recipe("ewc_replay", meta_head_init=True),
        "nearest_ewc_replay": Recipe("ewc_replay", nearest_head_init=True),
        **{name: Recipe(name) for name in STRATEGIES},
    }
)


@dataclass(frozen=True)
class RecipeOptions(Options):
    """A recipe's training knobs (the strategy's own options are separate: see ``parse_recipe_options``)."""

    lr: float = option(1e-3, above=0)  # Adam
    batch_size: int = option(256, at_least=1)  # new-task samples per step (replay adds on top)
    lr_final: float | None = option(None, at_least=0)  # cosine decay from lr to this; None = constant lr
    hidden: tuple[int, ...] = option((256, 256), at_least=1)  # backbone widths (a model trained from scratch)
    multi_head: bool = True  # one output head per task (a model trained from scratch)
    progress_every: int = option(50, at_least=1)  # steps between progress reports
    checkpoint_every: int = option(200, at_least=1)  # steps between resume checkpoints
    meta_shots: int = option(64, at_least=1)  # support (and query) rows per meta-task
    meta_inner_lr: float = option(0.05, above=0)
    meta_inner_steps: int = option(3, at_least=1)
    meta_outer_lr: float = option(1e-3, above=0)
    meta_batch: int = option(8, at_least=1)  # meta-tasks per outer step
    meta_iterations: int = option(200, at_least=0)  # outer steps
    head_steps: int = option(50, at_least=0)  # head-only steps on the new task's demonstrations after meta-training


# the options of the meta-learned head initialisation: only recipes with meta_head_init take them
META_OPTIONS = (*(k for k in RecipeOptions.field_names() if k.startswith("meta_")), "head_steps")


def parse_recipe_options(
    method: str, mapping: Mapping[str, Any] | None = None
) -> tuple[RecipeOptions, StrategyOptions]:
    """Split ``mapping`` into recipe ``method``'s training options and its strategy's options, both typed.

    ValueError for an unknown method, a key neither takes (naming the valid keys of both), a wrong type
    or an out-of-range value.
    """
    recipe = RECIPES.get(method)
    if recipe is None:
        raise ValueError(f"unknown adaptation method {method!r}; expected one of {', '.join(RECIPES)}")
    values = dict(mapping or {})
    meta_only = [k for k in values if k in META_OPTIONS and not recipe.meta_head_init]
    if meta_only:
        with_meta = [name for name, r in RECIPES.items() if r.meta_head_init]
        raise ValueError(
            f"options {meta_only} apply only to the recipes with a meta-learned head "
            f"({', '.join(with_meta)}), not to {method!r}"
        )
    spec = STRATEGIES[recipe.strategy]
    own = [k for k in RecipeOptions.field_names() if recipe.meta_head_init or k not in META_OPTIONS]
    check_keys(values, {f"strategy {spec.name}": spec.options.field_names(), "training": own}, f"recipe {method!r}")
    strategy_keys = set(spec.options.field_names())
    return (
        RecipeOptions(**{k: v for k, v in values.items() if k not in strategy_keys}),
        spec.options(**{k: v for k, v in values.items() if k in strategy_keys}),
    )


@dataclass(frozen=True)
class ModelPrior:
    """What a robot tells a model trained from scratch (``SimBackend.model_prior``), none of it learned:

    - ``obs_scale``: (mean, std) per observation value the input is normalised by, the robot's own
      scale, so that every later task's observations fall in range (None: fitted to the first task's
      demonstrations);
    - ``action_prior``: (gain, bias); the network predicts a change to gain * obs[:act_dim] + bias
      (PolicyConfig.residual; None: it predicts the action itself);
    - ``differences``: fixed relative-position inputs (PolicyConfig.differences).
    """

    obs_scale: tuple[list[float], list[float]] | None = None
    action_prior: tuple[list[float], list[float]] | None = None
    differences: tuple[tuple[int, int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.obs_scale is not None:
            mean, std = self.obs_scale
            if len(mean) != len(std) or not all(math.isfinite(m) for m in mean) or not all(s > 0 for s in std):
                raise ValueError(
                    f"obs_scale: {len(mean)} means and {len(std)} stds (std min {min(std, default=None)}); "
                    "expected as many of each, finite, every std > 0"
                )
        if self.action_prior is not None:
            gain, bias = self.action_prior
            if len(gain) != len(bias) or not all(math.isfinite(v) for v in (*gain, *bias)):
                raise ValueError(
                    f"action_prior: {len(gain)} gains and {len(bias)} biases; expected as many of each, all finite"
                )


@dataclass
class AdaptRequest:
    """What to learn: a task from the experience store, with which recipe and budget."""

    task: str
    store_path: str
    method: str = "ewc_replay"  # a recipe name from RECIPES
    shots: int = 0  # demonstrations of the new task to use; 0 = all in the store
    steps: int = 1500  # optimiser steps for the whole recipe
    seed: int = 0
    parent_dir: str | None = None  # directory of the parent version (weights + meta), None = from scratch
    out_dir: str = ""  # where the candidate files are written (created, must not exist)
    options: dict[str, Any] = field(default_factory=dict)  # RecipeOptions + the strategy's (lr, ewc_lambda, ...)
    job_id: str = ""  # stable id: a resubmitted job with the same id resumes from its checkpoint
    # What the robot tells a model trained from scratch (sim.backends); a parent keeps its own.
    prior: ModelPrior | None = None

    def __post_init__(self) -> None:
        if self.steps < 1 or self.shots < 0:
            raise ValueError(f"need steps >= 1 and shots >= 0, got steps={self.steps}, shots={self.shots}")
        parse_recipe_options(self.method, self.options)


@dataclass
class Candidate:
    """A trained model ready for the safety gate: files in ``out_dir`` plus its metadata."""

    out_dir: str
    onnx_path: str
    weights_path: str
    metadata: dict[str, Any]


class AdaptCancelled(Exception):
    """The job was cancelled before it produced a candidate."""


class AdaptError(RuntimeError):
    """The job failed in the worker; the message carries the worker's traceback."""


JobFn = Callable[[AdaptRequest, ProgressFn, Callable[[], bool]], Candidate]
"""What the worker runs per request: ``job(request, on_progress, should_stop) -> Candidate``.

A module-level function, or its ``"module:function"`` name: the worker process is spawned and
imports it there, so a caller that names it never imports training code (torch) itself."""

ADAPT_JOB = "lifelong_ros.learning.recipes:run_request"  # the adaptation recipes (learning/recipes.py)


def resolve_job(job: JobFn | str) -> JobFn:
    """The function a ``"module:function"`` name refers to (a callable is returned as is)."""
    if callable(job):
        return job
    module, _, name = str(job).partition(":")
    if not module or not name:
        raise ValueError(f"job {job!r}: expected a callable or 'package.module:function'")
    import importlib

    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise ValueError(f"job {job!r}: {module} has no function {name!r}")
    return fn
