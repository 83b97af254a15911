"""Time the custom stage on real photos and render its contact sheet (run by hand, never by the tests).

Extracts the development photo set (``custom-photos-dev/<class>/<file>``, 100 real photos, never
committed) into a temporary folder under ``/tmp``, writes a minimal CIFAR-10 ``prepared`` folder
(``meta.json`` with the ten classes, ``normalization.json``) beside it, and then:

1. times ``cifar_dvc.custom_set.process_photo`` on every photo (decode, orient, square, resize,
   the filtered blur and the five sweep blurs: everything the stage does per photo), twice, keeping
   the faster run of each photo so that a busy neighbour on the shared machine counts less;
2. runs the whole stage (``python -m stages.custom``) once and times it end to end;
3. times ``images.to_model_input`` (filtered) on synthetic square photos up to 4000 px, the sizes
   a phone sends to the web demo;
4. compares sharpness (mean absolute difference of horizontal neighbours, 0..255) of the
   unfiltered and filtered 32x32 sets, resized with ``lanczos`` and with ``nearest``, against real
   CIFAR-10 test images (``--cifar-jpeg``, 200 a class; JPEG re-encoded, see ../shared/data/README.md).

The sets and the contact sheet go to ``--work`` (default ``/tmp/custom-photos-bench``); the
results to ``benchmarks/results/custom_photos.md``.

    nice -n 10 .venv/bin/python benchmarks/custom_photos.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import runinfo  # benchmarks/runinfo.py
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cifar_dvc import artifacts, images, normalization  # noqa: E402  (after the path setup)
from cifar_dvc.custom_set import (  # noqa: E402
    CustomParams,
    build_custom_sets,
    find_photos,
    process_photo,
    set_divisors,
)

ARCHIVE = Path("/work/shared/data/custom-photos-dev.tar.gz")
CIFAR_JPEG = Path("/work/shared/data/cifar10-jpeg.tar.gz")
NOTES = "## Looked at by hand"
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# CIFAR-10 training-set channel statistics (the usual published values), as prepare's standardize saves them.
CIFAR10_STATS = normalization.NormStats("standardize", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--cifar-jpeg", type=Path, default=CIFAR_JPEG)
    parser.add_argument("--work", type=Path, default=Path("/tmp/custom-photos-bench"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "custom_photos.md")
    args = parser.parse_args()

    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with tarfile.open(args.archive) as tar:
        tar.extractall(work, filter="data")
    photos = work / "custom-photos-dev"
    prepared = work / "prepared"
    artifacts.save_meta(prepared, artifacts.Meta("cifar10", CIFAR10, (32, 32, 3)))
    normalization.save_stats(prepared / normalization.STATS_FILE, CIFAR10_STATS)
    load_before = runinfo.load()

    params = CustomParams()
    divisors = set_divisors(params)
    found, problems = find_photos(photos, CIFAR10)
    per_photo: list[tuple[str, float, int, int, int, str]] = []
    cpu: list[float] = []  # CPU seconds of the process: less sensitive than wall time to busy neighbours
    for path, label in found:
        rel = path.relative_to(photos).as_posix()
        best, best_cpu = float("inf"), float("inf")
        for _ in range(2):
            start, start_cpu = time.perf_counter(), time.process_time()
            record, _arrays = process_photo(path, rel, label, 32, 3, divisors, params)
            best = min(best, time.perf_counter() - start)
            best_cpu = min(best_cpu, time.process_time() - start_cpu)
        cpu.append(best_cpu)
        with Image.open(path) as img:
            mode = f"{img.format} {img.mode}"
        per_photo.append((rel, best, record.width, record.height, record.kernel_size["filtered"], mode))

    sheet = work / "plots" / "contact_sheet.png"
    cmd = [sys.executable, "-m", "stages.custom", "--photos", str(photos), "--prepared", str(prepared),
           "--out", str(work / "custom_sets"), "--sheet", str(sheet)]
    start = time.perf_counter()
    stage = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    stage_seconds = time.perf_counter() - start
    report = json.loads((work / "custom_sets" / "report.json").read_text())

    rng = np.random.default_rng(0)
    large = []
    for side in (500, 1000, 2000, 3000, 4000):
        img = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        times, cpu_times = [], []
        for _ in range(2):
            start, start_cpu = time.perf_counter(), time.process_time()
            images.to_model_input(img, 32, blur_divisor=75)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - start_cpu)
        large.append((side, images.blur_kernel_size(side, 75), min(times), min(cpu_times)))
    sharpness = {}
    meta = artifacts.load_meta(prepared)
    for resample in ("lanczos", "nearest"):
        sets = build_custom_sets(photos, meta, CustomParams(resample=resample, sweep_divisors=[]))
        sharpness[resample] = {name: _sharpness(sets.images[name]) for name in ("unfiltered", "filtered")}
    cifar = _sharpness(_cifar_test_images(args.cifar_jpeg, per_class=200))
    load_after = runinfo.load()

    seconds = [t for _, t, *_ in per_photo]
    kernels = sorted({s for *_, s, _ in per_photo})
    by_kernel = {s: [t for _, t, _, _, k, _ in per_photo if k == s] for s in kernels}
    modes: dict[str, int] = {}
    for *_, mode in per_photo:
        modes[mode] = modes.get(mode, 0) + 1
    slowest = sorted(per_photo, key=lambda row: -row[1])[:3]
    widths = [w for _, _, w, _, _, _ in per_photo]
    lines = [
        "# Custom test set on 100 real photos (`benchmarks/custom_photos.py`)",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, Pillow {Image.__version__}, NumPy {np.__version__}",
        f"- Load average (1/5/15 min) before: {load_before}, after: {load_after}",
        f"- Command: `{runinfo.command()}`",
        f"- Photos: {len(found)} in {len(set(p.split('/')[0] for p, *_ in per_photo))} classes "
        f"({', '.join(f'{n} {m}' for m, n in sorted(modes.items()))}); widths {min(widths)} to "
        f"{max(widths)} px; {len(problems)} bad folders",
        "- Params: defaults (crop, lanczos, blur_divisor 75, sweep [150, 100, 75, 50, 25])",
        "",
        "## Time per photo (decode, orient, square, resize, filtered + 5 sweep blurs; best of 2)",
        "",
        "| | wall ms | CPU ms |",
        "|---|---|---|",
        f"| median | {1000 * statistics.median(seconds):.1f} | {1000 * statistics.median(cpu):.1f} |",
        f"| mean | {1000 * statistics.fmean(seconds):.1f} | {1000 * statistics.fmean(cpu):.1f} |",
        f"| 90th percentile | {1000 * float(np.percentile(seconds, 90)):.1f} | "
        f"{1000 * float(np.percentile(cpu, 90)):.1f} |",
        f"| max | {1000 * max(seconds):.1f} | {1000 * max(cpu):.1f} |",
        f"| total, {len(seconds)} photos | {1000 * sum(seconds):.0f} | {1000 * sum(cpu):.0f} |",
        "",
        "Slowest: " + "; ".join(f"`{rel}` {w}x{h} ({1000 * t:.0f} ms)" for rel, t, w, h, _, _ in slowest),
        "",
        "Filtered kernel size s = round(w / 75) (w = side of the centre square) over the photos:",
        "",
        "| s | photos | median ms |",
        "|---|---|---|",
        *(f"| {s}{' (no blur)' if s <= 1 else ''} | {len(ts)} | {1000 * statistics.median(ts):.1f} |"
          for s, ts in by_kernel.items()),
        "",
        "## Whole stage",
        "",
        f"`python -m stages.custom` on the folder (start-up, 7 sets, report, contact sheet): "
        f"{stage_seconds:.1f} s wall. It printed:",
        "",
        f"    {stage.stdout.strip()}",
        "",
        f"report.json: n = {report['n']}, skipped = {report['n_skipped']}, per class "
        f"{sorted(set(report['per_class'].values()))}.",
        "",
        "## Large photos (synthetic noise, `images.to_model_input` with blur_divisor 75, best of 2)",
        "",
        "| side px | s | wall ms | CPU ms |",
        "|---|---|---|---|",
        *(f"| {side} | {s} | {1000 * t:.0f} | {1000 * c:.0f} |" for side, s, t, c in large),
        "",
        f"Contact sheet: `{sheet}` ({Image.open(sheet).size[0]}x{Image.open(sheet).size[1]} px).",
        "",
        "## Sharpness against CIFAR-10",
        "",
        "Mean absolute difference of horizontal neighbour pixels (0..255) of the 32x32 images; "
        f"real CIFAR-10 test images (2,000, 200 a class): **{cifar:.1f}**.",
        "",
        "| resample | unfiltered | filtered (s = round(w / 75)) |",
        "|---|---|---|",
        *(f"| {r} | {v['unfiltered']:.1f} | {v['filtered']:.1f} |" for r, v in sharpness.items()),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # The hand-written notes (what the contact sheet shows) survive a re-run of the measurements.
    old = args.out.read_text() if args.out.is_file() else ""
    notes = old[old.index(NOTES):] if NOTES in old else ""
    args.out.write_text("\n".join(lines) + "\n" + ("\n" + notes if notes else ""))
    print("\n".join(lines))


def _sharpness(x: np.ndarray) -> float:
    """Mean absolute difference of horizontal neighbours of uint8 NHWC images."""
    return float(np.abs(np.diff(x.astype(np.float32), axis=2)).mean())


def _cifar_test_images(archive: Path, per_class: int) -> np.ndarray:
    """The first ``per_class`` test images of each class from the JPEG archive, uint8 NHWC."""
    counts: dict[str, int] = {}
    out = []
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] != "test":
                continue
            if counts.get(parts[1], 0) >= per_class:
                continue
            counts[parts[1]] = counts.get(parts[1], 0) + 1
            handle = tar.extractfile(member)
            assert handle is not None
            with Image.open(handle) as img:
                out.append(np.asarray(img.convert("RGB")))
            if len(counts) == 10 and all(v >= per_class for v in counts.values()):
                break
    return np.stack(out)


if __name__ == "__main__":
    main()
