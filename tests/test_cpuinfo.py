"""cifar_dvc.cpuinfo: the CPU's flags and model as /proc/cpuinfo gives them (runinfo's record of
them: tests/test_benchmark_runinfo.py)."""

from __future__ import annotations

from pathlib import Path

from cifar_dvc import cpuinfo

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
