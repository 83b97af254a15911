"""The ``ingest`` stage's logic: raw files of ``data.dataset`` -> validated uint8 NHWC splits.

``ingest_raw`` dispatches on the data set (the CIFAR-10 layout also serves the synthetic set) and
returns the training and test images, labels and class names; ``write_interim`` stores them in the
``data/interim`` layout of ``cifar_dvc.artifacts`` (``train.npz``, ``test.npz``, ``meta.json``).

Reads ``data/raw`` (the directory given). Writes the directory given. Run by ``stages/ingest.py``.
"""

from __future__ import annotations

from pathlib import Path

from cifar_dvc import artifacts
from cifar_dvc.datasets import cifar, mnist
from cifar_dvc.datasets.cifar import Images
from cifar_dvc.datasets.params import DataParams
from cifar_dvc.datasets.sources import raw_files


def ingest_raw(raw_dir: Path | str, params: DataParams) -> tuple[Images, Images, artifacts.Meta]:
    """Read and validate the raw files of ``params.dataset`` in ``raw_dir``."""
    raw_dir = Path(raw_dir)
    if params.dataset == "mnist":
        train, test, classes = mnist.read_dir(raw_dir)
    else:
        layout = {"cifar10": cifar.CIFAR10, "cifar100": cifar.CIFAR100, "synthetic": cifar.SYNTHETIC}
        archive = raw_dir / raw_files(params.dataset)[0]
        label_mode = params.label_mode if params.dataset == "cifar100" else "fine"
        train, test, classes = cifar.read_archive(archive, layout[params.dataset], label_mode)
    shape = tuple(int(v) for v in train.x.shape[1:])
    return train, test, artifacts.Meta(params.dataset, classes, shape)  # type: ignore[arg-type]


def write_interim(out_dir: Path | str, train: Images, test: Images, meta: artifacts.Meta) -> None:
    """Write ``train.npz``, ``test.npz`` and ``meta.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    artifacts.save_split(out_dir / "train.npz", train.x, train.y)
    artifacts.save_split(out_dir / "test.npz", test.x, test.y)
    artifacts.save_meta(out_dir, meta)
