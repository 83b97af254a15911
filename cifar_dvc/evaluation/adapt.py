"""Test-time BatchNorm adaptation: re-estimate BatchNorm statistics on a test set's own images.

Schneider et al., NeurIPS 2020 ("Improving robustness against common corruptions by covariate
shift adaptation"): a network with BatchNorm normalizes each feature with the mean and variance
it saw in training; when the test images come from another distribution (photos, corruptions),
replacing those statistics by the test set's own — no labels, no gradient step — removes much of
the shift. Their mixed form keeps a prior: with ``n`` test images and a prior strength ``N``
(counted in images), each statistic becomes ``(N * training + n * test) / (N + n)``.

How the statistics are measured (``BatchNormAdapter.adapt``): the set is passed once through a
*copy* of the model in inference mode (dropout off), each BatchNorm layer normalizing its input
with the statistics of the current chunk of images (at most ``chunk`` images, the evaluation's
batch size) and recording them; the stored statistics are the per-channel mean and (biased)
variance over the whole set, as Keras computes them in training. That is what PyTorch's
``model.train()`` pass of the paper does, but it works for every BatchNorm layer, also frozen ones
and those inside nested models (MobileNet's), which Keras' ``training=True`` would leave alone,
and it does not switch dropout on. With a set of at most ``chunk`` images (the custom sets) the
statistics are exactly the set's; a bigger set's deeper statistics differ from the exact ones only
by the sampling noise of the chunks upstream.

The model given is never changed (its variables are not even read after copying), and nothing is
saved: the adapted copy lives in memory for the evaluation. ``has_batchnorm(model)`` is false for
variants without BatchNorm; their adapted results are reported as null.

Reads and writes nothing. Used by ``cifar_dvc.evaluation.evaluate`` (``python -m stages.evaluate``)
and ``benchmarks/robustness.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cifar_dvc.inference import model_input
from cifar_dvc.normalization import NormStats


def batchnorm_layers(model: Any) -> list[Any]:
    """Every BatchNormalization layer of ``model``, nested models included, in layer order."""
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found += batchnorm_layers(layer)
    return found


def has_batchnorm(model: Any) -> bool:
    """True if ``model`` (or a model nested in it) has a BatchNormalization layer."""
    return bool(batchnorm_layers(model))


def copy_model(model: Any) -> Any:
    """An independent copy of ``model``: same architecture and weights, no shared variables.

    ``recursive=True`` clones nested models too; without it their layers, and so their
    BatchNorm statistics, would be shared with the original.
    """
    import keras

    clone = keras.models.clone_model(model, recursive=True)
    clone.set_weights(model.get_weights())
    return clone


class BatchNormAdapter:
    """A copy of a model whose BatchNorm statistics can be set from any set of images.

    One copy serves every set of an evaluation (``adapt`` overwrites the statistics each time),
    so a compiled ``predict`` of the copy is traced once, not once per set.
    """

    def __init__(self, model: Any) -> None:
        self.model = copy_model(model)
        self.layers = batchnorm_layers(self.model)
        # The training statistics: the prior of the mixed form and what ``reset`` restores.
        self.source = [(np.asarray(layer.moving_mean.numpy(), np.float64),
                        np.asarray(layer.moving_variance.numpy(), np.float64)) for layer in self.layers]

    def reset(self) -> Any:
        """The copy with the training statistics back (then it predicts as the original)."""
        for layer, (mean, variance) in zip(self.layers, self.source, strict=True):
            layer.moving_mean.assign(mean.astype(np.float32))
            layer.moving_variance.assign(variance.astype(np.float32))
        return self.model

    def statistics(self, x: np.ndarray, stats: NormStats,
                   chunk: int = 256) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per BatchNorm layer, the per-channel mean and biased variance of its input over ``x``.

        ``x``: uint8 images, normalized here with ``stats`` (the model's training normalization).
        """
        if len(x) == 0:
            raise ValueError("BatchNorm adaptation needs at least one image")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        sums: list[list[Any]] = [[0.0, 0.0, 0] for _ in self.layers]  # sum, sum of squares, count
        originals = [layer.__dict__.get("call") for layer in self.layers]
        try:
            for i, layer in enumerate(self.layers):
                layer.call = _collecting_call(layer, sums[i])
            for start in range(0, len(x), chunk):
                self.model(model_input(x[start:start + chunk], stats), training=False)
        finally:
            for layer, original in zip(self.layers, originals, strict=True):
                del layer.call  # back to the class's own call
                if original is not None:
                    layer.call = original
        out = []
        for total, squares, count in sums:
            mean = total / count
            out.append((mean, np.maximum(squares / count - mean * mean, 0.0)))
        return out

    def adapt(self, x: np.ndarray, stats: NormStats, prior: float = 0.0, chunk: int = 256) -> Any:
        """The copy with statistics ``(prior * training + n * test) / (prior + n)`` of ``x``'s n images.

        ``prior`` is the paper's N (0: the test statistics alone). Only the BatchNorm moving mean
        and variance of the copy change; every other weight stays the original's.
        """
        if prior < 0:
            raise ValueError(f"prior must be >= 0, got {prior}")
        n = len(x)
        weight = n / (n + prior)
        for layer, (src_mean, src_var), (mean, var) in zip(self.layers, self.source,
                                                            self.statistics(x, stats, chunk), strict=True):
            layer.moving_mean.assign(((1 - weight) * src_mean + weight * mean).astype(np.float32))
            layer.moving_variance.assign(((1 - weight) * src_var + weight * var).astype(np.float32))
        return self.model


def adapt_batchnorm(model: Any, x: np.ndarray, stats: NormStats, prior: float = 0.0,
                    chunk: int = 256) -> Any | None:
    """A copy of ``model`` with BatchNorm statistics re-estimated on ``x``; None without BatchNorm."""
    if not has_batchnorm(model):
        return None
    return BatchNormAdapter(model).adapt(x, stats, prior, chunk)


def _collecting_call(layer: Any, acc: list[Any]) -> Any:
    """A BatchNorm ``call`` that normalizes with the batch's own statistics and adds them to ``acc``.

    The moments are those Keras' BatchNorm computes in training (float32, biased variance, over
    every axis but the channels'; image models pass no mask); ``acc`` gathers sum and sum of
    squares per channel in float64, weighted by the number of values reduced, so chunks of any
    size pool to the statistics of the whole set.
    """
    from keras import ops

    def call(inputs: Any, training: Any = None, mask: Any = None) -> Any:
        inputs = ops.cast(inputs, "float32")
        mean, variance = ops.moments(inputs, axes=layer._reduction_axes)
        count = int(np.prod([inputs.shape[a] for a in layer._reduction_axes]))
        m = np.asarray(mean, np.float64)
        acc[0] = acc[0] + m * count
        acc[1] = acc[1] + (np.asarray(variance, np.float64) + m * m) * count
        acc[2] += count
        gamma = ops.cast(layer.gamma, "float32") if layer.scale else None
        beta = ops.cast(layer.beta, "float32") if layer.center else None
        outputs = ops.batch_normalization(inputs, mean, variance, axis=layer.axis, offset=beta,
                                          scale=gamma, epsilon=layer.epsilon)
        return ops.cast(outputs, layer.compute_dtype)

    return call
