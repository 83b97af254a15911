"""Training speed of each variant with TensorFlow's oneDNN CPU kernels off and on, on this CPU.

TensorFlow turns oneDNN on by itself only on CPUs with AVX-512 VNNI/BF16 or AMX; elsewhere it
runs Eigen's kernels. ``cifar_dvc/tfenv.py`` turns it on everywhere (``TF_ENABLE_ONEDNN_OPTS=1``
unless the environment says otherwise); this measures what that buys, variant by variant.

TensorFlow reads the switch once, at import, so every measurement is a child process of this
script with ``TF_ENABLE_ONEDNN_OPTS`` set to 0 or 1. A child times each variant's training as
``train@<variant>`` runs it (``train_throughput.stage_model``: the stage's tf.data pipeline,
augmentation, steps_per_execution, float32; MobileNet with ``weights: none``, same compute),
after one traced call, for up to ``--steps`` steps or ``--max-seconds``, and reports whether its
TensorFlow really ran oneDNN (``tfenv.onednn_enabled``). Children alternate off, on, off, on, ...
(``--rounds`` of each), so a change of machine load hits both settings; the table gives the
median images/s per setting and their ratio.

Run by hand, nothing else running (about 2 minutes per variant and round):

    .venv/bin/python benchmarks/onednn.py --data /work/repro/data/prepared \\
        --params /work/repro/params.yaml --out benchmarks/results/onednn.md

Reads ``--params`` and the prepared data ``--data``. Writes ``--out`` (Markdown, atomically, after
every round; a hand-written ``## Reading`` section of an existing report is kept).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import runinfo
from reproduction import machine, machine_label, write_keeping_reading

SETTINGS = ("0", "1")  # TF_ENABLE_ONEDNN_OPTS: off, on
RESULT = "onednn-result: "  # the child's one line of JSON, among TensorFlow's own output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared data directory (real CIFAR-10)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--variants", nargs="*", help="default: every variant of params.yaml")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per measurement (at most)")
    parser.add_argument("--max-seconds", type=float, default=8.0, help="time budget per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="child processes per setting, alternating")
    parser.add_argument("--out", type=Path, help="the Markdown report (not with --child)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.out is None or args.rounds < 1:
        parser.error("--out is required and --rounds must be >= 1")

    started, load_before = dt.datetime.now(dt.timezone.utc), runinfo.load()
    default = tensorflow_default()
    command = runinfo.command()
    samples: dict[str, dict[str, list[float]]] = {s: {} for s in SETTINGS}
    seen: dict[str, set] = {s: set() for s in SETTINGS}
    child_args = [sys.executable, __file__, "--child", "--data", str(args.data), "--params", str(args.params),
                  "--steps", str(args.steps), "--max-seconds", str(args.max_seconds),
                  *(["--variants", *args.variants] if args.variants else [])]
    for round_ in range(1, args.rounds + 1):
        for setting in SETTINGS:
            result = run_child(child_args, setting)
            seen[setting].add(result["onednn"])
            for name, speed in result["speeds"].items():
                samples[setting].setdefault(name, []).append(speed)
            print(f"round {round_}, TF_ENABLE_ONEDNN_OPTS={setting} (oneDNN on: {result['onednn']}): "
                  + ", ".join(f"{n} {v:.0f}" for n, v in result["speeds"].items()), flush=True)
        text = report(args, command, started, load_before, default, samples, seen, round_)
        write_keeping_reading(args.out, text)
    print(f"wrote {args.out}")


def run_child(child_args: list[str], setting: str) -> dict:
    """One child's measurements under ``TF_ENABLE_ONEDNN_OPTS=setting``; exits on its failure."""
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": setting}
    proc = subprocess.run(child_args, env=env, stdout=subprocess.PIPE, text=True)  # progress on stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"error: the TF_ENABLE_ONEDNN_OPTS={setting} measurement failed "
                         f"(exit {proc.returncode}; its messages are above)")
    return json.loads(lines[-1][len(RESULT):])


def tensorflow_default() -> str:
    """Whether TensorFlow alone, without the variable, runs oneDNN here: "on", "off" or "unknown"."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    probe = ("import tensorflow; from tensorflow.python.util import _pywrap_util_port as p; "
             "print(p.IsMklEnabled())")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    return {"True": "on", "False": "off"}.get(out.stdout.strip(), "unknown")


def child(args: argparse.Namespace) -> None:
    """Every variant's training images/s in this process, as one line of JSON on stdout."""
    from train_throughput import images_per_second, inputs, traced_models  # imports TensorFlow

    from cifar_dvc.tfenv import onednn_enabled

    params, names, prepared, train = inputs(args)
    speeds = {}
    for name in names:
        bs, runs = traced_models(name, params, str(args.params), train, prepared, args.steps, ["float32"])
        model, ds = runs["float32"]
        speeds[name] = images_per_second(model, {"x": ds, "shuffle": False}, bs, args.steps, args.max_seconds)
        print(f"  {name}: {speeds[name]:.0f} img/s", file=sys.stderr, flush=True)  # progress
    print(RESULT + json.dumps({"onednn": onednn_enabled(), "speeds": speeds}), flush=True)


def report(args: argparse.Namespace, command: str, started: dt.datetime, load_before: str, default: str,
           samples: dict[str, dict[str, list[float]]], seen: dict[str, set], rounds: int) -> str:
    """The Markdown report of the rounds done so far."""
    off, on = SETTINGS
    cpu = machine()
    lines = [
        "# Training throughput with TensorFlow's oneDNN kernels off and on",
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; machine: {machine_label(cpu)}, AVX-512: "
        f"{'yes' if cpu['avx512f'] else 'no'}.",
        f"- TensorFlow's own default here (variable unset, plain `import tensorflow`): oneDNN {default}. "
        f"As each child's TensorFlow reported it: `TF_ENABLE_ONEDNN_OPTS=0` -> oneDNN {sorted(seen[off])}, "
        f"`=1` -> {sorted(seen[on])}.",
        f"- Load average before: {load_before}; after: {runinfo.load()}.",
        f"- Command: `{command}`",
        f"- {rounds} round(s) of 2 child processes (off, then on); each cell the median images/s of its "
        f"setting's rounds; each measurement up to {args.steps} steps or {args.max_seconds:.0f} s after "
        "one traced call, float32, the stage's own input pipeline.",
        "",
        "| variant | oneDNN off (img/s) | oneDNN on (img/s) | on / off |",
        "|---|---:|---:|---:|",
    ]
    for name in samples[off]:
        if name in samples[on]:
            a, b = statistics.median(samples[off][name]), statistics.median(samples[on][name])
            lines.append(f"| {name} | {a:,.0f} | {b:,.0f} | {b / a:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
