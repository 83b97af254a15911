"""The ``report`` stage's logic: seed 004's Table 2 for every variant, the DVC plot data, the figures.

Which variants: ``report.variants`` if given (each must have been evaluated), otherwise every
variant with results under ``eval/`` (alphabetical), so the report works whatever subset of the
variants was trained. The single-model figures show ``report.focus``, by default the variant with
the best validation accuracy.

Reads ``eval/<variant>/`` (``results.json``, ``predictions/*.npz``), ``dvclive/<variant>/`` (the
training logs), ``models/<focus>.keras`` and its sidecar, ``data/prepared/test.npz`` and the custom
sets (``unfiltered.npz``, ``filtered.npz``). Writes:

- ``metrics/summary.json``: ``{variant: {validation, test, custom, custom_filtered}}`` accuracies,
  with BatchNorm adaptation also ``custom_adapted`` and ``custom_filtered_adapted`` (null for a
  variant without BatchNorm), with the corruption suite ``corruptions`` (and ``corruptions_adapted``),
  the mean accuracy over corruptions and severities;
- ``plots/report/table.md``: the same as markdown tables (percent, with n): Table 2 with the
  adapted columns, then the corruption means;
- ``plots/report/corruptions.csv``: ``variant`` + ``eval/<variant>/corruptions.csv``'s columns;
- ``plots/report/curves.csv``: ``variant, split, step, accuracy, loss`` (DVC plot of the curves);
- ``plots/report/blur.csv``: ``variant, divisor, accuracy, n`` (DVC plot of the blur sweep);
- ``plots/report/figures/*.png``: the figures of ``cifar_dvc.evaluation.figures``.

Run by ``python -m stages.report`` (``dvc repro report``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from cifar_dvc import artifacts, atomic, modelinfo
from cifar_dvc.errors import DataError, ParamsError
from cifar_dvc.evaluation import figures
from cifar_dvc.evaluation.evaluate import CORRUPTION_COLUMNS, CUSTOM_SETS, load_model
from cifar_dvc.evaluation.params import ReportParams

TABLE_SETS = ("validation", "test", "custom", "custom_filtered")  # seed 004 Table 2's columns (+ validation)
ADAPTED_SETS = ("custom_adapted", "custom_filtered_adapted")  # extra columns with BatchNorm adaptation
SET_TITLES = {"validation": "Validation", "test": "Test", "custom": "Custom",
              "custom_filtered": "Custom (filtered)", "custom_adapted": "Custom, BN adapted",
              "custom_filtered_adapted": "Custom (filtered), BN adapted"}
DVCLIVE_SPLITS = {"train": "train", "validation": "eval"}  # our split name -> dvclive's folder
CURVE_METRICS = ("accuracy", "loss")


@dataclasses.dataclass
class Paths:
    """Where the report reads from and writes to (the stage's command line)."""

    eval_dir: Path  # eval/ (one folder per evaluated variant)
    dvclive_dir: Path  # dvclive/ (one folder per trained variant)
    models_dir: Path  # models/ (<name>.keras + <name>.json)
    prepared: Path  # data/prepared
    custom: Path  # data/custom_sets
    summary: Path  # metrics/summary.json
    out: Path  # plots/report


def select_variants(eval_dir: Path, requested: list[str] | None) -> list[str]:
    """The variants of the report: ``requested`` (each must have results) or every evaluated one."""
    available = sorted(p.name for p in eval_dir.iterdir() if (p / "results.json").is_file()) \
        if eval_dir.is_dir() else []
    if requested is None:
        if not available:
            raise DataError(f"{eval_dir}: no evaluated variant (eval/<name>/results.json); run `dvc repro`")
        return available
    missing = [name for name in requested if name not in available]
    if missing:
        raise ParamsError(f"report.variants: {missing[0]!r} has no results in {eval_dir}/; "
                          f"evaluated variants: {', '.join(available) or 'none'}")
    return list(requested)


def load_results(eval_dir: Path, variant: str) -> dict[str, Any]:
    """``eval/<variant>/results.json``."""
    path = eval_dir / variant / "results.json"
    try:
        results = json.loads(path.read_text())
        if not isinstance(results["sets"], dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{path}: expected the results.json written by evaluate@{variant}") from None
    return results


def load_predictions(eval_dir: Path, variant: str, name: str) -> dict[str, np.ndarray]:
    """``eval/<variant>/predictions/<name>.npz`` as a dict of arrays."""
    path = eval_dir / variant / "predictions" / f"{name}.npz"
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the predictions of evaluate@{variant} ({exc})") from None


def table_sets(results: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    """``TABLE_SETS``, plus ``ADAPTED_SETS`` when some variant was evaluated with ``adapt_bn``."""
    adapted = any(res.get("adaptation") is not None for res in results.values())
    return TABLE_SETS + ADAPTED_SETS if adapted else TABLE_SETS


def corruption_means(res: dict[str, Any]) -> dict[str, float | None]:
    """``{corruptions, corruptions_adapted}`` mean accuracies of one variant ({} without the suite)."""
    suite = res.get("corruptions")
    if suite is None:
        return {}
    out = {"corruptions": suite["accuracy"]}
    if res.get("adaptation") is not None:
        out["corruptions_adapted"] = suite["accuracy_adapted"]
    return out


def summary_table(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """``{variant: {set: accuracy}}`` over ``table_sets`` (null for an empty set or, adapted, a
    variant without BatchNorm), plus the corruption means when measured."""
    names = table_sets(results)
    return {variant: {**{name: (res["sets"].get(name) or {}).get("accuracy") for name in names},
                      **corruption_means(res)}
            for variant, res in results.items()}


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """Seed 004's Table 2 for every variant: accuracy in percent per set, n in the header; the
    adapted custom sets as extra columns; then the corruption means, when measured."""
    names = table_sets(results)
    first = next(iter(results.values()))
    # an adapted set holds the same images as its set: its n is that set's, also without BatchNorm
    sizes = {name: first["sets"].get(name.removesuffix("_adapted"), {}).get("n", 0) for name in names}
    header = ["Variant"] + [f"{SET_TITLES[name]} (n={sizes[name]})" for name in names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * len(names)]
    summary = summary_table(results)
    for variant, row in summary.items():
        lines.append(f"| {variant} | " + " | ".join(_pct(row[name]) for name in names) + " |")
    text = "Accuracy (%) of every variant (seed 004, Table 2)"
    if names != TABLE_SETS:
        text += ("; \"BN adapted\": BatchNorm statistics re-estimated on the set's own images "
                 "(n/a: the variant has no BatchNorm)")
    text += ".\n\n" + "\n".join(lines) + "\n"
    suites = {variant: res["corruptions"] for variant, res in results.items() if res.get("corruptions")}
    if suites:
        rows = ["| Variant | Clean subset | Corrupted (mean) | Clean, BN adapted | Corrupted, BN adapted |",
                "|---|---:|---:|---:|---:|"]
        for variant, suite in suites.items():
            clean = next(r for r in suite["rows"] if r["severity"] == 0)
            rows.append(f"| {variant} | {_pct(clean['accuracy'])} | {_pct(suite['accuracy'])} | "
                        f"{_pct(clean['accuracy_adapted'])} | {_pct(suite['accuracy_adapted'])} |")
        some = next(iter(suites.values()))
        corrupted = sorted({r["corruption"] for r in some["rows"] if r["severity"] > 0})
        text += (f"\nAccuracy (%) under corruptions: {some['images']} test images (seed {some['seed']}, "
                 f"no TTA), mean over {', '.join(corrupted)} at severities 1-3.\n\n"
                 + "\n".join(rows) + "\n")
    return text


def corruptions_csv(results: dict[str, dict[str, Any]]) -> str:
    """``variant`` + the corruption table of every variant that has one (empty cells for nulls)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["variant", *CORRUPTION_COLUMNS])
    for variant, res in results.items():
        for row in (res.get("corruptions") or {}).get("rows", []):
            writer.writerow([variant, *("" if row[k] is None else row[k] for k in CORRUPTION_COLUMNS)])
    return buffer.getvalue()


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def read_tsv(path: Path) -> dict[str, np.ndarray]:
    """A dvclive history file (``step`` and one metric column) as float arrays by column."""
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text()), delimiter="\t"))
        columns = rows[0].keys() if rows else []
        return {key: np.array([float(row[key]) for row in rows]) for key in columns}
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: expected a dvclive TSV history (step and a metric) ({exc})") from None


def load_curves(dvclive_dir: Path, variant: str) -> dict[str, dict[str, np.ndarray]]:
    """``{split: {"step": ..., "accuracy": ..., "loss": ...}}`` from ``dvclive/<variant>/``."""
    folder = dvclive_dir / variant / "plots" / "metrics"
    if not folder.is_dir():
        raise DataError(f"{folder}: training logs of {variant} not found; train@{variant} writes them")
    curves: dict[str, dict[str, np.ndarray]] = {}
    for split, sub in DVCLIVE_SPLITS.items():
        for metric in CURVE_METRICS:
            path = folder / sub / f"{metric}.tsv"
            if not path.is_file():
                continue
            table = read_tsv(path)
            if "step" not in table or metric not in table:
                raise DataError(f"{path}: expected columns step and {metric}")
            data = curves.setdefault(split, {"step": table["step"]})
            if len(data["step"]) != len(table["step"]) or not np.array_equal(data["step"], table["step"]):
                raise DataError(f"{path}: its steps differ from the other {split} logs of {variant}")
            data[metric] = table[metric]
    return curves


def curves_csv(curves: dict[str, dict[str, dict[str, np.ndarray]]]) -> str:
    """Long-format training curves for DVC plots: ``variant,split,step,accuracy,loss``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["variant", "split", "step", *CURVE_METRICS])
    for variant, splits in curves.items():
        for split, data in splits.items():
            for i, step in enumerate(data["step"]):
                writer.writerow([variant, split, int(step),
                                 *(f"{data[m][i]:.6g}" if m in data else "" for m in CURVE_METRICS)])
    return buffer.getvalue()


def sweep_points(results: dict[str, dict[str, Any]]) -> dict[str, dict[float, float]]:
    """``{variant: {divisor: accuracy}}`` of the non-empty blur-sweep sets."""
    points: dict[str, dict[float, float]] = {}
    for variant, res in results.items():
        points[variant] = {float(name.removeprefix("sweep_")): s["accuracy"]
                           for name, s in res["sets"].items()
                           if name.startswith("sweep_") and s.get("n") and s["accuracy"] is not None}
    return points


def blur_csv(results: dict[str, dict[str, Any]]) -> str:
    """``variant,divisor,accuracy,n`` of the blur sweep for DVC plots."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["variant", "divisor", "accuracy", "n"])
    for variant, points in sweep_points(results).items():
        for divisor in sorted(points):
            n = results[variant]["sets"][f"sweep_{divisor:g}"]["n"]
            writer.writerow([variant, f"{divisor:g}", f"{points[divisor]:.6g}", n])
    return buffer.getvalue()


def choose_focus(results: dict[str, dict[str, Any]], requested: str | None) -> str:
    """``report.focus`` if given (one of the report's variants), else the best validation accuracy."""
    if requested is not None:
        if requested not in results:
            raise ParamsError(f"report.focus: {requested!r} is not among the report's variants "
                              f"({', '.join(results)})")
        return requested
    # max keeps the first of equals: ties go to the earlier variant of the report's order
    return max(results, key=lambda variant: results[variant]["sets"]["validation"].get("accuracy") or 0.0)


def build(paths: Paths, params: ReportParams) -> dict[str, Any]:
    """Write the summary, the table, the plot data and every figure; returns the summary."""
    variants = select_variants(paths.eval_dir, params.variants)
    results = {variant: load_results(paths.eval_dir, variant) for variant in variants}
    classes = results[variants[0]]["classes"]
    for variant, res in results.items():
        if res["classes"] != classes:
            raise DataError(f"{paths.eval_dir / variant}: its classes differ from {variants[0]}'s; "
                            "were they evaluated on the same data set?")
    focus = choose_focus(results, params.focus)
    curves = {variant: load_curves(paths.dvclive_dir, variant) for variant in variants}
    summary = summary_table(results)
    with atomic.atomic_dir(paths.out) as out:
        atomic.write_text(out / "table.md", markdown_table(results))
        atomic.write_text(out / "curves.csv", curves_csv(curves))
        atomic.write_text(out / "blur.csv", blur_csv(results))
        atomic.write_text(out / "corruptions.csv", corruptions_csv(results))
        draw_figures(out / "figures", paths, params, results, curves, focus)
    atomic.write_json(paths.summary, summary)
    return {"variants": variants, "focus": focus, "summary": summary}


def draw_figures(fig_dir: Path, paths: Paths, params: ReportParams, results: dict[str, dict[str, Any]],
                 curves: dict[str, dict[str, dict[str, np.ndarray]]], focus: str) -> list[Path]:
    """Every figure of ``figures`` into ``fig_dir``; the single-model ones for ``focus``."""
    classes = results[focus]["classes"]
    cm = {variant: np.asarray(res["sets"]["test"]["confusion_matrix"]) for variant, res in results.items()}
    unfiltered = {variant: res["sets"]["custom"]["accuracy"] for variant, res in results.items()}
    written = [
        figures.training_curves(curves, fig_dir / "curves.png"),
        figures.incorrect_share(cm, classes, fig_dir / "incorrect_share.png"),
        figures.blur_sweep(sweep_points(results), unfiltered, fig_dir / "blur_sweep.png"),
        figures.reliability_diagram(
            {variant: _probs_and_labels(paths.eval_dir, variant, "test") for variant in results},
            fig_dir / "reliability.png", bins=params.reliability_bins),
        figures.corruption_curves({variant: (res.get("corruptions") or {}).get("rows", [])
                                   for variant, res in results.items()}, fig_dir / "corruptions.png"),
    ]
    for variant, res in results.items():
        matrices = {name: np.asarray(res["sets"][name]["confusion_matrix"]) for name in params.confusion_sets}
        written.append(figures.confusion_matrices(matrices, classes, fig_dir / f"confusion_{variant}.png",
                                                  title=f"Confusion matrices of {variant}"))

    info = modelinfo.load_info(paths.models_dir / f"{focus}.keras")
    model = load_model(paths.models_dir / f"{focus}.keras")
    test = artifacts.load_split(paths.prepared / "test.npz")
    test_pred = load_predictions(paths.eval_dir, focus, "test")["probs"].argmax(axis=1)
    if len(test_pred) != len(test):
        raise DataError(f"{paths.eval_dir / focus}: predictions for {len(test_pred)} test images, "
                        f"{paths.prepared / 'test.npz'} has {len(test)}; re-run evaluate@{focus}")
    rng = np.random.default_rng(params.seed)
    pick = np.sort(rng.choice(len(test), size=min(params.examples.count, len(test)), replace=False))
    written.append(figures.example_predictions(
        test.x[pick], test.y[pick], test_pred[pick], classes, fig_dir / "examples.png",
        columns=params.examples.columns, title=f"Test images: true → predicted by {focus}"))

    photos = artifacts.load_split(paths.custom / CUSTOM_SETS[params.misclassified.set])
    photo_pred = load_predictions(paths.eval_dir, focus, params.misclassified.set)
    if len(photo_pred["y"]) != len(photos) or not np.array_equal(photo_pred["y"], photos.y):
        raise DataError(f"{paths.custom}: the custom set changed since evaluate@{focus}; run `dvc repro`")
    files = [str(f) for f in photos.extra.get("files", np.array([], str))]
    written.append(figures.misclassified_photos(
        photos.x, photos.y, photo_pred["probs"], files, classes, fig_dir / "misclassified_custom.png",
        max_images=params.misclassified.max_images, columns=params.misclassified.columns,
        title=f"Misclassified {params.misclassified.set} photos ({focus})"))

    wrong_x, wrong_y, wrong_pred = _misclassified(photos.x, photos.y, photo_pred["probs"])
    if len(wrong_y) == 0:  # no misclassified photos: explain the model's mistakes on test images
        wrong_x, wrong_y, wrong_pred = test.x[test_pred != test.y], test.y[test_pred != test.y], \
            test_pred[test_pred != test.y]
    n_occ = params.occlusion.max_images
    written.append(figures.occlusion_maps(
        model, wrong_x[:n_occ], wrong_y[:n_occ], wrong_pred[:n_occ], info.normalization, classes,
        fig_dir / "occlusion.png", patch=params.occlusion.patch, stride=params.occlusion.stride))

    ascent = params.filters
    written.append(figures.filter_visualization(model, fig_dir / "filters.png", layers=ascent.layers,
                                                filters=ascent.filters, steps=ascent.steps,
                                                step_size=ascent.step_size))
    ideal = params.class_ideal
    written.append(figures.class_ideal_images(model, classes, fig_dir / "class_ideal.png",
                                              max_classes=ideal.classes, steps=ideal.steps,
                                              step_size=ideal.step_size))
    indices = [i for i in params.activations.images if 0 <= i < len(test)]
    if len(indices) != len(params.activations.images):
        raise ParamsError(f"report.activations.images: indices must be in 0..{len(test) - 1}")
    written.append(figures.activation_grids(
        model, test.x[indices], info.normalization, fig_dir / "activations.png",
        layers=params.activations.layers, filters=params.activations.filters,
        labels=[f"{classes[test.y[i]]} (test #{i})" for i in indices]))
    written.append(figures.weight_histograms(model, fig_dir / "weights.png"))
    return written


def _probs_and_labels(eval_dir: Path, variant: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    data = load_predictions(eval_dir, variant, name)
    return data["probs"], data["y"]


def _misclassified(x: np.ndarray, y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, ...]:
    if len(y) == 0:
        return x, y, y
    pred = probs.argmax(axis=1)
    wrong = pred != y
    return x[wrong], y[wrong], pred[wrong]
