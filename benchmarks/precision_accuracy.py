"""Does train.precision change accuracy? The same variants trained in float32 and mixed_bfloat16.

Each variant is trained twice by ``cifar_dvc.training.loop.train_variant`` (the code of
``train@<name>``), same seed, same data, same epochs; only ``train.precision`` differs. The saved
models (float32 whatever trained them) are then scored on the test split. On a CPU without AMX
bfloat16 is emulated and several times slower: the point here is the accuracy, the speed is in
``precision_throughput.md``.

One pair of runs cannot resolve a small difference for a recipe whose accuracy swings from epoch
to epoch; ``--seeds`` trains one pair per seed (seed = weight init and data order, each pair
shares it) and reports the mean paired difference with its standard error.

    nice -n 5 python benchmarks/precision_accuracy.py --data /work/repro/data/prepared \
        --variants cnn imp1 --epochs 10 [--train-subset imp1=10000] [--seeds 7 8 9]

Reads params.yaml and the prepared data. Writes ``--out`` (default
benchmarks/results/precision_accuracy.md; one report per machine keeps the pairs comparable) and
models into ``--work`` (default a temporary folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import statistics
import tempfile
from pathlib import Path

from cifar_dvc.tfenv import set_defaults

set_defaults()  # before TensorFlow loads: the stages' settings (oneDNN on), so this measures what they run

import numpy as np  # noqa: E402
import runinfo  # noqa: E402
from reproduction import machine, machine_label, write_keeping_reading  # noqa: E402

from cifar_dvc import artifacts, config, inference  # noqa: E402
from cifar_dvc.datasets.split import stratified_take  # noqa: E402
from cifar_dvc.training.loop import train_variant  # noqa: E402
from cifar_dvc.training.variant import TrainParams, load_seed, load_variant  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "precision_accuracy.md"
PRECISIONS = ("float32", "mixed_bfloat16")


def _subset_dir(data: Path, n: int, seed: int, work: Path) -> Path:
    """A prepared folder whose training split is a stratified ``n``-image subset of ``data``'s."""
    out = work / f"prepared-{n}"
    if not out.exists():
        out.mkdir(parents=True)
        train = artifacts.load_split(data / "train.npz")
        keep = stratified_take(train.y, n, np.random.default_rng(seed))
        # training reads prepare's one-hot labels too (artifacts.onehot_labels)
        artifacts.save_split(out / "train.npz", train.x[keep], train.y[keep],
                             y_onehot=train.extra["y_onehot"][keep])
        for name in ("val.npz", "test.npz", "meta.json", "normalization.json"):
            (out / name).symlink_to((data / name).resolve())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared data directory (real CIFAR-10)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--variants", nargs="+", required=True)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every run (train.max_epochs)")
    parser.add_argument("--train-subset", nargs="*", default=[], metavar="VARIANT=N",
                        help="train that variant on a stratified subset of N training images")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="one float32/bfloat16 pair per seed (default: params.yaml's seed)")
    parser.add_argument("--work", type=Path, default=None, help="models go here (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=OUT,
                        help="the report (default: results/precision_accuracy.md); its Reading is kept")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="precision-accuracy-"))
    params = config.read_params(args.params)
    seed = load_seed(params)  # also picks the training subset, the same for every --seeds pair
    args.seeds = args.seeds or [seed]
    subsets = {k: int(v) for k, v in (item.split("=") for item in args.train_subset)}
    test = artifacts.load_split(args.data / "test.npz")
    started = dt.datetime.now(dt.timezone.utc)
    rows = []
    for name in args.variants:
        variant = load_variant(name, params, str(args.params))
        data = _subset_dir(args.data, subsets[name], seed, work) if name in subsets else args.data
        for run_seed in args.seeds:
            results = {}
            for policy in PRECISIONS:
                train = TrainParams(max_epochs=args.epochs, verbose="epoch")
                model_path = work / policy / f"{name}-seed{run_seed}.keras"
                # Set on the variant: a variant's own precision key would win over train.precision.
                result = train_variant(name, dataclasses.replace(variant, precision=policy), train,
                                       run_seed, data, model_path,
                                       work / policy / "live" / f"{name}-seed{run_seed}")
                # no TTA: the plain network
                accuracy = inference.accuracy(*inference.load(model_path), test.x, test.y)
                results[policy] = (accuracy, result.summary)
                print(f"{name} seed {run_seed} {policy}: test {accuracy:.4f}, "
                      f"{result.summary['seconds']:.0f} s", flush=True)
            rows.append((name, run_seed, results))
            _write(rows, args, started)  # after every pair: a long run keeps what finished


def paired_difference(pairs: list[tuple[float, float]]) -> tuple[float, float | None]:
    """Mean of ``b - a`` over (a, b) pairs and its standard error (None for a single pair)."""
    diffs = [b - a for a, b in pairs]
    if len(diffs) < 2:
        return diffs[0], None
    return statistics.fmean(diffs), statistics.stdev(diffs) / len(diffs) ** 0.5


def _write(rows: list, args: argparse.Namespace, started: dt.datetime) -> None:
    """The report of the pairs done so far."""
    lines = [
        "# Test accuracy by train.precision: float32 against mixed_bfloat16",
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; machine: {machine_label(machine())}.",
        f"- Data: {args.data} (real CIFAR-10, JPEG copy); test = the 10,000 official test images.",
        f"- Command: `{runinfo.command()}`",
        f"- Seeds {', '.join(map(str, args.seeds))}: each pair shares its seed, data, epochs and recipe; "
        "only `train.precision` differs. Test accuracy of "
        "the saved (float32) model, no TTA. Wall and CPU minutes of training (load average at the end: "
        f"{runinfo.load()}).",
        "",
        "| variant | seed | train images | epochs | float32 test | mixed_bfloat16 test | difference (points) "
        "| float32 CPU min | bfloat16 CPU min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run_seed, res in rows:
        (a32, s32), (a16, s16) = res["float32"], res["mixed_bfloat16"]
        lines.append(f"| {name} | {run_seed} | {s32['train_images']:,} | {s32['epochs_run']} | "
                     f"{100 * a32:.2f}% | {100 * a16:.2f}% | {100 * (a16 - a32):+.2f} | "
                     f"{s32['cpu_seconds'] / 60:.1f} | {s16['cpu_seconds'] / 60:.1f} |")
    summary = []
    for name in dict.fromkeys(r[0] for r in rows):
        pairs = [(res["float32"][0], res["mixed_bfloat16"][0]) for n, _, res in rows if n == name]
        if len(pairs) > 1:
            mean, err = paired_difference(pairs)
            summary.append(f"- {name}: bfloat16 - float32 over {len(pairs)} seeds: {100 * mean:+.2f} points, "
                           f"standard error {100 * err:.2f} (mean float32 "
                           f"{100 * statistics.fmean(a for a, _ in pairs):.2f}%, bfloat16 "
                           f"{100 * statistics.fmean(b for _, b in pairs):.2f}%)")
    if summary:
        lines += ["", "Paired over seeds:", "", *summary]
    write_keeping_reading(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
