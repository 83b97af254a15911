"""airbench's pieces in the Keras recipe: alternating flip, triangle schedule, lookahead, whitening bias.

Each is checked against airbench 0.1.8's own rule (its formulas re-typed here in NumPy; nothing
of PyTorch is imported), and the three that carry state across epochs are checked through a
real interrupted-and-resumed training run. ``fast_long`` and ``fast96`` build and train through the loop.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import pytest

import cifar_dvc.models  # noqa: F401  (registers custom layers for load_model)
from cifar_dvc import config
from cifar_dvc.datasets.split import one_hot
from cifar_dvc.errors import ParamsError
from cifar_dvc.models.fast import WHITEN_BIAS_LAYER, build_fast
from cifar_dvc.normalization import NormStats
from cifar_dvc.training import resume
from cifar_dvc.training.augment import build_augmenter, first_flips
from cifar_dvc.training.callbacks import Lookahead, WhitenBiasFreeze, lookahead_decay, recipe_callbacks
from cifar_dvc.training.data import FIT_ITERATORS_PER_EPOCH, make_dataset
from cifar_dvc.training.loop import train_variant
from cifar_dvc.training.optim import build_schedule
from cifar_dvc.training.variant import AugmentParams, ScheduleParams, TrainParams, VariantParams, load_variant

ROOT = Path(__file__).resolve().parent.parent
IDENTITY = NormStats("scale", (0.0,), (1.0,))  # x / 255 with mean 0, std 1: pixel values survive


def _marked_images(n: int) -> np.ndarray:
    """n images 1x4x1 whose only nonzero pixel, in the left column, is the image's number + 1."""
    x = np.zeros((n, 1, 4, 1), np.uint8)
    x[:, 0, 0, 0] = np.arange(1, n + 1)
    return x


def _orientations(ds, epochs: int) -> list[dict[int, bool]]:
    """Per epoch, iterated as keras.Model.fit does (a second iterator made and dropped): image -> mirrored."""
    seen = []
    for _ in range(epochs):
        epoch: dict[int, bool] = {}
        for images, _labels in iter(ds):
            pixels = np.rint(images.numpy()[:, 0, :, 0] * 255).astype(int)
            for row in pixels:
                epoch[int(row.max()) - 1] = bool(row[-1] > 0)
        seen.append(epoch)
        for _ in range(FIT_ITERATORS_PER_EPOCH - 1):
            iter(ds)  # made and discarded at the epoch's end, as fit does
    return seen


@pytest.mark.parametrize("group", [1, 2])
def test_alternating_flip_mirrors_each_image_every_other_epoch_repeatably_and_resumes(group: int) -> None:
    x, y = _marked_images(40), np.arange(40) % 2

    def dataset(skip: int = 0, seed: int = 5):
        return make_dataset(x, one_hot(y, 2), IDENTITY, batch_size=8, shuffle=True, seed=seed, group=group,
                            skip_epochs=skip, alternate_flip=True)

    assert int(dataset().cardinality()) == 5  # known: fit ends epochs by it (FIT_ITERATORS_PER_EPOCH)
    seen = _orientations(dataset(), 5)
    assert all(len(epoch) == 40 for epoch in seen)
    first = first_flips(40, 5)
    for e, epoch in enumerate(seen):  # airbench: flipped at random once, then all flipped on odd epochs
        assert [epoch[i] for i in range(40)] == list(first ^ bool(e % 2)), e
    assert 10 < first.sum() < 30
    assert _orientations(dataset(), 5) == seen  # the seed decides
    assert _orientations(dataset(seed=6), 1) != seen[:1]
    assert _orientations(dataset(skip=3), 2) == seen[3:5]  # a resumed pipeline goes on at its epoch
    # keras.Model.fit counts epochs as the pipeline does: after 3 epochs of fit comes epoch 3 (odd)
    ds = dataset()
    model = keras.Sequential([keras.Input((1, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(ds, epochs=3, verbose=0, shuffle=False)  # the pipeline shuffles, as in the loop
    assert _orientations(ds, 1) == seen[3:4]


def test_alternate_flip_replaces_the_random_flip_layer_and_needs_flip() -> None:
    assert build_augmenter(AugmentParams(flip=True, alternate_flip=True), seed=0) is None
    layers = build_augmenter(AugmentParams(flip=True, alternate_flip=True, crop_padding=2), seed=0).layers
    assert [type(layer).__name__ for layer in layers] == ["RandomPadCrop"]
    with pytest.raises(ParamsError, match="alternate_flip"):
        config.from_dict(AugmentParams, {"alternate_flip": True}, where="augment")


def _airbench_triangle(steps: int, start: float, end: float, peak: float) -> np.ndarray:
    """airbench 0.1.8 utils.py ``triangle``: xp = [0, int(peak * steps), steps], fp = [start, 1, end]."""
    return np.interp(np.arange(steps + 1), [0, int(peak * steps), steps], [start, 1.0, end])


@pytest.mark.parametrize(("steps_per_epoch", "epochs"), [(97, 12), (48, 10), (5, 3)])
def test_triangle_is_airbench94s_schedule_step_for_step(steps_per_epoch: int, epochs: int) -> None:
    params = ScheduleParams(name="triangle", start_factor=0.2, end_factor=0.07, peak_fraction=0.23)
    schedule = build_schedule(params, 0.5, steps_per_epoch, epochs)
    total = steps_per_epoch * epochs
    ours = np.array([float(schedule(step)) for step in range(total + 1)])
    np.testing.assert_allclose(ours, 0.5 * _airbench_triangle(total, 0.2, 0.07, 0.23), rtol=1e-5, atol=1e-7)
    assert ours.argmax() == int(0.23 * total) and math.isclose(ours[-1], 0.5 * 0.07, rel_tol=1e-5)
    with pytest.raises(ParamsError, match="peak_fraction"):
        config.from_dict(ScheduleParams, {"name": "triangle", "peak_fraction": 1.5}, where="schedule")


def _tiny_bn_model() -> keras.Model:
    inputs = keras.Input((4, 4, 2))
    h = keras.layers.Conv2D(3, 3, padding="same", use_bias=False)(inputs)
    h = keras.layers.BatchNormalization(momentum=0.6)(h)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h))
    return keras.Model(inputs, outputs)


def test_lookahead_is_airbench_lookahead_batchnorm_statistics_included() -> None:
    """Replays airbench's LookaheadState on the weights each step produced; the model must end there."""
    keras.utils.set_random_seed(1)
    model = _tiny_bn_model()
    model.compile(optimizer=keras.optimizers.SGD(0.2, momentum=0.85, nesterov=True),
                  loss="categorical_crossentropy", steps_per_execution=1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 4, 4, 2)).astype(np.float32)
    y = keras.utils.to_categorical(rng.integers(0, 2, 24), 2)
    total = 12  # 4 steps an epoch, 3 epochs: updates at 5 and 10 inside epochs, and the end at 12
    lookahead = Lookahead(total)

    class Record(keras.callbacks.Callback):  # runs before lookahead: the weights the step made
        def on_train_begin(self, logs=None):
            self.start = {v.path: v.numpy().copy() for v in self.model.weights}
            self.steps = []

        def on_train_batch_end(self, batch, logs=None):
            self.steps.append({v.path: v.numpy().copy() for v in self.model.weights})

    record = Record()
    model.fit(x, y, batch_size=6, epochs=3, shuffle=False, verbose=0, callbacks=[record, lookahead])
    assert len(record.steps) == total
    average = dict(record.start)
    net = dict(record.start)
    for step, weights in enumerate(record.steps, start=1):
        # the step's weights are what the step made from the (possibly averaged) net before it
        net = weights
        if step % 5 == 0:
            decay = 0.95**5 * (step / total) ** 3  # airbench: alpha_schedule[current_steps]
            average = {k: a + (1 - decay) * (net[k] - a) for k, a in average.items()}
            net = dict(average)
    final = {v.path: v.numpy() for v in model.weights}
    assert any("moving_mean" in k for k in final) and any("moving_variance" in k for k in final)
    for key, value in final.items():
        np.testing.assert_allclose(value, average[key], rtol=1e-5, atol=1e-6, err_msg=key)
    # the average really differs from the last step's weights (the test would see a no-op)
    assert any(not np.allclose(record.steps[-1][k], average[k]) for k in average)
    assert lookahead_decay(0, total) == 0 and math.isclose(lookahead_decay(total, total), 0.95**5)


def test_lookahead_state_round_trips_through_its_file(tmp_path: Path) -> None:
    keras.utils.set_random_seed(2)
    model = _tiny_bn_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    first = Lookahead(10, state_dir=tmp_path)
    first.set_model(model)
    first.on_train_begin()
    first.average[0] += 1.0  # an average that is not the model's weights
    states = []
    for step in (5, 10, 15):  # one state per epoch end
        model.optimizer.iterations.assign(step)
        states.append(first.get_state())
    # the new file, and the last one handed out: state.json may still name it until committed
    kept = sorted(p.name for p in tmp_path.glob("lookahead-*.npz"))
    assert kept == ["lookahead-10.npz", "lookahead-15.npz"]
    assert states[-1] == {"file": "lookahead-15.npz"}
    second = Lookahead(10, state_dir=tmp_path)
    second.set_model(model)
    second.on_train_begin()
    second.set_state(states[-1])
    for a, b in zip(first.average, second.average, strict=True):
        np.testing.assert_array_equal(a, b)


def test_whitening_bias_trains_then_is_frozen_exactly() -> None:
    keras.utils.set_random_seed(4)
    model = build_fast((16, 16, 3), 10, width=4, whiten_bias=True)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
                  loss="categorical_crossentropy", steps_per_execution=2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 16, 16, 3)).astype(np.float32)
    y = keras.utils.to_categorical(np.arange(16) % 10, 10)
    bias = model.get_layer(WHITEN_BIAS_LAYER).bias
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((bias.numpy().copy(), self.model.get_layer("block1a_bn").beta.numpy().copy()))

    model.fit(x, y, batch_size=4, epochs=4, verbose=0, callbacks=[WhitenBiasFreeze(2), Record()])
    start = np.zeros_like(seen[0][0])
    assert not np.allclose(seen[0][0], start) and not np.allclose(seen[1][0], seen[0][0])  # epochs 0, 1
    # frozen from epoch 2: no gradient, momentum or weight decay moves it; the rest still trains
    np.testing.assert_array_equal(seen[2][0], seen[1][0])
    np.testing.assert_array_equal(seen[3][0], seen[1][0])
    assert not np.allclose(seen[3][1], seen[1][1])
    assert not model.get_layer(WHITEN_BIAS_LAYER).trainable


def test_whitening_bias_params_are_checked() -> None:
    with pytest.raises(ValueError, match="whiten_bias"):
        build_fast((32, 32, 3), 10, width=4, stem="conv", whiten_bias=True)
    with pytest.raises(ParamsError, match="whiten_bias"):
        config.from_dict(VariantParams, {"model": "fast", "whiten_bias_epochs": 3}, where="variants.x")
    with pytest.raises(ParamsError, match="steps_per_execution"):
        config.from_dict(VariantParams, {"model": "fast", "optimizer": {"lookahead": True}},
                         where="variants.x")


def test_fast_with_whitening_bias_round_trips_through_a_keras_file(tmp_path: Path) -> None:
    keras.utils.set_random_seed(5)
    model = build_fast((32, 32, 3), 10, width=4, whiten_bias=True)
    model.get_layer(WHITEN_BIAS_LAYER).bias.assign(np.linspace(-1, 1, 24).astype(np.float32))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    x = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def test_recipe_callbacks_follow_the_variant() -> None:
    off = config.from_dict(VariantParams, {"model": "fast"}, where="variants.x")
    assert recipe_callbacks(off, 10, 2) == {}  # every piece is off unless a variant turns it on
    params = config.read_params(ROOT / "params.yaml")
    for name in ("fast", "fast_long", "fast96"):  # all run airbench's pieces (benchmarks/results/fast.md)
        found = recipe_callbacks(load_variant(name, params), 10, 2)
        assert isinstance(found["lookahead"], Lookahead) and found["lookahead"].total_steps == 20, name
        assert isinstance(found["whiten_bias"], WhitenBiasFreeze) and found["whiten_bias"].epochs == 3, name


# Every piece on, small: 6 steps an epoch (the lookahead's average is mid-way at each epoch end),
# the whitening bias frozen after epoch 2, and an interruption after epoch 3.
PIECES = {
    "model": "fast", "model_args": {"width": 4, "whiten_bias": True}, "epochs": 5, "batch_size": 32,
    "steps_per_execution": 1, "whiten_bias_epochs": 2,
    "optimizer": {"name": "sgd", "learning_rate": 0.05, "momentum": 0.85, "nesterov": True,
                  "weight_decay": 0.01, "norm_bias_lr_scale": 8, "lookahead": True},
    "schedule": {"name": "triangle", "start_factor": 0.2, "peak_fraction": 0.23, "end_factor": 0.07},
    "augment": {"flip": True, "alternate_flip": True, "crop_padding": 2},
    "label_smoothing": 0.2, "checkpoint": "last",
}


def test_a_run_with_every_piece_resumes_to_the_same_model(tmp_path: Path, prepared_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    variant = config.from_dict(VariantParams, PIECES, where="variants.pieces")
    train = TrainParams(verbose="silent", jit_compile=False)

    def run(name: str) -> keras.Model:
        out = tmp_path / name
        train_variant("pieces", variant, train, 3, prepared_dir, out / "m.keras", out / "live",
                      backup_dir=out / "backup")
        return keras.models.load_model(out / "m.keras", compile=False)  # as the stages load it

    reference = run("reference")

    class KilledError(Exception):  # stands for a kill after epoch 3
        pass

    commit = resume.EpochBackup.on_epoch_end

    def stop_after_third(self, epoch, logs=None):
        commit(self, epoch, logs)
        if epoch + 1 == 3:
            raise KilledError

    monkeypatch.setattr(resume.EpochBackup, "on_epoch_end", stop_after_third)
    with pytest.raises(KilledError):
        run("resumed")
    assert list((tmp_path / "resumed" / "backup").glob("lookahead-*.npz"))  # its state was backed up
    monkeypatch.setattr(resume.EpochBackup, "on_epoch_end", commit)
    resumed = run("resumed")
    assert not resumed.get_layer(WHITEN_BIAS_LAYER).trainable
    for a, b in zip(reference.weights, resumed.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


@pytest.mark.parametrize(("name", "min_params"), [("fast_long", 4_000_000), ("fast96", 10_000_000)])
def test_bigger_fast_variants_build_and_train_a_step_through_the_loop(tmp_path: Path, prepared_dir: Path,
                                                                      name: str, min_params: int) -> None:
    variant = load_variant(name, config.read_params(ROOT / "params.yaml"))
    assert variant.model_args["width"] > 64 and variant.epochs > 12
    train = TrainParams(verbose="silent", max_epochs=1, jit_compile=False)
    result = train_variant(name, variant, train, 0, prepared_dir, tmp_path / f"{name}.keras",
                           tmp_path / "live")
    assert math.isfinite(result.history["loss"][0])
    # fast_long: blocks 96-384-384; fast96: airbench96's residual 128-512-512
    assert result.summary["params"] > min_params
