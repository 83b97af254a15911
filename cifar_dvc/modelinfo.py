"""The sidecar ``models/<name>.json`` that makes a trained ``.keras`` file self-describing.

``train`` writes it beside the model; ``cifar_dvc.inference.load`` reads it with the model (for
``evaluate``, ``report`` and the web demo), so they need nothing else to turn a photo into class
probabilities: the class names, the input image shape, the normalization statistics the model
was trained with, and the test-time augmentation level the variant is evaluated with.

Reads and writes only the paths it is given, writes atomically (``dvc repro train@<name>``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from cifar_dvc import atomic
from cifar_dvc.errors import DataError
from cifar_dvc.normalization import NormStats


@dataclasses.dataclass
class ModelInfo:
    """Everything a consumer of a trained model needs besides its weights."""

    name: str  # the variant name, e.g. "cnn"
    dataset: str  # the data set it was trained on
    classes: list[str]  # class names, in output order
    image_shape: tuple[int, int, int]  # H, W, C of the (normalized) model input
    normalization: NormStats  # how 0..255 pixels become model input
    training: dict[str, Any] = dataclasses.field(default_factory=dict)  # epochs, seconds, images/s...
    # variants.<name>.tta at training time (cifar_dvc.inference.TTA_LEVELS, which checks it); None
    # in sidecars written before it was recorded
    tta: int | None = None


def info_path(model_path: Path | str) -> Path:
    """``models/cnn.keras`` -> ``models/cnn.json``."""
    return Path(model_path).with_suffix(".json")


def save_info(model_path: Path | str, info: ModelInfo) -> None:
    """Write the sidecar of ``model_path`` atomically."""
    atomic.write_json(info_path(model_path), dataclasses.asdict(info))


def load_info(model_path: Path | str) -> ModelInfo:
    """Read the sidecar of ``model_path``; a missing or malformed file is a DataError."""
    path = info_path(model_path)
    try:
        raw = json.loads(path.read_text())
        norm = raw["normalization"]
        tta = raw.get("tta")
        if tta is not None and (isinstance(tta, bool) or not isinstance(tta, int)):
            raise ValueError("tta is not an integer")
        info = ModelInfo(
            name=str(raw["name"]),
            dataset=str(raw["dataset"]),
            classes=[str(c) for c in raw["classes"]],
            image_shape=tuple(int(v) for v in raw["image_shape"]),  # type: ignore[arg-type]
            normalization=NormStats(str(norm["method"]), tuple(norm["mean"]), tuple(norm["std"])),
            training=dict(raw.get("training", {})),
            tta=tta,
        )
    except FileNotFoundError:
        raise DataError(f"{path}: model description not found; `dvc repro train@<name>` writes it") from None
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{path}: expected JSON with name, dataset, classes, image_shape, normalization "
                        "(and an integer tta)") from None
    channels = info.image_shape[-1] if len(info.image_shape) == 3 else None
    if channels is None or not len(info.normalization.mean) == len(info.normalization.std) == channels:
        raise DataError(f"{path}: expected image_shape [height, width, channels] and one normalization "
                        f"mean and std per channel, got {list(info.image_shape)} and "
                        f"{len(info.normalization.mean)} means, {len(info.normalization.std)} stds")
    return info
