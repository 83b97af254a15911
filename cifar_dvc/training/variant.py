"""The params of training: the shared ``train:`` section and one ``variants.<name>:`` entry per model.

A variant is data: which registered model to build (``model`` + ``model_args``), and the whole
recipe that trains it (epochs, batch size, optimizer, learning-rate schedule, augmentation, label
smoothing, which epoch counts as best, early stopping, test-time augmentation for evaluation).
Every field has a default and a one-line comment; ``cifar_dvc.config`` refuses unknown keys and
wrong types, and ``load_variant`` also checks ``model`` against the registry and ``model_args``
against the builder's signature, so a typo fails before any data is read.

Reads: ``params.yaml`` (``seed``, ``train``, ``variants.<name>``). Writes nothing.
Used by ``stages/train.py`` (``python -m stages.train --variant cnn ...``) and ``evaluate`` (``tta``).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Literal

from cifar_dvc import config
from cifar_dvc.errors import ParamsError

# Metrics the fit loop logs every epoch (val_tta_accuracy only with `tta` 1 or 2).
Metric = Literal["val_accuracy", "val_loss", "val_tta_accuracy", "accuracy", "loss"]
PLAIN_VALIDATION = ("val_accuracy", "val_loss")  # the metrics of Keras' own validation (val_every)

# A variant's name becomes stage names (train@<name>) and file names (models/<name>.keras): no
# separators, spaces or leading dot, so no name reaches outside models/, dvclive/, eval/ or metrics/.
VARIANT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

# train.precision and a variant's own precision (cifar_dvc/training/precision.py resolves `auto`).
Precision = Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"]


def validates(epoch: int, epochs: int, every: int) -> bool:
    """Whether 1-based ``epoch`` of ``epochs`` is one that validates every ``every`` epochs
    (``val_every``, ``val_tta_every``): each multiple of ``every``, and the last; 0 = the last only."""
    return epoch == epochs or (every > 0 and epoch % every == 0)


@dataclasses.dataclass
class OptimizerParams:
    """``variants.<name>.optimizer``: the Keras optimizer and its arguments."""

    name: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"  # keras.optimizers class
    learning_rate: float = 1e-3  # peak / initial learning rate (the schedule scales it)
    momentum: float = 0.0  # sgd and rmsprop momentum
    nesterov: bool = False  # sgd: Nesterov momentum
    rho: float = 0.9  # rmsprop: discounting factor of the squared-gradient average
    beta_1: float = 0.9  # adam/adamw: first-moment decay
    beta_2: float = 0.999  # adam/adamw: second-moment decay
    epsilon: float = 1e-7  # adam/adamw/rmsprop: numerical stability term (Keras default)
    weight_decay: float | None = None  # decoupled weight decay (adamw default 0.004; others: off)
    no_decay: list[str] = dataclasses.field(default_factory=list)  # names spared weight_decay: [bias]
    clipnorm: float | None = None  # clip each gradient to this L2 norm; null = no clipping
    use_ema: bool = False  # keep an exponential moving average of the weights (weight averaging)
    ema_momentum: float = 0.99  # EMA decay per step
    ema_overwrite_frequency: int | None = None  # steps between EMA copies; null = at the end
    norm_bias_lr_scale: float = 1.0  # sgd only: BatchNorm shifts learn this many times faster (airbench: 64)
    lookahead: bool = False  # airbench's lookahead: every 5 steps average all weights + BN stats, copy back

    def validate(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.ema_momentum < 1:
            raise ValueError(f"ema_momentum must be in [0, 1), got {self.ema_momentum}")
        if self.norm_bias_lr_scale <= 0:
            raise ValueError(f"norm_bias_lr_scale must be > 0, got {self.norm_bias_lr_scale}")
        if self.norm_bias_lr_scale != 1 and self.name != "sgd":
            # Adam-style optimizers normalize the gradient: scaling it would change nothing.
            raise ValueError(f"norm_bias_lr_scale needs name: sgd, got {self.name!r}")
        if self.lookahead and self.use_ema:
            raise ValueError("lookahead and use_ema are two weight averages: choose one")


@dataclasses.dataclass
class ScheduleParams:
    """``variants.<name>.schedule``: how the learning rate moves during training."""

    name: Literal["constant", "inverse_time", "step", "plateau", "onecycle",
                  "triangle"] = "constant"  # see optim.py
    decay: float = 0.0  # inverse_time: lr / (1 + decay * step), Keras 2's optimizer `decay` argument
    boundaries: list[float] = dataclasses.field(default_factory=list)  # step: epochs where lr *= factor
    factor: float = 0.1  # step and plateau: multiplier applied to the learning rate
    monitor: Metric = "val_loss"  # plateau: logged metric watched by ReduceLROnPlateau
    patience: int = 5  # plateau: epochs without improvement before reducing
    min_delta: float = 1e-4  # plateau: smallest change that counts as improvement
    min_lr: float = 0.0  # plateau: lower bound of the learning rate
    warmup_epochs: float = 0.0  # onecycle: epochs of linear warm-up from start_factor*lr to lr
    start_factor: float = 0.0  # onecycle, triangle: learning-rate multiplier at step 0
    end_factor: float = 0.0  # onecycle, triangle: multiplier reached linearly at the last step of training
    peak_fraction: float = 0.23  # triangle: the peak (lr) at this fraction of all steps (airbench: 0.23)

    def validate(self) -> None:
        if self.boundaries != sorted(self.boundaries) or any(b <= 0 for b in self.boundaries):
            raise ValueError(f"schedule.boundaries must be increasing positive epochs, got {self.boundaries}")
        if self.warmup_epochs < 0 or self.factor <= 0 or self.decay < 0:
            raise ValueError("schedule.warmup_epochs and decay must be >= 0 and factor > 0")
        if not 0 <= self.peak_fraction <= 1:
            raise ValueError(f"schedule.peak_fraction must be in [0, 1], got {self.peak_fraction}")


@dataclasses.dataclass
class AugmentParams:
    """``variants.<name>.augment``: random transforms of training batches (never evaluation data).

    They run in the tf.data pipeline on 0..255 float pixels, before normalization, so their
    ranges mean what Keras' ImageDataGenerator meant on images scaled to [0, 1].
    """

    flip: bool = False  # random horizontal flip
    alternate_flip: bool = False  # with flip: each image mirrored every other epoch, not at random (airbench)
    shift: float = 0.0  # random translation, fraction of height and width (ImageDataGenerator *_shift_range)
    crop_padding: int = 0  # pad by this many pixels (reflect) and crop back at a random place; 0 = off
    rotation: float = 0.0  # random rotation up to this many degrees either way
    zoom_in: float = 0.0  # zoom factors from 1 - zoom_in (0.2: objects up to 1/0.8 = 1.25x larger) ...
    zoom_out: float = 0.0  # ... to 1 + zoom_out (0.3: 1/1.3 = 0.77x): ImageDataGenerator zoom_range
    channel_shift: float = 0.0  # offset in [-v, v] * 255, all channels (channel_shift_range)
    cutout: int = 0  # erase a random square of this side (pixels) to zero; 0 = off
    cutout_inside: bool = False  # the square wholly inside the image (airbench96), not clipped at the border
    fill_mode: Literal["nearest", "reflect", "constant", "wrap"] = "nearest"  # fill after shift/zoom

    def validate(self) -> None:
        for name in ("shift", "zoom_in", "channel_shift"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"augment.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.zoom_out < 0 or self.rotation < 0 or self.cutout < 0 or self.crop_padding < 0:
            raise ValueError("augment.zoom_out, rotation, cutout and crop_padding must be >= 0")
        if self.cutout_inside and not self.cutout:
            raise ValueError("augment.cutout_inside places the cutout square: it needs cutout > 0")
        if self.alternate_flip and not self.flip:
            raise ValueError("augment.alternate_flip changes how flip works: it needs flip: true")

    @property
    def enabled(self) -> bool:
        """True if any transform is switched on."""
        return bool(self.flip or self.shift or self.crop_padding or self.rotation or self.zoom_in
                    or self.zoom_out or self.channel_shift or self.cutout)


@dataclasses.dataclass
class VariantParams:
    """``variants.<name>``: one model variant and the recipe that trains it."""

    model: str = ""  # registry name of the architecture (cifar_dvc.models.MODEL_NAMES)
    model_args: dict[str, Any] = dataclasses.field(default_factory=dict)  # builder kwargs (dropout, ...)
    epochs: int = 10  # epochs of the full reproduction (train.max_epochs caps it)
    batch_size: int = 32  # images per training step
    optimizer: OptimizerParams = dataclasses.field(default_factory=OptimizerParams)  # see OptimizerParams
    schedule: ScheduleParams = dataclasses.field(default_factory=ScheduleParams)  # see ScheduleParams
    augment: AugmentParams = dataclasses.field(default_factory=AugmentParams)  # see AugmentParams
    label_smoothing: float = 0.0  # categorical cross-entropy label smoothing
    monitor: Metric = "val_accuracy"  # logged metric that picks the best epoch
    checkpoint: Literal["best", "last"] = "best"  # save best epoch, or final (EMA) weights
    early_stopping: int | None = None  # stop after this many epochs without `monitor` improving; null = never
    steps_per_execution: int | None = None  # batches per compiled call; null = train.steps_per_execution
    tta: int = 0  # test-time augmentation (val, evaluate): 0 none, 1 + mirror, 2 + mirrored 1-px shifts
    # Epochs between validations with TTA (val_tta_accuracy), the last epoch always; 0 = the last only.
    # TTA level 2 predicts the validation set 6 times: each skipped epoch saves that time.
    val_tta_every: int = 1
    # Epochs between plain validations (val_loss, val_accuracy), the last epoch always; 0 = the last
    # only. For a recipe whose schedule, checkpoint and stopping read no validation metric.
    val_every: int = 1
    whiten_bias_epochs: int = 0  # epochs the whitening stem's bias trains, then frozen (airbench: 3); 0 = off
    # This variant's train.precision; null = train.precision. For a network whose speed under
    # bfloat16 was measured lower than in float32 on a CPU that `auto` gives bfloat16 to.
    precision: Precision | None = None

    def validate(self) -> None:
        if not self.model:
            raise ValueError("model: required (the registry name of the architecture)")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        from cifar_dvc.inference import TTA_LEVELS  # the levels' one definition (no TensorFlow import)

        if self.tta not in TTA_LEVELS:
            raise ValueError(f"tta must be one of {', '.join(map(str, TTA_LEVELS))}, got {self.tta}")
        if "val_tta_accuracy" in (self.monitor, self.schedule.monitor) and not self.tta:
            raise ValueError("monitor val_tta_accuracy needs tta: 1 or 2")
        if self.val_tta_every < 0:
            raise ValueError(f"val_tta_every must be >= 0, got {self.val_tta_every}")
        if "val_tta_accuracy" in (self.monitor, self.schedule.monitor) and self.val_tta_every != 1:
            raise ValueError("monitor val_tta_accuracy needs val_tta_every: 1 (a value every epoch)")
        if self.val_every < 0:
            raise ValueError(f"val_every must be >= 0, got {self.val_every}")
        watched = sorted(m for m in self.monitors_read if m in PLAIN_VALIDATION)
        if self.val_every != 1 and watched:
            raise ValueError(f"{' and '.join(watched)} (watched every epoch by checkpoint, early_stopping or "
                             "the plateau schedule) needs val_every: 1")
        if self.steps_per_execution is not None and self.steps_per_execution < 1:
            raise ValueError("steps_per_execution must be >= 1")
        if self.optimizer.lookahead and self.steps_per_execution != 1:
            # Keras calls a callback once per execution; averaging every 5 steps needs every step.
            raise ValueError("optimizer.lookahead needs steps_per_execution: 1")
        if self.whiten_bias_epochs < 0:
            raise ValueError(f"whiten_bias_epochs must be >= 0, got {self.whiten_bias_epochs}")
        if self.whiten_bias_epochs and not self.model_args.get("whiten_bias"):
            raise ValueError("whiten_bias_epochs needs model_args.whiten_bias: true")

    @property
    def monitors_read(self) -> set[str]:
        """The logged metrics something reads every epoch: the best-epoch checkpoint and early stopping
        read ``monitor``, the plateau schedule its ``schedule.monitor``."""
        read = {self.monitor} if self.checkpoint == "best" or self.early_stopping is not None else set()
        return read | ({self.schedule.monitor} if self.schedule.name == "plateau" else set())

    @property
    def monitor_mode(self) -> str:
        """``min`` for losses, ``max`` for everything else (accuracies)."""
        return "min" if "loss" in self.monitor else "max"


@dataclasses.dataclass
class TrainParams:
    """``train:``: settings shared by every ``train@<variant>`` stage."""

    max_epochs: int | None = None  # cap on every variant's epochs for quick runs; null = no cap
    steps_per_execution: int = 16  # batches per compiled tf.function call (amortizes Python overhead)
    verbose: Literal["auto", "bar", "epoch", "silent"] = "auto"  # auto: bar on a terminal, else 1 line/epoch
    jit_compile: bool | None = None  # XLA compilation; null = Keras' own choice ("auto")
    # auto = mixed_bfloat16 on AMX CPUs and bfloat16 GPUs, float32 elsewhere (training/precision.py);
    # a variant's own `precision` overrides it
    precision: Precision = "auto"

    def validate(self) -> None:
        if self.max_epochs is not None and self.max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1 or null, got {self.max_epochs}")
        if self.steps_per_execution < 1:
            raise ValueError(f"steps_per_execution must be >= 1, got {self.steps_per_execution}")

    def epochs_for(self, variant: VariantParams) -> int:
        """The variant's epochs, capped by ``max_epochs``."""
        return variant.epochs if self.max_epochs is None else min(variant.epochs, self.max_epochs)

    def precision_for(self, variant: VariantParams) -> Precision:
        """The variant's ``precision`` setting if it has one, else ``train.precision``."""
        return variant.precision or self.precision


def load_seed(params: dict[str, Any], file: str = str(config.PARAMS_FILE)) -> int:
    """The top-level ``seed`` (default 0)."""
    seed = params.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ParamsError(f"{file}: seed: expected a non-negative int, got {seed!r}")
    return seed


def variant_names(params: dict[str, Any]) -> list[str]:
    """Names of the variants declared in ``params``."""
    variants = params.get("variants") or {}
    return sorted(variants) if isinstance(variants, dict) else []


def load_variant(name: str, params: dict[str, Any], file: str = str(config.PARAMS_FILE)) -> VariantParams:
    """``variants.<name>`` as a validated ``VariantParams`` (model name and model_args included)."""
    variants = params.get("variants")
    if not isinstance(variants, dict) or name not in variants:
        known = ", ".join(variant_names(params)) or "none"
        raise ParamsError(f"{file}: variants.{name}: no such variant; declared variants: {known}")
    bad = [str(key) for key in variants if not VARIANT_NAME.fullmatch(str(key))]
    if bad:
        raise ParamsError(f"{file}: variants: name {bad[0]!r} is not a file name; use letters, digits, "
                          "'_', '-' and '.' (not first)")
    variant = config.from_dict(VariantParams, variants[name] or {}, where=f"variants.{name}", file=file)
    from cifar_dvc import models  # the registry imports Keras: only once the cheap checks passed

    models.check_args(variant.model, variant.model_args, where=f"variants.{name}", file=file)
    return variant


def load_params(name: str, path: Path | str = config.PARAMS_FILE) -> tuple[int, TrainParams, VariantParams]:
    """``(seed, train section, variant)`` for ``train@<name>``, all validated."""
    params = config.read_params(path)
    file = str(path)
    seed = load_seed(params, file)
    train = config.load_section(TrainParams, "train", params=params, path=path)
    return seed, train, load_variant(name, params, file)
