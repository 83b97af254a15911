"""The custom test set of seed 004: a user's photos as unfiltered, filtered and blur-sweep sets.

Reads the photo folder ``custom.dir`` laid out as ``<class name>/<image files>`` (class names those
of the data set, from ``data/prepared/meta.json``).
Every photo is decoded, EXIF-oriented, made square and resized to the data set's image size by
``cifar_dvc.images``; the ``filtered`` set blurs the square photo first with an s x s Gaussian,
s = round(w / ``custom.blur_divisor``) (seed 004: 75), and each ``custom.sweep_divisors`` entry d
makes one more set ``sweep_<d>`` the same way, so evaluation can draw accuracy against blur strength.
All of these are resized with ``custom.resample`` (Lanczos); with ``custom.compare_resample:
nearest`` the same sets are also made with seed 004's aliasing nearest-neighbour resize (as Keras'
``load_img``): ``nearest_unfiltered``, ``nearest_filtered`` and ``sweep_nearest_<d>``, so the
report can tell how much of the blur's gain only repairs aliasing. Decoding, squaring and blurring
are done once per photo and kernel size; only the (cheap) resize is repeated. Set names and files
come from ``cifar_dvc.evalsets``.

Writes into the output directory (``data/custom_sets/``), per set, ``<set>.npz`` through
``cifar_dvc.artifacts.save_split``: ``x`` uint8 (N, H, W, C), ``y`` int64, ``files`` (paths
relative to the photo folder), ``kernel_size`` (the s of each photo; 0 in the unfiltered sets;
s <= 1 means not blurred) and ``width`` (the square's side in pixels, the w of the rule); plus
``report.json`` (each set's file, evaluation name, resize and divisor; every photo's size and
kernel sizes, skipped files with reasons, counts). Also a contact sheet PNG: for each photo its
original thumbnail, the unfiltered and the filtered image of each resize.

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
from cifar_dvc.evalsets import CUSTOM, MAIN, NEAREST, SETS, custom_set, parse_sweep, sweep_name
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

REPORT_FILE = "report.json"
UNFILTERED = custom_set(MAIN, filtered=False).stem  # the file stems of the main-resize sets
FILTERED = custom_set(MAIN, filtered=True).stem
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
    # The same sets again resized as seed 004 did (nearest: aliasing, as Keras' load_img); None = off
    compare_resample: Literal["nearest"] | None = "nearest"
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
        if self.compare_resample == self.resample:
            raise ValueError(f"compare_resample: equals custom.resample ({self.resample}); the comparison "
                             "would repeat the sets: use another resize or null")
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
    kernel_size: dict[str, int]  # set file stem -> s used (0 for unfiltered)
    thumbnail: Image.Image | None = dataclasses.field(repr=False)  # original, for the contact sheet


@dataclasses.dataclass
class CustomSets:
    """Everything ``build_custom_sets`` made: arrays per set, photo records, problems, warnings."""

    meta: artifacts.Meta
    divisors: dict[str, float]  # blurred set's file stem -> divisor
    resamples: dict[str, str]  # every set's file stem -> its resize filter
    images: dict[str, np.ndarray]  # set file stem -> uint8 (N, H, W, C)
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


def set_resizes(params: CustomParams) -> dict[str, str]:
    """The resizes made: ``{MAIN: custom.resample}`` plus ``{NEAREST: ...}`` when compare_resample is on."""
    out = {MAIN: params.resample}
    if params.compare_resample is not None:
        out[NEAREST] = params.compare_resample
    return out


def set_divisors(params: CustomParams) -> dict[str, float]:
    """The blurred sets (file stems) and their divisors, per resize: filtered then ``sweep_<d>``."""
    return {name: d for resize in set_resizes(params)
            for name, d in [(custom_set(resize, filtered=True).stem, params.blur_divisor),
                            *((sweep_name(d, resize), d) for d in params.sweep_divisors)]}


def set_resamples(params: CustomParams) -> dict[str, str]:
    """Every set's file stem and its resize filter, per resize: unfiltered, filtered, the sweep."""
    divisors = set_divisors(params)
    return {name: resample for resize, resample in set_resizes(params).items()
            for name in (custom_set(resize, filtered=False).stem,
                         *(n for n in divisors if _resize_of(n) == resize))}


def _resize_of(stem: str) -> str:
    """MAIN or NEAREST: the resize of a custom set's file stem (named by cifar_dvc.evalsets)."""
    parsed = parse_sweep(stem)
    if parsed is not None:
        return parsed[0]
    resize = next((s.resize for s in SETS if s.folder == CUSTOM and s.stem == stem), None)
    if resize is None:
        raise ValueError(f"{stem!r} is not a custom set of cifar_dvc.evalsets")
    return resize


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
    resamples = set_resamples(params)
    found, skipped = find_photos(photo_dir, meta.classes, params.on_error)
    warnings = []
    if not photo_dir.exists():
        warnings.append(f"{photo_dir}: folder not found; the custom sets are empty (n = 0). "
                        "Put photos in <custom.dir>/<class name>/ to fill them")
    elif not found:
        warnings.append(f"{photo_dir}: no photos found; the custom sets are empty (n = 0). "
                        "Put photos in <custom.dir>/<class name>/ to fill them")
    images: dict[str, list[np.ndarray]] = {name: [] for name in resamples}
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
    return CustomSets(meta, divisors, resamples, stacked, records, skipped, warnings, str(photo_dir))


def process_photo(path: Path, rel: str, label: int, size: int, channels: int, divisors: dict[str, float],
                  params: CustomParams, thumbnail: bool = True) -> tuple[PhotoRecord, dict[str, np.ndarray]]:
    """One photo as a record and its uint8 (size, size, channels) array per set (file stem).

    ``divisors``: the blurred sets, ``set_divisors(params)``. ``thumbnail``: keep a small copy of
    the original for the contact sheet (only the photos it shows).

    Equivalent to ``images.to_model_input`` once per set, but decodes and squares the photo once,
    blurs once per distinct kernel size and resizes once per kernel size and resize filter.
    """
    original = open_image(path, params.background_rgb, params.max_pixels, params.max_bytes)
    square = prepare_square(original, params.square, channels, params.background_rgb)
    kernels = {name: 0 for name in (custom_set(r, filtered=False).stem for r in set_resizes(params))}
    kernels.update({name: blur_kernel_size(square.width, d) for name, d in divisors.items()})
    resamples = {name: set_resizes(params)[_resize_of(name)] for name in kernels}
    blurred: dict[int, Image.Image] = {}
    resized: dict[tuple[int, str], np.ndarray] = {}
    arrays = {}
    for name, s in kernels.items():
        s = max(s, 1)  # s <= 1 is no blur: the unfiltered image itself
        key = (s, resamples[name])
        if key not in resized:
            if s > 1 and s not in blurred:
                blurred[s] = gaussian_blur(square, s)
            resized[key] = as_array(resize(blurred.get(s, square), size, resamples[name]), channels)
        arrays[name] = resized[key]
    thumb = None
    if thumbnail:
        thumb = original.copy()
        thumb.thumbnail((params.thumb_size, params.thumb_size), Image.Resampling.LANCZOS)
    record = PhotoRecord(rel, label, original.width, original.height, square.width, kernels, thumb)
    return record, arrays


def write_custom_sets(out_dir: Path, sets: CustomSets) -> None:
    """Write ``<set>.npz`` for every set and ``report.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    labels, files = sets.labels, sets.files
    widths = np.array([p.side for p in sets.photos], dtype=np.int64)
    for name, x in sets.images.items():
        kernels = np.array([p.kernel_size[name] for p in sets.photos], dtype=np.int64)
        artifacts.save_split(out_dir / f"{name}.npz", x, labels, files=files, kernel_size=kernels,
                             width=widths)
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
        "sets": {name: {"file": f"{name}.npz", "set": _evaluation_name(name), "resample": resample,
                        "divisor": sets.divisors.get(name)} for name, resample in sets.resamples.items()},
        "sigma": {str(s): round(kernel_sigma(s), 4) for s in blurred},
        "photos": [
            {"file": p.file, "class": sets.meta.classes[p.label], "label": p.label, "width": p.width,
             "height": p.height, "square_side": p.side, "kernel_size": dict(p.kernel_size)}
            for p in sets.photos
        ],
        "skipped": [dataclasses.asdict(s) for s in sets.skipped],
        "warnings": list(sets.warnings),
    }


def _evaluation_name(stem: str) -> str:
    """The name evaluation gives the set in file ``<stem>.npz`` (cifar_dvc.evalsets)."""
    return next((s.name for s in SETS if s.folder == CUSTOM and s.stem == stem), stem)


def contact_sheet(sets: CustomSets, params: CustomParams, columns: int = 4) -> Image.Image:
    """For each photo (up to ``params.sheet_max``): original thumbnail, unfiltered and filtered images
    of each resize (the main one, then seed 004's nearest when ``compare_resample`` made it).

    The 32x32 images are enlarged with nearest-neighbour so their pixels stay visible.
    """
    shown_sets = [(custom_set(resize, filtered).stem, filtered) for resize in set_resizes(params)
                  for filtered in (False, True) if custom_set(resize, filtered).stem in sets.images]
    two = len(shown_sets) > 2  # two resizes: name each picture by its resize filter
    pictures = [((f"{sets.resamples[stem]}, blur" if filtered else sets.resamples[stem]) if two
                 else ("filtered" if filtered else "unfiltered"), stem) for stem, filtered in shown_sets]
    t, gap, margin = params.thumb_size, 4, 12
    font, small = _font(13), _font(11)
    line = 16
    shown = sets.photos[:params.sheet_max]
    title = (f"custom set: {len(sets.photos)} photo(s) from {sets.photo_dir}, {len(sets.skipped)} skipped; "
             f"filtered: s x s Gaussian, s = round(w / {params.blur_divisor:g}); "
             f"resized with {' and '.join(set_resizes(params).values())}")
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
    cell_w, cell_h = (1 + len(pictures)) * t + len(pictures) * gap, 2 * line + t + line
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
        for k, caption in enumerate(("original", *(c for c, _ in pictures))):
            draw.text((x0 + k * (t + gap), header - line), _fit(caption, small, t), fill=(90, 90, 90),
                      font=small)
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
        for k, (_, name) in enumerate(pictures, start=1):
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
