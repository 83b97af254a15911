"""The ``fast`` variant: an airbench94-style CNN, the best CIFAR-10 accuracy per CPU-minute here.

Architecture after Keller Jordan's airbench94 (itself a descendant of David Page's ResNet-9 for
DAWNBench):

    stem   whiten: frozen conv2x2 (valid) set from the training data's patch covariance - GELU
           (or, with ``stem="conv"``, a trained conv3x3(stem_width) - BN - GELU)
    block  conv3x3(w) - maxpool2 - BN - GELU - conv3x3(w) - BN - GELU     (x3, widths w, 4w, 4w)
           (``residual``: a third conv3x3(w) - BN - GELU, and the block's first GELU output
           added to its last, as airbench96's ConvGroup)
    head   global max pool - dense(num_classes, no bias) - x scaling - softmax

Why each choice (from airbench's ablations; measurements here in benchmarks/results/fast.md):
- The whitening stem decorrelates 2x2 patches before anything trains (its filters are the
  eigenvectors of the patch covariance scaled by 1/sqrt(eigenvalue), and their negatives so
  that GELU keeps both signs). It is what makes the first epochs count; ``init_whitening`` sets
  it from training images and the training loop calls it (``cifar_dvc.models.init_from_data``).
- Identity ("dirac") initialisation of the block convs: each conv starts by passing its first
  input channels through, so the deep net starts close to a shallow one and trains sooner.
- Pooling right after the first conv of each block halves the cost of the second conv and of BN.
- BatchNorm with a low momentum (airbench94: 0.6, in Keras' convention) lets the running
  statistics follow a net whose weights move fast for only a few epochs; gamma is frozen at 1
  (only the shift learns), as in airbench, which found it as good and simpler. airbench also
  trains those shifts 64x faster (``optimizer.norm_bias_lr_scale`` in params.yaml).
- Convs carry no bias (BN's shift replaces it); GELU trains a little faster than ReLU here.
- The logits are scaled down (airbench: 1/9), which acts as a temperature: it lets the high
  learning rate that the rest of the net wants not blow up the last layer.
- ``residual`` is airbench96's deeper block: three convs instead of two, and a skip around the
  last two so that the extra depth starts as (nearly) an identity and does not slow early training.
- Global max pooling instead of a fixed 3x3 pool keeps the model shape-agnostic (28x28x1 MNIST too).

Input: normalized images of the data set's shape (N, H, W, C) float32. Output: class probabilities.
Standard Keras layers, ``ChannelBias`` (``whiten_bias``), ``FusedBatchNormalization``
(``fused_batchnorm``) and ``FusedGELU`` (``gelu_fused``), registered when ``cifar_dvc.models`` is
imported, so ``keras.models.load_model`` needs no custom objects after that import.
Built by the registry in ``cifar_dvc/models``; trained by ``stages/train.py`` (``dvc repro train@fast``)
and benchmarked by ``benchmarks/fast_recipe.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import layers

from cifar_dvc.models.layers import FusedBatchNormalization, FusedGELU

# airbench94's batch-norm momentum, already in Keras' convention (weight of the running value;
# airbench passes 1 - 0.6 to PyTorch). Keras' default 0.99 lags far behind a net trained this fast.
BN_MOMENTUM = 0.6
BN_EPSILON = 1e-5
WHITEN_LAYER = "whiten"
WHITEN_KERNEL = 2  # airbench: 2x2 patches; 3x3 whitening was no better and costs more
WHITEN_BIAS_LAYER = "whiten_bias"


@keras.saving.register_keras_serializable(package="cifar_dvc")
class ChannelBias(layers.Layer):
    """Adds a trained per-channel bias (zeros at the start): a conv's bias as a layer of its own.

    The whitening conv's kernel is frozen and its bias trains (airbench94), and Keras freezes
    whole layers, so the bias lives here.
    """

    def build(self, input_shape: tuple) -> None:
        self.bias = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="bias")

    def call(self, x: Any) -> Any:
        return x + keras.ops.cast(self.bias, x.dtype)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape


def torch_conv_init() -> keras.initializers.Initializer:
    """PyTorch's default conv init, U(+-1/sqrt(fan_in)), a new instance per layer.

    airbench's learning rate and weight decay were tuned with it (Keras' he_uniform is 2.4x
    larger, which slows the effective learning rate). Made when the model is built, not at
    import: an unseeded Keras initializer draws its seed from Python's ``random`` when it is
    created, so one made at import would differ between processes whatever
    ``keras.utils.set_random_seed`` says, and one shared by all layers would give same-shaped
    layers the same weights.
    """
    return keras.initializers.VarianceScaling(1 / 3, mode="fan_in", distribution="uniform")


def _gelu(name: str, *, fused: bool, dtype: str | None) -> keras.Layer:
    return FusedGELU(name=name) if fused else layers.Activation("gelu", dtype=dtype, name=name)


def _conv_bn_gelu(x: keras.KerasTensor, filters: int, name: str, pool: bool, *, fused: bool,
                  gelu: Callable[[str], keras.Layer]) -> keras.KerasTensor:
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=torch_conv_init(),
                      name=f"{name}_conv")(x)
    if pool:
        x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    norm = FusedBatchNormalization if fused else layers.BatchNormalization
    x = norm(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, scale=False, name=f"{name}_bn")(x)
    return gelu(f"{name}_gelu")(x)


def build_fast(input_shape: tuple[int, int, int], num_classes: int, width: int = 64,
               stem: str = "whiten", stem_width: int | None = None, scaling: float = 1 / 9,
               dirac: bool = True, whiten_bias: bool = False, residual: bool = False,
               fused_batchnorm: bool = False, gelu_float32: bool = False,
               gelu_fused: bool = False) -> keras.Model:
    """The fast network: stem, three conv blocks of widths (width, 4*width, 4*width), linear head.

    ``width=64`` is airbench94's size (1.97M parameters for CIFAR-10); smaller widths trade
    accuracy for speed (cost grows ~ width^2). ``stem`` is ``"whiten"`` (2 * 4 * channels frozen
    filters, set by ``init_whitening``) or ``"conv"`` (a trained conv3x3 of ``stem_width``
    filters, default 24). ``scaling`` multiplies the logits before softmax; ``dirac`` starts each block conv
    as an identity on its first input channels. ``whiten_bias`` gives the whitening stem a trained
    bias (airbench94: ``Conv(..., bias=True)``, zero at the start), which the training loop freezes
    after ``whiten_bias_epochs`` (``cifar_dvc.training.callbacks.WhitenBiasFreeze``).
    ``residual`` gives each block a third conv and adds the block's first activation to its last
    (airbench96: 128-512-512 blocks with ``width=128``).

    Three switches change the speed, not the function: ``fused_batchnorm`` trains the BatchNorm
    layers through TensorFlow's fused kernel (``FusedBatchNormalization``); ``gelu_float32``
    computes every GELU in float32 under a mixed-precision policy (its exact ``erfc`` form is
    4x slower in bfloat16 than in float32 on a CPU); under float32 it changes nothing.
    ``gelu_fused`` computes every GELU as one XLA kernel each way (``FusedGELU``), in float32
    inside the kernel, so it replaces ``gelu_float32`` and its casts.
    """
    if stem not in ("whiten", "conv"):
        raise ValueError(f"stem must be 'whiten' or 'conv', got {stem!r}")
    if whiten_bias and stem != "whiten":
        raise ValueError("whiten_bias applies to stem 'whiten' only")
    if stem == "whiten" and stem_width is not None:
        raise ValueError("stem_width applies to stem 'conv' only "
                         "(the whitening stem has 2 * 4 * channels filters)")
    stem_width = 24 if stem_width is None else stem_width
    if width < 1 or stem_width < 1:
        raise ValueError(f"width and stem_width must be positive, got {width} and {stem_width}")
    if gelu_fused and gelu_float32:
        raise ValueError("gelu_fused computes in float32 already: leave gelu_float32 out")
    # dtype None: the global (mixed) policy
    gelu = functools.partial(_gelu, fused=gelu_fused, dtype="float32" if gelu_float32 else None)
    conv_bn_gelu = functools.partial(_conv_bn_gelu, fused=fused_batchnorm, gelu=gelu)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    if stem == "whiten":
        filters = 2 * WHITEN_KERNEL * WHITEN_KERNEL * input_shape[-1]
        # Frozen: its weights come from the data (init_whitening), not from gradients. The bias,
        # if any, is a separate layer, so it can train while the kernel stays frozen.
        x = layers.Conv2D(filters, WHITEN_KERNEL, padding="valid", use_bias=False, trainable=False,
                          kernel_initializer=torch_conv_init(), name=WHITEN_LAYER)(inputs)
        if whiten_bias:
            x = ChannelBias(name=WHITEN_BIAS_LAYER)(x)
        x = gelu("whiten_gelu")(x)
    else:
        x = conv_bn_gelu(inputs, stem_width, "stem", pool=False)
    for i, filters in enumerate((width, 4 * width, 4 * width), start=1):
        x = shortcut = conv_bn_gelu(x, filters, f"block{i}a", pool=True)
        x = conv_bn_gelu(x, filters, f"block{i}b", pool=False)
        if residual:
            x = conv_bn_gelu(x, filters, f"block{i}c", pool=False)
            x = layers.Add(name=f"block{i}_add")([x, shortcut])
    x = layers.GlobalMaxPooling2D(name="pool")(x)
    x = layers.Dense(num_classes, use_bias=False, name="logits")(x)
    x = layers.Rescaling(scaling, name="temperature")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="fast")
    if dirac:
        for layer in model.layers:
            if layer.name.startswith("block") and layer.name.endswith("_conv"):
                layer.kernel.assign(_dirac(np.asarray(layer.kernel)))
    return model


def _dirac(kernel: np.ndarray) -> np.ndarray:
    """``kernel`` (kh, kw, in, out) with its first min(in, out) filters replaced by identities."""
    kh, kw, c_in, c_out = kernel.shape
    kernel = kernel.copy()
    n = min(c_in, c_out)
    kernel[:, :, :, :n] = 0.0
    kernel[kh // 2, kw // 2, np.arange(n), np.arange(n)] = 1.0
    return kernel


def whitening_kernel(images: np.ndarray, size: int = WHITEN_KERNEL, eps: float = 5e-4) -> np.ndarray:
    """The (size, size, C, 2*size*size*C) whitening filters of ``images`` (N, H, W, C), normalized.

    Filter k is the k-th eigenvector (largest eigenvalue first) of the uncentered covariance of
    all size x size patches, divided by sqrt(eigenvalue + eps); the second half are their
    negatives. ``eps`` caps the gain on the near-constant directions (noise).
    """
    x = np.asarray(images, np.float64)
    if x.ndim != 4 or x.shape[1] < size or x.shape[2] < size or len(x) == 0:
        raise ValueError(f"whitening needs images (N, H, W, C) of at least {size}x{size}, got {x.shape}")
    h, w, c = x.shape[1] - size + 1, x.shape[2] - size + 1, x.shape[3]
    # patch vector order (row, col, channel) = the kernel's (kh, kw, in) order
    patches = np.stack([x[:, i:i + h, j:j + w, :] for i in range(size) for j in range(size)], axis=3)
    patches = patches.reshape(-1, size * size * c)
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    order = np.argsort(eigenvalues)[::-1]
    scaled = eigenvectors[:, order] / np.sqrt(eigenvalues[order] + eps)
    filters = np.concatenate([scaled, -scaled], axis=1)
    return filters.reshape(size, size, c, 2 * size * size * c).astype(np.float32)


def init_whitening(model: keras.Model, images: np.ndarray) -> bool:
    """Set ``model``'s whitening stem from normalized training ``images``; False if it has none."""
    try:
        layer = model.get_layer(WHITEN_LAYER)
    except ValueError:
        return False
    layer.kernel.assign(whitening_kernel(images, size=layer.kernel.shape[0]))
    return True
