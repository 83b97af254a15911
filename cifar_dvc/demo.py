"""The offline demo: the whole pipeline on synthetic data, in a throw-away copy of the project.

``copy_project`` copies the project's working files (what git tracks or would track: code and
config, never data, models or the venv) into a new directory, deep-merges params overrides into
its ``params.yaml`` and commits everything to a fresh git repository, so that ``dvc repro`` and
``dvc exp`` work there without touching the user's workspace. The pipeline tests use it too.

    python -m cifar_dvc.demo demo-run           # (make demo) copy + params-demo.yaml + dvc repro
    python -m cifar_dvc.demo demo-run prepare   # only up to the given stage(s)

Reads the project's files and ``params-demo.yaml``. Writes only into the directory it is given.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from cifar_dvc.errors import UserError, stage_main

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_PARAMS = "params-demo.yaml"
MARKER = ".cifar-dvc-demo"  # marks a directory made by copy_project, so a re-run may update it


class CommandError(subprocess.CalledProcessError):
    """A failed command whose message includes the end of its output (readable in test failures)."""

    def __str__(self) -> str:
        tail = "\n".join(f"{s or ''}".strip()[-4000:] for s in (self.stdout, self.stderr) if s)
        return f"{super().__str__()}\n{tail}"


def project_files(root: Path = PROJECT_ROOT) -> list[str]:
    """Paths (relative to ``root``) of the files git tracks or would track, that exist on disk."""
    out = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], root)
    names = sorted({n for n in out.stdout.split("\0") if n})
    return [n for n in names if (root / n).is_file() and not n.startswith(".cifar-dvc")]


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in recursively (mappings merge, anything else replaces)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def copy_project(dest: Path, overrides: dict[str, Any] | None = None, root: Path = PROJECT_ROOT) -> Path:
    """Copy the project into ``dest`` as a fresh, committed git repository; returns ``dest``.

    ``overrides`` is deep-merged into the copy's ``params.yaml``. ``dest`` must be absent, empty, or
    an earlier copy (then its files are refreshed and committed, and its DVC outputs kept).
    """
    dest = Path(dest).resolve()
    if dest == root or (root in dest.parents and not _is_ignored(dest, root)):
        raise UserError(f"{dest}: the copy must not be a tracked part of the project itself")
    fresh = not dest.exists() or not any(dest.iterdir())
    if not fresh and not (dest / MARKER).is_file():
        raise UserError(f"{dest}: exists and is not an earlier demo copy; choose an empty or new directory")
    dest.mkdir(parents=True, exist_ok=True)
    for name in project_files(root):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    params_path = dest / "params.yaml"
    if overrides:
        params = yaml.safe_load(params_path.read_text()) or {}
        params_path.write_text(yaml.safe_dump(deep_merge(params, overrides), sort_keys=False))
    (dest / MARKER).write_text("made by cifar_dvc.demo.copy_project; safe to delete\n")
    if fresh:
        _run(["git", "init", "-q", "-b", "main"], dest)
        _run(["git", "config", "user.name", "cifar-dvc demo"], dest)
        _run(["git", "config", "user.email", "demo@cifar-dvc.invalid"], dest)
    _run(["git", "add", "-A"], dest)
    if _run(["git", "status", "--porcelain"], dest).stdout.strip():
        _run(["git", "-c", "commit.gpgsign=false", "commit", "-q", "-m", "cifar-dvc project copy"], dest)
    return dest


def dvc_env() -> dict[str, str]:
    """The environment for running this interpreter's dvc (its bin directory first on PATH)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``dvc *args`` in ``repo`` with the venv's dvc, capturing its output as text."""
    dvc = Path(sys.executable).parent / "dvc"
    cmd = [str(dvc) if dvc.exists() else "dvc", *args]
    result = subprocess.run(cmd, cwd=repo, env=dvc_env(), capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise CommandError(result.returncode, cmd, result.stdout, result.stderr)
    return result


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CommandError(result.returncode, cmd, result.stdout, result.stderr)
    return result


def _is_ignored(path: Path, root: Path) -> bool:
    """Whether git ignores ``path`` inside ``root`` (the default ``demo-run/`` is ignored)."""
    # The trailing slash lets a directory pattern such as ``/demo-run/`` match a path not yet made.
    probe = subprocess.run(["git", "check-ignore", "-q", f"{path}/"], cwd=root, check=False)
    return probe.returncode == 0


def load_demo_params(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The overrides in ``params-demo.yaml`` (empty if the file is absent)."""
    path = root / DEMO_PARAMS
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of params overrides")
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cifar_dvc.demo", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="where to put the copy (e.g. demo-run)")
    parser.add_argument("targets", nargs="*", help="stages to reproduce (default: the whole pipeline)")
    args = parser.parse_args(argv)
    repo = copy_project(args.dir, load_demo_params())
    print(f"demo: project copied to {repo} with {DEMO_PARAMS} applied; running dvc repro", flush=True)
    dvc = Path(sys.executable).parent / "dvc"
    result = subprocess.run([str(dvc) if dvc.exists() else "dvc", "repro", *args.targets], cwd=repo,
                            env=dvc_env(), check=False)
    if result.returncode != 0:
        raise UserError(f"demo: dvc repro failed in {repo} (exit {result.returncode}); see the output above")
    summary = repo / "plots" / "report" / "summary.json"  # the report's Table 2 across variants
    print(f"demo: done. Results in {repo}:")
    if summary.is_file():
        print(f"  {summary}\n{summary.read_text()}")
    for sub in ("data/prepared", "metrics", "plots", "models"):
        if (repo / sub).is_dir() and any((repo / sub).iterdir()):
            print(f"  {repo / sub}/")
    print(f"  inspect with: cd {repo} && dvc metrics show && dvc plots show")


if __name__ == "__main__":
    stage_main(main)
