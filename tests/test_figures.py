"""Every figure of the report is written and is a real PNG; edge cases draw an explanation instead."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar_dvc import evalsets
from cifar_dvc.evaluation import evaluate, figures, report
from cifar_dvc.evaluation.params import EvaluateParams, ReportParams
from tests.evaluation_workspace import (
    FIGURES,
    TTA,
    VARIANTS,
    report_paths,
    reported_workspace,
    tiny_model,
    write_custom_sets,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, prepared_dir: Path) -> Path:
    return reported_workspace(tmp_path_factory, prepared_dir)


def _check_pngs(folder: Path, expected: set[str]) -> dict[str, tuple[int, int]]:
    written = {p.name for p in folder.iterdir()}
    assert written == expected
    sizes = {}
    for name in expected:
        data = (folder / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        with Image.open(folder / name) as image:
            image.load()  # decodes the whole file: a truncated PNG fails here
            assert image.width >= 200 and image.height >= 80, name
            sizes[name] = image.size
    return sizes


def test_every_figure_is_written_and_non_empty(workspace: Path) -> None:
    _check_pngs(workspace / "plots" / "report" / "figures", FIGURES)


def test_report_works_with_empty_custom_sets(workspace: Path, tmp_path: Path) -> None:
    """n = 0 photos: evaluate writes nulls; the report still writes every figure (some say why empty)."""
    custom = tmp_path / "custom_sets"
    write_custom_sets(custom, workspace / "data" / "prepared", n=0)
    root = tmp_path / "ws"
    for name in ("data/prepared", "models", "dvclive"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(workspace / name)
    for name in VARIANTS:
        evaluate.run(name, root / "models" / f"{name}.keras", root / "data/prepared", custom,
                     EvaluateParams(), TTA[name], root / "metrics" / f"{name}.json", root / "eval" / name)
    params = ReportParams(filters=dataclasses.replace(ReportParams().filters, steps=2),
                          class_ideal=dataclasses.replace(ReportParams().class_ideal, steps=2))
    paths = report_paths(root, custom=custom)
    report.build(paths, params)
    _check_pngs(paths.out / "figures", FIGURES)
    summary = json.loads((paths.out / report.SUMMARY).read_text())
    assert summary["cnn"]["custom"] is None and summary["cnn"]["custom_filtered"] is None
    assert summary["cnn"]["test"] is not None
    assert "n/a" in (paths.out / "table.md").read_text()
    assert (paths.out / "blur.csv").read_text().strip() == "variant,resize,divisor,accuracy,n"


def test_a_model_without_convolutions_gets_an_explanation(tmp_path: Path) -> None:
    mlp = tiny_model(10, (32, 32, 3), seed=0, conv=False)
    assert figures.conv_layers(mlp) == []
    path = figures.filter_visualization(mlp, tmp_path / "filters.png", steps=1)
    assert path.stat().st_size > 0
    assert figures.blur_sweep({"mlp": {}}, {"mlp": {}}, tmp_path / "blur.png").stat().st_size > 0


def test_the_blur_sweep_draws_both_resizes_as_two_lines(workspace: Path, tmp_path: Path) -> None:
    results = {name: report.load_results(workspace / "eval", name) for name in VARIANTS}
    unfiltered = {name: {evalsets.MAIN: res["sets"]["custom"]["accuracy"],
                         evalsets.NEAREST: res["sets"]["custom_nearest"]["accuracy"]}
                  for name, res in results.items()}
    labels = {evalsets.MAIN: "lanczos", evalsets.NEAREST: "nearest"}
    lines = figures.blur_sweep_lines(report.sweep_points(results), unfiltered, labels)
    assert [(line["variant"], line["label"]) for line in lines] == [
        ("cnn", "cnn, lanczos"), ("cnn", "cnn, nearest"), ("mlp", "mlp, lanczos"), ("mlp", "mlp, nearest")]
    for line in lines:
        sets = results[line["variant"]]["sets"]
        assert line["divisors"] == [50.0, 100.0]
        names = [evalsets.sweep_name(d, line["resize"]) for d in (50, 100)]
        assert line["accuracy"] == [sets[name]["accuracy"] for name in names]
        assert line["unfiltered"] == unfiltered[line["variant"]][line["resize"]]  # the "none" end point
    # the main resize alone (compare_resample: null): one line a variant, still drawn
    main_only = {v: {evalsets.MAIN: by_resize[evalsets.MAIN]}
                 for v, by_resize in report.sweep_points(results).items()}
    assert len(figures.blur_sweep_lines(main_only, unfiltered, labels)) == 2
    assert figures.blur_sweep(main_only, unfiltered, tmp_path / "b.png", resize_labels=labels).stat().st_size


def test_gradient_ascent_increases_the_filter_activation() -> None:
    import keras
    import tensorflow as tf

    model = tiny_model(10, (32, 32, 3), seed=3)
    host, layer = figures.conv_layers(model)[-1]
    extractor = keras.Model(host.inputs[0], layer.output)
    mask = tf.one_hot(tf.range(4), int(layer.output.shape[-1]))

    def objective(act):
        return tf.einsum("nhwc,nc->n", act, mask)

    start = figures.gradient_ascent(extractor, objective, 4, steps=0, step_size=1.0)
    end = figures.gradient_ascent(extractor, objective, 4, steps=10, step_size=0.5)
    before, after = objective(extractor(start)).numpy(), objective(extractor(end)).numpy()
    assert np.all(after > before)


def test_convolutions_inside_a_nested_model_are_found() -> None:
    import keras

    inner = tiny_model(10, (32, 32, 3), seed=0)
    inputs = keras.Input((32, 32, 3))
    outer = keras.Model(inputs, inner(inputs))
    found = figures.conv_layers(outer)
    assert [layer.name for _, layer in found] == ["conv_a", "conv_b"]
    assert all(host is inner for host, _ in found)


def test_only_the_requested_variants_are_reported(workspace: Path, tmp_path: Path) -> None:
    shutil.copytree(workspace / "eval", tmp_path / "eval")
    shutil.rmtree(tmp_path / "eval" / "cnn")  # only mlp was evaluated here
    paths = report_paths(workspace, out=tmp_path / "plots" / "report")
    paths.eval_dir = tmp_path / "eval"
    params = ReportParams(filters=dataclasses.replace(ReportParams().filters, steps=1),
                          class_ideal=dataclasses.replace(ReportParams().class_ideal, steps=1))
    done = report.build(paths, params)
    assert done["variants"] == ["mlp"] and done["focus"] == "mlp"
    _check_pngs(paths.out / "figures", FIGURES - {"confusion_cnn.png"})
    assert set(json.loads((paths.out / report.SUMMARY).read_text())) == {"mlp"}


def test_figures_stay_bounded_with_100_classes(tmp_path: Path) -> None:
    """CIFAR-100: the confusion and per-class figures must not grow to thousands of inches."""
    rng = np.random.default_rng(0)
    classes = [f"class_{i}" for i in range(100)]
    cm = rng.integers(0, 5, (100, 100))
    sizes = []
    for path in (figures.confusion_matrices({"test": cm, "custom": cm}, classes, tmp_path / "cm.png"),
                 figures.incorrect_share({f"v{i}": cm for i in range(6)}, classes, tmp_path / "share.png")):
        with Image.open(path) as image:
            sizes.append(image.size)
    assert all(w <= 2600 and h <= 1200 for w, h in sizes), sizes
