"""prepare: stratified seeded subsets and validation splits, one-hot labels, normalization statistics,
the output layout, and one-line refusals (stages/prepare.py, cifar_dvc.datasets.split); training
reads the one-hot labels prepare wrote, checked (cifar_dvc.artifacts.onehot_labels)."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import yaml

from cifar_dvc import artifacts, config
from cifar_dvc.datasets.params import PrepareParams
from cifar_dvc.datasets.split import one_hot, prepare_dataset, stratified_take
from cifar_dvc.errors import DataError, ParamsError, stage_main
from cifar_dvc.normalization import load_stats, normalize
from cifar_dvc.training.data import make_dataset
from cifar_dvc.training.loop import train_variant
from cifar_dvc.training.variant import TrainParams, VariantParams
from stages import prepare as prepare_stage


def make_interim(root, n_per_class=(30, 20, 10), n_test=12, seed=0):
    """An interim directory with imbalanced classes and distinct images (each image = its index)."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(len(n_per_class)), n_per_class))
    x = rng.integers(0, 256, (len(y), 8, 8, 3), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(len(y)) % 256
    y_test = np.arange(n_test) % len(n_per_class)
    x_test = rng.integers(0, 256, (n_test, 8, 8, 3), dtype=np.uint8)
    artifacts.save_split(root / "train.npz", x, y)
    artifacts.save_split(root / "test.npz", x_test, y_test)
    meta = artifacts.Meta("synthetic", [f"c{i}" for i in range(len(n_per_class))], (8, 8, 3))
    artifacts.save_meta(root, meta)
    return artifacts.Split(x, y), artifacts.Split(x_test, y_test), meta


def run_prepare(tmp_path, params: dict, capsys) -> tuple[int, list[str]]:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    try:
        stage_main(prepare_stage.main, ["--interim", str(tmp_path / "interim"), "--out",
                                        str(tmp_path / "prepared"), "--params", str(path)])
    except SystemExit as exc:
        return exc.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return 0, []


def test_stratified_take_keeps_class_shares_and_is_seeded():
    y = np.repeat([0, 1, 2], [50, 30, 20])
    idx = stratified_take(y, 10, np.random.default_rng(3))
    assert len(idx) == 10 and len(set(idx.tolist())) == 10
    assert np.bincount(y[idx]).tolist() == [5, 3, 2]
    np.testing.assert_array_equal(idx, stratified_take(y, 10, np.random.default_rng(3)))
    assert not np.array_equal(idx, stratified_take(y, 10, np.random.default_rng(4)))
    # Largest remainders: 7 of (50, 30, 20) is 3.5, 2.1, 1.4 -> 4, 2, 1.
    assert np.bincount(y[stratified_take(y, 7, np.random.default_rng(0))]).tolist() == [4, 2, 1]
    assert len(stratified_take(y, 0, np.random.default_rng(0))) == 0


def test_one_hot_is_float32():
    out = one_hot(np.array([2, 0]), 3)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 0, 1], [1, 0, 0]])


def test_prepare_stage_writes_the_layout(tmp_path, capsys):
    (tmp_path / "interim").mkdir()
    _, test, meta = make_interim(tmp_path / "interim")
    params = {"seed": 5, "prepare": {"normalize": "scale", "validation": 0.2}}
    code, err = run_prepare(tmp_path, params, capsys)
    assert (code, err) == (0, [])
    out = tmp_path / "prepared"
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "normalization.json", "test.npz",
                                                     "train.npz", "val.npz"]
    tr, va, te = (artifacts.load_split(out / f"{n}.npz") for n in ("train", "val", "test"))
    assert (len(tr), len(va), len(te)) == (48, 12, 12)
    assert np.bincount(va.y).tolist() == [6, 4, 2]  # 20% of each class
    for split in (tr, va, te):
        assert split.x.dtype == np.uint8 and split.y.dtype == np.int64
        assert split.extra["y_onehot"].dtype == np.float32
        np.testing.assert_array_equal(split.extra["y_onehot"].argmax(1), split.y)
    # train and val partition the original training set: no image lost or duplicated
    ids = np.concatenate([tr.x[:, 0, 0, 0], va.x[:, 0, 0, 0]])
    assert sorted(ids.tolist()) == list(range(60))
    np.testing.assert_array_equal(te.x, test.x)
    assert artifacts.load_meta(out) == meta
    assert load_stats(out / "normalization.json").method == "scale"


def test_validation_on_the_test_set_and_train_subset(tmp_path):
    train, test, meta = make_interim(tmp_path)
    prepared = prepare_dataset(train, test, meta, PrepareParams(validation="test"), train_subset=30, seed=1)
    assert len(prepared.train) == 30 and np.bincount(prepared.train.y).tolist() == [15, 10, 5]
    np.testing.assert_array_equal(prepared.val.x, test.x)
    again = prepare_dataset(train, test, meta, PrepareParams(validation="test"), train_subset=30, seed=1)
    np.testing.assert_array_equal(prepared.train.x, again.train.x)
    other = prepare_dataset(train, test, meta, PrepareParams(validation="test"), train_subset=30, seed=2)
    assert not np.array_equal(prepared.train.x, other.train.x)


def test_standardize_uses_training_statistics_only(tmp_path):
    train, test, meta = make_interim(tmp_path)
    test.x[:] = 255  # test images must not influence the statistics
    prepared = prepare_dataset(train, test, meta, PrepareParams(normalize="standardize", validation=0.25),
                               train_subset=None, seed=0)
    x = prepared.train.x.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(prepared.stats.mean, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(prepared.stats.std, x.std(0), rtol=1e-6)
    z = normalize(prepared.train.x, prepared.stats)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.reshape(-1, 3).mean(0), 0, atol=1e-4)


def test_prepare_is_independent_of_the_validation_fraction_for_the_subset(tmp_path):
    train, test, meta = make_interim(tmp_path)
    a = prepare_dataset(train, test, meta, PrepareParams(validation=0.1), train_subset=30, seed=1)
    b = prepare_dataset(train, test, meta, PrepareParams(validation=0.2), train_subset=30, seed=1)
    ids = sorted(np.concatenate([a.train.x, a.val.x])[:, 0, 0, 0].tolist())
    assert ids == sorted(np.concatenate([b.train.x, b.val.x])[:, 0, 0, 0].tolist())


@pytest.mark.parametrize(("params", "expected"), [
    ({"prepare": {"normalize": "minmax"}}, "prepare.normalize: expected one of scale | standardize"),
    ({"prepare": {"validation": 1.5}}, "validation must be a fraction strictly between 0 and 1"),
    ({"prepare": {"validation": "val"}}, "prepare.validation: expected float or test"),
    ({"data": {"train_subset": 1000}}, "data.train_subset: 1000 exceeds the 60 training images"),
    ({"data": {"train_subset": 2.5}}, "data.train_subset: expected int or null"),
    ({"seed": "seven"}, "seed: expected a non-negative integer"),
])
def test_bad_params_are_one_line(tmp_path, capsys, params, expected):
    (tmp_path / "interim").mkdir()
    make_interim(tmp_path / "interim")
    code, err = run_prepare(tmp_path, params, capsys)
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "prepared").exists()


def test_missing_interim_is_one_line(tmp_path, capsys):
    code, err = run_prepare(tmp_path, {}, capsys)
    assert code == 2 and len(err) == 1 and "meta.json: not found" in err[0]


def test_prepared_fixture_layout(prepared_dir):
    meta = json.loads((prepared_dir / "meta.json").read_text())
    assert meta["image_shape"] == [32, 32, 3] and len(meta["classes"]) == 10
    assert len(artifacts.load_split(prepared_dir / "val.npz")) == 20


def test_a_validation_fraction_leaving_no_image_is_refused():
    x = np.zeros((10, 4, 4, 3), np.uint8)
    split = artifacts.Split(x, np.arange(10) % 2)
    meta = artifacts.Meta("synthetic", ["a", "b"], (4, 4, 3))
    with pytest.raises(ParamsError, match="leaves an empty training or validation split"):
        prepare_dataset(split, split, meta, PrepareParams(validation=0.01), train_subset=None, seed=0)


# --- the one-hot labels prepare writes are the ones training reads -----------------------------

def _with_onehot(prepared_dir, tmp_path, name, onehot):
    """A copy of ``prepared_dir`` whose ``name`` split has ``onehot`` as y_onehot (None: left out)."""
    out = tmp_path / "prepared"
    shutil.copytree(prepared_dir, out)
    split = artifacts.load_split(out / name)
    extra = {} if onehot is None else {"y_onehot": onehot(split)}
    artifacts.save_split(out / name, split.x, split.y, **extra)
    return out


@pytest.mark.parametrize(("onehot", "expected"), [
    (None, "val.npz: no y_onehot labels; re-run prepare"),
    (lambda s: s.extra["y_onehot"].astype(np.float64), "val.npz: y_onehot must be float32 of shape (20, 10), "
                                                        "got float64 of shape (20, 10)"),
    (lambda s: s.extra["y_onehot"][:, :9], "got float32 of shape (20, 9)"),
    (lambda s: np.roll(s.extra["y_onehot"], 1, axis=1), "val.npz: y_onehot does not encode y"),
])
def test_bad_one_hot_labels_are_one_data_error_naming_the_file(prepared_dir, tmp_path, onehot, expected):
    data = _with_onehot(prepared_dir, tmp_path, "val.npz", onehot)
    with pytest.raises(DataError, match=re.escape(expected)):
        artifacts.onehot_labels(artifacts.load_split(data / "val.npz"), data / "val.npz", 10)
    # training reads them before anything else: the stage's one line, no model built
    variant = config.from_dict(VariantParams, {"model": "mlp", "epochs": 1}, where="variants.tiny")
    with pytest.raises(DataError, match=re.escape(expected)) as error:
        train_variant("tiny", variant, TrainParams(), 0, data, tmp_path / "m.keras", tmp_path / "live")
    assert len(str(error.value).splitlines()) == 1 and str(data / "val.npz") in str(error.value)
    assert not (tmp_path / "m.keras").exists()


def test_training_batches_carry_the_labels_prepare_wrote(prepared_dir):
    split = artifacts.load_split(prepared_dir / "train.npz")
    labels = artifacts.onehot_labels(split, prepared_dir / "train.npz", 10)
    assert labels is split.extra["y_onehot"]  # the array prepare wrote, not a new encoding
    stats = load_stats(prepared_dir / "normalization.json")
    ds = make_dataset(split.x, labels, stats, batch_size=32, shuffle=False, seed=0, group=2)
    batched = np.concatenate([b[1].numpy() for b in ds])
    np.testing.assert_array_equal(batched, labels)
    np.testing.assert_array_equal(batched, one_hot(split.y, 10))  # what training used to encode itself
    with pytest.raises(ValueError, match="float32 one-hot rows"):
        make_dataset(split.x, split.y, stats, batch_size=32, shuffle=False, seed=0)  # integer labels
