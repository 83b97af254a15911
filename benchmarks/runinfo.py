"""How a benchmark ran, as its results file records it: the command line and the load average.

The command is rebuilt from the running process, so a record says ``nice -n 10`` only when the run
really was niced (``os.nice(0)``), and says the interpreter and arguments it really had; the load
average is what the machine did around the run, in place of fixed text such as "shared machine".

Standard library only: the peer's venv (``benchmarks/peer_airbench.py``) imports it too. Imported
by the scripts in ``benchmarks/`` (``import runinfo``: a script's own folder is on ``sys.path``).
Reads and writes nothing.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path


def command(argv: list[str] | None = None) -> str:
    """This process's command line as a reader would retype it from the repository's root: the
    interpreter and script relative to the working directory, the arguments (``argv``, default
    ``sys.argv[1:]``) quoted for a shell, behind ``nice -n N`` when the process runs at niceness N."""
    def shown(path: str) -> str:
        absolute = Path(path).absolute()
        return os.path.relpath(absolute) if absolute.is_relative_to(Path.cwd()) else str(path)

    words = [shown(sys.executable), shown(sys.argv[0]), *(sys.argv[1:] if argv is None else argv)]
    niceness = os.nice(0)
    return (f"nice -n {niceness} " if niceness else "") + shlex.join(words)


def load() -> str:
    """The 1, 5 and 15-minute load averages, as ``1.52 / 1.10 / 0.98``."""
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())
