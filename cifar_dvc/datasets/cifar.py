"""Reader of the official CIFAR-10 / CIFAR-100 python archives (and the synthetic set, same layout).

Each batch is a pickle (read with ``safe_pickle``) holding ``data``, an N x 3072 uint8 array of
channel-first rows (1024 red, 1024 green, 1024 blue values of a 32x32 image), and the labels as a
list of ints (``labels``; CIFAR-100: ``fine_labels`` and ``coarse_labels``). The class names come
from ``batches.meta`` / ``meta``. Everything is validated, and any problem is one DataError line
naming the member (``archive:member``) and what was wrong. The result is NHWC uint8.

Reads the archive it is given (tar members in memory, never extracted). Writes nothing.
Used by ``cifar_dvc.datasets.ingest`` (``stages/ingest.py``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from cifar_dvc.datasets import safe_pickle
from cifar_dvc.datasets.archive import read_members
from cifar_dvc.errors import DataError


@dataclasses.dataclass(frozen=True)
class Layout:
    """Member names and keys of one archive layout."""

    directory: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    names_key: str  # key of the class names in the meta member; {mode} = label_mode
    labels_key: str  # key of the labels in each batch
    image_side: int | None  # 32 for the official archives; None = as the meta's num_vis says


CIFAR10 = Layout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                 "batches.meta", "label_names", "labels", 32)
CIFAR100 = Layout("cifar-100-python", ("train",), ("test",), "meta", "{mode}_label_names",
                  "{mode}_labels", 32)
SYNTHETIC = dataclasses.replace(CIFAR10, image_side=None)


@dataclasses.dataclass
class Images:
    """Images (uint8 NHWC) and labels (int64) of one split."""

    x: np.ndarray
    y: np.ndarray


def read_archive(path: Path | str, layout: Layout, label_mode: str = "fine"
                 ) -> tuple[Images, Images, list[str]]:
    """Read and validate ``(train, test, class_names)`` from an archive in ``layout``."""
    path = Path(path)
    members = [f"{layout.directory}/{m}" for m in (*layout.train, *layout.test, layout.meta)]
    raw = read_members(path, members)

    meta_name = f"{layout.directory}/{layout.meta}"
    meta = _mapping(safe_pickle.loads(raw[meta_name], f"{path}:{meta_name}"), f"{path}:{meta_name}")
    names_key = layout.names_key.format(mode=label_mode)
    classes = _class_names(meta.get(names_key), f"{path}:{meta_name}", names_key)
    side = layout.image_side or _side_from_meta(meta, f"{path}:{meta_name}")

    def read(batch_names: tuple[str, ...]) -> Images:
        xs, ys = [], []
        for name in batch_names:
            member = f"{layout.directory}/{name}"
            where = f"{path}:{member}"
            batch = _mapping(safe_pickle.loads(raw.pop(member), where), where)  # pop: free as we go
            x, y = _batch_arrays(batch, layout.labels_key.format(mode=label_mode), side, len(classes), where)
            xs.append(to_nhwc(x, side))
            ys.append(y)
        return Images(np.concatenate(xs) if len(xs) > 1 else xs[0], np.concatenate(ys))

    train, test = read(layout.train), read(layout.test)
    for batches, split in ((layout.train, train), (layout.test, test)):
        absent = sorted(set(range(len(classes))) - set(np.unique(split.y).tolist()))
        if absent:
            raise DataError(f"{path}: {', '.join(batches)} hold no image of class {absent[0]} "
                            f"({classes[absent[0]]}); the archive is incomplete")
    return train, test, classes


def to_nhwc(rows: np.ndarray, side: int, chunk: int = 1024) -> np.ndarray:
    """CIFAR's channel-first rows (N x 3*side*side) as uint8 N x side x side x 3.

    Transposed in chunks of images: a whole-array transpose strides through memory and is several
    times slower on 50,000 images.
    """
    out = np.empty((len(rows), side, side, 3), np.uint8)
    planes = rows.reshape(len(rows), 3, side, side)
    for start in range(0, len(rows), chunk):
        out[start:start + chunk] = planes[start:start + chunk].transpose(0, 2, 3, 1)
    return out


def _mapping(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _class_names(value: Any, where: str, key: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: expected a non-empty list of class names under {key!r}")
    names = []
    for item in value:
        if isinstance(item, bytes):
            item = item.decode("utf-8", "replace")
        if not isinstance(item, str) or not item.strip():
            raise DataError(f"{where}: class names under {key!r} must be non-empty strings, got {item!r}")
        names.append(item.strip())
    if len(set(names)) != len(names):
        raise DataError(f"{where}: duplicate class names under {key!r}")
    return names


def _side_from_meta(meta: dict[str, Any], where: str) -> int:
    """Image side for the synthetic layout: ``num_vis`` = 3 * side * side."""
    num_vis = meta.get("num_vis")
    side = round((num_vis / 3) ** 0.5) if isinstance(num_vis, int) and num_vis > 0 else 0
    if side < 1 or 3 * side * side != num_vis:
        raise DataError(f"{where}: num_vis must be 3 * side * side, got {num_vis!r}")
    return side


def _batch_arrays(batch: dict[str, Any], labels_key: str, side: int, num_classes: int,
                  where: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(rows uint8 N x 3*side*side, labels int64)`` of one batch."""
    data = batch.get("data")
    row = 3 * side * side
    if not isinstance(data, np.ndarray):
        raise DataError(f"{where}: expected 'data' to be a numpy array, got {type(data).__name__}")
    if data.dtype != np.uint8:
        raise DataError(f"{where}: expected 'data' of dtype uint8, got {data.dtype}")
    if data.ndim != 2 or data.shape[1] != row:
        raise DataError(f"{where}: expected {row} values per row, got an array of shape {data.shape}")
    labels = batch.get(labels_key)
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise DataError(f"{where}: expected {labels_key!r} to be a list of integers")
    y = np.asarray(labels, dtype=np.int64)
    if len(y) != len(data):
        raise DataError(f"{where}: {len(data)} images but {len(y)} labels")
    if len(y) == 0:
        raise DataError(f"{where}: the batch is empty")
    if y.min() < 0 or y.max() >= num_classes:
        bad = int(y[(y < 0) | (y >= num_classes)][0])
        raise DataError(f"{where}: label {bad} out of range 0..{num_classes - 1}")
    return data, y
