"""Measure the ``fast`` variant's recipe on real CIFAR-10 (run by hand, never by the tests).

``train`` runs ``variants.fast`` of params.yaml through the training stage's own steps
(``cifar_dvc.training.loop``: ``start_run``, ``train_dataset``, ``build`` with the whitening init
under the stage's strategy and ``train.precision: auto``, ``training_callbacks``: lookahead,
whitening-bias freeze, ..., ``fit``; ``cifar_dvc.inference.tta_function``), on all 50,000
training images, and tests the weights (their EMA average when ``optimizer.use_ema``, lent by
``loop.averaged_weights``) on the 10,000 test images after the epochs from ``--eval-from`` on,
logging test accuracy against training wall-clock (testing time is excluded from the clock and
reported separately). The only differences from ``dvc repro train@fast``: the data come from
the JPEG copy of CIFAR-10 (decoded once with Pillow into ``/tmp/cifar10_jpeg_*.npy``, never into
the repository), there is no validation split (the stage holds 5,000 out), and the test set is
scored during training.

Modes:

    # images/s of a few widths, ~50 training steps each (pick the width that fits the budget)
    nice -n 10 .venv/bin/python benchmarks/fast_recipe.py probe --widths 16 32 48 64 --steps 50

    # the share of an epoch that validating with TTA takes (variants.fast.val_tta_every)
    nice -n 10 .venv/bin/python benchmarks/fast_recipe.py tta-cost

    # one full training run of variants.fast (overrides: --epochs, --width, --batch-size)
    nice -n 10 .venv/bin/python benchmarks/fast_recipe.py train --width 64 --epochs 12 --eval-from 9 \
        --out /tmp/fast_w64e12.md --log /tmp/fast_w64e12.jsonl

Reads: params.yaml and the JPEG archive (``--archive``). Writes: ``/tmp/cifar10_jpeg_*.npy``
(cache), the results markdown (``--out``) and a JSON-lines log of the curve (``--log``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import io
import json
import os
import platform
import re
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from cifar_dvc.tfenv import set_defaults

set_defaults()  # before TensorFlow loads: the stages' settings (oneDNN on), so this measures what they run

import keras  # noqa: E402
import numpy as np  # noqa: E402
import runinfo  # noqa: E402  (benchmarks/runinfo.py)
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# after the path and log-level setup
from cifar_dvc import atomic, config, inference  # noqa: E402
from cifar_dvc.cpuinfo import cpu_model  # noqa: E402
from cifar_dvc.datasets.split import one_hot  # noqa: E402
from cifar_dvc.modelinfo import ModelInfo  # noqa: E402
from cifar_dvc.models.fast import build_fast  # noqa: E402
from cifar_dvc.normalization import compute_stats  # noqa: E402
from cifar_dvc.training import loop  # noqa: E402
from cifar_dvc.training.variant import TrainParams, VariantParams, load_seed, load_variant  # noqa: E402

ARCHIVE = Path("/work/shared/data/cifar10-jpeg.tar.gz")
CACHE = Path("/tmp")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEMBER = re.compile(r"^(?:\./)?(train|test)/([a-z]+)/(\d+)\.jpg$")


def load_cifar(archive: Path = ARCHIVE, cache: Path = CACHE) -> dict[str, np.ndarray]:
    """x_train, y_train, x_test, y_test as uint8 NHWC / int64, decoded once and cached as .npy."""
    names = ("x_train", "y_train", "x_test", "y_test")
    paths = {n: cache / f"cifar10_jpeg_{n}.npy" for n in names}
    if all(p.exists() for p in paths.values()):
        return {n: np.load(p) for n, p in paths.items()}
    found: dict[str, list[tuple[int, int, np.ndarray]]] = {"train": [], "test": []}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            match = MEMBER.match(member.name)
            if not member.isfile() or not match:
                continue
            split, cls, number = match.groups()
            data = tar.extractfile(member).read()
            with Image.open(io.BytesIO(data)) as img:
                pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
            found[split].append((CLASSES.index(cls), int(number), pixels))
    out = {}
    for split in ("train", "test"):
        # original order within each class, classes interleaved by number (the shuffle happens later)
        items = sorted(found[split], key=lambda t: (t[1], t[0]))
        out[f"x_{split}"] = np.stack([t[2] for t in items])
        out[f"y_{split}"] = np.array([t[0] for t in items], dtype=np.int64)
    for n, p in paths.items():
        tmp = p.with_suffix(".tmp.npy")
        np.save(tmp, out[n])
        tmp.replace(p)
    return out


def variant_for(args: argparse.Namespace) -> VariantParams:
    """``variants.<args.variant>`` of params.yaml with the command line's overrides.

    ``--epochs`` keeps the schedule's warm-up as the same fraction of the run.
    """
    params = config.read_params(args.params)
    variant = load_variant(args.variant, params, str(args.params))
    if args.width is not None:
        variant.model_args["width"] = args.width
    if args.epochs is not None:
        variant.schedule.warmup_epochs *= args.epochs / variant.epochs
        variant.epochs = args.epochs
    if args.batch_size is not None:
        variant.batch_size = args.batch_size
    return variant


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads)."""
    t = os.times()
    return t.user + t.system


def timed_fast(batch_size: int, steps: int, **model_args: Any) -> tuple[keras.Model, float]:
    """A compiled ``fast`` network of ``model_args`` and its training images/s at ``batch_size`` on
    random data (no input pipeline): traced and warmed up by one pass over 4 batches, then timed
    over about ``steps`` steps."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch_size * 4, 32, 32, 3)).astype(np.float32)
    y = keras.utils.to_categorical(rng.integers(0, 10, len(x)), 10)
    model = build_fast((32, 32, 3), 10, **model_args)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.2))
    model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)  # trace + warm up
    epochs = max(1, steps // 4)
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0)
    return model, epochs * len(x) / (time.perf_counter() - start)


def probe(args: argparse.Namespace) -> None:
    """Training images/s of each width at the given batch size (random data, ~args.steps steps)."""
    print(f"# load before: {runinfo.load()}", flush=True)
    for width in args.widths:
        model, ips = timed_fast(args.batch_size, args.steps, width=width)
        print(f"width {width:3d}  params {model.count_params():>9,}  batch {args.batch_size}  "
              f"{ips:7.1f} img/s  epoch of 50k: {50000 / ips / 60:5.2f} min  load {runinfo.load()}",
              flush=True)


def tta_cost(args: argparse.Namespace) -> None:
    """What validation with TTA costs an epoch: training images/s of the variant's network
    (``timed_fast``, as ``probe``) and the time of ``inference.predict`` over ``--val-images``
    images at TTA 0 and at the variant's level, in this one process; the share of a
    ``--train-images`` epoch that validating with TTA every epoch takes (``val_tta_every``)."""
    variant = variant_for(args)
    print(f"# load before: {runinfo.load()}; {cpu_model()}", flush=True)
    model, ips = timed_fast(variant.batch_size, 4 * args.train_epochs, **variant.model_args)
    epoch_s = args.train_images / ips
    images = np.random.default_rng(0).integers(0, 256, size=(args.val_images, 32, 32, 3), dtype=np.uint8)
    info = ModelInfo("probe", "cifar10", [str(i) for i in range(10)], (32, 32, 3),
                     compute_stats(images, "standardize"), tta=variant.tta)
    seconds = {}
    for level in sorted({0, variant.tta}):
        inference.predict(model, info, images[:variant.batch_size], level)  # trace
        start = time.perf_counter()
        inference.predict(model, info, images, level)
        seconds[level] = time.perf_counter() - start
    tta_s = seconds[variant.tta]
    print(f"train {ips:.1f} img/s -> {epoch_s:.0f} s per {args.train_images:,}-image epoch; validation of "
          f"{args.val_images:,} images: TTA 0 {seconds[0]:.1f} s, TTA {variant.tta} {tta_s:.1f} s = "
          f"{100 * tta_s / (epoch_s + tta_s):.1f}% of an epoch with it; load {runinfo.load()}", flush=True)


def train(args: argparse.Namespace) -> None:
    """The stage's own recipe (``train_variant``'s steps) on 50,000 images, tested every epoch."""
    variant = variant_for(args)
    seed = load_seed(config.read_params(args.params))
    t0 = time.perf_counter()
    data = load_cifar(args.archive)
    print(f"# data {data['x_train'].shape} {data['x_test'].shape} in {time.perf_counter() - t0:.1f} s",
          flush=True)
    # The pipeline's own statistics code (float64 accumulation: a float32 sum of 51M values stalls).
    stats = compute_stats(data["x_train"], "standardize")
    num_classes = len(CLASSES)
    run = loop.start_run(args.variant, variant, TrainParams(verbose="silent"), seed, len(data["x_train"]))
    train_ds, _ = loop.train_dataset(run, data["x_train"], one_hot(data["y_train"], num_classes), stats)
    test_ds = tf.data.Dataset.from_tensor_slices(data["x_test"]).batch(1000).prefetch(2)  # uint8
    model = loop.build(run, (32, 32, 3), num_classes, stats, init_images=data["x_train"])
    predict = inference.tta_function(model, stats, variant.tta)  # normalizes the uint8 batches itself

    log_path = Path(args.log)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    class Clock(keras.callbacks.Callback):
        """Training wall-clock per epoch and test accuracy (EMA weights swapped in, TTA)."""

        def __init__(self):
            super().__init__()
            self.train_seconds = 0.0
            self.train_cpu = 0.0
            self.eval_seconds = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()
            self.cpu_start = cpu_seconds()

        def test_accuracy(self) -> float:
            t = time.perf_counter()
            with loop.averaged_weights(model):  # EMA weights if any, training's back after
                probs = np.concatenate([predict(x).numpy() for x in test_ds])
            self.eval_seconds += time.perf_counter() - t
            return float((probs.argmax(1) == data["y_test"]).mean())

        def on_epoch_end(self, epoch, logs=None):
            self.train_seconds += time.perf_counter() - self.start
            self.train_cpu += cpu_seconds() - self.cpu_start
            acc = None
            if epoch + 1 >= min(args.eval_from, variant.epochs):
                acc = round(self.test_accuracy(), 4)
            row = {"epoch": epoch + 1, "train_minutes": round(self.train_seconds / 60, 3),
                   # CPU time of this process over both cores / 2: the wall-clock the same work
                   # would take on 2 dedicated cores (an estimate when the cores are shared)
                   "dedicated_minutes": round(self.train_cpu / 2 / 60, 3),
                   "test_accuracy": acc, "train_accuracy": round(float(logs["accuracy"]), 4),
                   "train_loss": round(float(logs["loss"]), 4), "load": runinfo.load()}
            rows.append(row)
            print(json.dumps(row), flush=True)
            with log_path.open("a") as f:
                f.write(json.dumps(row) + "\n")

    clock = Clock()
    load_start = runinfo.load()
    # the callbacks that change what is trained (lookahead, whitening-bias freeze, ...), as the stage's
    recipe, _ = loop.training_callbacks(run)
    loop.fit(run, model, train_ds, [*recipe, clock])
    write_results(args, variant, rows, clock, model.count_params(), load_start, run.precision)


def write_results(args: argparse.Namespace, variant: VariantParams, rows: list[dict], clock,
                  params: int, load_start: str, precision: str) -> None:
    tested = [r for r in rows if r["test_accuracy"] is not None]
    to90 = next((r for r in tested if r["test_accuracy"] >= 0.90), None)
    best = max(tested, key=lambda r: r["test_accuracy"])
    weights = "EMA weights" if variant.optimizer.use_ema else "raw weights"
    cpu = cpu_model()
    recipe = json.dumps(dataclasses.asdict(variant), sort_keys=True)
    lines = [
        "# `fast` variant: CIFAR-10 test accuracy against training wall-clock",
        "",
        f"- Machine: {platform.node()}, {cpu}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Command: `{runinfo.command()}`",
        f"- Load average (1/5/15 min) at start: {load_start}; at end: {runinfo.load()} (per epoch in "
        "the table: above 2 means other jobs shared the 2 cores and the times are upper bounds).",
        f"- Data: real CIFAR-10 from the JPEG re-encoding (quality ~75) in `{args.archive}`, "
        "50,000 train / 10,000 test; expect a point or two below the original pickles.",
        f"- Recipe: `variants.{args.variant}` of `{args.params}` run through the stage's own code "
        f"(`loop.start_run`, `train_dataset`, `build`, `training_callbacks`, `fit`; "
        f"`inference.tta_function`; precision {precision}), "
        f"{params:,} parameters: `{recipe}`",
        f"- Result: best test accuracy {best['test_accuracy']:.2%} (epoch {best['epoch']}); final "
        f"{tested[-1]['test_accuracy']:.2%} after {rows[-1]['train_minutes']:.1f} training minutes.",
        "- Minutes to 90%: " + (f"**{to90['train_minutes']:.1f}** (epoch {to90['epoch']})" if to90
                                 else "not reached in this run") + ".",
        f"- Evaluation time (not counted above): {clock.eval_seconds / 60:.1f} min in all.",
        "",
        f"| epoch | training minutes | CPU-minutes / 2 | test accuracy ({weights}, TTA {variant.tta}) "
        "| train accuracy "
        "| train loss | load 1/5/15 |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines += [f"| {r['epoch']} | {r['train_minutes']:.2f} | {r['dedicated_minutes']:.2f} | "
              f"{'not tested' if r['test_accuracy'] is None else format(r['test_accuracy'], '.2%')} | "
              f"{r['train_accuracy']:.2%} | {r['train_loss']:.3f} | "
              f"{r['load']} |" for r in rows]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out, "\n".join(lines) + "\n")
    print(f"# wrote {out}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("probe", help="training images/s of a few widths")
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32, 48, 64])
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=50)
    # the variant and its command-line overrides (variant_for), shared by train and tta-cost
    v = argparse.ArgumentParser(add_help=False)
    v.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    v.add_argument("--variant", default="fast")
    v.add_argument("--width", type=int, help="override model_args.width")
    v.add_argument("--epochs", type=int, help="override epochs (the warm-up keeps its fraction)")
    v.add_argument("--batch-size", type=int, help="override batch_size")
    t = sub.add_parser("train", parents=[v], help="one full training run with the per-epoch curve")
    t.add_argument("--archive", type=Path, default=ARCHIVE)
    t.add_argument("--eval-from", type=int, default=1, help="first epoch tested (testing costs time)")
    t.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fast_run.md"))
    t.add_argument("--log", default="/tmp/fast_recipe_curve.jsonl")
    c = sub.add_parser("tta-cost", parents=[v], help="share of an epoch that validation with TTA takes")
    c.add_argument("--train-epochs", type=int, default=3, help="timed passes over 4 batches")
    c.add_argument("--train-images", type=int, default=45_000, help="images of an epoch (the stage's split)")
    c.add_argument("--val-images", type=int, default=5_000, help="validation images (the stage's split)")
    args = parser.parse_args(argv)
    {"probe": probe, "train": train, "tta-cost": tta_cost}[args.mode](args)


if __name__ == "__main__":
    main()
