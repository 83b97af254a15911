"""cifar_dvc/tfenv.py: TensorFlow starts with oneDNN's CPU kernels unless the environment says no."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("from cifar_dvc.tfenv import import_tensorflow, onednn_enabled; import_tensorflow(); "
         "print(onednn_enabled())")


def _probe(**env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env={**environment, **env},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "AMD64"), reason="oneDNN's x86 kernels")
def test_onednn_is_on_by_default_and_an_explicit_0_wins() -> None:
    # TensorFlow alone leaves oneDNN off on CPUs without AVX-512 VNNI/BF16 or AMX; the project
    # turns it on everywhere (with it, `fast` trains 1.48x faster on an AVX2 EPYC).
    assert _probe() == "True"
    assert _probe(TF_ENABLE_ONEDNN_OPTS="0") == "False"


def test_set_defaults_keeps_values_already_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from cifar_dvc import tfenv

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    tfenv.set_defaults()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
