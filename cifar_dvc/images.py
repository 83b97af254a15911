"""Turn a photo into model input: decode, orient, square, blur by seed 004's rule, resize.

Shared by the ``custom`` stage (``cifar_dvc.custom_set``) and the web demo, so a photo becomes
exactly the same array in both places.

1. ``open_image``: decode bytes or a file of an allowed format (``ALLOWED_FORMATS``: JPEG, PNG,
   GIF's first frame, BMP, TIFF, WebP) in any mode: grayscale ``L``, palette ``P``, ``RGBA``/``LA``
   (composited on a background colour), ``CMYK``, 16-bit ``I;16``; apply the EXIF orientation;
   return RGB. Every other format is refused as "not a supported image" without being parsed: Pillow
   hands EPS to the external Ghostscript program, and its rarer decoders are attack surface a photo
   does not need. Files of more than ``max_bytes`` bytes are refused before they are read, images
   with more than ``max_pixels`` pixels (Pillow's decompression-bomb limit by default) before they
   are decoded. Colour profiles (ICC) are not applied.
2. ``make_square``: ``crop`` the centre square or ``pad`` to a square with the background colour.
3. ``gaussian_blur``: seed 004 blurred each original with an s x s Gaussian kernel,
   s = round(w / 75), w the original width, before resizing to 32x32 (``blur_kernel_size``).
   The square photo's side is used as w: the rule is meant to scale the blur with the
   downsampling factor, and the square is what gets downsampled (the seed's photos were square,
   so both are the same there). The kernel has exactly s taps per axis; its sigma follows
   OpenCV's rule for ``cv2.GaussianBlur(img, (s, s), 0)``::

       sigma = 0.3 * ((s - 1) * 0.5 - 1) + 0.8      (s=3: 0.80, s=4: 0.95, s=13: 2.30)

   (OpenCV's own fixed tables for odd s <= 7 are close to this but not identical, and OpenCV refuses
   even s; here every s >= 2 blurs, with the same formula). Taps sit at offsets i - (s - 1) / 2, so an
   even s is centred between pixels and shifts the image by half an original pixel, which is at most
   16 / w of an output pixel at 32x32. Borders are mirrored without repeating the edge pixel
   (OpenCV's default BORDER_REFLECT_101). The blur is separable: one s-tap pass along each axis
   in float32, rounded back to uint8.
4. ``resize``: to size x size with an antialiasing filter (Pillow's ``lanczos`` by default, which
   widens its support when downscaling, so it averages over all source pixels). ``nearest`` picks
   single pixels without antialiasing, as Keras' ``load_img(path, target_size=...)`` does by
   default; the seed's sharp, aliased 32x32 photos (and so the large gain of its blur) fit that.
5. ``to_model_input`` chains all of it and returns a uint8 (size, size, channels) array
   (``channels == 1`` converts to grayscale with Pillow's ITU-R 601-2 luma, for MNIST models).

Reads only the bytes or file it is given; writes nothing.
"""

from __future__ import annotations

import io
import math
import os
import stat
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cifar_dvc.errors import DataError

# Pillow's default decompression-bomb limit (Image.MAX_IMAGE_PIXELS), spelled out so that a caller
# changing Pillow's global does not silently change ours.
PILLOW_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3

# The formats a photo may have; Image.open tries no other plugin (EPS would run Ghostscript).
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
SUPPORTED = "JPEG, PNG, GIF, BMP, TIFF or WebP"

Square = Literal["crop", "pad"]
Resample = Literal["nearest", "box", "bilinear", "hamming", "bicubic", "lanczos"]
RESAMPLE_FILTERS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,  # no antialiasing: Keras' load_img(target_size=...) default
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
WHITE = (255, 255, 255)


class ImageError(DataError):
    """A photo that cannot be used: empty, corrupt, not an image, too many pixels.

    ``str(error)`` names the file and the reason; ``error.reason`` is the reason alone.
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason if reason is not None else message


def open_image(source: bytes | Path, background: tuple[int, int, int] = WHITE,
               max_pixels: int = PILLOW_MAX_PIXELS, max_bytes: int | None = None,
               pixels_key: str = "custom.max_pixels", bytes_key: str = "custom.max_bytes") -> Image.Image:
    """Decode ``source`` (file contents or a path) into an EXIF-oriented RGB image.

    Transparent images are composited on ``background``. A file of another format than
    ``ALLOWED_FORMATS``, more than ``max_bytes`` bytes (checked before reading) or more than
    ``max_pixels`` pixels (before decoding; decompression-bomb protection) raises ``ImageError``, as
    does anything unreadable; messages name the limit as ``pixels_key`` / ``bytes_key`` (the params
    key or command-line option that set it). Pillow's own hard limit (twice its global
    ``Image.MAX_IMAGE_PIXELS``) still applies on top.
    """
    name = str(source) if isinstance(source, Path) else "image"
    try:
        data = read_limited(source, max_bytes, bytes_key) if isinstance(source, Path) else bytes(source)
        if max_bytes is not None and len(data) > max_bytes:
            raise ImageError(f"{len(data)} bytes exceeds the limit of {max_bytes} bytes ({bytes_key})")
        return _decode(data, background, max_pixels, pixels_key)
    except ImageError as exc:
        raise ImageError(f"{name}: {exc.reason}", reason=exc.reason) from None


def read_limited(path: Path, max_bytes: int | None = None, bytes_key: str = "custom.max_bytes") -> bytes:
    """The bytes of regular file ``path``; more than ``max_bytes`` raises ``ImageError`` unread.

    The size is checked on the open file (``fstat``) and the read is bounded too, so neither a
    huge (or sparse) file nor one that grows meanwhile is ever held in memory whole. FIFOs and
    devices are refused (reading one could block forever or never end).
    """
    try:
        with open(path, "rb", opener=_open_nonblocking) as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ImageError(f"not a regular file ({_file_kind(info.st_mode)})")
            if max_bytes is not None and info.st_size > max_bytes:
                raise ImageError(f"{info.st_size} bytes exceeds the limit of {max_bytes} bytes "
                                 f"({bytes_key}); refused unread")
            return handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    except OSError as exc:
        raise ImageError(f"cannot read file ({exc.strerror or exc})") from None


def _open_nonblocking(path: str, flags: int) -> int:
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever; the fstat
    # check refuses it right after. Regular files ignore the flag.
    return os.open(path, flags | os.O_NONBLOCK)


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")]
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def _decode(data: bytes, background: tuple[int, int, int], max_pixels: int,
            pixels_key: str = "custom.max_pixels") -> Image.Image:
    """``open_image`` of bytes, without the file name in its error messages."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        # Pillow warns (not raises) between its limit and twice it; the explicit check below is the
        # one that enforces ``max_pixels`` and names its key, so the warning is silenced (even if
        # another thread's catch_warnings races with this one, the check still runs).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as opened:
                _check_pixels(opened.size, max_pixels, pixels_key)
                opened.seek(0)  # the first frame of an animated GIF, WebP or PNG
                opened.load()
                oriented = ImageOps.exif_transpose(opened)  # always a new image, detached from the file
                return to_rgb(oriented, background)
    except Image.DecompressionBombError:
        # Pillow's hard limit (twice Image.MAX_IMAGE_PIXELS), hit before our check could run.
        hard = 2 * (Image.MAX_IMAGE_PIXELS or PILLOW_MAX_PIXELS)
        raise ImageError(f"more than {hard} pixels exceeds the limit of {min(max_pixels, hard)} "
                         f"({pixels_key}), refused as a possible decompression bomb") from None
    except UnidentifiedImageError:
        # "not an image file" first: the reason callers and tests have matched on since the start
        raise ImageError(f"not an image file: not a supported image format (expected {SUPPORTED})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"corrupt or truncated image ({type(exc).__name__}: {exc})") from None


def pixel_count(data: bytes) -> int:
    """Width x height from the header of an allowed image (nothing decoded); 0 if not one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as img:
                return img.width * img.height
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return 0


def _check_pixels(size: tuple[int, int], max_pixels: int, pixels_key: str = "custom.max_pixels") -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
            f"({pixels_key}), refused as a possible decompression bomb"
        )


def to_rgb(img: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """``img`` in mode RGB (``img`` itself if it is RGB already).

    Alpha is composited on ``background``; 16-bit values are scaled (not clipped) to 8 bits.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if (mode == "P" and "transparency" in img.info) or mode in ("LA", "La", "PA", "RGBa", "RGBA"):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        # Pillow's own conversion clips 16-bit values at 255; scale the full 0..65535 range instead.
        wide = np.asarray(img).astype(np.int64)
        if mode == "F":
            gray = np.clip(np.rint(wide), 0, 255).astype(np.uint8)
        else:
            gray = ((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageError(f"image mode {mode} cannot be converted to RGB ({exc})") from None


def make_square(img: Image.Image, square: Square = "crop",
                background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Centre crop to the shorter side (``crop``) or pad to the longer side (``pad``)."""
    width, height = img.size
    if width == height:
        return img
    if square == "crop":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return img.crop((left, top, left + side, top + side))
    if square == "pad":
        side = max(width, height)
        # the background colour in the image's own mode (e.g. its luma for L)
        # (a list, as params.yaml gives it, works too: Pillow wants a tuple)
        fill = Image.new("RGB", (1, 1), tuple(background)).convert(img.mode).getpixel((0, 0))
        canvas = Image.new(img.mode, (side, side), fill)
        canvas.paste(img, ((side - width) // 2, (side - height) // 2))
        return canvas
    raise ValueError(f"square must be crop or pad, got {square!r}")


def blur_kernel_size(width: int, divisor: float) -> int:
    """Seed 004's kernel size s = round(width / divisor), rounding halves up (s <= 1: no blur).

    The seed says "the nearest integer"; Python's ``round`` would round halves to even
    (``round(2.5) == 2``), so halves are rounded up here instead (2.5 -> 3). The division is exact
    (``Fraction``), so a tie is never lost to floating point. With divisor 75 and integer widths a
    tie cannot happen (w / 75 = k + 0.5 needs w = 37.5 * (2k + 1)); with divisors 50 or 100 it can.
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    if not divisor > 0 or not math.isfinite(divisor):
        raise ValueError(f"blur divisor must be a positive number, got {divisor}")
    return math.floor(Fraction(width) / Fraction(divisor) + Fraction(1, 2))


def kernel_sigma(s: int) -> float:
    """Sigma of the s-tap Gaussian: OpenCV's rule for ``GaussianBlur`` with sigma 0."""
    return 0.3 * ((s - 1) * 0.5 - 1) + 0.8


def gaussian_kernel(s: int) -> np.ndarray:
    """The normalized 1-D s-tap Gaussian (float32, sums to 1), taps at i - (s - 1) / 2."""
    if s < 1:
        raise ValueError(f"kernel size must be >= 1, got {s}")
    offsets = np.arange(s, dtype=np.float64) - (s - 1) / 2
    taps = np.exp(-(offsets**2) / (2 * kernel_sigma(s) ** 2))
    return (taps / taps.sum()).astype(np.float32)


def gaussian_blur(img: Image.Image, s: int, block: int = 32) -> Image.Image:
    """Blur with an s x s Gaussian (separable, exactly s taps); ``s <= 1`` returns ``img`` unchanged.

    One shifted multiply-add per tap and axis, over blocks of ``block`` rows so that the working set
    stays in the CPU cache (3x faster than whole-image passes on a 3000 x 3000 photo); borders are
    gathered per block rather than padding whole copies, so the only full-size temporary is one
    float32 image (about 110 MB for a 3000 x 3000 RGB photo).
    """
    if s <= 1:
        return img
    src = np.asarray(img, dtype=np.uint8)
    if src.ndim == 2:
        src = src[:, :, None]
    height, width = src.shape[:2]
    kernel = gaussian_kernel(s)
    before = (s - 1) // 2
    cols, rows = _reflect_101(width, s), _reflect_101(height, s)
    across = np.empty(src.shape, np.float32)  # after the horizontal pass
    for r0 in range(0, height, block):
        r1 = min(r0 + block, height)
        strip = np.empty((r1 - r0, width + s - 1, src.shape[2]), np.float32)  # borders mirrored
        strip[:, before:before + width] = src[r0:r1]
        strip[:, :before] = src[r0:r1, cols[:before]]
        strip[:, before + width:] = src[r0:r1, cols[before + width:]]
        across[r0:r1] = _taps(strip, kernel, axis=1, n=width)
    out = np.empty(src.shape, np.uint8)
    for r0 in range(0, height, block):
        r1 = min(r0 + block, height)
        lo, hi = r0 - before, r1 + s - 1 - before  # rows lo..hi-1 of the image feed rows r0..r1-1
        # a view inside the image, a gathered (mirrored) copy only at its top and bottom
        strip = across[lo:hi] if lo >= 0 and hi <= height else across[rows[r0:r1 + s - 1]]
        out[r0:r1] = np.clip(np.rint(_taps(strip, kernel, axis=0, n=r1 - r0)), 0, 255)
    return Image.fromarray(out[:, :, 0] if img.mode == "L" else out, mode=img.mode)


def _reflect_101(n: int, s: int) -> np.ndarray:
    """Indices of a line of ``n`` pixels padded for an s-tap kernel, mirrored without repeating the edge.

    An even kernel has one more tap after its centre than before it.
    """
    before, after = (s - 1) // 2, s // 2
    index = np.arange(-before, n + after)
    if n == 1:  # a single pixel cannot be mirrored: it repeats
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.mod(index, period)
    return np.where(index >= n, period - index, index)


def _taps(strip: np.ndarray, kernel: np.ndarray, axis: int, n: int) -> np.ndarray:
    """Correlate ``strip`` (padded by len(kernel) - 1 along ``axis``) with ``kernel``: n outputs."""
    acc = np.zeros([n if a == axis else d for a, d in enumerate(strip.shape)], np.float32)
    for i, weight in enumerate(kernel):
        acc += weight * (strip[i:i + n] if axis == 0 else strip[:, i:i + n])
    return acc


def resize(img: Image.Image, size: int, resample: Resample = "lanczos") -> Image.Image:
    """Resize to size x size with the named Pillow filter (antialiased when downscaling)."""
    try:
        method = RESAMPLE_FILTERS[resample]
    except KeyError:
        choices = " | ".join(RESAMPLE_FILTERS)
        raise ValueError(f"resample must be one of {choices}, got {resample!r}") from None
    return img.resize((size, size), resample=method)


def to_model_input(img: Image.Image, size: int, square: Square = "crop", resample: Resample = "lanczos",
                   blur_divisor: float | None = None, channels: int = 3,
                   background: tuple[int, int, int] = WHITE) -> np.ndarray:
    """A uint8 (size, size, channels) array from ``img``: square, blur (when asked), resize.

    With ``blur_divisor`` the square image of side w is blurred with an s x s Gaussian,
    s = ``blur_kernel_size(w, blur_divisor)``, before resizing; s <= 1 means no blur.
    """
    square_img = prepare_square(img, square, channels, background)
    if blur_divisor is not None:
        square_img = gaussian_blur(square_img, blur_kernel_size(square_img.width, blur_divisor))
    return as_array(resize(square_img, size, resample), channels)


def prepare_square(img: Image.Image, square: Square = "crop", channels: int = 3,
                   background: tuple[int, int, int] = WHITE) -> Image.Image:
    """The square (RGB, or L when ``channels == 1``) image that the blur rule and resize work on."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if img.mode != "RGB":
        img = to_rgb(img, background)
    img = make_square(img, square, background)
    return img.convert("L") if channels == 1 else img


def as_array(img: Image.Image, channels: int = 3) -> np.ndarray:
    """uint8 (H, W, channels) array of an RGB or L image."""
    pixels = np.asarray(img, dtype=np.uint8)
    return pixels[:, :, None] if channels == 1 else pixels
