"""Evaluate one trained variant on every set: validation, test, the custom sets and the blur sweep.

For each set the model's probabilities come from one compiled, batched ``model.predict`` over a
``tf.data`` pipeline that normalizes the uint8 images on the fly (with the statistics stored in
the model's sidecar, i.e. exactly those it was trained with); with test-time augmentation
(``variants.<name>.tta``: 1 mirror, 2 mirror and shifts) the views' probabilities are averaged.

Robustness (issue 18), both off-able in ``params.yaml``:

- ``evaluate.adapt_bn``: each custom set is evaluated a second time by a copy of the model whose
  BatchNorm statistics were re-estimated on that set's own images (``cifar_dvc.evaluation.adapt``;
  no labels; the model file is only read), as ``custom_adapted`` and ``custom_filtered_adapted``.
  A variant without BatchNorm reports them as null.
- ``evaluate.corruptions``: a seeded subset of ``evaluate.corruption_images`` test images under
  each corruption of ``cifar_dvc.evaluation.corruptions`` at severities 1..3, plus the clean
  subset (severity 0), each with and (``adapt_bn``) without adaptation on that very set. These run
  without test-time augmentation whatever ``variants.<name>.tta`` says: TTA would multiply their
  cost by up to 6 (``fast``), and the clean point of each curve is computed the same way.

Writes (through ``write_outputs``):

- ``metrics/<name>.json``: scalars only, diff-friendly (``dvc metrics diff``): ``validation``,
  ``test``, ``custom``, ``custom_filtered`` and ``custom_sweep.<divisor>``, each with ``n``,
  ``accuracy``, ``loss``, ``f1_macro``, ``ece`` (and ``top5_accuracy`` for more than 5 classes);
  an empty set has ``n: 0`` and nulls. With ``adapt_bn``: ``custom_adapted`` and
  ``custom_filtered_adapted``, each ``{accuracy}`` alone; with corruptions: ``corruptions``
  ``{accuracy, accuracy_adapted}``, the mean over corruptions and severities 1..3 (one number
  each, so ``dvc metrics diff`` stays readable; the rest is in ``eval/<name>/``).
- ``eval/<name>/results.json``: the same plus per-class precision, recall, F1, support, the
  confusion matrix and the calibration table of each set.
- ``eval/<name>/predictions/<set>.npz``: ``probs`` (float32), ``y`` (and ``files`` for photos).
- ``eval/<name>/confusion/<set>.csv``: ``actual,predicted`` class names, one row per image, the
  input of DVC's ``confusion`` template (test and the custom sets; omitted when a set is empty).
- ``eval/<name>/corruptions.csv``: ``corruption,severity,n,accuracy,accuracy_adapted``, one row
  per corruption and severity and a ``none,0`` row for the clean subset (only the header when
  the suite is off); the same table, the subset size and seed under ``corruptions`` in results.json.

Run by ``python -m stages.evaluate --variant <name> ...`` (``dvc repro evaluate@<name>``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from pathlib import Path
from typing import Any

import numpy as np

from cifar_dvc import artifacts, atomic, inference, modelinfo
from cifar_dvc.errors import DataError
from cifar_dvc.evaluation import adapt, corruptions, metrics
from cifar_dvc.evaluation.params import EvaluateParams
from cifar_dvc.normalization import NormStats, normalize

# Set name in the metrics -> file of data/prepared (validation, test) or data/custom_sets.
PREPARED_SETS = {"validation": "val.npz", "test": "test.npz"}
CUSTOM_SETS = {"custom": "unfiltered.npz", "custom_filtered": "filtered.npz"}
CONFUSION_SETS = ("test", "custom", "custom_filtered")  # DVC confusion plots (validation: in results.json)
SWEEP_FILE = re.compile(r"^sweep_(?P<divisor>[0-9.]+)\.npz$")
DECIMALS = 6  # rounding of the scalars in metrics/<name>.json: stable diffs, no float noise
ADAPTED = "_adapted"  # suffix of a custom set evaluated with BatchNorm adaptation
CLEAN = "none"  # corruption name of the clean subset (severity 0) in the corruption table
CORRUPTION_COLUMNS = ("corruption", "severity", "n", "accuracy", "accuracy_adapted")


@dataclasses.dataclass
class EvalSet:
    """One set to evaluate: uint8 images, labels, and photo file names when there are any."""

    name: str  # validation, test, custom, custom_filtered or sweep_<divisor>
    x: np.ndarray
    y: np.ndarray
    files: np.ndarray | None = None


def load_sets(prepared: Path | str, custom: Path | str) -> list[EvalSet]:
    """Every set of ``data/prepared`` and ``data/custom_sets``, the blur sweep in divisor order."""
    prepared, custom = Path(prepared), Path(custom)
    sets = []
    for name, file in PREPARED_SETS.items():
        split = artifacts.load_split(prepared / file)
        sets.append(EvalSet(name, split.x, split.y))
    sweep = []
    if custom.is_dir():
        for path in custom.iterdir():
            match = SWEEP_FILE.match(path.name)
            if match:
                sweep.append((float(match["divisor"]), path))
    named = [(name, custom / file) for name, file in CUSTOM_SETS.items()]
    named += [(path.stem, path) for _, path in sorted(sweep)]
    for name, path in named:
        split = artifacts.load_split(path)
        sets.append(EvalSet(name, split.x, split.y, split.extra.get("files")))
    return sets


def load_model(path: Path | str) -> Any:
    """The saved Keras model (the project's custom layers registered first), uncompiled."""
    import keras

    import cifar_dvc.models  # noqa: F401  (registers the custom layers used by saved models)

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model not found; it is written by `dvc repro train@<name>`")
    try:
        return keras.saving.load_model(path, compile=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a loadable Keras model ({exc})") from None


def predict(model: Any, x: np.ndarray, stats: NormStats, batch_size: int, tta: int = 0) -> np.ndarray:
    """Class probabilities (N x K float32) of uint8 images ``x``, batched, normalized on the fly.

    ``tta`` is the test-time augmentation level of ``cifar_dvc.training.data.tta_views``
    (0 none, 1 image + mirror, 2 also mirrored 1-pixel shifts): the views' probabilities are averaged.
    """
    import tensorflow as tf

    from cifar_dvc.training.data import tta_views, tta_weights

    def pipeline(view: int) -> Any:
        data = tf.data.Dataset.from_tensor_slices(x).batch(batch_size)

        def prepare(batch: Any) -> Any:
            return tta_views(normalize(tf.cast(batch, tf.float32), stats), tta)[view][1]

        return data.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    weights = tta_weights(tta)
    probs = sum(w * model.predict(pipeline(i), verbose=0) for i, w in enumerate(weights))
    return np.asarray(probs, np.float32)


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
            probs = predict(model, item.x, info.normalization, params.batch_size, tta)
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
    """``custom_adapted`` and ``custom_filtered_adapted``: each custom set, statistics re-estimated on it.

    Adapted on the set's own images (the un-augmented ones; the TTA views are then predicted by
    the adapted copy). An empty set stays empty (``n: 0``, nulls).
    """
    out = {}
    for item in sets:
        if item.name not in CUSTOM_SETS:
            continue
        model = adapter.reset()
        if len(item.y):
            model = adapter.adapt(item.x, info.normalization, params.adapt_prior, params.batch_size)
        renamed = EvalSet(item.name + ADAPTED, item.x, item.y, item.files)
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
        return float((predict(net, images, stats, params.batch_size).argmax(axis=1) == y).mean())

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
    """The scalars of ``metrics/<name>.json``: one entry per set, the sweep under ``custom_sweep``;
    the adapted custom sets' accuracy alone and the corruption means (see the module docstring)."""
    out: dict[str, Any] = {}
    for name, result in results.items():
        scalars = {k: _round(v) for k, v in result["scalars"].items()}
        if name.startswith("sweep_"):
            out.setdefault("custom_sweep", {})[name.removeprefix("sweep_")] = scalars
        elif name.endswith(ADAPTED):
            out[name] = {"accuracy": scalars["accuracy"]}
        else:
            out[name] = scalars
    if robustness is not None and robustness.adapt_bn and not robustness.batchnorm:
        out.update({name + ADAPTED: {"accuracy": None} for name in CUSTOM_SETS})  # no BatchNorm: null
    if robustness is not None and robustness.rows is not None:
        out["corruptions"] = {"accuracy": _round(robustness.mean())}
        if robustness.adapt_bn:
            out["corruptions"]["accuracy_adapted"] = _round(robustness.mean("accuracy_adapted"))
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
            if name in CONFUSION_SETS and len(item.y):
                text = confusion_csv(item.y, result["probs"].argmax(axis=1), info.classes)
                atomic.write_text(tmp / "confusion" / f"{name}.csv", text)
    atomic.write_json(metrics_path, metrics_json(results, robustness))


def run(variant: str, model_path: Path | str, prepared: Path | str, custom: Path | str,
        params: EvaluateParams, tta: int, metrics_path: Path | str, out_dir: Path | str,
        seed: int = 0) -> dict[str, Any]:
    """Evaluate ``variant`` and write its outputs; returns the metrics JSON content.

    ``seed`` (params.yaml's ``seed``) draws the corruption subset and the noise.
    """
    info = modelinfo.load_info(model_path)
    sets = load_sets(prepared, custom)
    model = inference.load_model(model_path)  # any corrupt .keras file: one DataError line
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
        test = next(item for item in sets if item.name == "test")
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
