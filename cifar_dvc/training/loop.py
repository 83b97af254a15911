"""Train one variant end to end: data, model, optimizer, callbacks, fit, best model, logs, sidecar.

``train_variant`` reads the prepared data directory, builds the variant's model under the
distribution strategy (``MirroredStrategy`` when several GPUs are visible, else the default),
fits it on the tf.data pipeline with the variant's recipe, logs every epoch with dvclive, and
writes, each atomically:

- ``models/<name>.keras``: the best epoch by the variant's ``monitor`` (or the final weights,
  EMA-averaged if enabled, with ``checkpoint: last``);
- ``models/<name>.json``: the sidecar (``cifar_dvc.modelinfo``): classes, image shape,
  normalization, and a training summary (epochs, best epoch, seconds, images/s, parameters);
- ``dvclive/<name>/``: dvclive's metrics and per-epoch curves (``dvcyaml=False``).

Determinism: ``keras.utils.set_random_seed(seed)`` and TensorFlow op determinism, so two runs on
the CPU give the same metrics.

Reads ``data/prepared/{train,val}.npz``, ``meta.json``, ``normalization.json``.
Run by ``python -m stages.train --variant <name> ...`` (``dvc repro train@<name>``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from cifar_dvc import artifacts, atomic, config, models
from cifar_dvc.errors import DataError
from cifar_dvc.modelinfo import ModelInfo, save_info
from cifar_dvc.normalization import STATS_FILE, NormStats, load_stats, normalize
from cifar_dvc.training import data, optim
from cifar_dvc.training.augment import build_augmenter
from cifar_dvc.training.variant import TrainParams, VariantParams

# Training images that set data-dependent weights (airbench: 5,000 give a stable patch covariance).
WHITENING_SAMPLE = 5000


@dataclasses.dataclass
class TrainResult:
    """What a training run produced besides its files."""

    history: dict[str, list[float]]  # per-epoch logs (loss, accuracy, val_*, learning_rate, ...)
    summary: dict[str, Any]  # the training summary written into the sidecar


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TensorFlow's ops deterministic."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def select_strategy() -> tf.distribute.Strategy:
    """``MirroredStrategy`` over all GPUs when there are several, else the default strategy."""
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def fit_verbosity(setting: str) -> int:
    """Keras' ``verbose``: a progress bar on a terminal, one line per epoch in logs (``auto``)."""
    if setting == "auto":
        return 1 if sys.stdout.isatty() else 2
    return {"bar": 1, "epoch": 2, "silent": 0}[setting]


def build_compiled_model(variant: VariantParams, train: TrainParams, image_shape: tuple[int, int, int],
                         num_classes: int, stats: NormStats, steps_per_epoch: int,
                         epochs: int, init_images: np.ndarray | None = None) -> keras.Model:
    """The variant's model, compiled with its optimizer, schedule and loss (call in a strategy scope).

    ``init_images`` (uint8 training images) set the data-dependent weights of models that have
    them (``fast``'s whitening stem); without them those weights keep their random init.
    """
    model = models.build(variant.model, image_shape, num_classes, normalization=stats, **variant.model_args)
    if init_images is not None:
        models.init_from_data(model, normalize(init_images[:WHITENING_SAMPLE], stats))
    lr = optim.build_schedule(variant.schedule, variant.optimizer.learning_rate, steps_per_epoch, epochs)
    model.compile(
        optimizer=optim.build_optimizer(variant.optimizer, lr),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=variant.label_smoothing),
        metrics=["accuracy"],
        steps_per_execution=variant.steps_per_execution or train.steps_per_execution,
        jit_compile="auto" if train.jit_compile is None else train.jit_compile,
    )
    return model


def train_variant(name: str, variant: VariantParams, train: TrainParams, seed: int, data_dir: Path | str,
                  model_path: Path | str, live_dir: Path | str) -> TrainResult:
    """Train variant ``name`` on ``data_dir``; write the model, its sidecar and the dvclive logs."""
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    data_dir, model_path, live_dir = Path(data_dir), Path(model_path), Path(live_dir)
    meta = artifacts.load_meta(data_dir)
    stats = load_stats(data_dir / STATS_FILE)
    train_split = artifacts.load_split(data_dir / "train.npz")
    val_split = artifacts.load_split(data_dir / "val.npz")
    if len(train_split) == 0 or len(val_split) == 0:
        raise DataError(f"{data_dir}: train and val splits must not be empty "
                        f"(got {len(train_split)} and {len(val_split)} images)")
    if tuple(train_split.x.shape[1:]) != tuple(meta.image_shape):
        raise DataError(f"{data_dir}/train.npz: images of shape {train_split.x.shape[1:]}, "
                        f"meta.json says {meta.image_shape}")

    keras.backend.clear_session()
    set_determinism(seed)
    epochs = train.epochs_for(variant)
    steps_per_epoch = math.ceil(len(train_split) / variant.batch_size)
    strategy = select_strategy()
    train_ds = data.make_dataset(train_split.x, train_split.y, meta.num_classes, stats, variant.batch_size,
                                 shuffle=True, seed=seed, augmenter=build_augmenter(variant.augment, seed),
                                 group=data.group_for(variant.batch_size))
    val_ds = data.make_dataset(val_split.x, val_split.y, meta.num_classes, stats, variant.batch_size,
                               shuffle=False, seed=seed)
    with strategy.scope():
        model = build_compiled_model(variant, train, meta.image_shape, meta.num_classes, stats,
                                     steps_per_epoch, epochs, init_images=train_split.x)

    model_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{model_path.name}.", dir=model_path.parent) as tmp, \
            atomic.atomic_dir(live_dir) as live_tmp:
        staged = Path(tmp) / model_path.name
        timer = _EpochTimer()
        saver = _BestModelSaver(staged, variant.monitor, variant.monitor_mode,
                                enabled=variant.checkpoint == "best")
        callbacks: list[keras.callbacks.Callback] = [timer, _LearningRateLogger()]
        if variant.tta:
            callbacks.append(_TTAValidation(val_ds, variant.tta))
        plateau = optim.plateau_callback(variant.schedule)
        if plateau is not None:
            callbacks.append(plateau)
        if variant.early_stopping is not None:
            callbacks.append(keras.callbacks.EarlyStopping(monitor=variant.monitor, mode=variant.monitor_mode,
                                                           patience=variant.early_stopping))
        live = Live(dir=str(live_tmp), dvcyaml=False, save_dvc_exp=False, report=None)
        live.log_params({"variant": name, "seed": seed, "epochs": epochs, **config.to_dict(variant)})
        callbacks += [saver, DVCLiveCallback(live=live)]

        started = time.perf_counter()
        history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks,
                            shuffle=False, verbose=fit_verbosity(train.verbose))
        seconds = time.perf_counter() - started
        if variant.checkpoint == "last":
            # fit() has copied the EMA weights into the model, if the optimizer keeps them.
            model.save(staged)
        if not staged.exists():  # every epoch's monitored value was NaN
            raise DataError(f"train@{name}: {variant.monitor} was not finite in any epoch (training "
                            "diverged); nothing saved. Try a lower optimizer.learning_rate")
        os.replace(staged, model_path)

    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    epochs_run = len(hist.get("loss", []))
    summary = {
        "model": variant.model,
        "seed": seed,
        "epochs_planned": epochs,
        "epochs_run": epochs_run,
        "batch_size": variant.batch_size,
        "checkpoint": variant.checkpoint,
        "monitor": variant.monitor,
        "best_epoch": saver.best_epoch if variant.checkpoint == "best" else epochs_run,
        "best_value": saver.best if variant.checkpoint == "best" else hist.get(variant.monitor, [None])[-1],
        "seconds": round(seconds, 2),
        "train_seconds": round(timer.seconds, 2),
        "images_per_second": round(len(train_split) * epochs_run / max(timer.seconds, 1e-9), 1),
        "params": int(model.count_params()),
        "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "train_images": len(train_split),
        "val_images": len(val_split),
    }
    save_info(model_path, ModelInfo(name=name, dataset=meta.dataset, classes=list(meta.classes),
                                    image_shape=tuple(meta.image_shape), normalization=stats,
                                    training=summary))
    return TrainResult(history=hist, summary=summary)


class _EpochTimer(keras.callbacks.Callback):
    """Sums the training part of each epoch (from its start to the start of validation)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0
        self._start: float | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def _stop(self) -> None:
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self._start = None

    def on_test_begin(self, logs: dict | None = None) -> None:
        self._stop()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._stop()


class _LearningRateLogger(keras.callbacks.Callback):
    """Adds the epoch's learning rate to the logs (so dvclive draws it)."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None and "learning_rate" not in logs:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class _TTAValidation(keras.callbacks.Callback):
    """Adds ``val_tta_accuracy``: validation accuracy with test-time augmentation ``level``."""

    def __init__(self, val_ds: tf.data.Dataset, level: int) -> None:
        super().__init__()
        self.val_ds, self.level = val_ds, level

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["val_tta_accuracy"] = data.tta_accuracy(self.model, self.val_ds, self.level)


class _BestModelSaver(keras.callbacks.Callback):
    """Saves the whole model to ``path`` whenever ``monitor`` improves; remembers the best epoch."""

    def __init__(self, path: Path, monitor: str, mode: str, enabled: bool) -> None:
        super().__init__()
        self.path, self.monitor, self.mode, self.enabled = path, monitor, mode, enabled
        self.best: float | None = None
        self.best_epoch = 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if not self.enabled or value is None or math.isnan(float(value)):
            return
        value = float(value)
        if self.best is None or (value < self.best if self.mode == "min" else value > self.best):
            self.best, self.best_epoch = value, epoch + 1
            self.model.save(self.path)
