"""The ``prepare`` stage's logic: stratified seeded subsets and validation splits, one-hot labels, stats.

``prepare_dataset`` turns the ingested train/test splits (``data/interim``) into the prepared
train/val/test splits (``data/prepared``): an optional stratified subset of the training data
(``data.train_subset``), a stratified validation split (``prepare.validation`` a fraction, or
``test`` to validate on the test set as the seeds did), one-hot float32 labels (``y_onehot``, the
labels training reads, checked by ``cifar_dvc.artifacts.onehot_labels``; evaluation keeps the
integer ``y`` for its metrics), and the normalization statistics of the final training split
(``cifar_dvc.normalization``). Images stay uint8: models normalize on the fly with the saved
statistics, so no float copy of the data exists.

Reads and writes the directories it is given (``write_prepared``). Run by ``stages/prepare.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from cifar_dvc import artifacts
from cifar_dvc.datasets.params import PrepareParams
from cifar_dvc.errors import DataError, ParamsError
from cifar_dvc.normalization import STATS_FILE, NormStats, compute_stats, save_stats


@dataclasses.dataclass
class Prepared:
    """The prepared data set: three splits, their meta data and the normalization statistics."""

    train: artifacts.Split
    val: artifacts.Split
    test: artifacts.Split
    meta: artifacts.Meta
    stats: NormStats


def stratified_take(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n`` elements of ``y``, each class represented in proportion.

    Per-class quotas are ``n * share`` rounded by largest remainder (they sum to exactly ``n``);
    within a class the elements are a uniform random choice.
    """
    if not 0 <= n <= len(y):
        raise ValueError(f"cannot take {n} of {len(y)} elements")
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * (n / len(y)) if len(y) else counts.astype(float)
    quota = np.floor(exact).astype(np.int64)
    remainder = n - int(quota.sum())
    if remainder:
        # Ties broken by class order so that the result does not depend on the sort's stability.
        order = np.lexsort((classes, -(exact - quota)))
        quota[order[:remainder]] += 1
    chosen = [rng.choice(np.flatnonzero(y == c), size=q, replace=False)
              for c, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def one_hot(y: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 one-hot rows of the int labels ``y``."""
    out = np.zeros((len(y), num_classes), np.float32)
    out[np.arange(len(y)), y] = 1.0
    return out


def prepare_dataset(train: artifacts.Split, test: artifacts.Split, meta: artifacts.Meta,
                    params: PrepareParams, train_subset: int | None, seed: int) -> Prepared:
    """Subset, split, one-hot and compute normalization statistics (see the module docstring)."""
    # Separate streams: changing the validation fraction does not change which subset is taken.
    rng_subset = np.random.default_rng([seed, 201])
    rng_val = np.random.default_rng([seed, 202])
    x, y = train.x, train.y
    if train_subset is not None:
        if train_subset > len(y):
            raise ParamsError(f"data.train_subset: {train_subset} exceeds the {len(y)} training images")
        keep = stratified_take(y, train_subset, rng_subset)
        x, y = x[keep], y[keep]
    if params.validation == "test":
        val_x, val_y = test.x, test.y
    else:
        n_val = round(float(params.validation) * len(y))
        if n_val < 1 or n_val >= len(y):
            raise ParamsError(f"prepare.validation: {params.validation} of {len(y)} training images "
                              f"leaves an empty training or validation split")
        is_val = np.zeros(len(y), bool)
        is_val[stratified_take(y, n_val, rng_val)] = True
        val_x, val_y = x[is_val], y[is_val]
        x, y = x[~is_val], y[~is_val]
    if len(y) == 0:
        raise DataError("the training split is empty")
    k = meta.num_classes
    splits = [artifacts.Split(sx, sy, {"y_onehot": one_hot(sy, k)})
              for sx, sy in ((x, y), (val_x, val_y), (test.x, test.y))]
    stats = compute_stats(x, params.normalize)
    return Prepared(*splits, meta=meta, stats=stats)


def write_prepared(out_dir: Path | str, prepared: Prepared) -> None:
    """Write ``train/val/test.npz``, ``meta.json`` and ``normalization.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    for name in ("train", "val", "test"):
        split: artifacts.Split = getattr(prepared, name)
        artifacts.save_split(out_dir / f"{name}.npz", split.x, split.y, **split.extra)
    artifacts.save_meta(out_dir, prepared.meta)
    save_stats(out_dir / STATS_FILE, prepared.stats)


def prepare_dir(interim_dir: Path | str, out_dir: Path | str, params: PrepareParams,
                train_subset: int | None, seed: int) -> Prepared:
    """Read ``data/interim``-style ``interim_dir``, prepare it and write it to ``out_dir``."""
    interim_dir = Path(interim_dir)
    meta = artifacts.load_meta(interim_dir)
    train = artifacts.load_split(interim_dir / "train.npz")
    test = artifacts.load_split(interim_dir / "test.npz")
    for name, split in (("train", train), ("test", test)):
        if split.x.dtype != np.uint8 or split.x.shape[1:] != tuple(meta.image_shape):
            raise DataError(f"{interim_dir / (name + '.npz')}: expected uint8 images of shape "
                            f"{tuple(meta.image_shape)}, got {split.x.dtype} {split.x.shape[1:]}")
        if len(split.y) and (split.y.min() < 0 or split.y.max() >= meta.num_classes):
            raise DataError(f"{interim_dir / (name + '.npz')}: labels outside 0..{meta.num_classes - 1}")
    prepared = prepare_dataset(train, test, meta, params, train_subset, seed)
    write_prepared(out_dir, prepared)
    return prepared
