"""dvc.yaml's deps cover the code each stage runs: change a module, and its stages re-run.

For every stage (a ``foreach`` stage through its ``do:`` template) the module of its ``cmd``
(``python -m stages.<verb>``) is parsed, and every project module it imports, at the top or
inside a function, transitively, must lie under one of the stage's ``deps`` (the file itself or
a folder holding it). Parsed, not imported: lazy imports count too, and nothing runs.

A module named in an import counts (``from cifar_dvc import models`` is
``cifar_dvc/models/__init__.py``); the parent packages Python runs on the way hold only
docstrings, so they are not asked for.
"""

from __future__ import annotations

import ast
import re
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


def _imports(path: Path) -> set[Path]:
    """Project modules imported anywhere in ``path``."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from pkg import x``: x is a module of pkg, or a name defined in pkg itself.
            names = [f"{node.module}.{alias.name}" if _module_file(f"{node.module}.{alias.name}")
                     else node.module for alias in node.names]
        found.update(f for f in map(_module_file, names) if f is not None)
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
