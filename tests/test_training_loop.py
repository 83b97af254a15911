"""The fit loop on the tiny synthetic set: every variant's step, outputs, determinism, the stage CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

import cifar_dvc.models  # noqa: F401  (registers custom layers for load_model)
from cifar_dvc import artifacts, config
from cifar_dvc.errors import ParamsError, stage_main
from cifar_dvc.modelinfo import load_info
from cifar_dvc.normalization import STATS_FILE, load_stats
from cifar_dvc.training import loop
from cifar_dvc.training.augment import build_augmenter
from cifar_dvc.training.data import make_dataset
from cifar_dvc.training.loop import build_compiled_model, train_variant
from cifar_dvc.training.variant import TrainParams, VariantParams, load_variant, variant_names
from stages import train as train_stage

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PARAMS = config.read_params(ROOT / "params.yaml")
QUIET = TrainParams(verbose="silent")


@pytest.mark.parametrize("name", variant_names(PROJECT_PARAMS))
def test_one_training_step_of_every_variant(name: str, prepared_dir: Path) -> None:
    """Each variant of params.yaml, with its own optimizer, schedule and augmentation: one step of 8."""
    variant = load_variant(name, PROJECT_PARAMS)
    if variant.model == "mobilenet":
        variant.model_args.update(weights="none", alpha=0.25)  # offline, and quick
    meta = artifacts.load_meta(prepared_dir)
    stats = load_stats(prepared_dir / STATS_FILE)
    split = artifacts.load_split(prepared_dir / "train.npz")
    keras.utils.set_random_seed(0)
    model = build_compiled_model(variant, TrainParams(jit_compile=False), meta.image_shape,
                                 meta.num_classes, stats, steps_per_epoch=1, epochs=variant.epochs)
    model.run_eagerly = True  # one step: tracing a graph would cost more than the step itself
    before = [w.numpy().copy() for w in model.trainable_weights]
    ds = make_dataset(split.x[:8], split.extra["y_onehot"][:8], stats, batch_size=8, shuffle=True, seed=0,
                      augmenter=build_augmenter(variant.augment, 0))
    history = model.fit(ds, epochs=1, verbose=0, shuffle=False)
    assert math.isfinite(history.history["loss"][0])
    changed = [not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights, strict=True)]
    assert any(changed), f"{name}: no trainable weight moved"


def _tiny(**overrides) -> VariantParams:
    entry = {"model": "cnn", "model_args": {"filters": 8}, "epochs": 3, "batch_size": 32,
             "augment": {"flip": True, "shift": 0.1, "channel_shift": 0.2}, **overrides}
    return config.from_dict(VariantParams, entry, where="variants.tiny")


def _run(tmp: Path, data: Path, variant: VariantParams, train: TrainParams = QUIET, seed: int = 7):
    return train_variant("tiny", variant, train, seed, data, tmp / "models" / "tiny.keras",
                         tmp / "dvclive" / "tiny")


def test_train_writes_best_model_sidecar_and_logs(tmp_path: Path, prepared_dir: Path) -> None:
    result = _run(tmp_path, prepared_dir, _tiny(epochs=5), TrainParams(max_epochs=3, verbose="silent"))
    hist, summary = result.history, result.summary
    assert summary["epochs_planned"] == summary["epochs_run"] == 3  # capped by train.max_epochs
    best = int(np.argmax(hist["val_accuracy"])) + 1
    assert summary["best_epoch"] == best and summary["best_value"] == max(hist["val_accuracy"])
    assert summary["images_per_second"] > 0 and summary["params"] == 18_234

    model_path = tmp_path / "models" / "tiny.keras"
    info = load_info(model_path)
    assert info.name == "tiny" and info.image_shape == (32, 32, 3) and len(info.classes) == 10
    assert info.normalization == load_stats(prepared_dir / STATS_FILE)
    assert info.training["best_epoch"] == best
    # The saved model is the best epoch's: its validation accuracy is the best logged one.
    model = keras.models.load_model(model_path)
    val = artifacts.load_split(prepared_dir / "val.npz")
    probs = model.predict(val.x.astype("float32") / 255.0, verbose=0)  # prepared_dir uses `scale`
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert np.mean(probs.argmax(1) == val.y) == pytest.approx(summary["best_value"])

    live = tmp_path / "dvclive" / "tiny"
    assert json.loads((live / "metrics.json").read_text())["step"] == 2
    curve = (live / "plots" / "metrics" / "eval" / "accuracy.tsv").read_text().splitlines()
    assert len(curve) == 1 + 3
    assert (live / "plots" / "metrics" / "train" / "learning_rate.tsv").is_file()
    leftovers = [p.name for d in ("models", "dvclive") for p in (tmp_path / d).iterdir()]
    assert sorted(leftovers) == ["tiny", "tiny.json", "tiny.keras"]  # nothing temporary left behind


# mlp: dropout and shuffling; fast: convolutions, BatchNorm and pooling through oneDNN's kernels
# (on in the tests as in the stages, cifar_dvc/tfenv.py), the whitening stem, the 64x BN-shift lr.
@pytest.mark.parametrize("entry", [
    {"model": "mlp", "model_args": {"hidden_units": 32, "dropout": 0.5}},
    {"model": "fast", "model_args": {"width": 4}, "batch_size": 64, "label_smoothing": 0.2,
     "optimizer": {"name": "sgd", "learning_rate": 0.1, "momentum": 0.85, "nesterov": True,
                   "norm_bias_lr_scale": 64}, "augment": {"flip": True, "crop_padding": 2}},
], ids=["mlp", "fast"])
def test_two_runs_give_identical_metrics(tmp_path: Path, prepared_dir: Path, entry: dict) -> None:
    variant = _tiny(**entry, epochs=2)
    first = _run(tmp_path / "a", prepared_dir, variant)
    second = _run(tmp_path / "b", prepared_dir, variant)
    assert first.history == second.history
    other_seed = _run(tmp_path / "c", prepared_dir, variant, seed=8)
    assert other_seed.history != first.history


def test_ema_last_checkpoint_tta_and_onecycle(tmp_path: Path, prepared_dir: Path) -> None:
    variant = _tiny(model="mlp", model_args={"hidden_units": 32}, epochs=2, label_smoothing=0.1,
                    optimizer={"name": "sgd", "learning_rate": 0.05, "momentum": 0.9, "nesterov": True,
                               "use_ema": True, "ema_momentum": 0.5},
                    schedule={"name": "onecycle", "warmup_epochs": 0.5}, checkpoint="last", tta=1,
                    augment={"crop_padding": 2, "flip": True, "cutout": 4})
    result = _run(tmp_path, prepared_dir, variant)
    assert len(result.history["val_tta_accuracy"]) == 2
    assert result.history["learning_rate"][-1] == pytest.approx(0.0, abs=1e-9)  # decayed to 0 at the end
    assert result.summary["best_epoch"] == 2 and result.summary["checkpoint"] == "last"
    assert (tmp_path / "models" / "tiny.keras").is_file()


def _dvclive_steps(live_dir: Path, metric: str) -> list[int]:
    """The steps (0-based epochs) at which dvclive logged ``metric`` (its plots/metrics/<metric>.tsv)."""
    header, *lines = (live_dir / "plots" / "metrics" / f"{metric}.tsv").read_text().splitlines()
    column = header.split("\t").index("step")
    return [int(line.split("\t")[column]) for line in lines]


@pytest.mark.parametrize(("every", "steps"), [(0, [2]), (2, [1, 2])])
def test_tta_validation_every_n_epochs_and_always_the_last(tmp_path: Path, prepared_dir: Path,
                                                           every: int, steps: list[int]) -> None:
    variant = _tiny(model="mlp", model_args={"hidden_units": 16}, epochs=3, tta=1, val_tta_every=every)
    result = _run(tmp_path, prepared_dir, variant)
    tta = result.history["val_tta_accuracy"]  # one per epoch, NaN where skipped
    assert [epoch for epoch, value in enumerate(tta) if not math.isnan(value)] == steps
    assert _dvclive_steps(tmp_path / "dvclive" / "tiny", "eval/tta_accuracy") == steps


@pytest.mark.parametrize(("every", "steps"), [(0, [2]), (2, [1, 2])])
def test_plain_validation_every_n_epochs_and_always_the_last(tmp_path: Path, prepared_dir: Path,
                                                             every: int, steps: list[int]) -> None:
    # a recipe that reads no validation metric during training (last checkpoint, no plateau)
    variant = _tiny(model="mlp", model_args={"hidden_units": 16}, epochs=3, checkpoint="last",
                    monitor="accuracy", val_every=every)
    result = _run(tmp_path, prepared_dir, variant)
    for key in ("val_accuracy", "val_loss"):  # one per epoch, NaN where skipped
        assert [epoch for epoch, value in enumerate(result.history[key]) if not math.isnan(value)] == steps
    assert all(not math.isnan(value) for value in result.history["accuracy"])
    assert _dvclive_steps(tmp_path / "dvclive" / "tiny", "eval/accuracy") == steps
    assert result.summary["epochs_run"] == 3 and result.summary["train_seconds"] > 0


def test_fast_variant_saves_its_whitening_stem_set_from_the_training_images(tmp_path: Path,
                                                                            prepared_dir: Path) -> None:
    from cifar_dvc.models.fast import whitening_kernel
    from cifar_dvc.normalization import normalize

    variant = _tiny(model="fast", model_args={"width": 4}, epochs=1, batch_size=64, tta=2,
                    optimizer={"name": "sgd", "learning_rate": 0.05, "momentum": 0.85, "nesterov": True,
                               "norm_bias_lr_scale": 64}, augment={"crop_padding": 2, "flip": True})
    result = _run(tmp_path, prepared_dir, variant)
    assert len(result.history["val_tta_accuracy"]) == 1
    model = keras.models.load_model(tmp_path / "models" / "tiny.keras")
    # Validation with TTA is evaluate's level-2 prediction (one epoch: the saved model is the validated one),
    # and the sidecar records the level for the web demo.
    from tests.test_inference import reference_probs

    val, stats = artifacts.load_split(prepared_dir / "val.npz"), load_stats(prepared_dir / STATS_FILE)
    expected = float(np.mean(reference_probs(model, val.x, stats, 2, batch_size=64).argmax(axis=1) == val.y))
    assert result.history["val_tta_accuracy"][0] == pytest.approx(expected, abs=1e-9)
    assert load_info(tmp_path / "models" / "tiny.keras").tta == 2
    assert type(model.optimizer).__name__ == "NormBiasScaledSGD" and model.optimizer.norm_bias_lr_scale == 64
    train = artifacts.load_split(prepared_dir / "train.npz")
    expected = whitening_kernel(normalize(train.x[:5000], load_stats(prepared_dir / STATS_FILE)))
    np.testing.assert_allclose(np.asarray(model.get_layer("whiten").kernel), expected, rtol=1e-4, atol=1e-5)


def test_plateau_and_early_stopping(tmp_path: Path, prepared_dir: Path) -> None:
    """A learning rate too small to change anything: val_loss never improves, so training stops
    after `early_stopping` epochs, and the plateau callback halves the rate on the way."""
    variant = _tiny(model="mlp", model_args={}, epochs=10, augment={}, monitor="val_loss", early_stopping=2,
                    optimizer={"learning_rate": 1e-30},
                    schedule={"name": "plateau", "patience": 1, "factor": 0.5, "min_delta": 0.0})
    result = _run(tmp_path, prepared_dir, variant)
    assert result.summary["epochs_run"] == 3 and result.summary["best_epoch"] == 1
    lrs = result.history["learning_rate"]
    assert lrs[0] == pytest.approx(1e-30) and lrs[-1] < lrs[0]


def _write_params(path: Path, variant: dict) -> Path:
    path.write_text(yaml.safe_dump({"seed": 1, "train": {"max_epochs": 1}, "variants": {"v": variant}}))
    return path


@pytest.mark.parametrize(("variant", "message"), [
    ({"model": "cnn", "epochz": 2}, "unknown key 'variants.v.epochz'"),
    ({"model": "resnet"}, "variants.v.model: unknown model 'resnet'; known models:"),
    ({"model": "cnn", "batch_size": "big"}, "variants.v.batch_size: expected int, got 'big'"),
    ({"model": "mlp", "model_args": {"dropout": [1]}}, "variants.v.model_args.dropout: expected float"),
    # Right types, values the builder or a Keras layer rejects (loop.check_model_args).
    ({"model": "fast", "model_args": {"width": 0}},
     "variants.v.model_args: width and stem_width must be positive"),
    ({"model": "imp", "model_args": {"convs_64": 0}}, "variants.v.model_args: convs_64 must be >= 1, got 0"),
    ({"model": "mlp", "model_args": {"dropout": 1.5}},
     "variants.v.model_args: Invalid value received for argument `rate`"),
])
def test_stage_bad_params_one_line_exit_2(tmp_path: Path, prepared_dir: Path, capsys, variant: dict,
                                          message: str) -> None:
    params = _write_params(tmp_path / "params.yaml", variant)
    model = tmp_path / "models" / "v.keras"
    argv = ["--variant", "v", "--data", str(prepared_dir), "--model", str(model),
            "--live", str(tmp_path / "live"), "--backup", str(tmp_path / "backups" / "v"),
            "--params", str(params)]
    with pytest.raises(SystemExit) as exit_info:
        stage_main(train_stage.main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {params}: ") and message in err
    assert sorted(tmp_path.iterdir()) == [params]  # no model, dvclive, backup or staging folder


def test_the_stage_s_trial_build_leaves_the_run_s_weights_alone(prepared_dir: Path) -> None:
    """``check_model_args`` builds the model once before the run; ``start_run`` reseeds, so the
    run's initial weights are the same with or without that build."""
    variant = _tiny()
    prepared = loop.load_data(prepared_dir)

    def initial_weights() -> list[np.ndarray]:
        run = loop.start_run("tiny", variant, QUIET, 7, len(prepared.train))
        model = loop.build(run, prepared.meta.image_shape, prepared.meta.num_classes, prepared.stats)
        return [w.numpy() for w in model.weights]

    alone = initial_weights()
    loop.check_model_args("tiny", variant, prepared_dir, "params.yaml")
    after_check = initial_weights()
    assert len(alone) == len(after_check)
    assert all(np.array_equal(a, b) for a, b in zip(alone, after_check, strict=True))


def test_model_args_under_several_workers_fail_when_the_run_builds(prepared_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a multi-worker TF_CONFIG no trial build (the collectives come first); the run's own
    build gives the same one-line error."""
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    bad = _tiny(model="fast", model_args={"width": 0})
    assert loop.check_model_args("v", bad, prepared_dir, "params.yaml") is None
    meta = artifacts.load_meta(prepared_dir)
    with pytest.raises(ParamsError, match=r"^variants\.v\.model_args: width and stem_width must be positive"):
        build_compiled_model(bad, QUIET, meta.image_shape, meta.num_classes,
                             load_stats(prepared_dir / STATS_FILE), steps_per_epoch=1, epochs=1,
                             where="variants.v")


@pytest.mark.parametrize(("variant_name", "variant", "message"), [
    ("nope", {"model": "cnn"}, "variants.nope: no such variant; declared variants: v"),
    ("v", {"model": "cnn", "epochz": 2}, "variants.v: unknown key 'variants.v.epochz'; known keys:"),
    ("v", {"model": "cnn", "epochs": 1.5}, "variants.v.epochs: expected int, got 1.5 (float)"),
    ("v", {"model": "fast", "model_args": {"width": 0}},
     "variants.v.model_args: width and stem_width must be positive, got 0 and 24"),
])
def test_stage_command_line(tmp_path: Path, prepared_dir: Path, variant_name: str, variant: dict,
                            message: str) -> None:
    """`python -m stages.train` as dvc runs it: bad params fail in one line, exit 2, no output."""
    params = _write_params(tmp_path / "params.yaml", variant)
    cmd = [sys.executable, "-m", "stages.train", "--variant", variant_name, "--data", str(prepared_dir),
           "--model", str(tmp_path / "m.keras"), "--live", str(tmp_path / "live"), "--params", str(params)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"error: {params}: {message}")
    assert not (tmp_path / "m.keras").exists() and not (tmp_path / "live").exists()
