"""Occlusion maps: which regions of a model's input lower its predicted class's probability most when covered.

The method of Zeiler & Fergus (ECCV 2014, "Visualizing and understanding convolutional networks"):
slide a patch of one flat colour over the (32x32) model input, classify every occluded copy, and
record how much the probability of the class predicted for the untouched image drops. All copies
and the untouched image go through the model in **one** batched call (``predict``), so a map costs
one model call of ``1 + rows x cols`` images (50 for 32x32, patch 8, stride 4), never one per patch.

``occlusion_map`` works on any ``predict`` callable (uint8 (N, H, W, C) -> probabilities (N, K)),
which is how the web demo passes ``Predictor.probabilities``; ``pixel_map`` spreads the small
per-patch array over the input's pixels (what the page draws), and ``square_region`` says where
the model's square input lies in the original photo (``cifar_dvc.images.make_square``'s geometry),
so the map can be laid over the photo too.

Pure NumPy: reads and writes nothing. Used by ``cifar_dvc.serve.app``
(``POST /api/predict?occlusion=1`` of ``cifar-dvc-serve``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

PATCH = 8  # px of the 32x32 input: a quarter of its side, about one CIFAR object part
STRIDE = 4  # half the patch: overlapping positions, a 7x7 map for 32x32 inputs


@dataclasses.dataclass(frozen=True)
class Occlusion:
    """An occlusion map: ``drop[i, j]`` is the probability lost when patch (i, j) is covered."""

    target: int  # the class index whose probability is measured (the untouched image's top class)
    probability: float  # its probability on the untouched image
    drop: np.ndarray  # float32 (rows, cols): probability(untouched) - probability(patch covered)
    positions: tuple[int, ...]  # top (and left) pixel of each patch row (and column)
    patch: int  # side of the square patch, in input pixels
    stride: int
    fill: tuple[int, ...]  # the patch colour, one uint8 value per channel

    def to_json(self) -> dict[str, Any]:
        """The map as plain JSON values (what the API returns)."""
        return {
            "class_index": self.target,
            "probability": round(self.probability, 6),
            "patch": self.patch,
            "stride": self.stride,
            "positions": list(self.positions),
            "fill": list(self.fill),
            "drop": [[round(float(v), 6) for v in row] for row in self.drop],
        }


def patch_positions(size: int, patch: int, stride: int) -> tuple[int, ...]:
    """Top-left offsets of the patches along one side; the last patch always ends at the edge."""
    if size < 1 or not 1 <= patch <= size or stride < 1:
        raise ValueError(f"need 1 <= patch <= size and stride >= 1, got size {size}, patch {patch}, "
                         f"stride {stride}")
    positions = list(range(0, size - patch + 1, stride))
    if positions[-1] != size - patch:  # otherwise a stride that does not divide evenly skips the edge
        positions.append(size - patch)
    return tuple(positions)


def occluded_batch(image: np.ndarray, patch: int = PATCH, stride: int = STRIDE,
                   fill: tuple[int, ...] | None = None,
                   ) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]]:
    """The untouched image followed by every occluded copy (row-major), the positions and the fill.

    ``image`` is uint8 (H, W, C) with H == W. ``fill`` defaults to the image's own mean colour: a
    patch of it removes the region's detail without adding a colour the photo does not have (a
    fixed grey would itself look like an object part on a dark or bright photo).
    """
    if image.ndim != 3 or image.shape[0] != image.shape[1] or image.dtype != np.uint8:
        raise ValueError(f"expected a square uint8 (H, W, C) image, got {image.dtype} {image.shape}")
    size, channels = image.shape[0], image.shape[2]
    positions = patch_positions(size, patch, stride)
    if fill is None:
        fill = tuple(int(v) for v in np.rint(image.reshape(-1, channels).mean(axis=0)))
    if len(fill) != channels:
        raise ValueError(f"fill has {len(fill)} values for {channels} channels")
    colour = np.asarray(fill, dtype=np.uint8)
    batch = np.repeat(image[None], 1 + len(positions) ** 2, axis=0)
    k = 1
    for top in positions:
        for left in positions:
            batch[k, top:top + patch, left:left + patch] = colour
            k += 1
    return batch, positions, fill


def occlusion_map(image: np.ndarray, predict: Callable[[np.ndarray], np.ndarray], patch: int = PATCH,
                  stride: int = STRIDE, fill: tuple[int, ...] | None = None,
                  target: int | None = None) -> Occlusion:
    """The occlusion map of ``image`` for ``target`` (default: its top class), in one ``predict`` call.

    The untouched image is classified in the same batch as its occluded copies, so the baseline
    is exactly what the model says in that call (whatever test-time augmentation it applies).
    """
    batch, positions, fill = occluded_batch(image, patch, stride, fill)
    probs = np.asarray(predict(batch), dtype=np.float32)
    if probs.ndim != 2 or probs.shape[0] != len(batch):
        raise ValueError(f"predict returned shape {probs.shape} for a batch of {len(batch)}")
    if target is None:
        target = int(np.argmax(probs[0]))
    base = float(probs[0, target])
    n = len(positions)
    drop = (base - probs[1:, target]).reshape(n, n).astype(np.float32)
    return Occlusion(target, base, drop, positions, patch, stride, fill)


def pixel_map(occlusion: Occlusion, size: int) -> np.ndarray:
    """float32 (size, size): each pixel's mean drop over the patches that cover it (the page's overlay)."""
    total = np.zeros((size, size), np.float64)
    count = np.zeros((size, size), np.int64)
    p = occlusion.patch
    for i, top in enumerate(occlusion.positions):
        for j, left in enumerate(occlusion.positions):
            total[top:top + p, left:left + p] += occlusion.drop[i, j]
            count[top:top + p, left:left + p] += 1
    return (total / np.maximum(count, 1)).astype(np.float32)


def square_region(width: int, height: int, square: str) -> dict[str, int]:
    """Where the model's square input lies in a ``width`` x ``height`` photo, in photo pixels.

    ``left`` and ``top`` of the square and its ``side``, as ``cifar_dvc.images.make_square``
    makes it: the centre square for ``crop``; for ``pad`` the square is larger than the photo,
    so ``left`` or ``top`` is negative (the padding lies outside the photo).
    """
    if square == "crop":
        side = min(width, height)
        return {"left": (width - side) // 2, "top": (height - side) // 2, "side": side}
    if square == "pad":
        side = max(width, height)
        return {"left": -((side - width) // 2), "top": -((side - height) // 2), "side": side}
    raise ValueError(f"square must be crop or pad, got {square!r}")
