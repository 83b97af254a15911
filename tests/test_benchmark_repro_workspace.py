"""benchmarks/repro_workspace.py: a clone whose params point at the archive (file:// URL and its
md5), with the photos in data/custom and local MobileNet weights; bad inputs fail in one line."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "repro_workspace.py"


@pytest.fixture(scope="module")
def repro_workspace() -> ModuleType:
    spec = importlib.util.spec_from_file_location("repro_workspace", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _inputs(tmp_path: Path) -> dict[str, Path]:
    archive = tmp_path / "data" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(b"not really CIFAR-10, only its bytes are hashed here")
    photos = _tar(tmp_path / "photos.tar.gz", {"dev/README.md": b"about", "dev/cat/a.png": b"png-a",
                                               "dev/dog/b.jpg": b"jpg-b"})
    weights = tmp_path / "mobilenet.h5"
    weights.write_bytes(b"h5")
    return {"archive": archive, "photos": photos, "weights": weights}


def test_the_workspace_points_at_the_archive_photos_and_weights(repro_workspace: ModuleType,
                                                               tmp_path: Path) -> None:
    inputs = _inputs(tmp_path)
    target = tmp_path / "repro"
    md5 = repro_workspace.make_workspace(target, inputs["archive"], inputs["photos"], inputs["weights"],
                                         0.25, tmp_path / "no-tool")
    assert md5 == hashlib.md5(inputs["archive"].read_bytes()).hexdigest()
    assert (target / ".git").is_dir() and (target / "dvc.yaml").is_file()
    params = yaml.safe_load((target / "params.yaml").read_text())
    assert params["data"]["url"] == inputs["archive"].resolve().as_uri()
    assert params["data"]["md5"] == md5 and params["train"]["verbose"] == "epoch"
    for name in ("mnet1", "mnet2"):
        assert params["variants"][name]["model_args"]["weights"] == str(inputs["weights"].resolve())
        assert params["variants"][name]["model_args"]["alpha"] == 0.25
    # everything else is this repository's params, value for value
    ours = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["variants"]["imp2"] == ours["variants"]["imp2"] and params["custom"] == ours["custom"]
    assert (target / "data" / "custom" / "cat" / "a.png").read_bytes() == b"png-a"
    assert (target / "data" / "custom" / "dog" / "b.jpg").read_bytes() == b"jpg-b"
    # the archive's top-level README is not a photo: the folder keeps the repository's own
    assert (target / "data" / "custom" / "README.md").read_text() == \
        (ROOT / "data" / "custom" / "README.md").read_text()


def test_refusals_are_one_line_and_leave_nothing(repro_workspace: ModuleType, tmp_path: Path) -> None:
    inputs = _inputs(tmp_path)
    target = tmp_path / "repro"
    target.mkdir()
    run = [sys.executable, str(SCRIPT), str(target), "--archive", str(inputs["archive"]),
           "--photos", str(inputs["photos"]), "--mobilenet", str(inputs["weights"])]
    result = subprocess.run(run, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == f"repro_workspace: {target}: already exists (a workspace is made " \
                                    "once; remove it first)"
    target.rmdir()
    # no archive and no tool to make it
    missing = tmp_path / "none.tar.gz"
    with pytest.raises(repro_workspace.WorkspaceError, match="is not there"):
        repro_workspace.make_workspace(target, missing, inputs["photos"], None, None, tmp_path / "no-tool")
    assert not target.exists()
    # a photos archive that climbs out of its folder
    evil = _tar(tmp_path / "evil.tar.gz", {"dev/cat/../../../escaped.png": b"x"})
    with pytest.raises(repro_workspace.WorkspaceError, match="cannot unpack the photos"):
        repro_workspace.unpack_photos(evil, tmp_path / "custom")
    assert not (tmp_path.parent / "escaped.png").exists()
    empty = _tar(tmp_path / "empty.tar.gz", {"README.md": b"no photos"})
    with pytest.raises(repro_workspace.WorkspaceError, match="no <top>/<class>/<image> members"):
        repro_workspace.unpack_photos(empty, tmp_path / "custom2")
