"""The continual strategies by name: each one's frozen, typed options and the plugins it builds.

The learner's recipes and the benchmarks both build their methods here, so a benchmark number comes
from the plugins and option names a deployed recipe uses. Torch-free: front ends validate options cheaply.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from lifelong_ros.learning.plugins import Plugin, ReplaySource


# ---------------------------------------------------------------------------------------------
# typed, checked option sets
# ---------------------------------------------------------------------------------------------
def option(
    default: Any,
    *,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
) -> Any:
    """A field of an ``Options`` class with bounds on its numbers (a tuple's bounds apply to each item)."""
    return field(default=default, metadata={"bounds": (at_least, above, at_most, below)})


@dataclass(frozen=True)
class Options:
    """Base of the option sets: every field is checked against its annotation and bounds when built.

    Ints are accepted for floats (and stored as floats), lists for tuples; bools are never numbers.
    """

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _coerce(self, f.name, getattr(self, f.name), hints[f.name])
            _check_bounds(self, f.name, value, f.metadata.get("bounds"))
            object.__setattr__(self, f.name, value)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


def _alternatives(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _as(hint: Any, value: Any) -> tuple[bool, Any]:
    """(True, value converted to ``hint``) when ``value`` is acceptable as ``hint``, else (False, None)."""
    if hint is type(None):
        return value is None, None
    if typing.get_origin(hint) is Literal:
        return value in typing.get_args(hint) and isinstance(value, str), value
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            return False, None
        items = [_as(item, v) for v in value]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if hint is bool:
        return isinstance(value, bool), value
    if isinstance(value, bool):
        return False, None
    if hint is int:
        return isinstance(value, numbers.Integral), int(value) if isinstance(value, numbers.Integral) else None
    if hint is float:
        return isinstance(value, numbers.Real), float(value) if isinstance(value, numbers.Real) else None
    return isinstance(value, hint), value


def _describe(hint: Any) -> str:
    def one(h: Any) -> str:
        if h is type(None):
            return "None"
        if typing.get_origin(h) is Literal:
            return " or ".join(repr(v) for v in typing.get_args(h))
        if typing.get_origin(h) is tuple:
            return f"a list of {one(typing.get_args(h)[0])}"
        return h.__name__

    return " or ".join(one(h) for h in _alternatives(hint))


def _coerce(owner: Options, key: str, value: Any, hint: Any) -> Any:
    for alt in _alternatives(hint):
        ok, out = _as(alt, value)
        if ok:
            return out
    raise ValueError(f"{type(owner).__name__}: {key}={value!r} is a {type(value).__name__}, expected {_describe(hint)}")


def _check_bounds(owner: Options, key: str, value: Any, bounds: tuple | None) -> None:
    if bounds is None or value is None or isinstance(value, str):
        return
    at_least, above, at_most, below = bounds
    items = value if isinstance(value, tuple) else (value,)

    def fits(v: float) -> bool:
        return (
            (at_least is None or v >= at_least)
            and (above is None or v > above)
            and (at_most is None or v <= at_most)
            and (below is None or v < below)
        )

    if (isinstance(value, tuple) and not value) or not all(fits(v) for v in items):
        low = f"[{at_least:g}" if at_least is not None else f"({above:g}" if above is not None else "(-inf"
        high = f"{at_most:g}]" if at_most is not None else f"{below:g})" if below is not None else "inf)"
        what = "a non-empty list of numbers" if isinstance(value, tuple) else "a number"
        raise ValueError(f"{type(owner).__name__}: {key}={value!r} is not {what} in {low}, {high}")


def check_keys(given: Mapping[str, Any], valid: Mapping[str, Sequence[str]], where: str) -> None:
    """ValueError naming every key of ``given`` outside ``valid`` (label -> keys), with a did-you-mean."""
    known = [k for keys in valid.values() for k in keys]
    unknown = [k for k in given if k not in known]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), known, n=1)
        owners = [name for name, spec in STRATEGIES.items() if key in spec.options.field_names()]
        hint = f"unknown option {key!r} for {where}"
        if close:
            hint += f" (did you mean {close[0]!r}?)"
        elif owners:
            hint += f" (an option of {', '.join(owners)})"
        hints.append(hint)
    listing = "; ".join(f"{label}: {', '.join(keys) or '(none)'}" for label, keys in valid.items())
    raise ValueError(f"{'; '.join(hints)}. Valid options are {listing}")


# ---------------------------------------------------------------------------------------------
# the strategies' options (defaults: the recipes' defaults, tuned on the benchmarks)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StrategyOptions(Options):
    """Base of a strategy's options."""


@dataclass(frozen=True)
class NoOptions(StrategyOptions):
    """naive and joint: nothing to set."""


@dataclass(frozen=True)
class L2Options(StrategyOptions):
    l2_lambda: float = option(1.0, at_least=0)  # penalty weight on the distance to the previous parameters


@dataclass(frozen=True)
class EWCOptions(StrategyOptions):
    ewc_lambda: float = option(100.0, at_least=0)  # penalty weight of the Fisher-weighted distance
    fisher_samples: int = option(1024, at_least=1)  # samples of the finished task the Fisher is estimated on


@dataclass(frozen=True)
class OnlineEWCOptions(StrategyOptions):
    ewc_lambda: float = option(100.0, at_least=0)
    ewc_decay: float = option(1.0, at_least=0, at_most=1)  # old tasks' Fisher fades by this per task (1 = never)
    fisher_samples: int = option(1024, at_least=1)


@dataclass(frozen=True)
class SIOptions(StrategyOptions):
    si_lambda: float = option(1.0, at_least=0)  # SI's c: weight of the path-integral importance penalty


@dataclass(frozen=True)
class ReplayOptions(StrategyOptions):
    # fraction of every mixed batch replayed from earlier tasks, or "balanced": each earlier task gets
    # as many samples as the new one (joint training's composition)
    replay_ratio: float | Literal["balanced"] = option(0.5, at_least=0, below=1)


@dataclass(frozen=True)
class EWCReplayOptions(StrategyOptions):
    ewc_lambda: float = option(100.0, at_least=0)
    ewc_decay: float = option(1.0, at_least=0, at_most=1)
    fisher_samples: int = option(1024, at_least=1)
    replay_ratio: float | Literal["balanced"] = option(0.5, at_least=0, below=1)


# ---------------------------------------------------------------------------------------------
# builders: plugins are imported here, not at module level (they import torch)
# ---------------------------------------------------------------------------------------------
def _no_plugins(options: NoOptions, replay: ReplaySource | None) -> list[Plugin]:
    return []


def _l2(options: L2Options, replay: ReplaySource | None) -> list[Plugin]:
    from lifelong_ros.learning.plugins import L2Anchor

    return [L2Anchor(options.l2_lambda)]


def _ewc(options: EWCOptions, replay: ReplaySource | None) -> list[Plugin]:
    from lifelong_ros.learning.plugins import EWC

    return [EWC(options.ewc_lambda, options.fisher_samples)]


def _online_ewc(options: OnlineEWCOptions | EWCReplayOptions, replay: ReplaySource | None) -> list[Plugin]:
    from lifelong_ros.learning.plugins import OnlineEWC

    return [OnlineEWC(options.ewc_lambda, options.ewc_decay, options.fisher_samples)]


def _si(options: SIOptions, replay: ReplaySource | None) -> list[Plugin]:
    from lifelong_ros.learning.plugins import SynapticIntelligence

    return [SynapticIntelligence(options.si_lambda)]


def _replay(options: ReplayOptions | EWCReplayOptions, replay: ReplaySource | None) -> list[Plugin]:
    """[Replay(replay)], then the source itself when it is a plugin (a MemoryBuffer records each finished task)."""
    if replay is None:
        return []
    from lifelong_ros.learning.plugins import Plugin, Replay

    return [Replay(replay, options.replay_ratio)] + ([replay] if isinstance(replay, Plugin) else [])


def _ewc_replay(options: EWCReplayOptions, replay: ReplaySource | None) -> list[Plugin]:
    return _online_ewc(options, replay) + _replay(options, replay)


# ---------------------------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Strategy:
    """A registered strategy: its options class, its plugin builder, and what data it trains on."""

    name: str
    options: type[StrategyOptions]
    build: Callable[[Any, ReplaySource | None], list[Plugin]]  # (options, replay source | None) -> plugins
    summary: str
    uses_replay: bool = False  # builds Replay over the source of earlier tasks' samples it is given
    trains_on_all_tasks: bool = False  # joint: every experience trains on all tasks so far (not a plugin)


STRATEGIES: Mapping[str, Strategy] = MappingProxyType(
    {
        s.name: s
        for s in (
            Strategy("naive", NoOptions, _no_plugins, "fine-tune on each new task (the forgetting baseline)"),
            Strategy(
                "joint",
                NoOptions,
                _no_plugins,
                "train on every task so far (the upper bound)",
                trains_on_all_tasks=True,
            ),
            Strategy("l2", L2Options, _l2, "L2 anchor to the previous parameters"),
            Strategy("ewc", EWCOptions, _ewc, "EWC, one Fisher per task"),
            Strategy("online_ewc", OnlineEWCOptions, _online_ewc, "online EWC, one decayed Fisher"),
            Strategy("si", SIOptions, _si, "Synaptic Intelligence"),
            Strategy("replay", ReplayOptions, _replay, "experience replay of earlier tasks", uses_replay=True),
            Strategy(
                "ewc_replay", EWCReplayOptions, _ewc_replay, "online EWC + replay (the default)", uses_replay=True
            ),
        )
    }
)


def strategy(name: str) -> Strategy:
    """The registered strategy ``name``, or ValueError listing the registered ones."""
    spec = STRATEGIES.get(name)
    if spec is None:
        close = difflib.get_close_matches(str(name), list(STRATEGIES), n=1)
        mean = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown strategy {name!r}{mean}; expected one of {', '.join(STRATEGIES)}")
    return spec


def strategy_options(name: str, mapping: Mapping[str, Any] | None = None) -> StrategyOptions:
    """Strategy ``name``'s options from ``mapping`` (defaults for missing keys); unknown keys, wrong
    types and out-of-range values raise ValueError naming the key."""
    spec = strategy(name)
    values = dict(mapping or {})
    check_keys(values, {f"strategy {name}": spec.options.field_names()}, f"strategy {name!r}")
    return spec.options(**values)


def build_plugins(
    name: str, options: StrategyOptions | Mapping[str, Any] | None = None, replay: ReplaySource | None = None
) -> list[Plugin]:
    """The plugins of strategy ``name`` (options as built by ``strategy_options``, or a mapping of them).

    ``replay`` samples earlier tasks for the strategies that replay (None: nothing to replay yet);
    the others ignore it. A source that is itself a plugin (MemoryBuffer) is put in the list too.
    """
    spec = strategy(name)
    if options is None or isinstance(options, Mapping):
        options = strategy_options(name, options)
    if type(options) is not spec.options:
        raise ValueError(f"strategy {name!r} takes {spec.options.__name__}, got {type(options).__name__}")
    return spec.build(options, replay)
