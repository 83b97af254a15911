"""Which CPU this is: its feature flags and its model, as ``/proc/cpuinfo`` tells them.

Standard library only, so that ``benchmarks/runinfo.py`` (which the peer's PyTorch venv imports,
without this project's dependencies) records the CPU exactly as the project's own results do.
Used by ``cifar_dvc.training.precision`` (``train.precision: auto``) and the benchmarks. Reads
``/proc/cpuinfo`` (Linux; elsewhere no flags are found and the model is ``platform``'s); writes
nothing.
"""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(path: Path | str | None = None) -> set[str]:
    """The CPU feature flags of the first processor in ``path`` (default ``/proc/cpuinfo``; empty
    where it cannot be read)."""
    try:
        text = Path(CPUINFO if path is None else path).read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")) and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model(path: Path | str | None = None) -> str:
    """The CPU's model name (``model name`` in ``/proc/cpuinfo``) with its family and model numbers,
    else what ``platform`` says. Under a hypervisor the name is often only "AMD EPYC" or "Intel(R)
    Xeon(R) Processor", the same for CPUs that train 2-4x apart; the numbers tell them apart (AMD
    family 25 = Zen 3/4, 26 = Zen 5)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path(CPUINFO if path is None else path).read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if not sep:
                if fields:  # the end of the first processor's block
                    break
                continue
            fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name")
    if not name:
        return platform.processor() or platform.machine()
    if fields.get("cpu family") and fields.get("model"):
        return f"{name}, family {fields['cpu family']} model {fields['model']}"
    return name
