"""The layer rules of docs/architecture.md, enforced: who may import whom, who never imports torch, no cycles.

Every import statement of the package counts, at module level or inside a function: a lazy
import is still a dependency. The rules are data (``ALLOWED``); the checker is tested on a
synthetic package so it is known to fail when a rule is broken.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "lifelong_ros"

# Layer -> the layers it may import (besides itself). Lower layers first; top-level modules are
# layers of their own, except the applications over the whole core (``APPS``).
ALLOWED: dict[str, set[str]] = {
    "paths": set(),
    "fsutil": set(),
    "config": {"paths"},
    "experience": {"paths", "fsutil"},
    "serving": {"paths", "fsutil"},
    "ros_io": {"experience", "paths", "fsutil"},
    "safety": {"serving", "experience", "paths", "fsutil", "config"},
    "sim": {"serving"},
    "learning": {"experience", "serving", "paths", "fsutil"},
    "params": {"config", "experience", "safety", "paths"},  # the parameter schema of every node
}
CORE = set(ALLOWED)
APPS = {
    "orchestration",
    "demo",
    "offline",
    "corrections",
    "pretrain",
}  # the loop over the core, used by both front ends
ALLOWED["app"] = CORE | {"app"}
ALLOWED["cli"] = CORE | {"app"}  # front end 1: the standalone command line
ALLOWED["nodes"] = CORE | {"app", "interfaces"}  # front end 2: the ROS nodes (and generated messages)
TORCH_FREE = {"paths", "fsutil", "config", "experience", "serving", "ros_io", "safety", "params"}
GENERATED = {"msg", "srv", "action"}  # rosidl output, present only in a colcon install


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    imported: str  # dotted module name (a submodule when one exists, else the package)
    line: int
    lazy: bool  # inside a function or method

    def __str__(self) -> str:
        where = "lazily " if self.lazy else ""
        return f"{self.importer}:{self.line} {where}imports {self.imported}"


def module_name(path: Path, package_dir: Path) -> str:
    rel = path.relative_to(package_dir.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "app"  # the package's own __init__
    head = parts[1]
    if head in GENERATED:
        return "interfaces"
    return "app" if head in APPS else head


def imports(package_dir: Path) -> list[Import]:
    """Every import statement in the package (absolute and relative), resolved to module names."""
    root = package_dir.name
    known = {module_name(p, package_dir) for p in package_dir.rglob("*.py")}
    found: list[Import] = []
    for path in sorted(package_dir.rglob("*.py")):
        me = module_name(path, package_dir)
        pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        lazy_lines = {
            n.lineno
            for f in ast.walk(tree)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f)
            if isinstance(n, (ast.Import, ast.ImportFrom))
        }
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for a in node.names:  # `from pkg import submodule` depends on the submodule
                    targets.append(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
            for t in targets:
                if t == root or t.startswith(root + ".") or t.split(".")[0] == "torch":
                    found.append(Import(me, t, node.lineno, node.lineno in lazy_lines))
    return found


def violations(package_dir: Path) -> list[str]:
    """Every import that breaks a layer rule, every torch import in a torch-free layer, every cycle."""
    out: list[str] = []
    edges = imports(package_dir)
    for imp in edges:
        src = layer(imp.importer)
        if imp.imported.split(".")[0] == "torch":
            if src in TORCH_FREE:
                out.append(f"{imp}: the {src} layer never imports torch")
            continue
        dst = layer(imp.imported)
        if dst != src and dst not in ALLOWED.get(src, set()):
            out.append(f"{imp}: the {src} layer may import only {sorted(ALLOWED.get(src, set()))}, not {dst}")
    graph: dict[str, set[str]] = {}
    for imp in edges:
        if imp.imported.split(".")[0] != "torch" and imp.imported != imp.importer:
            graph.setdefault(imp.importer, set()).add(imp.imported)
    out += [f"import cycle among {', '.join(c)}" for c in cycles(graph)]
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The modules of every strongly connected component larger than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# ------------------------------------------------------------------------------------ the package
def test_no_layer_imports_a_higher_one_and_no_cycles():
    problems = violations(PACKAGE_DIR)
    assert not problems, "\n".join(problems)


def test_the_allowed_layer_graph_is_itself_acyclic():
    graph = {k: {d for d in v if d != k} for k, v in ALLOWED.items()}
    assert cycles(graph) == []


def test_every_package_of_the_tree_is_a_known_layer():
    packages = {p.parent.name for p in PACKAGE_DIR.glob("*/__init__.py")}
    top = {p.stem for p in PACKAGE_DIR.glob("*.py")} - {"__init__"}
    assert packages <= set(ALLOWED), f"packages without a layer rule: {sorted(packages - set(ALLOWED))}"
    assert top <= set(ALLOWED) | APPS, f"top-level modules without a layer rule: {sorted(top - set(ALLOWED) - APPS)}"


def test_torch_free_layers_do_not_load_torch_at_run_time():
    """Not only no `import torch`: nothing they import (safetensors.torch, ...) may load it either."""
    mods = sorted(
        module_name(p, PACKAGE_DIR)
        for p in PACKAGE_DIR.rglob("*.py")
        if layer(module_name(p, PACKAGE_DIR)) in TORCH_FREE
    )
    code = "import sys\n" + "".join(f"import {m}\n" for m in mods) + "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False", f"importing {mods} loaded torch"


# ------------------------------------------------------------------------------------ the checker
def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "lifelong_ros"
    for rel, src in files.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in [path.parent, *path.parent.parents]:
            if parent == tmp_path:
                break
            (parent / "__init__.py").touch()
        path.write_text(textwrap.dedent(src))
    return pkg


def test_checker_reports_a_core_module_importing_a_front_end(tmp_path):
    pkg = _package(
        tmp_path,
        {
            "experience/store.py": "def f():\n    from lifelong_ros.cli.main import main\n",
            "cli/main.py": "from lifelong_ros.experience import store\n",
        },
    )
    problems = violations(pkg)
    assert len(problems) == 2, problems
    assert "lifelong_ros.experience.store:2 lazily imports lifelong_ros.cli.main" in problems[0]
    assert "experience layer may import only ['fsutil', 'paths'], not cli" in problems[0]
    assert problems[1] == "import cycle among lifelong_ros.cli.main, lifelong_ros.experience.store"


def test_checker_reports_torch_in_serving_and_a_cycle(tmp_path):
    pkg = _package(
        tmp_path,
        {
            "serving/runtime.py": "import torch\nfrom . import interface\n",
            "serving/interface.py": "from lifelong_ros.serving.runtime import x\n",
            "learning/model.py": "import torch\n",
        },
    )
    problems = violations(pkg)
    assert any("serving.runtime:1 imports torch: the serving layer never imports torch" in p for p in problems)
    assert not any("learning" in p for p in problems)
    assert "import cycle among lifelong_ros.serving.interface, lifelong_ros.serving.runtime" in problems


@pytest.mark.parametrize(
    "src, dst, ok",
    [
        ("nodes", "interfaces", True),
        ("cli", "interfaces", False),
        ("cli", "nodes", False),
        ("nodes", "cli", False),
        ("learning", "safety", False),
        ("safety", "serving", True),
    ],
)
def test_rules_front_ends_and_generated_interfaces(src, dst, ok):
    assert (dst in ALLOWED[src]) is ok
