"""Test-time BatchNorm adaptation: only the statistics of a copy change, they are the set's own,
they undo a synthetic covariate shift, and evaluate reports them (and the corruption suite)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from cifar_dvc import artifacts, inference, modelinfo
from cifar_dvc.evaluation import adapt, evaluate
from cifar_dvc.evaluation.params import EvaluateParams
from cifar_dvc.inference import load_model
from cifar_dvc.normalization import STATS_FILE, load_stats, normalize


def bn_model(num_classes: int, shape: tuple[int, int, int], seed: int = 0):
    """conv - BN - ReLU - pool - conv - BN - ReLU - global max pool - dense softmax.

    BN momentum 0.5: with ~100 training steps Keras' 0.99 would leave the running statistics
    near their initial values, and the model would be useless in inference mode.
    """
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(16, 3, use_bias=False, name="conv_a")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.5, name="bn_a")(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 3, use_bias=False, name="conv_b")(x)
    x = keras.layers.BatchNormalization(momentum=0.5, name="bn_b")(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="tiny_bn")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, prepared_dir: Path) -> Path:
    """``models/bn.keras`` + sidecar: the BN model fitted on the tiny synthetic set (~78% on its test)."""
    import keras

    meta = artifacts.load_meta(prepared_dir)
    stats = load_stats(prepared_dir / STATS_FILE)
    train = artifacts.load_split(prepared_dir / "train.npz")
    model = bn_model(meta.num_classes, meta.image_shape)
    model.compile(optimizer=keras.optimizers.Adam(0.005), loss="sparse_categorical_crossentropy")
    model.fit(normalize(train.x, stats), train.y, epochs=20, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("bn") / "models" / "bn.keras"
    path.parent.mkdir()
    model.save(path)
    modelinfo.save_info(path, modelinfo.ModelInfo("bn", meta.dataset, meta.classes, meta.image_shape, stats))
    return path


def _low_contrast(x: np.ndarray) -> np.ndarray:
    """30% contrast on a light grey: a per-channel affine shift, what BatchNorm statistics can undo."""
    return (x.astype(np.float32) * 0.3 + 150).astype(np.uint8)


def _accuracy(model, x: np.ndarray, y: np.ndarray, info: modelinfo.ModelInfo) -> float:
    return float((inference.predict(model, info, x, 0, batch_size=64).argmax(axis=1) == y).mean())


def test_only_batchnorm_statistics_of_a_copy_change_and_the_file_stays(trained: Path,
                                                                       prepared_dir: Path) -> None:
    digest = hashlib.sha256(trained.read_bytes()).hexdigest()
    model = load_model(trained)
    before = {v.path: np.array(v.numpy()) for v in model.weights}
    test = artifacts.load_split(prepared_dir / "test.npz")
    stats = load_stats(prepared_dir / STATS_FILE)
    adapted = adapt.adapt_batchnorm(model, _low_contrast(test.x), stats)

    assert adapted is not model
    assert not {id(v) for v in adapted.weights} & {id(v) for v in model.weights}  # nothing shared
    for variable in model.weights:  # the original is untouched
        np.testing.assert_array_equal(variable.numpy(), before[variable.path])
    changed = set()
    for original, copy in zip(model.weights, adapted.weights, strict=True):
        assert original.path == copy.path
        if not np.array_equal(original.numpy(), copy.numpy()):
            changed.add(copy.path)
    statistics = ("moving_mean", "moving_variance")
    assert changed == {f"{bn}/{stat}" for bn in ("bn_a", "bn_b") for stat in statistics}
    assert hashlib.sha256(trained.read_bytes()).hexdigest() == digest


def test_the_statistics_are_the_sets_own_and_the_prior_mixes_them(trained: Path, prepared_dir: Path) -> None:
    import keras

    model = load_model(trained)
    stats = load_stats(prepared_dir / STATS_FILE)
    x = _low_contrast(artifacts.load_split(prepared_dir / "test.npz").x)
    # the first BatchNorm's input does not depend on any statistics: compute its moments directly
    conv = np.asarray(keras.Model(model.inputs[0], model.get_layer("conv_a").output)(normalize(x, stats)),
                      np.float64)
    mean, var = conv.mean(axis=(0, 1, 2)), conv.var(axis=(0, 1, 2))
    adapter = adapt.BatchNormAdapter(model)
    bn_a = adapter.model.get_layer("bn_a")
    adapter.adapt(x, stats, chunk=7)  # chunks pool to the whole set's statistics
    np.testing.assert_allclose(bn_a.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn_a.moving_variance.numpy(), var, rtol=1e-4, atol=1e-6)
    n, prior = len(x), 50.0
    source_mean = model.get_layer("bn_a").moving_mean.numpy()
    source_var = model.get_layer("bn_a").moving_variance.numpy()
    adapter.adapt(x, stats, prior=prior)
    np.testing.assert_allclose(bn_a.moving_mean.numpy(), (prior * source_mean + n * mean) / (prior + n),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn_a.moving_variance.numpy(), (prior * source_var + n * var) / (prior + n),
                               rtol=1e-4, atol=1e-6)
    adapter.reset()
    for layer in ("bn_a", "bn_b"):
        np.testing.assert_array_equal(adapter.model.get_layer(layer).moving_mean.numpy(),
                                      model.get_layer(layer).moving_mean.numpy())


def test_adaptation_undoes_a_synthetic_shift(trained: Path, prepared_dir: Path) -> None:
    model, info = inference.load(trained)
    stats = load_stats(prepared_dir / STATS_FILE)
    test = artifacts.load_split(prepared_dir / "test.npz")
    clean = _accuracy(model, test.x, test.y, info)
    assert clean >= 0.5  # the model has learnt something, so losing and regaining it means something
    # low contrast on grey: per channel a*x + b, which the first conv + BN turns back exactly
    shifted = _low_contrast(test.x)
    before = _accuracy(model, shifted, test.y, info)
    after = _accuracy(adapt.adapt_batchnorm(model, shifted, stats), shifted, test.y, info)
    assert before < clean - 0.2 and after >= clean - 0.05, (clean, before, after)
    # inverted colours (the example): a sign flip, which statistics only partly undo
    inverted = 255 - test.x
    before = _accuracy(model, inverted, test.y, info)
    after = _accuracy(adapt.adapt_batchnorm(model, inverted, stats), inverted, test.y, info)
    assert after > before, (before, after)


def test_nested_batchnorm_is_copied_not_shared() -> None:
    import keras

    from cifar_dvc.normalization import NormStats

    keras.utils.set_random_seed(0)
    inner_in = keras.Input((8, 8, 3))
    inner = keras.Model(inner_in, keras.layers.BatchNormalization(name="inner_bn")(inner_in), name="inner")
    outer_in = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(inner(outer_in, training=False))  # as MobileNet's base
    model = keras.Model(outer_in, keras.layers.Dense(2, activation="softmax")(x))
    assert [layer.name for layer in adapt.batchnorm_layers(model)] == ["inner_bn"]
    x = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3)).astype(np.uint8)
    adapted = adapt.adapt_batchnorm(model, x, NormStats("scale", (0.0,) * 3, (1.0,) * 3))
    np.testing.assert_array_equal(inner.get_layer("inner_bn").moving_mean.numpy(), np.zeros(3))
    copied = adapted.get_layer("inner").get_layer("inner_bn")
    np.testing.assert_allclose(copied.moving_mean.numpy(), (x / 255.0).mean(axis=(0, 1, 2)), rtol=1e-5)


def test_no_batchnorm_no_adaptation() -> None:
    from tests.evaluation_workspace import tiny_model

    model = tiny_model(10, (32, 32, 3), seed=0)
    assert not adapt.has_batchnorm(model)
    assert adapt.adapt_batchnorm(model, np.zeros((2, 32, 32, 3), np.uint8), None) is None


def test_evaluate_reports_adapted_custom_sets_and_the_corruption_suite(trained: Path, prepared_dir: Path,
                                                                         tmp_path: Path) -> None:
    test = artifacts.load_split(prepared_dir / "test.npz")
    custom = tmp_path / "custom_sets"
    for name, x in (("unfiltered", _low_contrast(test.x[:40])), ("filtered", test.x[:40])):
        artifacts.save_split(custom / f"{name}.npz", x, test.y[:40],
                             files=np.array([f"p{i}.png" for i in range(40)]))
    digest = hashlib.sha256(trained.read_bytes()).hexdigest()
    params = EvaluateParams(corruptions=["contrast", "gaussian_noise"], corruption_images=30)
    scores = evaluate.run("bn", trained, prepared_dir, custom, params, 0, tmp_path / "bn.json",
                          tmp_path / "eval", seed=3)
    assert hashlib.sha256(trained.read_bytes()).hexdigest() == digest

    saved = json.loads((tmp_path / "bn.json").read_text())
    assert saved == scores
    assert set(saved) == {"val", "test", "test_loss", "test_f1", "test_ece", "custom", "custom_blur",
                          "custom_bn", "custom_blur_bn", "corrupt", "corrupt_bn"}  # flat; no nearest sets
    assert saved["custom_bn"] > saved["custom"] + 0.2  # the shift undone
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["adaptation"] == {"batchnorm": True, "prior": 0.0}
    assert results["sets"]["custom_filtered_adapted"]["accuracy"] == saved["custom_blur_bn"]
    probs = np.load(tmp_path / "eval" / "predictions" / "custom_adapted.npz")["probs"]
    assert (probs.argmax(axis=1) == test.y[:40]).mean() == pytest.approx(saved["custom_bn"])

    rows = list(csv.DictReader((tmp_path / "eval" / "corruptions.csv").open()))
    assert [(r["corruption"], r["severity"]) for r in rows] == [("none", "0")] + [
        (c, str(s)) for c in ("contrast", "gaussian_noise") for s in (1, 2, 3)]
    assert {r["n"] for r in rows} == {"30"}
    corrupted = [r for r in rows if r["severity"] != "0"]
    for key, column in (("corrupt", "accuracy"), ("corrupt_bn", "accuracy_adapted")):
        mean = np.mean([float(r[column]) for r in corrupted])
        assert saved[key] == pytest.approx(mean, abs=1e-6)
    contrast = {r["severity"]: r for r in rows if r["corruption"] == "contrast"}
    assert float(contrast["3"]["accuracy_adapted"]) > float(contrast["3"]["accuracy"])  # 15% contrast
    assert results["corruptions"]["images"] == 30 and results["corruptions"]["seed"] == 3


def test_switches_off(trained: Path, prepared_dir: Path, tmp_path: Path) -> None:
    from tests.evaluation_workspace import write_custom_sets

    write_custom_sets(tmp_path / "custom", prepared_dir, n=5)
    params = EvaluateParams(adapt_bn=False, corruptions=[])
    scores = evaluate.run("bn", trained, prepared_dir, tmp_path / "custom", params, 0, tmp_path / "bn.json",
                          tmp_path / "eval")
    assert not {"custom_bn", "custom_blur_bn", "corrupt", "corrupt_bn"} & set(scores)  # absent, not null
    assert (tmp_path / "eval" / "corruptions.csv").read_text() == \
        "corruption,severity,n,accuracy,accuracy_adapted\n"
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["adaptation"] is None and results["corruptions"] is None
