"""Tests of the shared core: params loading, atomic writes, the data layout, normalization, sidecars."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from cifar_dvc import artifacts, atomic, config, modelinfo, normalization
from cifar_dvc.errors import DataError, ParamsError, UserError, stage_main


@dataclasses.dataclass
class _Opt:
    name: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3


@dataclasses.dataclass
class _Section:
    dataset: Literal["cifar10", "synthetic"] = "cifar10"
    subset: int | None = None
    opt: _Opt = dataclasses.field(default_factory=_Opt)
    divisors: list[int] = dataclasses.field(default_factory=lambda: [75])

    def validate(self) -> None:
        if self.subset is not None and self.subset <= 0:
            raise ValueError("subset: expected a positive int or null")


def test_from_dict_defaults_and_conversion():
    got = config.from_dict(_Section, {"subset": 5, "opt": {"lr": 1}}, "data")
    assert got == _Section(subset=5, opt=_Opt(lr=1.0))
    assert isinstance(got.opt.lr, float)
    assert config.to_dict(got) == {"dataset": "cifar10", "subset": 5, "opt": {"name": "adam", "lr": 1.0},
                                   "divisors": [75]}


@pytest.mark.parametrize(("raw", "message"), [
    ({"dataset": "x"}, "data.dataset: expected one of cifar10 | synthetic, got 'x'"),
    ({"subset": "a"}, "data.subset: expected int or null, got 'a'"),
    ({"subset": True}, "data.subset: expected int or null, got True"),
    ({"opt": {"lrr": 1}}, "unknown key 'data.opt.lrr'"),
    ({"divisors": [1, "a"]}, "data.divisors[1]: expected int"),
    ({"zz": 1}, "unknown key 'data.zz'"),
    ({"subset": 0}, "data: subset: expected a positive int or null"),
    ({"opt": {"lr": float("nan")}}, "data.opt.lr: expected a finite number, got nan"),
    ({"opt": {"lr": float("inf")}}, "data.opt.lr: expected a finite number, got inf"),
    ([1, 2], "data: expected a mapping"),
])
def test_from_dict_refuses_bad_values_naming_the_key(raw, message):
    with pytest.raises(ParamsError) as info:
        config.from_dict(_Section, raw, "data")
    assert message in str(info.value)
    assert str(info.value).startswith("params.yaml: ")


def test_load_section_reads_dotted_sections_and_missing_means_defaults(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("variants:\n  cnn:\n    subset: 3\n")
    assert config.load_section(_Section, "variants.cnn", path=path).subset == 3
    assert config.load_section(_Section, "variants.mlp", path=path) == _Section()


def test_read_params_errors_are_one_line(tmp_path):
    with pytest.raises(ParamsError, match="cannot read params file"):
        config.read_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ParamsError, match="is not valid YAML"):
        config.read_params(bad)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    atomic.write_bytes(target, b"whole")
    assert target.read_bytes() == b"whole"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_dir_replaces_whole_directory_or_nothing(tmp_path):
    out = tmp_path / "prepared"
    with atomic.atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError), atomic.atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("2")
        raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]  # the old output is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # no temp dirs left
    with atomic.atomic_dir(out) as tmp:
        (tmp / "c.txt").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["c.txt"]
    assert out.stat().st_mode & 0o777 == 0o777 & ~_umask()


def test_split_and_meta_round_trip(tmp_path):
    x = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    artifacts.save_split(tmp_path / "train.npz", x, np.array([1, 0]), files=np.array(["a", "b"]))
    split = artifacts.load_split(tmp_path / "train.npz")
    assert split.y.dtype == np.int64 and len(split) == 2
    np.testing.assert_array_equal(split.x, x)
    assert list(split.extra["files"]) == ["a", "b"]
    artifacts.save_meta(tmp_path, artifacts.Meta("synthetic", ["a", "b"], (4, 4, 3)))
    assert artifacts.load_meta(tmp_path) == artifacts.Meta("synthetic", ["a", "b"], (4, 4, 3))
    with pytest.raises(ValueError, match="uint8"):
        artifacts.save_split(tmp_path / "bad.npz", x.astype(np.float64), np.array([1, 0]))


def test_load_split_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"missing\.npz: not found"):
        artifacts.load_split(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"junk\.npz: not a readable \.npz"):
        artifacts.load_split(tmp_path / "junk.npz")
    np.savez(tmp_path / "nox.npz", y=np.zeros(2))
    with pytest.raises(DataError, match=r"nox\.npz: expected arrays x and y"):
        artifacts.load_split(tmp_path / "nox.npz")


def test_standardize_matches_numpy_and_normalize_is_float32(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 8, 8, 3), dtype=np.uint8)
    stats = normalization.compute_stats(x, "standardize", chunk=7)
    ref = x.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(stats.mean, ref.mean(0), rtol=1e-10)
    np.testing.assert_allclose(stats.std, ref.std(0), rtol=1e-10)
    out = normalization.normalize(x, stats)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(out.reshape(-1, 3).std(0), 1, atol=1e-4)
    scaled = normalization.normalize(x, normalization.compute_stats(x, "scale"))
    np.testing.assert_allclose(scaled, x / np.float32(255), rtol=1e-6)
    normalization.save_stats(tmp_path / "n.json", stats)
    assert normalization.load_stats(tmp_path / "n.json") == stats


def test_normalize_works_on_tensors_like_on_arrays():
    tf = pytest.importorskip("tensorflow")
    x = np.random.default_rng(1).integers(0, 256, size=(4, 2, 2, 3), dtype=np.uint8)
    stats = normalization.NormStats("standardize", (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    tensor = normalization.normalize(tf.cast(x, tf.float32), stats)
    assert tensor.dtype == tf.float32
    np.testing.assert_allclose(tensor.numpy(), normalization.normalize(x, stats), rtol=1e-6)


def test_constant_channel_does_not_divide_by_zero():
    x = np.zeros((3, 2, 2, 1), np.uint8)
    stats = normalization.compute_stats(x, "standardize")
    assert stats.std == (1.0,)
    assert np.isfinite(normalization.normalize(x, stats)).all()


def test_load_stats_refuses_malformed(tmp_path):
    (tmp_path / "n.json").write_text(json.dumps({"method": "scale", "mean": [0], "std": [0]}))
    with pytest.raises(DataError, match="positive"):
        normalization.load_stats(tmp_path / "n.json")
    with pytest.raises(DataError, match="not found"):
        normalization.load_stats(tmp_path / "missing.json")


def test_modelinfo_round_trip(tmp_path):
    info = modelinfo.ModelInfo("cnn", "cifar10", ["a", "b"], (32, 32, 3),
                               normalization.NormStats("scale", (0.0,) * 3, (1.0,) * 3), {"epochs": 2})
    modelinfo.save_info(tmp_path / "cnn.keras", info)
    assert (tmp_path / "cnn.json").exists()
    assert modelinfo.load_info(tmp_path / "cnn.keras") == info
    with pytest.raises(DataError, match=r"mlp\.json: model description not found"):
        modelinfo.load_info(tmp_path / "mlp.keras")


def test_stage_main_prints_one_line_and_exits_2(capsys):
    def main(argv):
        raise UserError("data/raw/x.tar.gz: truncated\narchive")

    with pytest.raises(SystemExit) as info:
        stage_main(main, [])
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: data/raw/x.tar.gz: truncated archive\n"


def test_params_yaml_is_valid_yaml_mapping():
    root = Path(__file__).resolve().parents[1]
    params = config.read_params(root / "params.yaml")
    assert {"seed", "data", "prepare", "custom", "train", "variants"} <= set(params)


def test_library_import_has_no_side_effects(tmp_path):
    """Importing the core modules writes nothing and does not import TensorFlow."""
    code = ("import sys, cifar_dvc.config, cifar_dvc.atomic, cifar_dvc.artifacts, cifar_dvc.normalization, "
            "cifar_dvc.modelinfo; assert 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert list(tmp_path.iterdir()) == []

