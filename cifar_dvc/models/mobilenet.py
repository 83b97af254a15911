"""Seed 004's transfer learning: Keras' MobileNet v1 at 128x128 input with a new softmax head.

The model takes the project's normalized 32x32 images like every other variant; its first layers
undo our normalization into MobileNet's own convention ([-1, 1], i.e. ``p / 127.5 - 1`` of
0..255 pixels) and resize to 128x128, per batch, inside the model, so no upscaled copy of the
data set ever exists and a saved model needs no special preprocessing.

- ``trainable_blocks=0`` (MNET1): the whole MobileNet is frozen; only the new head learns.
- ``trainable_blocks=1`` (MNET2): the last depthwise-separable conv block (``conv_dw_13``,
  ``conv_pw_13`` and their batch norms) learns too; ``dropout=0.4`` before the head.

``weights``: ``imagenet`` (Keras downloads and caches the file in ``~/.keras/models``), a local
``.h5`` / ``.weights.h5`` path (e.g. ``mobilenet_2_5_224_tf_no_top.h5``: conv weights do not
depend on the input size), or ``none`` (random initialization: tests and the offline demo).
Offline without the cached file, the download failure is one ``FetchError`` line saying where to
put the file (``imagenet_weights_file``) or which ``model_args.weights`` to set.

Reads the weights file named by ``weights``. Writes nothing (Keras caches ``imagenet`` downloads).
"""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import keras
from keras import layers

from cifar_dvc.errors import FetchError, ParamsError
from cifar_dvc.models.layers import PerChannelAffine
from cifar_dvc.normalization import NormStats

# Layer-name prefixes of MobileNet v1's depthwise-separable blocks, last first.
_BLOCK_PREFIXES = [(f"conv_dw_{i}", f"conv_pw_{i}") for i in range(13, 0, -1)]


def build_mobilenet(input_shape: tuple[int, int, int], num_classes: int, normalization: NormStats,
                    weights: str = "imagenet", alpha: float = 1.0, size: int = 128,
                    trainable_blocks: int = 0, dropout: float = 0.0) -> keras.Model:
    """MobileNet v1 (``alpha`` width) on ``size`` x ``size`` upscaled input, global average pool,
    optional dropout, dense softmax head; the last ``trainable_blocks`` blocks are trainable."""
    if input_shape[-1] != 3:
        raise ParamsError(f"mobilenet needs RGB images, the data set has {input_shape[-1]} channel(s)")
    if not 0 <= trainable_blocks <= len(_BLOCK_PREFIXES):
        raise ParamsError(f"mobilenet: trainable_blocks must be in 0..13, got {trainable_blocks}")
    weights_arg = _resolve_weights(weights)
    try:
        base = keras.applications.MobileNet(input_shape=(size, size, 3), alpha=alpha, include_top=False,
                                            weights=weights_arg, pooling="avg")
    except Exception as exc:
        # Keras' get_file turns URLError/HTTPError into a bare Exception("URL fetch failure on ...").
        download_failed = isinstance(exc, (OSError, urllib.error.URLError)) or "URL fetch failure" in str(exc)
        if weights_arg != "imagenet" or not download_failed:
            raise
        name = imagenet_weights_file(alpha, size)
        raise FetchError(
            f"mobilenet: cannot download the ImageNet weights {name} ({' '.join(str(exc).split())}); "
            f"offline, put {name} into {keras_cache_dir()}/, or set the variant's model_args.weights "
            "to the path of a local .h5 file (none: random weights)") from None
    _freeze(base, trainable_blocks)

    inputs = keras.Input(shape=input_shape, name="image")
    # normalized x = (p/255 - mean) / std  =>  p/127.5 - 1 = 2 * (x * std + mean) - 1
    scale = [2.0 * s for s in normalization.std]
    offset = [2.0 * m - 1.0 for m in normalization.mean]
    x = PerChannelAffine(scale, offset, name="to_mobilenet_range")(inputs)
    x = layers.Resizing(size, size, interpolation="bilinear", name="upscale")(x)
    # training=False keeps the frozen batch norms in inference mode even while the head trains
    # (Keras' transfer-learning guide), whatever `trainable` the last block has.
    x = base(x, training=False)
    if dropout > 0:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="mobilenet")


def imagenet_weights_file(alpha: float, size: int) -> str:
    """The file name Keras downloads for ``weights="imagenet"``, e.g. ``mobilenet_1_0_128_tf_no_top.h5``."""
    alpha_text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}.get(alpha, str(alpha))
    rows = size if size in (128, 160, 192, 224) else 224  # Keras falls back to 224 for other sizes
    return f"mobilenet_{alpha_text}_{rows}_tf_no_top.h5"


def keras_cache_dir() -> str:
    """Where Keras caches downloaded weights: ``$KERAS_HOME/models``, else ``~/.keras/models``."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models")


def _resolve_weights(weights: str) -> str | None:
    if weights == "none":
        return None
    if weights == "imagenet":
        return weights
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ParamsError(f"mobilenet weights: {weights}: no such file; expected imagenet, none or a .h5")
    if not path.name.endswith((".h5", ".hdf5")):
        raise ParamsError(f"mobilenet weights: {weights}: expected a .h5 or .weights.h5 file")
    return str(path)


def _freeze(base: keras.Model, trainable_blocks: int) -> None:
    """Freeze every layer of ``base`` except those of its last ``trainable_blocks`` blocks."""
    prefixes = tuple(p for block in _BLOCK_PREFIXES[:trainable_blocks] for p in block)
    base.trainable = bool(prefixes)
    for layer in base.layers:
        layer.trainable = bool(prefixes) and layer.name.startswith(prefixes)
