"""BatchNorm adaptation and the corruption suite on trained variants (run by hand, never by the tests).

For each variant given (``--variants``; those without ``<models>/<name>.keras`` are listed as not
trained and skipped) this evaluates, with the pipeline's own code (``cifar_dvc.evaluation``):

1. the custom sets, ``custom`` (unfiltered) and ``custom_filtered`` (seed 004's blur), with the
   variant's TTA, as ``evaluate@<name>`` does;
2. for a variant with BatchNorm, the same sets with statistics re-estimated on each set's own
   images (``custom_adapted``, ``custom_filtered_adapted``) at every prior strength of
   ``--priors`` (Schneider et al.'s N, in images; 0 = the set's statistics alone), the blur sweep
   sets adapted too (prior 0), and which photos adaptation fixes and breaks (paired counts);
3. the corruption suite on ``--corruption-images`` test images (seeded by params.yaml's ``seed``),
   without TTA, with and without adaptation: clean subset, mean per corruption, overall mean.

Reads ``<models>/<name>.keras`` and sidecars, ``<prepared>/test.npz``, the custom sets folder and
the ``seed`` and ``variants.<name>.tta`` of ``--params``. Writes ``--out`` (default
``benchmarks/results/robustness.md``) with the machine, date and command; a hand-written section
starting with ``## Reading`` survives a re-run.

    nice -n 5 .venv/bin/python benchmarks/robustness.py --models /work/repro/models \\
        --prepared /work/repro/data/prepared --custom /work/repro/data/custom_sets \\
        --params /work/repro/params.yaml --variants cnn imp1 fast
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path
from typing import Any

from cifar_dvc.tfenv import set_defaults

set_defaults()  # before TensorFlow loads: the stages' settings (oneDNN on), so this measures what they run

import numpy as np  # noqa: E402
import runinfo  # noqa: E402  (benchmarks/runinfo.py)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cifar_dvc import atomic, config, evalsets, inference  # noqa: E402  (after the path setup)
from cifar_dvc.cpuinfo import cpu_model  # noqa: E402
from cifar_dvc.datasets.params import read_seed  # noqa: E402
from cifar_dvc.evaluation import adapt, evaluate  # noqa: E402
from cifar_dvc.evaluation.corruptions import SEVERITIES  # noqa: E402
from cifar_dvc.evaluation.params import CORRUPTIONS, EvaluateParams  # noqa: E402
from cifar_dvc.training.variant import load_variant  # noqa: E402

NOTES = "## Reading"
PRIORS = [0, 4, 16, 64, 256, 1024]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, required=True, help="folder of <name>.keras + <name>.json")
    parser.add_argument("--prepared", type=Path, required=True, help="prepare's output (test.npz)")
    parser.add_argument("--custom", type=Path, required=True, help="custom stage's output folder")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml",
                        help="read for seed and variants.<name>.tta")
    parser.add_argument("--variants", nargs="+", default=["cnn", "imp1", "fast"])
    parser.add_argument("--priors", type=float, nargs="+", default=PRIORS, help="prior strengths N (images)")
    parser.add_argument("--corruption-images", type=int, default=EvaluateParams.corruption_images)
    parser.add_argument("--batch-size", type=int, default=EvaluateParams.batch_size)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "robustness.md")
    args = parser.parse_args()

    raw = config.read_params(args.params)
    seed = read_seed(raw, str(args.params))
    params = EvaluateParams(batch_size=args.batch_size, corruption_images=args.corruption_images,
                            corruptions=list(CORRUPTIONS))
    load_before = runinfo.load()
    sets = {item.name: item for item in evaluate.load_sets(args.prepared, args.custom)}
    found = [v for v in args.variants if (args.models / f"{v}.keras").is_file()]
    missing = [v for v in args.variants if v not in found]
    runs = {}
    for variant in found:
        start = time.perf_counter()
        runs[variant] = measure(variant, args.models / f"{variant}.keras", sets, params, args.priors,
                                load_variant(variant, raw, str(args.params)).tta, seed)
        runs[variant]["seconds"] = time.perf_counter() - start
        print(f"{variant}: {runs[variant]['seconds']:.0f} s", flush=True)

    lines = (header(args, runinfo.command(), seed, found, missing, load_before, sets)
             + tables(runs, args.priors, sets))
    old = args.out.read_text() if args.out.is_file() else ""
    notes = old[old.index(NOTES):] if NOTES in old else ""
    atomic.write_text(args.out, "\n".join(lines) + "\n" + ("\n" + notes if notes else ""))
    print("\n".join(lines))


def measure(variant: str, path: Path, sets: dict[str, Any], params: EvaluateParams, priors: list[float],
            tta: int, seed: int) -> dict[str, Any]:
    """Every number of one variant (see the module docstring)."""
    model, info = inference.load(path)
    stats = info.normalization
    parsed = {n: evalsets.parse_sweep(n) for n in sets}  # the main resize's sweep (not sweep_nearest_<d>)
    sweep = sorted((n for n, p in parsed.items() if p and p[0] == evalsets.MAIN), key=lambda n: -parsed[n][1])
    photo_sets = ["custom", "custom_filtered", *sweep]  # the sweep from light to strong blur

    def predictions(net: Any, name: str) -> np.ndarray:
        return inference.predict(net, info, sets[name].x, tta, batch_size=params.batch_size).argmax(axis=1)

    out: dict[str, Any] = {"tta": tta, "batchnorm": adapt.has_batchnorm(model),
                           "bn_layers": len(adapt.batchnorm_layers(model)), "training": info.training}
    out["plain"] = {name: predictions(model, name) for name in photo_sets}
    adapter = evaluate.make_adapter(model, params)
    out["adapted"] = {}
    if adapter is not None:
        for prior in priors:
            for name in photo_sets if prior == 0 else photo_sets[:2]:
                net = adapter.adapt(sets[name].x, stats, prior, params.batch_size)
                out["adapted"][(prior, name)] = predictions(net, name)
    out["corruptions"] = evaluate.evaluate_corruptions(model, adapter, info, sets["test"], params, seed)
    return out


def header(args: argparse.Namespace, command: str, seed: int, found: list[str], missing: list[str],
           load_before: str, sets: dict[str, Any]) -> list[str]:
    cpu = cpu_model()
    load_after = runinfo.load()
    import keras
    import tensorflow as tf

    photos = sets["custom"]
    return [
        "# BatchNorm test-time adaptation and corruptions, trained variants (`benchmarks/robustness.py`)",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {cpu}, {os.cpu_count()} cores; "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}",
        f"- Load average (1/5/15 min) before: {load_before}, after: {load_after}",
        f"- Command (from the repository root): `{command}`",
        f"- Models: {args.models} ({', '.join(found) or 'none'}"
        + (f"; not trained yet: {', '.join(missing)}" if missing else "") + ")",
        f"- Custom sets: {args.custom} ({len(photos.y)} real photos; `custom_filtered` = seed 004's blur, "
        "s = round(w / 75), before resizing)",
        f"- Corruptions: {args.corruption_images} test images of {args.prepared} (seed {seed}, the same for "
        f"every corruption), severities {', '.join(map(str, SEVERITIES))} = CIFAR-10-C's 1, 3, 5; no TTA",
        "- Adaptation: BatchNorm mean and variance re-estimated on each set's own images (all of them at "
        "once for the 100 photos), on a copy of the model; N = prior strength in images (0 = the set alone).",
        "- Accuracy in %; with 100 photos one photo is 1 point and the binomial standard error about 5 "
        "points, so the paired counts (photos fixed / broken by adaptation) say more than small differences.",
        "",
    ]


def tables(runs: dict[str, dict[str, Any]], priors: list[float], sets: dict[str, Any]) -> list[str]:
    if not runs:
        return ["No variant trained yet."]
    y = {name: sets[name].y for name in sets}

    def acc(pred: np.ndarray | None, name: str) -> str:
        return "n/a" if pred is None else f"{100 * float((pred == y[name]).mean()):.1f}"

    lines = ["## Custom photos: plain, blur (seed 004's trick) and BatchNorm adaptation (N = 0)", "",
             "| Variant | BatchNorm layers | TTA | custom | custom_filtered | custom_adapted | "
             "custom_filtered_adapted | adapted vs plain: fixed / broken (custom) |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for variant, run in runs.items():
        adapted = run["adapted"]
        a_custom, a_filtered = adapted.get((0, "custom")), adapted.get((0, "custom_filtered"))
        flips = "n/a"
        if a_custom is not None:
            right_before, right_after = run["plain"]["custom"] == y["custom"], a_custom == y["custom"]
            flips = f"{int((~right_before & right_after).sum())} / {int((right_before & ~right_after).sum())}"
        cells = [str(run["bn_layers"]), str(run["tta"]), acc(run["plain"]["custom"], "custom"),
                 acc(run["plain"]["custom_filtered"], "custom_filtered"), acc(a_custom, "custom"),
                 acc(a_filtered, "custom_filtered"), flips]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    bn_runs = {v: r for v, r in runs.items() if r["adapted"]}
    if bn_runs:
        lines += ["", "## Mixed statistics: prior strength N (training statistics worth N images)", "",
                  "(N x training + n x set) / (N + n), n = 100 photos; N = 0 is full adaptation, a large N "
                  "tends to no adaptation.", "",
                  "| Variant | set | " + " | ".join(f"N={p:g}" for p in priors) + " | none |",
                  "|---|---|" + "---:|" * (len(priors) + 1)]
        for variant, run in bn_runs.items():
            for name in ("custom", "custom_filtered"):
                cells = [acc(run["adapted"][(p, name)], name) for p in priors]
                lines.append(f"| {variant} | {name} | " + " | ".join(cells)
                             + f" | {acc(run['plain'][name], name)} |")
        sweep = [n for n in next(iter(bn_runs.values()))["plain"] if n.startswith("sweep_")]
        if sweep:
            lines += ["", "## Blur sweep (d: kernel round(w / d), smaller d = more blur), plain / adapted",
                      "", "| Variant | " + " | ".join(f"d={n.removeprefix('sweep_')}" for n in sweep) + " |",
                      "|---|" + "---:|" * len(sweep)]
            for variant, run in bn_runs.items():
                cells = [f"{acc(run['plain'][n], n)} / {acc(run['adapted'][(0, n)], n)}" for n in sweep]
                lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += ["", "## Corruptions: accuracy (mean over severities 1-3), plain / BatchNorm-adapted", "",
              "| Variant | clean subset | " + " | ".join(c.replace("_", " ") for c in CORRUPTIONS)
              + " | mean | seconds (whole variant) |",
              "|---|---:|" + "---:|" * (len(CORRUPTIONS) + 2)]
    for variant, run in runs.items():
        rows = run["corruptions"]

        def pair(selected: list[dict[str, Any]]) -> str:
            plain = np.mean([r["accuracy"] for r in selected])
            adapted = [r["accuracy_adapted"] for r in selected]
            tail = "n/a" if None in adapted else f"{100 * np.mean(adapted):.1f}"
            return f"{100 * plain:.1f} / {tail}"

        clean = [r for r in rows if r["severity"] == 0]
        cells = [pair([r for r in rows if r["corruption"] == c]) for c in CORRUPTIONS]
        lines.append(f"| {variant} | {pair(clean)} | " + " | ".join(cells)
                     + f" | {pair([r for r in rows if r['severity'] > 0])} | {run['seconds']:.0f} |")
    lines += ["", "Per severity (plain / adapted):", "",
              "| Variant | corruption | " + " | ".join(f"severity {s}" for s in SEVERITIES) + " |",
              "|---|---|" + "---:|" * len(SEVERITIES)]
    for variant, run in runs.items():
        for c in CORRUPTIONS:
            cells = []
            for s in SEVERITIES:
                r = next(r for r in run["corruptions"] if r["corruption"] == c and r["severity"] == s)
                tail = "n/a" if r["accuracy_adapted"] is None else f"{100 * r['accuracy_adapted']:.1f}"
                cells.append(f"{100 * r['accuracy']:.1f} / {tail}")
            lines.append(f"| {variant} | {c.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return lines



if __name__ == "__main__":
    main()
