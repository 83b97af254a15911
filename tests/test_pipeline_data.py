"""The data half of the pipeline run by the real dvc in a temporary git repository (cifar_dvc.demo):
``dvc repro prepare`` runs fetch, ingest and prepare; a second run runs nothing; changing
``prepare.normalize`` re-runs only ``prepare``; a failing stage leaves no output."""

from __future__ import annotations

import re

import pytest
import yaml

from cifar_dvc import artifacts
from cifar_dvc.demo import copy_project, run_dvc
from cifar_dvc.normalization import load_stats

pytestmark = pytest.mark.slow

TINY = {"data": {"dataset": "synthetic",
                 "synthetic": {"num_classes": 4, "train_per_class": 10, "test_per_class": 5}}}


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def set_param(repo, section: str, key: str, value) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def test_repro_runs_the_data_stages_once_and_only_what_changed(tmp_path):
    repo = copy_project(tmp_path / "repo", TINY)

    first = run_dvc(repo, "repro", "prepare")
    assert ran(first.stdout) == ["fetch", "ingest", "prepare"]
    prepared = repo / "data" / "prepared"
    assert len(artifacts.load_split(prepared / "train.npz")) == 36  # 40 minus 10% validation
    assert artifacts.load_meta(prepared).dataset == "synthetic"
    assert load_stats(prepared / "normalization.json").method == "scale"

    second = run_dvc(repo, "repro", "prepare")
    assert ran(second.stdout) == []
    assert "up to date" in second.stdout

    set_param(repo, "prepare", "normalize", "standardize")
    status = run_dvc(repo, "status", "prepare").stdout
    assert "prepare.normalize" in status and "fetch:" not in status and "ingest:" not in status
    third = run_dvc(repo, "repro", "prepare")
    assert ran(third.stdout) == ["prepare"]
    assert load_stats(prepared / "normalization.json").method == "standardize"

    # A failing stage: one error line, and no output left (dvc removed the old one before running it).
    set_param(repo, "prepare", "validation", 0.01)
    failed = run_dvc(repo, "repro", "prepare", check=False)
    assert failed.returncode != 0 and ran(failed.stdout) == ["prepare"]
    errors = [line.strip() for line in (failed.stdout + failed.stderr).splitlines()
              if line.strip().startswith("error:")]
    assert errors == ["error: prepare.validation: 0.01 of 40 training images leaves an empty training "
                      "or validation split"]
    assert (repo / "data" / "interim" / "train.npz").is_file()
    assert not prepared.exists()
