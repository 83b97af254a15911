"""Issue 16 (hardening): one test (or a few) per numbered item of the issue, all offline.

1. image formats are an allowlist: an EPS photo never reaches Ghostscript (a fake ``gs`` on PATH
   writes a marker file; a control run proves Pillow alone would have run it);
2. any malformed JSON body of ``POST /api/predict`` (100,000 ``[`` included) is a JSON 400;
3. memory is bounded by caps, not by the input (a 3 GB sparse photo, gzip/xz/bz2 bombs, absurd
   ``data.synthetic`` sizes, a huge MNIST file);
4. a corrupt ``.keras`` file is one ``error:`` line in ``cifar-dvc-serve`` and ``evaluate``;
5. a full disk (``RLIMIT_FSIZE``) or a read-only output folder is one ``error:`` line naming the
   path, exit 2, nothing left;
6. ``mnet1``/``mnet2`` offline: one line saying where to put the weights;
7. temporaries live in ``.staging``, stale ones are cleaned when a stage starts, a stage exits
   when its parent dies;
8. symbolic links and FIFOs in the photo folder are reported, README.md files ignored, the demo
   names its own pixel limit, "an unspecified address".

The bad-input corpus (one case per crafted file or params) is ``tests/test_hardening_corpus.py``.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import tarfile
import textwrap
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cifar_dvc import atomic, images, inference
from cifar_dvc.custom_set import CustomParams
from cifar_dvc.datasets import archive, mnist
from cifar_dvc.errors import DataError, OutputError, StageTerminated, stage_main
from stages import custom as custom_stage
from stages import fetch as fetch_stage
from stages import prepare as prepare_stage

ROOT = Path(__file__).resolve().parent.parent
GB = 1024**3
MB = 1024**2


def run_in_process(main, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Exit status and stderr lines of ``stage_main(main, argv)``."""
    with pytest.raises(SystemExit) as caught:
        stage_main(main, argv)
        sys.exit(0)
    return int(caught.value.code or 0), capsys.readouterr().err.strip().splitlines()


def run_stage(module: str, args: list[str], cwd: Path, env: dict[str, str] | None = None,
              preexec=None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m stages.<module> args`` as a real process, with the project importable."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", f"stages.{module}", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=preexec)


# Measures in a small intermediate process: a child forked from pytest (TensorFlow loaded) would
# count pytest's own resident memory in its ru_maxrss, since Linux carries it across exec.
PEAK_MEMORY = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(usage.ru_maxrss * 1024)  # KiB on Linux
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_memory(command: list[str], cwd: Path) -> tuple[int, int, str]:
    """Exit status, peak resident memory in bytes and stderr of ``command``."""
    result = subprocess.run([sys.executable, "-c", PEAK_MEMORY, *command], cwd=cwd, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    return result.returncode, int(result.stdout.strip() or 0), result.stderr


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params))
    return path


def png(width: int = 40, height: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def eps() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (0, 0, 255)).save(buffer, "EPS")  # writing EPS needs no Ghostscript
    return buffer.getvalue()


def tree(root: Path) -> set[str]:
    """Every path below ``root``, relative: what a failed stage must leave as it found it."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def fake_ghostscript(tmp_path: Path) -> tuple[Path, Path]:
    """A ``gs`` on a private PATH directory that only writes ``marker`` when run."""
    bin_dir, marker = tmp_path / "bin", tmp_path / "gs-ran"
    bin_dir.mkdir()
    gs = bin_dir / "gs"
    gs.write_text(f"#!/bin/sh\necho ran >> {marker}\nexit 0\n")
    gs.chmod(0o755)
    return bin_dir, marker


# ---------------------------------------------------------------- 1. Ghostscript / allowlist

def test_pillow_alone_would_run_the_fake_ghostscript(tmp_path: Path) -> None:
    """The control: without the allowlist, decoding this EPS runs whatever ``gs`` is on PATH."""
    bin_dir, marker = fake_ghostscript(tmp_path)
    (tmp_path / "x.eps").write_bytes(eps())
    code = "from PIL import Image\ntry:\n Image.open('x.eps').load()\nexcept Exception:\n pass\n"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=60,
                   env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert marker.exists()


def test_eps_photo_never_runs_ghostscript_in_the_custom_stage(tmp_path: Path, prepared_dir: Path) -> None:
    bin_dir, marker = fake_ghostscript(tmp_path)
    photos = tmp_path / "photos"
    (photos / "X").mkdir(parents=True)
    (photos / "X" / "good.png").write_bytes(png())
    (photos / "X" / "evil.eps").write_bytes(eps())
    (photos / "D").mkdir()
    (photos / "D" / "disguised.jpg").write_bytes(eps())  # the extension does not matter
    params = write_params(tmp_path / "params.yaml", {"custom": {"on_error": "skip", "sweep_divisors": []}})
    out, sheet = tmp_path / "sets", tmp_path / "sheet.png"
    result = run_stage("custom", ["--photos", str(photos), "--prepared", str(prepared_dir), "--out", str(out),
                                  "--sheet", str(sheet), "--params", str(params)], tmp_path,
                       env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr  # skipped, not a traceback
    assert not marker.exists()
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 1
    skipped = {s["file"]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"X/evil.eps", "D/disguised.jpg"}
    assert all("not a supported image" in reason for reason in skipped.values())


@pytest.mark.parametrize("fmt", ["EPS", "ICO", "TGA", "PCX", "PPM", "SGI", "IM", "DDS", "QOI",
                                 "SPIDER"])
def test_only_allowed_formats_are_decoded(fmt: str) -> None:
    buffer = io.BytesIO()
    Image.new("L" if fmt == "SPIDER" else "RGB", (8, 8)).save(buffer, fmt)
    assert Image.open(io.BytesIO(buffer.getvalue())).format  # Pillow itself would read it
    with pytest.raises(images.ImageError, match="not a supported image"):
        images.open_image(buffer.getvalue())
    assert images.pixel_count(buffer.getvalue()) == 0  # the demo's header peek does not parse it either


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"])
def test_allowed_formats_still_decode(fmt: str) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), (10, 200, 10)).save(buffer, fmt)
    assert images.open_image(buffer.getvalue()).size == (12, 10)
    assert images.pixel_count(buffer.getvalue()) == 120


@pytest.fixture(scope="module")
def demo_client(tmp_path_factory: pytest.TempPathFactory):
    """The web demo around a tiny real model (as ``cifar-dvc-serve`` builds it)."""
    from cifar_dvc.serve.app import create_app
    from cifar_dvc.serve.predictor import Predictor
    from cifar_dvc.serve.urlfetch import UrlFetcher
    from tests.test_serve_api import build_tiny_model

    model = build_tiny_model(tmp_path_factory.mktemp("demo") / "tiny.keras")
    app = create_app(Predictor(model), UrlFetcher(max_bytes=MB, timeout=2.0))
    return app.test_client()


def test_eps_upload_is_a_400_and_runs_no_ghostscript(demo_client, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir, marker = fake_ghostscript(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    response = demo_client.post("/api/predict", data={"image": (io.BytesIO(eps()), "photo.eps")},
                                content_type="multipart/form-data")
    assert response.status_code == 400
    assert "not a supported image" in response.get_json()["error"]
    assert not marker.exists()


# ---------------------------------------------------------------- 2. malformed JSON bodies

@pytest.mark.parametrize("body", [
    b"[" * 100_000,
    b"{" * 50_000,
    b'{"url": ' * 30_000,
    b"",
    b"{",
    b'{"url": "http://x"',
    b"\xff\xfe\x00garbage",
    b'{"url": "\xff"}',
    b"NaN-ish",
    b'"just a string"',
    b"[1, 2, 3]",
    b'{"url": 5}',
    b'{"url": ""}',
    b'{"url": null}',
    b"1e999999",
])
def test_every_malformed_json_body_is_a_json_400(demo_client, body: bytes) -> None:
    response = demo_client.post("/api/predict", data=body, content_type="application/json")
    assert response.status_code == 400, response.get_data()
    error = response.get_json()["error"]
    assert isinstance(error, str) and "\n" not in error


# ---------------------------------------------------------------- 3. memory bounded by caps

def test_custom_stage_refuses_a_3_gb_sparse_file_unread(tmp_path: Path, prepared_dir: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "X").mkdir(parents=True)
    (photos / "X" / "good.png").write_bytes(png())
    with open(photos / "X" / "huge.jpg", "wb") as handle:
        handle.truncate(3 * GB)  # sparse: no disk space used, 3 GB to whoever reads it
    params = write_params(tmp_path / "params.yaml", {"custom": {"on_error": "skip", "sweep_divisors": []}})
    out = tmp_path / "sets"
    command = [sys.executable, "-m", "stages.custom", "--photos", str(photos),
               "--prepared", str(prepared_dir), "--out", str(out), "--sheet", str(tmp_path / "sheet.png"),
               "--params", str(params)]
    code, peak, stderr = peak_memory(command, tmp_path)
    assert code == 0, stderr
    assert peak < 600 * MB, peak
    skipped = json.loads((out / "report.json").read_text())["skipped"]
    assert skipped == [{"file": "X/huge.jpg",
                        "reason": f"{3 * GB} bytes exceeds the limit of {CustomParams().max_bytes} bytes "
                                  "(custom.max_bytes); refused unread"}]


def bomb(codec: str, inflated: int, member: str = "bomb.bin") -> bytes:
    """A tar (in ``codec``) holding one member of ``inflated`` zero bytes, compressed in one stream."""
    header = tarfile.TarInfo(member)
    header.size = inflated
    head = header.tobuf(format=tarfile.USTAR_FORMAT)
    if codec == "gzip":
        import zlib
        comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    elif codec == "xz":
        import lzma
        comp = lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=1)
    else:
        import bz2
        comp = bz2.BZ2Compressor(9)
    parts = [comp.compress(head)]
    zeros = bytes(MB)
    for _ in range(inflated // MB):
        parts.append(comp.compress(zeros))
    parts.append(comp.flush())
    return b"".join(parts)


@pytest.mark.parametrize("codec", ["gzip", "xz", "bzip2"])
def test_archive_bombs_are_refused_holding_one_piece_at_a_time(codec: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "MAX_ARCHIVE_BYTES", 32 * MB)
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(bomb(codec, 96 * MB))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=f"{path}: inflates to more than {32 * MB} bytes"):
            archive.read_members(path, ["cifar-10-batches-py/data_batch_1"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * MB  # the old reader held the whole capped output (32 MB), twice


def test_kept_members_are_capped_on_their_headers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "MAX_KEPT_BYTES", 3 * MB)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for i in range(3):
            info = tarfile.TarInfo(f"d/m{i}")
            info.size = 2 * MB
            tar.addfile(info, io.BytesIO(bytes(2 * MB)))
    path = tmp_path / "a.tar.gz"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(DataError, match=f"more than {3 * MB} bytes .at d/m1."):
        archive.read_members(path, ["d/m0", "d/m1", "d/m2"])


def test_concatenated_and_padded_streams_still_read(tmp_path: Path) -> None:
    import gzip

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, payload in (("d/a", b"alpha" * 1000), ("d/b", b"beta" * 1000)):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    raw = buffer.getvalue()
    path = tmp_path / "a.tar.gz"
    path.write_bytes(gzip.compress(raw[:3000]) + gzip.compress(raw[3000:]) + bytes(512))
    assert archive.read_members(path, ["d/a", "d/b"]) == {"d/a": b"alpha" * 1000, "d/b": b"beta" * 1000}


@pytest.mark.parametrize("codec", ["gzip", "xz", "bzip2"])
def test_the_inflating_reader_gives_exactly_the_content(codec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Concatenated streams (with zero padding) read back byte for byte, in pieces of any size."""
    import bz2
    import gzip
    import lzma

    compress = {"gzip": gzip.compress, "xz": lzma.compress, "bzip2": bz2.compress}[codec]
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 4, size, dtype=np.uint8).tobytes() for size in (10, 300_000, 5, 1_000_000)]
    parts.append(bytes(2_000_000))  # zeros: much output from little input, max_length cuts it
    data = b"".join(compress(part) for part in parts) + bytes(100)
    monkeypatch.setattr(archive, "CHUNK", 4096)  # many stream ends inside one piece of input
    reader = archive.InflatingReader(io.BytesIO(data), codec, 10**9, Path("x"))
    pieces = []
    for size in itertools.cycle([1, 4096, 70_000, 5000]):
        piece = reader.read(size)
        if not piece:
            break
        pieces.append(piece)
    assert b"".join(pieces) == b"".join(parts)


def test_impossible_synthetic_size_is_refused_up_front(tmp_path: Path, capsys) -> None:
    params = write_params(tmp_path / "params.yaml",
                          {"data": {"dataset": "synthetic", "synthetic": {"train_per_class": 1_000_000_000}}})
    start = time.perf_counter()
    code, err = run_in_process(fetch_stage.main, ["--out", str(tmp_path / "raw"), "--params", str(params)],
                               capsys)
    assert code == 2 and len(err) == 1
    assert "data.synthetic: train_per_class 1000000000" in err[0]
    assert "28.3 TiB" in err[0] and "of memory to generate" in err[0]
    assert time.perf_counter() - start < 5 and not (tmp_path / "raw").exists()


def test_huge_mnist_file_is_refused_by_its_size(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with open(path, "wb") as handle:
        handle.truncate(3 * GB)
    with pytest.raises(DataError, match=r"more than the \d+ bytes an MNIST \.gz file may have"):
        mnist.gunzip(path)


# ---------------------------------------------------------------- 4. corrupt .keras files

def keras_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize(("members", "expected"), [
    ({"metadata.json": b"{}", "model.weights.h5": b""}, "the zip has no config.json"),
    ({"config.json": b"{}", "model.weights.h5": b""}, "the zip has no metadata.json"),
    ({"config.json": b"{nope", "metadata.json": b"{}"}, "config.json is not valid JSON"),
    ({"config.json": b"[" * 100_000, "metadata.json": b"{}"}, "config.json is not valid JSON"),
    ({"config.json": b"[]", "metadata.json": b"{}"}, "config.json is not a JSON object"),
    ({"config.json": b'{"class_name": "Nope", "config": {}}', "metadata.json": b"{}"},
     "not a loadable Keras model"),
])
def test_corrupt_keras_files_are_one_data_error(members: dict, expected: str, tmp_path: Path) -> None:
    path = keras_zip(tmp_path / "m.keras", members)
    with pytest.raises(DataError, match=expected) as caught:
        inference.load_model(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_serve_with_a_zip_without_config_is_one_line(tmp_path: Path, capsys) -> None:
    from cifar_dvc.modelinfo import ModelInfo, save_info
    from cifar_dvc.normalization import NormStats
    from cifar_dvc.serve import app as serve_app

    model = keras_zip(tmp_path / "bad.keras", {"metadata.json": b"{}"})
    save_info(model, ModelInfo("bad", "synthetic", list("XDH"), (32, 32, 3), NormStats("scale", (0.0,) * 3,
                                                                                       (1.0,) * 3)))
    with pytest.raises(SystemExit) as caught:
        serve_app.main(["--model", str(model), "--port", "0"])
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("error:")]  # (and maybe a log line)
    assert caught.value.code == 2 and len(err) == 1 and "Traceback" not in stderr
    assert err[0] == (f"error: {model}: not a Keras model file: the zip has no config.json "
                      "(expected a .keras file saved by `dvc repro train@<name>`)")


def test_evaluate_with_a_zip_without_config_is_one_line(tmp_path: Path, prepared_dir: Path, capsys) -> None:
    from cifar_dvc import artifacts
    from cifar_dvc.modelinfo import ModelInfo, save_info
    from cifar_dvc.normalization import load_stats
    from stages import evaluate as evaluate_stage

    meta = artifacts.load_meta(prepared_dir)
    model = keras_zip(tmp_path / "cnn.keras", {"metadata.json": b"{}", "model.weights.h5": b""})
    save_info(model, ModelInfo("cnn", meta.dataset, meta.classes, tuple(meta.image_shape),
                               load_stats(prepared_dir / "normalization.json")))
    custom = tmp_path / "custom_sets"
    code, _ = run_in_process(custom_stage.main, [
        "--photos", str(tmp_path / "no-photos"), "--prepared", str(prepared_dir), "--out", str(custom),
        "--sheet", str(tmp_path / "sheet.png"),
        "--params", str(write_params(tmp_path / "c.yaml", {}))], capsys)
    assert code == 0
    code, err = run_in_process(evaluate_stage.main, [
        "--variant", "cnn", "--model", str(model), "--prepared", str(prepared_dir), "--custom", str(custom),
        "--metrics", str(tmp_path / "metrics.json"), "--out", str(tmp_path / "eval"),
        "--params", str(ROOT / "params.yaml")], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {model}: not a Keras model file: the zip has no config.json")
    assert not (tmp_path / "eval").exists() and not (tmp_path / "metrics.json").exists()


# ---------------------------------------------------------------- 5. full disk, read-only folder

def small_file_limit() -> None:
    """In the child: files may not grow past 64 KiB (EFBIG, as a full disk gives ENOSPC)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


@pytest.fixture
def interim_dir(tmp_path: Path) -> Path:
    from cifar_dvc.datasets.params import SyntheticParams
    from tests.synthetic_sets import write_interim

    return write_interim(tmp_path / "interim", SyntheticParams(train_per_class=20, test_per_class=5), seed=1)


def test_full_disk_in_prepare_is_one_line_and_leaves_nothing(tmp_path: Path, interim_dir: Path) -> None:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")  # a project: temporaries go to .staging
    params = write_params(tmp_path / "params.yaml", {})
    before = tree(tmp_path)
    result = run_stage("prepare", ["--interim", str(interim_dir), "--out", "data/prepared",
                                   "--params", str(params)], tmp_path, preexec=small_file_limit)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    expected = "error: data/prepared: cannot write (File too large); free "
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    assert lines[0].endswith("nothing was written")
    assert tree(tmp_path) == before | {"data"}  # only the (empty) parent folder


def test_full_disk_in_custom_is_one_line_and_leaves_nothing(tmp_path: Path, prepared_dir: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "X").mkdir(parents=True)
    for i in range(24):  # x alone is 24 x 3 KiB: more than the 64 KiB a file may have
        (photos / "X" / f"{i}.png").write_bytes(png(60 + i, 50))
    params = write_params(tmp_path / "params.yaml", {})
    before = tree(tmp_path)
    result = run_stage("custom", ["--photos", str(photos), "--prepared", str(prepared_dir), "--out", "sets",
                                  "--sheet", "plots/sheet.png", "--params", str(params)], tmp_path,
                       preexec=small_file_limit)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "cannot write (File too large" in lines[0] and lines[0].startswith("error: ")
    assert tree(tmp_path) - before <= {"plots"}  # no sets, no sheet, no temporaries


def test_read_only_output_folder_is_one_line(tmp_path: Path, interim_dir: Path) -> None:
    if os.geteuid() == 0:
        # root ignores permission bits; /sys refuses everyone (EROFS, EACCES or EPERM by platform)
        out = Path("/sys/cifar-dvc-hardening-test/prepared")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        out = locked / "prepared"
    params = write_params(tmp_path / "params.yaml", {})
    result = run_stage("prepare", ["--interim", str(interim_dir), "--out", str(out), "--params", str(params)],
                       tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {out}: cannot write (") and "Traceback" not in result.stderr
    assert not out.exists()


def test_write_errors_about_inputs_are_not_blamed_on_the_output(tmp_path: Path) -> None:
    """An EACCES reading an input inside ``atomic_dir`` is not reported as "cannot write"."""
    err = PermissionError(13, "Permission denied", str(tmp_path / "input.npz"))
    with pytest.raises(PermissionError), atomic.atomic_dir(tmp_path / "out"):
        raise err
    with pytest.raises(OutputError, match=r"out: cannot write \(No space left on device\); free"), \
            atomic.atomic_dir(tmp_path / "out") as tmp:
        raise OSError(28, "No space left on device")  # a write() names no file
    assert sorted(p.name for p in tmp_path.iterdir()) == [] and tmp.name


# ---------------------------------------------------------------- 6. MobileNet offline

@pytest.mark.parametrize("trainable_blocks", [0, 1])  # mnet1, mnet2
def test_mobilenet_offline_is_one_line_saying_where_the_weights_go(trainable_blocks: int, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    from keras.src.backend import config as keras_config
    from keras.src.utils import file_utils

    from cifar_dvc.errors import FetchError
    from cifar_dvc.models.mobilenet import build_mobilenet
    from cifar_dvc.normalization import NormStats

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))  # an empty weights cache
    monkeypatch.setattr(file_utils, "urlretrieve", offline)  # and no network
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    stats = NormStats("scale", (0.0,) * 3, (1.0,) * 3)
    with pytest.raises(FetchError) as caught:
        build_mobilenet((32, 32, 3), 10, stats, weights="imagenet", trainable_blocks=trainable_blocks)
    message = str(caught.value)
    assert "cannot download the ImageNet weights mobilenet_1_0_128_tf_no_top.h5" in message
    assert f"put mobilenet_1_0_128_tf_no_top.h5 into {tmp_path}/models/" in message
    assert "model_args.weights" in message and "\n" not in message


# ---------------------------------------------------------------- 7. kills: debris and orphans

def test_temporaries_stay_out_of_the_output_folders(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    model = tmp_path / "models" / "cnn.keras"
    with atomic.atomic_path(model) as tmp:
        assert tmp.parent == tmp_path / ".staging" / "models%2Fcnn.keras"
        assert list((tmp_path / "models").iterdir()) == []  # report reads models/: nothing there yet
        tmp.write_bytes(b"weights")
    with atomic.atomic_dir(tmp_path / "dvclive" / "cnn") as live:
        assert live.parent == tmp_path / ".staging" / "dvclive%2Fcnn"
        (live / "metrics.json").write_text("{}")
    assert tree(tmp_path) == {"dvc.yaml", "models", "models/cnn.keras", "dvclive", "dvclive/cnn",
                              "dvclive/cnn/metrics.json"}  # no staging folder left either


def test_kill_9_debris_is_removed_when_the_stage_starts_again(tmp_path: Path, interim_dir: Path,
                                                              capsys) -> None:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    out = tmp_path / "data" / "prepared"
    # a real process killed with SIGKILL halfway through writing its output directory
    script = textwrap.dedent(f"""
        import os, signal
        from cifar_dvc import atomic
        with atomic.atomic_dir({str(out)!r}) as tmp:
            (tmp / "train.npz").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    killed = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            timeout=60)
    assert killed.returncode == -signal.SIGKILL
    # and the debris of the old layout (temporaries beside the output), as older versions left it
    (tmp_path / "data" / ".prepared.abc123.tmp").mkdir()
    (tmp_path / "data" / ".prepared.abc123.tmp" / "train.npz").write_bytes(b"half")
    (tmp_path / "data" / ".prepared.old").mkdir()
    assert (tmp_path / ".staging").exists()
    params = write_params(tmp_path / "params.yaml", {})
    code, err = run_in_process(prepare_stage.main, ["--interim", str(interim_dir), "--out", str(out),
                                                    "--params", str(params)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["prepared"]
    assert not (tmp_path / ".staging").exists()


def test_clean_stale_removes_only_the_given_outputs_debris(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for name in (".cnn.keras.x1y2", ".cnn.keras.abc.tmp", ".mlp.keras.abc.tmp", "cnn.keras",
                 ".cnn.json.q.tmp"):
        (models / name).mkdir() if "x1y2" in name else (models / name).write_bytes(b"")
    removed = atomic.clean_stale(models / "cnn.keras")
    assert sorted(p.name for p in removed) == [".cnn.keras.abc.tmp", ".cnn.keras.x1y2"]
    assert sorted(p.name for p in models.iterdir()) == [".cnn.json.q.tmp", ".mlp.keras.abc.tmp", "cnn.keras"]


def test_a_stage_exits_when_its_parent_dies(tmp_path: Path) -> None:
    """kill -9 of the parent (as of ``dvc``) ends a stage blocked reading its params: no orphan."""
    fifo = tmp_path / "params.yaml"
    os.mkfifo(fifo)
    parent_code = textwrap.dedent(f"""
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-m", "stages.custom", "--photos", "p", "--prepared", "q",
                                  "--out", "out", "--sheet", "sheet.png", "--params", {str(fifo)!r}],
                                 stderr=open({str(tmp_path / "stage.err")!r}, "w"))
        print(child.pid, flush=True)
        child.wait()
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=tmp_path, stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True)
    child = int(parent.stdout.readline())
    writer = None
    deadline = time.monotonic() + 60
    while writer is None:  # the stage has opened the params FIFO: it runs main(), past its set-up
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            assert time.monotonic() < deadline, "the stage never opened its params file"
            time.sleep(0.05)
    try:
        parent.kill()  # SIGKILL: the parent runs no clean-up of its own
        parent.wait()
        deadline = time.monotonic() + 20
        while _alive(child):
            assert time.monotonic() < deadline, "the stage outlived its parent"
            time.sleep(0.05)
    finally:
        os.close(writer)
        if _alive(child):
            os.kill(child, signal.SIGKILL)
    err = (tmp_path / "stage.err").read_text().strip().splitlines()
    assert err == ["error: stopped by SIGTERM (the dvc process that ran the stage ended, or someone "
                   "terminated it); the stage stopped and removed its temporary files"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "stage.err"]


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for its new parent to reap it has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_sigterm_unwinds_so_temporaries_are_removed(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, signal
        from cifar_dvc import atomic
        from cifar_dvc.errors import stage_main

        def main(argv):
            with atomic.atomic_dir({str(tmp_path / "out")!r}) as tmp:
                (tmp / "x").write_text("partial")
                os.kill(os.getpid(), signal.SIGTERM)
                signal.pause()

        stage_main(main)
    """)
    result = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 128 + signal.SIGTERM
    assert result.stderr.startswith("error: stopped by SIGTERM")
    assert list(tmp_path.iterdir()) == []
    assert issubclass(StageTerminated, BaseException) and not issubclass(StageTerminated, Exception)


# ---------------------------------------------------------------- 8. the smaller ones

def test_links_and_fifos_are_reported_and_readmes_ignored(tmp_path: Path, prepared_dir: Path,
                                                          capsys) -> None:
    photos = tmp_path / "photos"
    (photos / "X" / "more").mkdir(parents=True)
    (photos / "X" / "good.png").write_bytes(png())
    (photos / "X" / "more" / "also.png").write_bytes(png(50, 40))
    (photos / "X" / "README.md").write_text("# my cats\n")
    (photos / "X" / "more" / "notes.txt").write_text("taken in 2019\n")
    (photos / "README.md").write_text("# photos\n")
    (photos / "X" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.png").write_bytes(png())
    (photos / "X" / "linked").symlink_to(elsewhere)
    os.mkfifo(photos / "X" / "pipe.jpg")
    (photos / "X" / "link.png").symlink_to(photos / "X" / "good.png")  # a link to a photo is a photo
    params = write_params(tmp_path / "params.yaml", {"custom": {"on_error": "skip", "sweep_divisors": []}})
    out = tmp_path / "sets"
    code, err = run_in_process(custom_stage.main, [
        "--photos", str(photos), "--prepared", str(prepared_dir), "--out", str(out),
        "--sheet", str(tmp_path / "sheet.png"), "--params", str(params)], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert [p["file"] for p in report["photos"]] == ["X/good.png", "X/link.png", "X/more/also.png"]
    assert report["skipped"] == [
        {"file": "X/gone.jpg", "reason": f"dangling symbolic link (its target {tmp_path / 'deleted.jpg'} "
                                           "does not exist)"},
        {"file": "X/linked/", "reason": f"symbolic link to a folder ({elsewhere}), not followed"},
        {"file": "X/pipe.jpg", "reason": "not a regular file (a FIFO, socket or device)"},
    ]


def test_readme_in_a_class_folder_does_not_fail_the_stage(tmp_path: Path, prepared_dir: Path, capsys) -> None:
    photos = tmp_path / "photos"
    (photos / "D").mkdir(parents=True)
    (photos / "D" / "a.png").write_bytes(png())
    (photos / "D" / "README.md").write_text("about these dogs\n")
    params = write_params(tmp_path / "params.yaml", {"custom": {"on_error": "fail", "sweep_divisors": []}})
    code, err = run_in_process(custom_stage.main, [
        "--photos", str(photos), "--prepared", str(prepared_dir), "--out", str(tmp_path / "sets"),
        "--sheet", str(tmp_path / "sheet.png"), "--params", str(params)], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "sets" / "report.json").read_text())["n"] == 1


@pytest.mark.parametrize("side", [7_000, 10_000, 20_000])  # under Pillow's limit, between it and twice, above
def test_the_demo_names_its_own_pixel_limit(side: int) -> None:
    from cifar_dvc.serve.app import build_parser, preprocessing_from_args
    from tests.test_images import png_with_size

    pre = preprocessing_from_args(build_parser().parse_args(["--model", "m.keras"]))
    assert (pre.max_pixels, pre.pixels_key) == (36_000_000, "--max-megapixels")
    with pytest.raises(images.ImageError) as caught:
        images.open_image(png_with_size(side, side), max_pixels=pre.max_pixels, pixels_key=pre.pixels_key)
    reason = caught.value.reason
    assert "exceeds the limit of 36000000 (--max-megapixels)" in reason, reason
    assert "custom.max_pixels" not in reason and "89478485" not in reason


def test_the_demo_names_custom_max_pixels_when_that_is_stricter(tmp_path: Path) -> None:
    from cifar_dvc.serve.app import build_parser, preprocessing_from_args

    params = write_params(tmp_path / "params.yaml", {"custom": {"max_pixels": 1000}})
    pre = preprocessing_from_args(build_parser().parse_args(["--model", "m", "--params", str(params)]))
    assert (pre.max_pixels, pre.pixels_key) == (1000, "custom.max_pixels")


@pytest.mark.parametrize(("ip", "expected"), [
    ("0.0.0.0", "is an unspecified address"), ("127.0.0.1", "is a loopback address"),
    ("100.64.0.1", "is not a globally routable address"), ("224.0.0.1", "is a multicast address"),
])
def test_refusals_read_as_english(ip: str, expected: str) -> None:
    from cifar_dvc.serve.urlfetch import UrlFetcher, UrlRefusedError

    fetcher = UrlFetcher(max_bytes=MB, timeout=1.0, resolver=lambda host, port: [ip])
    with pytest.raises(UrlRefusedError, match=f"refused: photos.example.test {expected}$"):
        fetcher.fetch("http://photos.example.test/cat.jpg")


def test_npz_of_the_custom_stage_unchanged_by_the_walk(tmp_path: Path, prepared_dir: Path) -> None:
    """The new tree walk finds exactly the photos the old rglob found, in the same order."""
    from cifar_dvc.custom_set import find_photos

    photos = tmp_path / "photos"
    for rel in ("cat/b.png", "cat/a/z.png", "cat/a/b/c.png", "dog/x.png", "dog/.hidden.png", "dog/y.png.dvc"):
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        (photos / rel).write_bytes(png())
    found, problems = find_photos(photos, ["cat", "dog"])
    assert [(p.relative_to(photos).as_posix(), label) for p, label in found] == [
        ("cat/a/b/c.png", 0), ("cat/a/z.png", 0), ("cat/b.png", 0), ("dog/x.png", 1)]
    assert problems == [] and np.array_equal([label for _, label in found], [0, 0, 0, 1])
