"""Custom Keras layers that can be part of a saved model.

- ``PerChannelAffine``: ``y = x * scale[c] + offset[c]``. Maps the project's normalized input to
  the value range a pretrained network expects (MobileNet: [-1, 1]) inside the model, so a saved
  model always takes the same input as every other variant.

Registered with Keras under the package ``cifar_dvc`` at import (``import cifar_dvc.models``).
Reads and writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
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
