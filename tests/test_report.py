"""The report's table (seed 004's setup beside ours, the blur trick's finding), summary, plot data,
variant selection, and its registries of outputs (each figure writes its files, dvc.yaml declares
them) on a tiny evaluated run."""

from __future__ import annotations

import csv
import dataclasses
import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cifar_dvc import config, evalsets
from cifar_dvc.errors import DataError, ParamsError
from cifar_dvc.evaluation import report
from cifar_dvc.evaluation.params import ReportParams
from tests.evaluation_workspace import FIGURES, VARIANTS, report_paths, reported_workspace

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, prepared_dir: Path) -> Path:
    return reported_workspace(tmp_path_factory, prepared_dir)


def test_summary_and_table_hold_each_variants_accuracies(workspace: Path) -> None:
    summary = json.loads((workspace / "plots" / "report" / report.SUMMARY).read_text())
    assert set(summary) == set(VARIANTS)
    table = (workspace / "plots" / "report" / "table.md").read_text()
    # seed 004's setup (nearest) beside ours, then the adapted columns (adapt_bn is the default)
    plain = ["validation", "test", "custom_nearest", "custom_nearest_filtered", "custom", "custom_filtered"]
    columns = [*plain, "custom_adapted", "custom_filtered_adapted"]
    for name in VARIANTS:
        # the summary names the sets as the report does; metrics/<variant>.json holds the same
        # numbers under its short keys
        scores = json.loads((workspace / "metrics" / f"{name}.json").read_text())
        means = {"corruptions": scores["corrupt"], "corruptions_adapted": None}
        assert summary[name] == {**{s: scores[evalsets.metric_key(s)] for s in columns}, **means}
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        assert cells == [f"{100 * scores[evalsets.metric_key(s)]:.1f}" for s in plain] + ["n/a", "n/a"]
        means = next(line for line in table.splitlines()[table.splitlines().index(row) + 1:]
                     if line.startswith(f"| {name} |"))  # the corruption table's row
        assert [c.strip() for c in means.strip("|").split("|")][2:] == [
            f"{100 * scores['corrupt']:.1f}", "n/a", "n/a"]
    assert "Validation (n=20)" in table and "Test (n=100)" in table and "Custom (n=12)" in table
    assert "Custom, nearest (n=12)" in table and "Custom (filtered), nearest (n=12)" in table
    assert "Custom, BN adapted (n=12)" in table and "100 test images (seed 0, no TTA)" in table
    assert "resized with lanczos" in table and "resized with nearest as seed 004 did" in table


def test_the_blur_finding_is_computed_from_the_accuracies(workspace: Path) -> None:
    table = (workspace / "plots" / "report" / "table.md").read_text()
    results = {name: report.load_results(workspace / "eval", name) for name in VARIANTS}
    acc = {s: 100 * np.mean([results[v]["sets"][s]["accuracy"] for v in VARIANTS])
           for s in ("custom_nearest", "custom_nearest_filtered", "custom", "custom_filtered")}
    finding = report.blur_finding(results, report.custom_resamples(workspace / "data" / "custom_sets"))
    assert finding in table and "mean over 2 variant(s)" in finding
    assert (f"from {acc['custom_nearest']:.1f}% to {acc['custom_nearest_filtered']:.1f}% "
            f"({acc['custom_nearest_filtered'] - acc['custom_nearest']:+.1f} points)") in finding
    assert f"with lanczos from {acc['custom']:.1f}% to {acc['custom_filtered']:.1f}%" in finding


def _four(nearest: float, nearest_filtered: float, main: float, main_filtered: float) -> dict:
    accuracies = dict(zip(("custom_nearest", "custom_nearest_filtered", "custom", "custom_filtered"),
                          (nearest, nearest_filtered, main, main_filtered), strict=True))
    return {"sets": {name: {"accuracy": a, "n": 200} for name, a in accuracies.items()}}


def test_the_blur_finding_follows_the_numbers() -> None:
    labels = {evalsets.MAIN: "lanczos", evalsets.NEAREST: "nearest"}
    # issue 18's measurement on 200 photos: the filter repairs aliasing, Lanczos alone beats it
    seed_like = report.blur_finding({"cnn": _four(0.445, 0.49, 0.535, 0.54)}, labels)
    assert "from 44.5% to 49.0% (+4.5 points)" in seed_like
    assert "from 53.5% to 54.0% (+0.5 points)" in seed_like
    assert "4.0 points more after the aliasing resize" in seed_like
    assert ("lanczos resize alone (53.5%) does at least as well as the seed's filtered photos (49.0%)"
            in seed_like)
    # the other way round: the filter helps both resizes alike, and the seed's setup wins
    other = report.blur_finding({"cnn": _four(0.40, 0.60, 0.50, 0.70)}, labels)
    assert "gains no more after the aliasing resize than after lanczos" in other
    assert "The seed's filtered photos (60.0%) beat the lanczos resize alone (50.0%)" in other
    # a variant without photos (null) is left out of the mean; nothing left: no finding
    assert "mean over 1 variant(s)" in report.blur_finding(
        {"a": _four(0.4, 0.6, 0.5, 0.7), "b": _four(None, None, None, None)}, labels)
    assert report.blur_finding({"b": _four(None, None, None, None)}, labels) == ""


def test_without_the_nearest_sets_the_table_has_the_main_columns_only() -> None:
    results = {"cnn": {"adaptation": None, "sets": {
        name: {"accuracy": 0.5, "n": 10} for name in ("validation", "test", "custom", "custom_filtered")}}}
    assert report.table_sets(results) == ("validation", "test", "custom", "custom_filtered")
    text = report.markdown_table(results)
    assert "nearest" not in text and "blur trick" not in text


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


def test_blur_csv_lists_the_sweep_of_both_resizes(workspace: Path) -> None:
    rows = list(csv.DictReader((workspace / "plots" / "report" / "blur.csv").open()))
    labels = {evalsets.MAIN: "lanczos", evalsets.NEAREST: "nearest"}  # from the custom sets' report.json
    for name in VARIANTS:
        sets = json.loads((workspace / "eval" / name / "results.json").read_text())["sets"]
        expected = {(labels[resize], f"{d:g}"): (sets[s]["accuracy"], sets[s]["n"])
                    for s in sets if (parsed := evalsets.parse_sweep(s)) for resize, d in [parsed]}
        assert len(expected) == 4
        ours = {(r["resize"], r["divisor"]): (float(r["accuracy"]), int(r["n"])) for r in rows
                if r["variant"] == name}
        assert set(ours) == set(expected)
        for key, (accuracy, n) in expected.items():
            assert ours[key][0] == pytest.approx(accuracy, abs=1e-6) and ours[key][1] == n


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
           "--out", str(out), "--params", str(params)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: report.variants: 'imp2' has no results in {workspace / 'eval'}/; "
        "evaluated variants: cnn, mlp"]
    assert not out.exists()


# --- the registries: what the report writes, declared once ------------------------------------

def _quick_params() -> ReportParams:
    """Default params with few gradient-ascent steps (the figures are drawn, just quickly)."""
    return ReportParams(filters=dataclasses.replace(ReportParams().filters, steps=2),
                        class_ideal=dataclasses.replace(ReportParams().class_ideal, steps=2))


def test_every_registry_figure_writes_its_declared_files(workspace: Path, tmp_path: Path) -> None:
    paths = report_paths(workspace, out=tmp_path / "report")
    results = {name: report.load_results(paths.eval_dir, name) for name in VARIANTS}
    curves = {name: report.load_curves(paths.dvclive_dir, name) for name in VARIANTS}
    inputs = report.Inputs(paths, _quick_params(), results, curves, focus="cnn")
    assert len({figure.file for figure in report.FIGURES}) == len(report.FIGURES)
    for figure in report.FIGURES:
        # what an entry says it reads is what its function takes (by keyword), and Inputs has it
        taken = list(inspect.signature(figure.draw).parameters)[1:]
        assert set(taken) == set(figure.needs) | ({"variant"} if figure.per_variant else set()), figure.name
        assert all(hasattr(inputs, need) for need in figure.needs), figure.name
        folder = tmp_path / figure.name.replace(" ", "_")
        written = report.draw_figures(folder, inputs, only=(figure,))
        declared = sorted(figure.files(inputs.variants))
        assert sorted(p.name for p in written) == sorted(p.name for p in folder.iterdir()) == declared
        for path in written:
            assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), path
    # the per-variant entry expands to one file a variant; the shared test constant agrees
    assert {f for figure in report.FIGURES for f in figure.files(list(VARIANTS))} == FIGURES


def test_the_report_writes_exactly_what_the_registries_declare(workspace: Path) -> None:
    out = workspace / "plots" / "report"
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    declared = set(report.DATA_FILES) | {f"{report.FIGURE_DIR}/{f}" for figure in report.FIGURES
                                         for f in figure.files(sorted(VARIANTS))}
    assert written == declared


def _plotted_files(entry: object) -> list[str]:
    """The files one top-level ``plots:`` entry of dvc.yaml reads (a path, or x/y of a definition)."""
    if isinstance(entry, str):
        return [entry]
    files = []
    for definition in dict(entry).values():  # type: ignore[call-overload]
        for axis in ("x", "y"):
            if isinstance(definition.get(axis), dict):
                files += list(definition[axis])
    return files


def test_dvc_yaml_declares_the_registries_outputs(workspace: Path) -> None:
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stage = dvc["stages"]["report"]
    args = stage["cmd"].split()
    out_dir = args[args.index("--out") + 1]
    outs = [next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"]]
    # the summary is in the report's folder, not a DVC metric: its variant x set columns would make
    # `dvc metrics show` unreadable (the numbers are in metrics/<variant>.json already)
    assert "metrics" not in stage and report.SUMMARY in report.DATA_FILES
    files = [f"{out_dir}/{name}" for name in report.DATA_FILES]
    files += [f"{out_dir}/{report.FIGURE_DIR}/{f}" for figure in report.FIGURES for f in figure.files(["v"])]
    produced = {out_dir, f"{out_dir}/{report.FIGURE_DIR}", *files}
    for path in files:  # everything the report writes is a declared output of the stage
        assert any(path == o or path.startswith(f"{o}/") for o in outs), path
    for declared in outs:  # and every declared output is something the report writes
        assert declared in produced, declared
    # dvc.yaml's plots of the report's folder name its files, and the columns they plot exist
    plotted = [f for entry in dvc["plots"] for f in _plotted_files(entry) if f.startswith(f"{out_dir}/")]
    assert plotted, "no plot of the report in dvc.yaml"
    for path in plotted:
        assert path in produced and path != out_dir, path
    header = {name: (workspace / "plots" / "report" / name).read_text().splitlines()[0].split(",")
              for name in report.DATA_FILES if name.endswith(".csv")}
    for entry in dvc["plots"]:
        for definition in ([] if isinstance(entry, str) else entry.values()):
            for path, column in (definition.get("y") or {}).items():
                assert column in header[Path(path).name] and definition["x"] in header[Path(path).name]


MISCLASSIFIED = "misclassified.max_images and misclassified.columns must be >= 1"


@pytest.mark.parametrize(("section", "message"), [
    # 0 columns divided the grid's rows by zero; 0 images or layers drew an empty figure
    # titled as if the model had nothing to show.
    ({"misclassified": {"columns": 0}}, MISCLASSIFIED),
    ({"misclassified": {"max_images": -1}}, MISCLASSIFIED),
    ({"occlusion": {"max_images": 0}}, "occlusion.patch, occlusion.stride and occlusion.max_images must be"),
    ({"activations": {"layers": 0}}, "activations.layers must be >= 1"),
    ({"activations": {"filters": 3}}, "activations.filters must be an even number >= 2"),
    ({"examples": {"columns": 0}}, "examples.count and examples.columns must be >= 1"),
])
def test_report_params_refuse_counts_that_draw_nothing(section: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=rf"^params\.yaml: report: {message}"):
        config.from_dict(ReportParams, section, where="report", file="params.yaml")
