"""The tf.data input pipeline: uint8 arrays in, normalized float32 batches out, never float64.

The images stay uint8 in memory (one copy, 150 MB for CIFAR-10's training split). An epoch
shuffles the *indices* with the seed (cheap, exact, full-data shuffle), gathers each batch,
casts it to float32, augments it (training only) and normalizes it with the same
``cifar_dvc.normalization.normalize`` every other stage uses, then prefetches the next batches
while the model trains. The labels are the one-hot rows that ``prepare`` wrote (``y_onehot``,
checked by ``cifar_dvc.artifacts.onehot_labels``; label smoothing needs them), gathered per batch.
Per-batch work bounds memory for every variant: anything larger (MobileNet's 128x128
upscaling) happens inside the model, per batch.

Reads the arrays it is given (``cifar_dvc.artifacts.load_split``). Writes nothing.
Used by ``cifar_dvc.training.loop``. (Validation with test-time augmentation predicts through
``cifar_dvc.inference``, like every other consumer of a model.)
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from cifar_dvc.normalization import NormStats, normalize
from cifar_dvc.training.augment import alternating_flip, first_flips

# Images per tf.data map call: small batches are gathered in groups of about this many, so the
# per-call overhead stays small next to the training steps (benchmarks/results/train_throughput.md).
GROUP_IMAGES = 512
# Iterators keras.Model.fit creates per epoch over a dataset of known size (Keras 3.15's
# EpochIterator); tests/test_resume.py fails if a Keras upgrade changes it.
FIT_ITERATORS_PER_EPOCH = 2


def group_for(batch_size: int) -> int:
    """How many batches of ``batch_size`` one map call should prepare (>= 1)."""
    return max(1, GROUP_IMAGES // batch_size)


def make_dataset(x: np.ndarray, y_onehot: np.ndarray, stats: NormStats, batch_size: int,
                 shuffle: bool, seed: int, augmenter: keras.Layer | None = None,
                 group: int = 1, skip_epochs: int = 0, alternate_flip: bool = False) -> tf.data.Dataset:
    """Batches of ``(normalized float32 images, one-hot float32 labels)`` from uint8 ``x`` and its
    float32 one-hot rows ``y_onehot`` (a prepared split's, ``artifacts.onehot_labels``).

    ``shuffle`` reshuffles every epoch (deterministically from ``seed``); ``augmenter`` is
    applied to training batches on 0..255 pixels before normalization. ``group`` batches are
    gathered, cast, augmented and normalized by one map call, then split: the same batches in the
    same order, but the fixed cost of a tf.data call (~1 ms on 2 cores, as much as a whole
    training step of the small seed models at batch 32) is paid once per group.
    ``skip_epochs`` advances the shuffle by that many epochs of ``keras.Model.fit``: a resumed
    run sees the data in the order the interrupted one would have.
    ``alternate_flip``: airbench's flip (``augment.alternating_flip``), by image index and epoch.
    """
    if group < 1:
        raise ValueError(f"group must be >= 1, got {group}")
    if x.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {x.dtype}")
    if y_onehot.dtype != np.float32 or y_onehot.ndim != 2 or len(y_onehot) != len(x):
        raise ValueError(f"labels must be float32 one-hot rows, one per image: got {y_onehot.dtype} "
                         f"of shape {y_onehot.shape} for {len(x)} images")
    images = tf.constant(x)
    labels = tf.constant(y_onehot)
    ds = tf.data.Dataset.range(len(x))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        # Each new iterator draws the next order from the shuffle's seed stream, and Keras' fit
        # makes two an epoch (one it uses, one it discards at the epoch's end): skip as many.
        for _ in range(FIT_ITERATORS_PER_EPOCH * skip_epochs):
            iter(ds)
    ds = ds.batch(batch_size * group)
    if alternate_flip:
        # zip with the endless epoch numbers loses the cardinality; Keras needs it for epoch ends
        ds = tf.data.Dataset.zip(ds, _epoch_numbers(skip_epochs)).apply(
            tf.data.experimental.assert_cardinality(-(-len(x) // (batch_size * group))))
        flipped_first = tf.constant(first_flips(len(x), seed))

    def load(index: tf.Tensor, epoch: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        batch = tf.cast(tf.gather(images, index), tf.float32)
        if augmenter is not None:
            batch = augmenter(batch, training=True)
        if epoch is not None:
            batch = alternating_flip(batch, tf.gather(flipped_first, index), epoch)
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


def _epoch_numbers(first: int) -> tf.data.Dataset:
    """An endless repetition of this iteration's epoch number: ``first``, then one more per iteration.

    The count is the pipeline's own, so it needs no callback and a resumed run (``first`` =
    ``skip_epochs``) goes on where it stopped: each iterator takes a number when it yields its
    first batch. tf.data starts an iterator's work at its first pull, so the iterator that
    ``keras.Model.fit`` makes at an epoch's end and discards takes none (tests/test_recipe_pieces.py).
    """
    counter = tf.Variable(first, dtype=tf.int64, trainable=False, name="epoch_counter")
    numbers = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)).map(
        lambda _: counter.assign_add(1) - 1)
    return numbers.flat_map(lambda epoch: tf.data.Dataset.from_tensors(epoch).repeat())
