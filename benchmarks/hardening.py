"""Peak memory of the stages on hostile inputs (issue 16): each must stay under 600 MB (by hand).

In a scratch folder (``--work``, default a temporary folder; never the repository), builds:

1. a photo folder holding one 3 GB sparse file (no disk space used) in a class folder, beside one
   real photo, and runs the ``custom`` stage on it (``custom.on_error: skip``, then ``fail``);
2. 2 GiB gzip and xz bombs: tar archives (``synthetic-python.tar.gz`` layout) holding a member of
   2 GiB of zeros that the stage does not ask for, so ingest must inflate through it (the cap stops
   it at 1 GiB) -- the hard case for memory; the compressed files are a few MB: the classic gzip
   bomb as one stream, and gzip and xz as 32 concatenated streams of 64 MiB each (as ``cat a.gz
   b.gz`` makes; built in seconds, and the xz reader of git HEAD reads them too); and a gzip bomb
   whose wanted member claims 2 GiB in its header. Runs ``ingest`` on each;
3. ``fetch`` with ``data.synthetic.train_per_class: 1000000000`` (refused from the params).

Each stage runs as its own process under ``/usr/bin/time -v`` (peak RSS = "Maximum resident set
size"; ``os.wait4`` of a small intermediate process if GNU time is missing). With ``--baseline``
the same inputs also go through the code of git ``HEAD`` (exported with ``git archive`` into the
scratch folder; the working tree is not touched), for a before/after table.

Writes ``benchmarks/results/hardening.md`` (machine, command, figures).

    nice -n 10 .venv/bin/python benchmarks/hardening.py [--baseline]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import lzma
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import runinfo  # noqa: E402  (benchmarks/runinfo.py)
import yaml  # noqa: E402  (after the path setup)
from PIL import Image  # noqa: E402

from cifar_dvc import artifacts, atomic  # noqa: E402
from cifar_dvc.cpuinfo import cpu_model  # noqa: E402
from cifar_dvc.datasets import sources  # noqa: E402
from cifar_dvc.datasets.params import SyntheticParams  # noqa: E402
from tests.synthetic_sets import write_prepared  # noqa: E402  (the tests' synthetic sets, one maker)

GiB = 1024**3
MiB = 1024**2
LIMIT_MB = 600
RESULTS = ROOT / "benchmarks" / "results" / "hardening.md"
WAIT4 = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(child.pid, 0)
print(f"Maximum resident set size (kbytes): {usage.ru_maxrss}", file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measure(command: list[str], cwd: Path, code_root: Path) -> tuple[int, float, float, str]:
    """Exit status, peak RSS (MB), wall seconds and the stage's own stderr (last line) of ``command``."""
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    wrapper = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else [sys.executable, "-c", WAIT4]
    start = time.perf_counter()
    result = subprocess.run([*wrapper, *command], cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    peak = int(match.group(1)) / 1024 if match else float("nan")
    own = [line for line in result.stderr.splitlines()
           if line.strip() and not line.startswith(("\t", "Command ")) and "Maximum resident" not in line]
    return result.returncode, peak, seconds, own[-1] if own else ""


def zeros_stream(compress: str, size: int, piece: int = 64 * MiB) -> bytes:
    """One compressed stream of ``piece`` zeros; the bomb repeats it ``size // piece`` times."""
    assert size % piece == 0
    if compress == "gzip":
        comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return comp.compress(bytes(piece)) + comp.flush()
    return lzma.compress(bytes(piece), format=lzma.FORMAT_XZ, preset=6)


def one_stream(compress: str, data: bytes) -> bytes:
    if compress == "gzip":
        comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return comp.compress(data) + comp.flush()
    return lzma.compress(data, format=lzma.FORMAT_XZ)


def write_bomb(path: Path, compress: str, member: str, size: int = 2 * GiB, single: bool = False) -> None:
    """A tar whose member ``member`` holds ``size`` zeros, as concatenated ``compress`` streams
    (``single``: gzip as one stream, the classic bomb)."""
    info = tarfile.TarInfo(member)
    info.size = size
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    if single:
        comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        with open(path, "wb") as out:
            out.write(comp.compress(header))
            for _ in range(size // MiB):
                out.write(comp.compress(bytes(MiB)))
            out.write(comp.flush())
        return
    zeros = zeros_stream(compress, size)
    with open(path, "wb") as out:
        out.write(one_stream(compress, header))
        for _ in range(size // (64 * MiB)):
            out.write(zeros)


def build_inputs(work: Path) -> list[tuple[str, str, list[str], Path]]:
    """(name, input description, stage argv after ``-m``, params file) of every measurement."""
    prepared = write_prepared(work / "data", SyntheticParams(train_per_class=20, test_per_class=10), seed=7)
    classes = artifacts.load_meta(prepared).classes
    photos = work / "photos"
    (photos / classes[0]).mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (400, 300), (200, 40, 40)).save(photos / classes[0] / "real.jpg")
    with open(photos / classes[0] / "huge.jpg", "wb") as handle:
        handle.truncate(3 * 10**9)  # 3 GB, sparse
    params = {}
    for name, content in {
        "custom-skip": {"custom": {"on_error": "skip"}},
        "custom-fail": {"custom": {"on_error": "fail"}},
        "ingest": {"data": {"dataset": "synthetic"}},
        "fetch": {"data": {"dataset": "synthetic", "synthetic": {"train_per_class": 1_000_000_000}}},
    }.items():
        params[name] = work / f"params-{name}.yaml"
        params[name].write_text(yaml.safe_dump(content))
    runs = []
    for mode in ("skip", "fail"):
        runs.append((f"custom ({mode})", "photo folder: one 3 GB sparse file + one 400x300 JPEG",
                     ["stages.custom", "--photos", str(photos), "--prepared", str(prepared),
                      "--out", str(work / "out" / "custom_sets"), "--sheet", str(work / "out" / "sheet.png")],
                     params[f"custom-{mode}"]))
    pad, batch = "cifar-10-batches-py/padding.bin", "cifar-10-batches-py/data_batch_1"
    bombs = [("gzip", pad, "2 GiB gzip bomb (one stream, unwanted 2 GiB member)"),
             ("gzip", pad, "2 GiB gzip bomb (32 streams, unwanted 2 GiB member)"),
             ("xz", pad, "2 GiB xz bomb (32 streams, unwanted 2 GiB member)"),
             ("gzip", batch, "2 GiB gzip bomb (wanted member of 2 GiB)")]
    for i, (compress, member, label) in enumerate(bombs):
        raw = work / f"raw-{i}"
        raw.mkdir(exist_ok=True)
        archive = raw / sources.SYNTHETIC_ARCHIVE
        if not archive.exists():
            write_bomb(archive, compress, member, single="one stream" in label)
        size = archive.stat().st_size / MiB
        runs.append((f"ingest ({label.split(' (')[0]})",
                     f"{label}; {size:.1f} MB compressed",
                     ["stages.ingest", "--raw", str(raw), "--out", str(work / "out" / "interim")],
                     params["ingest"]))
    runs.append(("fetch", "data.synthetic.train_per_class: 1000000000",
                 ["stages.fetch", "--out", str(work / "out" / "raw")], params["fetch"]))
    return runs


def export_head(work: Path) -> Path:
    """The code of git HEAD in ``work/head`` (``git archive``: reads the repository, changes nothing)."""
    target = work / "head"
    if not target.exists():
        target.mkdir()
        archive = subprocess.run(["git", "archive", "HEAD", "cifar_dvc", "stages"], cwd=ROOT,
                                 capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target, filter="data")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--baseline", action="store_true", help="also run git HEAD's code on the same inputs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="hardening-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = runinfo.load()
    started = time.perf_counter()
    runs = build_inputs(work)
    build_seconds = time.perf_counter() - started
    codes = [("this tree", ROOT)] + ([("git HEAD", export_head(work))] if args.baseline else [])
    rows = []
    for name, what, argv, params in runs:
        for code_name, code_root in codes:
            shutil.rmtree(work / "out", ignore_errors=True)
            command = [sys.executable, "-m", *argv, "--params", str(params)]
            status, peak, seconds, last = measure(command, work, code_root)
            rows.append((name, what, code_name, status, peak, seconds, last))
            print(f"{name:28} {code_name:10} exit {status} peak {peak:7.0f} MB {seconds:6.1f} s  "
                  f"{last[:150]}", flush=True)
    shutil.rmtree(work / "out", ignore_errors=True)
    load_after = runinfo.load()
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    ours = [r for r in rows if r[2] == "this tree"]
    met = all(r[4] < LIMIT_MB for r in ours)
    lines = [
        "# Hardening benchmark: peak memory of the stages on hostile inputs (issue 16)",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores, "
        f"{mem_gb:.0f} GB RAM, {platform.platform()}, Python {platform.python_version()}",
        f"- Load average (1/5/15 min) before: {load_before}; after: {load_after}",
        f"- Command: `{runinfo.command()}` (inputs built in {build_seconds:.0f} s, scratch folder)",
        "- Peak RSS: `/usr/bin/time -v` \"Maximum resident set size\" of the stage process "
        "(`python -m stages.<stage> ... --params <file>`)",
        "",
        "| stage | input | code | exit | peak RSS (MB) | wall (s) | stage's last stderr line |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for name, what, code_name, status, peak, seconds, last in rows:
        shown = last.replace("|", "\\|").replace(str(work), "<work>")
        if len(shown) > 200:
            shown = shown[:200] + "..."
        lines.append(f"| {name} | {what} | {code_name} | {status} | {peak:.0f} | {seconds:.1f} | {shown} |")
    lines += ["", f"Goal: every stage of this tree under {LIMIT_MB} MB: {'met' if met else 'NOT met'}."]
    atomic.write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
