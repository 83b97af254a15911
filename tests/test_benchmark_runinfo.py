"""benchmarks/runinfo.py: a results file records the command as it really ran (niceness included)."""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.test_cpuinfo import ZEN5

ROOT = Path(__file__).resolve().parents[1]


def _runinfo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("runinfo", ROOT / "benchmarks" / "runinfo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_command_names_the_real_niceness_only_when_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    runinfo = _runinfo()
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "executable", str(ROOT / ".venv" / "bin" / "python"))
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / "robustness.py"), "--variants", "fast",
                                      "--out", "a b.md"])
    monkeypatch.setattr(os, "nice", lambda increment: 0)
    plain = runinfo.command()
    assert plain == ".venv/bin/python benchmarks/robustness.py --variants fast --out 'a b.md'"
    assert shlex.split(plain)[-1] == "a b.md"  # quoted so a shell gets the argument back

    monkeypatch.setattr(os, "nice", lambda increment: 7)
    assert runinfo.command(["--smoke"]) == "nice -n 7 .venv/bin/python benchmarks/robustness.py --smoke"


def test_command_keeps_paths_outside_the_working_directory_absolute(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    runinfo = _runinfo()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "executable", "/usr/bin/python3")
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / "x.py")])
    monkeypatch.setattr(os, "nice", lambda increment: 0)
    assert runinfo.command() == f"/usr/bin/python3 {ROOT / 'benchmarks' / 'x.py'}"


def test_load_is_three_averages() -> None:
    values = _runinfo().load().split(" / ")
    assert len(values) == 3 and all(float(v) >= 0 for v in values)


def test_runinfo_records_the_family_and_model_too(tmp_path: Path) -> None:
    """The peer's records (benchmarks/peer_airbench.py) went through runinfo.cpu() and said only
    "AMD EPYC" for a Zen 4 and a Zen 5 that train 1.7x apart."""
    fake = tmp_path / "cpuinfo"
    fake.write_text(ZEN5)
    assert _runinfo().cpu(fake) == ("AMD EPYC, family 26 model 2", ["avx2", "fma", "avx512f", "avx512_bf16"])


def test_runinfo_stays_standard_library_only() -> None:
    """The peer's venv has no numpy, Keras or yaml: runinfo.cpu() must import none of them, nor the
    project's package (whose modules may)."""
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import runinfo; runinfo.cpu(); "
            "heavy = {'numpy', 'keras', 'tensorflow', 'yaml', 'cifar_dvc'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
