"""Shared fixtures: a tiny prepared synthetic data set in the ``data/prepared`` layout.

``prepared_dir`` is made once per test session by the data library itself (no dvc), so tests of
training, evaluation and serving can run on real pipeline artifacts in a second.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before any test imports TensorFlow

from cifar_dvc import artifacts
from cifar_dvc.datasets import synthetic
from cifar_dvc.datasets.params import PrepareParams, SyntheticParams
from cifar_dvc.datasets.split import prepare_dir

TINY_SYNTHETIC = SyntheticParams(num_classes=10, train_per_class=20, test_per_class=10, image_size=32)


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data/prepared`` of a tiny synthetic set: 10 classes, 180 train, 20 val, 100 test, 32x32x3.

    Holds ``train.npz``, ``val.npz``, ``test.npz`` (x uint8, y int64, y_onehot float32),
    ``meta.json`` and ``normalization.json`` (``scale``). Treat it as read-only: it is shared.
    """
    root = tmp_path_factory.mktemp("data")
    train, test, classes = synthetic.generate(TINY_SYNTHETIC, seed=7)
    interim = root / "interim"
    artifacts.save_split(interim / "train.npz", *train)
    artifacts.save_split(interim / "test.npz", *test)
    artifacts.save_meta(interim, artifacts.Meta("synthetic", classes, train[0].shape[1:]))
    out = root / "prepared"
    prepare_dir(interim, out, PrepareParams(normalize="scale", validation=0.1), train_subset=None, seed=7)
    return out
