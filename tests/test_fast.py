"""The ``fast`` architecture (cifar_dvc/models/fast.py): shapes, outputs, size, learning, saving.

Small widths keep these tests to a few seconds; the default width is only built, never trained.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from cifar_dvc.models.fast import build_fast


def _images(n: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


@pytest.mark.parametrize(("shape", "classes"), [((32, 32, 3), 10), ((28, 28, 1), 10), ((32, 32, 3), 100)])
def test_outputs_are_probability_distributions(shape: tuple[int, int, int], classes: int) -> None:
    model = build_fast(shape, classes, width=8)
    assert model.input_shape == (None, *shape)
    probs = np.asarray(model(_images(4, shape), training=False))
    assert probs.shape == (4, classes)
    assert probs.dtype == np.float32
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_parameter_count_is_stable() -> None:
    # stem 3x3x3x24 + BN shift 24 (+ 2x24 moving stats), blocks 64/256/256 likewise, head 256x10.
    # A change here changes the model people compare against; update the docs with it.
    assert build_fast((32, 32, 3), 10).count_params() == 1_974_352
    assert build_fast((28, 28, 1), 10).count_params() == 1_973_920
    assert build_fast((32, 32, 3), 10, width=32).count_params() == 499_088
    # Only the BN shifts learn (gamma frozen at 1, as in airbench): moving stats are not trainable.
    model = build_fast((32, 32, 3), 10, width=32)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    bn_channels = 24 + 2 * 32 + 4 * 128
    assert trainable == 499_088 - 2 * bn_channels


def test_rejects_nonpositive_width() -> None:
    with pytest.raises(ValueError, match="width"):
        build_fast((32, 32, 3), 10, width=0)


def test_a_few_training_steps_reduce_the_loss() -> None:
    keras.utils.set_random_seed(3)
    model = build_fast((32, 32, 3), 10, width=8)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.2))
    x = _images(32, (32, 32, 3), seed=1)
    y = keras.utils.to_categorical(np.arange(32) % 10, 10)
    losses = [float(model.train_on_batch(x, y)) for _ in range(12)]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


def test_keras_file_round_trip_gives_identical_predictions(tmp_path: Path) -> None:
    keras.utils.set_random_seed(5)
    model = build_fast((28, 28, 1), 10, width=8, stem_width=8, scaling=0.25)
    x = _images(6, (28, 28, 1), seed=2)
    # one training step so that weights and BN statistics are not at their initial values
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    model.train_on_batch(x, keras.utils.to_categorical(np.arange(6) % 10, 10))
    path = tmp_path / "fast.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.count_params() == model.count_params()
    np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), np.asarray(model(x, training=False)))
