"""The bad-input corpus: every crafted file or params value gives one ``error:`` line, exit 2, nothing left.

One parametrized test runs every case of ``CASES`` through the real stage entry point (in-process,
through ``stage_main``, as on the command line) in a fresh workspace that is a DVC project (so
temporaries would go to ``.staging``), and asserts:

- exit status 2 and exactly one stderr line, ``error: ...``, holding the expected words and naming
  the offending file (or the params file for params cases);
- no output of the stage exists, and the workspace holds exactly what it held before the run
  (no temporary, no staging folder, no half-written file).

Adding the next hostile file is one entry in ``CASES``: the stage, the expected words, and the
workspace files (bytes, or a function that makes the file: links, FIFOs, sparse files). Every file
is generated here; none is bigger than a few kilobytes on disk (the "3 GB" files are sparse).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import pickle
import re
import struct
import sys
import tarfile
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from cifar_dvc.datasets import archive, mnist, sources, synthetic
from cifar_dvc.datasets.params import SyntheticParams
from cifar_dvc.errors import stage_main
from stages import custom as custom_stage
from stages import fetch as fetch_stage
from stages import ingest as ingest_stage
from stages import prepare as prepare_stage
from tests.synthetic_sets import write_interim
from tests.test_hardening import bomb
from tests.test_images import png_with_size

Maker = bytes | Callable[[Path], None]
SYN = f"raw/{sources.SYNTHETIC_ARCHIVE}"
BATCH = "cifar-10-batches-py/data_batch_1"
MB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Case:
    """One crafted input: which stage reads it, what its error line must say, what the workspace holds."""

    stage: str  # custom | ingest | prepare | fetch | serve
    expect: str  # words the error line must contain
    files: dict[str, Maker] = dataclasses.field(default_factory=dict)  # workspace path -> content
    params: dict[str, Any] = dataclasses.field(default_factory=dict)  # params.yaml
    names: str | None = None  # workspace path the error line names (default: the first file)
    patch: dict[str, int] = dataclasses.field(default_factory=dict)  # archive caps, to keep bombs small


# ---------------------------------------------------------------- makers


def image(fmt: str, mode: str = "RGB", size: tuple[int, int] = (16, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, fmt)
    return buffer.getvalue()


def gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(image("GIF", "P"))
    data[6:10] = struct.pack("<HH", width, height)  # the logical screen
    return bytes(data)


def sparse(size: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        with open(path, "wb") as handle:
            handle.truncate(size)

    return make


def symlink_to(target: str) -> Callable[[Path], None]:
    return lambda path: path.symlink_to(target)


def fifo(path: Path) -> None:
    os.mkfifo(path)


def folder(path: Path) -> None:
    path.mkdir()


@cache
def synthetic_members() -> dict[str, bytes]:
    """The members of a tiny valid synthetic archive (CIFAR-10 layout)."""
    train, test, classes = synthetic.generate(
        SyntheticParams(num_classes=3, train_per_class=4, test_per_class=2), seed=0
    )
    members: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / sources.SYNTHETIC_ARCHIVE
        synthetic.write_archive(path, train, test, classes)
        data = path.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar:
            handle = tar.extractfile(member)
            members[member.name] = handle.read() if handle else b""
    return members


def tar_gz(members: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            if name in links:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
                continue
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def archive_with(**changes: bytes | None) -> Callable[[Path], None]:
    """The valid synthetic archive with members replaced (``None``: removed); names use ``__`` for ``/``."""

    def make(path: Path) -> None:
        members = dict(synthetic_members())
        for key, payload in changes.items():
            name = f"cifar-10-batches-py/{key}"
            if payload is None:
                members.pop(name)
            else:
                members[name] = payload
        path.write_bytes(tar_gz(members))

    return make


def valid_archive() -> bytes:
    return tar_gz(synthetic_members())


def batch(data: Any, labels: Any) -> bytes:
    return pickle.dumps({b"data": data, b"labels": labels}, protocol=4)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def keras_zip(members: dict[str, bytes]) -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


PNG = image("PNG")
X = "photos/X"  # a class folder (the synthetic data set's first class)
DEFAULT_PARAMS = {"custom": {"custom": {"sweep_divisors": []}}, "ingest": {"data": {"dataset": "synthetic"}}}

# ---------------------------------------------------------------- the corpus

CASES: dict[str, Case] = {
    # custom: photos
    "photo-empty": Case("custom", "empty file (0 bytes)", {f"{X}/a.jpg": b""}),
    "photo-eps": Case("custom", "not a supported image", {f"{X}/a.eps": image("EPS")}),
    "photo-eps-as-jpg": Case("custom", "not a supported image", {f"{X}/a.jpg": image("EPS")}),
    "photo-pdf": Case("custom", "not a supported image", {f"{X}/a.pdf": b"%PDF-1.4\n%\xe2\xe3\n1 0 obj\n"}),
    "photo-svg": Case(
        "custom",
        "not a supported image",
        {f"{X}/a.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>'},
    ),
    "photo-html": Case("custom", "not a supported image", {f"{X}/a.jpg": b"<html><body>404</body></html>"}),
    "photo-ico": Case("custom", "not a supported image", {f"{X}/a.ico": image("ICO")}),
    "photo-tga": Case("custom", "not a supported image", {f"{X}/a.tga": image("TGA")}),
    "photo-pcx": Case("custom", "not a supported image", {f"{X}/a.pcx": image("PCX")}),
    "photo-ppm": Case("custom", "not a supported image", {f"{X}/a.ppm": image("PPM")}),
    "photo-sgi": Case("custom", "not a supported image", {f"{X}/a.sgi": image("SGI")}),
    "photo-im": Case("custom", "not a supported image", {f"{X}/a.im": image("IM")}),
    "photo-dds": Case("custom", "not a supported image", {f"{X}/a.dds": image("DDS")}),
    "photo-qoi": Case("custom", "not a supported image", {f"{X}/a.qoi": image("QOI")}),
    "photo-jpeg2000": Case("custom", "not a supported image", {f"{X}/a.jp2": image("JPEG2000")}),
    "photo-xbm": Case("custom", "not a supported image", {f"{X}/a.xbm": image("XBM", "1")}),
    "photo-truncated-png": Case(
        "custom", "corrupt or truncated", {f"{X}/a.png": image("PNG", size=(64, 64))[:90]}
    ),
    "photo-truncated-jpeg": Case(
        "custom", "corrupt or truncated", {f"{X}/a.jpg": image("JPEG", size=(64, 64))[:300]}
    ),
    "photo-truncated-webp": Case("custom", "corrupt or truncated", {f"{X}/a.webp": image("WEBP")[:40]}),
    "photo-truncated-bmp": Case("custom", "corrupt or truncated", {f"{X}/a.bmp": image("BMP")[:80]}),
    "photo-png-bomb": Case(
        "custom", "refused as a possible decompression bomb", {f"{X}/a.png": png_with_size(100_000, 100_000)}
    ),
    "photo-png-bomb-under-pillow": Case(
        "custom",
        "exceeds the limit of 1000 (custom.max_pixels)",
        {f"{X}/a.png": png_with_size(100, 100)},
        {"custom": {"max_pixels": 1000}},
    ),
    "photo-gif-bomb": Case(
        "custom", "refused as a possible decompression bomb", {f"{X}/a.gif": gif_claiming(65535, 65535)}
    ),
    "photo-over-max-bytes": Case(
        "custom",
        "exceeds the limit of 100 bytes (custom.max_bytes)",
        {f"{X}/a.png": image("PNG", size=(64, 64))},
        {"custom": {"max_bytes": 100}},
    ),
    "photo-sparse-3gb": Case(
        "custom", "(custom.max_bytes); refused unread", {f"{X}/a.jpg": sparse(3 * 1024**3)}
    ),
    "photo-dangling-link": Case(
        "custom", "dangling symbolic link", {f"{X}/a.jpg": symlink_to("nowhere.jpg")}
    ),
    "photo-dangling-link-top": Case("custom", "dangling symbolic link", {"photos/X": symlink_to("gone")}),
    "photo-linked-folder": Case(
        "custom",
        "symbolic link to a folder",
        {"elsewhere/a.png": PNG, f"{X}/sub": symlink_to("../../elsewhere")},
        names=f"{X}/sub",
    ),
    "photo-fifo": Case("custom", "not a regular file", {f"{X}/a.jpg": fifo}),
    "photo-not-a-class": Case(
        "custom", "is not a class name", {"photos/kitten/a.png": PNG}, names="photos/kitten/"
    ),
    "photo-outside-class": Case("custom", "not inside a <class name>/ folder", {"photos/a.png": PNG}),
    "photo-dir-is-a-file": Case("custom", "expected a folder of <class name>/<image files>", {"photos": PNG}),
    # custom: params
    "custom-max-bytes-0": Case(
        "custom", "custom: max_bytes: expected a positive integer", params={"custom": {"max_bytes": 0}}
    ),
    "custom-max-pixels-negative": Case(
        "custom", "custom: max_pixels: expected a positive integer", params={"custom": {"max_pixels": -1}}
    ),
    "custom-on-error": Case("custom", "custom.on_error", params={"custom": {"on_error": "maybe"}}),
    "custom-unknown-key": Case("custom", "unknown key 'custom.colour'", params={"custom": {"colour": 3}}),
    "custom-background": Case(
        "custom", "background: expected 3 integers", params={"custom": {"background": [1, 2]}}
    ),
    "custom-blur-divisor": Case(
        "custom", "blur_divisor: expected a positive number", params={"custom": {"blur_divisor": 0}}
    ),
    "custom-sweep-duplicates": Case(
        "custom",
        "sweep_divisors: expected distinct values",
        params={"custom": {"sweep_divisors": [75, 75.0]}},
    ),
    "custom-thumb-size": Case(
        "custom", "thumb_size: expected at least 16", params={"custom": {"thumb_size": 3}}
    ),
    # ingest: archives
    "archive-empty": Case("ingest", "truncated or corrupt archive", {SYN: b""}),
    "archive-random": Case("ingest", "truncated or corrupt archive", {SYN: bytes(range(256)) * 8}),
    "archive-truncated-gzip": Case(
        "ingest", "truncated or corrupt archive", {SYN: lambda p: p.write_bytes(valid_archive()[:2000])}
    ),
    "archive-gzip-not-tar": Case(
        "ingest", "truncated or corrupt archive", {SYN: gzip.compress(b"hello " * 999)}
    ),
    "archive-gzip-trailing-garbage": Case(
        "ingest",
        "truncated or corrupt archive",
        {SYN: lambda p: p.write_bytes(valid_archive() + b"garbage!")},
    ),
    "archive-zip": Case("ingest", "truncated or corrupt archive", {SYN: keras_zip({"a": b"b"})}),
    "archive-zstd": Case("ingest", "truncated or corrupt archive", {SYN: b"\x28\xb5\x2f\xfd" + bytes(600)}),
    "archive-gzip-bomb": Case(
        "ingest",
        "inflates to more than 4194304 bytes",
        {SYN: bomb("gzip", 16 * MB)},
        patch={"MAX_ARCHIVE_BYTES": 4 * MB},
    ),
    "archive-xz-bomb": Case(
        "ingest",
        "inflates to more than 4194304 bytes",
        {SYN: bomb("xz", 16 * MB)},
        patch={"MAX_ARCHIVE_BYTES": 4 * MB},
    ),
    "archive-bz2-bomb": Case(
        "ingest",
        "inflates to more than 4194304 bytes",
        {SYN: bomb("bzip2", 16 * MB)},
        patch={"MAX_ARCHIVE_BYTES": 4 * MB},
    ),
    "archive-member-too-large": Case(
        "ingest",
        "is implausibly large",
        {SYN: lambda p: p.write_bytes(valid_archive())},
        patch={"MAX_MEMBER_BYTES": 1000},
    ),
    "archive-members-too-large": Case(
        "ingest",
        "the members read hold more than 20000 bytes",
        {SYN: lambda p: p.write_bytes(valid_archive())},
        patch={"MAX_KEPT_BYTES": 20_000},
    ),
    "archive-member-symlink": Case(
        "ingest",
        f"member {BATCH} is not a regular file",
        {SYN: lambda p: p.write_bytes(tar_gz(synthetic_members(), links=(BATCH,)))},
    ),
    "archive-member-missing": Case(
        "ingest", "missing cifar-10-batches-py/test_batch", {SYN: archive_with(test_batch=None)}
    ),
    "archive-evil-pickle": Case(
        "ingest",
        "unsafe or invalid pickle",
        {SYN: archive_with(data_batch_1=pickle.dumps({b"data": Evil()}))},
    ),
    "archive-truncated-pickle": Case(
        "ingest",
        "pickle data was truncated",
        {SYN: archive_with(data_batch_1=batch(np.zeros((2, 3072), np.uint8), [0, 1])[:50])},
    ),
    "archive-float-data": Case(
        "ingest",
        "expected 'data' of dtype uint8",
        {SYN: archive_with(data_batch_1=batch(np.zeros((2, 3072), np.float32), [0, 1]))},
    ),
    "archive-label-out-of-range": Case(
        "ingest",
        "label 7 out of range",
        {SYN: archive_with(data_batch_1=batch(np.zeros((2, 3072), np.uint8), [0, 7]))},
    ),
    "archive-is-a-folder": Case("ingest", "not a regular file", {SYN: folder}),
    "archive-is-a-fifo": Case("ingest", "not a regular file", {SYN: fifo}),
    "archive-missing": Case(
        "ingest", "not found; run `dvc repro fetch` first", {"raw/other.txt": b"x"}, names=SYN
    ),
    "mnist-gzip-bomb": Case(
        "ingest",
        "decompresses to more than",
        {
            "raw/train-images-idx3-ubyte.gz": lambda p: p.write_bytes(
                gzip.compress(bytes(mnist.MAX_BYTES + MB), 1)
            )
        },
        params={"data": {"dataset": "mnist"}},
    ),
    "mnist-sparse-3gb": Case(
        "ingest",
        "an MNIST .gz file may have",
        {"raw/train-images-idx3-ubyte.gz": sparse(3 * 1024**3)},
        params={"data": {"dataset": "mnist"}},
    ),
    "mnist-not-idx": Case(
        "ingest",
        "not an IDX file",
        {"raw/train-images-idx3-ubyte.gz": gzip.compress(b"hello")},
        params={"data": {"dataset": "mnist"}},
    ),
    "ingest-dataset": Case("ingest", "data.dataset", params={"data": {"dataset": "imagenet"}}),
    "ingest-label-mode": Case("ingest", "data.label_mode", params={"data": {"label_mode": "medium"}}),
    # prepare: interim files
    "interim-meta-missing": Case("prepare", "not found", {"interim/meta.json": None}),  # type: ignore[dict-item]
    "interim-meta-not-json": Case(
        "prepare", "expected JSON with dataset, classes and image_shape", {"interim/meta.json": b"{not json"}
    ),
    "interim-train-truncated": Case(
        "prepare",
        "not a readable .npz file",
        {"interim/train.npz": lambda p: p.write_bytes(p.read_bytes()[:500])},
    ),
    "interim-train-float": Case(
        "prepare",
        "expected uint8 images",
        {"interim/train.npz": npz(x=np.zeros((4, 32, 32, 3), np.float32), y=np.zeros(4, np.int64))},
    ),
    "interim-labels-out-of-range": Case(
        "prepare",
        "labels outside 0..",
        {"interim/test.npz": npz(x=np.zeros((4, 32, 32, 3), np.uint8), y=np.array([0, 1, 2, 99]))},
    ),
    "interim-no-arrays": Case(
        "prepare", "expected arrays x and y", {"interim/train.npz": npz(a=np.zeros(3))}
    ),
    "prepare-subset-too-large": Case(
        "prepare", "data.train_subset: 1000000", params={"data": {"train_subset": 10**6}}
    ),
    "prepare-validation": Case(
        "prepare", "validation must be a fraction", params={"prepare": {"validation": 1.5}}
    ),
    "prepare-normalize": Case("prepare", "prepare.normalize", params={"prepare": {"normalize": "unit"}}),
    "prepare-seed": Case("prepare", "seed: expected a non-negative integer", params={"seed": -1}),
    # fetch: params
    "synthetic-impossible-size": Case(
        "fetch",
        "train_per_class 1000000000 and test_per_class 100 make",
        params={"data": {"dataset": "synthetic", "synthetic": {"train_per_class": 10**9}}},
    ),
    "synthetic-too-big-for-ingest": Case(
        "fetch",
        "ingest reads at most 384.0 MiB",
        params={"data": {"dataset": "synthetic", "synthetic": {"train_per_class": 20_000}}},
    ),
    "synthetic-image-size": Case(
        "fetch",
        "image_size must be in 8..64",
        params={"data": {"dataset": "synthetic", "synthetic": {"image_size": 100}}},
    ),
    "synthetic-classes": Case(
        "fetch",
        "num_classes must be in 2..26",
        params={"data": {"dataset": "synthetic", "synthetic": {"num_classes": 30}}},
    ),
    "fetch-md5": Case("fetch", "md5 must be 32 hex digits", params={"data": {"md5": "xyz"}}),
    # serve: model files
    "model-empty": Case("serve", "not a Keras model file (not a zip archive", {"model.keras": b""}),
    "model-random": Case(
        "serve", "not a Keras model file (not a zip archive", {"model.keras": bytes(range(256))}
    ),
    "model-no-config": Case(
        "serve", "the zip has no config.json", {"model.keras": keras_zip({"metadata.json": b"{}"})}
    ),
    "model-config-not-json": Case(
        "serve",
        "config.json is not valid JSON",
        {"model.keras": keras_zip({"config.json": b"{", "metadata.json": b"{}"})},
    ),
    "model-config-deep": Case(
        "serve",
        "config.json is not valid JSON",
        {"model.keras": keras_zip({"config.json": b"[" * 100_000, "metadata.json": b"{}"})},
    ),
    "model-config-unknown-class": Case(
        "serve",
        "not a loadable Keras model",
        {
            "model.keras": keras_zip(
                {"config.json": b'{"class_name": "Evil", "config": {}}', "metadata.json": b"{}"}
            )
        },
    ),
    "model-sidecar-missing": Case(
        "serve",
        "model description not found",
        {"model.json": None},  # type: ignore[dict-item]
        names="model.json",
    ),
}


# ---------------------------------------------------------------- running a case


def prepare_inputs(ws: Path, stage: str) -> None:
    """What a case's stage needs besides the case's own files: valid inputs the case may override."""
    if stage == "ingest":
        (ws / "raw").mkdir()
    if stage == "prepare":
        write_interim(ws / "interim", SyntheticParams(train_per_class=20, test_per_class=5), seed=0)
    if stage == "serve":
        from cifar_dvc.modelinfo import ModelInfo, save_info
        from cifar_dvc.normalization import NormStats

        (ws / "model.keras").write_bytes(keras_zip({"config.json": b"{}", "metadata.json": b"{}"}))
        save_info(
            ws / "model.keras",
            ModelInfo("m", "synthetic", list("XDH"), (32, 32, 3), NormStats("scale", (0.0,) * 3, (1.0,) * 3)),
        )


def stage_command(
    stage: str, ws: Path, prepared: Path
) -> tuple[Callable[[list[str] | None], object], list[str], list[Path]]:
    """The stage's main, its argv, and its outputs (which must not exist after a failure)."""
    params = str(ws / "params.yaml")
    if stage == "custom":
        outs = [ws / "custom_sets", ws / "contact_sheet.png"]
        return (
            custom_stage.main,
            [
                "--photos",
                str(ws / "photos"),
                "--prepared",
                str(prepared),
                "--out",
                str(outs[0]),
                "--sheet",
                str(outs[1]),
                "--params",
                params,
            ],
            outs,
        )
    if stage == "ingest":
        return (
            ingest_stage.main,
            ["--raw", str(ws / "raw"), "--out", str(ws / "interim"), "--params", params],
            [ws / "interim"],
        )
    if stage == "prepare":
        return (
            prepare_stage.main,
            ["--interim", str(ws / "interim"), "--out", str(ws / "prepared"), "--params", params],
            [ws / "prepared"],
        )
    if stage == "fetch":
        return fetch_stage.main, ["--out", str(ws / "raw"), "--params", params], [ws / "raw"]
    from cifar_dvc.serve import app as serve_app

    def serve(argv: list[str] | None) -> None:
        serve_app.main(argv)
        raise AssertionError("the server started on a bad model")

    return serve, ["--model", str(ws / "model.keras"), "--port", "0", "--tf-threads", "0"], []


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 40
    assert {case.stage for case in CASES.values()} == {"custom", "ingest", "prepare", "fetch", "serve"}


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(
    case_id: str,
    tmp_path: Path,
    prepared_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    case = CASES[case_id]
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "dvc.yaml").write_text("stages: {}\n")  # a DVC project: temporaries would go to ws/.staging
    prepare_inputs(ws, case.stage)
    params = case.params or DEFAULT_PARAMS.get(case.stage, {})
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    for rel, content in case.files.items():
        path = ws / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.unlink()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            content(path)
    for name, value in case.patch.items():
        monkeypatch.setattr(archive, name, value)
    main, argv, outputs = stage_command(case.stage, ws, prepared_dir)
    before = tree(ws)
    capsys.readouterr()

    with pytest.raises(SystemExit) as caught:
        if case.stage == "serve":
            main(argv)
        else:
            stage_main(main, argv)
    stderr = capsys.readouterr().err
    lines = stderr.splitlines()
    if case.stage == "serve":  # the server logs (timestamped lines) before it fails
        lines = [line for line in lines if not re.match(r"\d{4}-\d\d-\d\d ", line)]

    assert caught.value.code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert case.expect in lines[0], lines[0]
    if case.files or case.names:  # the file named (params cases name their key: it is in ``expect``)
        named = case.names or next(iter(case.files))
        assert str(ws / named).rstrip("/") in lines[0], lines[0]
    assert not any(out.exists() or out.is_symlink() for out in outputs)
    assert tree(ws) == before  # no temporary, no staging folder, nothing half-written
    assert "Traceback" not in stderr


if __name__ == "__main__":  # list the corpus: python -m tests.test_hardening_corpus
    for key, value in sorted(CASES.items()):
        print(f"{value.stage:8} {key:32} {value.expect}", file=sys.stdout)
