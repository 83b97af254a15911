"""The custom test set of seed 004: a user's photos as unfiltered, filtered and blur-sweep sets.

Reads the photo folder ``custom.dir`` laid out as ``<class name>/<image files>`` (class names those
of the data set, from ``data/prepared/meta.json``), and ``data/prepared/normalization.json``.
Every photo is decoded, EXIF-oriented, made square and resized to the data set's image size by
``cifar_dvc.images``; the ``filtered`` set blurs the square photo first with an s x s Gaussian,
s = round(w / ``custom.blur_divisor``) (seed 004: 75), and each ``custom.sweep_divisors`` entry d
makes one more set ``sweep_<d>`` the same way, so evaluation can draw accuracy against blur strength.

Writes into the output directory (``data/custom_sets/``), per set, ``<set>.npz`` through
``cifar_dvc.artifacts.save_split``: ``x`` uint8 (N, H, W, C), ``y`` int64, ``x_norm`` float32
(normalized by ``cifar_dvc.normalization.normalize`` with prepare's saved statistics, exactly as
the training data), ``files`` (paths relative to the photo folder), ``kernel_size`` (the s of
each photo; 0 in ``unfiltered``; s <= 1 means not blurred) and ``width`` (the square's side in
pixels, the w of the rule); plus ``report.json`` (every photo's size and kernel sizes, skipped
files with reasons, counts). Also a contact sheet PNG: for each photo its original thumbnail, the
unfiltered and the filtered image.

Bad input (a file that is not a readable image of an allowed format, a 0-byte file, a file over
``custom.max_bytes`` (refused unread), a decompression bomb, a folder that is not a class name, a
file outside any class folder, a dangling symbolic link, a symbolic link to a folder (not
followed), a FIFO or device) stops the stage with one line naming the file when ``custom.on_error``
is ``fail``; with ``skip`` it is left out and listed in the report with the reason. Documentation
files (``README.md``, ``.txt``, ``.rst``), hidden files, ``.dvc`` files and file-manager litter are
ignored anywhere in the tree. A missing or empty photo folder gives empty sets (n = 0) and a warning.

Run by ``python -m stages.custom`` (``dvc repro custom``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cifar_dvc import artifacts, atomic
from cifar_dvc.errors import DataError
from cifar_dvc.images import (
    PILLOW_MAX_PIXELS,
    ImageError,
    Resample,
    Square,
    as_array,
    blur_kernel_size,
    gaussian_blur,
    kernel_sigma,
    open_image,
    prepare_square,
    resize,
)
from cifar_dvc.normalization import NormStats, normalize

REPORT_FILE = "report.json"
UNFILTERED = "unfiltered"
FILTERED = "filtered"
# Documentation files, anywhere in the photo folder: not photos.
DOC_SUFFIXES = (".md", ".txt", ".rst")
# Litter that file managers leave in folders; never photos.
JUNK_NAMES = ("thumbs.db", "desktop.ini")
# `dvc add data/custom/<class>` leaves <class>.dvc files (and a hidden .gitignore) beside the folders.
JUNK_SUFFIXES = (".dvc",)


@dataclasses.dataclass
class CustomParams:
    """The ``custom:`` section of params.yaml."""

    dir: str = "data/custom"  # photo folder, <class name>/<image files>; dvc.yaml passes ${custom.dir}
    square: Square = "crop"  # make photos square: crop the centre | pad with `background`
    resample: Resample = "lanczos"  # resize filter: lanczos | bicubic | hamming | bilinear | box | nearest
    background: list[int] = dataclasses.field(  # RGB under transparent pixels and around padded photos
        default_factory=lambda: [255, 255, 255])
    blur_divisor: float = 75.0  # filtered set: s x s Gaussian, s = round(w / blur_divisor), seed 004's 75
    sweep_divisors: list[float] = dataclasses.field(  # one sweep_<d> set per divisor d; [] for none
        default_factory=lambda: [150.0, 100.0, 75.0, 50.0, 25.0])
    on_error: Literal["fail", "skip"] = "fail"  # bad file or folder: fail | skip it, listed in report.json
    max_pixels: int = PILLOW_MAX_PIXELS  # refuse bigger photos (decompression bombs); Pillow default
    max_bytes: int = 256 * 1024 * 1024  # refuse bigger files unread; a raw RGB image of max_pixels fits
    thumb_size: int = 96  # contact sheet: pixels per picture (the 32x32 images are enlarged to it)
    sheet_max: int = 300  # contact sheet: show at most this many photos (the sets always hold all)

    def validate(self) -> None:
        if len(self.background) != 3 or any(not 0 <= v <= 255 for v in self.background):
            raise ValueError(f"background: expected 3 integers 0..255, got {self.background}")
        for key, value in [("blur_divisor", self.blur_divisor),
                           *((f"sweep_divisors[{i}]", d) for i, d in enumerate(self.sweep_divisors))]:
            if not value > 0:
                raise ValueError(f"{key}: expected a positive number, got {value}")
        names = [sweep_name(d) for d in self.sweep_divisors]
        if len(set(names)) != len(names):
            raise ValueError(f"sweep_divisors: expected distinct values, got {self.sweep_divisors}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels: expected a positive integer, got {self.max_pixels}")
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes: expected a positive integer, got {self.max_bytes}")
        if self.thumb_size < 16:
            raise ValueError(f"thumb_size: expected at least 16, got {self.thumb_size}")
        if self.sheet_max < 0:
            raise ValueError(f"sheet_max: expected 0 or more, got {self.sheet_max}")

    @property
    def background_rgb(self) -> tuple[int, int, int]:
        r, g, b = self.background
        return (r, g, b)


def sweep_name(divisor: float) -> str:
    """``sweep_75`` for 75 or 75.0, ``sweep_37.5`` for 37.5 (never an exponent)."""
    return f"sweep_{np.format_float_positional(float(divisor), trim='-')}"


@dataclasses.dataclass
class Problem:
    """A file or folder left out (``on_error: skip``) and why."""

    file: str  # relative to the photo folder; folders end with "/"
    reason: str


@dataclasses.dataclass
class PhotoRecord:
    """One photo that made it into the sets."""

    file: str  # relative to the photo folder, POSIX separators
    label: int
    width: int  # after EXIF orientation
    height: int
    side: int  # the square's side: the w of s = round(w / divisor)
    kernel_size: dict[str, int]  # set name -> s used (0 for unfiltered)
    thumbnail: Image.Image | None = dataclasses.field(repr=False)  # original, for the contact sheet


@dataclasses.dataclass
class CustomSets:
    """Everything ``build_custom_sets`` made: arrays per set, photo records, problems, warnings."""

    meta: artifacts.Meta
    divisors: dict[str, float]  # blurred set name -> divisor
    images: dict[str, np.ndarray]  # set name -> uint8 (N, H, W, C)
    photos: list[PhotoRecord]
    skipped: list[Problem]
    warnings: list[str]
    photo_dir: str

    @property
    def labels(self) -> np.ndarray:
        return np.array([p.label for p in self.photos], dtype=np.int64)

    @property
    def files(self) -> np.ndarray:
        return np.array([p.file for p in self.photos], dtype=str)


def set_divisors(params: CustomParams) -> dict[str, float]:
    """The blurred sets and their divisors: ``filtered`` then ``sweep_<d>`` in params order."""
    return {FILTERED: params.blur_divisor, **{sweep_name(d): d for d in params.sweep_divisors}}


def find_photos(photo_dir: Path, classes: list[str], on_error: str = "fail"
                ) -> tuple[list[tuple[Path, int]], list[Problem]]:
    """Photo files under ``photo_dir/<class>/`` (any depth) with their labels, sorted by class and path.

    Hidden files, ``.dvc`` files, file-manager litter and documentation files (``README.md``) are
    ignored at every level. A folder that is not a class name, a file outside any class folder, a
    dangling symbolic link, a symbolic link to a folder below a class folder (never followed: it
    could leave the photo tree or loop) or anything that is not a regular file raises ``DataError``
    (``on_error == "fail"``) or is returned as a ``Problem``. A missing folder gives no photos.
    """
    if not photo_dir.exists():
        return [], []
    if not photo_dir.is_dir():
        raise DataError(f"{photo_dir}: expected a folder of <class name>/<image files> (custom.dir)")
    index = {name: i for i, name in enumerate(classes)}
    photos: list[tuple[Path, int]] = []
    problems: list[Problem] = []

    def refuse(entry: Path, reason: str, folder: bool = False) -> None:
        slash = "/" if folder else ""  # folders end with "/", in the report and in the error line
        rel = entry.relative_to(photo_dir).as_posix()
        if on_error == "fail":
            raise DataError(f"{photo_dir / rel}{slash}: {reason}")
        problems.append(Problem(rel + slash, reason))

    for entry in _listdir(photo_dir):
        if _ignored(entry) or _is_doc(entry):
            continue
        if entry.is_symlink() and not entry.exists():
            refuse(entry, _dangling(entry))
        elif entry.is_dir() and entry.name in index:  # a class folder (a symbolic link to one is fine)
            for path in _walk(entry, refuse):
                photos.append((path, index[entry.name]))
        elif entry.is_dir():
            refuse(entry, f"folder {entry.name!r} is not a class name{_suggest(entry.name, classes)}",
                   folder=True)
        else:
            refuse(entry, "not inside a <class name>/ folder")
    photos.sort(key=lambda item: (item[1], item[0].relative_to(photo_dir).as_posix()))
    return photos, problems


def _walk(folder: Path, refuse: Callable[..., None]) -> list[Path]:
    """Regular files below class folder ``folder``; everything else goes to ``refuse(entry, reason)``."""
    found: list[Path] = []
    for entry in _listdir(folder):
        if _ignored(entry) or _is_doc(entry):
            continue
        if entry.is_symlink():
            if not entry.exists():
                refuse(entry, _dangling(entry))
            elif entry.is_dir():
                refuse(entry, f"symbolic link to a folder ({os.readlink(entry)}), not followed", folder=True)
            elif entry.is_file():
                found.append(entry)  # a link to a photo is a photo
            else:
                refuse(entry, "symbolic link to something that is not a regular file")
        elif entry.is_dir():
            found.extend(_walk(entry, refuse))
        elif entry.is_file():
            found.append(entry)
        else:
            refuse(entry, "not a regular file (a FIFO, socket or device)")
    return found


def _listdir(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        raise DataError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None


def _dangling(link: Path) -> str:
    return f"dangling symbolic link (its target {os.readlink(link)} does not exist)"


def _ignored(path: Path) -> bool:
    name = path.name.lower()
    return name.startswith(".") or name in JUNK_NAMES or name.endswith(JUNK_SUFFIXES)


def _is_doc(path: Path) -> bool:
    return path.suffix.lower() in DOC_SUFFIXES and not path.is_dir()


def _suggest(name: str, classes: list[str]) -> str:
    close = difflib.get_close_matches(name.lower(), classes, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    shown = ", ".join(classes[:20]) + (f", ... ({len(classes)} in all)" if len(classes) > 20 else "")
    return f"{hint} (classes: {shown})"


def build_custom_sets(photo_dir: Path, meta: artifacts.Meta, params: CustomParams) -> CustomSets:
    """Decode, square, blur and resize every photo under ``photo_dir`` into all the sets.

    Raises ``DataError`` on the first bad file or folder when ``params.on_error == "fail"``.
    """
    photo_dir = Path(photo_dir)
    height, width, channels = meta.image_shape
    if height != width or channels not in (1, 3):
        raise DataError(f"meta.json: image_shape {meta.image_shape}: expected square images, 1 or 3 channels")
    divisors = set_divisors(params)
    found, skipped = find_photos(photo_dir, meta.classes, params.on_error)
    warnings = []
    if not photo_dir.exists():
        warnings.append(f"{photo_dir}: folder not found; the custom sets are empty (n = 0). "
                        "Put photos in <custom.dir>/<class name>/ to fill them")
    elif not found:
        warnings.append(f"{photo_dir}: no photos found; the custom sets are empty (n = 0). "
                        "Put photos in <custom.dir>/<class name>/ to fill them")
    images: dict[str, list[np.ndarray]] = {name: [] for name in (UNFILTERED, *divisors)}
    records: list[PhotoRecord] = []
    for path, label in found:
        rel = path.relative_to(photo_dir).as_posix()
        try:
            record, arrays = process_photo(path, rel, label, width, channels, divisors, params,
                                           thumbnail=len(records) < params.sheet_max)
        except ImageError as exc:
            if params.on_error == "fail":
                raise
            skipped.append(Problem(rel, exc.reason))
            continue
        records.append(record)
        for name, array in arrays.items():
            images[name].append(array)
    if found and not records:
        warnings.append(f"{photo_dir}: every photo was skipped; the custom sets are empty (n = 0)")
    if skipped:
        warnings.append(f"{photo_dir}: skipped {len(skipped)} bad file(s) or folder(s) "
                        f"(custom.on_error: skip); reasons in {REPORT_FILE}")
    shape = (height, width, channels)
    stacked = {name: np.stack(arrays) if arrays else np.zeros((0, *shape), np.uint8)
               for name, arrays in images.items()}
    return CustomSets(meta, divisors, stacked, records, skipped, warnings, str(photo_dir))


def process_photo(path: Path, rel: str, label: int, size: int, channels: int, divisors: dict[str, float],
                  params: CustomParams, thumbnail: bool = True) -> tuple[PhotoRecord, dict[str, np.ndarray]]:
    """One photo as a record and its uint8 (size, size, channels) array per set name.

    ``thumbnail``: keep a small copy of the original for the contact sheet (only the photos it shows).

    Equivalent to ``images.to_model_input`` once per set, but decodes and squares the photo once and
    blurs once per distinct kernel size.
    """
    original = open_image(path, params.background_rgb, params.max_pixels, params.max_bytes)
    square = prepare_square(original, params.square, channels, params.background_rgb)
    unfiltered = as_array(resize(square, size, params.resample), channels)
    kernels = {name: blur_kernel_size(square.width, d) for name, d in divisors.items()}
    by_kernel: dict[int, np.ndarray] = {}
    for s in sorted(set(kernels.values())):
        # s <= 1 is no blur: the unfiltered image itself
        by_kernel[s] = unfiltered if s <= 1 else as_array(
            resize(gaussian_blur(square, s), size, params.resample), channels)
    thumb = None
    if thumbnail:
        thumb = original.copy()
        thumb.thumbnail((params.thumb_size, params.thumb_size), Image.Resampling.LANCZOS)
    record = PhotoRecord(rel, label, original.width, original.height, square.width,
                         {UNFILTERED: 0, **kernels}, thumb)
    return record, {UNFILTERED: unfiltered, **{name: by_kernel[s] for name, s in kernels.items()}}


def check_stats(meta: artifacts.Meta, stats: NormStats) -> None:
    """The normalization statistics must have one value per image channel."""
    channels = meta.image_shape[2]
    if len(stats.mean) != channels:
        raise DataError(f"normalization.json has statistics for {len(stats.mean)} channel(s) but "
                        f"meta.json's images have {channels}")


def write_custom_sets(out_dir: Path, sets: CustomSets, stats: NormStats) -> None:
    """Write ``<set>.npz`` for every set and ``report.json`` into ``out_dir``."""
    check_stats(sets.meta, stats)
    out_dir = Path(out_dir)
    labels, files = sets.labels, sets.files
    widths = np.array([p.side for p in sets.photos], dtype=np.int64)
    for name, x in sets.images.items():
        kernels = np.array([p.kernel_size[name] for p in sets.photos], dtype=np.int64)
        artifacts.save_split(out_dir / f"{name}.npz", x, labels, x_norm=normalize(x, stats),
                             files=files, kernel_size=kernels, width=widths)
    atomic.write_json(out_dir / REPORT_FILE, report(sets))


def report(sets: CustomSets) -> dict[str, Any]:
    """The content of ``report.json``: sets, per-class counts, every photo, every skipped file."""
    counts = {c: 0 for c in sets.meta.classes}
    for p in sets.photos:
        counts[sets.meta.classes[p.label]] += 1
    blurred = sorted({s for p in sets.photos for s in p.kernel_size.values() if s > 1})
    return {
        "photo_dir": sets.photo_dir,
        "dataset": sets.meta.dataset,
        "image_shape": list(sets.meta.image_shape),
        "n": len(sets.photos),
        "n_skipped": len(sets.skipped),
        "per_class": counts,
        "sets": {
            UNFILTERED: {"file": f"{UNFILTERED}.npz", "divisor": None},
            **{name: {"file": f"{name}.npz", "divisor": d} for name, d in sets.divisors.items()},
        },
        "sigma": {str(s): round(kernel_sigma(s), 4) for s in blurred},
        "photos": [
            {"file": p.file, "class": sets.meta.classes[p.label], "label": p.label, "width": p.width,
             "height": p.height, "square_side": p.side, "kernel_size": dict(p.kernel_size)}
            for p in sets.photos
        ],
        "skipped": [dataclasses.asdict(s) for s in sets.skipped],
        "warnings": list(sets.warnings),
    }


def contact_sheet(sets: CustomSets, params: CustomParams, columns: int = 4) -> Image.Image:
    """For each photo (up to ``params.sheet_max``): original thumbnail, unfiltered and filtered images.

    The 32x32 images are enlarged with nearest-neighbour so their pixels stay visible.
    """
    t, gap, margin = params.thumb_size, 4, 12
    font, small = _font(13), _font(11)
    line = 16
    shown = sets.photos[:params.sheet_max]
    title = (f"custom set: {len(sets.photos)} photo(s) from {sets.photo_dir}, {len(sets.skipped)} skipped; "
             f"filtered: s x s Gaussian, s = round(w / {params.blur_divisor:g})")
    if not shown:
        message = (f"no photos in {sets.photo_dir}: the custom sets are empty (n = 0)"
                   if not sets.photos else "custom.sheet_max is 0: no photos shown")
        width = max(480, int(font.getlength(title)) + 2 * margin)
        sheet = Image.new("RGB", (width, 3 * line + 2 * margin), "white")
        draw = ImageDraw.Draw(sheet)
        draw.text((margin, margin), title, fill="black", font=font)
        draw.text((margin, margin + 2 * line), message, fill=(180, 0, 0), font=font)
        return sheet
    columns = max(1, min(columns, len(shown)))
    cell_w, cell_h = 3 * t + 2 * gap, 2 * line + t + line
    header = 2 * line + line
    rows = -(-len(shown) // columns)
    width = max(columns * (cell_w + margin) + margin, int(font.getlength(title)) + 2 * margin)
    sheet = Image.new("RGB", (width, header + rows * (cell_h + margin) + margin), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((margin, margin // 2), title, fill="black", font=font)
    if len(shown) < len(sets.photos):
        draw.text((margin, margin // 2 + line), f"first {len(shown)} of {len(sets.photos)} photos shown "
                  "(custom.sheet_max)", fill=(120, 0, 0), font=small)
    for col in range(columns):
        x0 = margin + col * (cell_w + margin)
        for k, caption in enumerate(("original", UNFILTERED, FILTERED)):
            draw.text((x0 + k * (t + gap), header - line), caption, fill=(90, 90, 90), font=small)
    classes = sets.meta.classes
    for i, photo in enumerate(shown):
        x0 = margin + (i % columns) * (cell_w + margin)
        y0 = header + (i // columns) * (cell_h + margin)
        label = _fit(f"{classes[photo.label]} / {Path(photo.file).name}", font, cell_w)
        draw.text((x0, y0), label, fill="black", font=font)
        s = photo.kernel_size[FILTERED]
        details = f"{photo.width}x{photo.height}, w = {photo.side}, s = {s}" + ("" if s > 1 else " (no blur)")
        draw.text((x0, y0 + line), _fit(details, small, cell_w), fill=(90, 90, 90), font=small)
        top = y0 + 2 * line
        thumb = photo.thumbnail
        if thumb is not None:
            sheet.paste(thumb, (x0 + (t - thumb.width) // 2, top + (t - thumb.height) // 2))
        for k, name in enumerate((UNFILTERED, FILTERED), start=1):
            small_img = _to_pil(sets.images[name][i]).resize((t, t), Image.Resampling.NEAREST)
            sheet.paste(small_img, (x0 + k * (t + gap), top))
    return sheet


def save_contact_sheet(path: Path, sets: CustomSets, params: CustomParams) -> None:
    """Render ``contact_sheet`` and write it as PNG atomically."""
    sheet = contact_sheet(sets, params)
    with atomic.atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")  # optimize=True would cost 5x the time for 1% smaller


def _to_pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).convert("RGB")


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # Pillow built without FreeType: its bitmap font
        return ImageFont.load_default()


def _fit(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> str:
    """``text`` shortened in the middle with an ellipsis until it fits ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    keep = len(text)
    while keep > 4:
        keep -= 1
        head, tail = text[:keep // 2], text[len(text) - (keep - keep // 2):]
        candidate = f"{head}…{tail}"
        if font.getlength(candidate) <= width:
            return candidate
    return text[:4]
