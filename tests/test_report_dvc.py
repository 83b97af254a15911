"""In a temporary git repository: `dvc metrics diff` between branches shows only the changed variant.

The project is copied with ``cifar_dvc.demo.copy_project``; the tiny evaluated workspace provides
the models and data (no training pipeline runs). Only the real ``evaluate@<name>`` stages of the
project's ``dvc.yaml`` run (``dvc repro --single-item``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cifar_dvc import evalsets
from cifar_dvc.demo import copy_project, run_dvc
from tests.evaluation_workspace import VARIANTS, evaluated_workspace

pytestmark = pytest.mark.slow
STAGES = [f"evaluate@{name}" for name in VARIANTS]


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", "-c", "commit.gpgsign=false", *args], cwd=repo, capture_output=True,
                            text=True, check=True)
    return result.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, prepared_dir: Path) -> Path:
    workspace = evaluated_workspace(tmp_path_factory, prepared_dir)
    repo = copy_project(tmp_path_factory.mktemp("repo") / "project")
    for name in ("data/prepared", "data/custom_sets", "models"):
        shutil.copytree(workspace / name, repo / name)
    return repo


def test_metrics_diff_shows_only_the_variant_whose_param_changed(repo: Path) -> None:
    first = run_dvc(repo, "repro", "--single-item", *STAGES)
    assert all(f"Running stage '{stage}'" in first.stdout for stage in STAGES)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "evaluate both variants")
    assert json.loads(run_dvc(repo, "metrics", "diff", "--json").stdout) == {}

    _git(repo, "checkout", "-q", "-b", "mlp-tta")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["variants"]["mlp"]["tta"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    second = run_dvc(repo, "repro", "--single-item", *STAGES)
    assert "Running stage 'evaluate@mlp'" in second.stdout
    assert "Running stage 'evaluate@cnn'" not in second.stdout
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "flip TTA for mlp")

    diff = json.loads(run_dvc(repo, "metrics", "diff", "main", "--json").stdout)
    assert set(diff) == {"metrics/mlp.json"}
    changed = diff["metrics/mlp.json"]
    assert "test_loss" in changed and changed["test_loss"]["old"] != changed["test_loss"]["new"]
    # flat short keys (evalsets.metric_key), no nested "set.accuracy" columns
    keys = {*evalsets.accuracy_keys(),
            *(evalsets.metric_key(spec.name, k) for spec in evalsets.SETS for k in spec.metrics)}
    assert set(changed) <= keys
    shown = run_dvc(repo, "metrics", "show", "--json").stdout
    assert "metrics/cnn.json" in shown and "metrics/mlp.json" in shown
