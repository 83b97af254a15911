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

Precision: ``train.precision`` (``auto`` = bfloat16 where the hardware makes it faster,
``cifar_dvc.training.precision``); the saved model is float32 whatever trained it, and the
precision used is written into the sidecar and the dvclive params.

Interruptions: every finished epoch is backed up in ``backup_dir`` (``cifar_dvc.training.resume``);
re-running the stage continues from there, and the folder is removed once the outputs are written.

Determinism: ``keras.utils.set_random_seed(seed)`` and TensorFlow op determinism, so two runs on
the CPU give the same metrics.

Reads ``data/prepared/{train,val}.npz``, ``meta.json``, ``normalization.json``.
Run by ``python -m stages.train --variant <name> ...`` (``dvc repro train@<name>``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
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
from cifar_dvc.training import data, distribute, optim, precision, resume
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
    """Multi-worker under ``TF_CONFIG``, ``MirroredStrategy`` over several GPUs, else the default
    strategy (``cifar_dvc.training.distribute``)."""
    return distribute.select_strategy()


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
        steps_per_execution=distribute.steps_per_execution(variant.steps_per_execution
                                                           or train.steps_per_execution),
        jit_compile="auto" if train.jit_compile is None else train.jit_compile,
    )
    return model


def train_variant(name: str, variant: VariantParams, train: TrainParams, seed: int, data_dir: Path | str,
                  model_path: Path | str, live_dir: Path | str,
                  backup_dir: Path | str | None = None) -> TrainResult:
    """Train variant ``name`` on ``data_dir``; write the model, its sidecar and the dvclive logs.

    Under a multi-worker ``TF_CONFIG`` only the chief writes them; the other workers write the same
    files into a temporary folder that they remove (``distribute.worker_outputs``).
    ``backup_dir`` keeps the last finished epoch until the outputs are written, and a re-run with
    the same params and data resumes from it; None = a temporary folder (no resume; also under
    several workers).
    """
    if backup_dir is not None and distribute.num_workers(distribute.read_tf_config()) > 1:
        # A resume needs every worker to restart from the same epoch, and only the chief keeps
        # its files: several workers start over instead of falling out of step.
        print(f"train@{name}: multi-worker run, no resumable backup", flush=True)
        backup_dir = None
    with contextlib.ExitStack() as stack:
        if backup_dir is None:  # beside the model's other temporaries: the final rename stays atomic
            backup_dir = stack.enter_context(tempfile.TemporaryDirectory(
                prefix=f"backup-{name}-", dir=atomic.staging_dir(model_path)))
        paths = stack.enter_context(distribute.worker_outputs(model_path, live_dir, backup_dir))
        return _train_one(name, variant, train, seed, Path(data_dir), *paths)


def _train_one(name: str, variant: VariantParams, train: TrainParams, seed: int, data_dir: Path,
               model_path: Path, live_dir: Path, backup_dir: Path) -> TrainResult:
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback
    from dvclive.utils import standardize_metric_name

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
    dtype_policy = precision.resolve(train.precision)
    run_id = resume.fingerprint(variant=config.to_dict(variant), epochs=epochs, seed=seed,
                                precision=dtype_policy, train=resume.file_digest(data_dir / "train.npz"),
                                val=resume.file_digest(data_dir / "val.npz"))
    resumed = resume.load_state(backup_dir, run_id)
    backup_dir.mkdir(parents=True, exist_ok=True)
    if resumed:
        print(f"train@{name}: resuming after epoch {resumed['epoch']} of {epochs} from {backup_dir}",
              flush=True)
    strategy = select_strategy()
    augmenter = build_augmenter(variant.augment, seed)
    train_ds = data.make_dataset(train_split.x, train_split.y, meta.num_classes, stats, variant.batch_size,
                                 shuffle=True, seed=seed, augmenter=augmenter,
                                 group=data.group_for(variant.batch_size),
                                 skip_epochs=resumed["epoch"] if resumed else 0)
    if resumed:
        resume.set_generator_states(augmenter, resumed["generators"])
    val_ds = data.make_dataset(val_split.x, val_split.y, meta.num_classes, stats, variant.batch_size,
                               shuffle=False, seed=seed)
    with strategy.scope(), precision.policy(dtype_policy):
        model = build_compiled_model(variant, train, meta.image_shape, meta.num_classes, stats,
                                     steps_per_epoch, epochs, init_images=train_split.x)
        if resumed:  # fit() builds the optimizer lazily: its saved moments need variables to load into
            model.optimizer.build(model.trainable_variables)

    model_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_dir(live_dir) as live_tmp:
        staged = backup_dir / resume.BEST_MODEL  # survives an interruption with the rest of the backup
        timer = _EpochTimer()
        saver = _BestModelSaver(staged, variant.monitor, variant.monitor_mode,
                                enabled=variant.checkpoint == "best")
        stateful: dict[str, resume.Stateful] = {"timer": timer, "best": saver}
        callbacks: list[keras.callbacks.Callback] = [timer, _LearningRateLogger()]
        if variant.tta:
            callbacks.append(_TTAValidation(val_ds, variant.tta))
        plateau = optim.plateau_callback(variant.schedule)
        if plateau is not None:
            callbacks.append(plateau)
            stateful["plateau"] = resume.AttributeState(plateau, ("wait", "best", "cooldown_counter"))
        if variant.early_stopping is not None:
            stopper = keras.callbacks.EarlyStopping(monitor=variant.monitor, mode=variant.monitor_mode,
                                                    patience=variant.early_stopping)
            callbacks.append(stopper)
            stateful["early_stopping"] = resume.AttributeState(stopper, ("wait", "best", "best_epoch"))
        live = Live(dir=str(live_tmp), dvcyaml=False, save_dvc_exp=False, report=None)
        live.log_params({"variant": name, "seed": seed, "epochs": epochs, "precision": dtype_policy,
                         **config.to_dict(variant)})
        for logs in resumed["history"] if resumed else []:  # the curves of the epochs done before
            for metric, value in logs.items():
                live.log_metric(standardize_metric_name(metric, "dvclive.keras"), value)
            live.next_step()
        backup = resume.EpochBackup(backup_dir, run_id, stateful, augmenter=augmenter, resumed=resumed)
        callbacks += [saver, DVCLiveCallback(live=live), backup]  # backup last: it saves the others

        model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks, shuffle=False,
                  initial_epoch=backup.initial_epoch, verbose=fit_verbosity(train.verbose))
        if variant.checkpoint == "last":
            # fit() has copied the EMA weights into the model, if the optimizer keeps them.
            save_model(model, staged)
        if not staged.exists():  # every epoch's monitored value was NaN
            raise DataError(f"train@{name}: {variant.monitor} was not finite in any epoch (training "
                            "diverged); nothing saved. Try a lower optimizer.learning_rate")
        with atomic.atomic_path(model_path) as tmp:  # a copy: the backup may be on another disk
            shutil.copyfile(staged, tmp)

    hist = {k: [logs.get(k, math.nan) for logs in backup.history] for k in backup.history[0]}
    epochs_run = len(backup.history)
    seconds, cpu_seconds = backup.seconds, backup.cpu_seconds
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
        "precision": dtype_policy,
        "resumed_after_epoch": backup.initial_epoch,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),  # all threads: compare machines by CPU time, not wall
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
    resume.clear(backup_dir)
    return TrainResult(history=hist, summary=summary)


def save_model(model: keras.Model, path: Path) -> None:
    """Save ``model`` atomically as a float32 model, whatever precision trained it."""
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")  # Keras wants the .keras suffix
    precision.float32_copy(model).save(partial)
    os.replace(partial, path)


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

    def get_state(self) -> dict[str, Any]:
        return {"seconds": self.seconds}

    def set_state(self, state: dict[str, Any]) -> None:
        self.seconds = float(state["seconds"])


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
            save_model(self.model, self.path)

    def get_state(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def set_state(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
