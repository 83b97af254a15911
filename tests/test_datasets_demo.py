"""The offline demo and its building block copy_project (cifar_dvc.demo): a committed copy of the
project's code and config only, params overrides merged, a re-run that updates the copy in place."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from cifar_dvc import artifacts
from cifar_dvc.demo import PROJECT_ROOT, copy_project, deep_merge, main, project_files
from cifar_dvc.errors import UserError


def test_deep_merge():
    base = {"a": 1, "data": {"dataset": "cifar10", "synthetic": {"noise": 24.0, "image_size": 32}}}
    merged = deep_merge(base, {"data": {"dataset": "synthetic", "synthetic": {"noise": 0}}, "new": [1]})
    assert merged == {"a": 1, "data": {"dataset": "synthetic", "synthetic": {"noise": 0, "image_size": 32}},
                      "new": [1]}
    assert base["data"]["dataset"] == "cifar10", "the input must not change"


def test_copy_project_copies_code_and_config_only(tmp_path):
    repo = copy_project(tmp_path / "repo", {"prepare": {"normalize": "standardize"}, "extra": {"k": 1}})
    files = set(project_files(PROJECT_ROOT))
    assert {"dvc.yaml", "params.yaml", "stages/fetch.py", "cifar_dvc/demo.py", ".dvc/config"} <= files
    assert not any(f.startswith((".venv/", "data/raw/", "models/", ".git/")) for f in files)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["prepare"]["normalize"] == "standardize" and params["extra"] == {"k": 1}
    original = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    assert params["data"]["dataset"] == original["data"]["dataset"]
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True,
                            check=True)
    assert status.stdout == "", "everything must be committed"
    for name in ("cifar_dvc/demo.py", "stages/fetch.py"):
        assert (repo / name).read_bytes() == (PROJECT_ROOT / name).read_bytes()


def test_copy_project_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(UserError, match="not an earlier demo copy"):
        copy_project(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"
    with pytest.raises(UserError, match="must not be a tracked part of the project"):
        copy_project(PROJECT_ROOT / "stages" / "copy")


@pytest.mark.slow
def test_demo_runs_offline_and_a_rerun_reuses_the_results(tmp_path, capsys):
    target = tmp_path / "demo-run"
    main([str(target), "prepare"])
    out = capsys.readouterr().out
    assert f"Results in {target}" in out and "data/prepared" in out
    meta = artifacts.load_meta(target / "data" / "prepared")
    demo = yaml.safe_load((PROJECT_ROOT / "params-demo.yaml").read_text())
    assert meta.dataset == "synthetic" == demo["data"]["dataset"]
    before = (target / "data" / "prepared" / "train.npz").stat().st_mtime_ns
    main([str(target), "prepare"])  # the second run refreshes the copy and reproduces nothing
    assert (target / "data" / "prepared" / "train.npz").stat().st_mtime_ns == before
