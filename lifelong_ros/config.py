"""Reads config/lifelong.yaml (ROS 2 parameters format) for the standalone CLI.

The ROS nodes get the same file through `--ros-args --params-file`; this module gives the CLI the
same view: the wildcard section (``/**``) merged under each node's own section, nested keys
flattened with dots exactly as ROS 2 flattens them.

It also holds the small schema vocabulary every reader of the file uses (`ConfigError`,
`check_known_keys`, `check_value`), so a misspelled key or a wrong type is refused with one clear
line, naming the file, the key and what was expected, before any work starts.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from lifelong_ros.paths import default_config_path


class ConfigError(ValueError):
    """A configuration value or file that cannot be used; the message names it and what was expected."""


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or ``""``."""
    close = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_known_keys(given: Iterable[str], known: Iterable[str], where: str) -> None:
    """ConfigError naming the first key of ``given`` outside ``known``, with a did-you-mean."""
    known = sorted(known)
    for key in given:
        if key not in known:
            raise ConfigError(
                f"{where}: unknown key {key!r}{did_you_mean(key, known)}; expected one of {', '.join(known)}"
            )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_value(
    name: str,
    value: Any,
    kind: type,
    *,
    min: float | None = None,
    max: float | None = None,
    exclusive_min: bool = False,
    where: str = "",
) -> Any:
    """Return ``value`` (ints widened to float for float ``kind``) or raise ConfigError naming it.

    ``kind`` is int, float, bool or str; bools are never numbers, floats must be finite.
    """
    label = f"{where}: {name}" if where else name
    given = value
    if kind is bool:
        ok, expected = isinstance(value, bool), "true or false"
    elif kind is int:
        ok, expected = _is_int(value), "an integer"
    elif kind is float:
        ok = (_is_int(value) or isinstance(value, float)) and math.isfinite(value)
        expected = "a finite number"
        if ok:
            value = float(value)
    elif kind is str:
        ok, expected = isinstance(value, str), "a string"
    else:  # pragma: no cover - programming error
        raise TypeError(f"check_value: unsupported kind {kind!r}")
    bounds = []
    if min is not None:
        bounds.append(f"{'>' if exclusive_min else '>='} {min:g}")
    if max is not None:
        bounds.append(f"<= {max:g}")
    if bounds:
        expected += " " + " and ".join(bounds)
    if ok and min is not None:
        ok = value > min if exclusive_min else value >= min
    if ok and max is not None:
        ok = value <= max
    if not ok:
        raise ConfigError(f"{label}={given!r}: expected {expected}")
    return value


def _flatten(d: dict[Any, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist; expected a ROS 2 params file") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; expected a ROS 2 params file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file ({exc.reason}); expected a ROS 2 params YAML file") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from exc


def load_sections(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Each section of the params file on its own (not merged), keys flattened: ``{"/**": {...},
    "learner": {...}, "demo": {...}}``. ConfigError for anything that is not a ROS 2 params file."""
    path = Path(path) if path else default_config_path()
    raw = _read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a mapping of node names to {{ros__parameters: ...}}, got {type(raw).__name__}"
        )
    sections: dict[str, dict[str, Any]] = {}
    for node, body in raw.items():
        if not isinstance(body, dict) or "ros__parameters" not in body:
            other = [str(k) for k in body] if isinstance(body, dict) else []
            got = f"got keys {other}" if other else f"got {body!r}"
            hint = " (misspelled?)" if any(did_you_mean(k, ["ros__parameters"]) for k in other) else ""
            raise ConfigError(
                f"{path}: section {node!r} must contain 'ros__parameters' (ROS 2 params file format); {got}{hint}"
            )
        extra = [str(k) for k in body if k != "ros__parameters"]
        if extra:
            raise ConfigError(f"{path}: section {node!r}: unknown key {extra[0]!r}; expected only 'ros__parameters'")
        params = body["ros__parameters"]
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise ConfigError(
                f"{path}: section {node!r}: ros__parameters={params!r}: expected a mapping of parameter names to values"
            )
        name = str(node)
        if name not in ("/**", "**"):  # "/**/learner", "/robot1/learner" -> "learner"
            name = name.rstrip("/").rsplit("/", 1)[-1]
        else:
            name = "/**"
        flat = _flatten(params)
        for key, value in flat.items():
            if value is None:
                raise ConfigError(f"{path}: {name}.{key} has no value; expected a value or the key removed")
        sections.setdefault(name, {}).update(flat)
    sections.setdefault("/**", {})
    return sections


def load_params(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Return ``{node_name: {param: value}}`` with ``/**`` parameters merged into every node.

    The result also holds the key ``"/**"`` for the shared parameters alone.
    """
    sections = load_sections(path)
    shared = sections.pop("/**", {})
    merged = {node: {**shared, **params} for node, params in sections.items()}
    merged["/**"] = dict(shared)
    return merged


def node_params(node: str, path: str | Path | None = None) -> dict[str, Any]:
    """Parameters one node sees: shared ones overridden by its own section."""
    params = load_params(path)
    return params.get(node, params["/**"])
