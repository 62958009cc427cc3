"""Reads config/lifelong.yaml (ROS 2 parameters format) for the standalone CLI.

The ROS nodes get the same file through `--ros-args --params-file`; this module gives the CLI the
same view: the wildcard section (``/**``) merged under each node's own section, nested keys
flattened with dots exactly as ROS 2 flattens them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lifelong_ros.paths import default_config_path


def _flatten(d: dict[Any, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_params(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Return ``{node_name: {param: value}}`` with ``/**`` parameters merged into every node.

    The result also holds the key ``"/**"`` for the shared parameters alone.
    """
    path = Path(path) if path else default_config_path()
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(
            f"{path}: expected a mapping of node names to {{ros__parameters: ...}}, got {type(raw).__name__}"
        )
    sections: dict[str, dict[str, Any]] = {}
    for node, body in raw.items():
        if not isinstance(body, dict) or "ros__parameters" not in body:
            raise ValueError(f"{path}: section {node!r} must contain 'ros__parameters' (ROS 2 params file format)")
        name = str(node)
        if name not in ("/**", "**"):  # "/**/learner", "/robot1/learner" -> "learner"
            name = name.rstrip("/").rsplit("/", 1)[-1]
        else:
            name = "/**"
        sections[name] = _flatten(body["ros__parameters"] or {})
    shared = sections.pop("/**", {})
    merged = {node: {**shared, **params} for node, params in sections.items()}
    merged["/**"] = dict(shared)
    return merged


def node_params(node: str, path: str | Path | None = None) -> dict[str, Any]:
    """Parameters one node sees: shared ones overridden by its own section."""
    params = load_params(path)
    return params.get(node, params["/**"])
