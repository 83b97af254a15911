"""Shared fixtures: a tiny prepared synthetic data set in the ``data/prepared`` layout.

``prepared_dir`` is made once per test session by the data library itself (no dvc;
``tests/synthetic_sets.py``), so tests of training, evaluation and serving can run on real
pipeline artifacts in a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cifar_dvc.tfenv import set_defaults

set_defaults()  # before any test imports TensorFlow: the stages' oneDNN kernels, quiet start

from cifar_dvc.datasets.params import SyntheticParams  # noqa: E402
from tests.synthetic_sets import write_prepared  # noqa: E402

TINY_SYNTHETIC = SyntheticParams(num_classes=10, train_per_class=20, test_per_class=10, image_size=32)


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data/prepared`` of a tiny synthetic set: 10 classes, 180 train, 20 val, 100 test, 32x32x3.

    Holds ``train.npz``, ``val.npz``, ``test.npz`` (x uint8, y int64, y_onehot float32),
    ``meta.json`` and ``normalization.json`` (``scale``). Treat it as read-only: it is shared.
    """
    return write_prepared(tmp_path_factory.mktemp("data"), TINY_SYNTHETIC, seed=7)
