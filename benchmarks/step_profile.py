"""Where one training step of a variant spends its time: TensorFlow's op profile, per precision.

Builds the variant's training exactly as ``train@<name>`` does (``train_throughput.traced_models``:
the stage's own steps, tf.data input, augmentation, steps_per_execution) under each requested
``train.precision``, then for each:

- times ``--steps`` steps unprofiled (images/s, and the process's CPU seconds over wall seconds:
  how many of the cores the step keeps busy);
- profiles the same number of steps with ``tf.profiler.experimental`` and reads TensorFlow's own
  per-op summary (the ``framework_op_stats`` tool of the profiler, the table TensorBoard shows),
  summed by op type: milliseconds of self-time per step and share of all op time.

So it answers "which ops does bfloat16 speed up, and which does it not": the convolutions run by
oneDNN (``_MklNative*``) against the element-wise ops, casts and optimizer updates between them.
Run by hand on real CIFAR-10, one job at a time (the timings are of this machine):

    python benchmarks/step_profile.py --data /work/repro/data/prepared --variant fast \
        --precisions float32 auto --out benchmarks/results/step_profile_amx.md

Reads params.yaml and the prepared data. Writes the profiler's trace under ``--work`` (a temporary
folder if not given) and the markdown report ``--out`` (atomically), keeping its ``## Reading``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from cifar_dvc.tfenv import set_defaults

set_defaults()  # before TensorFlow loads: the stages' settings (oneDNN on), so this measures what they run

import runinfo  # noqa: E402
import tensorflow as tf  # noqa: E402
from reproduction import machine, write_keeping_reading  # noqa: E402
from tensorflow.python.profiler.internal import _pywrap_profiler_plugin  # noqa: E402
from train_throughput import bf16_flags, images_per_second, inputs, traced_models  # noqa: E402

from cifar_dvc import cpuinfo  # noqa: E402
from cifar_dvc.training import precision  # noqa: E402

IDLE = "IDLE"  # the profiler's row for time no op ran on a thread; not an op


def op_self_times(xplane: Path) -> dict[str, float]:
    """Self-time in microseconds per op type of one profile (``*.xplane.pb``), idle time left out,
    from TensorFlow's ``framework_op_stats`` tool (the table TensorBoard's profile plugin shows)."""
    data, ok = _pywrap_profiler_plugin.xspace_to_tools_data([str(xplane)], "framework_op_stats")
    if not ok:
        raise RuntimeError(f"{xplane}: the profiler could not summarize this trace")
    table = json.loads(data)[0]  # the first table: every op; the second leaves the idle row out
    columns = [c["id"] for c in table["cols"]]
    kind, self_time = columns.index("type"), columns.index("total_self_time")
    totals: dict[str, float] = defaultdict(float)
    for row in table["rows"]:
        cells = [c.get("v") for c in row["c"]]
        if cells[kind] != IDLE:
            totals[cells[kind]] += float(cells[self_time])
    return dict(totals)


def profile(model, ds: tf.data.Dataset, batch_size: int, steps: int, logdir: Path) -> dict:
    """Unprofiled images/s and cores busy over ``steps`` steps, then the op self-times of as many
    profiled steps, per step."""
    wall, cpu = time.perf_counter(), time.process_time()
    speed = images_per_second(model, {"x": ds, "shuffle": False}, batch_size, steps + 1, 1e9)
    busy = (time.process_time() - cpu) / (time.perf_counter() - wall)
    tf.profiler.experimental.start(str(logdir))
    model.fit(ds.take(steps), epochs=1, verbose=0, shuffle=False)
    tf.profiler.experimental.stop()
    traces = sorted(logdir.rglob("*.xplane.pb"))
    if not traces:
        raise RuntimeError(f"{logdir}: the profiler wrote no trace")
    ops = {kind: us / 1000 / steps for kind, us in op_self_times(traces[-1]).items()}
    return {"images_per_second": speed, "cores_busy": busy, "ms_per_step": batch_size / speed * 1000,
            "op_ms": ops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared data directory (real CIFAR-10)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--variant", required=True)
    parser.add_argument("--precisions", nargs="+", choices=precision.PRECISIONS, default=["float32", "auto"])
    parser.add_argument("--steps", type=int, default=10, help="steps timed, then as many profiled")
    parser.add_argument("--top", type=int, default=20,
                        help="op types in the table, the slowest under the last precision")
    parser.add_argument("--work", type=Path, help="folder for the profiler's traces (default: temporary)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.variants = [args.variant]  # what train_throughput.inputs reads

    params, _, prepared, train = inputs(args)
    load_before, started = runinfo.load(), dt.datetime.now(dt.timezone.utc)
    bs, runs = traced_models(args.variant, params, str(args.params), train, prepared, 2 * args.steps + 2,
                             args.precisions)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        results = {}
        for setting, (model, ds) in runs.items():
            results[setting] = profile(model, ds, bs, args.steps, work / setting)
            print(f"{args.variant} {setting}: {results[setting]['images_per_second']:.0f} img/s, "
                  f"{results[setting]['cores_busy']:.2f} cores busy", flush=True)
    _write(args, bs, results, load_before, started)


def _write(args: argparse.Namespace, batch_size: int, results: dict, load_before: tuple,
           started: dt.datetime) -> None:
    settings = list(results)
    policies = {s: precision.resolve(s) for s in settings}
    flags = cpuinfo.cpu_flags()
    last = results[settings[-1]]["op_ms"]
    kinds = sorted(set().union(*(r["op_ms"] for r in results.values())), key=lambda k: -last.get(k, 0.0))
    shown, rest = kinds[: args.top], kinds[args.top:]
    names = {s: s if policies[s] == s else f"{s} = {policies[s]}" for s in settings}
    header = " | ".join(f"{names[s]} ms/step | share" for s in settings)
    lines = [
        f"# One training step of `{args.variant}`, op by op",
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; CPU: {machine()['cpu']}, {os.cpu_count()} cores; "
        f"TensorFlow {tf.__version__}.",
        f"- CPU flags seen: {bf16_flags(flags)} of bf16/AMX.",
        f"- Load average before: {load_before}; after: {runinfo.load()}.",
        f"- Command: `{runinfo.command()}`",
        f"- Batch {batch_size}, the stage's own input pipeline. Per precision: {args.steps} steps timed "
        "unprofiled (images/s; cores busy = the process's CPU seconds over wall seconds), then as many "
        "profiled. Op time = self-time per step from TensorFlow's profiler (`framework_op_stats`), "
        "summed by op type, idle time left out; ops on different threads overlap, so the sum can "
        "exceed the step's wall time. `Dataset` is tf.data's iterators, the training thread's wait "
        "for the next batch included.",
        "",
        "| | " + " | ".join(names[s] for s in settings) + " |",
        "|---|" + "---:|" * len(settings),
        "| images/s (unprofiled) | " + " | ".join(f"{results[s]['images_per_second']:.0f}" for s in settings)
        + " |",
        "| wall ms per step | " + " | ".join(f"{results[s]['ms_per_step']:.0f}" for s in settings) + " |",
        "| cores busy | " + " | ".join(f"{results[s]['cores_busy']:.2f}" for s in settings) + " |",
        "| op time, ms per step | " + " | ".join(f"{sum(results[s]['op_ms'].values()):.0f}" for s in settings)
        + " |",
        "",
        f"| op type | {header} |",
        "|---|" + "---:|---:|" * len(settings),
    ]

    def cells(values: dict[str, float], kind_list: list[str]) -> str:
        total = sum(values.values()) or 1.0
        ms = sum(values.get(k, 0.0) for k in kind_list)
        return f"{ms:.1f} | {ms / total:.1%}"

    for kind in shown:
        lines.append(f"| `{kind}` | " + " | ".join(cells(results[s]["op_ms"], [kind]) for s in settings)
                     + " |")
    if rest:
        lines.append(f"| {len(rest)} other op types | "
                     + " | ".join(cells(results[s]["op_ms"], rest) for s in settings) + " |")
    write_keeping_reading(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
