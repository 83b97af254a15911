"""Custom Keras layers that can be part of a saved model.

- ``PerChannelAffine``: ``y = x * scale[c] + offset[c]``. Maps the project's normalized input to
  the value range a pretrained network expects (MobileNet: [-1, 1]) inside the model, so a saved
  model always takes the same input as every other variant.
- ``FusedBatchNormalization``: Keras' ``BatchNormalization`` whose training step runs
  TensorFlow's fused kernel (``FusedBatchNormV3``, oneDNN's on a CPU) instead of Keras' chain of
  element-wise ops (casts to float32, mean, squared difference, normalize, and as many again for
  the gradient). Same variables and formula, so it saves, loads and predicts as the Keras layer;
  it trained ``fast`` 1.22x faster under bfloat16 on an AMX Xeon (``benchmarks/step_profile.py``,
  ``benchmarks/results/step_profile_amx.md``).
- ``FusedGELU``: the exact GELU, ``x * Phi(x)``, as Keras' ``gelu`` activation computes it, but on
  TensorFlow as one XLA-compiled kernel forward and one backward, in float32 whatever the input's
  dtype. Keras' activation is a chain of element-wise ops (casts, ``erfc``, and twice as many for
  its gradient), each a pass over the whole activation; on a CPU that chain was a fifth of a
  bfloat16 training step of ``fast``. Only the activation is compiled: XLA on the whole model
  trained 0.1-0.7x as fast as without it here.

Registered with Keras under the package ``cifar_dvc`` at import (``import cifar_dvc.models``).
Reads and writes nothing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import keras


@keras.saving.register_keras_serializable(package="cifar_dvc")
class PerChannelAffine(keras.layers.Layer):
    """Multiply each channel by ``scale[c]`` and add ``offset[c]`` (constants, not trained)."""

    def __init__(self, scale: Sequence[float], offset: Sequence[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = [float(v) for v in scale]
        self.offset = [float(v) for v in offset]
        if len(self.scale) != len(self.offset):
            raise ValueError(f"scale and offset need one value per channel: {scale} vs {offset}")

    def call(self, inputs: Any) -> Any:
        scale = keras.ops.convert_to_tensor(self.scale, dtype=inputs.dtype)
        offset = keras.ops.convert_to_tensor(self.offset, dtype=inputs.dtype)
        return inputs * scale + offset

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}


@keras.saving.register_keras_serializable(package="cifar_dvc")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``BatchNormalization`` trained through TensorFlow's fused kernel where it applies.

    In training, on the TensorFlow backend, for 4-D channels-last inputs without mask, renorm or
    cross-replica statistics: one ``FusedBatchNormV3`` normalizes with the batch's mean and biased
    variance (statistics computed in float32, output in the input's dtype, as Keras' layer does)
    and its registered gradient is one fused op too. The moving statistics are updated as Keras
    does, ``moving * momentum + batch * (1 - momentum)``, with the kernel's Bessel-corrected
    variance turned back into the biased one Keras uses. Everything else (inference, other
    shapes, other backends) is Keras' own code, unchanged.
    """

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        if (not (training and self.trainable) or mask is not None or self.renorm or self.synchronized
                or keras.backend.backend() != "tensorflow" or len(inputs.shape) != 4
                or self.axis % 4 != 3):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        scale = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
        offset = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
        outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=scale, offset=offset, mean=tf.zeros([0]), variance=tf.zeros([0]),
            epsilon=self.epsilon, is_training=True, data_format="NHWC")
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]), tf.float32)
        variance = variance * (count - 1) / tf.maximum(count, 1.0)  # back to the biased variance
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        return outputs


@functools.cache
def _xla_gelu() -> Callable[[Any], Any]:
    """The exact GELU with its gradient, each one XLA kernel computing in float32 (made once)."""
    import tensorflow as tf

    sqrt_half, inv_sqrt_2pi = 1 / math.sqrt(2), 1 / math.sqrt(2 * math.pi)

    @tf.function(jit_compile=True, reduce_retracing=True)
    def forward(x: tf.Tensor) -> tf.Tensor:
        xf = tf.cast(x, tf.float32)
        return tf.cast(0.5 * xf * tf.math.erfc(-xf * sqrt_half), x.dtype)  # tf.nn.gelu's formula

    @tf.function(jit_compile=True, reduce_retracing=True)
    def backward(x: tf.Tensor, dy: tf.Tensor) -> tf.Tensor:
        xf = tf.cast(x, tf.float32)
        slope = 0.5 * tf.math.erfc(-xf * sqrt_half) + xf * tf.exp(-0.5 * xf * xf) * inv_sqrt_2pi
        return tf.cast(tf.cast(dy, tf.float32) * slope, dy.dtype)

    @tf.custom_gradient
    def gelu(x: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
        return forward(x), lambda dy: backward(x, dy)

    return gelu


@keras.saving.register_keras_serializable(package="cifar_dvc")
class FusedGELU(keras.layers.Layer):
    """Exact GELU; on TensorFlow one XLA kernel each way, computing in float32 (output in the
    input's dtype). Other backends get Keras' ``gelu`` activation, the same function."""

    def call(self, inputs: Any) -> Any:
        if keras.backend.backend() != "tensorflow":
            return keras.activations.gelu(inputs, approximate=False)
        return _xla_gelu()(inputs)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape
