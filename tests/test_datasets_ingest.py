"""ingest: the synthetic archive round-trips exactly, official-style pickles load, and every bad input is
refused with one line, exit status 2 and no output (stages/ingest.py, cifar_dvc.datasets.*)."""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from cifar_dvc import artifacts
from cifar_dvc.datasets import cifar, mnist, safe_pickle, synthetic
from cifar_dvc.datasets.ingest import ingest_raw
from cifar_dvc.datasets.params import DataParams, SyntheticParams
from cifar_dvc.demo import PROJECT_ROOT
from cifar_dvc.errors import DataError, stage_main
from stages import ingest as ingest_stage

SMALL = SyntheticParams(num_classes=4, train_per_class=6, test_per_class=3)
DIR = "cifar-10-batches-py"


@pytest.fixture(scope="module")
def small_set():
    return synthetic.generate(SMALL, seed=1)


@pytest.fixture
def raw_dir(tmp_path: Path, small_set) -> Path:
    raw = tmp_path / "raw"
    synthetic.write_archive(raw / "synthetic-python.tar.gz", *small_set)
    return raw


def read_tar(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def batch(x_rows: np.ndarray, labels: list[int], key: str = "labels") -> bytes:
    return pickle.dumps({b"batch_label": b"test", key.encode(): labels, b"data": x_rows}, protocol=4)


def run_stage(main, argv: list[str], capsys) -> tuple[int, list[str]]:
    """Run a stage main under stage_main in-process; its exit status and stderr lines."""
    with pytest.raises(SystemExit) as exc:
        stage_main(main, argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return exc.value.code, lines


def write_params(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"seed": 1, "data": data}))
    return path


def ingest_fails(tmp_path: Path, raw: Path, capsys, data: dict | None = None) -> str:
    """Run the ingest stage expecting the one-line failure; returns the line."""
    params = write_params(tmp_path, data or {"dataset": "synthetic"})
    out = tmp_path / "interim"
    with pytest.raises(SystemExit) as exc:
        stage_main(ingest_stage.main, ["--raw", str(raw), "--out", str(out), "--params", str(params)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exc.value.code == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not out.exists(), "a failed stage must leave no output"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".interim")], "temporary output left"
    return err[0]


def tamper(raw: Path, member: str, payload: bytes | None) -> None:
    """Replace (or with None remove) one member of the synthetic archive in ``raw``."""
    path = raw / "synthetic-python.tar.gz"
    members = read_tar(path)
    if payload is None:
        del members[f"{DIR}/{member}"]
    else:
        members[f"{DIR}/{member}"] = payload
    path.unlink()
    write_tar(path, members)


# --- the good path ----------------------------------------------------------------------------------


def test_synthetic_archive_is_ingested_back_exactly(tmp_path, raw_dir, small_set, capsys):
    (x_train, y_train), (x_test, y_test), classes = small_set
    params = write_params(tmp_path, {"dataset": "synthetic"})
    out = tmp_path / "interim"
    ingest_stage.main(["--raw", str(raw_dir), "--out", str(out), "--params", str(params)])
    train, test = artifacts.load_split(out / "train.npz"), artifacts.load_split(out / "test.npz")
    np.testing.assert_array_equal(train.x, x_train)
    np.testing.assert_array_equal(train.y, y_train)
    np.testing.assert_array_equal(test.x, x_test)
    np.testing.assert_array_equal(test.y, y_test)
    assert train.x.dtype == np.uint8 and train.y.dtype == np.int64
    meta = artifacts.load_meta(out)
    assert meta == artifacts.Meta("synthetic", classes, (32, 32, 3))


def test_synthetic_archive_has_the_official_member_names(raw_dir):
    names = set(read_tar(raw_dir / "synthetic-python.tar.gz"))
    expected = {f"{DIR}/data_batch_{i}" for i in range(1, 6)} | {
        f"{DIR}/test_batch", f"{DIR}/batches.meta", f"{DIR}/readme.html"}
    assert names == expected


def py2_pickle(obj) -> bytes:
    """What Python 2's cPickle (protocol 2) wrote for the official batches: str (bytes) keys, and
    ndarrays through numpy.core.multiarray._reconstruct with SHORT_BINSTRING/BINSTRING payloads."""

    def s(b: bytes) -> bytes:
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)

    def i(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    def enc(o) -> bytes:
        if isinstance(o, dict):
            return b"}(" + b"".join(enc(k) + enc(v) for k, v in o.items()) + b"u"
        if isinstance(o, list):
            return b"](" + b"".join(enc(v) for v in o) + b"e"
        if isinstance(o, bytes):
            return s(o)
        if isinstance(o, int):
            return i(o)
        if isinstance(o, np.ndarray):
            assert o.dtype == np.uint8
            shape = b"(" + b"".join(i(d) for d in o.shape) + b"t"
            dtype = b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R" + \
                b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"
            return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + i(0) + b"\x85"
                    + s(b"b") + b"\x87R" + b"(" + i(1) + shape + dtype + b"\x89" + s(o.tobytes()) + b"tb")
        raise TypeError(type(o))

    return b"\x80\x02" + enc(obj) + b"."


def test_python2_official_style_pickles_load(tmp_path, small_set):
    (x_train, y_train), (x_test, y_test), classes = small_set
    members = {}
    for k, part in enumerate(np.array_split(np.arange(len(y_train)), 5), start=1):
        members[f"{DIR}/data_batch_{k}"] = py2_pickle({
            b"data": synthetic.to_rows(x_train[part]), b"labels": [int(v) for v in y_train[part]]})
    members[f"{DIR}/test_batch"] = py2_pickle({b"data": synthetic.to_rows(x_test),
                                               b"labels": [int(v) for v in y_test]})
    members[f"{DIR}/batches.meta"] = py2_pickle({b"label_names": [c.encode() for c in classes],
                                                 b"num_vis": 3072})
    write_tar(tmp_path / "cifar-10-python.tar.gz", members)
    train, test, meta = ingest_raw(tmp_path, DataParams(dataset="cifar10"))
    np.testing.assert_array_equal(train.x, x_train)
    np.testing.assert_array_equal(test.y, y_test)
    assert meta.classes == classes and meta.dataset == "cifar10"


def test_cifar100_label_modes(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 3072), dtype=np.uint8)
    fine, coarse = [0, 1, 2, 3, 0, 1, 2, 3], [0, 0, 1, 1, 0, 0, 1, 1]
    split = {b"data": x, b"fine_labels": fine, b"coarse_labels": coarse, b"filenames": [b"a"] * 8}
    meta = {b"fine_label_names": [b"apple", b"bee", b"cloud", b"dolphin"],
            b"coarse_label_names": [b"food", b"other"]}
    write_tar(tmp_path / "cifar-100-python.tar.gz", {
        "cifar-100-python/train": pickle.dumps(split), "cifar-100-python/test": pickle.dumps(split),
        "cifar-100-python/meta": pickle.dumps(meta)})
    train, _, m = ingest_raw(tmp_path, DataParams(dataset="cifar100", url=None, md5=None, label_mode="fine"))
    assert m.classes == ["apple", "bee", "cloud", "dolphin"] and train.y.tolist() == fine
    np.testing.assert_array_equal(train.x, x.reshape(8, 3, 32, 32).transpose(0, 2, 3, 1))
    train, _, m = ingest_raw(tmp_path, DataParams(dataset="cifar100", label_mode="coarse"))
    assert m.classes == ["food", "other"] and train.y.tolist() == coarse


def test_tar_members_are_never_extracted(tmp_path, raw_dir):
    """A member named like a path escape is ignored: nothing is written outside (or inside) the raw dir."""
    path = raw_dir / "synthetic-python.tar.gz"
    members = read_tar(path)
    members["../escaped"] = b"owned"
    members[f"{DIR}/../../escaped2"] = b"owned"
    path.unlink()
    write_tar(path, members)
    before = sorted(p for p in tmp_path.rglob("*"))
    ingest_raw(raw_dir, DataParams(dataset="synthetic"))
    assert sorted(p for p in tmp_path.rglob("*")) == before


# --- refusals -------------------------------------------------------------------------------------


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_runs_nothing_and_fails_in_one_line(tmp_path, raw_dir):
    """Through the real command line, as dvc runs it: exit 2, one line, no output, no code run."""
    marker = tmp_path / "pwned"
    tamper(raw_dir, "data_batch_2", pickle.dumps({b"data": Evil(marker), b"labels": [0]}))
    params = write_params(tmp_path, {"dataset": "synthetic"})
    out = tmp_path / "interim"
    result = subprocess.run(
        [sys.executable, "-m", "stages.ingest", "--raw", str(raw_dir), "--out", str(out),
         "--params", str(params)], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "data_batch_2" in lines[0] and "posix.system" in lines[0]
    assert not marker.exists(), "the pickle's payload ran"
    assert not out.exists()


@pytest.mark.parametrize(("member", "payload", "expected"), [
    ("data_batch_3", None, "missing cifar-10-batches-py/data_batch_3"),
    ("data_batch_1", batch(np.zeros((2, 3000), np.uint8), [0, 1]), "3072 values per row"),
    ("data_batch_1", batch(np.zeros((2, 3072), np.int16), [0, 1]), "dtype uint8"),
    ("data_batch_1", batch(np.zeros((2, 3072), np.uint8), [0, 4]), "label 4 out of range 0..3"),
    ("data_batch_1", batch(np.zeros((2, 3072), np.uint8), [-1, 0]), "label -1 out of range"),
    ("data_batch_1", batch(np.zeros((3, 3072), np.uint8), [0, 1]), "3 images but 2 labels"),
    ("data_batch_1", batch(np.zeros((2, 3072), np.uint8), [0, 1], key="fine_labels"), "'labels'"),
    ("test_batch", pickle.dumps([1, 2, 3]), "expected a pickled dict"),
    ("test_batch", batch(np.zeros((2, 3072), np.uint8), [0, 0]), "no image of class 1"),
    ("data_batch_4", batch(np.zeros((2, 3072), np.uint8), [0, 1])[:-20], "truncated"),
    ("data_batch_1", pickle.dumps({b"data": np.array([1, "x"], dtype=object), b"labels": [0, 1]}),
     "unsafe or invalid pickle"),
    ("batches.meta", pickle.dumps({b"label_names": [b"a", b"a", b"b", b"c"], b"num_vis": 3072}),
     "duplicate class names"),
    ("batches.meta", pickle.dumps({b"label_names": [b"a", b"b", b"c", b"d"], b"num_vis": 3000}),
     "num_vis must be 3 * side * side"),
])
def test_bad_batches_are_refused_naming_the_file(tmp_path, raw_dir, capsys, member, payload, expected):
    tamper(raw_dir, member, payload)
    line = ingest_fails(tmp_path, raw_dir, capsys)
    assert expected in line
    assert "synthetic-python.tar.gz" in line
    if payload is not None:
        assert member in line


def test_truncated_archive_is_refused(tmp_path, raw_dir, capsys):
    path = raw_dir / "synthetic-python.tar.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    line = ingest_fails(tmp_path, raw_dir, capsys)
    assert "truncated or corrupt archive" in line and str(path) in line


def test_a_link_member_is_refused(tmp_path, raw_dir, capsys):
    path = raw_dir / "synthetic-python.tar.gz"
    members = read_tar(path)
    del members[f"{DIR}/data_batch_1"]
    with tarfile.open(path, "w:gz") as tar:
        link = tarfile.TarInfo(f"{DIR}/data_batch_1")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    line = ingest_fails(tmp_path, raw_dir, capsys)
    assert "data_batch_1 is not a regular file" in line


def test_missing_archive_says_to_fetch(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    line = ingest_fails(tmp_path, tmp_path / "raw", capsys)
    assert "not found" in line and "dvc repro fetch" in line


@pytest.mark.parametrize(("data", "expected"), [
    ({"dataset": "imagenet"}, "data.dataset: expected one of cifar10 | cifar100 | mnist | synthetic"),
    ({"dataset": "cifar100", "label_mode": 3}, "data.label_mode: expected one of fine | coarse, got 3"),
    ({"dataset": "synthetic", "train_subset": "ten"}, "data.train_subset: expected int or null"),
    ({"dataset": "synthetic", "colour": True}, "unknown key 'data.colour'"),
])
def test_bad_params_are_refused(tmp_path, raw_dir, capsys, data, expected):
    line = ingest_fails(tmp_path, raw_dir, capsys, data)
    assert expected in line and "params.yaml" in line


# --- safe_pickle on its own ---------------------------------------------------------------------------


def test_safe_pickle_allows_plain_numeric_arrays_only():
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(safe_pickle.loads(pickle.dumps(array), "x"), array)
    floats = np.linspace(0, 1, 5, dtype=np.float32)
    np.testing.assert_array_equal(safe_pickle.loads(pickle.dumps(floats, protocol=2 + 2), "x"), floats)
    for bad in (np.ma.masked_array([1, 2]), np.array([b"a"], dtype="S1"), np.zeros(2, [("a", "u1")]),
                {"f": print}, subprocess.Popen):
        with pytest.raises(DataError, match="unsafe or invalid pickle"):
            safe_pickle.loads(pickle.dumps(bad), "x")


def test_safe_pickle_decodes_bytes_keys():
    assert safe_pickle.loads(pickle.dumps({b"data": [1], "x": 2}), "f") == {"data": [1], "x": 2}


# --- MNIST ----------------------------------------------------------------------------------------------


def write_mnist(raw: Path, n_train: int = 12, n_test: int = 5, seed: int = 0):
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        images, labels = mnist.FILES[split]
        mnist.write_idx_gz(raw / images, x)
        mnist.write_idx_gz(raw / labels, y)
        arrays[split] = (x, y)
    return arrays


def test_mnist_round_trip(tmp_path):
    arrays = write_mnist(tmp_path)
    train, test, meta = ingest_raw(tmp_path, DataParams(dataset="mnist"))
    np.testing.assert_array_equal(train.x[..., 0], arrays["train"][0])
    np.testing.assert_array_equal(test.y, arrays["test"][1])
    assert train.x.shape == (12, 28, 28, 1) and train.x.dtype == np.uint8
    assert meta.image_shape == (28, 28, 1) and meta.classes == [str(d) for d in range(10)]


@pytest.mark.parametrize(("file", "content", "expected"), [
    ("train-labels-idx1-ubyte.gz", "truncated", "truncated gzip"),
    ("train-labels-idx1-ubyte.gz", "garbage", "corrupt gzip"),
    ("t10k-images-idx3-ubyte.gz", np.zeros((5, 28, 27), np.uint8), "expected 28x28 images"),
    ("t10k-labels-idx1-ubyte.gz", np.full(5, 10, np.uint8), "label 10 out of range 0..9"),
    ("t10k-labels-idx1-ubyte.gz", np.zeros(4, np.uint8), "4 labels for the 5 images"),
    ("t10k-labels-idx1-ubyte.gz", np.zeros((5, 1), np.uint8), "not an IDX file"),
])
def test_bad_mnist_files_are_refused(tmp_path, capsys, file, content, expected):
    raw = tmp_path / "raw"
    write_mnist(raw)
    path = raw / file
    if isinstance(content, np.ndarray):
        mnist.write_idx_gz(path, content)
    elif content == "truncated":
        path.write_bytes(path.read_bytes()[:-12])
    else:
        path.write_bytes(b"this is not gzip")
    line = ingest_fails(tmp_path, raw, capsys, {"dataset": "mnist", "url": None, "md5": None})
    assert expected in line and file in line


def test_gzip_bomb_is_capped(tmp_path):
    import gzip

    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip.compress(b"\0" * (2 * 1024 * 1024)))
    with pytest.raises(DataError, match="decompresses to more than"):
        mnist.gunzip(path, limit=1024 * 1024)


def test_cifar_layout_constants_match_the_official_archives():
    assert cifar.CIFAR10.train == tuple(f"data_batch_{i}" for i in range(1, 6))
    assert (cifar.CIFAR100.directory, cifar.CIFAR100.meta) == ("cifar-100-python", "meta")
