"""Photo bytes -> top-k classes of a trained variant, through one compiled TensorFlow call.

``Predictor`` loads ``models/<name>.keras`` and its sidecar ``models/<name>.json`` once, checked
against each other (``cifar_dvc.inference.load``: class names, input shape, normalization
statistics, test-time augmentation level), and keeps the concrete (graph) function of
``cifar_dvc.inference.tta_function`` for uint8 images of the model's shape (any batch size): it
normalizes exactly like ``evaluate`` and answers with the variant's own test-time augmentation,
the level recorded in the sidecar, i.e. the one its accuracy was measured with (a sidecar written
before the level was recorded: none). It is traced and warmed up at construction, so no request
pays for tracing, and no request goes through ``model.predict`` (which builds a data pipeline
per call).

Preprocessing is the custom test set stage's own code, called, not copied: ``cifar_dvc.images``
decodes the photo (EXIF orientation, any mode, decompression-bomb limit), squares it, and resizes
it with and without seed 004's blur (s x s Gaussian, s = round(w / blur_divisor)). Both 32x32
images go through the model in one batch: the model's answer is the one for the blurred image
(seed 004's "filtered" input, which recovered most of the accuracy lost on web photos) when the
rule blurs at all (s > 1), the unblurred one otherwise.

Reads the model and its sidecar. Writes nothing. Used by ``cifar_dvc.serve.app``
(``cifar-dvc-serve --model models/cnn.keras``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from cifar_dvc import images, inference
from cifar_dvc.custom_set import CustomParams
from cifar_dvc.errors import DataError
from cifar_dvc.modelinfo import ModelInfo

_CUSTOM_DEFAULTS = CustomParams()


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How a photo becomes model input; the defaults are the ``custom`` stage's own defaults."""

    square: images.Square = _CUSTOM_DEFAULTS.square  # crop the centre square or pad to a square
    resample: images.Resample = _CUSTOM_DEFAULTS.resample  # Pillow filter that resizes to the model's size
    blur_divisor: float | None = _CUSTOM_DEFAULTS.blur_divisor  # s = round(w / divisor); None = never blur
    background: tuple[int, int, int] = _CUSTOM_DEFAULTS.background_rgb  # behind transparency and padding
    max_pixels: int = _CUSTOM_DEFAULTS.max_pixels  # larger photos are refused as decompression bombs
    # what set max_pixels, named when a photo is refused (a label: not part of equality)
    pixels_key: str = dataclasses.field(default="custom.max_pixels", compare=False)

    @classmethod
    def from_custom(cls, params: CustomParams) -> Preprocessing:
        """The preprocessing of the custom stage's filtered set under ``params``."""
        return cls(params.square, params.resample, params.blur_divisor, params.background_rgb,
                   params.max_pixels)


@dataclasses.dataclass
class Prediction:
    """One photo's answer: ranked (label, probability) pairs and the images the model saw."""

    top: list[tuple[str, float]]  # the model's answer for ``model_input``, most probable first
    top_unblurred: list[tuple[str, float]] | None  # answer for the unblurred image, when blurred
    resized: np.ndarray  # uint8 (H, W, C): the photo squared and resized, no blur
    blurred: np.ndarray | None  # uint8 (H, W, C): blurred before resizing; None when s <= 1
    blur_kernel: int  # s of seed 004's rule for this photo (s <= 1: no blur)
    photo: Image.Image  # the decoded, EXIF-oriented RGB photo

    @property
    def model_input(self) -> np.ndarray:
        """The image whose answer is ``top``."""
        return self.resized if self.blurred is None else self.blurred


class Predictor:
    """A loaded model, its sidecar and its compiled inference function; safe to share between threads."""

    def __init__(self, model_path: Path | str, preprocessing: Preprocessing | None = None,
                 top_k: int = 5) -> None:
        model_path = Path(model_path)
        if not model_path.is_file():
            raise DataError(f"{model_path}: model file not found; it is written by `dvc repro train@<name>`")
        self.model_path = model_path
        # Holding the model keeps the variables the compiled function reads alive.
        self._model, info = inference.load(model_path)  # any bad file or mismatch: one DataError line
        self.info: ModelInfo = info
        self.preprocessing = preprocessing or Preprocessing()
        height, width, channels = self.info.image_shape
        if height != width or channels not in (1, 3):
            raise DataError(f"{model_path}: the demo needs square RGB or grayscale input, "
                            f"the sidecar says {self.info.image_shape}")
        self.size, self.channels = height, channels
        self.top_k = min(top_k, len(self.info.classes))
        self.tta = self.info.tta or 0  # test-time augmentation level of every answer
        self._infer = inference.tta_function(self._model, self.info.normalization, self.tta,
                                             self.info.image_shape)
        # The first call of a traced function still builds its graph executor; pay it now.
        self.probabilities(np.zeros((1, height, width, channels), np.uint8))
        self.probabilities(np.zeros((2, height, width, channels), np.uint8))

    @property
    def name(self) -> str:
        """The variant name from the sidecar."""
        return self.info.name

    @property
    def tta_note(self) -> str:
        """One sentence for the page: which test-time augmentation the answers use, and why."""
        if self.info.tta is None:
            return ("Answers without test-time augmentation: this model's sidecar does not record the "
                    "level it was evaluated with (re-run `dvc repro train@<name>` to record it).")
        views = len(inference.tta_weights(self.tta))
        return (f"Answers with test-time augmentation level {self.tta} ({inference.TTA_LEVELS[self.tta]}: "
                f"{views} view{'s' if views > 1 else ''}), as evaluated.")

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) float32 of uint8 images ``x`` (N, H, W, C), with the
        variant's test-time augmentation (``tta``)."""
        # The concrete function skips tf.function's per-call argument binding and signature
        # dispatch, a measurable share of the time for a model as small as seed 000's CNN.
        return np.asarray(self._infer(x), dtype=np.float32)

    def ranked(self, probs: np.ndarray) -> list[tuple[str, float]]:
        """The ``top_k`` (label, probability) pairs of one probability vector, most probable first."""
        order = np.argsort(-probs, kind="stable")[: self.top_k]
        return [(self.info.classes[i], float(probs[i])) for i in order]

    def predict(self, data: bytes) -> Prediction:
        """Decode, preprocess and classify one photo; unusable bytes raise ``images.ImageError``."""
        pre = self.preprocessing
        photo = images.open_image(data, background=pre.background, max_pixels=pre.max_pixels,
                                  pixels_key=pre.pixels_key)
        # Squaring once gives the w of the blur rule; squaring a square again is the identity, so
        # to_model_input below does on ``square`` exactly what it does on ``photo``.
        square = images.prepare_square(photo, pre.square, 3, pre.background)
        s = images.blur_kernel_size(square.width, pre.blur_divisor) if pre.blur_divisor else 1
        resized = images.to_model_input(square, self.size, pre.square, pre.resample, None,
                                        self.channels, pre.background)
        if s <= 1:
            probs = self.probabilities(resized[None])
            return Prediction(self.ranked(probs[0]), None, resized, None, s, photo)
        blurred = images.to_model_input(square, self.size, pre.square, pre.resample, pre.blur_divisor,
                                        self.channels, pre.background)
        probs = self.probabilities(np.stack([blurred, resized]))
        return Prediction(self.ranked(probs[0]), self.ranked(probs[1]), resized, blurred, s, photo)


def set_tf_threads(intra_op: int, inter_op: int) -> bool:
    """Size TensorFlow's thread pools (0 = TensorFlow's choice); False if TensorFlow already started."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:  # the pools are fixed once TensorFlow has run an op in this process
        return False
    return True
