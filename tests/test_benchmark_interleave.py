"""benchmarks/interleave.py: commands take turns (never two at once, children included), and the
record gives each its own active and CPU time."""

from __future__ import annotations

import itertools
import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "interleave.py"

# Records a timestamp every 10 ms of its own running until it has recorded ``n``: stopped time
# does not count, so it ends after about n * 10 ms of running, however it is sliced.
TICKER = """
import sys, time
path, n = sys.argv[1], int(sys.argv[2])
with open(path, "w") as out:
    for _ in range(n):
        out.write(f"{time.monotonic()}\\n"); out.flush()
        time.sleep(0.01)
"""


def _interleave(tmp_path: Path, *runs: tuple[str, str]) -> subprocess.CompletedProcess:
    args = [sys.executable, str(SCRIPT), "--slice", "0.3", "--logs", str(tmp_path / "logs"),
            "--out", str(tmp_path / "record.json")]
    for name, shell in runs:
        args += ["--run", name, shell]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def _ticker(tmp_path: Path, name: str, n: int) -> str:
    script = tmp_path / "ticker.py"
    script.write_text(TICKER)
    return f"{shlex.quote(sys.executable)} {script} {tmp_path / name}.ticks {n}"


def test_commands_take_turns_and_each_gets_its_own_time(tmp_path: Path) -> None:
    # "a" runs its ticker as a grandchild behind a shell that waits: the slice must stop it too.
    a = f"{_ticker(tmp_path, 'a', 120)} & wait"
    b = _ticker(tmp_path, "b", 60)
    done = _interleave(tmp_path, ("a", a), ("b", b))
    assert done.returncode == 0, done.stderr

    ticks = sorted([(float(t), "a") for t in (tmp_path / "a.ticks").read_text().split()]
                   + [(float(t), "b") for t in (tmp_path / "b.ticks").read_text().split()])
    assert [who for _, who in ticks].count("a") == 120
    switches = sum(1 for (_, x), (_, y) in itertools.pairwise(ticks) if x != y)
    # Run side by side they would alternate at nearly every tick (~120 switches); in 0.3 s slices
    # of ~1.2 s and ~0.6 s of work they switch a handful of times.
    assert 2 <= switches <= 12, switches

    record = json.loads((tmp_path / "record.json").read_text())
    runs = {r["name"]: r for r in record["runs"]}
    assert runs["a"]["returncode"] == runs["b"]["returncode"] == 0
    # Active time is the command's own running time: ~1.2 s and ~0.6 s, not the harness's wall.
    assert 1.0 < runs["a"]["active_seconds"] < 3.0
    assert 0.5 < runs["b"]["active_seconds"] < 2.0
    assert runs["a"]["active_seconds"] + runs["b"]["active_seconds"] <= record["wall_seconds"] + 0.1
    assert runs["b"]["alone_seconds"] == 0.0 and runs["a"]["alone_seconds"] > 0.0  # "a" ends last
    assert runs["a"]["slices"] >= 3 and runs["b"]["slices"] >= 2
    assert runs["a"]["cpu_seconds"] is not None and runs["a"]["active_ratio_to_first"] == 1.0
    assert record["machine"]["cores"] and record["slice_seconds"] == 0.3
    # Written as a plain open() would (runinfo.write_atomic), not with mkstemp's 0600
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "record.json").stat().st_mode) == 0o666 & ~umask


def test_a_failing_command_makes_the_harness_fail_after_the_others_finish(tmp_path: Path) -> None:
    done = _interleave(tmp_path, ("ok", _ticker(tmp_path, "ok", 20)), ("bad", "exit 3"))
    assert done.returncode == 1
    assert "bad exited non-zero" in done.stderr
    runs = {r["name"]: r for r in json.loads((tmp_path / "record.json").read_text())["runs"]}
    assert runs["bad"]["returncode"] == 3 and runs["ok"]["returncode"] == 0
    assert len((tmp_path / "ok.ticks").read_text().split()) == 20


def test_one_command_or_repeated_names_are_refused(tmp_path: Path) -> None:
    one = _interleave(tmp_path, ("a", "true"))
    assert one.returncode == 2 and "two or more commands with distinct names" in one.stderr
    same = _interleave(tmp_path, ("a", "true"), ("a", "true"))
    assert same.returncode == 2 and "distinct names" in same.stderr
    assert not (tmp_path / "record.json").exists()


def test_a_signalled_harness_ends_its_commands_instead_of_leaving_them_stopped(tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        runs += ["--run", name, f"echo $$ > {tmp_path / name}.pid; exec sleep 60"]
    args = [sys.executable, str(SCRIPT), "--slice", "0.3", "--logs", str(tmp_path / "logs"),
            "--out", str(tmp_path / "record.json"), *runs]
    harness = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"{n}.pid").exists() and (tmp_path / f"{n}.pid").read_text().strip()
                  for n in ("a", "b")):
        assert time.monotonic() < deadline and harness.poll() is None
        time.sleep(0.05)
    pids = [int((tmp_path / f"{n}.pid").read_text()) for n in ("a", "b")]
    harness.send_signal(signal.SIGTERM)
    _, err = harness.communicate(timeout=30)
    assert harness.returncode == 128 + signal.SIGTERM
    assert "ended by signal 15; the commands were ended too" in err and "Traceback" not in err
    assert not (tmp_path / "record.json").exists()
    for pid in pids:  # both sleeps (one stopped at the signal) are gone, not stopped forever
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists() or _state(pid) == "Z"


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat[stat.rindex(")") + 2:].split()[0]
