"""How a benchmark ran, as its results file records it: the command line, the load average and the
CPU; and the atomic write of that file.

The command is rebuilt from the running process, so a record says ``nice -n 10`` only when the run
really was niced (``os.nice(0)``), and says the interpreter and arguments it really had; the load
average is what the machine did around the run, in place of fixed text such as "shared machine".

Standard library only: the peer's venv (``benchmarks/peer_airbench.py``) imports it too; it loads
the project's ``cifar_dvc/cpuinfo.py`` (standard library only as well) by its path. Imported by the
scripts in ``benchmarks/`` (``import runinfo``: a script's own folder is on ``sys.path``). Reads
``/proc/cpuinfo``; writes only what a caller gives ``write_atomic``.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
import tempfile
from pathlib import Path
from types import ModuleType


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


# The CPU flags that decide a training's speed here: AVX-512, and bfloat16 in AVX-512 or AMX
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")


def _cpuinfo() -> ModuleType:
    """The project's ``cifar_dvc/cpuinfo.py`` (standard library only), loaded from its file so that
    nothing else of the package, nor its dependencies, is imported into the peer's venv."""
    path = Path(__file__).resolve().parents[1] / "cifar_dvc" / "cpuinfo.py"
    spec = importlib.util.spec_from_file_location("_cifar_dvc_cpuinfo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu(path: Path | None = None) -> tuple[str, list[str]]:
    """The CPU's model, with its family and model numbers as the project's own results name it
    (``cifar_dvc.cpuinfo.cpu_model``: "AMD EPYC" alone is a Zen 3, 4 or 5), and which of
    ``SPEED_FLAGS`` it has; from ``path`` (default ``/proc/cpuinfo``)."""
    info = _cpuinfo()
    flags = info.cpu_flags(path)
    return info.cpu_model(path), [f for f in SPEED_FLAGS if f in flags]


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, renamed over it, with
    the mode a plain ``open`` would give (mkstemp's own is 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        os.fchmod(handle.fileno(), 0o666 & ~umask)
    os.replace(tmp, path)
