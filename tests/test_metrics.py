"""Metrics by hand (confusion matrix, F1, loss, top-k, ECE) and the evaluate stage on a tiny run."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cifar_dvc import artifacts, evalsets, inference
from cifar_dvc.errors import DataError
from cifar_dvc.evaluation import evaluate, metrics
from cifar_dvc.normalization import STATS_FILE, load_stats
from tests.evaluation_workspace import TTA, VARIANTS, evaluated_workspace

ROOT = Path(__file__).parent.parent

# 8 images, 3 classes. Labels and predictions chosen so the confusion matrix is easy to count:
#   actual 0: predicted 0, 0, 1      actual 1: predicted 1, 1, 2      actual 2: predicted 2, 0
Y = np.array([0, 0, 0, 1, 1, 1, 2, 2])
PROBS = np.array([
    [0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1],
    [0.1, 0.8, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6],
    [0.2, 0.2, 0.6], [0.5, 0.1, 0.4],
], np.float32)
CM_BY_HAND = np.array([[2, 1, 0],
                       [0, 2, 1],
                       [1, 0, 1]])


def test_confusion_matrix_and_scalars_match_a_hand_count() -> None:
    out = metrics.summarize(PROBS, Y, num_classes=3, top_k=5, ece_bins=15)
    scalars, details = out["scalars"], out["details"]
    np.testing.assert_array_equal(details["confusion_matrix"], CM_BY_HAND)
    # precision = column diagonal / column sum, recall = row diagonal / row sum
    np.testing.assert_allclose(details["precision"], [2 / 3, 2 / 3, 1 / 2])
    np.testing.assert_allclose(details["recall"], [2 / 3, 2 / 3, 1 / 2])
    np.testing.assert_array_equal(details["support"], [3, 3, 2])
    assert scalars["n"] == 8
    assert scalars["accuracy"] == pytest.approx(5 / 8)
    f1 = [2 * p * r / (p + r) for p, r in [(2 / 3, 2 / 3), (2 / 3, 2 / 3), (1 / 2, 1 / 2)]]
    assert scalars["f1_macro"] == pytest.approx(sum(f1) / 3)
    true_p = [0.7, 0.6, 0.3, 0.8, 0.5, 0.3, 0.6, 0.4]  # PROBS[i, Y[i]]
    assert scalars["loss"] == pytest.approx(-np.mean(np.log(true_p)), rel=1e-6)
    assert "top5_accuracy" not in scalars  # 3 classes: top-5 would be trivially 1


def _f1_direct(y: np.ndarray, pred: np.ndarray) -> float:
    """Macro-F1 straight from the definition, one class at a time (no confusion matrix)."""
    scores = []
    for c in sorted(set(y.tolist()) | set(pred.tolist())):
        tp = int(np.sum((pred == c) & (y == c)))
        fp = int(np.sum((pred == c) & (y != c)))
        fn = int(np.sum((pred != c) & (y == c)))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_macro_equals_direct_computation_over_the_whole_set(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 7, 500)
    pred = np.where(rng.random(500) < 0.6, y, rng.integers(0, 7, 500))
    cm = metrics.confusion_matrix(y, pred, 10)  # classes 7..9 absent: left out of the mean
    assert metrics.f1_macro(cm) == pytest.approx(_f1_direct(y, pred), abs=1e-12)
    # Seed 002's per-batch F1 averaged over batches is a different (wrong) number.
    per_batch = np.mean([_f1_direct(y[i:i + 32], pred[i:i + 32]) for i in range(0, 500, 32)])
    assert abs(per_batch - metrics.f1_macro(cm)) > 1e-3


def test_top_k_accuracy_by_hand() -> None:
    probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], [0.25, 0.35, 0.3, 0.1]], np.float32)
    y = np.array([0, 0, 3])
    assert metrics.top_k_accuracy(probs, y, 1) == pytest.approx(1 / 3)
    assert metrics.top_k_accuracy(probs, y, 2) == pytest.approx(1 / 3)
    assert metrics.top_k_accuracy(probs, y, 3) == pytest.approx(1 / 3)
    assert metrics.top_k_accuracy(probs, y, 4) == pytest.approx(1.0)


def test_expected_calibration_error_by_hand() -> None:
    # 2 bins. Confidences 0.9 (right) and 0.8 (wrong) fall in (0.5, 1]; 0.4 and 0.45 (both right) in (0, 0.5].
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.4, 0.35, 0.25], [0.45, 0.3, 0.25]], np.float32)
    y = np.array([0, 0, 0, 0])
    # bin (0.5, 1]: mean confidence 0.85, accuracy 0.5; bin (0, 0.5]: mean confidence 0.425, accuracy 1
    expected = 0.5 * abs(0.5 - 0.85) + 0.5 * abs(1.0 - 0.425)
    assert metrics.expected_calibration_error(probs, y, bins=2) == pytest.approx(expected, rel=1e-6)
    table = metrics.calibration_bins(probs, y, bins=2)
    np.testing.assert_array_equal(table["count"], [2, 2])
    np.testing.assert_allclose(table["accuracy"], [1.0, 0.5])


def test_an_empty_set_gives_n_0_and_nulls() -> None:
    out = metrics.summarize(np.zeros((0, 10), np.float32), np.zeros(0, np.int64), num_classes=10)
    assert out["scalars"] == {"n": 0, "accuracy": None, "loss": None, "f1_macro": None, "ece": None,
                              "top5_accuracy": None}
    assert out["details"]["confusion_matrix"].sum() == 0


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, prepared_dir: Path) -> Path:
    return evaluated_workspace(tmp_path_factory, prepared_dir)


# metrics/<variant>.json of a run with every part on: flat, one short key a number (DVC's columns)
ALL_KEYS = {"val", "test", "test_loss", "test_f1", "test_ece", "custom_nn", "custom_nn_blur", "custom",
            "custom_blur", "custom_bn", "custom_blur_bn", "corrupt", "corrupt_bn"}


def test_metrics_json_keeps_what_a_reader_compares_and_results_json_the_rest(workspace: Path) -> None:
    table = [spec.name for spec in evalsets.SETS]
    sweep = {"sweep_50", "sweep_100", "sweep_nearest_50", "sweep_nearest_100"}
    for name in VARIANTS:
        scores = json.loads((workspace / "metrics" / f"{name}.json").read_text())
        results = json.loads((workspace / "eval" / name / "results.json").read_text())
        # one accuracy per set, test also loss, F1 and ECE: 13 columns in `dvc metrics show`, no sweep
        assert set(scores) == ALL_KEYS and len(scores) == 13
        assert not any(isinstance(value, dict) for value in scores.values())
        assert {s for s in results["sets"] if evalsets.parse_sweep(s)} == sweep  # the sweep: in results.json
        # the tiny models have no BatchNorm: adapted results are null, not missing
        assert scores["custom_bn"] is None and scores["custom_blur_bn"] is None
        assert scores["corrupt_bn"] is None
        rows = list(csv.DictReader((workspace / "eval" / name / "corruptions.csv").open()))
        assert len(rows) == 1 + 5 * 3 and {r["n"] for r in rows} == {"100"}  # 500 asked, the test set has 100
        assert scores["corrupt"] == pytest.approx(
            np.mean([float(r["accuracy"]) for r in rows if r["severity"] != "0"]), abs=1e-6)
        for set_name in [*table, *sweep]:
            s = results["sets"][set_name]
            assert {"n", "accuracy", "loss", "f1_macro", "ece", "top5_accuracy"} <= set(s)
            for key in evalsets.BY_NAME[set_name].metrics if set_name in evalsets.BY_NAME else ():
                assert scores[evalsets.metric_key(set_name, key)] == s[key]  # the same numbers
            cm = np.array(s["confusion_matrix"])
            assert cm.sum() == s["n"]
            assert s["accuracy"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-6)
            data = np.load(workspace / "eval" / name / "predictions" / f"{set_name}.npz")
            pred = data["probs"].argmax(axis=1)
            assert s["f1_macro"] == pytest.approx(_f1_direct(data["y"], pred), abs=1e-6)
        n = {set_name: results["sets"][set_name]["n"] for set_name in ("validation", "test", "custom")}
        assert n == {"validation": 20, "test": 100, "custom": 12}
        assert sorted(p.stem for p in (workspace / "eval" / name / "confusion").iterdir()) == \
            sorted(evalsets.CONFUSION_SETS)


def test_the_set_table_is_consistent() -> None:
    files = [(spec.folder, spec.file) for spec in evalsets.SETS]
    assert len(set(files)) == len(files) and len(evalsets.SET_NAMES) == len(evalsets.SETS)
    assert {evalsets.VALIDATION, evalsets.TEST} <= set(evalsets.SET_NAMES)
    for resize in evalsets.RESIZES:
        for filtered in (False, True):
            spec = evalsets.custom_set(resize, filtered)
            assert spec.folder == evalsets.CUSTOM and evalsets.parse_sweep(spec.stem) is None
    assert evalsets.adapted_sets() == ("custom_adapted", "custom_filtered_adapted")
    assert evalsets.adapted_of("custom_adapted") == "custom" and evalsets.adapted_of("test") is None
    assert evalsets.title("custom_filtered_adapted") == "Custom (filtered), BN adapted"
    with pytest.raises(KeyError, match="not an evaluation set"):
        evalsets.spec("custom_unfiltered")
    # the short keys of metrics/<variant>.json: one per number, none spelled twice
    keys = [evalsets.metric_key(s.name, k) for s in evalsets.SETS for k in s.metrics]
    keys += [evalsets.metric_key(name) for name in evalsets.adapted_sets()]
    keys += [evalsets.CORRUPTION_METRIC, evalsets.CORRUPTION_ADAPTED_METRIC]
    assert len(set(keys)) == len(keys) and set(keys) == ALL_KEYS
    assert set(evalsets.accuracy_keys()) == ALL_KEYS - {"test_loss", "test_f1", "test_ece"}
    assert evalsets.metric_key("validation") == "val" and evalsets.metric_key("test", "f1_macro") == "test_f1"
    assert evalsets.metric_key("custom_filtered_adapted") == "custom_blur_bn"
    assert evalsets.metric_key("custom_nearest_filtered") == "custom_nn_blur"
    with pytest.raises(KeyError, match="not an evaluation set"):
        evalsets.metric_key("sweep_75")


def test_without_the_nearest_sets_evaluation_reports_the_others(workspace: Path, tmp_path: Path) -> None:
    from cifar_dvc.evaluation.params import EvaluateParams
    from tests.evaluation_workspace import write_custom_sets

    custom = tmp_path / "custom_sets"
    write_custom_sets(custom, workspace / "data" / "prepared", n=6, nearest=False)  # compare_resample: null
    params = EvaluateParams(adapt_bn=False, corruptions=[])
    scores = evaluate.run("cnn", workspace / "models" / "cnn.keras", workspace / "data" / "prepared", custom,
                          params, 0, tmp_path / "cnn.json", tmp_path / "eval")
    # no nearest sets: their keys are absent, not null (nor the adapted ones or the corruption means)
    assert set(scores) == {"val", "test", "test_loss", "test_f1", "test_ece", "custom", "custom_blur"}
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(results["sets"]) == {"validation", "test", "custom", "custom_filtered", "sweep_100",
                                    "sweep_50"}
    (custom / "unfiltered.npz").unlink()  # a required set missing: one error naming the file
    with pytest.raises(DataError, match=r"unfiltered\.npz"):
        evaluate.load_sets(workspace / "data" / "prepared", custom)


def test_confusion_csv_is_what_dvc_counts(workspace: Path) -> None:
    results = json.loads((workspace / "eval" / "cnn" / "results.json").read_text())
    classes = results["classes"]
    rows = list(csv.DictReader((workspace / "eval" / "cnn" / "confusion" / "test.csv").open()))
    counted = np.zeros((len(classes), len(classes)), int)
    for row in rows:
        counted[classes.index(row["actual"]), classes.index(row["predicted"])] += 1
    np.testing.assert_array_equal(counted, results["sets"]["test"]["confusion_matrix"])


def test_flip_tta_averages_the_image_and_its_mirror(workspace: Path) -> None:
    model, info = inference.load(workspace / "models" / "mlp.keras")
    test = artifacts.load_split(workspace / "data" / "prepared" / "test.npz")
    assert info.normalization == load_stats(workspace / "data" / "prepared" / STATS_FILE)
    plain = inference.predict(model, info, test.x, 0, batch_size=64)
    mirrored = inference.predict(model, info, np.ascontiguousarray(test.x[:, :, ::-1]), 0, batch_size=64)
    saved = np.load(workspace / "eval" / "mlp" / "predictions" / "test.npz")["probs"]
    assert TTA["mlp"]
    np.testing.assert_allclose(saved, (plain + mirrored) / 2, atol=1e-5)
    assert not np.allclose(saved, plain, atol=1e-4)  # a dense net is not flip-invariant: TTA changes it


def test_empty_custom_sets_give_n_0_and_no_confusion_file(workspace: Path, tmp_path: Path) -> None:
    from cifar_dvc.evaluation.params import EvaluateParams
    from tests.evaluation_workspace import write_custom_sets

    custom = tmp_path / "custom_sets"
    write_custom_sets(custom, workspace / "data" / "prepared", n=0)
    scores = evaluate.run("cnn", workspace / "models" / "cnn.keras", workspace / "data" / "prepared", custom,
                          EvaluateParams(), False, tmp_path / "cnn.json", tmp_path / "eval")
    results = json.loads((tmp_path / "eval" / "results.json").read_text())["sets"]
    for set_name in evalsets.CUSTOM_SET_NAMES:
        assert scores[evalsets.metric_key(set_name)] is None and results[set_name]["n"] == 0
        assert results[set_name]["f1_macro"] is None
    assert results["test"]["n"] == 100 and not math.isnan(scores["test"])
    assert sorted(p.name for p in (tmp_path / "eval" / "confusion").iterdir()) == ["test.csv"]
    assert json.loads((tmp_path / "cnn.json").read_text())["custom"] is None


def test_stage_refuses_a_bad_params_value_in_one_line(workspace: Path, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  batch_size: many\nvariants:\n  cnn: {model: cnn}\n")
    cmd = [sys.executable, "-m", "stages.evaluate", "--variant", "cnn",
           "--model", str(workspace / "models/cnn.keras"),
           "--prepared", str(workspace / "data/prepared"), "--custom", str(workspace / "data/custom_sets"),
           "--metrics", str(tmp_path / "m.json"), "--out", str(tmp_path / "eval"), "--params", str(params)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "evaluate.batch_size" in result.stderr
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "eval").exists()
