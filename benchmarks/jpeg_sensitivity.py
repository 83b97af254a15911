"""How much does JPEG re-encoding cost a variant? The same recipe on the data as is and re-encoded.

Our real CIFAR-10 is a public mirror's JPEG copy (quality about 75, about 6/255 mean absolute
pixel error against the original pickles, ``../shared/data/README.md``); the seeds trained on the
originals, which cannot be had here. So the cost of that first re-encoding cannot be measured
directly; this measures the cost of one more, of a known size: every split of the prepared data
(train, validation, test) is re-encoded at ``--quality`` by Pillow, and the variant is trained on
each copy with the same seed, recipe and epochs (``train_variant``, the code of ``train@<name>``).
If a second re-encoding that adds about as much pixel error as the mirror's costs the variant a
few points of training and test accuracy per epoch, the mirror's plausibly cost it about as much.

    nice -n 5 python benchmarks/jpeg_sensitivity.py --data /work/repro/data/prepared \
        --variant nb_elu --epochs 3 --quality 50

Reads params.yaml and the prepared data. Writes benchmarks/results/jpeg_sensitivity.md (keeping
its ``## Reading``) and the copies and models into ``--work`` (default a temporary folder).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import tempfile
from pathlib import Path

from cifar_dvc.tfenv import set_defaults

set_defaults()  # before TensorFlow loads: the stages' settings (oneDNN on), so this measures what they run

import numpy as np  # noqa: E402
import runinfo  # noqa: E402
from PIL import Image  # noqa: E402
from reproduction import machine, machine_label, write_keeping_reading  # noqa: E402

from cifar_dvc import artifacts, config, inference  # noqa: E402
from cifar_dvc.training.loop import train_variant  # noqa: E402
from cifar_dvc.training.variant import TrainParams, load_seed, load_variant  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "jpeg_sensitivity.md"
SPLITS = ("train.npz", "val.npz", "test.npz")
PASSED_ON = ("meta.json", "normalization.json")  # the copy keeps the original's classes and scaling


def reencode(images: np.ndarray, quality: int) -> np.ndarray:
    """``images`` (uint8, N x H x W x 3) through a JPEG encode and decode at ``quality``."""
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


def mean_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute pixel difference of two uint8 arrays, in 0..255 units."""
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))


def reencoded_copy(data: Path, quality: int, out: Path) -> float:
    """Write ``data``'s prepared splits re-encoded at ``quality`` into ``out``; return the training
    split's mean absolute pixel error against ``data``."""
    out.mkdir(parents=True, exist_ok=True)
    error = 0.0
    for name in SPLITS:
        split = artifacts.load_split(data / name)
        x = reencode(split.x, quality)
        if name == "train.npz":
            error = mean_abs_error(split.x, x)
        artifacts.save_split(out / name, x, split.y, **split.extra)
    for name in PASSED_ON:
        (out / name).write_bytes((data / name).read_bytes())
    return error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared data directory (real CIFAR-10)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--variant", required=True)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of every run (train.max_epochs)")
    parser.add_argument("--quality", nargs="+", type=int, required=True,
                        help="JPEG qualities of the re-encoded copies (1-95)")
    parser.add_argument("--work", type=Path, default=None,
                        help="copies and models go here (default: a temp folder)")
    args = parser.parse_args()
    if not all(1 <= q <= 95 for q in args.quality):
        parser.error(f"--quality: expected integers in 1..95, got {args.quality}")
    work = args.work or Path(tempfile.mkdtemp(prefix="jpeg-sensitivity-"))
    params = config.read_params(args.params)
    seed = load_seed(params)
    variant = load_variant(args.variant, params, str(args.params))
    started = dt.datetime.now(dt.timezone.utc)
    rows = []
    for quality in [None, *args.quality]:
        if quality is None:
            tag, label, data, error = "as-is", "as is", args.data, 0.0
        else:
            tag, label = f"q{quality}", f"re-encoded at quality {quality}"
            data = work / f"prepared-{tag}"
            error = reencoded_copy(args.data, quality, data)
        result = train_variant(args.variant, variant, TrainParams(max_epochs=args.epochs, verbose="epoch"),
                               seed, data, work / tag / f"{args.variant}.keras", work / tag / "live")
        test = _test_accuracy(work / tag / f"{args.variant}.keras", data)
        rows.append((label, error, result.history, result.summary, test))
        print(f"{args.variant} {label}: test {test:.4f}", flush=True)
        _write(rows, args, started)  # after every copy: a long run keeps what finished


def _test_accuracy(model_path: Path, data: Path) -> float:
    """Plain (no TTA) accuracy of the saved model on ``data``'s own test split."""
    test = artifacts.load_split(data / "test.npz")
    return inference.accuracy(*inference.load(model_path), test.x, test.y)


def _per_epoch(values: list[float]) -> str:
    return ", ".join(f"{100 * v:.1f}" for v in values)


def _write(rows: list, args: argparse.Namespace, started: dt.datetime) -> None:
    """The report of the copies trained so far."""
    first = rows[0][3]
    lines = [
        f"# JPEG sensitivity of `{args.variant}`: the same recipe on the data as is and re-encoded",
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; machine: {machine_label(machine())}.",
        f"- Data: {args.data} (real CIFAR-10, the mirror's JPEG copy), {first['train_images']:,} train / "
        f"{first['val_images']:,} validation / the 10,000 official test images; each copy re-encodes "
        "all three splits (Pillow, 4:2:0 chroma).",
        f"- Command: `{runinfo.command()}`",
        f"- Same seed ({first['seed']}), recipe, precision ({first['precision']}) and epochs for every "
        "copy; only the pixels differ. Pixel error: mean absolute difference of the training images "
        "from the copy as is, in 0..255 units (the mirror's from the originals: about 6). Training "
        "accuracy = Keras' running figure over each epoch (dropout on). "
        f"Load average at the end: {runinfo.load()}.",
        "",
        "| data | pixel error | training accuracy per epoch (%) | validation accuracy per epoch (%) | test | "
        "CPU min |",
        "|---|---:|---|---|---:|---:|",
    ]
    for label, error, hist, summary, test in rows:
        lines.append(f"| {label} | {error:.1f} | {_per_epoch(hist['accuracy'])} | "
                     f"{_per_epoch(hist['val_accuracy'])} | {100 * test:.2f}% | "
                     f"{summary['cpu_seconds'] / 60:.1f} |")
    base = rows[0]
    for label, error, hist, _, test in rows[1:]:
        changes = [a - b for a, b in zip(hist["accuracy"], base[2]["accuracy"], strict=True)]
        lines += ["", f"- {label} ({error:.1f}/255 more pixel error), minus as is: training accuracy "
                  f"{', '.join(f'{100 * c:+.1f}' for c in changes)} points per epoch, test "
                  f"{100 * (test - base[4]):+.2f} points."]
    write_keeping_reading(OUT, "\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
