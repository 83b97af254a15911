"""cifar_dvc.images: decoding every mode and format, EXIF orientation, squaring, seed 004's blur rule."""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar_dvc import images
from cifar_dvc.errors import DataError
from cifar_dvc.images import ImageError

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def halves(width: int, height: int, left: tuple[int, int, int] = RED,
           right: tuple[int, int, int] = BLUE) -> Image.Image:
    """An RGB image whose left half is ``left`` and right half ``right``."""
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[:, : width // 2] = left
    pixels[:, width // 2:] = right
    return Image.fromarray(pixels)


def noise(width: int, height: int | None = None, seed: int = 0) -> Image.Image:
    """Random RGB pixels: every blur changes them."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height or width, width, 3), dtype=np.uint8))


def encode(img: Image.Image, fmt: str, orientation: int | None = None, **kwargs: object) -> bytes:
    """``img`` encoded as ``fmt``, with an EXIF orientation tag when given."""
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def in_mode(img: Image.Image, mode: str) -> Image.Image:
    """``img`` converted to ``mode``; I;16 spreads 0..255 over the full 16-bit range."""
    if mode == "I;16":
        gray = np.asarray(img.convert("L"), np.uint16) * 257
        return Image.fromarray(gray)  # uint16 -> mode I;16
    if mode == "RGBA":
        rgba = img.convert("RGBA")
        rgba.putalpha(255)
        return rgba
    return img.convert(mode)


def png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (only 1x1 pixel data): a decompression bomb."""
    data = encode(Image.new("L", (1, 1)), "PNG")
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    start = data.index(b"IHDR")
    return data[:start] + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[start + 4 + 13 + 4:]


@pytest.mark.parametrize(("mode", "fmt"), [
    ("RGB", "JPEG"), ("RGB", "PNG"), ("RGB", "WEBP"), ("L", "PNG"), ("L", "JPEG"), ("P", "PNG"),
    ("P", "GIF"), ("RGBA", "PNG"), ("RGBA", "WEBP"), ("LA", "PNG"), ("CMYK", "JPEG"), ("I;16", "PNG"),
    ("1", "PNG"),
])
def test_every_mode_and_format_decodes_to_rgb(mode: str, fmt: str) -> None:
    source = in_mode(halves(40, 30), mode)
    data = encode(source, fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith(mode[0])  # the file really is in that mode
    img = images.open_image(data)
    assert img.mode == "RGB"
    assert img.size == (40, 30)
    left, right = np.asarray(img, np.int16)[:, 5].mean(0), np.asarray(img, np.int16)[:, -5].mean(0)
    if mode in ("RGB", "P", "RGBA", "CMYK") and fmt != "GIF":
        assert np.abs(left - RED).max() < 40 and np.abs(right - BLUE).max() < 40
    else:  # gray, 1-bit or GIF palettes: the two halves still differ
        assert np.abs(left - right).max() > 20


def test_rgba_is_composited_on_the_background() -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[:, :5] = (255, 0, 0, 0)  # fully transparent red: background shows
    rgba[:, 5:] = (255, 0, 0, 128)  # half transparent red over the background
    data = encode(Image.fromarray(rgba, "RGBA"), "PNG")
    out = np.asarray(images.open_image(data, background=(0, 255, 0)), np.int16)
    assert (out[:, :5] == (0, 255, 0)).all()
    assert np.abs(out[:, 5:] - (128, 127, 0)).max() <= 1
    assert (np.asarray(images.open_image(data))[:, :5] == WHITE).all()  # default background


def test_palette_transparency_uses_the_background() -> None:
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (0, 0, 4, 8))
    data = encode(pal, "GIF", transparency=1)
    out = np.asarray(images.open_image(data, background=(10, 20, 30)))
    assert (out[:, :4] == (10, 20, 30)).all() and (out[:, 4:] == RED).all()


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257, 1000, 32896, 65535]], np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    out = np.asarray(images.open_image(data))[0, :, 0]
    assert out.tolist() == [0, 1, 4, 128, 255]  # Pillow's own conversion would clip 1000 to 255


def test_gif_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(buffer.getvalue())).n_frames == 2
    out = np.asarray(images.open_image(buffer.getvalue()))
    assert (out == RED).all()


@pytest.mark.parametrize(("orientation", "fmt", "size", "red_side"), [
    (1, "JPEG", (40, 20), "left"),
    (3, "PNG", (40, 20), "right"),  # rotated 180 degrees
    (6, "JPEG", (20, 40), "top"),  # the camera was turned: display rotated 90 degrees clockwise
    (8, "WEBP", (20, 40), "bottom"),  # display rotated 90 degrees counter-clockwise
])
def test_exif_orientation_is_applied(orientation: int, fmt: str, size: tuple[int, int],
                                     red_side: str) -> None:
    data = encode(halves(40, 20), fmt, orientation=orientation)
    img = images.open_image(data)
    assert img.size == size
    pixels = np.asarray(img, np.int16)
    h, w = pixels.shape[:2]
    part = {"left": pixels[:, : w // 4], "right": pixels[:, -w // 4:],
            "top": pixels[: h // 4], "bottom": pixels[-h // 4:]}[red_side]
    assert np.abs(part.reshape(-1, 3).mean(0) - RED).max() < 30


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty file (0 bytes)"),
    (b"name,label\ncat.jpg,3\n", "not an image file"),
    (encode(noise(64), "PNG")[:300], "corrupt or truncated"),
    (encode(noise(64), "JPEG")[:400], "corrupt or truncated"),
])
def test_bad_bytes_raise_image_error(data: bytes, reason: str, tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=re.escape(reason)) as caught:
        images.open_image(path)
    assert str(caught.value).startswith(f"{path}: ")  # the message names the file
    assert caught.value.reason.startswith(reason) and isinstance(caught.value, DataError)


def test_max_pixels_refuses_before_decoding() -> None:
    data = encode(noise(40, 30), "PNG")
    assert images.open_image(data, max_pixels=1200).size == (40, 30)
    with pytest.raises(ImageError, match="1200 pixels exceeds the limit of 1199") as caught:
        images.open_image(data, max_pixels=1199)
    assert "decompression bomb" in caught.value.reason


@pytest.mark.parametrize("side", [10_000, 20_000])  # between Pillow's limit and twice it; above twice
def test_decompression_bomb_header_is_an_error_not_a_warning(side: int) -> None:
    data = png_with_size(side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning escaping would fail here
        with pytest.raises(ImageError, match="decompression bomb"):
            images.open_image(data)
    assert images.PILLOW_MAX_PIXELS == 89_478_485


@pytest.mark.parametrize(("width", "divisor", "s"), [
    (40, 75, 1), (75, 75, 1), (112, 75, 1), (113, 75, 2), (300, 75, 4), (1000, 75, 13), (37, 75, 0),
    (125, 50, 3), (75, 50, 2), (250, 100, 3), (150, 100, 2), (375, 150, 3), (100, 37.5, 3),
])
def test_blur_kernel_size_rounds_half_up(width: int, divisor: float, s: int) -> None:
    assert images.blur_kernel_size(width, divisor) == s


def test_blur_kernel_size_differs_from_bankers_rounding_on_ties() -> None:
    assert round(125 / 50) == 2 and images.blur_kernel_size(125, 50) == 3


@pytest.mark.parametrize(("width", "divisor"), [(0, 75), (100, 0), (100, -5), (100, float("nan"))])
def test_blur_kernel_size_rejects_bad_input(width: int, divisor: float) -> None:
    with pytest.raises(ValueError):
        images.blur_kernel_size(width, divisor)


@pytest.mark.parametrize("s", [2, 3, 4, 5, 13])
def test_gaussian_kernel_follows_the_opencv_sigma_rule(s: int) -> None:
    kernel = images.gaussian_kernel(s)
    sigma = 0.3 * ((s - 1) * 0.5 - 1) + 0.8
    assert images.kernel_sigma(s) == pytest.approx(sigma)
    x = np.arange(s) - (s - 1) / 2
    expected = np.exp(-(x**2) / (2 * sigma**2))
    np.testing.assert_allclose(kernel, expected / expected.sum(), rtol=1e-6)
    assert kernel.dtype == np.float32 and kernel.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(kernel, kernel[::-1])
    assert images.kernel_sigma(3) == pytest.approx(0.8) and images.kernel_sigma(13) == pytest.approx(2.3)


@pytest.mark.parametrize("s", [2, 3, 4, 5, 9])
def test_blur_of_an_impulse_is_exactly_the_s_by_s_kernel(s: int) -> None:
    impulse = np.zeros((21, 21), np.uint8)
    impulse[10, 10] = 255
    out = np.asarray(images.gaussian_blur(Image.fromarray(impulse), s), np.float64)
    rows, cols = np.nonzero(out)
    assert rows.max() - rows.min() + 1 == s and cols.max() - cols.min() + 1 == s  # support is s x s
    kernel = images.gaussian_kernel(s).astype(np.float64)
    patch = out[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    np.testing.assert_allclose(patch, 255 * np.outer(kernel, kernel), atol=0.5 + 1e-6)  # rounding only
    # odd s is centred; an even s has its extra tap after the centre, so it spreads one pixel further up
    assert rows.min() == 10 - s // 2 and rows.max() == 10 + (s - 1) // 2


def test_blur_keeps_flat_images_and_borders_flat() -> None:
    flat = Image.new("RGB", (30, 17), (200, 100, 50))
    assert (np.asarray(images.gaussian_blur(flat, 7)) == (200, 100, 50)).all()
    line = Image.new("RGB", (30, 1), (9, 9, 9))  # a 1-pixel line cannot be mirrored
    assert (np.asarray(images.gaussian_blur(line, 4)) == 9).all()


@pytest.mark.parametrize("s", [-1, 0, 1])
def test_kernel_size_one_or_less_is_no_blur(s: int) -> None:
    img = noise(20)
    assert images.gaussian_blur(img, s) is img


@pytest.mark.parametrize(("width", "s"), [(40, 1), (75, 1), (112, 1), (113, 2), (300, 4), (1000, 13)])
def test_filtered_differs_from_unfiltered_exactly_when_s_above_one(width: int, s: int) -> None:
    img = noise(width, seed=width)
    assert images.blur_kernel_size(width, 75) == s
    unfiltered = images.to_model_input(img, 32)
    filtered = images.to_model_input(img, 32, blur_divisor=75)
    assert filtered.shape == unfiltered.shape == (32, 32, 3)
    assert filtered.dtype == unfiltered.dtype == np.uint8
    assert (s > 1) == (not np.array_equal(filtered, unfiltered))


def test_blur_uses_the_side_of_the_square() -> None:
    img = noise(450, 300)  # cropped to 300 x 300: s = round(300 / 75) = 4, not round(450 / 75) = 6
    square = images.prepare_square(img, "crop")
    expected = images.as_array(images.resize(images.gaussian_blur(square, 4), 32))
    np.testing.assert_array_equal(images.to_model_input(img, 32, blur_divisor=75), expected)


def test_crop_keeps_the_centre_and_pad_adds_background() -> None:
    img = Image.new("RGB", (60, 20), RED)
    img.paste(BLUE, (20, 0, 40, 20))  # the centre square is blue
    cropped = images.to_model_input(img, 8, square="crop")
    assert (np.abs(cropped.astype(int) - BLUE) <= 1).all()
    padded = images.to_model_input(img, 12, square="pad", background=(0, 255, 0), resample="box")
    assert (padded[0] == (0, 255, 0)).all() and (padded[-1] == (0, 255, 0)).all()
    assert (padded[6, 6] == BLUE).all() and (padded[6, 0] == RED).all()
    as_list = images.to_model_input(img, 12, square="pad", background=[0, 255, 0], resample="box")  # type: ignore[arg-type]
    np.testing.assert_array_equal(as_list, padded)  # params.yaml gives a list


def test_grayscale_output_for_one_channel_models() -> None:
    out = images.to_model_input(halves(100, 100), 28, channels=1, blur_divisor=75)
    assert out.shape == (28, 28, 1) and out.dtype == np.uint8
    red_luma = round(0.299 * 255)
    assert abs(int(out[14, 2, 0]) - red_luma) <= 2


@pytest.mark.parametrize("resample", sorted(images.RESAMPLE_FILTERS))
def test_every_resample_filter(resample: str) -> None:
    out = images.to_model_input(noise(300), 32, resample=resample)  # type: ignore[arg-type]
    assert out.shape == (32, 32, 3)


def test_unknown_options_are_value_errors() -> None:
    with pytest.raises(ValueError, match="resample"):
        images.to_model_input(noise(40), 32, resample="nearest-ish")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="square"):
        images.to_model_input(noise(40, 30), 32, square="stretch")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channels"):
        images.to_model_input(noise(40), 32, channels=2)
