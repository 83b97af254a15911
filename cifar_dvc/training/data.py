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

# Images per tf.data map call: small batches are gathered in groups of about this many, so the
# per-call overhead stays small next to the training steps (benchmarks/results/train_throughput.md).
GROUP_IMAGES = 512
# Iterators keras.Model.fit creates per epoch over a dataset of known size (Keras 3.15's
# EpochIterator); tests/test_resume.py fails if a Keras upgrade changes it.
FIT_ITERATORS_PER_EPOCH = 2


def group_for(batch_size: int) -> int:
    """How many batches of ``batch_size`` one map call should prepare (>= 1)."""
    return max(1, GROUP_IMAGES // batch_size)


def make_dataset(x: np.ndarray, y: np.ndarray, num_classes: int, stats: NormStats, batch_size: int,
                 shuffle: bool, seed: int, augmenter: keras.Layer | None = None,
                 group: int = 1, skip_epochs: int = 0) -> tf.data.Dataset:
    """Batches of ``(normalized float32 images, one-hot float32 labels)`` from uint8 ``x``.

    ``shuffle`` reshuffles every epoch (deterministically from ``seed``); ``augmenter`` is
    applied to training batches on 0..255 pixels before normalization. ``group`` batches are
    gathered, cast, augmented and normalized by one map call, then split: the same batches in the
    same order, but the fixed cost of a tf.data call (~1 ms on 2 cores, as much as a whole
    training step of the small seed models at batch 32) is paid once per group.
    ``skip_epochs`` advances the shuffle by that many epochs of ``keras.Model.fit``: a resumed
    run sees the data in the order the interrupted one would have.
    """
    if group < 1:
        raise ValueError(f"group must be >= 1, got {group}")
    if x.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {x.dtype}")
    images = tf.constant(x)
    labels = tf.one_hot(tf.constant(np.asarray(y, np.int64)), num_classes, dtype=tf.float32)
    ds = tf.data.Dataset.range(len(x))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        # Each new iterator draws the next order from the shuffle's seed stream, and Keras' fit
        # makes two an epoch (one it uses, one it discards at the epoch's end): skip as many.
        for _ in range(FIT_ITERATORS_PER_EPOCH * skip_epochs):
            iter(ds)
    ds = ds.batch(batch_size * group)

    def load(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        batch = tf.cast(tf.gather(images, index), tf.float32)
        if augmenter is not None:
            batch = augmenter(batch, training=True)
        return normalize(batch, stats), tf.gather(labels, index)

    # One map call at a time keeps augmentation's random stream in a fixed order (determinism);
    # the work per batch is small next to a training step, and prefetch overlaps the two.
    ds = ds.map(load)
    if group > 1:
        # rebatch loses the cardinality; Keras needs it for the progress bar and epoch ends.
        ds = ds.rebatch(batch_size).apply(
            tf.data.experimental.assert_cardinality(-(-len(x) // batch_size)))
    # Multi-worker training (cifar_dvc.training.distribute): every worker builds this same pipeline
    # from the same seed and keeps its share of each global batch. Sharding by data, not by file:
    # the images are in memory, there are no files to split.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def tta_accuracy(model: keras.Model, dataset: tf.data.Dataset, level: int = 1) -> float:
    """Accuracy with test-time augmentation ``level`` (see ``tta_views``)."""
    correct = total = 0
    predict = tta_predict_fn(model, level)
    for images, labels in dataset:
        probs = predict(images)
        correct += int(tf.reduce_sum(tf.cast(
            tf.equal(tf.argmax(probs, -1), tf.argmax(labels, -1)), tf.int32)))
        total += int(tf.shape(labels)[0])
    return correct / max(total, 1)


def tta_weights(level: int) -> list[float]:
    """The weight of each view of ``tta_views(images, level)``, in order; checks ``level``."""
    if level not in (0, 1, 2):
        raise ValueError(f"test-time augmentation level must be 0, 1 or 2, got {level}")
    return {0: [1.0], 1: [1 / 2] * 2, 2: [1 / 4] * 2 + [1 / 8] * 4}[level]


def tta_views(images: tf.Tensor, level: int) -> list[tuple[float, tf.Tensor]]:
    """``(weight, view)`` pairs whose weighted predictions average to the TTA prediction.

    Level 0: the image. 1: the image and its mirror, 1/2 each. 2 (airbench94's): those two with
    weight 1/4 each, and the mirror pair of the image shifted one pixel up-left and of the image
    shifted one pixel down-right (reflect padding) with 1/8 each: the shifts match the 2-pixel
    translation seen in training. NHWC: axis 2 is the width.
    """
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


def tta_predict_fn(model: keras.Model, level: int) -> Any:
    """A traced ``images -> probabilities`` averaged over ``tta_views(images, level)``."""
    tta_weights(level)  # check the level now, not at the first call

    @tf.function(reduce_retracing=True)
    def predict(images: tf.Tensor) -> tf.Tensor:
        return tf.add_n([w * model(view, training=False) for w, view in tta_views(images, level)])

    return predict
