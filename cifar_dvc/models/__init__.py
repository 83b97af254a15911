"""The model registry: one name per architecture, one builder per name.

Every builder has the signature ``build(input_shape, num_classes, **args) -> keras.Model``
(functional API, input = normalized images of the data set's shape, output = softmax
probabilities). ``args`` are the variant's ``model_args`` from ``params.yaml``; ``check_args``
validates them against the builder's signature (names and types) before anything is built.
A builder that also declares a ``normalization`` keyword receives the data set's
``NormStats`` (MobileNet needs them to map our inputs to its own [-1, 1] convention).

Importing this package registers the project's custom layers with Keras, so
``keras.models.load_model("models/<name>.keras")`` works after ``import cifar_dvc.models``.

Reads and writes nothing. Used by ``stages/train.py`` through ``cifar_dvc.training``.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from typing import Any

import keras

from cifar_dvc import config
from cifar_dvc.errors import ParamsError
from cifar_dvc.models import layers as layers  # registers the custom layers with Keras
from cifar_dvc.models import mobilenet, seeds
from cifar_dvc.models.fast import build_fast, init_whitening
from cifar_dvc.normalization import NormStats

Builder = Callable[..., keras.Model]

# name -> builder. The names are part of the project's contract (params.yaml, dvc.yaml, README).
BUILDERS: dict[str, Builder] = {
    "mlp": seeds.build_mlp,  # seed 000
    "cnn": seeds.build_cnn,  # seed 000
    "keras_cnn": seeds.build_keras_cnn,  # seed 001 (the Keras cifar10_cnn example); wide_cnn uses it too
    "notebook_cnn": seeds.build_notebook_cnn,  # seed 002 (nb_relu, nb_elu)
    "vgg_bn": seeds.build_vgg_bn,  # seed 003
    "small_cnn": seeds.build_small_cnn,  # seed 003
    "mnist_cnn": seeds.build_mnist_cnn,  # seed 003
    "base": seeds.build_base,  # seed 004 BASE
    "imp": seeds.build_imp,  # seed 004 IMP1 / IMP2
    "mobilenet": mobilenet.build_mobilenet,  # seed 004 MNET1 / MNET2
    "fast": build_fast,  # ours (cifar_dvc/models/fast.py)
}
MODEL_NAMES = tuple(sorted(BUILDERS))

# Arguments every builder receives from the trainer, not from params.yaml.
_PROVIDED = ("input_shape", "num_classes", "normalization")


def get_builder(name: str, where: str = "model", file: str = str(config.PARAMS_FILE)) -> Builder:
    """The builder registered as ``name``; an unknown name is a ParamsError listing the known ones."""
    try:
        return BUILDERS[name]
    except KeyError:
        raise ParamsError(
            f"{file}: {where}: unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}"
        ) from None


def check_args(name: str, args: dict[str, Any], where: str,
               file: str = str(config.PARAMS_FILE)) -> dict[str, Any]:
    """Validate ``model_args`` of model ``name`` against its builder; returns them converted.

    Unknown argument => ParamsError naming ``<where>.model_args.<key>``; a value of the wrong
    type => ParamsError naming the key and the expected type.
    """
    builder = get_builder(name, f"{where}.model", file)
    spec = _args_dataclass(builder)
    fields = {f.name for f in dataclasses.fields(spec)}
    for key in args:
        if key not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise ParamsError(
                f"{file}: {where}.model_args.{key}: unknown argument of model {name!r}; known: {known}"
            )
    converted = config.from_dict(spec, args, where=f"{where}.model_args", file=file)
    return {key: getattr(converted, key) for key in args}


def build(name: str, input_shape: tuple[int, int, int], num_classes: int,
          normalization: NormStats | None = None, **args: Any) -> keras.Model:
    """Build model ``name``; ``normalization`` is passed only to builders that declare it."""
    builder = get_builder(name)
    if "normalization" in inspect.signature(builder).parameters:
        if normalization is None:
            raise ValueError(f"model {name!r} needs the data set's normalization statistics")
        args["normalization"] = normalization
    return builder(tuple(input_shape), int(num_classes), **args)


def _args_dataclass(builder: Builder) -> type:
    """A dataclass mirroring the builder's keyword arguments, so config's type checks apply."""
    hints = typing.get_type_hints(builder)
    fields = []
    for param in inspect.signature(builder).parameters.values():
        if param.name in _PROVIDED or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        default = None if param.default is param.empty else param.default
        fields.append((param.name, hints.get(param.name, Any), dataclasses.field(default=default)))
    return dataclasses.make_dataclass(f"{builder.__name__}_args", fields)


def init_from_data(model: keras.Model, images: Any) -> bool:
    """Set a model's data-dependent weights (``fast``'s whitening stem) from normalized training
    ``images`` (N, H, W, C float32); True if the model had any. Call once, after building."""
    return init_whitening(model, images)
