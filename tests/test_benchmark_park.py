"""benchmarks/park_backup.py: a training backup goes into a DVC cache in DVC's own layout (real
`dvc checkout` reads it), comes back byte for byte, and bad objects or pointers fail in one line."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def park_backup() -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT / "benchmarks"))  # its sibling import (reproduction)
        spec = importlib.util.spec_from_file_location("park_backup", ROOT / "benchmarks" / "park_backup.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module


def _backup(folder: Path, epoch: int = 3) -> Path:
    """A backup folder as EpochBackup leaves it (contents made up, layout real)."""
    folder.mkdir(parents=True)
    (folder / f"epoch-{epoch}.weights.h5").write_bytes(os.urandom(5000))
    (folder / "best.keras").write_bytes(os.urandom(3000))
    (folder / "state.json").write_text(json.dumps({
        "fingerprint": "abc123", "epoch": epoch, "seconds": 90.5, "cpu_seconds": 170.0,
        "weights": f"epoch-{epoch}.weights.h5",
        "history": [{"accuracy": 0.5 + i / 100, "val_accuracy": 0.45 + i / 100, "loss": 1.0}
                    for i in range(epoch)]}))
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_park_then_unpark_restores_every_byte(park_backup: ModuleType, tmp_path: Path) -> None:
    backup = _backup(tmp_path / "ws" / "backups" / "imp2")
    cache = tmp_path / "cache"
    pointer = park_backup.park(backup, cache, epochs=240)
    assert pointer["variant"] == "imp2" and pointer["epoch"] == 3 and pointer["epochs"] == 240
    assert pointer["fingerprint"] == "abc123" and pointer["backup"]["nfiles"] == 3
    assert pointer["curve"]["val_accuracy"] == [0.45, 0.46, 0.47]
    assert pointer["backup"]["md5"].endswith(".dir")
    assert pointer["commit"] is None  # the workspace is no git clone here

    target = tmp_path / "other" / "backups" / "imp2"
    assert park_backup.unpark(pointer, cache, target) == 3
    assert _files(target) == _files(backup)
    assert not list(target.parent.glob(".imp2-*"))  # no staging folder left behind


def test_dvc_itself_checks_the_parked_folder_out(park_backup: ModuleType, tmp_path: Path) -> None:
    """The objects are DVC's: a .dvc file naming the hash is enough for `dvc checkout`."""
    backup = _backup(tmp_path / "backups" / "imp2")
    cache = tmp_path / "cache"
    stored = park_backup.park(backup, cache)["backup"]
    repo = tmp_path / "repo"
    repo.mkdir()
    dvc = [sys.executable, "-m", "dvc"]
    run = dict(cwd=repo, check=True, capture_output=True, text=True)
    subprocess.run([*dvc, "init", "--no-scm", "-q"], **run)
    subprocess.run([*dvc, "cache", "dir", str(cache)], **run)
    (repo / "restored.dvc").write_text(
        f"outs:\n- md5: {stored['md5']}\n  size: {stored['size']}\n  nfiles: {stored['nfiles']}\n"
        "  hash: md5\n  path: restored\n")
    subprocess.run([*dvc, "checkout", "restored.dvc"], **run)
    assert _files(repo / "restored") == _files(backup)


def test_a_corrupted_object_is_named_and_nothing_is_restored(park_backup: ModuleType,
                                                            tmp_path: Path) -> None:
    backup = _backup(tmp_path / "backups" / "imp2")
    cache = tmp_path / "cache"
    pointer = park_backup.park(backup, cache)
    weights_md5 = next(e["md5"] for e in json.loads(
        park_backup.object_path(cache, pointer["backup"]["md5"]).read_text())
        if e["relpath"].startswith("epoch-"))
    damaged = park_backup.object_path(cache, weights_md5)
    data = damaged.read_bytes()
    # flip every bit of the last byte: replacing it with a fixed one left it unchanged 1 run in 256
    damaged.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    pointer_file = tmp_path / "imp2.parked.json"
    pointer_file.write_text(json.dumps(pointer))
    target = tmp_path / "ws" / "backups" / "imp2"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "park_backup.py"), "--cache",
                             str(cache), "unpark", str(pointer_file), "--backup", str(target)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"park_backup: {damaged}: content does not match its md5 {weights_md5} (corrupted cache object)"]
    assert not target.exists() and not list(target.parent.glob(".imp2-*"))


def test_state_file_is_the_one_training_writes(park_backup: ModuleType) -> None:
    from cifar_dvc.training import resume

    assert park_backup.STATE_FILE == resume.STATE_FILE


def test_refusals(park_backup: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backup = _backup(tmp_path / "backups" / "imp2")
    cache = tmp_path / "cache"
    pointer = park_backup.park(backup, cache)
    # an existing backup is not overwritten unless asked
    with pytest.raises(park_backup.ParkError, match="already there"):
        park_backup.unpark(pointer, cache, backup)
    assert park_backup.unpark(pointer, cache, backup, force=True) == 3
    # a missing object
    with pytest.raises(park_backup.ParkError, match="is missing"):
        park_backup.restore_dir("0" * 32 + ".dir", cache, tmp_path / "x")
    # a listing whose entry leaves the folder
    listing = json.dumps([{"md5": "d41d8cd98f00b204e9800998ecf8427e", "relpath": "../escaped"}]).encode()
    evil = park_backup._put(cache, listing, ".dir")
    park_backup._put(cache, b"")
    with pytest.raises(park_backup.ParkError, match="leaves the folder"):
        park_backup.restore_dir(evil, cache, tmp_path / "y")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "y").exists()
    # a backup whose state names weights that are not there (a training still writing)
    (backup / "state.json").write_text(json.dumps({"epoch": 4, "weights": "epoch-4.weights.h5"}))
    with pytest.raises(park_backup.ParkError, match="stop it first"):
        park_backup.park(backup, cache)
    # a training that writes its next epoch while the folder is being stored
    _backup(tmp_path / "live" / "imp2", epoch=5)
    store = park_backup.store_dir

    def epoch_ends_meanwhile(directory: Path, to: Path) -> dict:
        stored = store(directory, to)
        (directory / "state.json").write_text((directory / "state.json").read_text().replace(
            '"epoch": 5', '"epoch": 6'))
        return stored

    monkeypatch.setattr(park_backup, "store_dir", epoch_ends_meanwhile)
    with pytest.raises(park_backup.ParkError, match="new epoch while it was parked"):
        park_backup.park(tmp_path / "live" / "imp2", cache)
    # a pointer of another format
    with pytest.raises(park_backup.ParkError, match="expected format 1"):
        park_backup.unpark({"format": 9}, cache, tmp_path / "z")


def test_the_reproduction_report_lists_a_parked_run(park_backup: ModuleType, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # reproduction's sibling import
    import reproduction

    pointer = park_backup.park(_backup(tmp_path / "backups" / "imp2"), tmp_path / "cache", epochs=240)
    text = reproduction.report([], [pointer])
    line = next(x for x in text.splitlines() if x.startswith("- imp2: "))
    assert line.startswith("- imp2: 3 of 240 epochs, parked ")
    assert "3 CPU-min so far; validation accuracy of its last epochs: 0.450, 0.460, 0.470." in line
    assert "park_backup.py unpark benchmarks/results/parked/imp2.json --backup backups/imp2" in line
    assert pointer["backup"]["md5"] in line
    assert "parked in the repository's DVC cache" not in reproduction.report([])
