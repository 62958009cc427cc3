"""Shared test setup: tests are laid out like the packages (test/<layer>/test_<module>.py).

``policies.py`` beside this file builds tiny real policies (trained with torch, exported to ONNX)
for the registry, gate and fault tests; it is importable from every test module.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TEST_DIR = Path(__file__).resolve().parent
REPO_ROOT = TEST_DIR.parent
sys.path.insert(0, str(TEST_DIR))  # `from policies import ...` (pytest runs with --import-mode=importlib)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The checkout: config/, launch/, msg/ and the packaging files live here."""
    return REPO_ROOT


@pytest.fixture(scope="session", autouse=True)
def _own_data_dir(tmp_path_factory):
    """No test reads or writes the user's data directory: a pretrained base there (`lifelong-ros
    pretrain`) would change what the demo starts from."""
    patch = pytest.MonkeyPatch()
    patch.setenv("LIFELONG_ROS_DATA", str(tmp_path_factory.mktemp("default-data")))
    yield
    patch.undo()
