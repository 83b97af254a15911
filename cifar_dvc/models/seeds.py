"""The seeds' architectures, layer for layer, as Keras functional models.

Each builder follows one seed's write-up in ``../shared/seeds/`` (the docstring names it and its
printed parameter count, which ``tests/test_models.py`` asserts). Hyperparameters a seed leaves
out are builder arguments with the value ``params.yaml`` explains; the recipe that trains each
model (optimizer, epochs, augmentation) lives in ``params.yaml`` under ``variants:``.

Input: normalized images (N, H, W, C) float32. Output: softmax probabilities, float32.
Reads and writes nothing; built through the registry in ``cifar_dvc.models``.
"""

from __future__ import annotations

import keras
from keras import layers


def _softmax(x: keras.KerasTensor, num_classes: int) -> keras.KerasTensor:
    x = layers.Dense(num_classes, name="logits")(x)
    # float32 even under a mixed-precision policy: probabilities must sum to 1 exactly enough.
    return layers.Activation("softmax", dtype="float32", name="probabilities")(x)


def _l2(value: float) -> keras.regularizers.Regularizer | None:
    return keras.regularizers.L2(value) if value > 0 else None


def build_mlp(input_shape: tuple[int, int, int], num_classes: int, hidden_units: int = 128,
              bottleneck_units: int = 32, activation: str = "relu", dropout: float = 0.5) -> keras.Model:
    """Seed 000's multi-layer perceptron: flatten - dense 128 - dropout - dense 32 - dense 10.

    397,802 parameters on 32x32x3. The seed prints no activations or dropout rate.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Flatten()(inputs)
    x = layers.Dense(hidden_units, activation=activation)(x)
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(bottleneck_units, activation=activation)(x)
    return keras.Model(inputs, _softmax(x, num_classes), name="mlp")


def build_cnn(input_shape: tuple[int, int, int], num_classes: int, filters: int = 32,
              activation: str = "relu") -> keras.Model:
    """Seed 000's CNN: one valid 3x3 conv (32) - max pool 2 - flatten - dense 10 - softmax.

    72,906 parameters on 32x32x3.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(filters, 3, activation=activation)(inputs)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    return keras.Model(inputs, _softmax(x, num_classes), name="cnn")


def build_keras_cnn(input_shape: tuple[int, int, int], num_classes: int, filters: int = 32,
                    activation: str = "relu", dense_units: int = 512, conv_dropout: float = 0.25,
                    dense_dropout: float = 0.5) -> keras.Model:
    """The Keras cifar10_cnn example that seed 001 starts from (and widens).

    conv f (same) - conv f (valid) - pool - dropout - conv 2f (same) - conv 2f (valid) - pool -
    dropout - dense 512 - dropout - dense. f = 32: 1,250,858 parameters on 32x32x3 (keras_cnn);
    seed 001's wide version is f = 128 (128-128-256-256) with ELU (wide_cnn).
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for width in (filters, 2 * filters):
        x = layers.Conv2D(width, 3, padding="same", activation=activation)(x)
        x = layers.Conv2D(width, 3, activation=activation)(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(conv_dropout)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(dense_units, activation=activation)(x)
    x = layers.Dropout(dense_dropout)(x)
    return keras.Model(inputs, _softmax(x, num_classes), name="keras_cnn")


def build_notebook_cnn(input_shape: tuple[int, int, int], num_classes: int, filters: int = 128,
                       activation: str = "relu", first_activation: str = "relu",
                       dropout: float = 0.5) -> keras.Model:
    """Seed 002's notebook CNN: (conv 2x2, conv 2x2, conv 1x1, pool) at 128 then 256 filters,
    dropout, dense 512 - dropout - dense 128 - dense 10.

    The first conv is always ReLU in the notebook; ``activation`` is that of every other layer
    (relu for nb_relu, elu for nb_elu). 5,329,418 parameters on 32x32x3 (f = 128).
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for i, width in enumerate((filters, 2 * filters)):
        x = layers.Conv2D(width, 2, activation=first_activation if i == 0 else activation)(x)
        x = layers.Conv2D(width, 2, activation=activation)(x)
        x = layers.Conv2D(width, 1, activation=activation)(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Dropout(dropout)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(512, activation=activation)(x)
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(128, activation=activation)(x)
    return keras.Model(inputs, _softmax(x, num_classes), name="notebook_cnn")


def build_vgg_bn(input_shape: tuple[int, int, int], num_classes: int, activation: str = "relu",
                 dropout: float = 0.2, dropout_step: float = 0.1, l2: float = 0.0) -> keras.Model:
    """Seed 003's CIFAR-10 VGG-style net: three blocks of (conv - act - BN) x 2 - pool - dropout
    at 32, 64, 128 filters (same padding), then flatten - dense 10.

    309,290 parameters on 32x32x3 (896 non-trainable: the BN moving statistics). Dropout of
    block i is ``dropout + i * dropout_step`` (0.2, 0.3, 0.4: the usual recipe of this net).
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for i, width in enumerate((32, 64, 128)):
        for _ in range(2):
            x = layers.Conv2D(width, 3, padding="same", kernel_regularizer=_l2(l2))(x)
            x = layers.Activation(activation)(x)
            x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(dropout + i * dropout_step)(x)
    x = layers.Flatten()(x)
    return keras.Model(inputs, _softmax(x, num_classes), name="vgg_bn")


def build_small_cnn(input_shape: tuple[int, int, int], num_classes: int, activation: str = "relu",
                    dropout: float = 0.2) -> keras.Model:
    """Seed 003's small CIFAR-10 net: conv 32 s2 - conv 32 s2 - pool - dropout - conv 16 -
    flatten - dense 128/256/512 each followed by dropout - dense 10.

    186,682 parameters on 32x32x3 (all 3x3 valid convs).
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(32, 3, strides=2)(inputs)
    x = layers.Activation(activation)(x)
    x = layers.Conv2D(32, 3, strides=2)(x)
    x = layers.Activation(activation)(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Dropout(dropout)(x)
    x = layers.Conv2D(16, 3, activation=activation)(x)
    x = layers.Flatten()(x)
    for units in (128, 256, 512):
        x = layers.Dense(units, activation=activation)(x)
        x = layers.Dropout(dropout)(x)
    return keras.Model(inputs, _softmax(x, num_classes), name="small_cnn")


def build_mnist_cnn(input_shape: tuple[int, int, int], num_classes: int, filters: int = 32,
                    strides: int = 2, dense_units: int = 392, conv_dropout: float = 0.25,
                    dense_dropout: float = 0.5, l2: float = 0.0) -> keras.Model:
    """Seed 003's MNIST net: conv 32 3x3 s2 - conv 32 3x3 s2 - pool - dropout - flatten -
    dense 392 - dropout - dense 10, ReLU.

    126,786 parameters on 28x28x1 (the seed also tries 8 filters and stride 4: model_args).
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(filters, 3, strides=strides, activation="relu", kernel_regularizer=_l2(l2))(inputs)
    x = layers.Conv2D(filters, 3, strides=strides, activation="relu", kernel_regularizer=_l2(l2))(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Dropout(conv_dropout)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(dense_units, activation="relu", kernel_regularizer=_l2(l2))(x)
    x = layers.Dropout(dense_dropout)(x)
    return keras.Model(inputs, _softmax(x, num_classes), name="mnist_cnn")


def build_base(input_shape: tuple[int, int, int], num_classes: int, filters: int = 32,
               dense_units: int = 512, dropout: float = 0.5) -> keras.Model:
    """Seed 004's BASE (Table 1): conv 32 (same) - BN - ReLU - flatten - dense 512 - ReLU -
    dropout 0.5 - dense 10 - softmax. 16,783,882 parameters on 32x32x3."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(filters, 3, padding="same")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(dense_units, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    return keras.Model(inputs, _softmax(x, num_classes), name="base")


def build_imp(input_shape: tuple[int, int, int], num_classes: int, activation: str = "elu",
              l2: float = 1e-4, dropout: float = 0.1, dropout_step: float = 0.1,
              batchnorm: bool = False, convs_64: int = 1) -> keras.Model:
    """Seed 004's IMP (Table 1), shared by IMP1 and IMP2 (which only adds augmentation):

    conv 32 - conv 32 - pool - dropout 0.1 - conv 64 - pool - dropout 0.2 - conv 128 -
    conv 256 - pool - dropout 0.3 - flatten (4096) - dense 10, ELU, 3x3 same convs with L2 1e-4.
    438,634 parameters on 32x32x3 (Table 1's "40970" is the last dense layer's count).
    ``batchnorm``: a BatchNormalization between each conv and its activation, which Table 1 does
    not list (the seed chose ELU as its cheaper stand-in); off reproduces the table.
    ``convs_64``: how many convs at 64 filters. Table 1 lists one (five convs in all), the seed's
    text counts "6 in IMP2"; 2 is the likely missing row (pairs 32-32, 64-64, 128-256).
    """
    if convs_64 < 1:
        raise ValueError(f"convs_64 must be >= 1, got {convs_64}")
    inputs = keras.Input(shape=input_shape, name="image")

    def conv(x: keras.KerasTensor, width: int) -> keras.KerasTensor:
        x = layers.Conv2D(width, 3, padding="same", kernel_regularizer=_l2(l2))(x)
        if batchnorm:
            x = layers.BatchNormalization()(x)
        return layers.Activation(activation)(x)

    x = conv(conv(inputs, 32), 32)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Dropout(dropout)(x)
    for _ in range(convs_64):
        x = conv(x, 64)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Dropout(dropout + dropout_step)(x)
    x = conv(conv(x, 128), 256)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Dropout(dropout + 2 * dropout_step)(x)
    x = layers.Flatten()(x)
    return keras.Model(inputs, _softmax(x, num_classes), name="imp")
