"""Reader of the official MNIST IDX files (gzip): grayscale 28x28 digits, validated like CIFAR.

IDX is a tiny binary format: a 4-byte magic (0x0803 = unsigned bytes, 3 dimensions for images;
0x0801 for labels), the dimensions as big-endian uint32, then the raw bytes. Nothing is executed,
so the risks are size and corruption: each file is size-checked before it is read and
decompressed in memory with a cap (a gzip bomb stops there), and magic, dimensions, length,
label range and counts are checked, each failure one DataError line naming the file.

Reads the 4 ``.gz`` files in the directory it is given. Writes nothing.
Used by ``cifar_dvc.datasets.ingest`` (``stages/ingest.py``).
"""

from __future__ import annotations

import gzip
import os
import stat
import zlib
from pathlib import Path

import numpy as np

from cifar_dvc.datasets.cifar import Images
from cifar_dvc.errors import DataError

FILES = {  # split -> (images file, labels file), the official names
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES = [str(d) for d in range(10)]
SIDE = 28
MAX_BYTES = 64 * 1024 * 1024  # the largest file, train images, is 47,040,016 bytes uncompressed


def gunzip(path: Path, limit: int = MAX_BYTES) -> bytes:
    """The decompressed content of gzip file ``path``, refusing more than ``limit`` bytes.

    The compressed file is refused by its size before it is read if it is larger than ``limit``
    (plus gzip's few bytes of framing: even incompressible data grows by 0.02%), so neither the
    compressed nor the inflated bytes ever exceed about ``limit`` in memory.
    """
    max_compressed = limit + limit // 1000 + 1024
    try:
        with open(path, "rb", opener=_open_nonblocking) as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise DataError(f"{path}: not a regular file; expected a gzip IDX file")
            if info.st_size > max_compressed:
                raise DataError(f"{path}: {info.st_size} bytes, more than the {max_compressed} bytes an "
                                "MNIST .gz file may have; not an MNIST file")
            compressed = handle.read(max_compressed + 1)
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run `dvc repro fetch` first") from None
    except IsADirectoryError:
        raise DataError(f"{path}: a folder, not a regular file; expected a gzip IDX file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip header and trailer
    try:
        data = inflater.decompress(compressed, limit + 1)
    except zlib.error as exc:
        raise DataError(f"{path}: corrupt gzip data ({exc})") from None
    if len(data) > limit:
        raise DataError(f"{path}: decompresses to more than {limit} bytes; not an MNIST file")
    if not inflater.eof:
        raise DataError(f"{path}: truncated gzip file")
    return data


def _open_nonblocking(path: str, flags: int) -> int:
    # A FIFO would block the open until a writer appears; the fstat check refuses it right after.
    return os.open(path, flags | os.O_NONBLOCK)


def parse_idx(data: bytes, ndim: int, where: str) -> np.ndarray:
    """A uint8 array from IDX bytes with ``ndim`` dimensions (validated header and length)."""
    if len(data) < 4 + 4 * ndim or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise DataError(f"{where}: not an IDX file of unsigned bytes with {ndim} dimension(s)")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(data) != expected:
        raise DataError(f"{where}: header says {dims} ({expected} bytes) but the file has {len(data)} bytes")
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def read_split(raw_dir: Path | str, split: str) -> Images:
    """Validated images (N x 28 x 28 x 1 uint8) and labels (int64) of ``split`` (train | test)."""
    raw_dir = Path(raw_dir)
    images_file, labels_file = (raw_dir / name for name in FILES[split])
    x = parse_idx(gunzip(images_file), 3, str(images_file))
    y = parse_idx(gunzip(labels_file), 1, str(labels_file)).astype(np.int64)
    if x.shape[1:] != (SIDE, SIDE):
        raise DataError(f"{images_file}: expected {SIDE}x{SIDE} images, got {x.shape[1]}x{x.shape[2]}")
    if len(x) != len(y):
        raise DataError(f"{labels_file}: {len(y)} labels for the {len(x)} images of {images_file.name}")
    if len(y) == 0:
        raise DataError(f"{labels_file}: no labels")
    if y.max() >= len(CLASSES):
        raise DataError(f"{labels_file}: label {int(y.max())} out of range 0..{len(CLASSES) - 1}")
    return Images(np.ascontiguousarray(x[..., None]), y)


def read_dir(raw_dir: Path | str) -> tuple[Images, Images, list[str]]:
    """``(train, test, class_names)`` of the four MNIST files in ``raw_dir``."""
    return read_split(raw_dir, "train"), read_split(raw_dir, "test"), list(CLASSES)


def write_idx_gz(path: Path | str, array: np.ndarray) -> None:
    """Write uint8 ``array`` as a gzip IDX file, the inverse of ``read_split``'s parsing."""
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    Path(path).write_bytes(gzip.compress(header + np.ascontiguousarray(array, np.uint8).tobytes(), mtime=0))
