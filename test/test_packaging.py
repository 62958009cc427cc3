"""The pip install path: a wheel puts config/, launch/ and the interface files where lifelong_ros.paths looks.

A colcon install gets the same share/lifelong_ros layout from CMakeLists.txt (test/nodes/test_ros_core.py
checks that side); both must resolve the default spec and params file without a source checkout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = (
    "pyproject.toml",
    "README.md",
    "package.xml",
    "lifelong_ros",
    "config",
    "launch",
    "msg",
    "srv",
    "action",
    "resource",
)


def _run(*cmd: str | Path, cwd: Path) -> str:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, cwd=cwd)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.timeout(600)
def test_wheel_installs_share_files_that_paths_finds_outside_the_checkout(tmp_path):
    src = tmp_path / "src"
    for name in SHIPPED:  # a copy, so the build writes nothing into the checkout
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(path, src / name)
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "dist", ".", cwd=src)
    (wheel,) = (tmp_path / "dist").glob("lifelong_ros-*.whl")
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel, cwd=tmp_path)

    code = (
        "import lifelong_ros.paths as p\n"
        "print(p.config_dir())\nprint(p.resolve_config_file('spec_metaworld.yaml'))\n"
        "print(p.default_config_path())\n"
    )
    config_dir, spec, params = _run(python, "-c", code, cwd=tmp_path).split()
    share = venv / "share" / "lifelong_ros"
    assert Path(config_dir) == share / "config"
    assert Path(spec) == share / "config" / "spec_metaworld.yaml" and Path(params) == share / "config" / "lifelong.yaml"
    for kind in ("msg", "srv", "action"):  # what nodes/messages.py reads the interface definitions from
        shipped = sorted(p.name for p in (ROOT / kind).iterdir())
        assert sorted(p.name for p in (share / kind).iterdir()) == shipped
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert all((venv / "bin" / name).is_file() for name in scripts), sorted(scripts)
