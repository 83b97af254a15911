"""How long a no-op `dvc repro` takes, next to DVC's own start-up, and where the time goes.

A user runs `dvc repro` after every edit; when nothing changed it should answer at once. This
times, in one run on one machine, alternating so that load changes hit both alike:

- `dvc --version`: DVC's own start (Python, its imports), the floor of any dvc command;
- `dvc repro` in a workspace where every stage is up to date (it must print "Data and pipelines
  are up to date.", otherwise the run is refused: it would time a training);
- `dvc status`, which does the same checks without the repro machinery;
- the same two again with ruamel.yaml's C parser hidden (pure-Python YAML, what DVC gets when
  ``ruamel.yaml.clib`` is not installed: ruamel.yaml 0.19 no longer pulls it in). DVC parses
  ``params.yaml`` once per stage that has params and ``dvc.lock`` on every call, so YAML parsing
  is most of a no-op's time without it.

Then one `dvc repro` under cProfile, and the functions with the most cumulative time (where the
rest goes: hashing directory deps, expanding the foreach stages, reading params, imports).

    make demo   # an up-to-date workspace: demo-run/
    python benchmarks/dvc_noop.py --workspace demo-run --rounds 7

Reads the workspace (dvc.yaml, dvc.lock, params.yaml, its outputs' metadata). Writes
``benchmarks/results/dvc_noop.md`` (atomically) and nothing in the workspace except DVC's own
state in ``.dvc/tmp``.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reproduction import write_keeping_reading

from cifar_dvc.cpuinfo import cpu_model

RESULTS = Path(__file__).resolve().parent / "results"
UP_TO_DATE = "Data and pipelines are up to date."


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall seconds of ``cmd`` in ``cwd`` and its output."""
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}: {result.stderr.strip()[-500:]}")
    return seconds, result.stdout + result.stderr


def profile_repro(workspace: Path, top: int) -> str:
    """The ``top`` functions by cumulative time of one in-process `dvc repro`."""
    from dvc.cli import main as dvc_main
    from ruamel.yaml import YAML

    parser = YAML(typ="safe").Parser.__name__  # CParser with ruamel.yaml.clib, else Parser

    profiler = cProfile.Profile()
    cwd = os.getcwd()
    os.chdir(workspace)
    try:
        profiler.runcall(dvc_main, ["repro", "--quiet"])
    finally:
        os.chdir(cwd)
    out = io.StringIO()
    out.write(f"ruamel.yaml parser in this process: {parser}\n")
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True, help="an up-to-date pipeline workspace")
    parser.add_argument("--rounds", type=int, default=7, help="timings of each command (median reported)")
    parser.add_argument("--top", type=int, default=30, help="profile lines to keep")
    parser.add_argument("--out", type=Path, default=RESULTS / "dvc_noop.md")
    args = parser.parse_args()
    dvc = shutil.which("dvc") or sys.exit("dvc not found on PATH")
    # A module that shadows ruamel.yaml's C extension and fails to import: ruamel falls back to
    # its pure-Python parser, as on an installation without ruamel.yaml.clib.
    shadow = Path(tempfile.mkdtemp(prefix="pure-yaml-"))
    (shadow / "_ruamel_yaml.py").write_text("raise ImportError('hidden by benchmarks/dvc_noop.py')\n")
    pure = {**os.environ, "PYTHONPATH": str(shadow)}
    commands = {"dvc --version": ([dvc, "--version"], None), "dvc status": ([dvc, "status"], None),
                "dvc repro (no-op)": ([dvc, "repro"], None),
                "dvc status, pure-Python YAML": ([dvc, "status"], pure),
                "dvc repro (no-op), pure-Python YAML": ([dvc, "repro"], pure)}
    _, out = timed(commands["dvc repro (no-op)"][0], args.workspace)  # warm the OS cache; check no-op
    if UP_TO_DATE not in out:
        raise SystemExit(f"{args.workspace}: `dvc repro` did work (not a no-op); run it once first:\n"
                         f"{out[-800:]}")
    times: dict[str, list[float]] = {name: [] for name in commands}
    load_before = os.getloadavg()
    for _ in range(args.rounds):
        for name, (cmd, env) in commands.items():
            times[name].append(timed(cmd, args.workspace, env)[0])
    load_after = os.getloadavg()
    version = timed([dvc, "--version"], args.workspace)[1].strip()
    floor = statistics.median(times["dvc --version"])
    lines = [
        "# No-op `dvc repro`: time next to DVC's own start",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}; machine: {platform.node()}, "
        f"{cpu_model()}, {os.cpu_count()} CPUs; DVC {version}; Python {platform.python_version()}.",
        f"- Load average (1/5/15 min) before: {' / '.join(f'{v:.2f}' for v in load_before)}; after: "
        f"{' / '.join(f'{v:.2f}' for v in load_after)}.",
        f"- Workspace: `{args.workspace}` (every stage up to date); command: "
        f"`python benchmarks/dvc_noop.py --workspace {args.workspace} --rounds {args.rounds}`.",
        "",
        "| command | median s | min s | max s | x `dvc --version` |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(f"| `{name}` | {median:.2f} | {min(values):.2f} | {max(values):.2f} "
                     f"| {median / floor:.2f} |")
    lines += ["", f"## Where one no-op `dvc repro` spends its time (cProfile, top {args.top} by cumulative)",
              "", "```", profile_repro(args.workspace, args.top).strip(), "```", ""]
    write_keeping_reading(args.out, "\n".join(lines))
    print("\n".join(lines[:14]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
