"""The report's table, summary, plot data and variant selection on a tiny evaluated run."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cifar_dvc.errors import DataError, ParamsError
from cifar_dvc.evaluation import report
from tests.evaluation_workspace import VARIANTS, reported_workspace

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, prepared_dir: Path) -> Path:
    return reported_workspace(tmp_path_factory, prepared_dir)


def test_summary_and_table_hold_each_variants_accuracies(workspace: Path) -> None:
    summary = json.loads((workspace / "plots" / "summary.json").read_text())
    assert set(summary) == set(VARIANTS)
    table = (workspace / "plots" / "report" / "table.md").read_text()
    columns = report.TABLE_SETS + report.ADAPTED_SETS  # evaluated with adapt_bn (the default)
    for name in VARIANTS:
        scores = json.loads((workspace / "metrics" / f"{name}.json").read_text())
        means = {"corruptions": scores["corruptions"]["accuracy"], "corruptions_adapted": None}
        assert summary[name] == {**{s: scores[s]["accuracy"] for s in columns}, **means}
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        assert cells == [f"{100 * scores[s]['accuracy']:.1f}" for s in report.TABLE_SETS] + ["n/a", "n/a"]
        means = next(line for line in table.splitlines()[table.splitlines().index(row) + 1:]
                     if line.startswith(f"| {name} |"))  # the corruption table's row
        assert [c.strip() for c in means.strip("|").split("|")][2:] == [
            f"{100 * scores['corruptions']['accuracy']:.1f}", "n/a", "n/a"]
    assert "Validation (n=20)" in table and "Test (n=100)" in table and "Custom (n=12)" in table
    assert "Custom, BN adapted (n=12)" in table and "100 test images (seed 0, no TTA)" in table


def test_corruptions_csv_repeats_each_variants_table(workspace: Path) -> None:
    rows = list(csv.DictReader((workspace / "plots" / "report" / "corruptions.csv").open()))
    for name in VARIANTS:
        own = list(csv.DictReader((workspace / "eval" / name / "corruptions.csv").open()))
        assert [{k: v for k, v in r.items() if k != "variant"} for r in rows if r["variant"] == name] == own


def test_curves_csv_repeats_the_dvclive_logs(workspace: Path) -> None:
    rows = list(csv.DictReader((workspace / "plots" / "report" / "curves.csv").open()))
    for name in VARIANTS:
        for split, folder in (("train", "train"), ("validation", "eval")):
            log = list(csv.DictReader((workspace / "dvclive" / name / "plots" / "metrics" / folder /
                                       "accuracy.tsv").open(), delimiter="\t"))
            ours = [r for r in rows if r["variant"] == name and r["split"] == split]
            assert [int(r["step"]) for r in ours] == [int(r["step"]) for r in log] == [0, 1]
            np.testing.assert_allclose([float(r["accuracy"]) for r in ours],
                                       [float(r["accuracy"]) for r in log], rtol=1e-5)


def test_blur_csv_lists_the_sweep(workspace: Path) -> None:
    rows = list(csv.DictReader((workspace / "plots" / "report" / "blur.csv").open()))
    for name in VARIANTS:
        scores = json.loads((workspace / "metrics" / f"{name}.json").read_text())["custom_sweep"]
        ours = {r["divisor"]: float(r["accuracy"]) for r in rows if r["variant"] == name}
        assert ours == pytest.approx({d: s["accuracy"] for d, s in scores.items()})


def test_variant_selection(workspace: Path, tmp_path: Path) -> None:
    assert report.select_variants(workspace / "eval", None) == sorted(VARIANTS)
    assert report.select_variants(workspace / "eval", ["mlp"]) == ["mlp"]
    with pytest.raises(ParamsError, match=r"report\.variants: 'imp2' has no results"):
        report.select_variants(workspace / "eval", ["imp2"])
    with pytest.raises(DataError, match="no evaluated variant"):
        report.select_variants(tmp_path, None)


def test_focus_is_the_best_validation_accuracy_unless_given() -> None:
    results = {name: {"sets": {"validation": {"accuracy": acc}}}
               for name, acc in (("a", 0.5), ("b", 0.7), ("c", 0.7))}
    assert report.choose_focus(results, None) == "b"
    assert report.choose_focus(results, "a") == "a"
    with pytest.raises(ParamsError, match=r"report\.focus"):
        report.choose_focus(results, "z")


def test_stage_refuses_an_unknown_variant_in_one_line(workspace: Path, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("report:\n  variants: [imp2]\n")
    out = tmp_path / "plots" / "report"
    cmd = [sys.executable, "-m", "stages.report", "--eval", str(workspace / "eval"),
           "--dvclive", str(workspace / "dvclive"), "--models", str(workspace / "models"),
           "--prepared", str(workspace / "data/prepared"), "--custom", str(workspace / "data/custom_sets"),
           "--summary", str(tmp_path / "summary.json"), "--out", str(out), "--params", str(params)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: report.variants: 'imp2' has no results in {workspace / 'eval'}/; "
        "evaluated variants: cnn, mlp"]
    assert not out.exists() and not (tmp_path / "summary.json").exists()
