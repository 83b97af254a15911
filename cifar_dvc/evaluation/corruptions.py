"""A local corruption suite in the spirit of CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019).

Five of CIFAR-10-C's corruptions, generated from the test images (nothing downloaded), at
severities 1..3 taken from CIFAR-10-C's severities 1, 3 and 5 (its ``make_cifar_c.py``
constants, applied to 32x32 images in 0..1); severity 0 is the identity.

===================  =====================================================  ===================
name                 what it does                                           severity 1 / 2 / 3
===================  =====================================================  ===================
``gaussian_noise``   adds N(0, c^2) to every value (seeded)                 c = 0.04 / 0.08 / 0.10
``defocus_blur``     convolves each channel with an anti-aliased disk of    (0.3, 0.4) / (0.5, 0.6)
                     radius r, blurred by a 3x3 Gaussian of sigma a          / (1.5, 0.1)
``jpeg_compression`` JPEG round trip (Pillow, 4:2:0) at quality q           q = 80 / 58 / 40
``contrast``         (x - m) * c + m, m each image's per-channel mean       c = 0.75 / 0.4 / 0.15
``brightness``       HSV value + c (clipped), hue and saturation kept       c = 0.05 / 0.15 / 0.3
===================  =====================================================  ===================

Where CIFAR-10-C uses OpenCV and scikit-image, this is NumPy and Pillow: the disk kernel and its
Gaussian (``cv2.GaussianBlur``'s 3x3 kernel for that sigma) are built here and applied with
OpenCV's default border (reflect-101); brightness scales each pixel's RGB by ``V' / V``, which is
exactly what raising V in HSV and converting back does (a black pixel becomes grey ``V'``, as
skimage's zero saturation makes it). Results are rounded to uint8.

``corrupt(x, name, severity, seed)`` is deterministic: the only random corruption (noise) draws
from a generator seeded by ``(seed, corruption, severity)``, so each one gets its own stream and
adding a corruption does not change the others. ``subset`` picks the seeded test subset shared by
every corruption and severity (the same images throughout, so the curves compare like with like).

Reads and writes nothing. Used by ``cifar_dvc.evaluation.evaluate`` (``python -m stages.evaluate``)
and ``benchmarks/robustness.py``.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

SEVERITIES = (1, 2, 3)  # ours; CIFAR-10-C's 1, 3 and 5
NOISE = (0.04, 0.08, 0.10)
DEFOCUS = ((0.3, 0.4), (0.5, 0.6), (1.5, 0.1))  # (disk radius, anti-aliasing sigma), pixels
JPEG_QUALITY = (80, 58, 40)
CONTRAST = (0.75, 0.4, 0.15)
BRIGHTNESS = (0.05, 0.15, 0.3)


def _gaussian_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0.0, NOISE[severity - 1], x.shape).astype(np.float32)


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """CIFAR-10-C's ``disk``: a normalized 17x17 disk of ``radius``, blurred by a 3x3 Gaussian.

    ``cv2.GaussianBlur(ksize=(3, 3), sigmaX=alias_blur)`` on a kernel that is zero near its edges
    is a separable 3-tap convolution with taps exp(-d^2 / (2 sigma^2)), normalized. The result is
    trimmed to its non-zero rows and columns (the convolution is the same, and cheaper).
    """
    grid = np.arange(-8, 9)
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    taps = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * alias_blur ** 2))
    taps /= taps.sum()
    padded = np.pad(disk, 1)
    rows = sum(t * padded[i:i + 17, 1:18] for i, t in enumerate(taps))
    padded = np.pad(rows, 1)
    kernel = sum(t * padded[1:18, i:i + 17] for i, t in enumerate(taps))
    used_rows = np.flatnonzero(np.abs(kernel).sum(axis=1) > 1e-12)
    used_cols = np.flatnonzero(np.abs(kernel).sum(axis=0) > 1e-12)
    return kernel[used_rows[0]:used_rows[-1] + 1, used_cols[0]:used_cols[-1] + 1]


def _defocus_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    kernel = disk_kernel(*DEFOCUS[severity - 1]).astype(np.float32)
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    padded = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), mode="reflect")  # = OpenCV's reflect-101
    out = np.zeros_like(x)
    h, w = x.shape[1:3]
    for i in range(kh):
        for j in range(kw):
            out += kernel[i, j] * padded[:, i:i + h, j:j + w]
    return out


def _jpeg(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty_like(x)
    for k, image in enumerate(_to_uint8(x)):
        buffer = io.BytesIO()
        mode = "L" if image.shape[-1] == 1 else "RGB"
        Image.fromarray(image.squeeze(-1) if mode == "L" else image, mode).save(
            buffer, "JPEG", quality=JPEG_QUALITY[severity - 1])
        decoded = np.asarray(Image.open(buffer).convert(mode), np.float32) / 255.0
        out[k] = decoded.reshape(image.shape)
    return out


def _contrast(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    means = x.mean(axis=(1, 2), keepdims=True)
    return (x - means) * CONTRAST[severity - 1] + means


def _brightness(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    value = x.max(axis=-1, keepdims=True)  # HSV's V (a grey image's V is the pixel itself)
    raised = np.minimum(value + BRIGHTNESS[severity - 1], 1.0)
    scale = np.divide(raised, value, out=np.zeros_like(value), where=value > 0)
    # black pixels: zero saturation, so V' grey; the rest keep hue and saturation
    return np.where(value > 0, x * scale, raised)


CORRUPTIONS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "gaussian_noise": _gaussian_noise,
    "defocus_blur": _defocus_blur,
    "jpeg_compression": _jpeg,
    "contrast": _contrast,
    "brightness": _brightness,
}


def corrupt(x: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """uint8 images ``x`` (N, H, W, C) under corruption ``name`` at ``severity`` 0..3 (0: a copy)."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if severity not in (0, *SEVERITIES):
        raise ValueError(f"severity must be 0..{SEVERITIES[-1]}, got {severity}")
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"expected uint8 images (N, H, W, C), got {x.dtype} {x.shape}")
    if severity == 0:
        return x.copy()
    stream = list(CORRUPTIONS).index(name)
    rng = np.random.default_rng([seed, stream, severity])
    out = CORRUPTIONS[name](x.astype(np.float32) / 255.0, severity, rng)
    return _to_uint8(out)


def subset(n_images: int, size: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``min(size, n_images)`` test images drawn without replacement with ``seed``."""
    rng = np.random.default_rng([seed, len(CORRUPTIONS) + 1])  # a stream of its own
    if size >= n_images:
        return np.arange(n_images)
    return np.sort(rng.choice(n_images, size=size, replace=False))


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)

