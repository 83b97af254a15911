"""Time and memory of the data stages (fetch + ingest + prepare) on the full real CIFAR-10 (by hand).

Builds an archive in the official ``cifar-10-python.tar.gz`` layout from the real images with
``/work/shared/bin/cifar10-tarball`` (into ``--work``, default ``/tmp/data-pipeline-bench``; never into
the repository; reused if already there), copies the project into a temporary git repository
(``cifar_dvc.demo.copy_project``) with ``data.url``/``data.md5`` pointing at that archive, then:

1. runs each stage command as dvc.yaml gives it, directly, and records its wall time and peak RSS
   (``os.wait4``'s ``ru_maxrss`` of that process);
2. deletes the outputs and runs ``dvc repro prepare`` (the three stages plus DVC's hashing and
   caching of 3 outputs) and records its wall time and peak RSS (dvc and its stage processes);
3. runs ``dvc repro prepare`` again, a no-op, 5 times (median) and ``dvc status`` likewise.

Goals (issue 2): fetch + ingest + prepare <= 10 s and <= 1.5 GB peak; a no-op ``dvc repro`` <= 2 s.
Results: ``benchmarks/results/data_pipeline.md``.

    nice -n 10 .venv/bin/python benchmarks/data_pipeline.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import runinfo  # benchmarks/runinfo.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cifar_dvc.cpuinfo import cpu_model  # noqa: E402
from cifar_dvc.demo import copy_project, dvc_env  # noqa: E402  (after the path setup)

TARBALL_TOOL = Path("/work/shared/bin/cifar10-tarball")
STAGES = [  # as in dvc.yaml
    ("fetch", ["-m", "stages.fetch", "--out", "data/raw"]),
    ("ingest", ["-m", "stages.ingest", "--raw", "data/raw", "--out", "data/interim"]),
    ("prepare", ["-m", "stages.prepare", "--interim", "data/interim", "--out", "data/prepared"]),
]
OUTPUTS = ("data/raw", "data/interim", "data/prepared")


def measure(cmd: list[str], cwd: Path) -> tuple[float, float, float, str]:
    """Run ``cmd``; wall seconds, CPU seconds (user + system) and peak RSS in MB (the process and its
    waited-for children), and its output. CPU time says more than wall time on a loaded machine."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=dvc_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read().decode() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, output


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/data-pipeline-bench"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "data_pipeline.md")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    tarball = args.work / "cifar-10-python.tar.gz"
    if not tarball.is_file():
        print(f"building {tarball} with {TARBALL_TOOL} (about a minute)", flush=True)
        subprocess.run([sys.executable, str(TARBALL_TOOL), str(tarball)], check=True)
    archive_md5 = md5(tarball)
    load_before = runinfo.load()

    with tempfile.TemporaryDirectory(prefix="data-bench-", dir=args.work) as tmp:
        repo = copy_project(Path(tmp) / "repo", {"data": {"dataset": "cifar10", "url": str(tarball),
                                                          "md5": archive_md5}})
        python = sys.executable
        rows = []
        for name, stage_args in STAGES:
            wall, cpu_s, rss, output = measure([python, *stage_args], repo)
            rows.append((name, wall, cpu_s, rss))
            print(f"{name}: {wall:.2f} s ({cpu_s:.2f} s CPU), {rss:.0f} MB  | "
                  f"{output.strip().splitlines()[-1]}", flush=True)
        for out in OUTPUTS:
            shutil.rmtree(repo / out)
        dvc = str(Path(python).parent / "dvc")
        repro_wall, repro_cpu, repro_rss, _ = measure([dvc, "repro", "prepare"], repo)
        print(f"dvc repro prepare: {repro_wall:.2f} s ({repro_cpu:.2f} s CPU), {repro_rss:.0f} MB",
              flush=True)
        noop = [measure([dvc, "repro", "prepare"], repo)[:2] for _ in range(args.repeats)]
        status = [measure([dvc, "status"], repo)[:2] for _ in range(args.repeats)]
        noop_wall, noop_cpu = (statistics.median(v) for v in zip(*noop, strict=True))
        status_wall, status_cpu = (statistics.median(v) for v in zip(*status, strict=True))
        print(f"no-op dvc repro prepare: median {noop_wall:.2f} s ({noop_cpu:.2f} s CPU); "
              f"dvc status: median {status_wall:.2f} s ({status_cpu:.2f} s CPU)", flush=True)
    load_after = runinfo.load()

    total_wall = sum(r[1] for r in rows)
    total_cpu = sum(r[2] for r in rows)
    peak = max(r[3] for r in rows)
    cpu = cpu_model()
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    lines = [
        "# Data pipeline benchmark: fetch + ingest + prepare on the full CIFAR-10",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {cpu}, {os.cpu_count()} cores, {mem_gb:.0f} GB RAM, {platform.platform()}",
        f"- Load average (1/5/15 min) before: {load_before}; after: {load_after}",
        f"- Command: `{runinfo.command()}`",
        f"- Input: 60,000 real CIFAR-10 images rebuilt by `{TARBALL_TOOL} OUT.tar.gz` "
        f"({tarball.stat().st_size / 1e6:.0f} MB, md5 {archive_md5}), `data.url` set to its local path",
        "",
        "| step | wall time (s) | CPU time, user + system (s) | peak RSS (MB) |",
        "|---|---:|---:|---:|",
        *(f"| `{name}` stage alone | {wall:.2f} | {cpu_s:.2f} | {rss:.0f} |"
          for name, wall, cpu_s, rss in rows),
        f"| **fetch + ingest + prepare** (sum; peak = max) | **{total_wall:.2f}** | **{total_cpu:.2f}** | "
        f"**{peak:.0f}** |",
        f"| `dvc repro prepare` from scratch (the 3 stages + DVC hashing/caching) | {repro_wall:.2f} | "
        f"{repro_cpu:.2f} | {repro_rss:.0f} |",
        f"| no-op `dvc repro prepare` (median of {args.repeats}) | {noop_wall:.2f} | {noop_cpu:.2f} | |",
        f"| `dvc status`, whole pipeline (median of {args.repeats}) | {status_wall:.2f} | "
        f"{status_cpu:.2f} | |",
        "",
        f"Goals: <= 10 s and <= 1.5 GB for the three stages: "
        f"{'met' if total_wall <= 10 and peak <= 1536 else 'NOT met'} (wall), "
        f"{'met' if total_cpu <= 10 and peak <= 1536 else 'NOT met'} (CPU); no-op repro <= 2 s: "
        f"{'met' if noop_wall <= 2 else 'NOT met'} (wall), {'met' if noop_cpu <= 2 else 'NOT met'} (CPU). "
        "Wall time on this shared machine depends on the load; CPU time much less.",
        "",
        "`fetch` copies the local archive while checking its md5 (a download adds network time); `ingest` "
        "decompresses the tar members in memory, unpickles them with the restricted unpickler and writes "
        "uint8 NHWC arrays; `prepare` splits, one-hot encodes and writes uint8 splits (no float copy of "
        "the images). Peak RSS is each process's own maximum (`os.wait4`).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
