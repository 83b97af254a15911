"""Optimizers and learning-rate schedules from a variant's ``optimizer:`` and ``schedule:`` params.

Schedules that depend only on the step are Keras ``LearningRateSchedule`` objects inside the
optimizer (they cost nothing per step and are saved with the model); ``plateau`` depends on the
validation metrics, so it is a ``ReduceLROnPlateau`` callback instead.

- ``constant``: the learning rate as given.
- ``inverse_time``: ``lr / (1 + decay * step)``, exactly Keras 2's optimizer ``decay`` argument
  (the Keras cifar10_cnn example's ``RMSprop(lr=1e-4, decay=1e-6)``).
- ``step``: multiply by ``factor`` at each epoch in ``boundaries`` (seed 004's manual decreases).
- ``plateau``: ``ReduceLROnPlateau(monitor, factor, patience, min_delta, min_lr)`` (seed 002).
- ``onecycle``: piecewise linear per step: ``start_factor * lr`` -> ``lr`` over ``warmup_epochs``,
  then -> ``end_factor * lr`` at the last step (linear warm-up + linear decay to 0, as airbench).
- ``triangle``: airbench94's own (utils.py ``triangle(steps, start=0.2, end=0.07, peak=0.23)``):
  ``start_factor * lr`` -> ``lr`` at step ``int(peak_fraction * total steps)`` -> ``end_factor * lr``
  at the total; the peak is a fraction of the run, so it follows ``epochs`` and ``train.max_epochs``.

Reads and writes nothing. Used by ``cifar_dvc.training.loop``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import keras

from cifar_dvc.training.variant import OptimizerParams, ScheduleParams


@keras.saving.register_keras_serializable(package="cifar_dvc")
class PiecewiseLinear(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate interpolated linearly between ``(step, value)`` knots, constant outside."""

    def __init__(self, steps: Sequence[float], values: Sequence[float]) -> None:
        if len(steps) != len(values) or len(steps) < 1:
            raise ValueError("PiecewiseLinear needs as many steps as values, at least one")
        if list(steps) != sorted(steps):
            raise ValueError(f"PiecewiseLinear steps must be increasing, got {steps}")
        self.steps = [float(s) for s in steps]
        self.values = [float(v) for v in values]

    def __call__(self, step: Any) -> Any:
        ops = keras.ops
        step = ops.cast(step, "float32")
        lr = ops.convert_to_tensor(self.values[0], "float32")
        knots = list(zip(self.steps, self.values, strict=True))
        for (s0, v0), (s1, v1) in itertools.pairwise(knots):
            span = max(s1 - s0, 1e-9)
            inside = v0 + (v1 - v0) * (step - s0) / span
            lr = ops.where(step >= s0, ops.where(step < s1, inside, v1), lr)
        return lr

    def get_config(self) -> dict[str, Any]:
        return {"steps": self.steps, "values": self.values}


@keras.saving.register_keras_serializable(package="cifar_dvc")
class NormBiasScaledSGD(keras.optimizers.SGD):
    """SGD whose BatchNorm shifts (``beta``) learn ``norm_bias_lr_scale`` times faster than the rest.

    airbench94 trains them 64x faster: they are the only parameters of a conv-BN net that are not
    scale-invariant, so they need a step size of their own. For SGD with momentum, scaling a
    variable's gradient is scaling its learning rate (momentum is linear in the gradient), while
    the decoupled weight decay (``lr * weight_decay * w``) stays unscaled, as in airbench.
    """

    def __init__(self, norm_bias_lr_scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.norm_bias_lr_scale = float(norm_bias_lr_scale)

    def apply(self, grads: Any, trainable_variables: Any = None) -> Any:
        variables = self._trainable_variables if trainable_variables is None else trainable_variables
        grads = [g * self.norm_bias_lr_scale if g is not None and is_norm_bias(v) else g
                 for g, v in zip(grads, variables, strict=True)]
        return super().apply(grads, trainable_variables)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "norm_bias_lr_scale": self.norm_bias_lr_scale}


def is_norm_bias(variable: Any) -> bool:
    """True for a normalization layer's shift (Keras names it ``beta``)."""
    return variable.path.rsplit("/", 1)[-1] == "beta"


def build_schedule(params: ScheduleParams, learning_rate: float, steps_per_epoch: int,
                   epochs: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate argument of the optimizer for ``epochs`` epochs of ``steps_per_epoch``."""
    if params.name in ("constant", "plateau"):
        return learning_rate
    if params.name == "inverse_time":
        return keras.optimizers.schedules.InverseTimeDecay(learning_rate, decay_steps=1,
                                                           decay_rate=params.decay)
    if params.name == "step":
        boundaries = [round(b * steps_per_epoch) for b in params.boundaries]
        values = [learning_rate * params.factor**i for i in range(len(boundaries) + 1)]
        if not boundaries:
            return learning_rate
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    if params.name == "onecycle":
        total = float(steps_per_epoch * epochs)
        warmup = min(params.warmup_epochs * steps_per_epoch, total)
        steps = [0.0, warmup, total] if warmup > 0 else [0.0, total]
        factors = [params.start_factor, 1.0, params.end_factor] if warmup > 0 else [1.0, params.end_factor]
        return PiecewiseLinear(steps, [learning_rate * f for f in factors])
    if params.name == "triangle":
        total = steps_per_epoch * epochs
        # airbench: xp = [0, int(peak * steps), steps], fp = [start, 1, end], evaluated at the
        # step count before each optimizer step (LambdaLR), as Keras' iteration count is here.
        peak = float(int(params.peak_fraction * total))
        return PiecewiseLinear([0.0, peak, float(total)],
                               [learning_rate * f for f in (params.start_factor, 1.0, params.end_factor)])
    raise ValueError(f"unknown schedule {params.name!r}")


def build_optimizer(params: OptimizerParams,
                    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule
                    ) -> keras.optimizers.Optimizer:
    """The Keras optimizer of ``params`` with ``learning_rate`` (a float or a schedule)."""
    common: dict[str, Any] = {
        "learning_rate": learning_rate,
        "clipnorm": params.clipnorm,
        "use_ema": params.use_ema,
        "ema_momentum": params.ema_momentum,
        "ema_overwrite_frequency": params.ema_overwrite_frequency,
    }
    if params.weight_decay is not None:
        common["weight_decay"] = params.weight_decay
    if params.name == "adam":
        opt = keras.optimizers.Adam(beta_1=params.beta_1, beta_2=params.beta_2, epsilon=params.epsilon,
                                    **common)
    elif params.name == "adamw":
        opt = keras.optimizers.AdamW(beta_1=params.beta_1, beta_2=params.beta_2, epsilon=params.epsilon,
                                     **common)
    elif params.name == "sgd" and params.norm_bias_lr_scale != 1:
        opt = NormBiasScaledSGD(norm_bias_lr_scale=params.norm_bias_lr_scale, momentum=params.momentum,
                                nesterov=params.nesterov, **common)
    elif params.name == "sgd":
        opt = keras.optimizers.SGD(momentum=params.momentum, nesterov=params.nesterov, **common)
    elif params.name == "rmsprop":
        opt = keras.optimizers.RMSprop(rho=params.rho, momentum=params.momentum, epsilon=params.epsilon,
                                       **common)
    else:
        raise ValueError(f"unknown optimizer {params.name!r}")
    if params.no_decay:
        opt.exclude_from_weight_decay(var_names=list(params.no_decay))
    return opt


def plateau_callback(params: ScheduleParams) -> keras.callbacks.Callback | None:
    """``ReduceLROnPlateau`` for the ``plateau`` schedule, else None."""
    if params.name != "plateau":
        return None
    mode = "min" if "loss" in params.monitor else "max"
    return keras.callbacks.ReduceLROnPlateau(monitor=params.monitor, factor=params.factor,
                                             patience=params.patience, min_delta=params.min_delta,
                                             min_lr=params.min_lr, mode=mode, verbose=0)
