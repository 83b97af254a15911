"""dvc.yaml's deps cover the code each stage runs: change a module, and its stages re-run.

For every stage (a ``foreach`` stage through its ``do:`` template) the module of its ``cmd``
(``python -m stages.<verb>``) is parsed, and every project module it imports, at the top or
inside a function, transitively, must lie under one of the stage's ``deps`` (the file itself or
a folder holding it). Parsed, not imported: lazy imports count too, and nothing runs.

The same scan checks that nothing of PyTorch (airbench's stack, kept in its own venv) is imported
by the package, the stages or the tests.

A module named in an import counts (``from cifar_dvc import models`` is
``cifar_dvc/models/__init__.py``); the parent packages Python runs on the way hold only
docstrings, so they are not asked for.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cifar_dvc", "stages")


def _module_file(name: str) -> Path | None:
    """The file of project module ``name`` (``a.b`` -> a/b.py or a/b/__init__.py), None if not ours."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _import_statements(path: Path) -> Iterator[tuple[str, list[str]]]:
    """Every absolute import anywhere in ``path``, as (module, names): ``import a.b`` is
    ("a.b", []), ``from a import b, c`` is ("a", ["b", "c"])."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from ((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [alias.name for alias in node.names]


def _imports(path: Path) -> set[Path]:
    """Project modules imported anywhere in ``path``."""
    found: set[Path] = set()
    for module, names in _import_statements(path):
        # ``from pkg import x``: x is a module of pkg, or a name defined in pkg itself.
        named = [f"{module}.{name}" if _module_file(f"{module}.{name}") else module for name in names]
        found.update(f for f in map(_module_file, named or [module]) if f is not None)
    return found


def closure(module: str) -> set[Path]:
    """``module``'s file and every project module it reaches by imports."""
    start = _module_file(module)
    assert start is not None, f"no such project module: {module}"
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(_imports(path) - seen)
    return seen


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: spec.get("do", spec) for name, spec in stages.items()}


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == dep or rel.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_stage_deps_cover_every_module_it_imports(stage: str) -> None:
    spec = _stages()[stage]
    match = re.search(r"python -m ([\w.]+)", spec["cmd"])
    assert match, f"{stage}: cmd does not run a module with python -m"
    deps = [d if isinstance(d, str) else next(iter(d)) for d in spec.get("deps", [])]
    missing = sorted(p.relative_to(ROOT).as_posix() for p in closure(match.group(1)) if not _covered(p, deps))
    assert not missing, f"dvc.yaml stage {stage}: deps miss modules it imports: {', '.join(missing)}"


def test_the_import_scan_sees_lazy_imports_and_submodules() -> None:
    """The scan itself: a lazy import inside a function and ``from pkg import module`` both count."""
    found = {p.relative_to(ROOT).as_posix() for p in closure("stages.train")}
    assert "cifar_dvc/training/loop.py" in found  # imported inside main()
    assert "cifar_dvc/models/__init__.py" in found  # from cifar_dvc import models
    assert "cifar_dvc/training/precision.py" in found  # transitively, through loop


PYTORCH = {"torch", "torchvision", "airbench"}  # the peer's stack: its own venv, never the project's


def test_nothing_of_pytorch_is_imported_by_the_project_or_its_tests():
    """airbench runs beside the project (benchmarks/peer_airbench.py, .venv-peer), never inside it:
    no import statement in the package, the stages or the tests names PyTorch, no dependency in
    pyproject.toml does, and importing every module of the package and the stages loads none of it."""
    files = [*ROOT.glob("cifar_dvc/**/*.py"), *ROOT.glob("stages/*.py"), *ROOT.glob("tests/*.py")]
    named = {module.split(".")[0]: path.relative_to(ROOT) for path in files
             for module, _ in _import_statements(path)}
    assert {"numpy", "keras", "cifar_dvc"} <= set(named)  # the scan sees the imports there are
    assert not PYTORCH & set(named), {n: str(named[n]) for n in PYTORCH & set(named)}
    names_pytorch = re.compile(r'"(?:{})\b'.format("|".join(PYTORCH)), re.IGNORECASE)  # "torch>=2", ...
    assert not names_pytorch.findall((ROOT / "pyproject.toml").read_text())
    code = ("import importlib, pkgutil, sys, cifar_dvc, stages\n"
            "for package in (cifar_dvc, stages):\n"
            "    for m in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
            "        importlib.import_module(m.name)\n"
            f"print(sorted(set({sorted(PYTORCH)!r}) & {{name.split('.')[0] for name in sys.modules}}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
