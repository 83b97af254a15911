"""dvc.yaml's `train` foreach stage: one stage per variant, each depending only on its own params.

Runs the real dvc in a temporary git repository (``cifar_dvc.demo.copy_project``). Training every
variant would take minutes, so the test records the stages as up to date with ``dvc commit`` over
placeholder outputs, then checks what ``dvc status`` says after a params change.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cifar_dvc.demo import copy_project, run_dvc

pytestmark = pytest.mark.slow


def _changed_train_stages(repo: Path) -> set[str]:
    status = json.loads(run_dvc(repo, "status", "--json").stdout or "{}")
    return {stage for stage in status if stage.startswith("train@")}


def test_changing_one_variant_marks_only_its_train_stage(tmp_path: Path) -> None:
    repo = copy_project(tmp_path / "repo")
    names = list(yaml.safe_load((repo / "params.yaml").read_text())["variants"])
    stages = {line.split()[0] for line in run_dvc(repo, "stage", "list").stdout.splitlines()}
    assert {f"train@{name}" for name in names} <= stages

    (repo / "data" / "prepared").mkdir(parents=True)
    (repo / "data" / "prepared" / "meta.json").write_text("{}")
    for name in names:
        (repo / "models").mkdir(exist_ok=True)
        (repo / "models" / f"{name}.keras").write_text(name)
        (repo / "models" / f"{name}.json").write_text("{}")
        (repo / "dvclive" / name).mkdir(parents=True)
        (repo / "dvclive" / name / "metrics.json").write_text("{}")
    run_dvc(repo, "commit", "--force", "train")  # the whole foreach group, as if trained
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert lock["train@imp2"]["params"]["params.yaml"]["variants.imp2"]["epochs"] == 240
    assert set(lock["train@imp2"]["params"]["params.yaml"]) == {
        "seed", "train.max_epochs", "train.steps_per_execution", "train.verbose", "train.jit_compile",
        "train.precision",
        "variants.imp2"}
    assert _changed_train_stages(repo) == set()

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["variants"]["imp2"]["epochs"] += 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _changed_train_stages(repo) == {"train@imp2"}

    params["train"]["max_epochs"] = 1  # a shared key: every variant retrains
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _changed_train_stages(repo) == {f"train@{name}" for name in names}
