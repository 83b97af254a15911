"""Synthetic data sets in the pipeline's own layouts, made without dvc: ``data/interim`` and
``data/prepared`` of the project's letters set (``cifar_dvc.datasets.synthetic``).

One place for what the tests and benchmarks need before ``prepare`` (the arrays ``ingest``
would write) and after it, so every copy makes the same files the stages make.

    interim = write_interim(tmp / "interim", SyntheticParams(train_per_class=20), seed=7)
    prepared = write_prepared(tmp, SyntheticParams(image_size=16), seed=7)   # tmp/interim, tmp/prepared

Writes only the folders it is given. Used by tests/conftest.py, the hardening and multi-worker
tests and benchmarks/hardening.py.
"""

from __future__ import annotations

from pathlib import Path

from cifar_dvc import artifacts
from cifar_dvc.datasets import synthetic
from cifar_dvc.datasets.params import PrepareParams, SyntheticParams
from cifar_dvc.datasets.split import prepare_dir


def write_interim(folder: Path | str, params: SyntheticParams, seed: int) -> Path:
    """Write ``train.npz``, ``test.npz`` and ``meta.json`` of the synthetic set (``data/interim``
    layout, as ``ingest`` writes them) into ``folder``; returns ``folder``."""
    folder = Path(folder)
    train, test, classes = synthetic.generate(params, seed=seed)
    artifacts.save_split(folder / "train.npz", *train)
    artifacts.save_split(folder / "test.npz", *test)
    artifacts.save_meta(folder, artifacts.Meta("synthetic", classes, train[0].shape[1:]))
    return folder


def write_prepared(root: Path | str, params: SyntheticParams, seed: int,
                   prepare: PrepareParams | None = None) -> Path:
    """``root/interim`` as ``write_interim``, then ``root/prepared`` from it as the ``prepare``
    stage makes it (``prepare``: its params, default ``PrepareParams()``); returns ``root/prepared``."""
    root = Path(root)
    interim = write_interim(root / "interim", params, seed)
    prepare_dir(interim, root / "prepared", prepare or PrepareParams(), train_subset=None, seed=seed)
    return root / "prepared"
