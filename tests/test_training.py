"""Training building blocks: variant params, augmentation layers, the tf.data pipeline, schedules."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from cifar_dvc import config
from cifar_dvc.datasets.split import one_hot
from cifar_dvc.errors import ParamsError
from cifar_dvc.normalization import NormStats, normalize
from cifar_dvc.training import optim
from cifar_dvc.training.augment import (
    ChannelShift,
    Cutout,
    RandomAffine,
    RandomPadCrop,
    affine_transforms,
    build_augmenter,
)
from cifar_dvc.training.data import group_for, make_dataset
from cifar_dvc.training.loop import fit_verbosity, select_strategy
from cifar_dvc.training.variant import (
    AugmentParams,
    OptimizerParams,
    ScheduleParams,
    TrainParams,
    VariantParams,
    load_params,
    load_variant,
)

STATS = NormStats("standardize", (0.5, 0.4, 0.3), (0.25, 0.2, 0.3))


def _images(n: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


# --- params -----------------------------------------------------------------------------------

def test_variant_defaults_and_cap() -> None:
    variant = load_variant("v", {"variants": {"v": {"model": "cnn", "epochs": 40}}})
    assert variant.optimizer == OptimizerParams() and variant.augment == AugmentParams()
    assert TrainParams(max_epochs=3).epochs_for(variant) == 3
    assert TrainParams().epochs_for(variant) == 40
    assert variant.monitor_mode == "max"
    assert VariantParams(model="cnn", monitor="val_loss").monitor_mode == "min"


@pytest.mark.parametrize(("entry", "message"), [
    ({"model": "cnn", "epoch": 3}, r"unknown key 'variants\.v\.epoch'"),
    ({"model": "cnn", "optimizer": {"lr": 0.1}}, r"unknown key 'variants\.v\.optimizer\.lr'"),
    ({"model": "cnn", "epochs": "ten"}, r"variants\.v\.epochs: expected int, got 'ten'"),
    ({"model": "cnn", "augment": {"flip": "yes"}}, r"variants\.v\.augment\.flip: expected bool"),
    ({"model": "cnn", "schedule": {"name": "cosine"}}, r"variants\.v\.schedule\.name: expected one of"),
    ({"epochs": 3}, r"variants\.v: model: required"),
    ({"model": "vgg"}, r"variants\.v\.model: unknown model 'vgg'; known models: base, cnn"),
    ({"model": "cnn", "model_args": {"width": 3}}, r"variants\.v\.model_args\.width: unknown argument"),
    ({"model": "cnn", "monitor": "val_tta_accuracy"}, r"needs tta: 1 or 2"),
    ({"model": "cnn", "tta": 1, "val_tta_every": -1}, r"val_tta_every must be >= 0"),
    ({"model": "cnn", "tta": 1, "monitor": "val_tta_accuracy", "val_tta_every": 0},
     r"needs val_tta_every: 1"),
    ({"model": "cnn", "monitor": "val_acc"}, r"variants\.v\.monitor: expected one of val_accuracy"),
    ({"model": "cnn", "val_every": -1}, r"val_every must be >= 0"),
    ({"model": "cnn", "val_every": 0}, r"variants\.v: val_accuracy \(watched every epoch by checkpoint"),
    ({"model": "cnn", "val_every": 2, "checkpoint": "last", "early_stopping": 3, "monitor": "val_loss"},
     r"val_loss \(watched .*\) needs val_every: 1"),
    ({"model": "cnn", "val_every": 0, "checkpoint": "last", "schedule": {"name": "plateau"}},
     r"val_loss \(watched .*\) needs val_every: 1"),
    ({"model": "cnn", "augment": {"shift": 1.5}}, r"augment\.shift must be in \[0, 1\)"),
])
def test_bad_variant_params(entry: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        load_variant("v", {"variants": {"v": entry}})


@pytest.mark.parametrize("name", ["../escape", "a/b", "a b", ".hidden", ""])
def test_variant_names_must_be_file_names(name: str) -> None:
    """A name becomes models/<name>.keras and train@<name>: any variant with a path in its name
    (or a space, which splits dvc.yaml's command) stops every stage that reads variants."""
    with pytest.raises(ParamsError, match=r"^params\.yaml: variants: name .* is not a file name"):
        load_variant("ok", {"variants": {"ok": {"model": "cnn"}, name: {"model": "cnn"}}})
    assert load_variant("v-1.b_2", {"variants": {"v-1.b_2": {"model": "cnn"}}}).model == "cnn"


def test_unknown_variant_lists_declared(tmp_path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\nvariants:\n  a: {model: cnn}\n  b: {model: mlp}\n")
    with pytest.raises(ParamsError, match=r"variants\.c: no such variant; declared variants: a, b"):
        load_params("c", path)
    path.write_text("seed: 1\ntrain: {max_epochs: 0}\nvariants:\n  a: {model: cnn}\n")
    with pytest.raises(ParamsError, match=r"train: max_epochs must be >= 1"):
        load_params("a", path)
    path.write_text("seed: -1\nvariants:\n  a: {model: cnn}\n")
    with pytest.raises(ParamsError, match="seed"):
        load_params("a", path)


def test_verbosity_and_strategy(monkeypatch) -> None:
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    assert fit_verbosity("auto") == 2
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert fit_verbosity("auto") == 1
    assert fit_verbosity("silent") == 0
    assert select_strategy() is tf.distribute.get_strategy()  # no GPUs here


# --- augmentation -----------------------------------------------------------------------------

def test_channel_shift_is_image_data_generator_semantics() -> None:
    x = _images(64).astype("float32")
    out = keras.ops.convert_to_numpy(ChannelShift(0.2, seed=1)(x, training=True))
    delta = out - x
    unclipped = (out > x.min(axis=(1, 2, 3), keepdims=True)) & (out < x.max(axis=(1, 2, 3), keepdims=True))
    for i in range(len(x)):
        shifts = np.unique(np.round(delta[i][unclipped[i]], 3))
        assert len(shifts) == 1  # one offset for every channel and pixel of an image
        assert abs(shifts[0]) <= 0.2 * 255 + 1e-3
        assert out[i].min() >= x[i].min() and out[i].max() <= x[i].max()  # clipped to the image's range
    offsets = [np.median(delta[i]) for i in range(len(x))]
    assert np.std(offsets) > 10  # really random per image
    np.testing.assert_array_equal(ChannelShift(0.2)(x, training=False), x)


def test_cutout_erases_one_square() -> None:
    x = np.full((8, 32, 32, 3), 200.0, np.float32)
    out = keras.ops.convert_to_numpy(Cutout(8, seed=2)(x, training=True))
    for image in out:
        zeros = np.argwhere(image[..., 0] == 0)
        assert 0 < len(zeros) <= 64  # a square of side 8, clipped at the border
        (r0, c0), (r1, c1) = zeros.min(axis=0), zeros.max(axis=0)
        assert (r1 - r0 + 1) * (c1 - c0 + 1) == len(zeros)
        assert (image[..., 1] == 0).sum() == len(zeros)  # all channels erased


def test_cutout_inside_erases_a_whole_square_everywhere_in_the_image() -> None:
    x = np.full((64, 32, 32, 3), 200.0, np.float32)
    layer = Cutout(12, seed=5, inside=True)
    out = keras.ops.convert_to_numpy(layer(x, training=True))
    corners = set()
    for image in out:
        zeros = np.argwhere(image[..., 0] == 0)
        assert len(zeros) == 144  # airbench96's batch_cutout: never clipped
        (r0, c0), (r1, c1) = zeros.min(axis=0), zeros.max(axis=0)
        assert r1 - r0 + 1 == 12 and c1 - c0 + 1 == 12
        corners.add((int(r0), int(c0)))
    assert len(corners) > 32  # a random place per image, not one for the batch
    assert max(r for r, _ in corners) <= 20 and max(c for _, c in corners) <= 20
    # as a tf.data map (the input pipeline's graph mode), with the layer rebuilt from its config
    rebuilt = Cutout.from_config(layer.get_config())
    assert rebuilt.inside
    mapped = tf.data.Dataset.from_tensor_slices(x).batch(16).map(lambda b: rebuilt(b, training=True))
    for batch in mapped:
        assert np.all((np.asarray(batch)[..., 0] == 0).sum(axis=(1, 2)) == 144)
    # larger than the image: the whole image
    np.testing.assert_array_equal(Cutout(40, seed=1, inside=True)(x[:2], training=True), 0 * x[:2])


def test_cutout_inside_needs_cutout() -> None:
    with pytest.raises(ValueError, match="cutout_inside"):
        AugmentParams(cutout_inside=True).validate()
    last = build_augmenter(AugmentParams(cutout=12, cutout_inside=True), 0).layers[-1]
    assert isinstance(last, Cutout) and last.inside


def test_pad_crop_is_a_shifted_window() -> None:
    x = _images(8).astype("float32")
    out = keras.ops.convert_to_numpy(RandomPadCrop(2, seed=3)(x, training=True))
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    offsets = set()
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if np.array_equal(out[i], padded[i, dy:dy + 32, dx:dx + 32])]
        assert found
        offsets.add(found[0])
    assert len(offsets) > 1


def _image_data_generator(image: np.ndarray, degrees: float, row_shift: float, col_shift: float,
                          row_zoom: float, col_zoom: float) -> np.ndarray:
    """keras_preprocessing's ``apply_affine_transform`` (ImageDataGenerator, order 1, fill nearest)."""
    theta = np.deg2rad(degrees)
    rotation = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    shift = np.array([[1, 0, row_shift], [0, 1, col_shift], [0, 0, 1]])
    zoom = np.diag([row_zoom, col_zoom, 1.0])
    o_r, o_c = image.shape[0] / 2 + 0.5, image.shape[1] / 2 + 0.5
    offset = np.array([[1, 0, o_r], [0, 1, o_c], [0, 0, 1]])
    reset = np.array([[1, 0, -o_r], [0, 1, -o_c], [0, 0, 1]])
    m = offset @ rotation @ shift @ zoom @ reset
    return np.stack([ndimage.affine_transform(image[..., c], m[:2, :2], m[:2, 2], order=1, mode="nearest")
                     for c in range(image.shape[-1])], axis=-1)


def test_affine_transforms_resample_as_image_data_generator_does() -> None:
    x = _images(4).astype("float32")
    cases = [(20, 3.2, -2.5, 0.8, 1.3), (-15, 0, 0, 1, 1), (0, 1.5, 0.7, 1, 1), (7, -3, 3, 1.2, 0.9)]
    columns = [np.array([case[i] for case in cases], "float32") for i in range(5)]
    columns[0] = np.deg2rad(columns[0])
    out = keras.ops.image.affine_transform(x, affine_transforms(*columns, 32, 32), fill_mode="nearest")
    for image, result, case in zip(x, keras.ops.convert_to_numpy(out), cases, strict=True):
        # to float rounding, border (nearest fill) included: one bilinear resampling, as the seeds'
        np.testing.assert_allclose(result, _image_data_generator(image, *case), atol=0.01)


def test_random_affine_draws_per_image_and_resamples_once() -> None:
    x = _images(16).astype("float32")
    layer = RandomAffine(rotation=20, shift=0.1, zoom_in=0.2, zoom_out=0.3, seed=3)
    twin = RandomAffine.from_config(layer.get_config())  # same seed: the same draws
    angle, rows, cols, row_zoom, col_zoom = (keras.ops.convert_to_numpy(v) for v in twin.draw(16, 32.0, 32.0))
    assert np.abs(angle).max() <= np.deg2rad(20) and np.abs(rows).max() <= 3.2 and np.abs(cols).max() <= 3.2
    assert min(row_zoom.min(), col_zoom.min()) >= 0.8 and max(row_zoom.max(), col_zoom.max()) <= 1.3
    assert len(np.unique(angle)) == 16 and not np.allclose(row_zoom, col_zoom)  # per image, zooms independent
    out = keras.ops.convert_to_numpy(layer(x, training=True))
    for i in range(16):
        expected = _image_data_generator(x[i], np.rad2deg(angle[i]), rows[i], cols[i],
                                         row_zoom[i], col_zoom[i])
        np.testing.assert_allclose(out[i], expected, atol=0.01)
    np.testing.assert_array_equal(layer(x, training=False), x)


def test_build_augmenter_layers() -> None:
    assert build_augmenter(AugmentParams(), seed=1) is None
    seed_004 = AugmentParams(rotation=20, shift=0.1, zoom_in=0.2, zoom_out=0.3, channel_shift=0.2, flip=True)
    aug = build_augmenter(seed_004, seed=1)
    kinds = [type(layer).__name__ for layer in aug.layers]
    # ImageDataGenerator's order: one affine resampling, then the channel shift, then the flip
    assert kinds == ["RandomAffine", "ChannelShift", "RandomFlip"]
    affine = aug.layers[0]
    assert (affine.rotation, affine.shift, affine.zoom_in, affine.zoom_out) == (20, 0.1, 0.2, 0.3)
    assert affine.fill_mode == "nearest"
    assert type(build_augmenter(AugmentParams(shift=0.1, flip=True), seed=1).layers[0]) is RandomAffine


# --- input pipeline ---------------------------------------------------------------------------

def test_dataset_normalizes_and_shuffles_exactly() -> None:
    x = _images(20)
    y = np.arange(20) % 10
    ds = make_dataset(x, one_hot(y, 10), STATS, batch_size=8, shuffle=True, seed=4)
    assert ds.element_spec[0].dtype == tf.float32 and ds.element_spec[1].dtype == tf.float32
    epochs = []
    for _ in range(2):
        batches = list(ds)  # one pass = one epoch
        images = np.concatenate([b[0].numpy() for b in batches])
        labels = np.concatenate([b[1].numpy() for b in batches]).argmax(1)
        # Every image exactly once per epoch, normalized exactly like everyone else does it.
        order = [int(np.argmin(np.abs(normalize(x, STATS) - img).sum(axis=(1, 2, 3)))) for img in images]
        assert sorted(order) == list(range(20))
        np.testing.assert_array_equal(images, normalize(x[order], STATS))
        np.testing.assert_array_equal(labels, y[order])
        epochs.append(order)
    assert epochs[0] != epochs[1]  # reshuffled each epoch
    plain = make_dataset(x, one_hot(y, 10), STATS, batch_size=8, shuffle=False, seed=4)
    np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in plain]), normalize(x, STATS))


def test_grouped_gathering_gives_the_same_batches_in_the_same_order() -> None:
    x, y = _images(37), np.arange(37) % 10
    plain = list(make_dataset(x, one_hot(y, 10), STATS, batch_size=4, shuffle=True, seed=2))
    grouped = list(make_dataset(x, one_hot(y, 10), STATS, batch_size=4, shuffle=True, seed=2, group=3))
    assert [len(b[0]) for b in grouped] == [4] * 9 + [1]
    for (xa, ya), (xb, yb) in zip(plain, grouped, strict=True):
        np.testing.assert_array_equal(xa.numpy(), xb.numpy())
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())
    assert [group_for(b) for b in (32, 64, 100, 512, 1024)] == [16, 8, 5, 1, 1]
    with pytest.raises(ValueError, match="group"):
        make_dataset(x, one_hot(y, 10), STATS, batch_size=4, shuffle=False, seed=0, group=0)


def test_dataset_augments_training_batches_only_and_repeatably() -> None:
    x, y = _images(16), np.zeros(16, np.int64)
    params = AugmentParams(flip=True, shift=0.1, channel_shift=0.2)

    def batches(augment: bool) -> list[np.ndarray]:
        aug = build_augmenter(params, seed=5) if augment else None
        ds = make_dataset(x, one_hot(y, 10), STATS, batch_size=16, shuffle=False, seed=5, augmenter=aug)
        return [b[0].numpy() for _ in range(2) for b in ds]

    first, again = batches(True), batches(True)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))  # same seed, same stream
    assert not np.array_equal(first[0], first[1])  # fresh randomness every epoch
    assert not np.array_equal(first[0], normalize(x, STATS))
    np.testing.assert_array_equal(batches(False)[0], normalize(x, STATS))


def test_dataset_rejects_float_images() -> None:
    with pytest.raises(ValueError, match="uint8"):
        make_dataset(np.zeros((2, 32, 32, 3)), np.zeros((2, 10), np.float32), STATS, 2, False, 0)


# --- optimizers and schedules -----------------------------------------------------------------

def _lr(schedule, step: int) -> float:
    return float(keras.ops.convert_to_numpy(schedule(step))) if callable(schedule) else float(schedule)


def test_onecycle_is_piecewise_linear_per_step() -> None:
    sched = optim.build_schedule(ScheduleParams(name="onecycle", warmup_epochs=2, start_factor=0.1),
                                 learning_rate=1.0, steps_per_epoch=10, epochs=10)
    assert [round(_lr(sched, s), 4) for s in (0, 10, 20, 60, 100, 150)] == [0.1, 0.55, 1.0, 0.5, 0.0, 0.0]
    no_warmup = optim.build_schedule(ScheduleParams(name="onecycle", end_factor=0.5), 2.0, 10, 1)
    assert [_lr(no_warmup, s) for s in (0, 5, 10)] == [2.0, 1.5, 1.0]
    config_back = optim.PiecewiseLinear.from_config(sched.get_config())
    assert _lr(config_back, 60) == pytest.approx(0.5)


def test_step_and_inverse_time_schedules() -> None:
    step = optim.build_schedule(ScheduleParams(name="step", boundaries=[2, 3], factor=0.5), 1.0, 10, 5)
    assert [_lr(step, s) for s in (0, 19, 21, 31)] == [1.0, 1.0, 0.5, 0.25]
    inv = optim.build_schedule(ScheduleParams(name="inverse_time", decay=1e-3), 1e-4, 10, 5)
    assert _lr(inv, 1000) == pytest.approx(1e-4 / 2)  # Keras 2: lr / (1 + decay * iterations)
    assert optim.build_schedule(ScheduleParams(name="plateau"), 0.3, 10, 5) == 0.3
    assert optim.plateau_callback(ScheduleParams()) is None
    cb = optim.plateau_callback(ScheduleParams(name="plateau", factor=0.5, patience=5, min_delta=1e-4))
    assert (cb.monitor, cb.factor, cb.patience, cb.min_delta) == ("val_loss", 0.5, 5, 1e-4)


@pytest.mark.parametrize(("name", "cls"), [("adam", "Adam"), ("adamw", "AdamW"), ("sgd", "SGD"),
                                           ("rmsprop", "RMSprop")])
def test_optimizers(name: str, cls: str) -> None:
    params = config.from_dict(OptimizerParams, {"name": name, "learning_rate": 0.01, "momentum": 0.9,
                                                "nesterov": True, "use_ema": True, "ema_momentum": 0.9,
                                                "weight_decay": 5e-4, "no_decay": ["bias"]}, where="o")
    opt = optim.build_optimizer(params, 0.01)
    assert type(opt).__name__ == cls
    assert opt.use_ema and opt.ema_momentum == 0.9 and opt.weight_decay == 5e-4
    if name == "sgd":
        assert opt.momentum == 0.9 and opt.nesterov
    # Weight decay spares excluded variables; EMA follows the weights.
    kernel, bias = keras.Variable(np.ones(2, np.float32), name="kernel"), keras.Variable(
        np.ones(2, np.float32), name="bias")
    opt.apply_gradients([(np.zeros(2, np.float32), kernel), (np.zeros(2, np.float32), bias)])
    assert np.all(keras.ops.convert_to_numpy(kernel) < 1) and np.all(keras.ops.convert_to_numpy(bias) == 1)
