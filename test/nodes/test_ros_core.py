"""The ROS layer's wiring, checked without ROS: torch stays out of the serving processes, every
config key is a declared parameter, node lists agree across setup.py / CMake / launch files, and
every node keeps the standard main() shape.

Where rclpy and the built interfaces are importable (a sourced colcon workspace), the node modules
themselves are imported too.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from lifelong_ros import params as P

ROOT = Path(__file__).resolve().parents[2]
NODES_DIR = ROOT / "lifelong_ros" / "nodes"
NODE_NAMES = ["policy_server", "experience_buffer", "learner", "safety_monitor", "sim_bridge"]
TORCH_FREE = ["policy_server", "safety_monitor", "experience_buffer"]  # serving-side processes


def _core_imports(node: str) -> set[str]:
    """lifelong_ros core modules a node module imports (not the nodes, not generated interfaces), plus _common's."""
    mods = set()
    for name in (node, "_common"):
        for n in ast.walk(ast.parse((NODES_DIR / f"{name}.py").read_text())):
            if (
                isinstance(n, ast.ImportFrom)
                and n.level == 0
                and n.module
                and n.module.startswith("lifelong_ros.")
                and n.module.split(".")[1] not in ("nodes", "msg", "srv", "action")
            ):
                mods.add(n.module)
    return mods


def _run(code: str, tmp_path: Path) -> dict:
    """Run ``code`` in a fresh interpreter that imports the same lifelong_ros as this test process.

    Not from the source tree: under `colcon test` that is the *installed* package (with the
    generated interfaces), so the working directory is a scratch folder (``python -c`` puts the
    working directory first on sys.path) and the package's parent leads PYTHONPATH.
    """
    import lifelong_ros

    parent = str(Path(lifelong_ros.__file__).parent.parent)  # not resolved: a --symlink-install tree stays itself
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [parent, os.environ.get("PYTHONPATH", "")]))}
    code = f"import lifelong_ros, json, sys\nassert lifelong_ros.__file__ == {lifelong_ros.__file__!r}, lifelong_ros.__file__\n{code}"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("node", TORCH_FREE)
def test_serving_nodes_core_never_imports_torch(node, tmp_path):
    mods = sorted(_core_imports(node) | {"lifelong_ros.nodes.messages", "lifelong_ros.params"})
    assert "lifelong_ros.serving.runtime" in mods or node != "policy_server"
    code = (
        "import json, sys\n"
        + "".join(f"import {m}\n" for m in mods)
        + "print(json.dumps({'torch': 'torch' in sys.modules, 'rclpy': 'rclpy' in sys.modules}))"
    )
    got = _run(code, tmp_path)
    assert got == {"torch": False, "rclpy": False}, f"{node} core modules {mods} imported {got}"


def _ros_available() -> bool:
    return importlib.util.find_spec("rclpy") is not None and importlib.util.find_spec("lifelong_ros.msg") is not None


@pytest.mark.skipif(
    not _ros_available(),
    reason="rclpy or the built lifelong_ros interfaces are not importable (source a colcon workspace to run this)",
)
@pytest.mark.parametrize("node", TORCH_FREE)
def test_serving_node_modules_never_import_torch(node, tmp_path):
    got = _run(
        f"import json, sys\nimport lifelong_ros.nodes.{node}\nprint(json.dumps({{'torch': 'torch' in sys.modules}}))",
        tmp_path,
    )
    assert got == {"torch": False}


@pytest.mark.skipif(
    not _ros_available(),
    reason="rclpy or the built lifelong_ros interfaces are not importable (source a colcon workspace to run this)",
)
def test_installed_package_finds_config_and_specs_in_its_share_directory(tmp_path):
    got = _run(
        "from ament_index_python.packages import get_package_share_directory as share\n"
        "from pathlib import Path\n"
        "from lifelong_ros import paths\n"
        "found = (paths.config_dir() / 'spec_metaworld.yaml').resolve()\n"
        "want = (Path(share('lifelong_ros')) / 'config' / 'spec_metaworld.yaml').resolve()\n"
        "print(json.dumps({'same': found == want, 'found': str(found), 'want': str(want)}))",
        tmp_path,
    )
    assert got["same"], got


# --------------------------------------------------------------------------- config vs declared parameters
def _sections(path: Path) -> dict[str, dict]:
    def flatten(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flatten(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    raw = yaml.safe_load(path.read_text())
    return {key: flatten(body["ros__parameters"]) for key, body in raw.items()}


@pytest.mark.parametrize("config", ["lifelong.yaml", "g1.yaml"])
def test_every_shipped_params_file_passes_the_one_schema(config):
    sections = P.check_params_file(ROOT / "config" / config)  # what the CLI, launch files and nodes run
    nodes = {k.rsplit("/", 1)[-1] for k in _sections(ROOT / "config" / config) if k != "/**"} - P.CLI_SECTIONS
    assert nodes <= set(P.NODES) and nodes <= set(sections)


@pytest.mark.parametrize("config, dims", [("lifelong.yaml", (39, 4)), ("g1.yaml", (50, 17))])
def test_spec_named_in_each_config_loads(config, dims):
    from lifelong_ros.ros_io import spec as spec_mod

    path = ROOT / "config" / _sections(ROOT / "config" / config)["/**"]["spec"]
    spec = spec_mod.load_spec(path)
    assert (spec.obs_dim, spec.act_dim) == dims


# --------------------------------------------------------------------------- packaging consistency
def _cmake_executables() -> dict[str, str]:
    block = re.search(r"set\(LIFELONG_EXECUTABLES([^)]*)\)", ROOT.joinpath("CMakeLists.txt").read_text()).group(1)
    return dict(e.split("=") for e in re.findall(r'"([^"]+)"', block))


def test_executables_agree_across_pyproject_cmake_and_modules():
    scripts = tomllib.loads(ROOT.joinpath("pyproject.toml").read_text())["project"]["scripts"]
    pip = {name: target.split(":")[0] for name, target in scripts.items()}
    assert pip == _cmake_executables()
    assert {n for n, mod in pip.items() if mod.startswith("lifelong_ros.nodes.")} == set(NODE_NAMES)
    for _name, target in scripts.items():
        module, func = target.split(":")
        tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
        assert any(isinstance(x, ast.FunctionDef) and x.name == func for x in tree.body), f"{module} has no {func}()"


def test_cmake_generates_every_interface_file_and_installs_launch_and_config():
    cmake = ROOT.joinpath("CMakeLists.txt").read_text()
    listed = set(re.findall(r'"((?:msg|srv|action)/\w+\.(?:msg|srv|action))"', cmake))
    on_disk = {str(p.relative_to(ROOT)) for d in ("msg", "srv", "action") for p in (ROOT / d).iterdir()}
    assert listed == on_disk
    assert "install(DIRECTORY launch config DESTINATION share/${PROJECT_NAME})" in cmake
    # the Python package is installed after rosidl_generate_interfaces (our __init__.py must win)
    assert cmake.index("rosidl_generate_interfaces(") < cmake.index("install(DIRECTORY lifelong_ros/")


def test_launch_files_start_only_installed_executables():
    cmake_nodes = set(_cmake_executables())
    for f in ("lifelong.launch.py", "sim_demo.launch.py"):
        tree = ast.parse((ROOT / "launch" / f).read_text())
        exes = {
            kw.value.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Call)
            for kw in n.keywords
            if kw.arg == "executable" and isinstance(kw.value, ast.Constant)
        }
        ours = exes - {"parameter_bridge"}
        assert ours and ours <= cmake_nodes, f"{f} starts {sorted(ours - cmake_nodes)}"
    four = {"policy_server", "experience_buffer", "learner", "safety_monitor"}
    tree = ast.parse((ROOT / "launch" / "lifelong.launch.py").read_text())
    names = {
        kw.value.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        for kw in n.keywords
        if kw.arg == "name" and isinstance(kw.value, ast.Constant)
    }
    assert four <= names


@pytest.mark.parametrize("node", NODE_NAMES)
def test_every_node_main_has_the_standard_shutdown_shape(node):
    src = (NODES_DIR / f"{node}.py").read_text()
    main = next(x for x in ast.parse(src).body if isinstance(x, ast.FunctionDef) and x.name == "main")
    text = ast.unparse(main)
    for needle in (
        "rclpy.init(args=args)",
        "c.sigterm_like_sigint()",
        "c.ignore_signals()",
        "c.spin(",
        "except (KeyboardInterrupt, ExternalShutdownException)",
        "node.destroy_node()",
        "rclpy.try_shutdown()",
    ):
        assert needle in text, f"{node}.main() lacks {needle!r}"
    assert "finally:" in text


def test_offline_learn_node_ignores_ros_arguments():
    from lifelong_ros.cli.offline import _strip_ros_args

    assert _strip_ros_args(["--bag", "b", "--ros-args", "-r", "a:=b", "--", "--task", "t"]) == [
        "--bag",
        "b",
        "--task",
        "t",
    ]
    assert _strip_ros_args(["--bag", "b", "--ros-args", "--log-level", "debug"]) == ["--bag", "b"]


def test_every_action_ends_with_its_result():
    """A newer Jazzy rclpy answers a client waiting for the result with what succeed/abort/canceled
    were given, before the execute callback returns: a bare call sends an empty result (a cancelled
    Gate goal once reached its client with no message); rclpy 7.1.3 takes no argument. Every
    terminal state goes through _common.end_goal with its result, which serves both."""
    direct, ends = [], []
    for path in sorted(NODES_DIR.glob("*.py")):
        tree = ast.parse(path.read_text())
        passed = set()  # the first arguments of end_goal calls, both branches of a conditional one
        for n in ast.walk(tree):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "end_goal" and n.args:
                first = n.args[0]
                passed |= {id(first)} | ({id(first.body), id(first.orelse)} if isinstance(first, ast.IfExp) else set())
        for n in ast.walk(tree):
            if isinstance(n, ast.Attribute) and n.attr in ("succeed", "abort", "canceled"):
                ends.append(n)
                if id(n) not in passed:
                    direct.append(f"{path.name}:{n.lineno} {n.attr}")
    assert direct == []
    assert len(ends) >= 6  # learner and safety monitor: the check looks at the real calls


@pytest.mark.skipif(not _ros_available(), reason="rclpy is not importable (source a colcon workspace to run this)")
def test_end_goal_hands_the_result_to_an_rclpy_that_takes_it_and_returns_it_for_one_that_does_not():
    from lifelong_ros.nodes._common import end_goal

    got = []

    class Newer:  # ServerGoalHandle.succeed(self, response) (later Jazzy rclpy)
        def succeed(self, response):
            got.append(("newer", response))

    class Older:  # ServerGoalHandle.succeed(self) (rclpy 7.1.3)
        def succeed(self):
            got.append(("older", None))

    assert end_goal(Newer().succeed, "r1") == "r1" and end_goal(Older().succeed, "r2") == "r2"
    assert got == [("newer", "r1"), ("older", None)]
