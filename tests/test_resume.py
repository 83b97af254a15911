"""Resuming train@<name> after an interruption: a real training process killed after an epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

import cifar_dvc.models  # noqa: F401  (registers custom layers for load_model)
from cifar_dvc import artifacts
from cifar_dvc.modelinfo import load_info
from cifar_dvc.normalization import normalize
from cifar_dvc.training import resume

ROOT = Path(__file__).resolve().parent.parent

# Augmentation, dropout, BatchNorm, a plateau schedule, early stopping and a best checkpoint:
# every piece of state a resumed run must get back (dropout's random generator lives in the model,
# not in its weights). 12 short epochs, so the kill lands early and the test stays quick.
TINY = {
    "model": "base", "model_args": {"filters": 8, "dense_units": 16}, "epochs": 12, "batch_size": 16,
    "optimizer": {"name": "adam", "learning_rate": 0.003},
    "schedule": {"name": "plateau", "monitor": "val_loss", "factor": 0.5, "patience": 1},
    "augment": {"flip": True, "shift": 0.1, "channel_shift": 0.1},
    "early_stopping": 20,
}


def _stage(tmp: Path, prepared: Path, run: str) -> list[str]:
    params = tmp / "params.yaml"
    if not params.exists():
        params.write_text(yaml.safe_dump({"seed": 3, "train": {"verbose": "epoch"},
                                          "variants": {"tiny": TINY}}))
    out = tmp / run
    return [sys.executable, "-m", "stages.train", "--variant", "tiny", "--params", str(params),
            "--data", str(prepared), "--model", str(out / "models" / "tiny.keras"),
            "--live", str(out / "dvclive" / "tiny"), "--backup", str(out / "backups" / "tiny")]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the stage's own default: its stderr is checked below
    return env


def _kill_after_first_epoch(cmd: list[str], state: Path, timeout: float = 240) -> int:
    """Start ``cmd``, SIGKILL it as soon as its backup holds a finished epoch; the epoch it reached."""
    process = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while not state.exists():
            assert process.poll() is None, f"training ended before its first backup: {process.stderr.read()}"
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL, "the training finished before it could be killed"
    return json.loads(state.read_text())["epoch"]


def test_a_killed_training_resumes_and_ends_as_an_uninterrupted_one(tmp_path: Path,
                                                                    prepared_dir: Path) -> None:
    reference = subprocess.run(_stage(tmp_path, prepared_dir, "reference"), cwd=ROOT, env=_env(),
                               capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr
    # A CPU-only start prints none of TensorFlow's start-up lines (cifar_dvc.tfenv).
    for noise in ("cuda drivers", "cuInit", "CUDA error", "oneDNN", "absl::InitializeLog"):
        assert noise not in reference.stderr, reference.stderr

    cmd = _stage(tmp_path, prepared_dir, "killed")
    backup = tmp_path / "killed" / "backups" / "tiny"
    reached = _kill_after_first_epoch(cmd, backup / resume.STATE_FILE)
    assert 1 <= reached < TINY["epochs"]
    assert not (tmp_path / "killed" / "models" / "tiny.keras").exists()  # nothing that looks finished

    rerun = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming after epoch {reached} of {TINY['epochs']}" in rerun.stdout
    assert not backup.exists()  # removed once the outputs are written

    ref_model = tmp_path / "reference" / "models" / "tiny.keras"
    new_model = tmp_path / "killed" / "models" / "tiny.keras"
    ref_info, new_info = load_info(ref_model).training, load_info(new_model).training
    assert new_info["resumed_after_epoch"] == reached and new_info["epochs_run"] == ref_info["epochs_run"]
    for key in ("best_epoch", "best_value", "epochs_run"):
        assert new_info[key] == ref_info[key], key
    # Every epoch's logged metrics, the resumed ones included: the same curves, value for value.
    for metric in ("train/loss", "eval/accuracy", "eval/loss", "train/learning_rate"):
        ref_tsv = (tmp_path / "reference" / "dvclive" / "tiny" / "plots" / "metrics" / f"{metric}.tsv")
        new_tsv = (tmp_path / "killed" / "dvclive" / "tiny" / "plots" / "metrics" / f"{metric}.tsv")
        ref_rows = [line.split("\t")[1:] for line in ref_tsv.read_text().splitlines()[1:]]
        new_rows = [line.split("\t")[1:] for line in new_tsv.read_text().splitlines()[1:]]
        assert len(new_rows) == TINY["epochs"] and new_rows == ref_rows, metric  # step, value
    val = artifacts.load_split(prepared_dir / "val.npz")
    x = normalize(val.x, load_info(ref_model).normalization)
    np.testing.assert_array_equal(keras.models.load_model(ref_model).predict(x, verbose=0),
                                  keras.models.load_model(new_model).predict(x, verbose=0))


def test_a_backup_of_other_params_or_data_is_discarded(tmp_path: Path) -> None:
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "epoch-2.weights.h5").write_bytes(b"weights")
    (backup / resume.STATE_FILE).write_text(json.dumps({"fingerprint": resume.fingerprint(lr=0.1),
                                                        "epoch": 2, "weights": "epoch-2.weights.h5"}))
    assert resume.load_state(backup, resume.fingerprint(lr=0.1))["epoch"] == 2
    assert resume.load_state(backup, resume.fingerprint(lr=0.2)) is None  # params changed since
    assert not backup.exists()  # and it can never be mistaken for this run's again


@pytest.mark.parametrize("broken", ["garbage", "no weights"])
def test_an_unreadable_backup_starts_over(tmp_path: Path, broken: str) -> None:
    backup = tmp_path / "backup"
    backup.mkdir()
    state = {"fingerprint": resume.fingerprint(), "epoch": 1, "weights": "epoch-1.weights.h5"}
    (backup / resume.STATE_FILE).write_text("{not json" if broken == "garbage" else json.dumps(state))
    assert resume.load_state(backup, resume.fingerprint()) is None
