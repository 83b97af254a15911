"""The ``seed``, ``data:`` and ``prepare:`` sections of ``params.yaml`` as validated dataclasses.

Loaded by ``stages/fetch.py``, ``stages/ingest.py`` and ``stages/prepare.py`` through
``cifar_dvc.config.load_section``; each stage reads only the keys its ``dvc.yaml`` entry lists.
Reads ``params.yaml`` only through the caller. Writes nothing.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

from cifar_dvc.config import PARAMS_FILE
from cifar_dvc.datasets.archive import MAX_KEPT_BYTES, MAX_MEMBER_BYTES
from cifar_dvc.errors import ParamsError

DatasetName = Literal["cifar10", "cifar100", "mnist", "synthetic"]
DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "mnist", "synthetic")
_MD5 = re.compile(r"[0-9a-f]{32}")


@dataclasses.dataclass
class SyntheticParams:
    """Sizes and difficulty of the generated data set (``data.dataset: synthetic``)."""

    num_classes: int = 10  # number of classes, each a different 5x5 letter (2..26)
    train_per_class: int = 500  # training images per class
    test_per_class: int = 100  # test images per class
    image_size: int = 32  # images are image_size x image_size x 3 (8..64)
    max_scale: int = 2  # each letter drawn at a random integer scale 1..max_scale (5..5*max_scale px)
    noise: float = 24.0  # std of the Gaussian pixel noise, in 0..255 units

    def validate(self) -> None:
        if not 2 <= self.num_classes <= 26:
            raise ValueError(f"num_classes must be in 2..26 (one letter each), got {self.num_classes}")
        if self.train_per_class < 1 or self.test_per_class < 1:
            raise ValueError("train_per_class and test_per_class must be at least 1")
        if not 8 <= self.image_size <= 64:
            raise ValueError(f"image_size must be in 8..64, got {self.image_size}")
        if self.max_scale < 1 or 5 * self.max_scale > self.image_size:
            raise ValueError(f"max_scale must be >= 1 with 5 * max_scale <= image_size, got {self.max_scale}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")
        self.check_size()

    def archive_bytes(self) -> tuple[int, int]:
        """Estimated bytes of the archive's pickles: all of them, and the largest member.

        Each image is its pixels plus about 40 bytes of label and file name in the pickles;
        the training images are split into 5 batches, the test images are one.
        """
        per_image = 3 * self.image_size**2 + 40
        train = self.num_classes * self.train_per_class * per_image
        test = self.num_classes * self.test_per_class * per_image
        return train + test, max(-(-train // 5), test)

    def generation_bytes(self) -> int:
        """Estimated peak memory of generating the larger split: float32 canvas, float64 noise,
        float32 and uint8 copies, about 17 bytes per pixel value."""
        values = 3 * self.image_size**2 * self.num_classes * max(self.train_per_class, self.test_per_class)
        return 17 * values

    def check_size(self) -> None:
        """Refuse sizes that ``ingest`` could not read (its archive caps), before anything is generated."""
        total, largest = self.archive_bytes()
        if total > MAX_KEPT_BYTES or largest > MAX_MEMBER_BYTES:
            n = self.num_classes * (self.train_per_class + self.test_per_class)
            raise ValueError(
                f"train_per_class {self.train_per_class} and test_per_class {self.test_per_class} make "
                f"{n} images of {self.image_size}x{self.image_size}x3: an archive of about "
                f"{_size(total)} (ingest reads at most {_size(MAX_KEPT_BYTES)}, {_size(MAX_MEMBER_BYTES)} "
                f"per batch) and about {_size(self.generation_bytes())} of memory to generate; "
                "lower train_per_class or test_per_class")


@dataclasses.dataclass
class DataParams:
    """Which data set the pipeline runs on and where its files come from."""

    dataset: DatasetName = "cifar10"  # cifar10 | cifar100 | mnist | synthetic
    url: str | None = None  # archive URL, local path or file:// URL; null = official URL of `dataset`
    md5: str | None = None  # md5 of the archive (mnist: 4 comma-separated); null = official md5
    label_mode: Literal["fine", "coarse"] = "fine"  # CIFAR-100 only: 100 fine or 20 coarse classes
    train_subset: int | None = None  # keep this many training images (stratified, seeded); null = all
    synthetic: SyntheticParams = dataclasses.field(default_factory=SyntheticParams)  # synthetic only

    def validate(self) -> None:
        if self.md5 is not None:
            parts = [p.strip().lower() for p in self.md5.split(",")]
            if not all(_MD5.fullmatch(p) for p in parts):
                raise ValueError(f"md5 must be 32 hex digits (mnist: 4 of them, comma-separated), "
                                 f"got {self.md5!r}")
        if self.train_subset is not None and self.train_subset < 1:
            raise ValueError(f"train_subset must be null or a positive number of images, "
                             f"got {self.train_subset}")


@dataclasses.dataclass
class PrepareParams:
    """How ``prepare`` normalizes the images and which data it validates on."""

    normalize: Literal["scale", "standardize"] = "scale"  # scale: x/255; standardize: per-channel z-score
    validation: float | Literal["test"] = 0.1  # fraction of train held out (stratified), or "test"

    def validate(self) -> None:
        if not isinstance(self.validation, str) and not 0.0 < self.validation < 1.0:
            raise ValueError(f"validation must be a fraction strictly between 0 and 1 or \"test\", "
                             f"got {self.validation}")


def _size(n: int) -> str:
    """``n`` bytes for people: 512.0 MiB, 74.5 GiB, 2.3 TiB."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"


def read_seed(params: dict[str, Any], file: str = str(PARAMS_FILE)) -> int:
    """The top-level ``seed`` key (default 0); anything but an integer is a ParamsError."""
    seed = params.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ParamsError(f"{file}: seed: expected a non-negative integer, got {seed!r}")
    return seed
