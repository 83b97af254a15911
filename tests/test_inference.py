"""The one path from a trained model to its answer (``cifar_dvc.inference``).

``predict`` is checked against the computation evaluate's own ``predict`` did before this module
existed, written out here with NumPy (views by slicing and ``np.pad``, normalization by its
formula, one ``model.predict`` per view, the weighted sum in view order): bit for bit, at every
TTA level. Also: the TTA views, the model/sidecar check (one line naming both files), the
sidecar's TTA level reaching the web demo, and that nothing in ``cifar_dvc.evaluation`` imports
``cifar_dvc.training`` or loads a model by itself.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from cifar_dvc import inference
from cifar_dvc.errors import DataError
from cifar_dvc.modelinfo import ModelInfo, info_path, save_info
from cifar_dvc.normalization import NormStats

ROOT = Path(__file__).resolve().parent.parent
SHAPE = (8, 8, 3)
CLASSES = ["a", "b", "c"]
STATS = NormStats("standardize", (0.5, 0.45, 0.4), (0.25, 0.2, 0.3))
# airbench94's level 2: the image and its mirror 1/4 each, the mirrors of the two shifts 1/8 each
WEIGHTS = {0: [1.0], 1: [0.5, 0.5], 2: [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]}


def reference_probs(model, x: np.ndarray, stats: NormStats, level: int, batch_size: int) -> np.ndarray:
    """Evaluate's TTA prediction written out with NumPy: normalize, build the views, predict, weigh."""
    normalized = x.astype(np.float32) * stats.scale - stats.offset
    views = [normalized]
    if level == 2:
        height, width = x.shape[1:3]
        padded = np.pad(normalized, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
        views += [padded[:, :height, :width], padded[:, 2:height + 2, 2:width + 2]]  # up-left, down-right
    if level >= 1:
        views = [v for view in views for v in (view, view[:, :, ::-1])]  # each view, then its mirror
    total = 0
    for weight, view in zip(WEIGHTS[level], views, strict=True):
        total = total + weight * model.predict(np.ascontiguousarray(view), batch_size=batch_size, verbose=0)
    return np.asarray(total, np.float32)


def _model(shape: tuple[int, int, int] = SHAPE, classes: int = len(CLASSES)) -> keras.Model:
    """A small conv net whose answer depends on where things are (Flatten): mirrors and shifts matter."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(classes, activation="softmax",
                                 kernel_initializer=keras.initializers.RandomNormal(stddev=1.0))(x)
    return keras.Model(inputs, outputs)


def _images(n: int, shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _info(tta: int | None = None, shape: tuple[int, int, int] = SHAPE,
          classes: list[str] | None = None) -> ModelInfo:
    return ModelInfo("small", "synthetic", classes or CLASSES, shape, STATS, tta=tta)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inference") / "small.keras"
    _model().save(path)
    save_info(path, _info(tta=2))
    return path


@pytest.mark.parametrize("level", [0, 1, 2])
def test_predict_is_evaluates_computation_bit_for_bit(saved: Path, level: int) -> None:
    model, info = inference.load(saved)
    x = _images(37)  # 16 + 16 + 5: a partial last batch too
    probs = inference.predict(model, info, x, level, batch_size=16)
    assert probs.dtype == np.float32 and probs.shape == (37, len(CLASSES))
    np.testing.assert_array_equal(probs, reference_probs(model, x, STATS, level, batch_size=16))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    if level:  # the views matter for this model: TTA is not a no-op here
        assert not np.allclose(probs, inference.predict(model, info, x, 0, batch_size=16), atol=1e-4)


def test_accuracy_is_the_share_of_top_classes_equal_to_the_labels(saved: Path) -> None:
    model, info = inference.load(saved)
    x = _images(37)
    top = reference_probs(model, x, STATS, 2, batch_size=16).argmax(axis=1)
    labels = top.copy()
    labels[:10] = (labels[:10] + 1) % len(CLASSES)  # 10 of 37 wrong
    assert inference.accuracy(model, info, x, labels, tta=2, batch_size=16) == pytest.approx(27 / 37)
    assert inference.accuracy(model, info, x, top, tta=2) == 1.0
    assert inference.accuracy(model, info, x[:0], labels[:0]) == 0.0


def test_tta_function_gives_predicts_answer(saved: Path) -> None:
    """The traced function of the web demo sums the same views with the same weights (in the graph)."""
    model, _ = inference.load(saved)
    x = _images(5, seed=1)
    for level in (0, 1, 2):
        expected = reference_probs(model, x, STATS, level, batch_size=5)
        concrete = inference.tta_function(model, STATS, level, SHAPE)
        np.testing.assert_allclose(concrete(tf.constant(x)).numpy(), expected, rtol=1e-5, atol=1e-6)
        traced = inference.tta_function(model, STATS, level)
        np.testing.assert_allclose(traced(tf.constant(x)).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_mirror_tta_turns_a_left_half_model_around() -> None:
    """A model that only sees the left half: TTA level 1 averages it with the mirrored image."""
    inputs = keras.Input((4, 4, 1))
    left = keras.layers.Lambda(lambda t: keras.ops.mean(t[:, :, :2, :], axis=(1, 2, 3)))(inputs)
    outputs = keras.layers.Lambda(lambda v: keras.ops.stack([v, 1 - v], axis=-1))(left)
    model = keras.Model(inputs, outputs)
    info = ModelInfo("half", "synthetic", ["left", "right"], (4, 4, 1), NormStats("scale", (0.0,), (1.0,)))
    x = np.zeros((2, 4, 4, 1), np.uint8)
    x[0, :, :2] = 204  # left bright: plain 0.8 -> class 0; TTA (0.8 + 0.0) / 2 = 0.4 -> class 1
    x[1, :, 2:] = 255  # right bright: plain 0.0 -> class 1; TTA 0.5 -> a tie, p(right) = 0.5
    plain = inference.predict(model, info, x, 0, batch_size=2)
    mirrored = inference.predict(model, info, x, 1, batch_size=2)
    np.testing.assert_allclose(plain[:, 0], [0.8, 0.0], atol=1e-6)
    np.testing.assert_allclose(mirrored[:, 0], [0.4, 0.5], atol=1e-6)


def test_level_2_views_are_mirrors_of_one_pixel_shifts_with_weights_summing_to_1() -> None:
    images = tf.reshape(tf.range(2 * 5 * 5 * 1, dtype=tf.float32), (2, 5, 5, 1))
    views = inference.tta_views(images, 2)
    assert [w for w, _ in views] == WEIGHTS[2] and sum(WEIGHTS[2]) == 1.0
    x = images.numpy()
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    expected = [x, padded[:, :5, :5], padded[:, 2:, 2:]]
    for i, plain in enumerate(expected):
        np.testing.assert_array_equal(views[2 * i][1].numpy(), plain)
        np.testing.assert_array_equal(views[2 * i + 1][1].numpy(), plain[:, :, ::-1])
    assert [w for w, _ in inference.tta_views(images, 1)] == WEIGHTS[1]
    assert inference.tta_views(images, 0) == [(1.0, images)]
    assert sorted(inference.TTA_LEVELS) == [0, 1, 2]
    for level in (3, -1):
        with pytest.raises(ValueError, match="0, 1 or 2"):
            inference.tta_views(images, level)


def test_predict_refuses_other_images_and_answers_an_empty_set(saved: Path) -> None:
    model, info = inference.load(saved)
    with pytest.raises(ValueError, match=r"uint8 images of shape \(N, 8, 8, 3\)"):
        inference.predict(model, info, _images(2).astype(np.float32), 0)
    with pytest.raises(ValueError, match=r"uint8 images of shape \(N, 8, 8, 3\)"):
        inference.predict(model, info, _images(2, (9, 9, 3)), 0)
    with pytest.raises(ValueError, match="0, 1 or 2"):
        inference.predict(model, info, _images(2), 3)
    empty = inference.predict(model, info, _images(0), 2)
    assert empty.shape == (0, len(CLASSES)) and empty.dtype == np.float32


def test_model_input_is_the_normalization_formula_for_arrays_and_tensors() -> None:
    x = _images(3)
    expected = x.astype(np.float32) * STATS.scale - STATS.offset
    as_array = inference.model_input(x, STATS)
    assert isinstance(as_array, np.ndarray) and as_array.dtype == np.float32
    np.testing.assert_array_equal(as_array, expected)
    np.testing.assert_array_equal(inference.model_input(tf.constant(x), STATS).numpy(), expected)


@pytest.mark.parametrize(("sidecar", "says"), [
    (_info(shape=(10, 10, 3)), r"model input \(None, 8, 8, 3\) does not match the image_shape \[10, 10, 3\]"),
    (_info(classes=["a", "b"]), r"model output \(None, 3\) does not match the 2 classes"),
])
def test_a_sidecar_of_another_model_is_one_line_naming_both_files(saved: Path, tmp_path: Path,
                                                                   sidecar: ModelInfo, says: str) -> None:
    copy = tmp_path / "copy.keras"
    copy.write_bytes(saved.read_bytes())
    save_info(copy, sidecar)
    with pytest.raises(DataError, match=says) as caught:
        inference.load(copy)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{copy}: ")
    assert str(info_path(copy)) in message and str(copy.with_suffix(".json")) in message


def test_a_bad_sidecar_is_one_line_naming_it(saved: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.keras"
    copy.write_bytes(saved.read_bytes())
    sidecar = copy.with_suffix(".json")
    with pytest.raises(DataError, match=re.escape(f"{sidecar}: model description not found")):
        inference.load(copy)
    raw = json.loads(info_path(saved).read_text())
    for change, says in [({"tta": 7}, "tta must be one of 0, 1, 2"),
                         ({"tta": "2"}, "an integer tta"),
                         ({"normalization": {**raw["normalization"], "mean": [0.5]}},
                          "one normalization mean and std per channel")]:
        sidecar.write_text(json.dumps({**raw, **change}))
        with pytest.raises(DataError, match=says) as caught:
            inference.load(copy)
        assert str(caught.value).startswith(f"{sidecar}: ") and "\n" not in str(caught.value)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'none.keras'}: model not found")):
        inference.load(tmp_path / "none.keras")


def test_load_gives_the_model_and_its_sidecar(saved: Path) -> None:
    model, info = inference.load(saved)
    assert info == _info(tta=2)
    x = _images(4)
    np.testing.assert_allclose(model.predict(inference.model_input(x, STATS), verbose=0),
                               _model().predict(inference.model_input(x, STATS), verbose=0), atol=1e-6)


def test_the_web_demo_answers_with_the_sidecars_tta_and_says_so(saved: Path, tmp_path: Path) -> None:
    from cifar_dvc.serve.app import create_app
    from cifar_dvc.serve.predictor import Predictor
    from cifar_dvc.serve.urlfetch import UrlFetcher

    predictor = Predictor(saved, top_k=3)
    x = _images(3, seed=2)
    assert predictor.tta == 2
    np.testing.assert_allclose(predictor.probabilities(x), reference_probs(predictor._model, x, STATS, 2, 3),
                               rtol=1e-5, atol=1e-6)
    info = create_app(predictor, UrlFetcher(timeout=1.0, max_bytes=1000)).test_client().get("/api/model")
    assert info.get_json()["tta"] == {"level": 2, "note": predictor.tta_note}
    assert "level 2" in predictor.tta_note and "6 views" in predictor.tta_note
    assert predictor.tta_note.endswith("as evaluated.")

    # A sidecar from before the level was recorded: no TTA, and the page says why.
    old = tmp_path / "old.keras"
    old.write_bytes(saved.read_bytes())
    save_info(old, _info(tta=None))
    legacy = Predictor(old)
    assert legacy.tta == 0 and "without test-time augmentation" in legacy.tta_note
    np.testing.assert_allclose(legacy.probabilities(x), reference_probs(legacy._model, x, STATS, 0, 3),
                               rtol=1e-5, atol=1e-6)


def test_evaluation_reaches_no_training_module_and_only_inference_loads_models() -> None:
    from tests.test_dvc_deps import closure

    for module in ("cifar_dvc.evaluation.evaluate", "cifar_dvc.evaluation.report",
                   "cifar_dvc.evaluation.figures", "cifar_dvc.serve.app"):
        reached = sorted(p.relative_to(ROOT).as_posix() for p in closure(module))
        assert not [p for p in reached if p.startswith("cifar_dvc/training/")], (module, reached)
        assert "cifar_dvc/inference.py" in reached
    found = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "cifar_dvc").rglob("*.py")
                   if _loads_a_model_or_defines_tta(ast.parse(path.read_text())))
    assert found == ["cifar_dvc/inference.py"]


def _loads_a_model_or_defines_tta(tree: ast.AST) -> bool:
    """A call of any ``load_model`` (Keras' or ours), or a definition of the TTA levels or views."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)) == "load_model":
                return True
        if isinstance(node, ast.FunctionDef) and node.name in ("tta_views", "tta_weights"):
            return True
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and any(
                isinstance(t, ast.Name) and t.id == "TTA_LEVELS" for t in targets):
            return True
    return False
