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

Steps: ``train_variant`` is a composition of public steps that the benchmarks call too, so they
train what the stage trains without rebuilding it: ``load_data`` (prepared splits, one-hot
labels, normalization), ``start_run`` (fresh seeded session; epochs, steps, precision, strategy),
``train_dataset`` / ``val_dataset``, ``build`` (the compiled model under the run's strategy and
precision), ``training_callbacks`` (the ones that change what is trained: plateau, early
stopping, lookahead, whitening-bias freeze), ``stage_callbacks`` (those plus timer, TTA
validation, best-model saver, dvclive, epoch backup), ``fit``, ``write_best_model``,
``summarize`` and ``write_sidecar``. ``averaged_weights`` lends a model its optimizer's EMA
weights for a test during training and gives the training weights back exactly.

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from cifar_dvc import artifacts, atomic, config, inference, models, tfenv
from cifar_dvc.errors import DataError, ParamsError
from cifar_dvc.modelinfo import ModelInfo, save_info
from cifar_dvc.normalization import STATS_FILE, NormStats, load_stats, normalize
from cifar_dvc.training import data, distribute, optim, precision, resume
from cifar_dvc.training.augment import build_augmenter
from cifar_dvc.training.callbacks import recipe_callbacks
from cifar_dvc.training.variant import TrainParams, VariantParams, validates

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
                         epochs: int, init_images: np.ndarray | None = None,
                         where: str = "variant") -> keras.Model:
    """The variant's model, compiled with its optimizer, schedule and loss (call in a strategy scope).

    ``init_images`` (uint8 training images) set the data-dependent weights of models that have
    them (``fast``'s whitening stem); without them those weights keep their random init. A
    ``model_args`` value the model rejects is a ParamsError naming ``<where>.model_args``.
    """
    model = _build_model(variant, image_shape, num_classes, stats, where)
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


@dataclasses.dataclass
class TrainingData:
    """A prepared data directory as training reads it (``load_data``)."""

    meta: artifacts.Meta
    stats: NormStats
    train: artifacts.Split
    val: artifacts.Split
    train_labels: np.ndarray  # prepare's y_onehot rows (float32), checked against train.y
    val_labels: np.ndarray


@dataclasses.dataclass
class Run:
    """One run's settings, fixed once by ``start_run``: what every later step reads."""

    name: str
    variant: VariantParams
    train: TrainParams
    seed: int
    epochs: int  # the variant's, capped by train.max_epochs
    steps_per_epoch: int
    precision: str  # the Keras dtype policy train.precision resolved to
    strategy: tf.distribute.Strategy

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """The distribution strategy and dtype policy the model and its optimizer are built under."""
        with self.strategy.scope(), precision.policy(self.precision):
            yield


@dataclasses.dataclass
class StageCallbacks:
    """The stage's callbacks in fit's order, and the ones its summary reads."""

    callbacks: list[keras.callbacks.Callback]
    timer: _EpochTimer
    saver: _BestModelSaver
    backup: resume.EpochBackup  # last in ``callbacks``; keeps the history and the clocks


def check_model_args(name: str, variant: VariantParams, data_dir: Path | str, file: str) -> None:
    """Build variant ``name``'s model once, for nothing, on the prepared data's image shape.

    The registry checked the names and types of ``model_args``; a value that the builder or one of
    its Keras layers rejects (a width of 0, a dropout of 1.5) is found here, before anything is
    written: a ParamsError naming ``<file>: variants.<name>.model_args``. Reads ``meta.json`` and
    the normalization only; ``start_run`` clears the session and reseeds afterwards, so the run's
    weights do not depend on this build. Skipped under a multi-worker ``TF_CONFIG``, whose
    collective ops must be set up before TensorFlow's first op: there the same error comes when
    the run builds its model (``build_compiled_model``), after the data is read.
    """
    if distribute.num_workers(distribute.read_tf_config()) > 1:
        return
    data_dir = Path(data_dir)
    meta = artifacts.load_meta(data_dir)
    stats = load_stats(data_dir / STATS_FILE)
    try:
        _build_model(variant, meta.image_shape, meta.num_classes, stats, where=f"{file}: variants.{name}")
    finally:
        keras.backend.clear_session()


def _build_model(variant: VariantParams, image_shape: tuple[int, int, int], num_classes: int,
                 stats: NormStats, where: str) -> keras.Model:
    """``models.build`` for the variant; a value of ``model_args`` it rejects is a ParamsError."""
    try:
        return models.build(variant.model, image_shape, num_classes, normalization=stats,
                            **variant.model_args)
    except ValueError as exc:
        raise ParamsError(f"{where}.model_args: {exc}") from None


def load_data(data_dir: Path | str) -> TrainingData:
    """Read and check the prepared ``train``/``val`` splits, ``meta.json`` and the normalization."""
    data_dir = Path(data_dir)
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
    # one-hot encoding is prepare's: train on its y_onehot (validation with TTA scores the integer y)
    train_labels = artifacts.onehot_labels(train_split, data_dir / "train.npz", meta.num_classes)
    val_labels = artifacts.onehot_labels(val_split, data_dir / "val.npz", meta.num_classes)
    return TrainingData(meta, stats, train_split, val_split, train_labels, val_labels)


def start_run(name: str, variant: VariantParams, train: TrainParams, seed: int, train_images: int) -> Run:
    """Start a run of ``train_images`` images: a fresh Keras session, seeded and deterministic, and
    the run's epochs, steps, precision and strategy.

    Call it before any other step: the augmenter and the model draw from the seeds it sets, so the
    same calls in the same order give the same weights bit for bit.
    """
    keras.backend.clear_session()
    set_determinism(seed)
    return Run(name=name, variant=variant, train=train, seed=seed, epochs=train.epochs_for(variant),
               steps_per_epoch=math.ceil(train_images / variant.batch_size),
               precision=precision.resolve(train.precision_for(variant)), strategy=select_strategy())


def train_dataset(run: Run, x: np.ndarray, y_onehot: np.ndarray, stats: NormStats,
                  skip_epochs: int = 0) -> tuple[tf.data.Dataset, keras.Layer | None]:
    """The run's shuffled, augmented training batches, and the augmenter (its random state is part
    of a resumable run). ``skip_epochs``: start where a run stopped after that many epochs."""
    augmenter = build_augmenter(run.variant.augment, run.seed)
    ds = data.make_dataset(x, y_onehot, stats, run.variant.batch_size, shuffle=True, seed=run.seed,
                           augmenter=augmenter, group=data.group_for(run.variant.batch_size),
                           skip_epochs=skip_epochs, alternate_flip=run.variant.augment.alternate_flip)
    return ds, augmenter


def val_dataset(run: Run, x: np.ndarray, y_onehot: np.ndarray, stats: NormStats) -> tf.data.Dataset:
    """The run's validation batches: in order, normalized, not augmented."""
    return data.make_dataset(x, y_onehot, stats, run.variant.batch_size, shuffle=False, seed=run.seed)


def build(run: Run, image_shape: tuple[int, int, int], num_classes: int, stats: NormStats,
          init_images: np.ndarray | None = None) -> keras.Model:
    """The variant's compiled model under the run's strategy and precision (``build_compiled_model``)."""
    with run.scope():
        return build_compiled_model(run.variant, run.train, image_shape, num_classes, stats,
                                    run.steps_per_epoch, run.epochs, init_images=init_images,
                                    where=f"variants.{run.name}")


def training_callbacks(run: Run, state_dir: Path | None = None
                       ) -> tuple[list[keras.callbacks.Callback], dict[str, resume.Stateful]]:
    """The callbacks that change what is trained, in fit's order: the plateau schedule, early
    stopping and the recipe's (lookahead, whitening-bias freeze); and each one's resumable state by
    name. ``state_dir``: where the lookahead keeps its average for a resume (None = not resumable).
    """
    variant = run.variant
    callbacks: list[keras.callbacks.Callback] = []
    stateful: dict[str, resume.Stateful] = {}
    plateau = optim.plateau_callback(variant.schedule)
    if plateau is not None:
        callbacks.append(plateau)
        stateful["plateau"] = resume.AttributeState(plateau, ("wait", "best", "cooldown_counter"))
    if variant.early_stopping is not None:
        stopper = keras.callbacks.EarlyStopping(monitor=variant.monitor, mode=variant.monitor_mode,
                                                patience=variant.early_stopping)
        callbacks.append(stopper)
        stateful["early_stopping"] = resume.AttributeState(stopper, ("wait", "best", "best_epoch"))
    recipe = recipe_callbacks(variant, run.steps_per_epoch, run.epochs, state_dir=state_dir)
    callbacks += recipe.values()
    stateful.update(recipe)
    return callbacks, stateful


def stage_callbacks(run: Run, prepared: TrainingData, live_dir: Path, backup_dir: Path, run_id: str,
                    augmenter: keras.Layer | None = None,
                    resumed: dict[str, Any] | None = None) -> StageCallbacks:
    """``training_callbacks`` inside the stage's bookkeeping: the epoch timer, the learning-rate log
    and validation with TTA before them (they may monitor ``val_tta_accuracy``); the best-model
    saver (into ``backup_dir``), dvclive (into ``live_dir``) and the epoch backup after them.
    ``resumed`` (``resume.load_state``) restores them all and replays the logged curves.
    """
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback
    from dvclive.utils import standardize_metric_name

    variant, meta = run.variant, prepared.meta
    timer = _EpochTimer()
    saver = _BestModelSaver(backup_dir / resume.BEST_MODEL, variant.monitor, variant.monitor_mode,
                            enabled=variant.checkpoint == "best")
    callbacks: list[keras.callbacks.Callback] = [timer, _LearningRateLogger()]
    if variant.tta:
        val_info = ModelInfo(run.name, meta.dataset, list(meta.classes), tuple(meta.image_shape),
                             prepared.stats, tta=variant.tta)
        callbacks.append(_TTAValidation(val_info, prepared.val.x, prepared.val.y, variant.batch_size,
                                        every=variant.val_tta_every, epochs=run.epochs))
    recipe, recipe_state = training_callbacks(run, state_dir=backup_dir)
    callbacks += recipe
    stateful: dict[str, resume.Stateful] = {"timer": timer, "best": saver, **recipe_state}
    live = Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    live.log_params({"variant": run.name, "seed": run.seed, "epochs": run.epochs,
                     "precision": run.precision, "onednn": tfenv.onednn_enabled(), **config.to_dict(variant)})
    for logs in resumed["history"] if resumed else []:  # the curves of the epochs done before
        for metric, value in logs.items():
            live.log_metric(standardize_metric_name(metric, "dvclive.keras"), value)
        live.next_step()
    backup = resume.EpochBackup(backup_dir, run_id, stateful, augmenter=augmenter, resumed=resumed)
    callbacks += [saver, DVCLiveCallback(live=live), backup]  # backup last: it saves the others
    return StageCallbacks(callbacks, timer, saver, backup)


def fit(run: Run, model: keras.Model, train_ds: tf.data.Dataset, callbacks: list[keras.callbacks.Callback],
        val_ds: tf.data.Dataset | None = None, initial_epoch: int = 0) -> keras.callbacks.History:
    """Train ``model`` for the run's epochs (from ``initial_epoch``), verbose as ``train.verbose``."""
    # shuffle=False: the dataset shuffles itself, deterministically (cifar_dvc.training.data)
    validation_freq = [e for e in range(1, run.epochs + 1) if validates(e, run.epochs, run.variant.val_every)]
    return model.fit(train_ds, validation_data=val_ds, epochs=run.epochs, callbacks=callbacks,
                     shuffle=False, initial_epoch=initial_epoch, validation_freq=validation_freq,
                     verbose=fit_verbosity(run.train.verbose))


@contextlib.contextmanager
def averaged_weights(model: keras.Model) -> Iterator[keras.Model]:
    """Within the block ``model`` holds its optimizer's EMA weights (``optimizer.use_ema``), as
    fit leaves them at its end (what ``checkpoint: last`` saves); the training weights come back,
    exactly, after it. Without EMA the model is left as it is (lookahead copies its average
    into the model itself).
    """
    if not getattr(model.optimizer, "use_ema", False):
        yield model
        return
    saved = model.get_weights()  # a copy: a swap by arithmetic would not restore them bit for bit
    # The public call fit makes at its end, on the same variables (model.trainable_weights).
    model.optimizer.finalize_variable_values(model.trainable_weights)
    try:
        yield model
    finally:
        model.set_weights(saved)


def write_best_model(run: Run, model: keras.Model, staged: Path, model_path: Path) -> None:
    """Copy the run's model to ``model_path`` atomically: the best epoch's, which the saver staged,
    or with ``checkpoint: last`` the model as fit left it (EMA weights, if the optimizer keeps them)."""
    if run.variant.checkpoint == "last":
        save_model(model, staged)
    if not staged.exists():  # every epoch's monitored value was NaN
        raise DataError(f"train@{run.name}: {run.variant.monitor} was not finite in any epoch (training "
                        "diverged); nothing saved. Try a lower optimizer.learning_rate")
    with atomic.atomic_path(model_path) as tmp:  # a copy: the backup may be on another disk
        shutil.copyfile(staged, tmp)


def summarize(run: Run, model: keras.Model, prepared: TrainingData, stage: StageCallbacks) -> TrainResult:
    """The run's per-epoch history and the training summary the sidecar keeps."""
    variant, backup, saver = run.variant, stage.backup, stage.saver
    # One value per epoch, NaN where an epoch did not log the key (val_every, val_tta_every skip epochs)
    keys = dict.fromkeys(k for logs in backup.history for k in logs)
    hist = {k: [logs.get(k, math.nan) for logs in backup.history] for k in keys}
    epochs_run = len(backup.history)
    summary = {
        "model": variant.model,
        "seed": run.seed,
        "epochs_planned": run.epochs,
        "epochs_run": epochs_run,
        "batch_size": variant.batch_size,
        "checkpoint": variant.checkpoint,
        "monitor": variant.monitor,
        "best_epoch": saver.best_epoch if variant.checkpoint == "best" else epochs_run,
        "best_value": saver.best if variant.checkpoint == "best" else hist.get(variant.monitor, [None])[-1],
        "precision": run.precision,
        "onednn": tfenv.onednn_enabled(),  # TensorFlow's CPU kernels: oneDNN or Eigen (cifar_dvc/tfenv.py)
        "resumed_after_epoch": backup.initial_epoch,
        "seconds": round(backup.seconds, 2),
        "cpu_seconds": round(backup.cpu_seconds, 2),  # all threads: compare machines by CPU time, not wall
        "train_seconds": round(stage.timer.seconds, 2),
        "images_per_second": round(len(prepared.train) * epochs_run / max(stage.timer.seconds, 1e-9), 1),
        "params": int(model.count_params()),
        "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "train_images": len(prepared.train),
        "val_images": len(prepared.val),
    }
    return TrainResult(history=hist, summary=summary)


def write_sidecar(run: Run, prepared: TrainingData, model_path: Path, summary: dict[str, Any]) -> None:
    """Write the model's sidecar (``cifar_dvc.modelinfo``): classes, shape, normalization, TTA, summary."""
    meta = prepared.meta
    save_info(model_path, ModelInfo(name=run.name, dataset=meta.dataset, classes=list(meta.classes),
                                    image_shape=tuple(meta.image_shape), normalization=prepared.stats,
                                    training=summary, tta=run.variant.tta))


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
    """The stage's composition of the steps above, with the backup and resume around them."""
    prepared = load_data(data_dir)
    run = start_run(name, variant, train, seed, len(prepared.train))
    run_id = resume.fingerprint(variant=config.to_dict(variant), epochs=run.epochs, seed=seed,
                                precision=run.precision, train=resume.file_digest(data_dir / "train.npz"),
                                val=resume.file_digest(data_dir / "val.npz"))
    resumed = resume.load_state(backup_dir, run_id)
    backup_dir.mkdir(parents=True, exist_ok=True)
    if resumed:
        print(f"train@{name}: resuming after epoch {resumed['epoch']} of {run.epochs} from {backup_dir}",
              flush=True)
    train_ds, augmenter = train_dataset(run, prepared.train.x, prepared.train_labels, prepared.stats,
                                        skip_epochs=resumed["epoch"] if resumed else 0)
    if resumed:
        resume.set_generator_states(augmenter, resumed["generators"])
    val_ds = val_dataset(run, prepared.val.x, prepared.val_labels, prepared.stats)
    model = build(run, prepared.meta.image_shape, prepared.meta.num_classes, prepared.stats,
                  init_images=prepared.train.x)
    if resumed:  # fit() builds the optimizer lazily: its saved moments need variables to load into
        with run.scope():
            model.optimizer.build(model.trainable_variables)

    model_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_dir(live_dir) as live_tmp:
        stage = stage_callbacks(run, prepared, live_tmp, backup_dir, run_id, augmenter, resumed)
        fit(run, model, train_ds, stage.callbacks, val_ds=val_ds, initial_epoch=stage.backup.initial_epoch)
        write_best_model(run, model, backup_dir / resume.BEST_MODEL, model_path)

    result = summarize(run, model, prepared, stage)
    write_sidecar(run, prepared, model_path, result.summary)
    resume.clear(backup_dir)
    return result


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
    """Adds ``val_tta_accuracy``: validation accuracy with test-time augmentation ``info.tta``,
    predicted as ``evaluate`` predicts (``cifar_dvc.inference.predict``), every ``every`` epochs
    and at epoch ``epochs`` (the last); ``every`` 0 = the last only."""

    def __init__(self, info: ModelInfo, x: np.ndarray, y: np.ndarray, batch_size: int,
                 every: int = 1, epochs: int = 0) -> None:
        super().__init__()
        self.info, self.x, self.y, self.batch_size = info, x, y, batch_size
        self.every, self.epochs = every, epochs

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not validates(epoch + 1, self.epochs, self.every):
            return
        if logs is not None:
            probs = inference.predict(self.model, self.info, self.x, self.info.tta or 0, self.batch_size)
            logs["val_tta_accuracy"] = float(np.mean(probs.argmax(axis=1) == self.y)) if len(self.y) else 0.0


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
