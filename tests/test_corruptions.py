"""The corruption suite: identity at severity 0, seeded determinism, growing damage, hand-checked values."""

from __future__ import annotations

import typing

import numpy as np
import pytest

from cifar_dvc.evaluation import corruptions
from cifar_dvc.evaluation.params import Corruption

NAMES = list(corruptions.CORRUPTIONS)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Smooth random images (noise alone would hide a blur's effect less than real photos do)."""
    rng = np.random.default_rng(3)
    coarse = rng.integers(0, 256, (6, 8, 8, 3)).astype(np.float32)
    return np.clip(coarse.repeat(4, axis=1).repeat(4, axis=2) + rng.normal(0, 8, (6, 32, 32, 3)),
                   0, 255).astype(np.uint8)


def test_the_params_literal_lists_exactly_the_corruptions() -> None:
    assert list(typing.get_args(Corruption)) == NAMES
    assert NAMES == ["gaussian_noise", "defocus_blur", "jpeg_compression", "contrast", "brightness"]


@pytest.mark.parametrize("name", NAMES)
def test_severity_0_is_the_identity(name: str, images: np.ndarray) -> None:
    out = corruptions.corrupt(images, name, 0, seed=5)
    np.testing.assert_array_equal(out, images)
    assert out is not images and out.dtype == np.uint8


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_a_seed_and_damage_grows_with_severity(name: str, images: np.ndarray) -> None:
    errors = []
    for severity in corruptions.SEVERITIES:
        first = corruptions.corrupt(images, name, severity, seed=1)
        np.testing.assert_array_equal(first, corruptions.corrupt(images, name, severity, seed=1))
        assert first.dtype == np.uint8 and first.shape == images.shape
        errors.append(np.abs(first.astype(np.float64) - images).mean())
    assert errors[0] > 0 and errors[0] < errors[1] < errors[2], errors


def test_only_noise_depends_on_the_seed(images: np.ndarray) -> None:
    for name in NAMES:
        a = corruptions.corrupt(images, name, 2, seed=1)
        b = corruptions.corrupt(images, name, 2, seed=2)
        assert (name == "gaussian_noise") == (not np.array_equal(a, b)), name


def test_noise_has_the_stated_spread() -> None:
    grey = np.full((20, 32, 32, 3), 128, np.uint8)
    for severity, sigma in zip(corruptions.SEVERITIES, corruptions.NOISE, strict=True):
        out = corruptions.corrupt(grey, "gaussian_noise", severity, seed=0).astype(np.float64) / 255
        assert out.std() == pytest.approx(sigma, rel=0.03)
        assert out.mean() == pytest.approx(128 / 255, abs=0.002)


def test_contrast_and_brightness_by_hand() -> None:
    x = np.zeros((1, 2, 2, 3), np.uint8)
    x[0, 0, 0] = [100, 50, 0]  # V = 100/255; black elsewhere
    x[0, 1, 1] = [200, 200, 200]
    bright = corruptions.corrupt(x, "brightness", 2, seed=0)  # V + 0.15 (38.25 of 255)
    np.testing.assert_array_equal(bright[0, 0, 0], [138, 69, 0])  # x 138.25 / 100: hue, saturation kept
    np.testing.assert_array_equal(bright[0, 0, 1], [38] * 3)  # black: grey of value 0.15
    np.testing.assert_array_equal(bright[0, 1, 1], [238] * 3)
    top = corruptions.corrupt(x, "brightness", 3, seed=0)  # V + 0.3
    np.testing.assert_array_equal(top[0, 1, 1], [255] * 3)  # V clipped at 1
    flat = np.full((1, 4, 4, 3), 77, np.uint8)
    np.testing.assert_array_equal(corruptions.corrupt(flat, "contrast", 3, seed=0), flat)  # mean kept
    two = np.array([[[[0, 0, 0]], [[200, 200, 200]]]], np.uint8)  # mean 100, contrast 0.15
    np.testing.assert_array_equal(corruptions.corrupt(two, "contrast", 3, seed=0)[0, :, 0, 0], [85, 115])


def test_defocus_kernel_matches_opencv_by_hand() -> None:
    # radius 0.3: a one-pixel disk; cv2.GaussianBlur 3x3 with sigma 0.4: taps e^(-1/0.32) around 1
    kernel = corruptions.disk_kernel(0.3, 0.4)
    t = np.exp(-1 / (2 * 0.4 ** 2))
    taps = np.array([t, 1, t]) / (1 + 2 * t)
    np.testing.assert_allclose(kernel, np.outer(taps, taps), rtol=1e-9)
    box = corruptions.disk_kernel(1.5, 0.1)  # the 3x3 disk, the Gaussian negligible
    np.testing.assert_allclose(box, np.full((3, 3), 1 / 9), atol=1e-12)
    for radius, blur in corruptions.DEFOCUS:
        assert corruptions.disk_kernel(radius, blur).sum() == pytest.approx(1.0)


def test_subset_is_seeded_sorted_and_bounded() -> None:
    a = corruptions.subset(1000, 50, seed=3)
    np.testing.assert_array_equal(a, corruptions.subset(1000, 50, seed=3))
    assert len(set(a.tolist())) == 50 and np.all(np.diff(a) > 0) and a.max() < 1000
    assert not np.array_equal(a, corruptions.subset(1000, 50, seed=4))
    np.testing.assert_array_equal(corruptions.subset(30, 50, seed=3), np.arange(30))


def test_bad_arguments_fail() -> None:
    x = np.zeros((1, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corruptions.corrupt(x, "fog", 1)
    with pytest.raises(ValueError, match=r"severity must be 0\.\.3"):
        corruptions.corrupt(x, "contrast", 4)
    with pytest.raises(ValueError, match="uint8"):
        corruptions.corrupt(x.astype(np.float32), "contrast", 1)


def test_grayscale_images_work() -> None:
    x = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1)).astype(np.uint8)
    for name in NAMES:
        out = corruptions.corrupt(x, name, 3, seed=0)
        assert out.shape == x.shape and not np.array_equal(out, x), name
