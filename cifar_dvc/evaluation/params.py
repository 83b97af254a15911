"""The ``evaluate:`` and ``report:`` sections of ``params.yaml`` as dataclasses.

Each field has its default and a one-line comment; ``cifar_dvc.config.load_section`` fills them
from ``params.yaml`` and refuses unknown keys and wrong types. Flip test-time augmentation is a
per-variant key (``variants.<name>.tta``) declared by ``cifar_dvc.training.variant``.

Reads and writes nothing. Used by ``stages/evaluate.py`` and ``stages/report.py``.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

from cifar_dvc import evalsets

# Literals built from the one table of sets (cifar_dvc.evalsets), so a typo fails with the key's name.
SetName = Literal[evalsets.SET_NAMES]
CustomSetName = Literal[evalsets.CUSTOM_SET_NAMES]
# The corruptions of cifar_dvc.evaluation.corruptions (a Literal, so a typo fails with the key's name).
Corruption = Literal["gaussian_noise", "defocus_blur", "jpeg_compression", "contrast", "brightness"]
CORRUPTIONS: tuple[Corruption, ...] = typing.get_args(Corruption)


@dataclasses.dataclass
class EvaluateParams:
    """``evaluate:``: shared by every ``evaluate@<variant>`` stage."""

    batch_size: int = 256  # images per compiled predict call (and per chunk of the BatchNorm adaptation pass)
    top_k: int = 5  # top-k accuracy is reported when the data set has more than k classes
    ece_bins: int = 15  # equal-width confidence bins of the expected calibration error
    adapt_bn: bool = True  # evaluate each custom set again, BatchNorm statistics re-estimated on its images
    adapt_prior: float = 0.0  # images' worth of training statistics mixed in (Schneider et al.'s N); 0 = none
    corruptions: list[Corruption] = dataclasses.field(default_factory=lambda: list(CORRUPTIONS))  # [] = off
    corruption_images: int = 500  # test images per corruption and severity: one seeded subset (`seed`)

    def validate(self) -> None:
        if self.batch_size < 1 or self.top_k < 1 or self.ece_bins < 1:
            raise ValueError("batch_size, top_k and ece_bins must be >= 1")
        if self.adapt_prior < 0:
            raise ValueError("adapt_prior must be >= 0 (images' worth of training statistics)")
        if len(set(self.corruptions)) != len(self.corruptions):
            raise ValueError("corruptions: each corruption at most once")
        if self.corruption_images < 1:
            raise ValueError("corruption_images must be >= 1 (an empty corruptions list turns the suite off)")


@dataclasses.dataclass
class ExamplesParams:
    """``report.examples``: test images with true and predicted labels (seed 000 fig. 2)."""

    count: int = 20  # images shown, drawn at random from the test set with `report.seed`
    columns: int = 5  # images a row


@dataclasses.dataclass
class MisclassifiedParams:
    """``report.misclassified``: misclassified custom photos (seed 004 appendix C)."""

    set: CustomSetName = evalsets.MISCLASSIFIED_DEFAULT  # a custom set; seed 004 showed the unfiltered one
    max_images: int = 40  # at most this many, in file order
    columns: int = 8  # images a row


@dataclasses.dataclass
class FiltersParams:
    """``report.filters``: inputs maximizing conv filters by gradient ascent (000 fig. 4, 004 appendix B)."""

    steps: int = 30  # gradient-ascent steps (kept small: the figure must stay cheap)
    step_size: float = 1.0  # step along the RMS-normalized gradient, in normalized-input units
    layers: int = 2  # convolutional layers, evenly spaced from first to last
    filters: int = 16  # first filters of each layer


@dataclasses.dataclass
class ClassIdealParams:
    """``report.class_ideal``: inputs maximizing each class probability (seed 000 fig. 5)."""

    steps: int = 60  # gradient-ascent steps
    step_size: float = 1.0  # step along the RMS-normalized gradient, in normalized-input units
    classes: int = 10  # at most this many classes, the first ones


@dataclasses.dataclass
class ActivationsParams:
    """``report.activations``: 16 feature maps a layer tiled 2x8 for a few layers (seed 004 appendix A)."""

    images: list[int] = dataclasses.field(default_factory=lambda: [0, 1])  # test-set indices of the inputs
    layers: int = 4  # layers with 4-D output, evenly spaced from input to output
    filters: int = 16  # feature maps a layer (tiled 2 rows x filters/2 columns)


@dataclasses.dataclass
class OcclusionParams:
    """``report.occlusion``: drop of the true-class probability under a sliding grey patch."""

    max_images: int = 6  # misclassified photos shown (custom set; the test set when it is empty)
    patch: int = 8  # side of the square patch, in pixels
    stride: int = 4  # pixels between patch positions


@dataclasses.dataclass
class ReportParams:
    """``report:``: the Table 2 summary and the figures of the seeds."""

    variants: list[str] | None = None  # variants of the table and comparisons; null = all under eval/
    focus: str | None = None  # variant of the single-model figures; null = best validation accuracy
    seed: int = 0  # seed of the random example images
    confusion_sets: list[SetName] = dataclasses.field(  # sets drawn as confusion-matrix PNGs
        default_factory=lambda: list(evalsets.CONFUSION_SETS))
    examples: ExamplesParams = dataclasses.field(default_factory=ExamplesParams)  # see ExamplesParams
    misclassified: MisclassifiedParams = dataclasses.field(default_factory=MisclassifiedParams)  # see class
    filters: FiltersParams = dataclasses.field(default_factory=FiltersParams)  # see FiltersParams
    class_ideal: ClassIdealParams = dataclasses.field(default_factory=ClassIdealParams)  # see class
    activations: ActivationsParams = dataclasses.field(default_factory=ActivationsParams)  # see class
    occlusion: OcclusionParams = dataclasses.field(default_factory=OcclusionParams)  # see OcclusionParams
    reliability_bins: int = 15  # confidence bins of the reliability diagram (test set)

    def validate(self) -> None:
        if self.variants is not None and not self.variants:
            raise ValueError("variants: give at least one variant, or null for all")
        if self.examples.count < 1 or self.examples.columns < 1:
            raise ValueError("examples.count and examples.columns must be >= 1")
        if self.activations.filters < 2 or self.activations.filters % 2:
            raise ValueError("activations.filters must be an even number >= 2 (tiled in 2 rows)")
        if self.misclassified.max_images < 1 or self.misclassified.columns < 1:
            raise ValueError("misclassified.max_images and misclassified.columns must be >= 1")
        if self.occlusion.patch < 1 or self.occlusion.stride < 1 or self.occlusion.max_images < 1:
            raise ValueError("occlusion.patch, occlusion.stride and occlusion.max_images must be >= 1")
        if self.activations.layers < 1:
            raise ValueError("activations.layers must be >= 1")
        if self.filters.layers < 1 or self.filters.filters < 1 or self.class_ideal.classes < 1:
            raise ValueError("filters.layers, filters.filters and class_ideal.classes must be >= 1")
        for name in ("filters", "class_ideal"):
            ascent = getattr(self, name)
            if ascent.steps < 0 or ascent.step_size <= 0:
                raise ValueError(f"{name}: steps >= 0 and step_size > 0 expected")
        if self.reliability_bins < 1:
            raise ValueError("reliability_bins must be >= 1")
