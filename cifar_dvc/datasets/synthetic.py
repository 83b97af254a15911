"""A generated image data set that needs translation invariance: a small CNN beats an MLP on it.

Each class is a 5x5 capital letter (``X``, ``D``, ``H``, ... chosen to be far apart from each other
under every relative shift). An image draws its class's letter at a random integer scale and a
random position, in a random colour over a darker random background colour with a random
linear gradient, plus Gaussian noise. Colour and position carry no information about the class,
so a model must recognise a shape wherever it is: easy for convolutions, hard for a dense net.

Everything is a deterministic function of ``seed`` and ``SyntheticParams``. ``write_archive``
stores the set in exactly the layout of the official ``cifar-10-python.tar.gz`` (same member names,
python pickles with bytes keys, ``data`` as N x 3072 channel-first uint8 rows), byte-identical for
identical inputs, so ``ingest`` reads it with the same code as the real CIFAR-10.

Reads nothing. Writes the archive path it is given. Run by ``stages/fetch.py`` (``data.dataset: synthetic``).
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from cifar_dvc import atomic
from cifar_dvc.datasets.params import SyntheticParams

CIFAR10_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = 5
_TRAIN_STREAM, _TEST_STREAM = 102, 103  # independent RNG streams per split


# 5x5 capital letters, in the order that keeps the first classes most distinct: each letter differs
# from every earlier one in at least 6 cells under any relative shift for the first 10, and at least 2
# for all 26 (D/O, F/P, M/N, N/W, P/R are the close pairs; they come last).
LETTERS = "XDHJSZCFVKLQTYABEGIMRUWNOP"
FONT = {
    "A": ".###. #...# ##### #...# #...#", "B": "####. #...# ####. #...# ####.",
    "C": ".#### #.... #.... #.... .####", "D": "####. #...# #...# #...# ####.",
    "E": "##### #.... ####. #.... #####", "F": "##### #.... ####. #.... #....",
    "G": ".#### #.... #..## #...# .###.", "H": "#...# #...# ##### #...# #...#",
    "I": "##### ..#.. ..#.. ..#.. #####", "J": "..### ...#. ...#. #..#. .##..",
    "K": "#...# #..#. ###.. #..#. #...#", "L": "#.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #...# #...#", "N": "#...# ##..# #.#.# #..## #...#",
    "O": ".###. #...# #...# #...# .###.", "P": "####. #...# ####. #.... #....",
    "Q": ".###. #...# #.#.# #..#. .##.#", "R": "####. #...# ####. #..#. #...#",
    "S": ".#### #.... .###. ....# ####.", "T": "##### ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# .###.", "V": "#...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #.#.# ##.## #...#", "X": "#...# .#.#. ..#.. .#.#. #...#",
    "Y": "#...# .#.#. ..#.. ..#.. ..#..", "Z": "##### ...#. ..#.. .#... #####",
}
GLYPH_SIZE = 5


def class_names(num_classes: int) -> list[str]:
    """Names of the synthetic classes: the letters each class draws (``X``, ``D``, ``H``, ...)."""
    return list(LETTERS[:num_classes])


def make_glyphs(num_classes: int) -> np.ndarray:
    """The glyphs of the first ``num_classes`` classes (bool, K x 5 x 5)."""
    return np.stack([np.array([[c == "#" for c in row] for row in FONT[letter].split()])
                     for letter in LETTERS[:num_classes]])


def shift_distance(a: np.ndarray, b: np.ndarray) -> int:
    """Fewest differing cells between ``a`` and ``b`` over all relative shifts (on a zero canvas)."""
    n = a.shape[0]
    canvas = np.zeros((3 * n, 3 * n), bool)
    canvas[n:2 * n, n:2 * n] = a
    best = a.size * 2
    for dy in range(2 * n + 1):
        for dx in range(2 * n + 1):
            other = np.zeros_like(canvas)
            other[dy:dy + n, dx:dx + n] = b
            best = min(best, int(np.count_nonzero(canvas != other)))
    return best


def render(glyphs: np.ndarray, labels: np.ndarray, p: SyntheticParams,
           rng: np.random.Generator) -> np.ndarray:
    """Images (uint8, N x S x S x 3) of the glyphs ``labels`` selects, randomly placed and coloured."""
    n, s = len(labels), p.image_size
    # Random colours, but the letter is always 64..127 brighter than the background in every channel:
    # colour carries no class information and the contrast polarity is fixed (shape is what varies).
    bg = rng.integers(0, 128, (n, 3)).astype(np.float32)
    fg = bg + rng.integers(64, 128, (n, 3))
    ramp = np.linspace(-1.0, 1.0, s, dtype=np.float32)
    slope = rng.uniform(-20, 20, (n, 2, 3)).astype(np.float32)  # gradient per axis and channel
    images = (bg[:, None, None, :]
              + slope[:, None, None, 0, :] * ramp[None, :, None, None]
              + slope[:, None, None, 1, :] * ramp[None, None, :, None])
    scales = rng.integers(1, p.max_scale + 1, n)
    for i in range(n):
        g = glyphs[labels[i]]
        if scales[i] > 1:
            g = np.kron(g, np.ones((scales[i], scales[i]), bool))
        top, left = rng.integers(0, s - g.shape[0] + 1, 2)
        patch = images[i, top:top + g.shape[0], left:left + g.shape[1]]
        patch[g] = fg[i]
    if p.noise > 0:
        images += rng.normal(0.0, p.noise, images.shape).astype(np.float32)
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def generate(p: SyntheticParams, seed: int) -> tuple[tuple[np.ndarray, np.ndarray],
                                                     tuple[np.ndarray, np.ndarray], list[str]]:
    """``((x_train, y_train), (x_test, y_test), class_names)``, deterministic in ``seed`` and ``p``.

    Labels are balanced (``*_per_class`` of each class) in a shuffled order, as in CIFAR's batches.
    """
    glyphs = make_glyphs(p.num_classes)
    splits = []
    for per_class, stream in ((p.train_per_class, _TRAIN_STREAM), (p.test_per_class, _TEST_STREAM)):
        rng = np.random.default_rng([seed, stream])
        labels = rng.permutation(np.repeat(np.arange(p.num_classes, dtype=np.int64), per_class))
        splits.append((render(glyphs, labels, p, rng), labels))
    return splits[0], splits[1], class_names(p.num_classes)


def to_rows(x: np.ndarray) -> np.ndarray:
    """NHWC uint8 images as CIFAR's rows: N x (3*H*W), all red, then all green, then all blue."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), -1))


def write_archive(path: Path | str, train: tuple[np.ndarray, np.ndarray],
                  test: tuple[np.ndarray, np.ndarray], classes: list[str]) -> None:
    """Write a tar.gz in the official CIFAR-10 python layout, reproducibly (all mtimes 0)."""
    x_train, y_train = train
    x_test, y_test = test
    members: list[tuple[str, bytes]] = []
    parts = np.array_split(np.arange(len(x_train)), TRAIN_BATCHES)
    for i, part in enumerate(parts, start=1):
        members.append((f"data_batch_{i}", _batch(x_train[part], y_train[part], part,
                                                  f"training batch {i} of {TRAIN_BATCHES}")))
    members.append(("test_batch", _batch(x_test, y_test, np.arange(len(x_test)), "testing batch 1 of 1")))
    meta = {b"label_names": [c.encode() for c in classes],
            b"num_cases_per_batch": max(len(p) for p in parts),
            b"num_vis": int(np.prod(x_train.shape[1:]))}
    members.append(("batches.meta", pickle.dumps(meta, protocol=4)))
    members.append(("readme.html", b"<html><body>cifar-dvc synthetic data set (letters).</body></html>\n"))

    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=1) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(f"{CIFAR10_DIR}/{name}")
            info.size, info.mtime, info.mode = len(payload), 0, 0o644
            tar.addfile(info, io.BytesIO(payload))
    atomic.write_bytes(path, buffer.getvalue())


def _batch(x: np.ndarray, y: np.ndarray, index: np.ndarray, title: str) -> bytes:
    batch = {b"batch_label": title.encode(), b"labels": [int(v) for v in y], b"data": to_rows(x),
             b"filenames": [f"synthetic_{int(i):06d}.png".encode() for i in index]}
    # Protocol 4 as the tarball builder: bytes stay BINBYTES (protocol 2 from Python 3 needs _codecs).
    return pickle.dumps(batch, protocol=4)
