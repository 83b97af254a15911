"""The ``fast`` variant: an airbench94-style CNN, the best CIFAR-10 accuracy per CPU-minute here.

Architecture after Keller Jordan's airbench94 (itself a descendant of David Page's ResNet-9 for
DAWNBench), without the data-dependent whitening layer so that the model is a plain function of
its hyperparameters:

    stem   conv3x3(stem_width) - BN - GELU
    block  conv3x3(w) - maxpool2 - BN - GELU - conv3x3(w) - BN - GELU     (x3, widths w, 4w, 4w)
    head   global max pool - dense(num_classes, no bias) - x scaling - softmax

Why each choice (from airbench's ablations; measurements here in benchmarks/results/fast.md):
- Pooling right after the first conv of each block halves the cost of the second conv and of BN.
- BatchNorm with a low momentum (airbench94: 0.6, in Keras' convention) lets the running
  statistics follow a net whose weights move fast for only a few epochs; gamma is frozen at 1
  (only the shift learns), as in airbench, which found it as good and simpler.
- Convs carry no bias (BN's shift replaces it); GELU trains a little faster than ReLU here.
- The logits are scaled down (airbench: 1/9), which acts as a temperature: it lets the high
  learning rate that the rest of the net wants not blow up the last layer.
- Global max pooling instead of a fixed 3x3 pool keeps the model shape-agnostic (28x28x1 MNIST too).

Input: normalized images of the data set's shape (N, H, W, C) float32. Output: class probabilities.
Only standard Keras layers, so ``keras.models.load_model`` needs no custom objects.
Built by the registry in ``cifar_dvc/models``; trained by ``stages/train.py`` (``dvc repro train@fast``)
and benchmarked by ``benchmarks/fast_recipe.py``.
"""

from __future__ import annotations

import keras
from keras import layers

# airbench94's batch-norm momentum, already in Keras' convention (weight of the running value;
# airbench passes 1 - 0.6 to PyTorch). Keras' default 0.99 lags far behind a net trained this fast.
BN_MOMENTUM = 0.6
BN_EPSILON = 1e-5


def _conv_bn_gelu(x: keras.KerasTensor, filters: int, name: str, pool: bool) -> keras.KerasTensor:
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False,
                      kernel_initializer="he_uniform", name=f"{name}_conv")(x)
    if pool:
        x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, scale=False,
                                  name=f"{name}_bn")(x)
    return layers.Activation("gelu", name=f"{name}_gelu")(x)


def build_fast(input_shape: tuple[int, int, int], num_classes: int, width: int = 64,
               stem_width: int = 24, scaling: float = 1 / 9) -> keras.Model:
    """The fast network: stem, three conv blocks of widths (width, 4*width, 4*width), linear head.

    ``width=64`` is airbench94's size (1.97M parameters for CIFAR-10); smaller widths trade
    accuracy for speed (cost grows ~ width^2). ``scaling`` multiplies the logits before softmax.
    """
    if width < 1 or stem_width < 1:
        raise ValueError(f"width and stem_width must be positive, got {width} and {stem_width}")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = _conv_bn_gelu(inputs, stem_width, "stem", pool=False)
    for i, filters in enumerate((width, 4 * width, 4 * width), start=1):
        x = _conv_bn_gelu(x, filters, f"block{i}a", pool=True)
        x = _conv_bn_gelu(x, filters, f"block{i}b", pool=False)
    x = layers.GlobalMaxPooling2D(name="pool")(x)
    x = layers.Dense(num_classes, use_bias=False, name="logits")(x)
    x = layers.Rescaling(scaling, name="temperature")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="fast")
