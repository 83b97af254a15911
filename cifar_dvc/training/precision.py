"""Mixed precision for training: which policy ``train.precision: auto`` picks, and float32 outputs.

Training may compute in bfloat16 or float16 (``keras.mixed_precision``: variables stay float32,
layers compute in the low precision, the softmax stays float32), but a *saved* model is always a
float32 model: ``float32_copy`` rebuilds it from its config with every dtype policy set back to
float32 and copies the weights, so evaluation, the web demo and a machine without bfloat16
hardware predict in float32 and nothing of the training hardware is left in the file.

``auto`` picks ``mixed_bfloat16`` by the hardware, where bfloat16 was measured faster for most
variants:

- on a CPU with AMX (``amx_bf16`` in ``/proc/cpuinfo``): measured 2.0x (``fast``) and 2.25x (the
  IMP network) the float32 speed on this project's 2-core Xeon;
- on a CPU with ``avx512_bf16`` but no AMX (AMD Zen 4, Zen 5): bfloat16 dot products in AVX-512, measured
  1.27x (``fast``), 1.34x (``cnn``), 1.40x (``imp1``) and 1.52x (``keras_cnn``) the float32 speed
  on a 2-core AMD EPYC (``benchmarks/results/precision_throughput_avx512bf16.md``), and on a Zen 5
  1.24x (``fast96``), 1.25x (``imp2``), 1.39x (``fast``), 1.68x (``wide_cnn``)
  (``benchmarks/results/precision_throughput_zen5.md``);
- on a GPU with bfloat16 units (compute capability 8.0 and newer);
- never on a CPU with neither: there bfloat16 is emulated and was measured 1.7-10x *slower*.

It is not faster for every network on that hardware: on an AMX Xeon ``mnet1`` trained at 0.82x,
``mlp`` at 0.92x and ``mnet2`` at 0.94x the float32 speed
(``benchmarks/results/precision_throughput_amx.md``). Those variants set their own ``precision:
float32`` in ``params.yaml``, which wins over ``train.precision`` (``TrainParams.precision_for``).

Reads ``/proc/cpuinfo`` (Linux; elsewhere no flags are found and ``auto`` is float32) and the
visible GPUs. Writes nothing. Used by ``cifar_dvc.training.loop`` (``train@<name>``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, get_args

from cifar_dvc.cpuinfo import cpu_flags
from cifar_dvc.training.variant import Precision

if TYPE_CHECKING:  # Keras is imported where a policy or a model is handled, so reading the CPU's
    import keras  # flags (benchmarks, `auto`) stays cheap


PRECISIONS: tuple[str, ...] = get_args(Precision)  # the settings of train.precision
# GPUs from Ampere (compute capability 8.0) on have bfloat16 tensor cores.
BF16_MIN_COMPUTE_CAPABILITY = (8, 0)
# CPU flags of bfloat16 arithmetic in hardware (AMX tiles; AVX-512 dot products), where bfloat16
# was measured faster than float32. Without them TensorFlow emulates it, 1.7-10x slower.
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def gpu_compute_capabilities() -> list[tuple[int, int]]:
    """Compute capability of each visible GPU ((0, 0) where TensorFlow does not report one)."""
    import tensorflow as tf

    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capabilities.append(tuple(details.get("compute_capability") or (0, 0)))
    return capabilities


def resolve(setting: str, flags: set[str] | None = None,
            gpus: list[tuple[int, int]] | None = None) -> str:
    """The Keras dtype policy name for ``train.precision`` ``setting`` on this machine.

    ``flags`` (CPU flags) and ``gpus`` (their compute capabilities) default to the detected ones;
    tests pass their own.
    """
    if setting not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {setting!r}")
    if setting != "auto":
        return setting
    gpus = gpu_compute_capabilities() if gpus is None else gpus
    if gpus:
        # Training runs on the GPUs: only they matter, and all must have bfloat16 units.
        bf16 = all(cc >= BF16_MIN_COMPUTE_CAPABILITY for cc in gpus)
        return "mixed_bfloat16" if bf16 else "float32"
    flags = cpu_flags() if flags is None else flags
    return "mixed_bfloat16" if flags & BF16_CPU_FLAGS else "float32"


@contextlib.contextmanager
def policy(name: str) -> Iterator[None]:
    """Build and train under Keras' global dtype policy ``name``; the previous one is restored."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _float32_config(node: Any) -> Any:
    """``node`` (a serialized Keras config) with every mixed dtype policy replaced by float32."""
    if isinstance(node, dict):
        if node.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
            return {**node, "config": {**node.get("config", {}), "name": "float32"}}
        return {key: _float32_config(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_float32_config(value) for value in node]
    if isinstance(node, str) and node.startswith("mixed_"):
        return "float32"
    return node


def is_float32(model: keras.Model) -> bool:
    """True if every layer of ``model`` (nested models included) computes in float32."""
    return all(layer.compute_dtype == "float32" for layer in _layers(model))


def _layers(model: keras.Layer) -> Iterator[keras.Layer]:
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _layers(layer)


def float32_copy(model: keras.Model) -> keras.Model:
    """``model`` itself if it is float32, else a float32 model with the same weights (uncompiled).

    The copy is built from ``model``'s config with float32 policies: same layers, same weight
    order, so ``set_weights`` maps one to one. Mixed-precision variables are float32 already, so
    no weight loses precision.
    """
    import keras

    if is_float32(model):
        return model
    config = _float32_config(keras.saving.serialize_keras_object(model))
    with policy("float32"):
        copy = keras.saving.deserialize_keras_object(config)
    copy.set_weights(model.get_weights())
    return copy
