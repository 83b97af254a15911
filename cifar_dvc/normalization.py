"""Input normalization shared by every consumer of images: prepare, train, custom, evaluate, serve.

``prepare`` computes the statistics once from the training split and saves them as
``normalization.json`` beside the prepared data; everything else loads that file and calls
``normalize``, which uses only ``*`` and ``-`` so the same function works on NumPy arrays and on
TensorFlow tensors inside a ``tf.data`` pipeline. Images stay uint8 on disk (4x smaller) and are
normalized on the fly, always to float32.

- ``scale``: x / 255, values in [0, 1].
- ``standardize``: (x / 255 - mean) / std per channel, mean and std of the training split.

Reads and writes ``normalization.json`` through ``load_stats``/``save_stats``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cifar_dvc import atomic
from cifar_dvc.errors import DataError

Method = Literal["scale", "standardize"]
STATS_FILE = "normalization.json"


@dataclasses.dataclass(frozen=True)
class NormStats:
    """Per-channel affine normalization: ``(x / 255 - mean) / std``."""

    method: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def scale(self) -> np.ndarray:
        """Multiplier applied to raw 0..255 values, per channel, float32."""
        return (1.0 / (255.0 * np.asarray(self.std, np.float64))).astype(np.float32)

    @property
    def offset(self) -> np.ndarray:
        """Subtracted after scaling, per channel, float32."""
        return (np.asarray(self.mean, np.float64) / np.asarray(self.std, np.float64)).astype(np.float32)


def compute_stats(x: np.ndarray, method: str, chunk: int = 8192) -> NormStats:
    """Statistics of uint8 NHWC images ``x`` for ``method``; float64 accumulation, chunked."""
    channels = x.shape[-1]
    if method == "scale":
        return NormStats("scale", (0.0,) * channels, (1.0,) * channels)
    if method != "standardize":
        raise ValueError(f"unknown normalization {method!r}; expected scale | standardize")
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    count = 0
    for start in range(0, len(x), chunk):
        block = x[start:start + chunk].reshape(-1, channels).astype(np.float64) / 255.0
        total += block.sum(axis=0)
        total_sq += np.square(block).sum(axis=0)
        count += len(block)
    if count == 0:
        raise DataError("cannot standardize: the training split is empty")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    std = np.where(std < 1e-6, 1.0, std)  # a constant channel must not divide by zero
    return NormStats("standardize", tuple(map(float, mean)), tuple(map(float, std)))


def normalize(x: Any, stats: NormStats) -> Any:
    """Normalize float32 images (NumPy array or tf.Tensor, values 0..255) per ``stats``.

    NumPy uint8 input is cast to float32 here; a tf.Tensor must be cast by the caller
    (``tf.cast(x, tf.float32)``) because this module does not import TensorFlow.
    """
    if isinstance(x, np.ndarray) and x.dtype != np.float32:
        x = x.astype(np.float32)
    return x * stats.scale - stats.offset


def save_stats(path: Path | str, stats: NormStats) -> None:
    """Write ``stats`` as JSON atomically."""
    atomic.write_json(path, dataclasses.asdict(stats))


def load_stats(path: Path | str) -> NormStats:
    """Read stats written by ``save_stats``; a missing or malformed file is a DataError."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
        stats = NormStats(str(raw["method"]), tuple(map(float, raw["mean"])), tuple(map(float, raw["std"])))
    except FileNotFoundError:
        raise DataError(f"{path}: normalization statistics not found; run `dvc repro prepare`") from None
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{path}: expected JSON with method, mean and std") from None
    if len(stats.mean) != len(stats.std) or any(s <= 0 for s in stats.std):
        raise DataError(f"{path}: mean and std must have one positive value per channel")
    return stats
