"""The tf.data input pipeline: uint8 arrays in, normalized float32 batches out, never float64.

The images stay uint8 in memory (one copy, 150 MB for CIFAR-10's training split). An epoch
shuffles the *indices* with the seed (cheap, exact, full-data shuffle), gathers each batch,
casts it to float32, augments it (training only) and normalizes it with the same
``cifar_dvc.normalization.normalize`` every other stage uses, then prefetches the next batches
while the model trains. Labels are one-hot encoded on the fly (label smoothing needs them).
Per-batch work bounds memory for every variant: anything larger (MobileNet's 128x128
upscaling) happens inside the model, per batch.

Reads the arrays it is given (``cifar_dvc.artifacts.load_split``). Writes nothing.
Used by ``cifar_dvc.training.loop``.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from cifar_dvc.normalization import NormStats, normalize


def make_dataset(x: np.ndarray, y: np.ndarray, num_classes: int, stats: NormStats, batch_size: int,
                 shuffle: bool, seed: int, augmenter: keras.Layer | None = None) -> tf.data.Dataset:
    """Batches of ``(normalized float32 images, one-hot float32 labels)`` from uint8 ``x``.

    ``shuffle`` reshuffles every epoch (deterministically from ``seed``); ``augmenter`` is
    applied to training batches on 0..255 pixels before normalization.
    """
    if x.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {x.dtype}")
    images = tf.constant(x)
    labels = tf.one_hot(tf.constant(np.asarray(y, np.int64)), num_classes, dtype=tf.float32)
    ds = tf.data.Dataset.range(len(x))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)

    def load(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        batch = tf.cast(tf.gather(images, index), tf.float32)
        if augmenter is not None:
            batch = augmenter(batch, training=True)
        return normalize(batch, stats), tf.gather(labels, index)

    # One map call at a time keeps augmentation's random stream in a fixed order (determinism);
    # the work per batch is small next to a training step, and prefetch overlaps the two.
    ds = ds.map(load)
    return ds.prefetch(tf.data.AUTOTUNE)


def flip_tta_accuracy(model: keras.Model, dataset: tf.data.Dataset) -> float:
    """Accuracy of averaging the model's predictions on each image and its horizontal flip."""
    correct = total = 0
    predict = _tta_predict_fn(model)
    for images, labels in dataset:
        probs = predict(images)
        correct += int(tf.reduce_sum(tf.cast(
            tf.equal(tf.argmax(probs, -1), tf.argmax(labels, -1)), tf.int32)))
        total += int(tf.shape(labels)[0])
    return correct / max(total, 1)


def _tta_predict_fn(model: keras.Model) -> Any:
    @tf.function(reduce_retracing=True)
    def predict(images: tf.Tensor) -> tf.Tensor:
        return (model(images, training=False) + model(tf.reverse(images, axis=[2]), training=False)) / 2

    return predict
