"""Where lifelong_ros keeps things: the data directory's layout, artifact file names, installed files.

One module so the CLI, the demo, offline learning and every ROS node agree on every path, both in
a pip install (config under ``<prefix>/share/lifelong_ros``) and in a colcon install space
(``share/lifelong_ros`` found through the ament index), and when running from a source checkout.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = "lifelong_ros"
DATA_ENV = "LIFELONG_ROS_DATA"

# ------------------------------------------------------------------ the data directory's layout
STORE_FILE = "experience.sqlite3"  # the experience store
REGISTRY_DIR = "registry"  # the model registry
LEARNER_DIR = "learner"  # learner job directories (candidates before registration, checkpoints)
RUNS_DIR = "runs"  # demo runs without --out

# ------------------------------------------------------------------ files of a model version
# A learner candidate directory and a registry version directory use the same names.
MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "weights.safetensors"
TORCH_WEIGHTS_FILE = "weights.pt"  # weights-only torch.save archive, accepted at registration
CONSOLIDATION_FILE = "consolidation.safetensors"  # EWC/SI/... state: the parent of the next update
META_FILE = "meta.json"
REPORTS_DIR = "reports"
CHECKPOINT_FILE = "checkpoint.pt"  # in a learner job directory: resubmitting the job resumes from it

# ------------------------------------------------------------------ installed files
CONFIG_FILE = "lifelong.yaml"
SOURCE_ROOT = Path(__file__).resolve().parent.parent  # the checkout, when running from source


def data_dir(value: str | os.PathLike[str] | None = None) -> Path:
    """``value`` if given, else $LIFELONG_ROS_DATA, else $XDG_DATA_HOME/lifelong_ros (~/.local/share)."""
    if value:
        return Path(value).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / PACKAGE


def store_path(data: str | os.PathLike[str] | None = None) -> Path:
    """``<data dir>/experience.sqlite3``."""
    return data_dir(data) / STORE_FILE


def registry_dir(data: str | os.PathLike[str] | None = None) -> Path:
    """``<data dir>/registry``."""
    return data_dir(data) / REGISTRY_DIR


def learner_dir(data: str | os.PathLike[str] | None = None) -> Path:
    """``<data dir>/learner``: one directory per adaptation job."""
    return data_dir(data) / LEARNER_DIR


def share_dirs() -> list[Path]:
    """Candidate ``share/lifelong_ros`` directories, most specific first.

    A source checkout (config/ beside the package), a colcon install (ament index), a pip install
    (``<prefix>/share/lifelong_ros``, written by pyproject's data files).
    """
    found = [SOURCE_ROOT]
    try:
        from ament_index_python.packages import get_package_share_directory

        found.append(Path(get_package_share_directory(PACKAGE)))
    except Exception:  # noqa: BLE001 - no ROS, or the package is not in the ament index
        pass
    found.append(Path(sys.prefix) / "share" / PACKAGE)
    return found


def config_dir() -> Path:
    """The installed (or checked-out) ``config/`` directory with lifelong.yaml and the spec files."""
    for share in share_dirs():
        if (share / "config" / CONFIG_FILE).is_file():
            return share / "config"
    looked = ", ".join(str(s / "config") for s in share_dirs())
    raise FileNotFoundError(f"no {CONFIG_FILE} found; looked in {looked}")


def default_config_path() -> Path:
    """config/lifelong.yaml of the checkout or the install."""
    return config_dir() / CONFIG_FILE


def resolve_config_file(value: str | os.PathLike[str], base_dir: str | os.PathLike[str] | None = None) -> Path:
    """A config file named in parameters: absolute (or existing relative to the working directory) as
    given, else under ``base_dir``, else under the installed config/ directory."""
    text = os.path.expandvars(str(value))
    if not text:
        raise ValueError("config file name is empty; expected a YAML file name or path")
    p = Path(text).expanduser()
    if p.is_absolute() or p.exists():
        resolved = p
    else:
        resolved = (Path(base_dir).expanduser() if base_dir else config_dir()) / p
    if not resolved.is_file():
        raise FileNotFoundError(f"config file {str(value)!r} not found (looked at {resolved})")
    return resolved
