"""The on-disk layout of the data sets that flow between stages: one place, so stages agree.

A *split* is one ``.npz`` file with ``x`` (uint8, N x H x W x C) and ``y`` (int64 class indices),
plus optional extra arrays (``y_onehot`` float32 in prepared splits, ``files`` in custom sets).
Training reads the prepared splits' ``y_onehot`` (``onehot_labels``: one-hot encoding is the
prepare step's); evaluation computes its metrics from the integer ``y``.
A data directory holds its splits and ``meta.json`` (data set name, class names, image shape).

    data/interim/   train.npz test.npz meta.json                          (ingest)
    data/prepared/  train.npz val.npz test.npz meta.json normalization.json (prepare)
    data/custom_sets/ unfiltered.npz filtered.npz sweep_<divisor>.npz ...  (custom; cifar_dvc.evalsets)

Reads and writes only the paths it is given, writes atomically.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from cifar_dvc import atomic
from cifar_dvc.errors import DataError

META_FILE = "meta.json"


@dataclasses.dataclass
class Split:
    """Images and labels of one split; ``extra`` holds any other arrays of the file."""

    x: np.ndarray
    y: np.ndarray
    extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)


@dataclasses.dataclass
class Meta:
    """What every consumer needs to know about a data set besides its arrays."""

    dataset: str
    classes: list[str]
    image_shape: tuple[int, int, int]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def save_split(path: Path | str, x: np.ndarray, y: np.ndarray, **extra: np.ndarray) -> None:
    """Write one split atomically, checking the dtypes of the contract."""
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"{path}: x must be uint8 NHWC, got {x.dtype} with shape {x.shape}")
    if len(x) != len(y):
        raise ValueError(f"{path}: {len(x)} images but {len(y)} labels")
    atomic.save_npz(path, x=x, y=np.asarray(y, np.int64), **extra)


def load_split(path: Path | str) -> Split:
    """Read a split written by ``save_split``; a missing or malformed file is a DataError."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run the stage that makes it (`dvc repro`)") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{path}: expected arrays x and y, found {sorted(arrays)}")
    x, y = arrays.pop("x"), arrays.pop("y")
    return Split(x=x, y=y, extra=arrays)


def onehot_labels(split: Split, path: Path | str, num_classes: int) -> np.ndarray:
    """The ``y_onehot`` that ``prepare`` wrote into the split read from ``path``: float32 of shape
    (n, ``num_classes``) whose argmax is ``y``; anything else is a DataError naming the file."""
    onehot = split.extra.get("y_onehot")
    if onehot is None:
        raise DataError(f"{path}: no y_onehot labels; re-run prepare (`dvc repro prepare`)")
    expected = (len(split), num_classes)
    if onehot.dtype != np.float32 or onehot.shape != expected:
        raise DataError(f"{path}: y_onehot must be float32 of shape {expected}, "
                        f"got {onehot.dtype} of shape {onehot.shape}")
    if not np.array_equal(onehot.argmax(axis=1), split.y):
        raise DataError(f"{path}: y_onehot does not encode y (their argmax and labels differ); "
                        "re-run prepare (`dvc repro prepare`)")
    return onehot


def save_meta(directory: Path | str, meta: Meta) -> None:
    """Write ``meta.json`` into ``directory`` atomically."""
    atomic.write_json(Path(directory) / META_FILE, dataclasses.asdict(meta))


def load_meta(directory: Path | str) -> Meta:
    """Read ``meta.json`` from ``directory``."""
    path = Path(directory) / META_FILE
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
        return Meta(str(raw["dataset"]), [str(c) for c in raw["classes"]],
                    tuple(int(v) for v in raw["image_shape"]))  # type: ignore[arg-type]
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run `dvc repro` to make it") from None
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{path}: expected JSON with dataset, classes and image_shape") from None
