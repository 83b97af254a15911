"""The one path from a trained model to its answer: load it with its sidecar, normalize, predict.

Everything that turns a saved model into class probabilities goes through here: ``evaluate``,
the report's figures, the web demo and training's validation with test-time augmentation. So the
model file checks, the sidecar's consistency with the model, the model's input normalization and
the test-time augmentation (TTA) levels exist once.

- ``load(model_path)``: the model and its sidecar ``models/<name>.json`` (``cifar_dvc.modelinfo``),
  checked against each other (input shape, class count); a mismatch is one ``DataError`` line
  naming both files.
- ``load_model(path)``: the model alone. ``keras.saving.load_model`` reports a bad file with
  whatever exception its code path meets (``KeyError: 'config.json'`` for a zip without it,
  ``BadZipFile``, ``JSONDecodeError``, ``TypeError`` ...), so ``load_model`` first checks the
  ``.keras`` zip itself (readable, ``config.json`` and ``metadata.json`` present, ``config.json``
  a JSON object, a bounded uncompressed size, since Keras reads the weights into memory), then
  loads it with the project's custom layers registered and turns any failure of Keras into one
  line naming the file.
- ``TTA_LEVELS``, ``tta_weights``, ``tta_views``: level 0 the image, 1 with its mirror, 2 also
  the mirrors of 1-pixel shifts (``variants.<name>.tta``, recorded in the sidecar by ``train``).
- ``model_input(images, stats)``: 0..255 images as the model takes them (float32, normalized
  with the statistics it was trained with).
- ``predict(model, info, images, tta)``: class probabilities of uint8 images, batched through
  ``tf.data`` (normalized and augmented on the fly, prefetched) and one compiled
  ``model.predict`` per view, the views' probabilities averaged with their weights.
- ``accuracy(model, info, images, labels, tta)``: the share of ``predict``'s top classes that
  are the labels (the evaluation's corruption suite, the benchmarks' test accuracies).
- ``tta_function(model, stats, level)``: the same answer as one traced TensorFlow function of a
  uint8 batch, for callers that classify a few images at a time (the web demo).

TensorFlow and Keras are imported inside the functions that need them, so importing this module
stays cheap (stages import TensorFlow themselves first, quietly: ``cifar_dvc.tfenv``).

Reads the model file and its sidecar. Writes nothing. Used by ``dvc repro evaluate@<name>``
(``cifar_dvc.evaluation.evaluate``), ``dvc repro report`` (``cifar_dvc.evaluation.report`` and
``figures``), ``dvc repro train@<name>`` (``cifar_dvc.training.loop``, validation with TTA) and
the web demo (``cifar-dvc-serve --model models/<name>.keras``, ``cifar_dvc.serve.predictor``).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from cifar_dvc.errors import DataError
from cifar_dvc.modelinfo import ModelInfo, info_path, load_info
from cifar_dvc.normalization import NormStats, normalize

# Keras 3's .keras format: a zip with these members (and the weights, model.weights.h5).
REQUIRED_MEMBERS = ("config.json", "metadata.json")
MAX_CONFIG_BYTES = 64 * 1024 * 1024  # config.json is parsed in memory; real ones are kilobytes
MAX_UNCOMPRESSED_BYTES = 2 * 1024**3  # the whole archive inflated; MobileNet's is about 17 MB
_MAX_DETAIL = 300  # characters of Keras' own message kept in ours
DEFAULT_BATCH_SIZE = 256  # images per compiled predict call (evaluate.batch_size's default)

# Test-time augmentation level -> the views averaged (airbench94's level 2).
TTA_LEVELS: dict[int, str] = {
    0: "the image alone",
    1: "the image and its mirror",
    2: "the image, its mirror and the mirrors of two 1-pixel shifts",
}


def tta_weights(level: int) -> list[float]:
    """The weight of each view of ``tta_views(images, level)``, in order; checks ``level``."""
    if level not in TTA_LEVELS:
        raise ValueError(f"test-time augmentation level must be 0, 1 or 2, got {level}")
    return {0: [1.0], 1: [1 / 2] * 2, 2: [1 / 4] * 2 + [1 / 8] * 4}[level]


def tta_views(images: Any, level: int) -> list[tuple[float, Any]]:
    """``(weight, view)`` pairs of a tf.Tensor batch whose weighted predictions average to the TTA one.

    Level 0: the image. 1: the image and its mirror, 1/2 each. 2 (airbench94's): those two with
    weight 1/4 each, and the mirror pair of the image shifted one pixel up-left and of the image
    shifted one pixel down-right (reflect padding) with 1/8 each: the shifts match the 2-pixel
    translation seen in training. NHWC: axis 2 is the width.
    """
    import tensorflow as tf

    weights = tta_weights(level)
    if level == 0:
        return [(1.0, images)]
    views = [images]
    if level == 2:
        height, width = images.shape[1], images.shape[2]
        padded = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
        views += [padded[:, :height, :width, :], padded[:, 2:height + 2, 2:width + 2, :]]
    mirrored = [v for view in views for v in (view, tf.reverse(view, axis=[2]))]
    return list(zip(weights, mirrored, strict=True))


def model_input(images: Any, stats: NormStats) -> Any:
    """0..255 images (NumPy or tf.Tensor, any dtype) as a model trained with ``stats`` takes them.

    Float32, normalized with ``cifar_dvc.normalization.normalize``: a NumPy array stays NumPy, a
    tensor stays a tensor (and can be inside a ``tf.data`` map or a ``tf.function``).
    """
    if isinstance(images, np.ndarray):
        return normalize(images, stats)  # casts to float32 itself
    import tensorflow as tf

    return normalize(tf.cast(images, tf.float32), stats)


def load(model_path: Path | str) -> tuple[Any, ModelInfo]:
    """The model saved at ``model_path`` (uncompiled) and its sidecar, checked against each other.

    Any problem is one ``DataError`` line: a missing or unloadable model file, a missing or
    malformed sidecar, or a sidecar that does not describe this model (``check_matches``).
    """
    model_path = Path(model_path)
    _require_file(model_path)
    info = load_info(model_path)  # cheap and checked first: no model load for a bad sidecar
    if info.tta is not None and info.tta not in TTA_LEVELS:
        raise DataError(f"{info_path(model_path)}: tta must be one of {', '.join(map(str, TTA_LEVELS))} "
                        f"(or absent), got {info.tta}")
    model = load_model(model_path)
    check_matches(model, info, model_path)
    return model, info


def check_matches(model: Any, info: ModelInfo, model_path: Path | str) -> None:
    """Raise ``DataError`` naming the model and its sidecar unless the sidecar describes ``model``:
    the model's input is a batch of ``info.image_shape`` and its output one value per class."""
    model_path = Path(model_path)
    sidecar = info_path(model_path)
    # Sequential and functional models (all of this project's) know their shapes; a subclassed one
    # may not, and then only predict's own checks apply.
    expected_in = (None, *info.image_shape)
    actual_in = _shape(model, "input_shape")
    if actual_in is not None and actual_in != expected_in:
        raise DataError(f"{model_path}: model input {actual_in} does not match the image_shape "
                        f"{list(info.image_shape)} of {sidecar}; were they written by the same training?")
    actual_out = _shape(model, "output_shape")
    if actual_out is not None and actual_out != (None, len(info.classes)):
        raise DataError(f"{model_path}: model output {actual_out} does not match the {len(info.classes)} "
                        f"classes of {sidecar}; were they written by the same training?")


def predict(model: Any, info: ModelInfo, images: np.ndarray, tta: int,
            batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Class probabilities (N x classes, float32) of uint8 images (N, *info.image_shape).

    Batched with ``tf.data``: each batch is cast, normalized with the sidecar's statistics
    (``model_input``) and turned into one view of ``tta_views`` on the fly, with prefetch, and each
    view goes through one compiled ``model.predict``; the views' probabilities are summed with
    their ``tta_weights``. Deterministic: the same images give the same probabilities.
    """
    weights = tta_weights(tta)  # checks the level before any work
    images = np.asarray(images)
    if images.dtype != np.uint8 or tuple(images.shape[1:]) != tuple(info.image_shape):
        raise ValueError(f"expected uint8 images of shape (N, {', '.join(map(str, info.image_shape))}), "
                         f"got {images.dtype} {images.shape}")
    if not len(images):
        return np.zeros((0, len(info.classes)), np.float32)
    import tensorflow as tf

    stats = info.normalization

    def pipeline(view: int) -> Any:
        data = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)

        def prepare(batch: Any) -> Any:
            return tta_views(model_input(batch, stats), tta)[view][1]

        return data.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    probs = sum(w * model.predict(pipeline(i), verbose=0) for i, w in enumerate(weights))
    return np.asarray(probs, np.float32)


def accuracy(model: Any, info: ModelInfo, images: np.ndarray, labels: np.ndarray, tta: int = 0,
             batch_size: int = DEFAULT_BATCH_SIZE) -> float:
    """Share of ``images`` whose most probable class under ``predict`` (at TTA ``tta``) is their
    label in ``labels``; 0.0 for no images."""
    probs = predict(model, info, images, tta, batch_size=batch_size)
    return float((probs.argmax(axis=1) == np.asarray(labels)).mean()) if len(probs) else 0.0


def tta_function(model: Any, stats: NormStats, level: int,
                 image_shape: tuple[int, ...] | None = None) -> Any:
    """A traced ``uint8 images -> probabilities`` with TTA ``level`` (the weighted sum of the views).

    With ``image_shape``, the concrete function of the signature (any batch size, uint8 images of
    that shape), callable without tf.function's per-call dispatch; else a ``tf.function`` that
    traces once per input shape. Sums the views in the graph (``tf.add_n``), so its last bits
    may differ from ``predict``'s.
    """
    import tensorflow as tf

    tta_weights(level)  # check the level now, not at the first call

    def probabilities(images: Any) -> Any:
        views = tta_views(model_input(images, stats), level)
        return tf.add_n([w * model(view, training=False) for w, view in views])

    if image_shape is None:
        return tf.function(probabilities, reduce_retracing=True)
    spec = tf.TensorSpec((None, *image_shape), tf.uint8)
    return tf.function(probabilities, input_signature=[spec]).get_concrete_function()


def load_model(path: Path | str) -> Any:
    """The Keras model saved at ``path`` (uncompiled), or ``DataError`` naming the file and why not."""
    path = Path(path)
    _require_file(path)
    if path.suffix == ".keras":
        check_keras_archive(path)
    import keras

    import cifar_dvc.models  # noqa: F401  (registers the custom layers used by saved models)

    try:
        return keras.saving.load_model(path, compile=False)
    except (MemoryError, ImportError):
        raise  # not the file's fault
    except Exception as exc:  # the file drives every code path in here: any failure means a bad file
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        if len(detail) > _MAX_DETAIL:
            detail = detail[:_MAX_DETAIL] + "..."
        raise DataError(f"{path}: not a loadable Keras model ({detail})") from None


def check_keras_archive(path: Path) -> None:
    """Raise ``DataError`` unless ``path`` is a plausible Keras 3 ``.keras`` zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            missing = [m for m in REQUIRED_MEMBERS if m not in members]
            if missing:
                raise DataError(f"{path}: not a Keras model file: the zip has no {missing[0]} "
                                "(expected a .keras file saved by `dvc repro train@<name>`)")
            total = sum(info.file_size for info in members.values())
            if total > MAX_UNCOMPRESSED_BYTES:
                raise DataError(f"{path}: inflates to {total} bytes, more than the {MAX_UNCOMPRESSED_BYTES} "
                                "bytes a model of this project may have")
            if members["config.json"].file_size > MAX_CONFIG_BYTES:
                raise DataError(f"{path}: config.json of {members['config.json'].file_size} bytes is "
                                "implausibly large")
            config = json.loads(archive.read("config.json"))
    except zipfile.BadZipFile as exc:
        raise DataError(f"{path}: not a Keras model file (not a zip archive: {exc})") from None
    except (OSError, EOFError, zipfile.LargeZipFile, NotImplementedError) as exc:
        raise DataError(f"{path}: unreadable Keras model file ({type(exc).__name__}: {exc})") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise DataError(f"{path}: config.json is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(config, dict):
        raise DataError(f"{path}: config.json is not a JSON object")


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: model not found; it is written by `dvc repro train@<name>`")


def _shape(model: Any, attribute: str) -> tuple[int | None, ...] | None:
    """``model.input_shape`` / ``output_shape`` as a tuple, None when the model has no single one."""
    try:
        shape = getattr(model, attribute)
    except (AttributeError, ValueError, RuntimeError):  # a subclassed model, or several inputs
        return None
    if not isinstance(shape, tuple) or (shape and not all(d is None or isinstance(d, int) for d in shape)):
        return None
    return tuple(shape)
