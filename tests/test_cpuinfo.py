"""cifar_dvc.cpuinfo: the CPU's flags and model as /proc/cpuinfo gives them, and runinfo's record of them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from cifar_dvc import cpuinfo

ROOT = Path(__file__).resolve().parents[1]
ZEN5 = ("processor\t: 0\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
        "flags\t\t: fpu avx2 fma avx512f avx512_bf16\n\n"
        "processor\t: 1\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: other\nflags\t\t: fpu\n")


def test_cpu_model_names_family_and_model_of_the_first_processor(tmp_path: Path) -> None:
    """A hypervisor's bare "AMD EPYC" is Zen 3, 4 or 5: the numbers say which."""
    fake = tmp_path / "cpuinfo"
    fake.write_text(ZEN5)
    assert cpuinfo.cpu_model(fake) == "AMD EPYC, family 26 model 2"
    fake.write_text("processor\t: 0\nmodel name\t: Apple M9\n")
    assert cpuinfo.cpu_model(fake) == "Apple M9"
    assert cpuinfo.cpu_model(tmp_path / "missing")  # platform's answer, never empty


def test_cpu_flags_are_the_first_processors(tmp_path: Path) -> None:
    fake = tmp_path / "cpuinfo"
    fake.write_text(ZEN5)
    assert cpuinfo.cpu_flags(fake) == {"fpu", "avx2", "fma", "avx512f", "avx512_bf16"}
    fake.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")  # an ARM kernel's spelling
    assert cpuinfo.cpu_flags(fake) == {"fp", "asimd", "bf16"}
    assert cpuinfo.cpu_flags(tmp_path / "missing") == set()


def test_runinfo_records_the_family_and_model_too(tmp_path: Path) -> None:
    """The peer's records (benchmarks/peer_airbench.py) went through runinfo.cpu() and said only
    "AMD EPYC" for a Zen 4 and a Zen 5 that train 1.7x apart."""
    spec = importlib.util.spec_from_file_location("runinfo", ROOT / "benchmarks" / "runinfo.py")
    runinfo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runinfo)
    fake = tmp_path / "cpuinfo"
    fake.write_text(ZEN5)
    assert runinfo.cpu(fake) == ("AMD EPYC, family 26 model 2", ["avx2", "fma", "avx512f", "avx512_bf16"])


def test_runinfo_stays_standard_library_only() -> None:
    """The peer's venv has no numpy, Keras or yaml: runinfo.cpu() must import none of them, nor the
    project's package (whose modules may)."""
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import runinfo; runinfo.cpu(); "
            "heavy = {'numpy', 'keras', 'tensorflow', 'yaml', 'cifar_dvc'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
