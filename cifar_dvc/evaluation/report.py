"""The ``report`` stage's logic: seed 004's Table 2 for every variant, the DVC plot data, the figures.

Which variants: ``report.variants`` if given (each must have been evaluated), otherwise every
variant with results under ``eval/`` (alphabetical), so the report works whatever subset of the
variants was trained. The single-model figures show ``report.focus``, by default the variant with
the best validation accuracy.

Reads ``eval/<variant>/`` (``results.json``, ``predictions/*.npz``), ``dvclive/<variant>/`` (the
training logs), ``models/<focus>.keras`` and its sidecar, ``data/prepared/test.npz`` and the custom
sets (``report.json`` for the resize filters, the photos of ``report.misclassified.set``); the
sets' names, files and titles are those of ``cifar_dvc.evalsets``. Writes:

- ``plots/report/summary.json``: ``{variant: {set: accuracy}}`` over Table 2's sets (validation,
  test, seed 004's nearest-resize ``custom_nearest`` and ``custom_nearest_filtered`` when made,
  ``custom``, ``custom_filtered``), with BatchNorm adaptation also ``custom_adapted`` and
  ``custom_filtered_adapted`` (null for a variant without BatchNorm), with the corruption suite
  ``corruptions`` (and ``corruptions_adapted``), the mean accuracy over corruptions and severities.
  Not a DVC metric: its numbers are those of the ``metrics/<variant>.json`` files, and as a metric
  it would add a column per variant and set to ``dvc metrics show``;
- ``plots/report/table.md``: the same as markdown tables (percent, with n): Table 2, seed 004's
  setup beside ours, and the blur trick's finding in this run's numbers; then the corruption means;
- ``plots/report/corruptions.csv``: ``variant`` + ``eval/<variant>/corruptions.csv``'s columns;
- ``plots/report/curves.csv``: ``variant, split, step, accuracy, loss`` (DVC plot of the curves);
- ``plots/report/blur.csv``: ``variant, resize, divisor, accuracy, n`` (DVC plot of the blur sweep);
- ``plots/report/figures/*.png``: the figures of ``cifar_dvc.evaluation.figures``.

All of it is written into ``plots/report/`` as a whole (atomic directory): a failed report leaves
no partial folder. Two registries say what is written: ``DATA_FILES`` (the text files above, by
name) and ``FIGURES``, one ``Figure`` entry per PNG with the ``Inputs`` it reads (``needs``), loaded
on first use. A new figure is a function of ``figures`` plus one entry; tests/test_report.py checks
that each entry writes its file and that dvc.yaml's report stage declares them. The tables and CSVs
are built with pandas.

Run by ``python -m stages.report`` (``dvc repro report``).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cifar_dvc import artifacts, atomic, evalsets, inference
from cifar_dvc.errors import DataError, ParamsError
from cifar_dvc.evaluation import figures
from cifar_dvc.evaluation.evaluate import CORRUPTION_COLUMNS
from cifar_dvc.evaluation.params import ReportParams

# How Table 2 and the blur sweep name each resize when data/custom_sets/report.json does not say.
RESIZE_LABELS = {evalsets.MAIN: "custom.resample", evalsets.NEAREST: "nearest"}
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
    out: Path  # plots/report (summary.json, the table, the plot data, the figures)


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
    """Table 2's sets (``SetSpec.table``) that some variant has (the nearest-resize ones exist only
    when the custom stage made them), then the adapted sets when some variant used ``adapt_bn``."""
    present = {name for res in results.values() for name in res["sets"]}
    names = tuple(spec.name for spec in evalsets.SETS if spec.table and spec.name in present)
    if any(res.get("adaptation") is not None for res in results.values()):
        names += evalsets.adapted_sets()
    return names


def custom_resamples(custom: Path) -> dict[str, str]:
    """``{resize: filter name}`` of the custom sets, from ``report.json`` (``RESIZE_LABELS`` if absent)."""
    labels = dict(RESIZE_LABELS)
    try:
        sets = json.loads((custom / "report.json").read_text())["sets"]
        for resize in evalsets.RESIZES:
            entry = sets.get(evalsets.custom_set(resize, filtered=False).stem)
            if entry and entry.get("resample"):
                labels[resize] = entry["resample"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # an older or hand-made custom folder: the generic labels say enough
    return labels


def blur_finding(results: dict[str, dict[str, Any]], labels: dict[str, str] | None = None) -> str:
    """Seed 004's blur trick, explained in this run's numbers (mean over the variants that have all
    four custom sets): the filter's gain after the aliasing nearest resize against its gain after
    the main resize, and the main resize alone against the seed's filtered photos. "" without the
    nearest sets or photos."""
    labels = labels or RESIZE_LABELS
    names = [evalsets.custom_set(resize, filtered).name
             for resize in (evalsets.NEAREST, evalsets.MAIN) for filtered in (False, True)]
    rows = [[(res["sets"].get(name) or {}).get("accuracy") for name in names] for res in results.values()]
    rows = [row for row in rows if all(v is not None for v in row)]
    if not rows:
        return ""
    nearest, nearest_filtered, main, main_filtered = (100 * float(np.mean(col)) for col in np.array(rows).T)
    gain_nearest, gain_main = nearest_filtered - nearest, main_filtered - main
    near, ours = labels[evalsets.NEAREST], labels[evalsets.MAIN]
    text = (f"Seed 004's blur trick, explained (mean over {len(rows)} variant(s)): with the {near} resize "
            f"(the seed's; it aliases) the filter takes the photos from {nearest:.1f}% to "
            f"{nearest_filtered:.1f}% ({gain_nearest:+.1f} points); with {ours} from {main:.1f}% to "
            f"{main_filtered:.1f}% ({gain_main:+.1f} points). ")
    if gain_nearest > gain_main:
        text += (f"The filter gains {gain_nearest - gain_main:.1f} points more after the aliasing resize: "
                 "that part of its gain repairs aliasing. ")
    else:
        text += f"The filter gains no more after the aliasing resize than after {ours}. "
    if main >= nearest_filtered:
        text += (f"The {ours} resize alone ({main:.1f}%) does at least as well as the seed's filtered "
                 f"photos ({nearest_filtered:.1f}%).")
    else:
        text += (f"The seed's filtered photos ({nearest_filtered:.1f}%) beat the {ours} resize alone "
                 f"({main:.1f}%).")
    return text + "\n"


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

def markdown_table(results: dict[str, dict[str, Any]], labels: dict[str, str] | None = None) -> str:
    """Seed 004's Table 2 for every variant: accuracy in percent per set, n in the header; seed
    004's nearest-resize sets beside ours, the adapted custom sets as extra columns, the blur
    trick's finding (``blur_finding``); then the corruption means, when measured. ``labels``: the
    resize filters' names (``custom_resamples``)."""
    labels = labels or RESIZE_LABELS
    names = list(table_sets(results))
    # an adapted set holds the same images as its set: its n is that set's, also without BatchNorm
    sizes = {name: max((res["sets"].get(evalsets.adapted_of(name) or name) or {}).get("n") or 0
                       for res in results.values()) for name in names}
    table = pd.DataFrame.from_dict(summary_table(results), orient="index")[names]
    table.columns = [f"{evalsets.title(name)} (n={sizes[name]})" for name in names]
    text = (f"Accuracy (%) of every variant (seed 004, Table 2). Custom: the photos resized with "
            f"{labels[evalsets.MAIN]}")
    if evalsets.custom_set(evalsets.NEAREST, filtered=False).name in names:
        text += f"; \"nearest\": resized with {labels[evalsets.NEAREST]} as seed 004 did (Keras' load_img)"
    text += "; \"filtered\": blurred before resizing (seed 004's filter)"
    if any(evalsets.adapted_of(name) for name in names):
        text += ("; \"BN adapted\": BatchNorm statistics re-estimated on the set's own images "
                 "(n/a: the variant has no BatchNorm)")
    text += ".\n\n" + _markdown(table) + "\n"
    finding = blur_finding(results, labels)
    if finding:
        text += "\n" + finding
    suites = {variant: res["corruptions"] for variant, res in results.items() if res.get("corruptions")}
    if suites:
        clean = {variant: next(r for r in suite["rows"] if r["severity"] == 0)
                 for variant, suite in suites.items()}
        means = pd.DataFrame.from_dict({variant: {
            "Clean subset": clean[variant]["accuracy"], "Corrupted (mean)": suite["accuracy"],
            "Clean, BN adapted": clean[variant]["accuracy_adapted"],
            "Corrupted, BN adapted": suite["accuracy_adapted"]} for variant, suite in suites.items()},
            orient="index")
        some = next(iter(suites.values()))
        corrupted = sorted({r["corruption"] for r in some["rows"] if r["severity"] > 0})
        text += (f"\nAccuracy (%) under corruptions: {some['images']} test images (seed {some['seed']}, "
                 f"no TTA), mean over {', '.join(corrupted)} at severities 1-3.\n\n"
                 + _markdown(means) + "\n")
    return text


def _markdown(table: pd.DataFrame) -> str:
    """Accuracies in percent as a GitHub markdown table: the index as a left-aligned ``Variant``
    column, the cells right-aligned (``DataFrame.to_markdown`` would need the tabulate package)."""
    lines = ["| " + " | ".join(["Variant", *map(str, table.columns)]) + " |",
             "|---|" + "---:|" * len(table.columns)]
    lines += ["| " + " | ".join([str(index), *map(_pct, row)]) + " |" for index, *row in table.itertuples()]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    # pandas holds a JSON null as NaN in a column of numbers, as None in a column of nulls only
    return "n/a" if value is None or np.isnan(value) else f"{100 * value:.1f}"


def corruptions_csv(results: dict[str, dict[str, Any]]) -> str:
    """``variant`` + the corruption table of every variant that has one (empty cells for nulls)."""
    rows = [{"variant": variant, **row} for variant, res in results.items()
            for row in (res.get("corruptions") or {}).get("rows", [])]
    # object dtype writes each value as the csv module would (str): a column of ints with a null
    # would otherwise become floats ("3.0")
    return pd.DataFrame(rows, columns=["variant", *CORRUPTION_COLUMNS], dtype=object).to_csv(
        index=False, lineterminator="\n")


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
    frames = [pd.DataFrame({"variant": variant, "split": split, "step": data["step"].astype(np.int64),
                            **{metric: data[metric] for metric in CURVE_METRICS if metric in data}})
              for variant, splits in curves.items() for split, data in splits.items()]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return _csv(table.reindex(columns=["variant", "split", "step", *CURVE_METRICS]))


def _csv(table: pd.DataFrame) -> str:
    """The CSV text of the report's plot data: floats to 6 significant digits, empty missing cells."""
    return table.to_csv(index=False, lineterminator="\n", float_format="%.6g")


def sweep_points(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[float, float]]]:
    """``{variant: {resize: {divisor: accuracy}}}`` of the non-empty blur-sweep sets."""
    points: dict[str, dict[str, dict[float, float]]] = {}
    for variant, res in results.items():
        points[variant] = {}
        for name, scores in res["sets"].items():
            parsed = evalsets.parse_sweep(name)
            if parsed is not None and scores.get("n") and scores["accuracy"] is not None:
                points[variant].setdefault(parsed[0], {})[parsed[1]] = scores["accuracy"]
    return points



def blur_csv(results: dict[str, dict[str, Any]], labels: dict[str, str] | None = None) -> str:
    """``variant,resize,divisor,accuracy,n`` of the blur sweep for DVC plots (``labels``: the resize
    filters' names, ``custom_resamples``)."""
    labels = labels or RESIZE_LABELS
    rows = [{"variant": variant, "resize": labels[resize], "divisor": divisor, "accuracy": accuracy,
             "n": results[variant]["sets"][evalsets.sweep_name(divisor, resize)]["n"]}
            for variant, by_resize in sweep_points(results).items() for resize in evalsets.RESIZES
            for divisor, accuracy in sorted(by_resize.get(resize, {}).items())]
    return _csv(pd.DataFrame(rows, columns=["variant", "resize", "divisor", "accuracy", "n"]))


def choose_focus(results: dict[str, dict[str, Any]], requested: str | None) -> str:
    """``report.focus`` if given (one of the report's variants), else the best validation accuracy."""
    if requested is not None:
        if requested not in results:
            raise ParamsError(f"report.focus: {requested!r} is not among the report's variants "
                              f"({', '.join(results)})")
        return requested
    # max keeps the first of equals: ties go to the earlier variant of the report's order
    return max(results,
               key=lambda variant: results[variant]["sets"][evalsets.VALIDATION].get("accuracy") or 0.0)



class Inputs:
    """What the report's figures read, each loaded on first use: a figure's ``needs`` name these
    attributes, so a report whose figures need no model loads none.

    ``params``, ``results`` (``eval/<variant>/results.json`` by variant), ``curves``
    (``dvclive/<variant>/``), ``focus`` and ``variants`` are given; the rest is read here.
    """

    def __init__(self, paths: Paths, params: ReportParams, results: dict[str, dict[str, Any]],
                 curves: dict[str, dict[str, dict[str, np.ndarray]]], focus: str) -> None:
        self.paths, self.params, self.results, self.curves, self.focus = paths, params, results, curves, focus
        self.variants = list(results)

    @functools.cached_property
    def classes(self) -> list[str]:
        """The class names (every variant has the same, ``build`` checks)."""
        return self.results[self.focus]["classes"]

    @functools.cached_property
    def labels(self) -> dict[str, str]:
        """The resize filters' names, from ``data/custom_sets/report.json`` (``custom_resamples``)."""
        return custom_resamples(self.paths.custom)

    @functools.cached_property
    def test_predictions(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{variant: (probabilities, labels)}`` of the test set, ``eval/<variant>/predictions/``."""
        return {variant: _probs_and_labels(self.paths.eval_dir, variant, evalsets.TEST)
                for variant in self.results}

    @functools.cached_property
    def model(self) -> Any:
        """The focus variant's model, ``models/<focus>.keras``."""
        return self._loaded[0]

    @functools.cached_property
    def info(self) -> Any:
        """The focus variant's sidecar (``inference.load``): its normalization statistics."""
        return self._loaded[1]

    @functools.cached_property
    def _loaded(self) -> tuple[Any, Any]:
        return inference.load(self.paths.models_dir / f"{self.focus}.keras")

    @functools.cached_property
    def test(self) -> artifacts.Split:
        """``data/prepared/test.npz``."""
        return artifacts.load_split(self.paths.prepared / evalsets.spec(evalsets.TEST).file)

    @functools.cached_property
    def test_pred(self) -> np.ndarray:
        """The focus variant's predicted class of every test image (checked against ``test``)."""
        pred = load_predictions(self.paths.eval_dir, self.focus, evalsets.TEST)["probs"].argmax(axis=1)
        if len(pred) != len(self.test):
            test_file = self.paths.prepared / evalsets.spec(evalsets.TEST).file
            raise DataError(f"{self.paths.eval_dir / self.focus}: predictions for {len(pred)} test images, "
                            f"{test_file} has {len(self.test)}; re-run evaluate@{self.focus}")
        return pred

    @functools.cached_property
    def photos(self) -> artifacts.Split:
        """The custom set of ``report.misclassified.set`` (``data/custom_sets/``)."""
        name = self.params.misclassified.set
        if name not in self.results[self.focus]["sets"]:
            raise ParamsError(f"report.misclassified.set: {name!r} was not evaluated for "
                              f"{self.focus} (the nearest sets need custom.compare_resample)")
        return artifacts.load_split(self.paths.custom / evalsets.spec(name).file)

    @functools.cached_property
    def photo_probs(self) -> np.ndarray:
        """The focus variant's probabilities of each of ``photos`` (checked: the same photos)."""
        pred = load_predictions(self.paths.eval_dir, self.focus, self.params.misclassified.set)
        if len(pred["y"]) != len(self.photos) or not np.array_equal(pred["y"], self.photos.y):
            raise DataError(f"{self.paths.custom}: the custom set changed since evaluate@{self.focus}; "
                            "run `dvc repro`")
        return pred["probs"]


@dataclasses.dataclass(frozen=True)
class Figure:
    """One figure of the report: ``draw(path, **needs)`` writes ``figures/<file>`` and returns its path.

    ``needs`` names the ``Inputs`` it reads, passed by keyword. A ``file`` with ``{variant}`` is one
    figure per variant of the report, drawn with ``variant=`` too.
    """

    name: str
    file: str
    draw: Callable[..., Path]
    needs: tuple[str, ...]

    @property
    def per_variant(self) -> bool:
        return "{variant}" in self.file

    def files(self, variants: list[str]) -> list[str]:
        """The file names it writes for the report's ``variants``."""
        return [self.file.format(variant=v) for v in variants] if self.per_variant else [self.file]


def _unfiltered(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    # the unfiltered photos of each resize: the blur sweep's limit d -> infinity (no blur)
    return {variant: {resize: (res["sets"].get(evalsets.custom_set(resize, filtered=False).name)
                               or {}).get("accuracy") for resize in evalsets.RESIZES}
            for variant, res in results.items()}


def _confusion(path: Path, *, variant: str, results: dict[str, dict[str, Any]], classes: list[str],
               params: ReportParams) -> Path:
    sets = results[variant]["sets"]
    absent = [name for name in params.confusion_sets if name not in sets]
    if absent:
        raise ParamsError(f"report.confusion_sets: {absent[0]!r} was not evaluated for {variant} "
                          f"(the nearest sets need custom.compare_resample)")
    matrices = {name: np.asarray(sets[name]["confusion_matrix"]) for name in params.confusion_sets}
    return figures.confusion_matrices(matrices, classes, path, title=f"Confusion matrices of {variant}")


def _examples(path: Path, *, test: artifacts.Split, test_pred: np.ndarray, classes: list[str],
              params: ReportParams, focus: str) -> Path:
    rng = np.random.default_rng(params.seed)
    pick = np.sort(rng.choice(len(test), size=min(params.examples.count, len(test)), replace=False))
    return figures.example_predictions(test.x[pick], test.y[pick], test_pred[pick], classes, path,
                                       columns=params.examples.columns,
                                       title=f"Test images: true → predicted by {focus}")


def _misclassified_photos(path: Path, *, photos: artifacts.Split, photo_probs: np.ndarray,
                          classes: list[str], params: ReportParams, focus: str) -> Path:
    files = [str(f) for f in photos.extra.get("files", np.array([], str))]
    shown = params.misclassified
    return figures.misclassified_photos(photos.x, photos.y, photo_probs, files, classes, path,
                                        max_images=shown.max_images, columns=shown.columns,
                                        title=f"Misclassified {shown.set} photos ({focus})")


def _occlusion(path: Path, *, model: Any, info: Any, photos: artifacts.Split, photo_probs: np.ndarray,
               test: artifacts.Split, test_pred: np.ndarray, classes: list[str],
               params: ReportParams) -> Path:
    wrong_x, wrong_y, wrong_pred = _misclassified(photos.x, photos.y, photo_probs)
    if len(wrong_y) == 0:  # no misclassified photos: explain the model's mistakes on test images
        wrong = test_pred != test.y
        wrong_x, wrong_y, wrong_pred = test.x[wrong], test.y[wrong], test_pred[wrong]
    n = params.occlusion.max_images
    return figures.occlusion_maps(model, wrong_x[:n], wrong_y[:n], wrong_pred[:n], info.normalization,
                                  classes, path, patch=params.occlusion.patch, stride=params.occlusion.stride)


def _activations(path: Path, *, model: Any, info: Any, test: artifacts.Split, classes: list[str],
                 params: ReportParams) -> Path:
    indices = [i for i in params.activations.images if 0 <= i < len(test)]
    if len(indices) != len(params.activations.images):
        raise ParamsError(f"report.activations.images: indices must be in 0..{len(test) - 1}")
    return figures.activation_grids(model, test.x[indices], info.normalization, path,
                                    layers=params.activations.layers, filters=params.activations.filters,
                                    labels=[f"{classes[test.y[i]]} (test #{i})" for i in indices])


# The report's figures, drawn in this order into plots/report/figures/ (docs/evaluation.md lists
# them): a new figure is a function of ``figures`` and one entry here.
FIGURES: tuple[Figure, ...] = (
    Figure("training curves", "curves.png",
           lambda path, *, curves: figures.training_curves(curves, path), needs=("curves",)),
    Figure("incorrect share", "incorrect_share.png",
           lambda path, *, results, classes: figures.incorrect_share(
               {v: np.asarray(res["sets"][evalsets.TEST]["confusion_matrix"]) for v, res in results.items()},
               classes, path),
           needs=("results", "classes")),
    Figure("blur sweep", "blur_sweep.png",
           lambda path, *, results, labels: figures.blur_sweep(
               sweep_points(results), _unfiltered(results), path, resize_labels=labels),
           needs=("results", "labels")),
    Figure("reliability diagram", "reliability.png",
           lambda path, *, test_predictions, params: figures.reliability_diagram(
               test_predictions, path, bins=params.reliability_bins),
           needs=("test_predictions", "params")),
    Figure("corruption curves", "corruptions.png",
           lambda path, *, results: figures.corruption_curves(
               {v: (res.get("corruptions") or {}).get("rows", []) for v, res in results.items()}, path),
           needs=("results",)),
    Figure("confusion matrices", "confusion_{variant}.png", _confusion,
           needs=("results", "classes", "params")),
    Figure("example predictions", "examples.png", _examples,
           needs=("test", "test_pred", "classes", "params", "focus")),
    Figure("misclassified photos", "misclassified_custom.png", _misclassified_photos,
           needs=("photos", "photo_probs", "classes", "params", "focus")),
    Figure("occlusion maps", "occlusion.png", _occlusion,
           needs=("model", "info", "photos", "photo_probs", "test", "test_pred", "classes", "params")),
    Figure("filter visualization", "filters.png",
           lambda path, *, model, params: figures.filter_visualization(
               model, path, layers=params.filters.layers, filters=params.filters.filters,
               steps=params.filters.steps, step_size=params.filters.step_size),
           needs=("model", "params")),
    Figure("class-ideal images", "class_ideal.png",
           lambda path, *, model, classes, params: figures.class_ideal_images(
               model, classes, path, max_classes=params.class_ideal.classes, steps=params.class_ideal.steps,
               step_size=params.class_ideal.step_size),
           needs=("model", "classes", "params")),
    Figure("activations", "activations.png", _activations,
           needs=("model", "info", "test", "classes", "params")),
    Figure("weight histograms", "weights.png",
           lambda path, *, model: figures.weight_histograms(model, path), needs=("model",)),
)

SUMMARY = "summary.json"  # plots/report/summary.json: Table 2 as JSON (the demo prints it)
# The text files of plots/report/, each made from the ``Inputs`` (curves.csv and blur.csv are
# plotted by dvc.yaml's `plots:`).
DATA_FILES: dict[str, Callable[[Inputs], str]] = {
    SUMMARY: lambda inputs: atomic.json_text(summary_table(inputs.results)),
    "table.md": lambda inputs: markdown_table(inputs.results, inputs.labels),
    "curves.csv": lambda inputs: curves_csv(inputs.curves),
    "blur.csv": lambda inputs: blur_csv(inputs.results, inputs.labels),
    "corruptions.csv": lambda inputs: corruptions_csv(inputs.results),
}
FIGURE_DIR = "figures"  # plots/report/figures/


def build(paths: Paths, params: ReportParams) -> dict[str, Any]:
    """Write the summary, the table, the plot data and every figure into ``paths.out`` (as a whole);
    returns the variants and the focus."""
    variants = select_variants(paths.eval_dir, params.variants)
    results = {variant: load_results(paths.eval_dir, variant) for variant in variants}
    classes = results[variants[0]]["classes"]
    for variant, res in results.items():
        if res["classes"] != classes:
            raise DataError(f"{paths.eval_dir / variant}: its classes differ from {variants[0]}'s; "
                            "were they evaluated on the same data set?")
    focus = choose_focus(results, params.focus)
    curves = {variant: load_curves(paths.dvclive_dir, variant) for variant in variants}
    inputs = Inputs(paths, params, results, curves, focus)
    with atomic.atomic_dir(paths.out) as out:
        for name, make in DATA_FILES.items():
            atomic.write_text(out / name, make(inputs))
        draw_figures(out / FIGURE_DIR, inputs)
    return {"variants": variants, "focus": focus}


def draw_figures(fig_dir: Path, inputs: Inputs, only: tuple[Figure, ...] = FIGURES) -> list[Path]:
    """Draw the figures ``only`` (default: all of ``FIGURES``) into ``fig_dir``; returns the paths."""
    written = []
    for figure in only:
        needs = {name: getattr(inputs, name) for name in figure.needs}
        for variant, file in zip(inputs.variants if figure.per_variant else [None],
                                 figure.files(inputs.variants), strict=True):
            extra = {"variant": variant} if figure.per_variant else {}
            written.append(figure.draw(fig_dir / file, **needs, **extra))
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
