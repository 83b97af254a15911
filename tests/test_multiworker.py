"""Multi-worker training (cifar_dvc.training.distribute): TF_CONFIG parsing, the chief rule, where a
non-chief writes, and real two-worker runs of the train stage over loopback.

The loopback tests start two ``python -m cifar_dvc.training.distribute`` processes (the
``cifar-dvc-worker`` command) on 127.0.0.1 with free ports, each in its own folder as if on its own
machine, on a small synthetic set made by the project's own code (``tests/synthetic_sets.py``). One
2-worker run of `fast` serves both loopback tests (the chief's outputs, the accuracy against a
single-process run, and the repeatability against a second 2-worker run): the cost of a run is
mostly each process importing TensorFlow and tracing the model, not the training steps. Every
process runs in its own session and is killed (the whole group) when its run ends, whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from cifar_dvc import artifacts
from cifar_dvc.datasets.params import SyntheticParams
from cifar_dvc.errors import UserError
from cifar_dvc.training import distribute
from tests.synthetic_sets import write_prepared

ROOT = Path(__file__).resolve().parent.parent
# Seconds for one run of the workers (about 40 CPU seconds for the two): a hung collective must not
# hang the suite, and a machine loaded 5x over must not fail it.
RUN_TIMEOUT = 300
# 16x16 letters, 10 classes, 1,800 training images: `fast` (BatchNorm, global pooling) is well above
# chance after one epoch (51 steps of 32), which the seed models (no normalization) are not on this set.
DATA = SyntheticParams(num_classes=10, train_per_class=200, test_per_class=20, image_size=16)
FAST = {"model": "fast", "model_args": {"width": 8, "stem": "conv", "stem_width": 16}, "epochs": 1,
        "batch_size": 32, "checkpoint": "last", "optimizer": {"name": "adam", "learning_rate": 0.005}}


# ---------------------------------------------------------------------------------------------
# TF_CONFIG, the chief, where a worker writes (no TensorFlow runtime started)


def _conf(kind: str, index: int, workers: int = 2, chief: bool = False) -> dict:
    cluster = {"worker": [f"127.0.0.1:{2000 + i}" for i in range(workers)]}
    if chief:
        cluster["chief"] = ["127.0.0.1:1999"]
    return {"cluster": cluster, "task": {"type": kind, "index": index}}


def test_read_tf_config_parses_and_rejects_bad_values() -> None:
    assert distribute.read_tf_config({}) is None
    assert distribute.read_tf_config({"TF_CONFIG": "  "}) is None
    conf = _conf("worker", 1)
    assert distribute.read_tf_config({"TF_CONFIG": json.dumps(conf)}) == conf
    with pytest.raises(UserError, match="TF_CONFIG: not valid JSON"):
        distribute.read_tf_config({"TF_CONFIG": "{cluster"})
    with pytest.raises(UserError, match=re.escape('expected {"cluster"')):
        distribute.read_tf_config({"TF_CONFIG": json.dumps({"cluster": []})})
    with pytest.raises(UserError, match="task 'worker' index 2 is not in the cluster"):
        distribute.read_tf_config({"TF_CONFIG": json.dumps(_conf("worker", 2))})


def test_the_chief_is_task_chief_or_else_worker_0() -> None:
    assert distribute.is_chief(_conf("worker", 0)) and not distribute.is_chief(_conf("worker", 1))
    assert distribute.is_chief(_conf("chief", 0, chief=True))
    assert not distribute.is_chief(_conf("worker", 0, chief=True))
    assert distribute.num_workers(None) == 1
    assert distribute.num_workers(_conf("worker", 0, workers=3, chief=True)) == 4


def test_multi_worker_runs_one_step_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.steps_per_execution(16) == 16
    monkeypatch.setenv("TF_CONFIG", json.dumps(_conf("worker", 1)))
    assert distribute.steps_per_execution(16) == 1


def test_single_process_uses_the_default_strategy(monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorflow as tf

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.is_chief()
    assert distribute.select_strategy() is tf.distribute.get_strategy()  # no GPUs here
    # A one-task cluster is one machine too: no collectives to set up.
    monkeypatch.setenv("TF_CONFIG", json.dumps(_conf("worker", 0, workers=1)))
    assert distribute.select_strategy() is tf.distribute.get_strategy()


def test_worker_outputs_chief_writes_in_place_others_in_a_removed_temp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(distribute.tempfile, "tempdir", None)  # re-read TMPDIR
    monkeypatch.setenv("TF_CONFIG", json.dumps(_conf("worker", 0)))
    with distribute.worker_outputs("models/a.keras", "dvclive/a") as paths:
        assert paths == (Path("models/a.keras"), Path("dvclive/a"))

    monkeypatch.setenv("TF_CONFIG", json.dumps(_conf("worker", 1)))
    with distribute.worker_outputs("models/a.keras", tmp_path / "abs" / "live") as (model, live):
        folder = model.parent.parent
        assert folder.parent == tmp_path / "tmp" and folder.name.startswith(distribute.WORKER_TMP_PREFIX)
        assert model == folder / "models" / "a.keras" and live.is_relative_to(folder)
        live.mkdir(parents=True)
        (live / "metrics.json").write_text("{}")
    assert not folder.exists(), "a worker's outputs must be removed"
    with pytest.raises(RuntimeError), distribute.worker_outputs("m.keras") as (model,):
        model.parent.mkdir(parents=True, exist_ok=True)
        raise RuntimeError("training failed")
    assert list((tmp_path / "tmp").iterdir()) == [], "removed on failure too"


def test_worker_command_builds_tf_config_and_rejects_bad_arguments() -> None:
    assert distribute.tf_config_for(["a:1", "b:2"], 1) == {
        "cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    for workers, index, message in ((["a:1", "b"], 0, "host:port"), (["a:1"], 1, "--index")):
        with pytest.raises(UserError, match=message):
            distribute.tf_config_for(workers, index)
    result = subprocess.run([sys.executable, "-m", "cifar_dvc.training.distribute", "--workers",
                             "127.0.0.1:1,127.0.0.1:2", "--index", "5", "--", "--variant", "x"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --index: expected 0..1 for 2 workers, got 5"


# ---------------------------------------------------------------------------------------------
# Real runs on loopback


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data/prepared`` of the 16x16 synthetic set (1,620 train, 180 val, 200 test)."""
    return write_prepared(tmp_path_factory.mktemp("mw-data"), DATA, seed=7)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _params(folder: Path, variant: dict) -> Path:
    # steps_per_execution 16 as in params.yaml: the workers must fall back to 1 on their own.
    params = {"seed": 7, "train": {"max_epochs": 1, "verbose": "epoch", "steps_per_execution": 16},
              "variants": {"tiny": variant}}
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(tmp), PYTHONPATH=str(ROOT))
    return env


def _stage_args(prepared: Path, params: Path) -> list[str]:
    return ["--variant", "tiny", "--data", str(prepared), "--model", "models/tiny.keras",
            "--live", "dvclive/tiny", "--params", str(params)]


class Cluster:
    """Worker processes started together and always killed, as a process group each."""

    def __init__(self) -> None:
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    def start(self, cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        log = cwd.parent / f"{cwd.name}.log"  # outside the folder checked for outputs
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append((proc, log))

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for proc, log in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"worker did not finish within {timeout} s; log:\n{log.read_text()[-3000:]}")
            if proc.returncode != 0:
                pytest.fail(f"worker exited {proc.returncode}; log:\n{log.read_text()[-3000:]}")

    def kill(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    workers = Cluster()
    try:
        yield workers
    finally:
        workers.kill()


def _start_pair(cluster: Cluster, prepared: Path, params: Path, folder: Path) -> None:
    """Worker 0 (the chief) in ``folder/chief``, worker 1 in ``folder/worker``, on free ports."""
    workers = ",".join(f"127.0.0.1:{port}" for port in _free_ports(2))
    (folder / "tmp").mkdir(parents=True)
    for index, name in enumerate(("chief", "worker")):
        cmd = [sys.executable, "-m", "cifar_dvc.training.distribute", "--workers", workers,
               "--index", str(index), "--", *_stage_args(prepared, params)]
        cluster.start(cmd, folder / name, _env(folder / "tmp"))


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _test_accuracy(model_path: Path, prepared: Path) -> float:
    import keras

    import cifar_dvc.models  # noqa: F401  (registers the custom layers)
    from cifar_dvc.normalization import STATS_FILE, load_stats, normalize

    test = artifacts.load_split(prepared / "test.npz")
    model = keras.models.load_model(model_path)
    probs = model.predict(normalize(test.x, load_stats(prepared / STATS_FILE)), verbose=0)
    return float(np.mean(np.argmax(probs, -1) == test.y))


@pytest.fixture(scope="module")
def fast_pair(tmp_path_factory: pytest.TempPathFactory, prepared: Path) -> dict:
    """One 2-worker run of `fast` on loopback, shared by the two tests below: the chief's folder,
    the worker's, their temporary folder, and the run's wall time (process start-up included)."""
    folder = tmp_path_factory.mktemp("mw-pair")
    workers = Cluster()
    try:
        started = time.perf_counter()
        _start_pair(workers, prepared, _params(folder, FAST), folder / "run")
        workers.wait(RUN_TIMEOUT)
        seconds = time.perf_counter() - started
    finally:
        workers.kill()
    run = folder / "run"
    return {"chief": run / "chief", "worker": run / "worker", "tmp": run / "tmp", "seconds": seconds}


@pytest.mark.slow
def test_two_workers_on_loopback_match_one_process(
        tmp_path: Path, prepared: Path, fast_pair: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers train `fast` for one epoch; only the chief writes; its model loads, evaluates
    and is within 0.15 test accuracy of a single-process run of the same variant and seed."""
    chief, worker = fast_pair["chief"], fast_pair["worker"]
    assert {"models/tiny.keras", "models/tiny.json", "dvclive/tiny/metrics.json"} <= _files(chief)
    assert _files(worker) == set(), "a non-chief must leave nothing in its project folder"
    assert list(fast_pair["tmp"].iterdir()) == [], "nor in its temporary folder"
    sidecar = json.loads((chief / "models" / "tiny.json").read_text())
    assert sidecar["training"]["epochs_run"] == 1 and sidecar["training"]["batch_size"] == 32

    # The single-process run is the stage itself in this process: TensorFlow is imported here
    # anyway (to evaluate), and a second interpreter would spend ~8 CPU seconds importing it again.
    from stages import train as train_stage

    single = tmp_path / "one"
    single.mkdir()
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.chdir(single)
    started = time.perf_counter()
    train_stage.main(_stage_args(prepared, _params(tmp_path, FAST)))
    one_seconds = time.perf_counter() - started

    two_acc = _test_accuracy(chief / "models" / "tiny.keras", prepared)
    one_acc = _test_accuracy(single / "models" / "tiny.keras", prepared)
    print(f"\nloopback: 2 workers test accuracy {two_acc:.3f} in {fast_pair['seconds']:.1f} s (wall, "
          f"both processes, start-up included), 1 process {one_acc:.3f} in {one_seconds:.1f} s (the "
          "stage in the test's process, TensorFlow already imported)")
    assert two_acc >= 0.5 and one_acc >= 0.5, (two_acc, one_acc)  # chance is 0.1
    assert abs(two_acc - one_acc) <= 0.15, (two_acc, one_acc)


@pytest.mark.slow
def test_two_worker_runs_with_the_same_seed_are_identical(
        tmp_path: Path, prepared: Path, fast_pair: dict, cluster: Cluster) -> None:
    """The seed makes a 2-worker run repeatable: a second cluster's chief has the same weights,
    bit for bit, and the same logged metrics as the first's."""
    import keras

    import cifar_dvc.models  # noqa: F401  (registers the custom layers)

    _start_pair(cluster, prepared, _params(tmp_path, FAST), tmp_path / "again")
    cluster.wait(RUN_TIMEOUT)
    chiefs = (fast_pair["chief"], tmp_path / "again" / "chief")
    weights = [keras.models.load_model(chief / "models" / "tiny.keras").get_weights() for chief in chiefs]
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)
    logs = [json.loads((chief / "dvclive" / "tiny" / "metrics.json").read_text()) for chief in chiefs]
    assert logs[0] == logs[1]
