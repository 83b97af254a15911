"""The ``fast`` architecture (cifar_dvc/models/fast.py): shapes, outputs, size, learning, saving.

Small widths keep these tests to a few seconds; the default width is only built, never trained.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from cifar_dvc import models
from cifar_dvc.models.fast import build_fast, init_whitening, whitening_kernel
from cifar_dvc.training.optim import NormBiasScaledSGD


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
    # whiten 2x2x3x24 (frozen), blocks 64/256/256 with BN shift + 2 moving stats, head 256x10.
    # A change here changes the model people compare against; update the docs with it.
    assert build_fast((32, 32, 3), 10).count_params() == 1_973_920
    assert build_fast((32, 32, 3), 10, width=32).count_params() == 498_656
    assert build_fast((32, 32, 3), 10, stem="conv").count_params() == 1_974_352  # conv3x3(24) + BN stem
    # MNIST: 8 whitening filters (2 x 4 patch pixels) feed block 1
    mnist = 1_973_920 - 2 * 2 * 3 * 24 + 2 * 2 * 1 * 8 - (24 - 8) * 64 * 9
    assert build_fast((28, 28, 1), 10).count_params() == mnist
    # Only the BN shifts and the convs learn: moving stats and the whitening filters are frozen.
    model = build_fast((32, 32, 3), 10, width=32)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    bn_channels = 2 * 32 + 4 * 128
    assert trainable == 498_656 - 2 * bn_channels - 2 * 2 * 3 * 24


def test_whitening_kernel_decorrelates_patches() -> None:
    rng = np.random.default_rng(0)
    # strongly correlated neighbours and channels, like natural images
    base = rng.normal(size=(64, 17, 17, 1))
    images = base[:, :16, :16] + 0.5 * base[:, 1:, 1:] + 0.1 * rng.normal(size=(64, 16, 16, 3))
    kernel = whitening_kernel(images, eps=1e-9)
    assert kernel.shape == (2, 2, 3, 24)
    np.testing.assert_allclose(kernel[..., 12:], -kernel[..., :12])
    patches = np.stack([images[:, i:i + 15, j:j + 15, :] for i in range(2) for j in range(2)], axis=3)
    patches = patches.reshape(-1, 12)
    whitened = patches @ kernel.reshape(12, 24)[:, :12]
    np.testing.assert_allclose(whitened.T @ whitened / len(whitened), np.eye(12), atol=1e-3)
    with pytest.raises(ValueError, match="at least 2x2"):
        whitening_kernel(np.zeros((3, 1, 5, 3)))


def test_init_from_data_sets_the_whitening_stem_only_where_there_is_one() -> None:
    images = _images(50, (32, 32, 3), seed=4)
    model = build_fast((32, 32, 3), 10, width=8)
    assert models.init_from_data(model, images)
    kernel = np.asarray(model.get_layer("whiten").kernel)
    np.testing.assert_allclose(kernel, whitening_kernel(images), rtol=1e-5)
    assert not init_whitening(build_fast((32, 32, 3), 10, width=8, stem="conv"), images)
    assert not models.init_from_data(models.build("cnn", (32, 32, 3), 10), images)


def test_dirac_init_starts_each_block_conv_as_an_identity_on_its_first_channels() -> None:
    model = build_fast((32, 32, 3), 10, width=8)
    square = np.asarray(model.get_layer("block1b_conv").kernel)  # 8 -> 8: all filters identities
    expected = np.zeros_like(square)
    expected[1, 1, np.arange(8), np.arange(8)] = 1
    np.testing.assert_array_equal(square, expected)
    widening = np.asarray(model.get_layer("block2a_conv").kernel)  # 8 -> 32: 8 identities, 24 random
    np.testing.assert_array_equal(widening[..., :8], expected)
    assert np.abs(widening[..., 8:]).min() > 0
    plain = np.asarray(build_fast((32, 32, 3), 10, width=8, dirac=False).get_layer("block1b_conv").kernel)
    assert np.count_nonzero(plain) == plain.size


def test_residual_blocks_add_a_third_conv_around_a_skip() -> None:
    # airbench96's ConvGroup: one more conv3x3 + BN(shift, 2 moving stats) per block of width w
    extra = sum(9 * w * w + 3 * w for w in (64, 256, 256))
    assert build_fast((32, 32, 3), 10, residual=True).count_params() == 1_973_920 + extra
    # airbench96's make_net96 has 12,721,208 PyTorch parameters (convs 12,708,864, whitening conv
    # 288 + bias 24, BN weight + bias 6,912, linear 5,120); this one trains all of them except the
    # frozen whitening kernel and the BN scales airbench freezes at 1 (3,456).
    airbench96 = build_fast((32, 32, 3), 10, width=128, whiten_bias=True, residual=True)
    assert sum(int(np.prod(w.shape)) for w in airbench96.trainable_weights) == 12_721_208 - 288 - 3_456
    model = build_fast((32, 32, 3), 10, width=8, residual=True)
    assert not any(layer.name.endswith("_add") for layer in build_fast((32, 32, 3), 10, width=8).layers)
    third = np.asarray(model.get_layer("block3c_conv").kernel)  # dirac-initialized like the others
    np.testing.assert_array_equal(third[1, 1, np.arange(32), np.arange(32)], np.ones(32))
    names = [f"block{i}{part}" for i in (1, 2, 3) for part in ("a_gelu", "c_gelu", "_add")]
    probe = keras.Model(model.input, [model.get_layer(name).output for name in names])
    outputs = [np.asarray(o) for o in probe(_images(2, (32, 32, 3)), training=False)]
    for first, last, added in zip(outputs[0::3], outputs[1::3], outputs[2::3], strict=True):
        np.testing.assert_allclose(added, first + last, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(model(_images(2, (32, 32, 3)))).sum(axis=1), 1.0, rtol=1e-5)


def test_stem_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="stem_width applies to stem 'conv'"):
        build_fast((32, 32, 3), 10, stem_width=8)
    with pytest.raises(ValueError, match="stem must be"):
        build_fast((32, 32, 3), 10, stem="resnet")


def test_norm_bias_lr_scale_multiplies_the_step_of_batchnorm_shifts_only() -> None:
    def one_step(scale: float) -> tuple[np.ndarray, np.ndarray]:
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        x = keras.layers.Dense(3, name="dense")(inputs)
        outputs = keras.layers.BatchNormalization(scale=False, name="bn")(x)
        model = keras.Model(inputs, outputs)
        before = [np.asarray(w) for w in model.trainable_weights]
        opt = NormBiasScaledSGD(norm_bias_lr_scale=scale, learning_rate=0.1, momentum=0.9, nesterov=True)
        model.compile(optimizer=opt, loss="mse")
        model.train_on_batch(np.arange(8, dtype="float32").reshape(2, 4), np.ones((2, 3), "float32"))
        after = [np.asarray(w) for w in model.trainable_weights]
        kernel, _bias, beta = (a - b for a, b in zip(after, before, strict=True))
        return kernel, beta

    kernel1, beta1 = one_step(1.0)
    kernel64, beta64 = one_step(64.0)
    assert np.abs(beta1).min() > 0
    np.testing.assert_allclose(beta64, 64 * beta1, rtol=1e-4)
    np.testing.assert_allclose(kernel64, kernel1, rtol=1e-6)
    config = NormBiasScaledSGD(norm_bias_lr_scale=8.0).get_config()
    assert NormBiasScaledSGD.from_config(config).norm_bias_lr_scale == 8.0


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


@pytest.mark.parametrize("fused", [False, True])
def test_keras_file_round_trip_gives_identical_predictions(tmp_path: Path, fused: bool) -> None:
    keras.utils.set_random_seed(5)
    model = build_fast((28, 28, 1), 10, width=8, scaling=0.25, fused_batchnorm=fused)
    init_whitening(model, _images(20, (28, 28, 1), seed=3))
    x = _images(6, (28, 28, 1), seed=2)
    # one training step so that weights and BN statistics are not at their initial values
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    model.train_on_batch(x, keras.utils.to_categorical(np.arange(6) % 10, 10))
    path = tmp_path / "fast.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.count_params() == model.count_params()
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), np.asarray(model(x, training=False)))


def test_fast_weights_depend_only_on_the_seed() -> None:
    """Same seed, same weights, in any process; and no two same-shaped layers start alike."""
    code = ("import keras, hashlib; from cifar_dvc import models; keras.utils.set_random_seed(3); "
            "m = models.build('fast', (32, 32, 3), 10, width=8, stem='conv'); "
            "print(hashlib.md5(b''.join(w.tobytes() for w in m.get_weights())).hexdigest())")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                              check=True).stdout.strip() for _ in range(2)}
    assert len(digests) == 1, "two processes with the same seed built different weights"
    keras.utils.set_random_seed(3)
    model = models.build("fast", (32, 32, 3), 10, width=8, stem="conv", dirac=False)  # no identity init
    kernels = [w.numpy() for w in model.weights if w.path.endswith("conv/kernel")]
    same_shape = [(a, b) for i, a in enumerate(kernels) for b in kernels[i + 1:] if a.shape == b.shape]
    assert same_shape and not any(np.array_equal(a, b) for a, b in same_shape)


def _op_types(model: keras.Model, x: np.ndarray) -> set[str]:
    """The op types of one traced training-mode forward pass of ``model``."""
    import tensorflow as tf

    graph = tf.function(lambda images: model(images, training=True)).get_concrete_function(
        tf.TensorSpec(x.shape, tf.float32)).graph
    return {op.type for op in graph.get_operations()}


def test_fused_batchnorm_trains_as_keras_batchnorm_does() -> None:
    """Same weights, same batch: one SGD step gives the same outputs, gradients, weights and moving
    statistics with TensorFlow's fused kernel as with Keras' layer (float32, round-off apart)."""
    import tensorflow as tf

    keras.utils.set_random_seed(2)
    plain = build_fast((16, 16, 3), 10, width=8)
    fused = build_fast((16, 16, 3), 10, width=8, fused_batchnorm=True)
    fused.set_weights(plain.get_weights())
    x = _images(24, (16, 16, 3), seed=4)
    assert "FusedBatchNormV3" in _op_types(fused, x) and "FusedBatchNormV3" not in _op_types(plain, x)
    y = keras.utils.to_categorical(np.arange(24) % 10, 10)
    results = []
    for model in (plain, fused):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = keras.losses.categorical_crossentropy(y, out)
        grads = tape.gradient(loss, model.trainable_variables)
        keras.optimizers.SGD(0.1).apply_gradients(zip(grads, model.trainable_variables, strict=True))
        results.append((out.numpy(), [g.numpy() for g in grads], [w.numpy() for w in model.weights]))
    (out_a, grads_a, weights_a), (out_b, grads_b, weights_b) = results
    np.testing.assert_allclose(out_a, out_b, rtol=1e-5, atol=1e-7)
    for a, b in zip(grads_a + weights_a, grads_b + weights_b, strict=True):  # round-off of the array's scale
        assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max() + 1e-7
    moving = [w.numpy() for w in fused.weights if "moving" in w.path]
    assert moving and not all(np.all(m == 0) or np.all(m == 1) for m in moving)  # the step updated them
    # inference is Keras' own code with the moving statistics
    np.testing.assert_allclose(plain(x, training=False).numpy(), fused(x, training=False).numpy(), rtol=1e-5,
                               atol=1e-7)


def test_gelu_float32_computes_every_gelu_in_float32_and_trains_in_bfloat16() -> None:
    from cifar_dvc.training import precision

    with precision.policy("mixed_bfloat16"):
        keras.utils.set_random_seed(3)
        model = build_fast((32, 32, 3), 10, width=8, fused_batchnorm=True, gelu_float32=True)
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.2))
        x = _images(32, (32, 32, 3), seed=1)
        assert "FusedBatchNormV3" in _op_types(model, x)
        y = keras.utils.to_categorical(np.arange(32) % 10, 10)
        losses = [float(model.train_on_batch(x, y)) for _ in range(12)]
    gelus = [layer for layer in model.layers if layer.name.endswith("gelu")]
    assert len(gelus) == 7 and {layer.compute_dtype for layer in gelus} == {"float32"}
    assert {layer.compute_dtype for layer in model.layers if layer.name.endswith("_conv")} == {"bfloat16"}
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses
    # Under float32 the switch changes nothing: the same weights give the same answer.
    keras.utils.set_random_seed(3)
    plain = build_fast((32, 32, 3), 10, width=8)
    keras.utils.set_random_seed(3)
    switched = build_fast((32, 32, 3), 10, width=8, gelu_float32=True)
    np.testing.assert_array_equal(plain(x, training=False).numpy(), switched(x, training=False).numpy())


def test_fused_gelu_is_keras_exact_gelu_forward_and_backward() -> None:
    """Keras' exact GELU and its autodiff gradient, within float32 round-off; bfloat16 in and out,
    computed in float32 inside: within bfloat16's rounding of the float32 answer."""
    import tensorflow as tf

    from cifar_dvc.models.layers import FusedGELU

    x = tf.constant(np.linspace(-8, 8, 4001, dtype=np.float32).reshape(1, 1, -1, 1))
    fused = FusedGELU()

    def call(fn: Any, v: tf.Tensor) -> tf.Tensor:
        return fn(v)

    for run in (call, tf.function(call)):  # eager and traced
        outputs, grads = [], []
        for fn in (fused, lambda v: keras.activations.gelu(v, approximate=False)):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = run(fn, x)
                loss = tf.reduce_sum(y * tf.cos(x))  # an upstream gradient that varies
            outputs.append(y.numpy())
            grads.append(tape.gradient(loss, x).numpy())
        np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)
    half = tf.cast(x, tf.bfloat16)
    with tf.GradientTape() as tape:
        tape.watch(half)
        y = FusedGELU(dtype="bfloat16")(half)
    grad = tape.gradient(y, half)
    assert y.dtype == tf.bfloat16 and grad.dtype == tf.bfloat16
    exact = keras.activations.gelu(tf.cast(half, tf.float32), approximate=False).numpy()
    np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), exact, rtol=2 ** -7, atol=1e-6)


def test_gelu_fused_trains_in_bfloat16_saves_and_predicts_as_keras_gelu(tmp_path: Path) -> None:
    import tensorflow as tf

    from cifar_dvc.training import precision

    with pytest.raises(ValueError, match="gelu_fused computes in float32 already"):
        build_fast((32, 32, 3), 10, width=8, gelu_fused=True, gelu_float32=True)
    x = _images(32, (32, 32, 3), seed=1)
    with precision.policy("mixed_bfloat16"):
        keras.utils.set_random_seed(3)
        model = build_fast((32, 32, 3), 10, width=8, fused_batchnorm=True, gelu_fused=True)
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.2))
        y = keras.utils.to_categorical(np.arange(32) % 10, 10)
        losses = [float(model.train_on_batch(x, y)) for _ in range(12)]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses
    gelus = [layer for layer in model.layers if layer.name.endswith("gelu")]
    assert len(gelus) == 7 and {type(layer).__name__ for layer in gelus} == {"FusedGELU"}
    # the traced step calls XLA-compiled functions (the activation's forward pass here)
    graph = tf.function(lambda v: model(v, training=True)).get_concrete_function(
        tf.TensorSpec(x.shape, tf.float32)).graph
    assert any(op.get_attr("_XlaMustCompile") for op in graph.get_operations()
               if "_XlaMustCompile" in op.node_def.attr)
    path = tmp_path / "fused.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    # Under float32 the switch changes the kernels, not the function: same weights, same answer.
    keras.utils.set_random_seed(3)
    plain = build_fast((32, 32, 3), 10, width=8)
    keras.utils.set_random_seed(3)
    switched = build_fast((32, 32, 3), 10, width=8, gelu_fused=True)
    np.testing.assert_allclose(plain(x, training=False).numpy(), switched(x, training=False).numpy(),
                               rtol=1e-5, atol=1e-6)
