"""Evaluate one trained variant on every set: validation, test, the custom sets and the blur sweep.

The sets, their files and names come from ``cifar_dvc.evalsets``: validation and test from
``data/prepared``, the custom photos from ``data/custom_sets`` in the main resize
(``custom``, ``custom_filtered``) and, when the custom stage made them, in seed 004's
nearest-neighbour resize (``custom_nearest``, ``custom_nearest_filtered``), and every blur-sweep
set found there (``sweep_<d>``, ``sweep_nearest_<d>``). The metrics score each set's integer labels
``y``; the prepared splits' one-hot ``y_onehot`` is for training only.

For each set the model's probabilities come from ``cifar_dvc.inference.predict``: one compiled,
batched ``model.predict`` over a ``tf.data`` pipeline that normalizes the uint8 images on the fly
(with the statistics stored in the model's sidecar, i.e. exactly those it was trained with); with
test-time augmentation (``variants.<name>.tta``, ``cifar_dvc.inference.TTA_LEVELS``) the views'
probabilities are averaged.

Robustness (issue 18), both off-able in ``params.yaml``:

- ``evaluate.adapt_bn``: each custom set is evaluated a second time by a copy of the model whose
  BatchNorm statistics were re-estimated on that set's own images (``cifar_dvc.evaluation.adapt``;
  no labels; the model file is only read), as ``custom_adapted`` and ``custom_filtered_adapted``
  (``custom_bn``, ``custom_blur_bn`` in ``metrics/<name>.json``). A variant without BatchNorm
  reports them as null.
- ``evaluate.corruptions``: a seeded subset of ``evaluate.corruption_images`` test images under
  each corruption of ``cifar_dvc.evaluation.corruptions`` at severities 1..3, plus the clean
  subset (severity 0), each with and (``adapt_bn``) without adaptation on that very set. These run
  without test-time augmentation whatever ``variants.<name>.tta`` says: TTA would multiply their
  cost by up to 6 (``fast``), and the clean point of each curve is computed the same way.

Writes (through ``write_outputs``):

- ``metrics/<name>.json``: what a reader compares across branches, flat with short keys so that
  ``dvc metrics show`` of every variant fits a 200-column terminal (the keys are
  ``evalsets.metric_key``'s): the accuracy of every set of the table under its ``SetSpec.metric``
  (``val``, ``test``, ``custom_nn``, ``custom_nn_blur``, ``custom``, ``custom_blur``; the nearest
  ones only when the custom stage made them), test also ``test_loss``, ``test_f1`` (macro F1) and
  ``test_ece`` (``SetSpec.metrics``); an empty set has nulls. With ``adapt_bn``: ``custom_bn`` and
  ``custom_blur_bn``; with corruptions: ``corrupt`` (and with ``adapt_bn`` ``corrupt_bn``), the mean
  accuracy over corruptions and severities 1..3. The blur sweep is a curve: it is in
  ``eval/<name>/`` and the report's ``blur.csv`` (``dvc plots diff``), not here.
- ``eval/<name>/results.json``: every set (the sweep too) with ``n``, ``accuracy``, ``loss``,
  ``f1_macro``, ``ece`` (and ``top5_accuracy`` for more than 5 classes), per-class precision,
  recall, F1, support, the confusion matrix and the calibration table.
- ``eval/<name>/predictions/<set>.npz``: ``probs`` (float32), ``y`` (and ``files`` for photos).
- ``eval/<name>/confusion/<set>.csv``: ``actual,predicted`` class names, one row per image, the
  input of DVC's ``confusion`` template (the sets with ``SetSpec.confusion``; omitted when empty).
- ``eval/<name>/corruptions.csv``: ``corruption,severity,n,accuracy,accuracy_adapted``, one row
  per corruption and severity and a ``none,0`` row for the clean subset (only the header when
  the suite is off); the same table, the subset size and seed under ``corruptions`` in results.json.

Run by ``python -m stages.evaluate --variant <name> ...`` (``dvc repro evaluate@<name>``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np

from cifar_dvc import artifacts, atomic, evalsets, inference, modelinfo
from cifar_dvc.errors import DataError
from cifar_dvc.evaluation import adapt, corruptions, metrics
from cifar_dvc.evaluation.params import EvaluateParams

DECIMALS = 6  # rounding of the scalars in metrics/<name>.json: stable diffs, no float noise
CLEAN = "none"  # corruption name of the clean subset (severity 0) in the corruption table
CORRUPTION_COLUMNS = ("corruption", "severity", "n", "accuracy", "accuracy_adapted")


@dataclasses.dataclass
class EvalSet:
    """One set to evaluate: uint8 images, labels, and photo file names when there are any."""

    name: str  # a set of cifar_dvc.evalsets.SETS or a sweep set (evalsets.sweep_name)
    x: np.ndarray
    y: np.ndarray
    files: np.ndarray | None = None


def load_sets(prepared: Path | str, custom: Path | str) -> list[EvalSet]:
    """Every set of ``evalsets.SETS`` that exists (the optional ones may not), then the blur sweep
    of ``data/custom_sets`` by resize and divisor."""
    folders = {evalsets.PREPARED: Path(prepared), evalsets.CUSTOM: Path(custom)}
    named = [(spec.name, folders[spec.folder] / spec.file) for spec in evalsets.SETS
             if spec.required or (folders[spec.folder] / spec.file).is_file()]
    sweep = []
    if folders[evalsets.CUSTOM].is_dir():
        for path in folders[evalsets.CUSTOM].glob("*.npz"):
            parsed = evalsets.parse_sweep(path.stem)
            if parsed is not None:
                sweep.append((evalsets.RESIZES.index(parsed[0]), parsed[1], path))
    named += [(path.stem, path) for _, _, path in sorted(sweep)]
    sets = []
    for name, path in named:
        split = artifacts.load_split(path)
        sets.append(EvalSet(name, split.x, split.y, split.extra.get("files")))
    return sets


def evaluate_sets(model: Any, info: modelinfo.ModelInfo, sets: list[EvalSet], params: EvaluateParams,
                  tta: int) -> dict[str, dict[str, Any]]:
    """Predictions and ``metrics.summarize`` of each set, by set name."""
    num_classes = len(info.classes)
    out = {}
    for item in sets:
        if len(item.y) and tuple(item.x.shape[1:]) != tuple(info.image_shape):
            raise DataError(f"{item.name}: images of shape {tuple(item.x.shape[1:])}, but the model "
                            f"takes {tuple(info.image_shape)}; were the data and the model made together?")
        if len(item.y) and (item.y.min() < 0 or item.y.max() >= num_classes):
            raise DataError(f"{item.name}: labels outside 0..{num_classes - 1} of the model's classes")
        if len(item.y):
            probs = inference.predict(model, info, item.x, tta, batch_size=params.batch_size)
        else:
            probs = np.zeros((0, num_classes), np.float32)
        if probs.shape[1:] != (num_classes,):
            raise DataError(f"model outputs {probs.shape[1]} values, its sidecar lists {num_classes} classes")
        summary = metrics.summarize(probs, item.y, num_classes, top_k=params.top_k, ece_bins=params.ece_bins)
        out[item.name] = {"set": item, "probs": probs, **summary}
    return out


@dataclasses.dataclass
class Robustness:
    """What the robustness part of an evaluation did, and the corruption table it measured."""

    adapt_bn: bool  # evaluate.adapt_bn
    batchnorm: bool  # the model has BatchNorm (else the adapted results are null)
    prior: float  # evaluate.adapt_prior
    images: int = 0  # test images of the corruption subset
    seed: int = 0  # seed of the subset and of the noise
    rows: list[dict[str, Any]] | None = None  # CORRUPTION_COLUMNS per row; None = the suite is off

    def mean(self, key: str = "accuracy") -> float | None:
        """Mean of ``key`` over the corrupted rows (severity >= 1); None when not measured."""
        values = [row[key] for row in self.rows or [] if row["severity"] > 0]
        if not values or any(v is None for v in values):
            return None
        return float(np.mean(values))


def make_adapter(model: Any, params: EvaluateParams) -> adapt.BatchNormAdapter | None:
    """A BatchNorm adapter (a copy of ``model``) if ``adapt_bn`` is on and the model has BatchNorm."""
    if params.adapt_bn and adapt.has_batchnorm(model):
        return adapt.BatchNormAdapter(model)
    return None


def evaluate_adapted(adapter: adapt.BatchNormAdapter, info: modelinfo.ModelInfo, sets: list[EvalSet],
                     params: EvaluateParams, tta: int) -> dict[str, dict[str, Any]]:
    """``custom_adapted``, ``custom_filtered_adapted`` (``SetSpec.adapt``): statistics re-estimated on each.

    Adapted on the set's own images (the un-augmented ones; the TTA views are then predicted by
    the adapted copy). An empty set stays empty (``n: 0``, nulls).
    """
    out = {}
    for item in sets:
        if item.name not in evalsets.BY_NAME or not evalsets.BY_NAME[item.name].adapt:
            continue
        model = adapter.reset()
        if len(item.y):
            model = adapter.adapt(item.x, info.normalization, params.adapt_prior, params.batch_size)
        renamed = EvalSet(evalsets.adapted_name(item.name), item.x, item.y, item.files)
        out.update(evaluate_sets(model, info, [renamed], params, tta))
    return out


def evaluate_corruptions(model: Any, adapter: adapt.BatchNormAdapter | None, info: modelinfo.ModelInfo,
                         test: EvalSet, params: EvaluateParams, seed: int) -> list[dict[str, Any]]:
    """Accuracy on the seeded test subset, clean and under each corruption and severity (no TTA).

    With ``adapter``, each corrupted set is also predicted after adapting the statistics on
    that set's own images (the paper's setting: one target distribution at a time).
    """
    if not len(test.y):
        raise DataError("test: the test set is empty; the corruption suite needs test images "
                        "(set evaluate.corruptions to [] to turn it off)")
    pick = corruptions.subset(len(test.y), params.corruption_images, seed)
    x, y = test.x[pick], test.y[pick]
    stats = info.normalization

    def accuracy(net: Any, images: np.ndarray) -> float:
        return inference.accuracy(net, info, images, y, batch_size=params.batch_size)

    rows = []
    cases = [(CLEAN, 0)] + [(name, s) for name in params.corruptions for s in corruptions.SEVERITIES]
    for name, severity in cases:
        images = x if severity == 0 else corruptions.corrupt(x, name, severity, seed)
        adapted = None
        if adapter is not None:
            adapted = accuracy(adapter.adapt(images, stats, params.adapt_prior, params.batch_size), images)
        rows.append({"corruption": name, "severity": severity, "n": len(y),
                     "accuracy": accuracy(model, images), "accuracy_adapted": adapted})
    return rows


def corruptions_csv(rows: list[dict[str, Any]] | None) -> str:
    """``CORRUPTION_COLUMNS`` rows (only the header when the suite is off); empty cells for nulls."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CORRUPTION_COLUMNS)
    for row in rows or []:
        writer.writerow(["" if row[k] is None else _round(row[k]) for k in CORRUPTION_COLUMNS])
    return buffer.getvalue()


def metrics_json(results: dict[str, dict[str, Any]], robustness: Robustness | None = None) -> dict[str, Any]:
    """The flat scalars of ``metrics/<name>.json`` under ``evalsets.metric_key``: each table set's
    ``SetSpec.metrics``, the adapted custom sets' accuracy, the corruption means; no sweep (see the
    module docstring)."""
    out: dict[str, Any] = {}
    for name, result in results.items():
        if evalsets.adapted_of(name) is not None:
            out[evalsets.metric_key(name)] = _round(result["scalars"]["accuracy"])
        elif name in evalsets.BY_NAME:
            out.update({evalsets.metric_key(name, scalar): _round(result["scalars"][scalar])
                        for scalar in evalsets.BY_NAME[name].metrics})
    if robustness is not None and robustness.adapt_bn and not robustness.batchnorm:
        out.update({evalsets.metric_key(name): None for name in evalsets.adapted_sets()})  # no BatchNorm
    if robustness is not None and robustness.rows is not None:
        out[evalsets.CORRUPTION_METRIC] = _round(robustness.mean())
        if robustness.adapt_bn:
            out[evalsets.CORRUPTION_ADAPTED_METRIC] = _round(robustness.mean("accuracy_adapted"))
    return out


def results_json(variant: str, classes: list[str], tta: int, results: dict[str, dict[str, Any]],
                 robustness: Robustness | None = None) -> dict[str, Any]:
    """Everything of ``metrics_json`` plus the per-class arrays, confusion matrices, calibration,
    the adaptation settings and the corruption table (``None`` when that part did not run)."""
    sets = {}
    for name, result in results.items():
        details = result["details"]
        sets[name] = {
            **{k: _round(v) for k, v in result["scalars"].items()},
            "per_class": {key: [_round(v) for v in details[key].tolist()]
                          for key in ("precision", "recall", "f1", "support")},
            "confusion_matrix": details["confusion_matrix"].tolist(),
            "calibration": None if details["calibration"] is None else {
                key: [_round(v) for v in np.asarray(values).tolist()]
                for key, values in details["calibration"].items()},
        }
    out = {"variant": variant, "classes": classes, "tta": tta, "sets": sets, "adaptation": None,
           "corruptions": None}
    if robustness is not None and robustness.adapt_bn:
        out["adaptation"] = {"batchnorm": robustness.batchnorm, "prior": robustness.prior}
    if robustness is not None and robustness.rows is not None:
        out["corruptions"] = {
            "images": robustness.images, "seed": robustness.seed, "tta": 0,
            "accuracy": _round(robustness.mean()),
            "accuracy_adapted": _round(robustness.mean("accuracy_adapted")),
            "rows": [{k: _round(v) for k, v in row.items()} for row in robustness.rows]}
    return out


def confusion_csv(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> str:
    """``actual,predicted`` rows of class names: what DVC's ``confusion`` template counts."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["actual", "predicted"])
    writer.writerows((classes[a], classes[p]) for a, p in zip(y.tolist(), pred.tolist(), strict=True))
    return buffer.getvalue()


def write_outputs(variant: str, info: modelinfo.ModelInfo, tta: int, results: dict[str, dict[str, Any]],
                  metrics_path: Path | str, out_dir: Path | str,
                  robustness: Robustness | None = None) -> None:
    """Write ``eval/<name>/`` as a whole (atomic directory), then ``metrics/<name>.json``."""
    with atomic.atomic_dir(out_dir) as tmp:
        atomic.write_json(tmp / "results.json", results_json(variant, info.classes, tta, results, robustness))
        atomic.write_text(tmp / "corruptions.csv", corruptions_csv(robustness.rows if robustness else None))
        (tmp / "confusion").mkdir()
        for name, result in results.items():
            item: EvalSet = result["set"]
            extra = {} if item.files is None else {"files": item.files}
            atomic.save_npz(tmp / "predictions" / f"{name}.npz", probs=result["probs"], y=item.y, **extra)
            if name in evalsets.CONFUSION_SETS and len(item.y):
                text = confusion_csv(item.y, result["probs"].argmax(axis=1), info.classes)
                atomic.write_text(tmp / "confusion" / f"{name}.csv", text)
    atomic.write_json(metrics_path, metrics_json(results, robustness))


def run(variant: str, model_path: Path | str, prepared: Path | str, custom: Path | str,
        params: EvaluateParams, tta: int, metrics_path: Path | str, out_dir: Path | str,
        seed: int = 0) -> dict[str, Any]:
    """Evaluate ``variant`` and write its outputs; returns the metrics JSON content.

    ``seed`` (params.yaml's ``seed``) draws the corruption subset and the noise.
    """
    sets = load_sets(prepared, custom)
    model, info = inference.load(model_path)  # a corrupt file or a sidecar of another model: one line
    results = evaluate_sets(model, info, sets, params, tta)
    robustness = evaluate_robustness(model, info, sets, params, tta, seed, results)
    write_outputs(variant, info, tta, results, metrics_path, out_dir, robustness)
    return metrics_json(results, robustness)


def evaluate_robustness(model: Any, info: modelinfo.ModelInfo, sets: list[EvalSet], params: EvaluateParams,
                        tta: int, seed: int, results: dict[str, dict[str, Any]]) -> Robustness:
    """Add the adapted custom sets to ``results``; measure the corruption table (see the docstring)."""
    adapter = make_adapter(model, params)
    robustness = Robustness(params.adapt_bn, adapt.has_batchnorm(model), params.adapt_prior)
    if adapter is not None:
        results.update(evaluate_adapted(adapter, info, sets, params, tta))
    if params.corruptions:
        test = next(item for item in sets if item.name == evalsets.TEST)
        robustness.rows = evaluate_corruptions(model, adapter, info, test, params, seed)
        robustness.images, robustness.seed = robustness.rows[0]["n"], seed
    return robustness


def _round(value: Any) -> Any:
    """Floats rounded to ``DECIMALS``; NaN (undefined) as null; everything else unchanged."""
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else round(float(value), DECIMALS)
    if isinstance(value, np.integer):
        return int(value)
    return value
