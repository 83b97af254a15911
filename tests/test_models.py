"""The model registry and the seeds' architectures: parameter counts, args checks, MobileNet weights."""

from __future__ import annotations

from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from cifar_dvc import config, models
from cifar_dvc.errors import ParamsError
from cifar_dvc.models.layers import PerChannelAffine
from cifar_dvc.normalization import NormStats
from cifar_dvc.training.variant import load_variant, variant_names

SCALE = NormStats("scale", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
STANDARDIZE = NormStats("standardize", (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
CIFAR = (32, 32, 3)
PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"

# Parameter counts the seeds print (or, for keras_cnn, the Keras example the seed starts from),
# at the input shape the seed used. (model, model_args, input shape, total, non-trainable)
SEED_COUNTS = [
    ("mlp", {}, CIFAR, 397_802, 0),  # seed 000
    ("cnn", {}, CIFAR, 72_906, 0),  # seed 000
    ("keras_cnn", {}, CIFAR, 1_250_858, 0),  # seed 001 / Keras cifar10_cnn example
    ("vgg_bn", {}, CIFAR, 309_290, 896),  # seed 003
    ("small_cnn", {}, CIFAR, 186_682, 0),  # seed 003
    ("mnist_cnn", {}, (28, 28, 1), 126_786, 0),  # seed 003
    ("imp", {}, CIFAR, 438_634, 0),  # seed 004 Table 1: the last dense layer alone has 40,970
]


def _counts(model: keras.Model) -> tuple[int, int]:
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return model.count_params(), model.count_params() - trainable


@pytest.mark.parametrize(("name", "args", "shape", "total", "frozen"), SEED_COUNTS,
                         ids=[c[0] for c in SEED_COUNTS])
def test_seed_parameter_counts(name: str, args: dict, shape: tuple, total: int, frozen: int) -> None:
    model = models.build(name, shape, 10, **args)
    assert _counts(model) == (total, frozen)
    assert model.output_shape == (None, 10)


def test_table1_shapes_of_seed_004() -> None:
    """IMP's output shapes are Table 1's: 32x32x32 ... 4x4x256, flatten 4096."""
    model = models.build("imp", CIFAR, 10)
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    shapes = [layer.output.shape[1:] for layer in pools]
    assert shapes == [(16, 16, 32), (8, 8, 64), (4, 4, 256)]
    base = models.build("base", CIFAR, 10)
    flat = next(layer for layer in base.layers if isinstance(layer, keras.layers.Flatten))
    assert flat.output.shape[1:] == (32768,)


def test_imp_batchnorm_sits_between_each_conv_and_its_activation() -> None:
    """``batchnorm: true`` adds one BatchNormalization per conv (4 weights per channel, half of
    them moving statistics) and nothing else; the default's 438,634 is in SEED_COUNTS."""
    model = models.build("imp", CIFAR, 10, batchnorm=True)
    assert _counts(model) == (438_634 + 4 * (32 + 32 + 64 + 128 + 256), 2 * (32 + 32 + 64 + 128 + 256))
    kinds = [type(layer).__name__ for layer in model.layers]
    convs = [i for i, kind in enumerate(kinds) if kind == "Conv2D"]
    assert len(convs) == 5
    assert all(kinds[i + 1:i + 3] == ["BatchNormalization", "Activation"] for i in convs)


def test_imp_convs_64_adds_the_sixth_conv_the_seed_text_counts() -> None:
    """``convs_64: 2``: a second 3x3 conv at 64 filters (64 * 64 * 9 + 64 weights), six convs."""
    model = models.build("imp", CIFAR, 10, convs_64=2)
    assert _counts(model) == (438_634 + 36_928, 0)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [conv.filters for conv in convs] == [32, 32, 64, 64, 128, 256]


def test_every_params_variant_builds() -> None:
    """Each variant of params.yaml passes the registry checks and builds (MobileNet offline)."""
    params = config.read_params(PARAMS)
    names = variant_names(params)
    assert {"mlp", "cnn", "keras_cnn", "wide_cnn", "nb_relu", "nb_elu", "vgg_bn", "small_cnn",
            "mnist_cnn", "base", "imp1", "imp2", "mnet1", "mnet2"} <= set(names)
    for name in names:
        variant = load_variant(name, params)
        args = dict(variant.model_args)
        if variant.model == "mobilenet":
            args.update(weights="none", alpha=0.25)  # no download in tests
        shape = (28, 28, 1) if name == "mnist_cnn" else CIFAR
        model = models.build(variant.model, shape, 10, normalization=STANDARDIZE, **args)
        assert model.output_shape == (None, 10), name
    wide = load_variant("wide_cnn", params)
    assert models.build(wide.model, CIFAR, 10, **wide.model_args).get_layer(index=1).filters == 128


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(ParamsError, match=r"variants\.x\.model: unknown model 'resnet'; known models: .*cnn"):
        models.check_args("resnet", {}, where="variants.x")


def test_unknown_model_arg_names_the_key() -> None:
    with pytest.raises(ParamsError, match=r"variants\.mlp\.model_args\.dropuot: unknown argument .*dropout"):
        models.check_args("mlp", {"dropuot": 0.2}, where="variants.mlp")


def test_model_arg_of_wrong_type() -> None:
    with pytest.raises(ParamsError, match=r"variants\.mlp\.model_args\.dropout: expected float, got 'high'"):
        models.check_args("mlp", {"dropout": "high"}, where="variants.mlp")
    assert models.check_args("mlp", {"dropout": 1}, where="v") == {"dropout": 1.0}


def test_affine_maps_normalized_input_to_mobilenet_range() -> None:
    pixels = np.array([0.0, 127.5, 255.0], np.float32).reshape(1, 1, 3, 1).repeat(3, axis=-1)
    normalized = pixels * STANDARDIZE.scale - STANDARDIZE.offset
    layer = PerChannelAffine([2 * s for s in STANDARDIZE.std], [2 * m - 1 for m in STANDARDIZE.mean])
    out = keras.ops.convert_to_numpy(layer(normalized))
    np.testing.assert_allclose(out[0, 0, :, 0], [-1.0, 0.0, 1.0], atol=1e-5)


def _tiny_mobilenet() -> keras.Model:
    base = keras.applications.MobileNet(input_shape=(128, 128, 3), alpha=0.25, include_top=False,
                                        weights=None, pooling="avg")
    rng = np.random.default_rng(0)
    base.set_weights([rng.normal(size=w.shape).astype("float32") for w in base.get_weights()])
    return base


@pytest.mark.parametrize("fmt", ["weights.h5", "legacy.h5"])
def test_mobilenet_loads_local_h5(tmp_path, fmt: str) -> None:
    """weights: <path> loads a local file (Keras 3 .weights.h5, or the legacy .h5 Keras downloads)."""
    source = _tiny_mobilenet()
    path = tmp_path / f"tiny.{fmt}"
    if fmt == "weights.h5":
        source.save_weights(path)
    else:
        from keras.src.legacy.saving import legacy_h5_format

        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, source)
    model = models.build("mobilenet", CIFAR, 10, normalization=SCALE, weights=str(path), alpha=0.25,
                         trainable_blocks=1, dropout=0.4)
    base = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    for got, want in zip(base.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    trainable = {w.path.split("/")[0] for w in base.trainable_weights}
    assert trainable == {"conv_dw_13", "conv_dw_13_bn", "conv_pw_13", "conv_pw_13_bn"}
    assert any(isinstance(layer, keras.layers.Dropout) and layer.rate == 0.4 for layer in model.layers)


def test_mobilenet_frozen_saved_model_roundtrip(tmp_path) -> None:
    """MNET1: only the head trains; the saved model takes 32x32 input and reloads (custom layer)."""
    model = models.build("mobilenet", CIFAR, 10, normalization=STANDARDIZE, weights="none", alpha=0.25)
    assert {w.path.split("/")[0] for w in model.trainable_weights} == {"probabilities"}
    x = np.random.default_rng(1).normal(size=(2, *CIFAR)).astype("float32")
    path = tmp_path / "m.keras"
    model.save(path)
    again = keras.models.load_model(path)
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_mobilenet_weights_errors(tmp_path) -> None:
    with pytest.raises(ParamsError, match="no such file"):
        models.build("mobilenet", CIFAR, 10, normalization=SCALE, weights=str(tmp_path / "x.h5"))
    with pytest.raises(ParamsError, match="RGB"):
        models.build("mobilenet", (28, 28, 1), 10, normalization=NormStats("scale", (0.0,), (1.0,)),
                     weights="none")
