"""Test helper: a tiny pipeline workspace for the evaluation tests (no dvc, no real training run).

``make_workspace`` lays out what ``evaluate`` and ``report`` read, in the pipeline's own formats:
``data/prepared`` (a copy of the ``prepared_dir`` fixture), ``data/custom_sets`` (photos taken from
the test split, possibly empty: every custom set of ``cifar_dvc.evalsets`` with a blur sweep in
both resizes), and for each variant ``models/<name>.keras`` +
sidecar and ``dvclive/<name>/`` written by a real ``DVCLiveCallback`` during a 2-epoch fit of a tiny
CNN (a few seconds).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from cifar_dvc import artifacts, evalsets, modelinfo
from cifar_dvc.normalization import STATS_FILE, load_stats, normalize

SWEEP = (50, 100)


def tiny_model(num_classes: int, shape: tuple[int, int, int], seed: int, conv: bool = True):
    """A small functional CNN (or MLP) with softmax output."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape)
    if conv:
        x = keras.layers.Conv2D(8, 3, activation="relu", name="conv_a")(inputs)
        x = keras.layers.MaxPooling2D(name="pool")(x)
        x = keras.layers.Conv2D(16, 3, activation="relu", name="conv_b")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
    else:
        x = keras.layers.Flatten()(inputs)
        x = keras.layers.Dense(16, activation="relu")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name=f"tiny_{'cnn' if conv else 'mlp'}")


def write_custom_sets(out: Path, prepared: Path, n: int, nearest: bool = True) -> None:
    """Every custom set of the table (``nearest``: also the NEAREST ones) and ``sweep_<d>`` of each
    resize, of ``n`` test images (n = 0: empty sets)."""
    test = artifacts.load_split(prepared / "test.npz")
    x, y = test.x[:n], test.y[:n]
    files = np.array([f"photo_{i:03d}.png" for i in range(n)])
    resizes = evalsets.RESIZES if nearest else (evalsets.MAIN,)
    stems = [s.stem for s in evalsets.SETS if s.folder == evalsets.CUSTOM and s.resize in resizes]
    stems += [evalsets.sweep_name(d, resize) for resize in resizes for d in SWEEP]
    for offset, name in enumerate(stems):
        # Every set different (a shifted copy), so the accuracies differ between sets.
        xs = np.roll(x, offset, axis=2) if n else x
        artifacts.save_split(out / f"{name}.npz", xs, y, files=files)
    # what the custom stage's report.json says of the resizes (the report names them from it)
    resamples = {evalsets.MAIN: "lanczos", evalsets.NEAREST: "nearest"}
    sets = {evalsets.custom_set(r, filtered=False).stem: {"resample": resamples[r]} for r in resizes}
    (out / "report.json").write_text(json.dumps({"n": n, "sets": sets}))


def train_variant(root: Path, prepared: Path, name: str, seed: int, conv: bool = True,
                  epochs: int = 2) -> None:
    """Fit a tiny model for ``epochs`` with DVCLiveCallback; save it and its sidecar under ``root``."""
    from dvclive.keras import DVCLiveCallback

    meta = artifacts.load_meta(prepared)
    stats = load_stats(prepared / STATS_FILE)
    train = artifacts.load_split(prepared / "train.npz")
    val = artifacts.load_split(prepared / "val.npz")
    model = tiny_model(meta.num_classes, meta.image_shape, seed, conv)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    live = DVCLiveCallback(dir=str(root / "dvclive" / name), dvcyaml=False, save_dvc_exp=False,
                           report=None)
    model.fit(normalize(train.x, stats), train.extra["y_onehot"], epochs=epochs, batch_size=32, verbose=0,
              validation_data=(normalize(val.x, stats), val.extra["y_onehot"]), callbacks=[live])
    path = root / "models" / f"{name}.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    modelinfo.save_info(path, modelinfo.ModelInfo(name, meta.dataset, meta.classes, meta.image_shape, stats))


def make_workspace(root: Path, prepared_dir: Path, variants: dict[str, bool], custom_n: int = 12) -> Path:
    """A workspace under ``root``; ``variants`` maps name -> conv (True) or MLP (False)."""
    prepared = root / "data" / "prepared"
    shutil.copytree(prepared_dir, prepared)
    write_custom_sets(root / "data" / "custom_sets", prepared, custom_n)
    for i, (name, conv) in enumerate(variants.items()):
        train_variant(root, prepared, name, seed=i, conv=conv)
    return root


VARIANTS = {"cnn": True, "mlp": False}  # real variant names (params.yaml declares them), tiny models
TTA = {"cnn": 0, "mlp": 1}
_CACHE: dict[str, Path] = {}


def evaluated_workspace(tmp_path_factory, prepared_dir: Path) -> Path:
    """A workspace with both variants evaluated (``metrics/``, ``eval/``), built once per session.

    ``cnn`` is evaluated without and ``mlp`` with flip TTA. Treat it as read-only.
    """
    if "root" not in _CACHE:
        from cifar_dvc.evaluation import evaluate
        from cifar_dvc.evaluation.params import EvaluateParams

        root = make_workspace(tmp_path_factory.mktemp("evaluation"), prepared_dir, VARIANTS)
        for name in VARIANTS:
            evaluate.run(name, root / "models" / f"{name}.keras", root / "data" / "prepared",
                         root / "data" / "custom_sets", EvaluateParams(), TTA[name],
                         root / "metrics" / f"{name}.json", root / "eval" / name)
        _CACHE["root"] = root
    return _CACHE["root"]


FIGURES = {"curves.png", "examples.png", "incorrect_share.png", "confusion_cnn.png", "confusion_mlp.png",
           "misclassified_custom.png", "filters.png", "class_ideal.png", "activations.png", "weights.png",
           "occlusion.png", "blur_sweep.png", "reliability.png", "corruptions.png"}


def report_paths(root: Path, out: Path | None = None, custom: Path | None = None):
    """``report.Paths`` of a workspace (``out``: another output folder for the summary, table and plots)."""
    from cifar_dvc.evaluation import report

    out = out or root / "plots" / "report"
    return report.Paths(eval_dir=root / "eval", dvclive_dir=root / "dvclive", models_dir=root / "models",
                        prepared=root / "data" / "prepared", custom=custom or root / "data" / "custom_sets",
                        out=out)


def reported_workspace(tmp_path_factory, prepared_dir: Path) -> Path:
    """``evaluated_workspace`` plus the report (default params) in ``plots/report``, once per session."""
    root = evaluated_workspace(tmp_path_factory, prepared_dir)
    if "reported" not in _CACHE:
        from cifar_dvc.evaluation import report
        from cifar_dvc.evaluation.params import ReportParams

        report.build(report_paths(root), ReportParams())
        _CACHE["reported"] = root
    return root
