"""The reproduction table: every variant trained by `dvc repro` on real CIFAR-10, next to its seed.

A reproduction workspace is a clone of this repository whose params point at real data, where
`dvc repro evaluate@<variant>` has run (the commands are in the report's header). This script
collects, for each variant the workspace has evaluated, one small JSON record into
``benchmarks/results/reproduction/<variant>.json``: the variant's ``metrics/<variant>.json``,
its training summary (``models/<variant>.json``: epochs, precision, wall and CPU seconds), its
learning curve (dvclive), the machine and the commit. Records of earlier sessions, possibly on
other machines, stay; a variant trained again replaces its record. Then it writes
``benchmarks/results/reproduction.md`` from all records: one row per variant with the seed's own
figure (``seed_figures.py``), ours on validation / test / custom / custom_filtered, epochs run of
the budget, precision, CPU and wall minutes, and the curves below.

    python benchmarks/reproduction.py --workspace /work/repro [--variants cnn imp1]

Reads the workspace's params.yaml, metrics/, models/*.json and dvclive/. Writes
benchmarks/results/reproduction/*.json and benchmarks/results/reproduction.md (atomically),
keeping the hand-written ``## Reading`` section of an existing report.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import yaml
from seed_figures import SEED_FIGURES

from cifar_dvc import atomic

RESULTS = Path(__file__).resolve().parent / "results"
RECORDS = RESULTS / "reproduction"
REPORT = RESULTS / "reproduction.md"
# Variants in the order of the table: cheapest first, as they are run.
ORDER = ["mlp", "cnn", "small_cnn", "vgg_bn", "base", "mnist_cnn", "fast", "imp1", "mnet1", "mnet2",
         "keras_cnn", "nb_relu", "nb_elu", "wide_cnn", "imp2"]
SETS = ("validation", "test", "custom", "custom_filtered")


def machine() -> dict[str, Any]:
    """CPU model, cores and the flags mixed precision depends on."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "amx_bf16": "amx_bf16" in flags,
            "avx512_bf16": "avx512_bf16" in flags, "avx512f": "avx512f" in flags}


def curve(live: Path) -> dict[str, list[float]]:
    """Per-epoch train and validation accuracy from a dvclive folder."""
    out = {}
    for key, rel in (("accuracy", "train/accuracy.tsv"), ("val_accuracy", "eval/accuracy.tsv")):
        path = live / "plots" / "metrics" / rel
        if path.exists():
            with path.open() as handle:
                rows = csv.DictReader(handle, delimiter="\t")
                out[key] = [round(float(row["accuracy"]), 4) for row in rows]
    return out


def collect(workspace: Path, name: str) -> dict[str, Any]:
    """The record of variant ``name`` in ``workspace``."""
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    commit = subprocess.run(["git", "-C", str(workspace), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    info = json.loads((workspace / "models" / f"{name}.json").read_text())
    return {
        "variant": name,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "machine": machine(),
        "data": {"url": params["data"]["url"], "md5": params["data"]["md5"],
                 "custom": params["custom"]["dir"]},
        "variant_params": params["variants"][name],
        "training": info["training"],
        "metrics": json.loads((workspace / "metrics" / f"{name}.json").read_text()),
        "curve": curve(workspace / "dvclive" / name),
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f}"


def row(record: dict[str, Any]) -> str:
    """One line of the table."""
    name, t, m = record["variant"], record["training"], record["metrics"]
    seed = SEED_FIGURES.get(name, {})
    seed_fig = f"{_pct(seed.get('accuracy'))} ({seed['seed']})" if seed else "-"
    ours = " | ".join(_pct(m.get(s, {}).get("accuracy")) for s in SETS)
    gap = ""
    if seed.get("accuracy") is not None and "test" in m:
        gap = f"{100 * (m['test']['accuracy'] - seed['accuracy']):+.1f}"
    epochs = f"{t['epochs_run']} / {record['variant_params']['epochs']}"
    return (f"| {name} | {seed_fig} | {ours} | {gap} | {epochs} | {t.get('precision', 'float32')} "
            f"| {_minutes(t.get('cpu_seconds'))} | {_minutes(t['seconds'])} "
            f"| {machine_label(record['machine'])} |")


def machine_label(m: dict[str, Any]) -> str:
    flags = "AMX" if m.get("amx_bf16") else ("avx512_bf16" if m.get("avx512_bf16") else "no bf16")
    return f"{m['cpu']} ({m['cores']} cores, {flags})"


def report(records: list[dict[str, Any]]) -> str:
    """reproduction.md from all records."""
    records = sorted(records, key=lambda r: ORDER.index(r["variant"]) if r["variant"] in ORDER else 99)
    missing = [v for v in ORDER if v not in {r["variant"] for r in records}]
    lines = [
        "# Reproduction: every variant at its seed's budget, on real CIFAR-10",
        "",
        "Generated by `python benchmarks/reproduction.py --workspace <clone>` from the records in "
        "`benchmarks/results/reproduction/` (one JSON per variant: metrics, training summary, curve, "
        "machine, commit). Data: the JPEG copy of the 60,000 CIFAR-10 images "
        "(`../shared/data/cifar10-jpeg.tar.gz`, labels exact, about 6/255 mean pixel error: expect a "
        "point or two below the original pickles), 45,000 train / 5,000 validation "
        "(`prepare.validation: 0.1`) / the official 10,000 test images; custom = the 100 dev photos "
        "(`../shared/data/custom-photos-dev.tar.gz`), Lanczos resize, unfiltered and seed 004's blur.",
        "",
        "How a row was made (a clone of this repository, then one command per variant):",
        "",
        "```",
        "../shared/bin/cifar10-tarball /work/repro-data/cifar-10-python.tar.gz   # prints the md5",
        "git clone <this repo> repro && cd repro",
        "tar xzf ../shared/data/custom-photos-dev.tar.gz && cp -r custom-photos-dev/* data/custom/",
        "# params.yaml: data.url: /work/repro-data/cifar-10-python.tar.gz, data.md5: <md5>,",
        "#   train.verbose: epoch; mnet1 and mnet2: model_args.alpha: 0.25 and model_args.weights:",
        "#   /work/shared/data/mobilenet_2_5_224_tf_no_top.h5 (alpha 1.0 cannot be downloaded here)",
        "nice -n 5 dvc repro evaluate@<variant>",
        "python benchmarks/reproduction.py --workspace . --variants <variant>",
        "```",
        "",
        "Seed = the seed's own figure and the split it was measured on (seeds 000-003 validated on the "
        "test set). Gap = our test accuracy minus the seed's figure, in points. Epochs = run / budget "
        "(the seed's). CPU min = CPU time of the training process (all threads); wall min = training wall "
        "time (other jobs shared the 2 cores: compare CPU minutes).",
        "",
        "| variant | seed | validation | test | custom | custom filtered | gap | epochs | precision "
        "| CPU min | wall min | machine |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    lines += [row(r) for r in records]
    lines += ["", "Where each seed figure comes from (benchmarks/seed_figures.py):", ""]
    lines += [f"- {r['variant']}: seed {SEED_FIGURES[r['variant']]['seed']}, "
              f"{SEED_FIGURES[r['variant']]['split']}" for r in records if r["variant"] in SEED_FIGURES]
    if missing:
        lines += ["", f"Not yet run at their budget: {', '.join(missing)}."]
    lines += ["", "## Learning curves (validation accuracy per epoch)", ""]
    for r in records:
        val = r["curve"].get("val_accuracy", [])
        lines.append(f"- {r['variant']} ({r['date']}, commit {r['commit'] or '?'}): "
                     + ", ".join(f"{v:.3f}" for v in val))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True, help="clone where dvc repro ran")
    parser.add_argument("--variants", nargs="*", help="default: every variant evaluated there")
    args = parser.parse_args()
    names = args.variants or sorted(p.stem for p in (args.workspace / "metrics").glob("*.json")
                                    if (args.workspace / "models" / f"{p.stem}.json").exists())
    for name in names:
        record = collect(args.workspace, name)
        atomic.write_json(RECORDS / f"{name}.json", record)
        print(f"recorded {name}: test {_pct(record['metrics'].get('test', {}).get('accuracy'))}")
    records = [json.loads(p.read_text()) for p in sorted(RECORDS.glob("*.json"))]
    write_keeping_reading(REPORT, report(records))
    print(f"wrote {REPORT} ({len(records)} variants)")


def write_keeping_reading(path: Path, text: str) -> None:
    """Write a generated report, keeping the ``## Reading`` section written by hand in the old one."""
    if path.exists() and "\n## Reading" in path.read_text():
        text += "\n## Reading" + path.read_text().split("\n## Reading", 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, text)


if __name__ == "__main__":
    main()
