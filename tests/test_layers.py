"""The layering contract of DESIGN.md, read from the source (AST), so that it holds for imports inside
functions too, not only for what one import happens to pull in.

core ← training (`edge_digr`) and export;  core ← runtime ← calibration;  nothing imports back up, and the
Jetson side (core, runtime, calibration) never imports torch, not even lazily.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder -> package, as setup.py's package_dir maps them
PACKAGES = {"edge_digr": "edge_digr", "export": "edge_digr.export", "runtime": "edge_digr.runtime",
            "calibration": "edge_digr.calibration"}
CORE, RUNTIME, CALIBRATION = "edge_digr.core", "edge_digr.runtime", "edge_digr.calibration"
# layer -> the edge_digr layers it may import (a layer may always import itself)
ALLOWED = {CORE: (CORE,), RUNTIME: (CORE,), CALIBRATION: (CORE, RUNTIME)}
TORCH_FREE = (CORE, RUNTIME, CALIBRATION)


def modules() -> Dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def imports(module: str, path: Path) -> Iterator[Tuple[int, str]]:
    """(line, imported module) of every import statement in the file, at any depth."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            yield node.lineno, base
            if base == "edge_digr" or base in PACKAGES.values():  # `from edge_digr import tasks` is a module
                for alias in node.names:
                    yield node.lineno, f"{base}.{alias.name}"


def layer(module: str) -> str:
    for name in (CORE, RUNTIME, CALIBRATION, "edge_digr.export"):
        if module == name or module.startswith(name + "."):
            return name
    return "edge_digr" if module.split(".")[0] == "edge_digr" else ""


def violations(rule) -> List[str]:
    found = []
    for module, path in modules().items():
        for line, target in imports(module, path):
            problem = rule(module, target)
            if problem:
                found.append(f"{path.relative_to(ROOT)}:{line}: {problem}")
    return found


def test_the_packages_are_found():
    names = modules()
    assert {CORE, RUNTIME, CALIBRATION, "edge_digr.export", "edge_digr.core.tasks"} <= set(names)


@pytest.mark.parametrize("lower", sorted(ALLOWED))
def test_lower_layers_never_import_upwards(lower):
    def rule(module: str, target: str) -> str:
        if layer(module) != lower or target == "edge_digr" or not layer(target):
            return ""  # `edge_digr` alone is the package's lazy __init__ (version, load_policy)
        if layer(target) in (lower, *ALLOWED[lower]):
            return ""
        return f"{module} ({lower}) imports {target}"

    assert violations(rule) == []


def test_the_jetson_side_never_imports_torch():
    def rule(module: str, target: str) -> str:
        if layer(module) in TORCH_FREE and target.split(".")[0] == "torch":
            return f"{module} imports {target}"
        return ""

    assert violations(rule) == []


def test_setup_installs_every_package():
    setup = (ROOT / "setup.py").read_text()
    for module, path in modules().items():
        if path.name == "__init__.py":
            assert f'"{module}"' in setup, f"setup.py does not install {module}"
