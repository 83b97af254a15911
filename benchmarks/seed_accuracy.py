"""Test accuracy of the seeds' models trained by our pipeline, next to the figures the seeds report.

Trains each requested variant of ``params.yaml`` exactly as ``train@<variant>`` does
(``cifar_dvc.training.loop.train_variant``, dvclive logs included) on real prepared CIFAR-10,
with an optional per-variant epoch cap for the CPU budget, then evaluates the saved best model on
the test split and draws the learning curves from the dvclive logs. ``mlp_dropout05`` is the MLP
with dropout 0.5 and Adam's default 1e-3 (the reading of seed 000 that params.yaml argues against).

    nice -n 10 python benchmarks/seed_accuracy.py --data /tmp/real/data/prepared \
        --work /tmp/seed_acc --cap imp1=5 --out benchmarks/results/seed_accuracy.md

Reads params.yaml and the prepared data. Writes models and logs under ``--work``, and the
markdown report plus ``<out stem>_curves.png`` next to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime as dt
import os
from pathlib import Path

from cifar_dvc.tfenv import set_defaults

set_defaults()  # before TensorFlow loads: the stages' settings (oneDNN on), so this measures what they run

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import runinfo  # noqa: E402

from cifar_dvc import artifacts, config, inference  # noqa: E402
from cifar_dvc.cpuinfo import cpu_model  # noqa: E402
from cifar_dvc.training.loop import train_variant  # noqa: E402
from cifar_dvc.training.variant import TrainParams, load_seed, load_variant  # noqa: E402

# What the seeds report (their "validation" was the CIFAR-10 test set).
SEED_FIGURES = {
    "mlp": "44% (seed 000)",
    "mlp_dropout05": "44% (seed 000)",
    "cnn": "62% (seed 000)",
    "imp1": "87.3% (seed 004, Table 2)",
}
# Extra readings of a seed: (variant it derives from, params overrides).
DERIVED = {"mlp_dropout05": ("mlp", {"model_args": {"dropout": 0.5}, "optimizer": {"learning_rate": 1e-3}})}


def _curve(live: Path, split: str, metric: str) -> list[float]:
    path = live / "plots" / "metrics" / split / f"{metric}.tsv"
    with path.open() as f:
        return [float(row[metric]) for row in csv.DictReader(f, delimiter="\t")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--variants", nargs="*", default=["mlp", "mlp_dropout05", "cnn", "imp1"])
    parser.add_argument("--cap", nargs="*", default=[], help="NAME=EPOCHS caps for the CPU budget")
    parser.add_argument("--work", type=Path, required=True, help="directory for models and dvclive logs")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    caps = {k: int(v) for k, v in (c.split("=") for c in args.cap)}

    params = config.read_params(args.params)
    seed = load_seed(params)
    test = artifacts.load_split(args.data / "test.npz")
    meta = artifacts.load_meta(args.data)
    started = dt.datetime.now(dt.timezone.utc)
    load_before = runinfo.load()
    rows, curves = [], {}
    for name in args.variants:
        base, overrides = DERIVED.get(name, (name, {}))
        entry = copy.deepcopy(params["variants"][base])
        for key, value in overrides.items():
            entry[key] = {**entry.get(key, {}), **value} if isinstance(value, dict) else value
        variant = load_variant(name, {"variants": {name: entry}})
        train = TrainParams(max_epochs=caps.get(name), verbose="epoch")
        live = args.work / "dvclive" / name
        print(f"== {name}: {train.epochs_for(variant)} of {variant.epochs} epochs", flush=True)
        result = train_variant(name, variant, train, seed, args.data, args.work / "models" / f"{name}.keras",
                               live)
        # no TTA: the seeds had none
        accuracy = inference.accuracy(*inference.load(args.work / "models" / f"{name}.keras"), test.x, test.y)
        s = result.summary
        rows.append((name, variant.epochs, s["epochs_run"], s["best_epoch"], s["best_value"], accuracy,
                     s["train_seconds"], s["images_per_second"]))
        curves[name] = (_curve(live, "train", "accuracy"), _curve(live, "eval", "accuracy"))
        print(f"== {name}: test accuracy {accuracy:.4f}", flush=True)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, (train_acc, val_acc)) in enumerate(curves.items()):
        epochs = range(1, len(train_acc) + 1)
        ax.plot(epochs, train_acc, "-", color=f"C{i}", label=f"{name} train")
        ax.plot(epochs, val_acc, "--", color=f"C{i}", label=f"{name} validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_title("Learning curves (dvclive logs), real CIFAR-10")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    png = args.out.with_name(f"{args.out.stem}_curves.png")
    fig.tight_layout()
    fig.savefig(png, dpi=100)

    lines = [
        "# Test accuracy of the seeds' models, trained by the pipeline",
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; machine: {cpu_model()}, {os.cpu_count()} CPUs, CPU only.",
        f"- Load average before: {load_before}; after: {runinfo.load()}.",
        f"- Data: real CIFAR-10 ({meta.dataset}) prepared by the pipeline: {args.data} "
        f"(train {len(artifacts.load_split(args.data / 'train.npz'))}, validation = 10% of train, "
        f"test {len(test)} = the official test batch). The seeds validated on the test set.",
        f"- Command: `{runinfo.command()}`",
        "- Each variant trained with its params.yaml recipe (seed "
        f"{seed}); `epochs` = the recipe's, `run` = after the CPU-budget cap. The saved model is the best "
        "epoch by validation accuracy; test accuracy is that model's on the 10,000 test images.",
        "",
        "| variant | epochs (recipe) | run | best epoch | best val acc | test acc | seed's figure | "
        "train time (s) | images/s |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name, planned, run, best, best_val, acc, secs, ips in rows:
        lines.append(f"| {name} | {planned} | {run} | {best} | {best_val:.4f} | **{acc:.4f}** | "
                     f"{SEED_FIGURES.get(name, '-')} | {secs:.0f} | {ips:.0f} |")
    lines += ["", f"Learning curves: ![curves]({png.name})", "",
              "Per-epoch accuracy (train / validation):", ""]
    for name, (train_acc, val_acc) in curves.items():
        pairs = ", ".join(f"{t:.3f}/{v:.3f}" for t, v in zip(train_acc, val_acc, strict=True))
        lines.append(f"- {name}: {pairs}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
