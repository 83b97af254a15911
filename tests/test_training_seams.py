"""The steps of ``cifar_dvc.training.loop`` compose to what ``train_variant`` trains, and the
benchmarks that call them (``fast_recipe``, ``train_throughput``, ``onednn``,
``precision_accuracy``, ``jpeg_sensitivity``, ``seed_accuracy``, ``step_profile``) run on the tiny
synthetic set."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import keras
import numpy as np
import pytest
import yaml

from cifar_dvc import artifacts, config
from cifar_dvc.modelinfo import load_info
from cifar_dvc.training import loop, precision
from cifar_dvc.training.variant import TrainParams, VariantParams

ROOT = Path(__file__).resolve().parent.parent
QUIET = TrainParams(verbose="silent")
# Metrics of the fit itself (the stage adds learning_rate and, with TTA, val_tta_accuracy).
FIT_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def _variant(**overrides) -> VariantParams:
    entry = {"model": "mlp", "model_args": {"hidden_units": 32}, "epochs": 2, "batch_size": 32,
             "augment": {"flip": True, "shift": 0.1}, "checkpoint": "last", **overrides}
    return config.from_dict(VariantParams, entry, where="variants.tiny")


def _composed(variant: VariantParams, train: TrainParams, seed: int, data_dir: Path,
              extra: list[keras.callbacks.Callback] = ()) -> tuple[keras.Model, dict[str, list[float]]]:
    """A run built from the steps, as a benchmark builds one: no dvclive, backup or sidecar."""
    prepared = loop.load_data(data_dir)
    run = loop.start_run("tiny", variant, train, seed, len(prepared.train))
    train_ds, _ = loop.train_dataset(run, prepared.train.x, prepared.train_labels, prepared.stats)
    val_ds = loop.val_dataset(run, prepared.val.x, prepared.val_labels, prepared.stats)
    model = loop.build(run, prepared.meta.image_shape, prepared.meta.num_classes, prepared.stats,
                       init_images=prepared.train.x)
    callbacks, _ = loop.training_callbacks(run)
    history = loop.fit(run, model, train_ds, [*callbacks, *extra], val_ds=val_ds)
    return model, history.history


def test_the_steps_compose_to_train_variant(tmp_path: Path, prepared_dir: Path) -> None:
    """Same seed: the steps alone train, bit for bit, what the stage trains and saves."""
    # A plateau schedule that acts at every epoch: the recipe's callbacks must be the stage's.
    variant = _variant(schedule={"name": "plateau", "patience": 0, "factor": 0.5, "min_delta": 1.0},
                       monitor="val_loss", early_stopping=5)
    result = loop.train_variant("tiny", variant, QUIET, 7, prepared_dir, tmp_path / "tiny.keras",
                                tmp_path / "live")
    model, history = _composed(variant, QUIET, 7, prepared_dir)
    for metric in FIT_METRICS:
        assert history[metric] == result.history[metric], metric
    # the plateau acted (at the last epoch's end, after its rate was logged)
    final_rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    assert final_rate < result.history["learning_rate"][0]
    saved = keras.models.load_model(tmp_path / "tiny.keras")
    for mine, stage in zip(model.get_weights(), saved.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, stage)


def test_augmentation_runs_in_float32_under_a_mixed_precision_run(prepared_dir: Path) -> None:
    """The augmenter is built outside the run's dtype policy: pixels are moved in float32 and only
    the model computes in bfloat16 (every layer of seed 004's augmentation)."""
    variant = _variant(precision="mixed_bfloat16", augment={
        "rotation": 20, "shift": 0.1, "zoom_in": 0.2, "zoom_out": 0.3, "channel_shift": 0.2, "flip": True})
    prepared = loop.load_data(prepared_dir)
    run = loop.start_run("tiny", variant, QUIET, 7, len(prepared.train))
    assert run.precision == "mixed_bfloat16"
    train_ds, augmenter = loop.train_dataset(run, prepared.train.x, prepared.train_labels, prepared.stats)
    assert [layer.compute_dtype for layer in augmenter.layers] == ["float32"] * 3
    images, _ = next(iter(train_ds))
    assert images.dtype == "float32"


def test_averaged_weights_lends_the_ema_weights_and_gives_the_training_ones_back(prepared_dir: Path) -> None:
    variant = _variant(optimizer={"name": "sgd", "learning_rate": 0.05, "momentum": 0.9, "use_ema": True,
                                  "ema_momentum": 0.5})
    seen: dict[str, list[np.ndarray]] = {}

    class Probe(keras.callbacks.Callback):
        """At the first epoch's end, as the fast_recipe benchmark tests: before, inside, after."""

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if epoch == 0:
                seen["before"] = self.model.get_weights()
                with loop.averaged_weights(self.model) as lent:
                    seen["inside"] = lent.get_weights()
                seen["after"] = self.model.get_weights()

    _, two_epochs = _composed(variant, QUIET, 7, prepared_dir, extra=[Probe()])
    for before, after in zip(seen["before"], seen["after"], strict=True):
        np.testing.assert_array_equal(before, after)  # training goes on from exactly its own weights
    assert any(not np.array_equal(b, i) for b, i in zip(seen["before"], seen["inside"], strict=True))
    # Inside the block: the weights fit itself ends with (the EMA) after the same first epoch.
    one_epoch_model, one_epoch = _composed(variant, TrainParams(max_epochs=1, verbose="silent"), 7,
                                           prepared_dir)
    assert one_epoch["loss"] == two_epochs["loss"][:1]
    for inside, final in zip(seen["inside"], one_epoch_model.get_weights(), strict=True):
        np.testing.assert_array_equal(inside, final)


def test_averaged_weights_without_ema_leaves_the_model_alone(prepared_dir: Path) -> None:
    model, _ = _composed(_variant(epochs=1), QUIET, 7, prepared_dir)
    before = model.get_weights()
    with loop.averaged_weights(model) as lent:
        assert lent is model
        for b, w in zip(before, model.get_weights(), strict=True):
            np.testing.assert_array_equal(b, w)


def _benchmark(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # their sibling imports (reproduction)
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _params(path: Path, variant: dict) -> Path:
    path.write_text(yaml.safe_dump({"seed": 3, "train": {"steps_per_execution": 1, "verbose": "silent"},
                                    "variants": {"tiny": variant}}))
    return path


def test_fast_recipe_benchmark_trains_and_tests_through_the_steps(tmp_path: Path, prepared_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``fast_recipe.py train`` on the synthetic set, with EMA weights tested every epoch."""
    fast_recipe = _benchmark("fast_recipe", monkeypatch)
    train, test = (artifacts.load_split(prepared_dir / f"{s}.npz") for s in ("train", "test"))
    monkeypatch.setattr(fast_recipe, "load_cifar", lambda archive: {
        "x_train": train.x, "y_train": train.y, "x_test": test.x, "y_test": test.y})
    params = _params(tmp_path / "params.yaml", {
        "model": "mlp", "model_args": {"hidden_units": 16}, "epochs": 2, "batch_size": 32, "tta": 1,
        "optimizer": {"name": "sgd", "learning_rate": 0.05, "use_ema": True, "ema_momentum": 0.5}})
    out, log = tmp_path / "fast.md", tmp_path / "curve.jsonl"
    fast_recipe.main(["train", "--params", str(params), "--variant", "tiny", "--eval-from", "1",
                      "--out", str(out), "--log", str(log)])
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rows)
    report = out.read_text()
    # The precision `auto` resolved to on this machine (bfloat16 on AMX and avx512_bf16 CPUs).
    assert "EMA weights, TTA 1" in report and f"precision {precision.resolve('auto')}" in report


def test_train_throughput_benchmark_measures_the_stage_pipeline(tmp_path: Path, prepared_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    throughput = _benchmark("train_throughput", monkeypatch)
    params = _params(tmp_path / "params.yaml", {"model": "mlp", "model_args": {"hidden_units": 16},
                                                "batch_size": 16, "augment": {"flip": True}})
    out = tmp_path / "throughput.md"
    monkeypatch.setattr(sys, "argv", ["train_throughput.py", "--data", str(prepared_dir), "--params",
                                      str(params), "--steps", "3", "--max-seconds", "10", "--ceiling",
                                      "--out", str(out)])
    throughput.main()
    row = next(line for line in out.read_text().splitlines() if line.startswith("| tiny |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:5] == ["mlp", "16", "1", "yes"]
    assert all(float(c.replace(",", "").rstrip("x")) > 0 for c in cells[5:])


def test_train_throughput_measures_the_precision_asked_not_the_variants(
        prepared_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--precisions``: each column trains in its own precision, whatever the variant's key says."""
    throughput = _benchmark("train_throughput", monkeypatch)
    entry = {"model": "mlp", "model_args": {"hidden_units": 16}, "batch_size": 16, "precision": "float32"}
    variant = config.from_dict(VariantParams, entry, where="variants.tiny")
    run, model, _ = throughput.stage_model("tiny", variant, TrainParams(), loop.load_data(prepared_dir), 32,
                                           "mixed_bfloat16")
    assert run.precision == "mixed_bfloat16"
    assert "bfloat16" in {layer.compute_dtype for layer in model.layers}


def test_onednn_benchmark_switches_the_kernels_of_its_children(tmp_path: Path, prepared_dir: Path) -> None:
    """``onednn.py``: one child process per setting, each measuring the stage's training."""
    params = _params(tmp_path / "params.yaml", {"model": "cnn", "model_args": {"filters": 4},
                                                "batch_size": 16})
    out = tmp_path / "onednn.md"
    result = subprocess.run([sys.executable, "benchmarks/onednn.py", "--data", str(prepared_dir),
                             "--params", str(params), "--steps", "3", "--max-seconds", "5", "--rounds", "1",
                             "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = out.read_text()
    if os.uname().machine == "x86_64":  # each child's TensorFlow says which kernels it really ran
        assert "`TF_ENABLE_ONEDNN_OPTS=0` -> oneDNN [False], `=1` -> [True]" in report
    row = next(line for line in report.splitlines() if line.startswith("| tiny |"))
    off, on, ratio = (c.strip() for c in row.strip("|").split("|")[1:])
    assert float(off.replace(",", "")) > 0 and float(on.replace(",", "")) > 0 and ratio.endswith("x")


def test_precision_accuracy_benchmark_pairs_the_precisions_per_seed(tmp_path: Path, prepared_dir: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``precision_accuracy.py --seeds``: a float32 / bfloat16 pair per seed, then their paired mean."""
    bench = _benchmark("precision_accuracy", monkeypatch)
    mean, err = bench.paired_difference([(0.60, 0.62), (0.70, 0.70), (0.50, 0.49)])
    assert mean == pytest.approx(0.01 / 3) and err == pytest.approx(0.0152753 / 3 ** 0.5, rel=1e-5)
    assert bench.paired_difference([(0.5, 0.6)]) == (pytest.approx(0.1), None)
    # The variant's own precision must not win over the one under test.
    params = _params(tmp_path / "params.yaml", {"model": "mlp", "model_args": {"hidden_units": 16},
                                                "batch_size": 32, "precision": "float32"})
    out = tmp_path / "precision_accuracy_here.md"
    monkeypatch.setattr(bench, "OUT", tmp_path / "default.md")  # --out wins over the default
    monkeypatch.setattr(sys, "argv", ["precision_accuracy.py", "--data", str(prepared_dir), "--params",
                                      str(params), "--variants", "tiny", "--epochs", "1", "--seeds", "4", "5",
                                      "--work", str(tmp_path / "work"), "--out", str(out)])
    bench.main()
    report = out.read_text()
    assert not (tmp_path / "default.md").exists()
    rows = [line for line in report.splitlines() if line.startswith("| tiny |")]
    assert [r.split("|")[2].strip() for r in rows] == ["4", "5"]
    assert "- tiny: bfloat16 - float32 over 2 seeds:" in report
    assert sorted(p.name for p in (tmp_path / "work" / "float32").glob("*.keras")) == [
        "tiny-seed4.keras", "tiny-seed5.keras"]
    trained = load_info(tmp_path / "work" / "mixed_bfloat16" / "tiny-seed4.keras").training
    assert trained["precision"] == "mixed_bfloat16"


def test_jpeg_sensitivity_trains_the_same_recipe_on_a_reencoded_copy(tmp_path: Path, prepared_dir: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``jpeg_sensitivity.py``: every split re-encoded, error growing as quality falls, one run per copy."""
    bench = _benchmark("jpeg_sensitivity", monkeypatch)
    images = artifacts.load_split(prepared_dir / "train.npz").x[:20]
    fine, coarse = bench.reencode(images, 95), bench.reencode(images, 10)
    assert fine.dtype == np.uint8 and fine.shape == images.shape
    assert 0 < bench.mean_abs_error(images, fine) < bench.mean_abs_error(images, coarse)
    params = _params(tmp_path / "params.yaml", {"model": "mlp", "model_args": {"hidden_units": 16},
                                                "batch_size": 32})
    out = tmp_path / "jpeg_sensitivity.md"
    monkeypatch.setattr(bench, "OUT", out)
    monkeypatch.setattr(sys, "argv", ["jpeg_sensitivity.py", "--data", str(prepared_dir), "--params",
                                      str(params), "--variant", "tiny", "--epochs", "2", "--quality", "20",
                                      "--work", str(tmp_path / "work")])
    bench.main()
    copy = tmp_path / "work" / "prepared-q20"
    for name in ("train", "val", "test"):
        original, reencoded = (artifacts.load_split(d / f"{name}.npz") for d in (prepared_dir, copy))
        assert np.array_equal(original.y, reencoded.y) and not np.array_equal(original.x, reencoded.x)
        assert np.array_equal(original.extra["y_onehot"], reencoded.extra["y_onehot"])
    assert (copy / "meta.json").read_bytes() == (prepared_dir / "meta.json").read_bytes()
    rows = [line.split("|") for line in out.read_text().splitlines() if line.startswith("| as is") or
            line.startswith("| re-encoded at quality 20")]
    assert rows[0][2].strip() == "0.0" and float(rows[1][2]) > 0
    assert all(len(r[3].split(",")) == 2 for r in rows)  # two epochs of training accuracy each
    assert re.search(r"- re-encoded at quality 20 \(\d+\.\d/255 more pixel error\), minus as is: training "
                     r"accuracy [-+]\d+\.\d, [-+]\d+\.\d points per epoch, test [-+]\d+\.\d\d points\.",
                     out.read_text())


def _workspace(root: Path, epochs: int, seconds: float, run: int | None = None,
               schedule: dict | None = None) -> Path:
    """A reproduction workspace as `dvc repro evaluate@nb_elu` leaves it, with ``epochs`` given and
    ``run`` (default: all of them) run, and ``schedule`` in the variant's params if given."""
    from cifar_dvc import evalsets

    (root / "models").mkdir(parents=True)
    (root / "metrics").mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump({
        "data": {"dataset": "cifar10", "url": "file:///data/cifar.tar.gz", "md5": "0" * 32},
        "custom": {"dir": "data/custom"},
        "variants": {"nb_elu": {"model": "notebook_cnn", "epochs": epochs,
                                **({"schedule": schedule} if schedule else {})}}}))
    run = epochs if run is None else run
    training = {"epochs_run": run, "seconds": seconds, "cpu_seconds": 1.5 * seconds,
                "precision": "mixed_bfloat16"}
    (root / "models" / "nb_elu.json").write_text(json.dumps({"training": training}))
    (root / "metrics" / "nb_elu.json").write_text(json.dumps({evalsets.metric_key("test"): 0.7, "val": 0.71}))
    live = root / "dvclive" / "nb_elu" / "plots" / "metrics" / "eval"
    live.mkdir(parents=True)
    rows = "".join(f"{i}\t0.{60 + i}\n" for i in range(run))
    (live / "accuracy.tsv").write_text("step\taccuracy\n" + rows)
    return root


def test_reproduction_table_says_which_runs_were_cut_short_of_the_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A workspace that cut ``epochs`` to fit a session gives "run / budget" (the repository's epochs)
    and the measured time per epoch with the budget's extrapolation; a full run is not listed as cut."""
    reproduction = _benchmark("reproduction", monkeypatch)
    repo_params = tmp_path / "repo-params.yaml"
    repo_params.write_text(yaml.safe_dump({"variants": {"nb_elu": {"model": "notebook_cnn", "epochs": 60}}}))
    short = reproduction.collect(_workspace(tmp_path / "short", 2, 600.0), "nb_elu", repo_params)
    assert short["budget"] == 60 and short["curve"]["val_accuracy"] == [0.6, 0.61]
    report = reproduction.report([short])
    row = next(line for line in report.splitlines() if line.startswith("| nb_elu |"))
    # seed 002: 73.71%; a cut is not an early stop (no mark after "2 / 60")
    assert "| 70.0% |" in row and "| 2 / 60 |" in row and "| -3.7 |" in row
    assert ("- nb_elu: 2 of its 60 epochs (`variants.nb_elu.epochs: 2` in the workspace), 7.5 CPU-min "
            "and 5.0 wall-min an epoch (mixed_bfloat16, ") in report
    assert "the budget would take about 5.0 h of wall time there." in report
    assert "| nb_elu | 73.7% | 70.0% (-) | 2 / 60 |" in reproduction.readme_table([short])
    full = reproduction.collect(_workspace(tmp_path / "full", 60, 600.0 * 30), "nb_elu", repo_params)
    assert "| 60 / 60 |" in reproduction.report([full]) and "Cut short" not in reproduction.report([full])
    # Early stopping ended it after 46 of the 60 it was given: at its budget, not cut, and said so
    early = reproduction.collect(_workspace(tmp_path / "early", 60, 600.0 * 23, run=46), "nb_elu",
                                 repo_params)
    early_report = reproduction.report([early])
    assert "| 46 / 60 (early stop) |" in early_report and "Cut short" not in early_report
    # A cut that scaled the schedule with the epochs says so: every key that differs, nothing else
    repo_params.write_text(yaml.safe_dump({"variants": {"nb_elu": {
        "model": "notebook_cnn", "epochs": 60, "schedule": {"name": "step", "boundaries": [40, 50]}}}}))
    scaled = reproduction.collect(_workspace(tmp_path / "scaled", 6, 600.0 * 3,
                                             schedule={"name": "step", "boundaries": [4, 5]}),
                                  "nb_elu", repo_params)
    assert scaled["edits"] == {"epochs": 6, "schedule.boundaries": [4, 5]}
    assert ("- nb_elu: 6 of its 60 epochs (`variants.nb_elu.epochs: 6`, `variants.nb_elu.schedule"
            ".boundaries: [4, 5]` in the workspace)") in reproduction.report([scaled])


def test_seed_accuracy_benchmark_reports_the_saved_models_test_accuracy(
        tmp_path: Path, prepared_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``seed_accuracy.py``: the capped run's row carries the saved model's plain test accuracy."""
    bench = _benchmark("seed_accuracy", monkeypatch)
    params = _params(tmp_path / "params.yaml", {"model": "mlp", "model_args": {"hidden_units": 16},
                                                "epochs": 3, "batch_size": 32})
    out, work = tmp_path / "seed_accuracy.md", tmp_path / "work"
    monkeypatch.setattr(sys, "argv", ["seed_accuracy.py", "--data", str(prepared_dir), "--params",
                                      str(params), "--variants", "tiny", "--cap", "tiny=1", "--work",
                                      str(work), "--out", str(out)])
    bench.main()
    row = next(line for line in out.read_text().splitlines() if line.startswith("| tiny |"))
    planned, run, _, _, acc = (c.strip() for c in row.strip("|").split("|")[1:6])
    # Independently of the benchmark: the saved model on the raw test images, normalized by its sidecar.
    model = keras.saving.load_model(work / "models" / "tiny.keras", compile=False)
    stats = load_info(work / "models" / "tiny.keras").normalization
    test = artifacts.load_split(prepared_dir / "test.npz")
    probs = model.predict(test.x.astype(np.float32) * stats.scale - stats.offset, verbose=0)
    assert (planned, run) == ("3", "1")
    assert float(acc.strip("*")) == pytest.approx(float((probs.argmax(1) == test.y).mean()), abs=5e-5)
    assert (tmp_path / "seed_accuracy_curves.png").stat().st_size > 0


def test_step_profile_sums_the_profilers_op_times_per_precision(tmp_path: Path, prepared_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``step_profile.py``: per precision, the op types of a real profile, their shares adding to 1."""
    bench = _benchmark("step_profile", monkeypatch)
    params = _params(tmp_path / "params.yaml", {"model": "mlp", "model_args": {"hidden_units": 16},
                                                "batch_size": 32})
    out = tmp_path / "step_profile.md"
    monkeypatch.setattr(sys, "argv", ["step_profile.py", "--data", str(prepared_dir), "--params", str(params),
                                      "--variant", "tiny", "--precisions", "float32", "mixed_bfloat16",
                                      "--steps", "2", "--top", "3", "--work", str(tmp_path / "traces"),
                                      "--out", str(out)])
    bench.main()
    for setting in ("float32", "mixed_bfloat16"):
        ops = bench.op_self_times(next((tmp_path / "traces" / setting).rglob("*.xplane.pb")))
        assert bench.IDLE not in ops and all(us >= 0 for us in ops.values())
        assert any("MatMul" in kind for kind in ops)  # the Dense layers' own kernels
        if setting == "mixed_bfloat16":
            assert "Cast" in ops  # float32 weights cast to bfloat16 for the matmuls
    report = out.read_text()
    rows = [line.split("|") for line in report.splitlines() if line.startswith("| `")
            or " other op types |" in line]
    assert len(rows) == 4  # the top 3, then the rest in one row
    for column in (3, 5):  # each precision's shares
        assert sum(float(r[column].strip().rstrip("%")) for r in rows) == pytest.approx(100, abs=0.3)
    busy = next(line for line in report.splitlines() if line.startswith("| cores busy |"))
    assert all(0 < float(v) <= os.cpu_count() + 0.5 for v in busy.split("|")[2:4])
