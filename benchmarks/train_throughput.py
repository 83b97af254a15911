"""Training throughput (images/s) of every variant: our tf.data pipeline vs. the seeds' way.

For each variant of ``params.yaml`` the same model (same optimizer, same batch size) is trained
twice in this one process, back to back so both see the same machine load:

- ``seeds' way``: the whole training subset as a float64 NumPy array (``x / 255.``, as the seeds
  did) and float64 one-hot labels into ``model.fit(x, y, batch_size=...)``, one step per call.
- ``ours``: ``cifar_dvc.training`` as ``train@<variant>`` runs it, built by the stage's own steps
  (``loop.start_run``, ``train_dataset``, ``build``): uint8 arrays, tf.data with per-batch cast +
  normalization (+ the variant's augmentation), prefetch, steps_per_execution.
- ``ceiling`` (with ``--ceiling``): the same compiled model as ``ours`` fed from batches that are
  already normalized float32 tensors in memory (``Dataset.cache()``, no augmentation): no input
  pipeline can beat it, so ``ceiling / seeds' way`` is the most any input pipeline could gain.

With ``--precisions float32 auto mixed_bfloat16`` it measures instead ``ours`` under each
``train.precision``, back to back per variant, and prints the CPU model and its bf16/AMX flags
(what ``auto`` decides by): the speed-up of mixed precision on this machine, variant by variant.

Each measurement compiles and warms up first, then times up to ``--steps`` steps or
``--max-seconds`` seconds, whichever comes first. MobileNet variants run with ``weights: none``
(same compute; no download). Run by hand on real CIFAR-10, e.g.

    nice -n 10 python benchmarks/train_throughput.py --data /tmp/real/data/prepared \
        --out benchmarks/results/train_throughput.md
    python benchmarks/train_throughput.py --data /tmp/real/data/prepared \
        --precisions float32 auto mixed_bfloat16 --out benchmarks/results/precision_throughput.md

Reads params.yaml and the prepared data. Writes the markdown report given by ``--out``
(atomically), keeping the hand-written ``## Reading`` section of an existing report.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import os
import platform
import time
from pathlib import Path

from cifar_dvc.tfenv import set_defaults

set_defaults()  # before TensorFlow loads: the stages' settings (oneDNN on), so this measures what they run

import keras  # noqa: E402
import numpy as np  # noqa: E402
import runinfo  # noqa: E402
import tensorflow as tf  # noqa: E402
from reproduction import machine, write_keeping_reading  # noqa: E402

from cifar_dvc import config, cpuinfo  # noqa: E402
from cifar_dvc.training import loop, precision  # noqa: E402
from cifar_dvc.training.variant import TrainParams, VariantParams, load_variant, variant_names  # noqa: E402


class _StepTimer(keras.callbacks.Callback):
    """Counts steps from the first finished call on; stops after a step or time budget."""

    def __init__(self, max_steps: int, max_seconds: float) -> None:
        super().__init__()
        self.max_steps, self.max_seconds = max_steps, max_seconds
        self.start: float | None = None
        self.first_step = 0
        self.last_step = 0
        self.end = 0.0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        now = time.perf_counter()
        if self.start is None:  # exclude the first call: it may still allocate and autotune
            self.start, self.first_step = now, batch + 1
            return
        self.last_step, self.end = batch + 1, now
        if batch + 1 >= self.max_steps or now - self.start >= self.max_seconds:
            self.model.stop_training = True

    def steps(self) -> int:
        return self.last_step - self.first_step

    def seconds(self) -> float:
        return self.end - self.start if self.start is not None else math.nan


def images_per_second(model: keras.Model, fit_args: dict, batch_size: int, max_steps: int,
                      max_seconds: float) -> float:
    """Training images/s of ``model.fit(**fit_args)`` after its first call, over at most
    ``max_steps`` steps or ``max_seconds`` seconds."""
    timer = _StepTimer(max_steps, max_seconds)
    model.fit(**fit_args, epochs=1, verbose=0, callbacks=[timer])
    return timer.steps() * batch_size / timer.seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared data directory (real CIFAR-10)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--variants", nargs="*", help="default: every variant of params.yaml")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per measurement (at most)")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="time budget per measurement")
    parser.add_argument("--ceiling", action="store_true",
                        help="also time the model on pre-normalized cached batches (no input work)")
    parser.add_argument("--precisions", nargs="+", choices=precision.PRECISIONS,
                        help="measure ours under each train.precision instead of against the seeds' way")
    parser.add_argument("--rounds", type=int, default=3,
                        help="--precisions: interleaved measurement rounds (the median is reported)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.precisions:
        return precision_table(args)

    params, names, prepared, train = inputs(args)
    meta, stats, split = prepared.meta, prepared.stats, prepared.train
    load_before = runinfo.load()
    started = dt.datetime.now(dt.timezone.utc)
    rows = []
    for name in names:
        variant = load_variant(name, params, str(args.params))
        if variant.model == "mobilenet":
            variant.model_args["weights"] = "none"
        bs = variant.batch_size
        spe = variant.steps_per_execution or train.steps_per_execution
        n = min(len(split), (args.steps + 2 * spe) * bs)  # enough for warm-up + timed steps

        # The seeds' way: float64 arrays, one step per call.
        seeds_run = loop.start_run(name, dataclasses.replace(variant, precision="float32"),
                                   TrainParams(steps_per_execution=1, jit_compile=False), 0, n)
        x64 = split.x[:n] / 255.0  # float64, like the seeds' `x_train / 255.`
        y64 = np.eye(meta.num_classes)[split.y[:n]]
        seeds_model = loop.build(seeds_run, meta.image_shape, meta.num_classes, stats)
        seeds_model.fit(x64[: 2 * bs], y64[: 2 * bs], batch_size=bs, epochs=1, verbose=0)  # trace
        seeds = images_per_second(seeds_model, {"x": x64, "y": y64, "batch_size": bs, "shuffle": True}, bs,
                         args.steps, args.max_seconds)
        del x64, y64, seeds_model

        # Ours: exactly the training pipeline of train@<name>.
        run, model, ds = stage_model(name, variant, train, prepared, n, "float32")
        model.fit(ds.take(spe), epochs=1, verbose=0, shuffle=False)  # trace one compiled call
        ours = images_per_second(model, {"x": ds, "shuffle": False}, bs, args.steps, args.max_seconds)

        ceiling = math.nan
        if args.ceiling:  # same compiled model, batches computed once and kept in memory
            # the validation pipeline: in order, not augmented, so one pass can be cached
            cached = loop.val_dataset(run, split.x[:n], prepared.train_labels[:n], stats).cache()
            for _ in cached:  # fill the cache before timing
                pass
            ceiling = images_per_second(model, {"x": cached, "shuffle": False}, bs, args.steps,
                                        args.max_seconds)
        rows.append((name, variant.model, bs, spe, variant.augment.enabled, seeds, ours, ceiling))
        print(f"{name:10s} batch {bs:3d}: seeds' way {seeds:8.0f} img/s, ours {ours:8.0f} img/s, "
              f"x{ours / seeds:.2f}, ceiling {ceiling:8.0f} img/s  (load {os.getloadavg()[0]:.1f})",
              flush=True)

    load_after = runinfo.load()
    lines = [
        "# Training throughput: our tf.data pipeline vs. the seeds' way",
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; machine: {platform.node()}, {os.cpu_count()} CPUs "
        f"({cpuinfo.cpu_model()}), CPU only, TensorFlow {_tf_version()}, "
        f"Keras {keras.__version__}.",
        f"- Load average (1/5/15 min) before: {load_before}; after: {load_after} (above the core count, "
        "other jobs shared the cores: absolute numbers are noisy, the ratio within a row is measured "
        "back to back).",
        f"- Data: {args.data} ({len(split)} real CIFAR-10 training images, 32x32x3).",
        f"- Command: `{runinfo.command()}`",
        "- Seeds' way: float64 `x / 255.` and float64 one-hot labels into `model.fit(x, y, batch_size)`, "
        "steps_per_execution 1. Ours: uint8 -> tf.data (shuffle indices, gather, cast, augment, "
        "normalize, prefetch), steps_per_execution as configured. Same model, optimizer, batch size; "
        "ours also pays for the variant's augmentation (the seeds' way has none). MobileNet with "
        "`weights: none` (same compute). Ceiling: the same model as ours on already-normalized "
        "float32 batches cached in memory (no input work at all).",
        f"- Each measurement: warm-up, then up to {args.steps} steps or {args.max_seconds:.0f} s.",
        "",
        "| variant | model | batch | steps/exec | augment | seeds' way (img/s) | ours (img/s) | speed-up "
        "| ceiling (img/s) | ceiling speed-up |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, model_name, bs, spe, aug, seeds, ours, ceiling in rows:
        top = ("- | -" if math.isnan(ceiling) else f"{ceiling:,.0f} | {ceiling / seeds:.2f}x")
        lines.append(f"| {name} | {model_name} | {bs} | {spe} | {'yes' if aug else 'no'} | {seeds:,.0f} | "
                     f"{ours:,.0f} | {ours / seeds:.2f}x | {top} |")
    write_keeping_reading(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


def inputs(args: argparse.Namespace) -> tuple:
    """params, variant names, the prepared data as training reads it and ``train:`` of the run."""
    params = config.read_params(args.params)
    names = args.variants or variant_names(params)
    train = config.load_section(TrainParams, "train", params=params)
    return params, names, loop.load_data(args.data), train


def stage_model(name: str, variant: VariantParams, train: TrainParams, prepared: loop.TrainingData,
                n: int, setting: str) -> tuple[loop.Run, keras.Model, tf.data.Dataset]:
    """The run, compiled model and training dataset of ``train@<name>`` on ``n`` images, built by the
    stage's own steps under precision ``setting`` (it overrides the variant's own ``precision`` too)."""
    run = loop.start_run(name, dataclasses.replace(variant, precision=setting), train, 0, n)
    ds, _ = loop.train_dataset(run, prepared.train.x[:n], prepared.train_labels[:n], prepared.stats)
    model = loop.build(run, prepared.meta.image_shape, prepared.meta.num_classes, prepared.stats)
    return run, model, ds


def traced_models(name: str, params: dict, params_path: str, train: TrainParams,
                  prepared: loop.TrainingData, steps: int,
                  settings: list[str]) -> tuple[int, dict[str, tuple[keras.Model, tf.data.Dataset]]]:
    """The batch size of ``train@<name>`` and, for each ``train.precision`` in ``settings``, its
    compiled model and training dataset (``stage_model``; MobileNet without weights, same compute)
    on enough images for ``steps`` timed steps, traced by one compiled call."""
    variant = load_variant(name, params, params_path)
    if variant.model == "mobilenet":
        variant.model_args["weights"] = "none"
    bs, spe = variant.batch_size, variant.steps_per_execution or train.steps_per_execution
    n = min(len(prepared.train), (steps + 2 * spe) * bs)
    runs = {}
    for setting in settings:
        _, model, ds = stage_model(name, variant, train, prepared, n, setting)
        model.fit(ds.take(spe), epochs=1, verbose=0, shuffle=False)  # trace one compiled call
        runs[setting] = (model, ds)
    return bs, runs


def precision_table(args: argparse.Namespace) -> None:
    """Images/s of every variant's training under each of ``args.precisions``, back to back."""
    params, names, prepared, train = inputs(args)
    flags = cpuinfo.cpu_flags()
    policies = {name: precision.resolve(name) for name in args.precisions}
    load_before, started = runinfo.load(), dt.datetime.now(dt.timezone.utc)
    rows = []
    for name in names:
        bs, runs = traced_models(name, params, str(args.params), train, prepared, args.steps, args.precisions)
        # Interleaved rounds, median per precision: a load change hits every precision alike.
        samples: dict[str, list[float]] = {s: [] for s in args.precisions}
        for _ in range(args.rounds):
            for setting, (model, ds) in runs.items():
                samples[setting].append(images_per_second(model, {"x": ds, "shuffle": False}, bs,
                                                          args.steps, args.max_seconds))
        speeds = [float(np.median(samples[s])) for s in args.precisions]
        del runs
        rows.append((name, bs, speeds))
        cells = zip(args.precisions, speeds, strict=True)
        print(f"{name:10s} " + "  ".join(f"{s}: {v:7.0f} img/s" for s, v in cells), flush=True)
        _precision_report(args, rows, flags, policies, load_before, started)  # keep what finished


def _precision_report(args: argparse.Namespace, rows: list, flags: set[str], policies: dict[str, str],
                      load_before: tuple[float, float, float], started: dt.datetime) -> None:
    """The --precisions report of the variants measured so far."""
    cpu = machine()["cpu"]
    base = args.precisions[0]
    lines = [
        "# Training throughput by train.precision",
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; CPU: {cpu}, {os.cpu_count()} cores; TensorFlow "
        f"{_tf_version()}, Keras {keras.__version__}.",
        f"- CPU flags seen: {bf16_flags(flags)} of bf16/AMX (avx512f: "
        f"{'yes' if 'avx512f' in flags else 'no'}); `auto` resolved to "
        f"`{policies.get('auto', precision.resolve('auto'))}`.",
        f"- Load average before: {load_before}; after: {runinfo.load()} (ratios within a "
        "row are measured back to back).",
        f"- Command: `{runinfo.command()}`",
        "- Each cell: the variant's own training pipeline (tf.data, augmentation, steps_per_execution), "
        f"warm-up, then up to {args.steps} steps or {args.max_seconds:.0f} s; images/s, median of "
        f"{args.rounds} rounds that alternate the precisions.",
        "",
        "| variant | batch | " + " | ".join(f"{s} ({policies[s]})" if s == "auto" else s
                                         for s in args.precisions)
        + " | " + " | ".join(f"{s} / {base}" for s in args.precisions[1:]) + " |",
        "|---|---:|" + "---:|" * (2 * len(args.precisions) - 1),
    ]
    for name, bs, speeds in rows:
        lines.append(f"| {name} | {bs} | " + " | ".join(f"{v:,.0f}" for v in speeds) + " | "
                     + " | ".join(f"{v / speeds[0]:.2f}x" for v in speeds[1:]) + " |")
    write_keeping_reading(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


def bf16_flags(flags: set[str]) -> str:
    """The bfloat16 and AMX flags among a CPU's ``flags`` (what ``auto`` decides by), or 'none'."""
    return ", ".join(sorted(f for f in flags if "bf16" in f or "amx" in f)) or "none"


def _tf_version() -> str:
    return tf.__version__


if __name__ == "__main__":
    main()
