"""train.precision: what ``auto`` picks on which hardware, training under every policy, float32 outputs."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

import cifar_dvc.models  # noqa: F401  (registers custom layers for load_model)
from cifar_dvc import artifacts, config, cpuinfo, models, tfenv
from cifar_dvc.errors import ParamsError
from cifar_dvc.modelinfo import load_info
from cifar_dvc.normalization import STATS_FILE, load_stats
from cifar_dvc.training import precision
from cifar_dvc.training.data import make_dataset
from cifar_dvc.training.loop import build_compiled_model, start_run, train_variant
from cifar_dvc.training.variant import TrainParams, VariantParams

AMX_XEON = {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}
ZEN4 = {"avx512f", "avx512_bf16"}
OLD_XEON = {"avx512f", "avx512bw"}


@pytest.mark.parametrize(("flags", "gpus", "expected"), [
    (AMX_XEON, [], "mixed_bfloat16"),  # measured 2.0-2.25x faster than float32
    (ZEN4, [], "mixed_bfloat16"),  # AVX-512 bfloat16 dot products, no AMX: measured 1.27-1.52x
    (OLD_XEON, [], "float32"),  # emulated bfloat16: measured ~4x slower
    (set(), [], "float32"),  # no /proc/cpuinfo (macOS, Windows)
    (OLD_XEON, [(8, 0)], "mixed_bfloat16"),  # A100: the GPUs train, not the CPU
    (AMX_XEON, [(7, 0)], "float32"),  # V100: no bfloat16 units
    (OLD_XEON, [(9, 0), (7, 5)], "float32"),  # all GPUs must have them
])
def test_auto_picks_by_the_detected_hardware(flags: set[str], gpus: list, expected: str) -> None:
    assert precision.resolve("auto", flags=flags, gpus=gpus) == expected


def test_explicit_precision_is_used_as_is_and_unknown_is_refused() -> None:
    for name in ("float32", "mixed_bfloat16", "mixed_float16"):
        assert precision.resolve(name, flags=set(), gpus=[]) == name
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.resolve("bfloat16", flags=set(), gpus=[])


def test_auto_reads_the_cpu_flags_from_cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    monkeypatch.setattr(cpuinfo, "CPUINFO", fake)
    monkeypatch.setattr(precision, "gpu_compute_capabilities", lambda: [])
    assert precision.resolve("auto") == "mixed_bfloat16"
    fake.write_text("processor\t: 0\nflags\t\t: fpu avx2\n")
    assert precision.resolve("auto") == "float32"


def test_the_params_key_refuses_unknown_precisions() -> None:
    with pytest.raises(Exception, match="precision"):
        config.from_dict(TrainParams, {"precision": "half"}, where="train")


def _tiny(**overrides) -> VariantParams:
    entry = {"model": "cnn", "model_args": {"filters": 8}, "epochs": 1, "batch_size": 16, **overrides}
    return config.from_dict(VariantParams, entry, where="variants.tiny")


def test_a_variants_own_precision_wins_over_train_precision() -> None:
    """``variants.<name>.precision`` (MobileNet's float32 on AMX) overrides ``train.precision``;
    null leaves it to ``train.precision``."""
    bf16, f32 = TrainParams(precision="mixed_bfloat16"), TrainParams(precision="float32")
    assert start_run("tiny", _tiny(), bf16, seed=0, train_images=16).precision == "mixed_bfloat16"
    assert start_run("tiny", _tiny(precision="float32"), bf16, seed=0, train_images=16).precision == "float32"
    assert start_run("tiny", _tiny(precision="mixed_float16"), f32, 0, 16).precision == "mixed_float16"
    assert start_run("tiny", _tiny(precision="auto"), f32, 0, 16).precision == precision.resolve("auto")
    with pytest.raises(ParamsError, match=r"variants\.tiny\.precision: expected auto \| float32"):
        _tiny(precision="bfloat16")


@pytest.mark.parametrize("name", precision.PRECISIONS)
def test_every_precision_builds_and_trains_a_step(name: str, prepared_dir: Path) -> None:
    meta = artifacts.load_meta(prepared_dir)
    stats = load_stats(prepared_dir / STATS_FILE)
    split = artifacts.load_split(prepared_dir / "train.npz")
    policy = precision.resolve(name)
    keras.utils.set_random_seed(0)
    with precision.policy(policy):
        model = build_compiled_model(_tiny(), TrainParams(jit_compile=False), meta.image_shape,
                                     meta.num_classes, stats, steps_per_epoch=1, epochs=1)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    assert model.layers[1].compute_dtype == {"float32": "float32", "mixed_bfloat16": "bfloat16",
                                             "mixed_float16": "float16"}[policy]
    assert model.output.dtype == "float32"  # the softmax stays float32
    if policy == "mixed_float16":  # float16 gradients underflow without loss scaling
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    before = [w.numpy().copy() for w in model.trainable_weights]
    ds = make_dataset(split.x[:16], split.extra["y_onehot"][:16], stats, batch_size=16, shuffle=False,
                      seed=0)
    history = model.fit(ds, epochs=1, verbose=0)
    assert math.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights, strict=True))


def test_float32_copy_keeps_weights_and_drops_every_mixed_policy() -> None:
    with precision.policy("mixed_bfloat16"):
        model = models.build("fast", (32, 32, 3), 10, width=8)
    copy = precision.float32_copy(model)
    assert not precision.is_float32(model) and precision.is_float32(copy)
    assert "mixed" not in json.dumps(keras.saving.serialize_keras_object(copy))
    for a, b in zip(model.get_weights(), copy.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(model(x).numpy(), copy(x).numpy(), atol=0.02)  # bfloat16 vs float32 compute
    float_model = models.build("cnn", (32, 32, 3), 10)
    assert precision.float32_copy(float_model) is float_model  # nothing to convert


def test_a_model_trained_in_bfloat16_is_saved_and_predicts_in_float32(tmp_path: Path,
                                                                      prepared_dir: Path) -> None:
    model_path = tmp_path / "models" / "tiny.keras"
    # bfloat16 from the variant's own key, over train.precision: the precision used is recorded
    train_variant("tiny", _tiny(model="fast", batch_size=32,
                                model_args={"width": 8, "fused_batchnorm": True, "gelu_fused": True},
                                precision="mixed_bfloat16"),
                  TrainParams(precision="float32", verbose="silent"), 7, prepared_dir, model_path,
                  tmp_path / "dvclive")
    info = load_info(model_path)
    assert info.training["precision"] == "mixed_bfloat16" and info.training["cpu_seconds"] > 0
    params = (tmp_path / "dvclive" / "params.yaml").read_text()
    assert "precision: mixed_bfloat16" in params
    # which CPU kernels trained it, beside the precision (the tests run the stages' oneDNN setting)
    onednn = tfenv.onednn_enabled()
    assert info.training["onednn"] is onednn and f"onednn: {str(onednn).lower()}" in params
    with zipfile.ZipFile(model_path) as archive:
        assert "bfloat16" not in archive.read("config.json").decode()
    loaded = keras.models.load_model(model_path)
    assert precision.is_float32(loaded)
    assert {type(layer).__name__ for layer in loaded.layers} >= {"FusedBatchNormalization", "FusedGELU"}
    test = artifacts.load_split(prepared_dir / "test.npz")
    from cifar_dvc.normalization import normalize

    probs = loaded.predict(normalize(test.x[:20], info.normalization), verbose=0)
    assert probs.dtype == np.float32 and probs.shape == (20, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
