"""Evaluate one trained variant on every set: validation, test, the custom sets and the blur sweep.

For each set the model's probabilities come from one compiled, batched ``model.predict`` over a
``tf.data`` pipeline that normalizes the uint8 images on the fly (with the statistics stored in
the model's sidecar, i.e. exactly those it was trained with); with test-time augmentation
(``variants.<name>.tta``: 1 mirror, 2 mirror and shifts) the views' probabilities are averaged.

Writes (through ``write_outputs``):

- ``metrics/<name>.json``: scalars only, diff-friendly (``dvc metrics diff``): ``validation``,
  ``test``, ``custom``, ``custom_filtered`` and ``custom_sweep.<divisor>``, each with ``n``,
  ``accuracy``, ``loss``, ``f1_macro``, ``ece`` (and ``top5_accuracy`` for more than 5 classes);
  an empty set has ``n: 0`` and nulls.
- ``eval/<name>/results.json``: the same plus per-class precision, recall, F1, support, the
  confusion matrix and the calibration table of each set.
- ``eval/<name>/predictions/<set>.npz``: ``probs`` (float32), ``y`` (and ``files`` for photos).
- ``eval/<name>/confusion/<set>.csv``: ``actual,predicted`` class names, one row per image, the
  input of DVC's ``confusion`` template (test and the custom sets; omitted when a set is empty).

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

from cifar_dvc import artifacts, atomic, modelinfo
from cifar_dvc.errors import DataError
from cifar_dvc.evaluation import metrics
from cifar_dvc.evaluation.params import EvaluateParams
from cifar_dvc.normalization import NormStats, normalize

# Set name in the metrics -> file of data/prepared (validation, test) or data/custom_sets.
PREPARED_SETS = {"validation": "val.npz", "test": "test.npz"}
CUSTOM_SETS = {"custom": "unfiltered.npz", "custom_filtered": "filtered.npz"}
CONFUSION_SETS = ("test", "custom", "custom_filtered")  # DVC confusion plots (validation: in results.json)
SWEEP_FILE = re.compile(r"^sweep_(?P<divisor>[0-9.]+)\.npz$")
DECIMALS = 6  # rounding of the scalars in metrics/<name>.json: stable diffs, no float noise


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


def metrics_json(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The scalars of ``metrics/<name>.json``: one entry per set, the sweep under ``custom_sweep``."""
    out: dict[str, Any] = {}
    for name, result in results.items():
        scalars = {k: _round(v) for k, v in result["scalars"].items()}
        if name.startswith("sweep_"):
            out.setdefault("custom_sweep", {})[name.removeprefix("sweep_")] = scalars
        else:
            out[name] = scalars
    return out


def results_json(variant: str, classes: list[str], tta: int,
                 results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Everything of ``metrics_json`` plus the per-class arrays, confusion matrices, calibration."""
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
    return {"variant": variant, "classes": classes, "tta": tta, "sets": sets}


def confusion_csv(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> str:
    """``actual,predicted`` rows of class names: what DVC's ``confusion`` template counts."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["actual", "predicted"])
    writer.writerows((classes[a], classes[p]) for a, p in zip(y.tolist(), pred.tolist(), strict=True))
    return buffer.getvalue()


def write_outputs(variant: str, info: modelinfo.ModelInfo, tta: int, results: dict[str, dict[str, Any]],
                  metrics_path: Path | str, out_dir: Path | str) -> None:
    """Write ``eval/<name>/`` as a whole (atomic directory), then ``metrics/<name>.json``."""
    with atomic.atomic_dir(out_dir) as tmp:
        atomic.write_json(tmp / "results.json", results_json(variant, info.classes, tta, results))
        (tmp / "confusion").mkdir()
        for name, result in results.items():
            item: EvalSet = result["set"]
            extra = {} if item.files is None else {"files": item.files}
            atomic.save_npz(tmp / "predictions" / f"{name}.npz", probs=result["probs"], y=item.y, **extra)
            if name in CONFUSION_SETS and len(item.y):
                text = confusion_csv(item.y, result["probs"].argmax(axis=1), info.classes)
                atomic.write_text(tmp / "confusion" / f"{name}.csv", text)
    atomic.write_json(metrics_path, metrics_json(results))


def run(variant: str, model_path: Path | str, prepared: Path | str, custom: Path | str,
        params: EvaluateParams, tta: int, metrics_path: Path | str, out_dir: Path | str) -> dict[str, Any]:
    """Evaluate ``variant`` and write its outputs; returns the metrics JSON content."""
    info = modelinfo.load_info(model_path)
    sets = load_sets(prepared, custom)
    model = load_model(model_path)
    results = evaluate_sets(model, info, sets, params, tta)
    write_outputs(variant, info, tta, results, metrics_path, out_dir)
    return metrics_json(results)


def _round(value: Any) -> Any:
    """Floats rounded to ``DECIMALS``; NaN (undefined) as null; everything else unchanged."""
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else round(float(value), DECIMALS)
    if isinstance(value, np.integer):
        return int(value)
    return value
