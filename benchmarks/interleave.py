"""Time several commands on a host whose speed drifts: run them in turns, each in its own slices.

A 2-core VM here ran the same epoch of `fast` in 98 s and in 229 s within one run, with nothing
else on it (`results/fast.md`): two trainings timed one after the other see different hosts, and
their ratio carries that drift. This harness starts every command stopped, then lets one run at a
time for ``--slice`` seconds (``SIGCONT``), stops it (``SIGSTOP``) and moves to the next, round
robin, until every command has exited. Over a long run each command sees the same mix of fast
and slow host minutes while more than one is left, so their ratio of *active* time (the sum of
their own slices) is what the host's drift leaves out. Once the shorter command has ended the
longer one runs on alone; the report says how much of its time that was (``alone_seconds``).

Every command runs in its own session (``setsid``); a slice starts and stops every process of
that session, so the stage processes ``dvc repro`` spawns stop with it. CPU seconds (user +
system, all threads and waited-for children) come from each command's ``wait4`` rusage.
Timers inside the commands count the stopped time too: only this harness's figures are valid.
Ended by SIGTERM, SIGHUP or SIGINT, the harness ends the commands too (none is left stopped)
and exits 128 + the signal's number without a record.

Run by hand, e.g. `fast` through DVC against the PyTorch airbench94 on the same data:

    python benchmarks/interleave.py --out benchmarks/results/interleave_fast_airbench94.json \\
        --run fast 'cd ../repro && dvc repro --force --single-item train@fast' \\
        --run airbench94 '.venv-peer/bin/python benchmarks/peer_airbench.py --recipe 94 --split train \\
            --data ../repro/data/prepared --out /tmp/peer94.json'

Reads ``/proc`` (each session's processes, the CPU). Writes ``--out`` (JSON, atomically; the
commands' output goes to ``--logs``).
Standard library only, with its sibling ``runinfo``: it imports nothing of the project or of
TensorFlow, so its own CPU use stays out of the slices.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import runinfo  # benchmarks/runinfo.py: standard library only


@dataclasses.dataclass
class Command:
    """One command under the harness: its process, and the time it has been let run."""

    name: str
    shell: str
    proc: subprocess.Popen
    active_seconds: float = 0.0
    alone_seconds: float = 0.0  # the part of active_seconds after every other command had ended
    slices: int = 0
    returncode: int | None = None
    cpu_seconds: float | None = None


def session_members(sid: int) -> list[int]:
    """The pids of every live process in session ``sid`` (Linux ``/proc``)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # ended while we looked
            continue
        # The second field (comm) may hold spaces and parentheses: the rest starts after the last ')'
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def signal_session(sid: int, sig: int) -> None:
    """Send ``sig`` to every process of session ``sid``, twice over, so that a child forked while
    the first pass ran is caught by the second."""
    for _ in range(2):
        for pid in session_members(sid):
            with contextlib.suppress(ProcessLookupError):  # ended in between
                os.kill(pid, sig)


def start(name: str, shell: str, log: Path) -> Command:
    """Start ``shell`` (bash) in a new session, stopped before it executes anything."""
    # bash stops itself, then becomes the command: Popen returns at the first exec, so the stop
    # cannot come before it (a preexec_fn that stopped the child would block Popen for good).
    wrapper = 'kill -STOP $$; exec bash -c "$1"'
    with open(log, "ab") as out:
        proc = subprocess.Popen(["bash", "-c", wrapper, "interleave", shell], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    _, status = os.waitpid(proc.pid, os.WUNTRACED)  # returns once the child has stopped itself
    if not os.WIFSTOPPED(status):
        raise RuntimeError(f"interleave: {name!r} did not start stopped (wait status {status})")
    return Command(name, shell, proc)


def run_slice(cmd: Command, seconds: float, alone: bool) -> None:
    """Let ``cmd`` run for up to ``seconds``; record its rusage and exit status if it ends."""
    began = time.perf_counter()
    signal_session(cmd.proc.pid, signal.SIGCONT)
    deadline = began + seconds
    while True:
        pid, status, usage = os.wait4(cmd.proc.pid, os.WNOHANG)
        now = time.perf_counter()
        if pid:  # exited (wait4 without WUNTRACED reports no stops)
            cmd.returncode = os.waitstatus_to_exitcode(status)
            cmd.proc.returncode = cmd.returncode
            cmd.cpu_seconds = round(usage.ru_utime + usage.ru_stime, 2)
            break
        if now >= deadline:
            signal_session(cmd.proc.pid, signal.SIGSTOP)
            break
        time.sleep(min(0.05, deadline - now))
    elapsed = time.perf_counter() - began
    cmd.active_seconds += elapsed
    cmd.alone_seconds += elapsed if alone else 0.0
    cmd.slices += 1


def interleave(commands: list[Command], slice_seconds: float) -> None:
    """Round-robin slices until every command has exited."""
    while live := [c for c in commands if c.returncode is None]:
        for cmd in live:
            run_slice(cmd, slice_seconds, alone=len(live) == 1)


def stop_all(commands: list[Command]) -> None:
    """On an early exit of the harness: end the commands rather than leave them stopped."""
    for cmd in commands:
        if cmd.returncode is None:
            signal_session(cmd.proc.pid, signal.SIGTERM)
            signal_session(cmd.proc.pid, signal.SIGCONT)


def report(commands: list[Command], slice_seconds: float, began: str, wall: float) -> dict[str, Any]:
    """The record: each command's active and CPU time, and the ratios to the first command."""
    model, flags = runinfo.cpu()
    first = commands[0]
    return {
        "command": runinfo.command(),
        "date": began,
        "machine": {"cpu": model, "cores": os.cpu_count(), "flags": flags, "load_after": runinfo.load()},
        "slice_seconds": slice_seconds,
        "wall_seconds": round(wall, 2),
        "runs": [{"name": c.name, "command": c.shell, "returncode": c.returncode,
                  "active_seconds": round(c.active_seconds, 2), "alone_seconds": round(c.alone_seconds, 2),
                  "cpu_seconds": c.cpu_seconds, "slices": c.slices,
                  "active_ratio_to_first": round(c.active_seconds / max(first.active_seconds, 1e-9), 4),
                  "cpu_ratio_to_first": (round(c.cpu_seconds / first.cpu_seconds, 4)
                                         if c.cpu_seconds and first.cpu_seconds else None)}
                 for c in commands],
    }


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", nargs=2, action="append", metavar=("NAME", "SHELL_COMMAND"), required=True,
                        help="a command to time (bash -c); give two or more")
    parser.add_argument("--slice", type=float, default=30.0, help="seconds each command runs per turn")
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "interleave",
                        help="folder for each command's output (NAME.log)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON record")
    args = parser.parse_args(argv)
    names = [name for name, _ in args.run]
    if len(names) < 2 or len(set(names)) != len(names):
        parser.error(f"--run: two or more commands with distinct names expected, got {names}")
    if args.slice <= 0:
        parser.error(f"--slice: a positive number of seconds expected, got {args.slice}")
    args.logs.mkdir(parents=True, exist_ok=True)

    began, t0 = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), time.perf_counter()
    commands: list[Command] = []
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):  # a stopped command must not outlive us
        signal.signal(sig, _exit_on_signal)
    try:
        for name, shell in args.run:
            commands.append(start(name, shell, args.logs / f"{name}.log"))
        interleave(commands, args.slice)
    except SystemExit as stop:  # a signal
        stop_all(commands)
        print(f"interleave: ended by signal {int(stop.code) - 128}; the commands were ended too",
              file=sys.stderr)
        return int(stop.code)
    except BaseException:
        stop_all(commands)
        raise
    record = report(commands, args.slice, began, time.perf_counter() - t0)
    runinfo.write_atomic(args.out, json.dumps(record, indent=2) + "\n")
    for run in record["runs"]:
        print(f"{run['name']}: rc {run['returncode']}, active {run['active_seconds'] / 60:.1f} min "
              f"({run['alone_seconds'] / 60:.1f} alone), CPU {(run['cpu_seconds'] or 0) / 60:.1f} min, "
              f"{run['active_ratio_to_first']:.3f}x the first's active time", flush=True)
    failed = [r["name"] for r in record["runs"] if r["returncode"] != 0]
    if failed:
        print(f"interleave: {', '.join(failed)} exited non-zero; see {args.logs}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
