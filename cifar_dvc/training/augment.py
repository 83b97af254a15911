"""Training-time augmentation as Keras preprocessing layers, applied in the tf.data pipeline.

``build_augmenter`` turns a variant's ``augment:`` params into a ``keras.Sequential`` of random
layers that runs on whole batches of 0..255 float32 pixels, *before* normalization, so every
range means what Keras' ``ImageDataGenerator`` meant on images scaled to [0, 1] (the seeds'
setting): shift 0.1 = 10% of the side, channel shift 0.2 = 0.2 * 255 pixel levels, and the fill
and clipping happen in pixel space. Augmentation is never applied to evaluation data and never
becomes part of a saved model.

Four small custom layers complete Keras' set:
- ``RandomAffine``: ImageDataGenerator's ``rotation_range``, ``*_shift_range`` and ``zoom_range``
  as one affine transform per image, resampled once (bilinear), as ``apply_affine_transform``
  does. Keras' RandomRotation, RandomTranslation and RandomZoom in a row resample three times,
  and each bilinear resampling blurs: training images blurrier than the seed's, which cost imp2
  7.8 test points (``benchmarks/results/reproduction.md``).
- ``ChannelShift``: ImageDataGenerator's ``channel_shift_range``: one offset drawn uniformly in
  [-intensity, intensity] * 255 per image, added to every channel, the result clipped to that
  image's own min and max (as ``apply_channel_shift`` does).
- ``Cutout``: erase one random square per image (DeVries & Taylor 2017) to 0.
- ``RandomPadCrop``: pad by ``padding`` pixels (reflect) and crop back at a random place, the
  translation used by ResNet-9 / airbench.

``alternating_flip`` is airbench's flip (``augment.alternate_flip``): not a layer, because it needs
each image's index and the epoch, which only the input pipeline knows (``cifar_dvc.training.data``).

Reads and writes nothing. Used by ``cifar_dvc.training.data``.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from cifar_dvc.training.variant import AugmentParams


def affine_transforms(theta: Any, row_shift: Any, col_shift: Any, row_zoom: Any, col_zoom: Any,
                      height: Any, width: Any) -> Any:
    """ImageDataGenerator's transform of each image, as rows for ``keras.ops.image.affine_transform``.

    ``theta`` in radians, shifts in pixels, zooms as factors (< 1 zooms in): one value per image.
    keras_preprocessing's ``apply_affine_transform`` maps an output pixel (row, col) to the input
    point ``A @ (row, col) + b`` with ``A = R(theta) @ diag(row_zoom, col_zoom)`` and ``b = R(theta)
    @ (row_shift, col_shift)``, about the centre ``(height / 2 + 0.5, width / 2 + 0.5)`` (its
    ``transform_matrix_offset_center``, half a pixel off the true centre, kept). Keras' rows
    [a0, a1, a2, b0, b1, b2, c0, c1] map (x = col, y = row) instead, hence the swapped entries.
    """
    ops = keras.ops
    cos, sin = ops.cos(theta), ops.sin(theta)
    a_rr, a_rc = cos * row_zoom, -sin * col_zoom
    a_cr, a_cc = sin * row_zoom, cos * col_zoom
    centre_r, centre_c = height / 2 + 0.5, width / 2 + 0.5
    off_r = cos * row_shift - sin * col_shift + centre_r - (a_rr * centre_r + a_rc * centre_c)
    off_c = sin * row_shift + cos * col_shift + centre_c - (a_cr * centre_r + a_cc * centre_c)
    zero = ops.zeros_like(theta)
    return ops.stack([a_cc, a_cr, off_c, a_rc, a_rr, off_r, zero, zero], axis=1)


@keras.saving.register_keras_serializable(package="cifar_dvc")
class RandomAffine(keras.layers.Layer):
    """Random rotation, shift and zoom of each image in one bilinear resampling (ImageDataGenerator).

    Each image draws its angle in [-rotation, rotation] degrees, its shifts in [-shift, shift] of
    its height and width, and its two zoom factors independently in [1 - zoom_in, 1 + zoom_out]
    (ImageDataGenerator's ``zoom_range``; a factor below 1 shows the object larger).
    """

    def __init__(self, rotation: float = 0.0, shift: float = 0.0, zoom_in: float = 0.0,
                 zoom_out: float = 0.0, fill_mode: str = "nearest", seed: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rotation, self.shift = float(rotation), float(shift)
        self.zoom_in, self.zoom_out = float(zoom_in), float(zoom_out)
        self.fill_mode = fill_mode
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def draw(self, batch: Any, height: Any, width: Any) -> tuple[Any, Any, Any, Any, Any]:
        """One transform per image: angle (radians), row and column shift (pixels), two zooms."""
        def uniform(low: float, high: float) -> Any:
            return keras.random.uniform((batch,), low, high, seed=self.generator)

        angle = self.rotation * math.pi / 180
        zoom = (1 - self.zoom_in, 1 + self.zoom_out)
        return (uniform(-angle, angle), uniform(-self.shift, self.shift) * height,
                uniform(-self.shift, self.shift) * width, uniform(*zoom), uniform(*zoom))

    def call(self, images: Any, training: bool = True) -> Any:
        if not training:
            return images
        ops = keras.ops
        shape = ops.shape(images)
        height, width = ops.cast(shape[1], "float32"), ops.cast(shape[2], "float32")
        transforms = affine_transforms(*self.draw(shape[0], height, width), height, width)
        return ops.image.affine_transform(images, transforms, interpolation="bilinear",
                                          fill_mode=self.fill_mode)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rotation": self.rotation, "shift": self.shift,
                "zoom_in": self.zoom_in, "zoom_out": self.zoom_out, "fill_mode": self.fill_mode,
                "seed": self.seed}


@keras.saving.register_keras_serializable(package="cifar_dvc")
class ChannelShift(keras.layers.Layer):
    """Add one random offset in [-intensity, intensity] * ``value_range`` to all channels, clipped."""

    def __init__(self, intensity: float, value_range: float = 255.0, seed: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.intensity = float(intensity)
        self.value_range = float(value_range)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images: Any, training: bool = True) -> Any:
        if not training or self.intensity == 0:
            return images
        ops = keras.ops
        batch = ops.shape(images)[0]
        offset = keras.random.uniform((batch, 1, 1, 1), -self.intensity, self.intensity,
                                      seed=self.generator) * self.value_range
        low = ops.min(images, axis=(1, 2, 3), keepdims=True)
        high = ops.max(images, axis=(1, 2, 3), keepdims=True)
        return ops.clip(images + ops.cast(offset, images.dtype), low, high)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "intensity": self.intensity,
                "value_range": self.value_range, "seed": self.seed}


@keras.saving.register_keras_serializable(package="cifar_dvc")
class Cutout(keras.layers.Layer):
    """Set one random ``size`` x ``size`` square of each image to 0.

    By default its centre is anywhere in the image, so it may be clipped at the border (DeVries &
    Taylor 2017). ``inside=True`` keeps the whole square inside the image, as airbench96's
    ``batch_cutout`` does: every image loses the same area.
    """

    def __init__(self, size: int, seed: int | None = None, inside: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size = int(size)
        self.seed = seed
        self.inside = bool(inside)
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images: Any, training: bool = True) -> Any:
        if not training or self.size == 0:
            return images
        ops = keras.ops
        shape = ops.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
        if self.inside:  # a top-left corner where the square fits (one larger than the image covers it)
            top = keras.random.randint((batch, 1, 1, 1), 0, ops.maximum(height - self.size, 0) + 1,
                                       seed=self.generator)
            left = keras.random.randint((batch, 1, 1, 1), 0, ops.maximum(width - self.size, 0) + 1,
                                        seed=self.generator)
        else:
            half = self.size // 2
            top = keras.random.randint((batch, 1, 1, 1), 0, height, seed=self.generator) - half
            left = keras.random.randint((batch, 1, 1, 1), 0, width, seed=self.generator) - half
        rows = ops.reshape(ops.arange(height), (1, -1, 1, 1))
        cols = ops.reshape(ops.arange(width), (1, 1, -1, 1))
        inside = (rows >= top) & (rows < top + self.size) & (cols >= left) & (cols < left + self.size)
        return ops.where(inside, ops.zeros_like(images), images)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "size": self.size, "seed": self.seed, "inside": self.inside}


@keras.saving.register_keras_serializable(package="cifar_dvc")
class RandomPadCrop(keras.layers.Layer):
    """Reflect-pad each image by ``padding`` pixels and crop it back at a random offset."""

    def __init__(self, padding: int, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.padding = int(padding)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images: Any, training: bool = True) -> Any:
        if not training or self.padding == 0:
            return images
        ops = keras.ops
        p = self.padding
        shape = ops.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
        padded = ops.pad(images, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
        # Gather rows then columns with per-image offsets: one vectorized op for the batch.
        dy = keras.random.randint((batch, 1), 0, 2 * p + 1, seed=self.generator)
        dx = keras.random.randint((batch, 1), 0, 2 * p + 1, seed=self.generator)
        rows = dy + ops.expand_dims(ops.arange(height), 0)  # (batch, height)
        cols = dx + ops.expand_dims(ops.arange(width), 0)  # (batch, width)
        out = ops.take_along_axis(padded, ops.reshape(rows, (batch, height, 1, 1)), axis=1)
        return ops.take_along_axis(out, ops.reshape(cols, (batch, 1, width, 1)), axis=2)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "padding": self.padding, "seed": self.seed}


def build_augmenter(params: AugmentParams, seed: int) -> keras.Sequential | None:
    """The random layers ``params`` switches on, in ImageDataGenerator's order; None if none.

    Each layer gets its own seed derived from ``seed``, so runs are repeatable.
    """
    if not params.enabled:
        return None
    stack: list[keras.layers.Layer] = []
    if params.rotation or params.shift or params.zoom_in or params.zoom_out:
        stack.append(RandomAffine(params.rotation, params.shift, params.zoom_in, params.zoom_out,
                                  params.fill_mode, seed=seed + 1))
    if params.crop_padding:
        stack.append(RandomPadCrop(params.crop_padding, seed=seed + 4))
    if params.channel_shift:
        stack.append(ChannelShift(params.channel_shift, seed=seed + 5))
    if params.flip and not params.alternate_flip:  # the alternating flip is the pipeline's (data.py)
        stack.append(keras.layers.RandomFlip("horizontal", seed=seed + 6))
    if params.cutout:
        stack.append(Cutout(params.cutout, seed=seed + 7, inside=params.cutout_inside))
    if not stack:  # alternate_flip alone: nothing random left for a layer to do
        return None
    return keras.Sequential(stack, name="augment")


def first_flips(num_images: int, seed: int) -> np.ndarray:
    """Which images are mirrored in the first epoch of ``alternating_flip``: a fair coin each.

    airbench (utils.py, ``CifarLoader.__iter__``) draws ``batch_flip_lr`` once, at epoch 0, over
    the whole training set, and keeps the result; ours is drawn from ``seed``, so it repeats.
    """
    return np.random.default_rng([seed, 0xF11B]).random(num_images) < 0.5


def alternating_flip(images: tf.Tensor, flipped_first: tf.Tensor, epoch: tf.Tensor) -> tf.Tensor:
    """airbench's alternating flip of a batch (NHWC) in epoch ``epoch`` (0-based).

    Image i is mirrored in even epochs if ``flipped_first[i]``, and in odd epochs if not:
    airbench's ``altflip`` (utils.py, ``CifarLoader.__iter__``: the images pre-flipped at random
    at epoch 0, then ``if self.epoch % 2 == 1: images = images.flip(-1)``). Every image is seen
    both ways every two epochs, where a random flip shows a quarter of them one way only; airbench
    measured it worth more than extra epochs. airbench flips before its random crop and we after:
    the crop's offsets are symmetric, so the two give the same distribution.
    """
    odd = tf.equal(tf.math.floormod(tf.cast(epoch, tf.int64), 2), 1)
    mirror = tf.math.logical_xor(tf.cast(flipped_first, tf.bool), odd)
    return tf.where(tf.reshape(mirror, (-1, 1, 1, 1)), tf.reverse(images, axis=[2]), images)
