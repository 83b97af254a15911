"""Classification metrics from predicted probabilities, computed over a whole set at once.

Everything here is plain NumPy on ``probs`` (N x K float32, rows sum to 1) and integer labels
``y`` (N,), so it is easy to check by hand: the confusion matrix first, then every count-based
metric from it. Macro-F1 is computed from the confusion matrix of the whole set, not averaged over
batches (seed 002's Keras-metric F1 averaged per-batch values, which is not the F1 of the set).

- ``confusion_matrix``: rows = actual class, columns = predicted class.
- ``per_class``: precision, recall, F1 and support per class (0 where a ratio is undefined).
- ``f1_macro``: mean F1 over the classes that occur in the labels or the predictions (the
  scikit-learn convention; a class absent from both says nothing about the model).
- ``cross_entropy``: mean categorical cross-entropy, probabilities clipped to [1e-7, 1] as Keras does.
- ``top_k_accuracy``: label among the k most probable classes (reported when classes > k).
- ``expected_calibration_error``: |accuracy - confidence| over equal-width confidence bins,
  weighted by the share of images in each bin (Guo et al. 2017), and the per-bin table for a
  reliability diagram.
- ``summarize``: all of the above for one set; an empty set gives ``n: 0`` and nulls.

Reads and writes nothing. Used by ``cifar_dvc.evaluation.evaluate`` (``python -m stages.evaluate``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

EPSILON = 1e-7  # Keras' backend epsilon: the clip that keeps log(0) out of the loss


def confusion_matrix(y: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``num_classes`` x ``num_classes`` int64 counts; entry [a, p] = images of class a predicted p."""
    y = np.asarray(y, np.int64)
    pred = np.asarray(pred, np.int64)
    flat = np.bincount(y * num_classes + pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 (float64) and support (int64) per class from confusion matrix ``cm``."""
    cm = np.asarray(cm, np.int64)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    actual = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": cm.sum(axis=1)}


def f1_macro(cm: np.ndarray) -> float:
    """Mean F1 over classes present among the labels or the predictions of ``cm``."""
    cm = np.asarray(cm, np.int64)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    if not present.any():
        return float("nan")
    return float(per_class(cm)["f1"][present].mean())


def cross_entropy(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean categorical cross-entropy of integer labels ``y`` under ``probs``."""
    p = probs[np.arange(len(y)), np.asarray(y, np.int64)].astype(np.float64)
    return float(-np.log(np.clip(p, EPSILON, 1.0)).mean())


def top_k_accuracy(probs: np.ndarray, y: np.ndarray, k: int) -> float:
    """Share of images whose label is among the ``k`` most probable classes."""
    top = np.argpartition(-probs, kth=k - 1, axis=1)[:, :k]
    return float((top == np.asarray(y)[:, None]).any(axis=1).mean())


def calibration_bins(probs: np.ndarray, y: np.ndarray, bins: int) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: count, mean confidence and accuracy (NaN where empty).

    Bin ``i`` holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 (impossible
    for a softmax) would go to the first bin.
    """
    confidence = probs.max(axis=1).astype(np.float64)
    correct = (probs.argmax(axis=1) == np.asarray(y)).astype(np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    correct_sum = np.bincount(index, weights=correct, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
        accuracy = np.where(count > 0, correct_sum / np.maximum(count, 1), np.nan)
    edges = np.linspace(0.0, 1.0, bins + 1)
    return {"lower": edges[:-1], "upper": edges[1:], "count": count,
            "confidence": mean_conf, "accuracy": accuracy}


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Sum over bins of |accuracy - confidence| weighted by the bin's share of the images."""
    table = calibration_bins(probs, y, bins)
    used = table["count"] > 0
    gaps = np.abs(table["accuracy"][used] - table["confidence"][used])
    return float((gaps * table["count"][used]).sum() / len(y))


def summarize(probs: np.ndarray, y: np.ndarray, num_classes: int, *, top_k: int = 5,
              ece_bins: int = 15) -> dict[str, Any]:
    """Scalar metrics and per-class details of one set (``n: 0`` and nulls when it is empty).

    The returned ``scalars`` go to ``metrics/<name>.json``; ``details`` (per-class arrays,
    confusion matrix, calibration table) go to ``eval/<name>/``.
    """
    y = np.asarray(y, np.int64)
    n = len(y)
    with_top_k = num_classes > top_k
    if n == 0:
        scalars: dict[str, Any] = {"n": 0, "accuracy": None, "loss": None, "f1_macro": None, "ece": None}
        if with_top_k:
            scalars[f"top{top_k}_accuracy"] = None
        cm = np.zeros((num_classes, num_classes), np.int64)
        details = {"confusion_matrix": cm, **per_class(cm), "calibration": None}
        return {"scalars": scalars, "details": details}
    if probs.shape != (n, num_classes):
        raise ValueError(f"probabilities of shape {probs.shape} for {n} labels and {num_classes} classes")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must be in 0..{num_classes - 1}, got {y.min()}..{y.max()}")
    pred = probs.argmax(axis=1)
    cm = confusion_matrix(y, pred, num_classes)
    scalars = {
        "n": n,
        "accuracy": float(np.trace(cm) / n),
        "loss": cross_entropy(probs, y),
        "f1_macro": f1_macro(cm),
        "ece": expected_calibration_error(probs, y, ece_bins),
    }
    if with_top_k:
        scalars[f"top{top_k}_accuracy"] = top_k_accuracy(probs, y, top_k)
    details = {"confusion_matrix": cm, **per_class(cm), "calibration": calibration_bins(probs, y, ece_bins)}
    return {"scalars": scalars, "details": details}
