"""The evaluation sets in one table: name, metric key, file, title, Table 2 and confusion roles, sweep names.

Every module that knows a set by name takes it from here: ``cifar_dvc.custom_set`` writes the
custom sets under these files, ``cifar_dvc.evaluation.evaluate`` reads and scores them under these
names, ``cifar_dvc.evaluation.report`` and ``figures`` title them, ``params.yaml`` names them in
``report.confusion_sets`` and ``report.misclassified.set`` (checked against ``SET_NAMES``).

A set's ``name`` is its key in ``eval/<variant>/results.json``, ``eval/<variant>/predictions/``,
the report and ``params.yaml``; its ``file`` lives in ``data/prepared`` (``PREPARED``) or
``data/custom_sets`` (``CUSTOM``). The custom photos come in two resizes: ``MAIN``
(``custom.resample``, Lanczos by default) and ``NEAREST`` (``custom.compare_resample``: seed 004's
aliasing nearest-neighbour resize, as Keras' ``load_img``; absent when that key is null).
The blur-sweep sets are not listed: one per divisor d and resize, named by ``sweep_name`` (the
name is also the file's stem) and read back by ``parse_sweep``, the only two places that know
the pattern. A set evaluated again with BatchNorm adaptation gets ``adapted_name``.

``metrics/<variant>.json`` is flat, one short key per number, so that ``dvc metrics show`` of every
variant fits a 200-column terminal (DVC makes one column per key, as wide as its name): a set's
``metric`` is its accuracy (``val``, ``custom_blur``), its other scalars add a suffix
(``test_loss``: ``METRIC_SUFFIXES``), its adapted copy ``_bn`` (``custom_bn``), and the corruption
suite's mean is ``corrupt`` (``corrupt_bn``). ``metric_key`` and ``accuracy_keys`` spell them; no
other module does.

Reads and writes nothing; imports nothing of the project (custom_set, evaluation and serve may
all import it). No command runs it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

import numpy as np

PREPARED = "prepared"  # the set's file is in data/prepared (written by prepare)
CUSTOM = "custom"  # the set's file is in data/custom_sets (written by custom)
MAIN = "main"  # custom sets resized with custom.resample
NEAREST = "nearest"  # custom sets resized with custom.compare_resample (seed 004's setup)
RESIZES = (MAIN, NEAREST)
ADAPTED_SUFFIX = "_adapted"
SWEEP_PREFIX = "sweep_"
# The metric scalars metrics/<variant>.json keeps of a set (the rest is in eval/<variant>/results.json).
ACCURACY_ONLY = ("accuracy",)
FULL = ("accuracy", "loss", "f1_macro", "ece")
# metrics/<variant>.json's key of a scalar is the set's ``metric`` + this suffix: the bare key is the
# accuracy, what a reader compares first (``test``, ``test_loss``).
METRIC_SUFFIXES = {"accuracy": "", "loss": "_loss", "f1_macro": "_f1", "ece": "_ece"}
ADAPTED_METRIC_SUFFIX = "_bn"  # key of a set's accuracy with BatchNorm adaptation (custom_bn)
CORRUPTION_METRIC = "corrupt"  # key of the corruption suite's mean accuracy
CORRUPTION_ADAPTED_METRIC = CORRUPTION_METRIC + ADAPTED_METRIC_SUFFIX  # the same with adaptation


@dataclasses.dataclass(frozen=True)
class SetSpec:
    """One evaluation set: where it is, what it is called, where it is shown."""

    name: str  # key in results.json, predictions/ and the report
    file: str  # file name in its folder
    folder: Literal["prepared", "custom"]  # PREPARED or CUSTOM
    title: str  # Table 2 column title
    table: bool  # Table 2 shows it
    confusion: bool  # evaluate writes its DVC confusion CSV; report.confusion_sets' default
    metric: str  # its accuracy's key in metrics/<variant>.json (short: see the module docstring)
    resize: str | None = None  # custom sets: MAIN or NEAREST
    filtered: bool = False  # blurred with custom.blur_divisor before resizing (seed 004's filter)
    required: bool = True  # evaluation fails without it (NEAREST sets exist only when turned on)
    adapt: bool = False  # evaluated again with BatchNorm adaptation (evaluate.adapt_bn)
    metrics: tuple[str, ...] = ACCURACY_ONLY  # scalars kept in metrics/<variant>.json (METRIC_SUFFIXES)

    @property
    def stem(self) -> str:
        return self.file.removesuffix(".npz")


SETS: tuple[SetSpec, ...] = (
    SetSpec("validation", "val.npz", PREPARED, "Validation", table=True, confusion=False, metric="val"),
    SetSpec("test", "test.npz", PREPARED, "Test", table=True, confusion=True, metric="test", metrics=FULL),
    # Seed 004's setup first, then ours: Table 2 reads left to right as the seed's gain, then ours.
    # Metric keys: "nn" = the nearest-neighbour resize, "blur" = seed 004's filter ("filtered").
    SetSpec("custom_nearest", "nearest_unfiltered.npz", CUSTOM, "Custom, nearest", table=True,
            confusion=False, metric="custom_nn", resize=NEAREST, required=False),
    SetSpec("custom_nearest_filtered", "nearest_filtered.npz", CUSTOM, "Custom (filtered), nearest",
            table=True, confusion=False, metric="custom_nn_blur", resize=NEAREST, filtered=True,
            required=False),
    SetSpec("custom", "unfiltered.npz", CUSTOM, "Custom", table=True, confusion=True, metric="custom",
            resize=MAIN, adapt=True),
    SetSpec("custom_filtered", "filtered.npz", CUSTOM, "Custom (filtered)", table=True, confusion=True,
            metric="custom_blur", resize=MAIN, filtered=True, adapt=True),
)
BY_NAME: dict[str, SetSpec] = {spec.name: spec for spec in SETS}
VALIDATION = "validation"  # the set that picks the report's focus variant
TEST = "test"  # the set of the corruption suite, the reliability diagram and the example predictions
SET_NAMES: tuple[str, ...] = tuple(BY_NAME)
CUSTOM_SET_NAMES: tuple[str, ...] = tuple(spec.name for spec in SETS if spec.folder == CUSTOM)
CONFUSION_SETS: tuple[str, ...] = tuple(spec.name for spec in SETS if spec.confusion)
# What the report's misclassified-photo figure shows by default: the unfiltered photos, as the seed did.
MISCLASSIFIED_DEFAULT = "custom"
SWEEP_NAME = re.compile(rf"^{SWEEP_PREFIX}(?:(?P<resize>{NEAREST})_)?(?P<divisor>[0-9]+(?:\.[0-9]+)?)$")


def spec(name: str) -> SetSpec:
    """The table entry of set ``name`` (``KeyError`` naming the known sets otherwise)."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name!r} is not an evaluation set ({', '.join(SET_NAMES)})") from None


def custom_set(resize: str, filtered: bool) -> SetSpec:
    """The custom set of ``resize`` (MAIN or NEAREST), filtered or not."""
    return next(s for s in SETS if s.folder == CUSTOM and s.resize == resize and s.filtered == filtered)


def adapted_name(name: str) -> str:
    """``custom_adapted`` for ``custom``: the set evaluated with BatchNorm adaptation."""
    return name + ADAPTED_SUFFIX


def adapted_of(name: str) -> str | None:
    """The set an adapted name was made from (``custom`` for ``custom_adapted``), else None."""
    base = name.removesuffix(ADAPTED_SUFFIX)
    return base if base != name and base in BY_NAME else None


def adapted_sets() -> tuple[str, ...]:
    """Names of the sets evaluated again with BatchNorm adaptation (``custom_adapted``, ...)."""
    return tuple(adapted_name(s.name) for s in SETS if s.adapt)


def metric_key(name: str, scalar: str = "accuracy") -> str:
    """Key in ``metrics/<variant>.json`` of ``scalar`` (one of ``METRIC_SUFFIXES``) of set ``name`` or
    of its adapted copy: ``val`` for validation, ``test_loss``, ``custom_bn`` for ``custom_adapted``."""
    base = adapted_of(name)
    if base is not None:
        return spec(base).metric + ADAPTED_METRIC_SUFFIX + METRIC_SUFFIXES[scalar]
    return spec(name).metric + METRIC_SUFFIXES[scalar]


def accuracy_keys() -> tuple[str, ...]:
    """Every accuracy key ``metrics/<variant>.json`` can hold, in the table's order: the sets', the
    adapted sets', the corruption mean and its adapted copy (a file holds those its run made)."""
    return (*(metric_key(s.name) for s in SETS), *(metric_key(name) for name in adapted_sets()),
            CORRUPTION_METRIC, CORRUPTION_ADAPTED_METRIC)


def title(name: str) -> str:
    """Table 2 column title of a set or of its adapted copy."""
    base = adapted_of(name)
    return f"{BY_NAME[base].title}, BN adapted" if base else spec(name).title


def sweep_name(divisor: float, resize: str = MAIN) -> str:
    """Name (and file stem) of a blur-sweep set: ``sweep_75``, ``sweep_37.5``, ``sweep_nearest_75``.

    The divisor is written positionally (never an exponent), trailing zeros dropped (75.0 -> 75).
    """
    if resize not in RESIZES:
        raise ValueError(f"resize: expected one of {', '.join(RESIZES)}, got {resize!r}")
    number = np.format_float_positional(float(divisor), trim="-")
    return f"{SWEEP_PREFIX}{number}" if resize == MAIN else f"{SWEEP_PREFIX}{resize}_{number}"


def parse_sweep(name: str) -> tuple[str, float] | None:
    """``(resize, divisor)`` of a sweep set name or file stem (``sweep_nearest_75`` -> nearest, 75.0);
    None for any other name. The inverse of ``sweep_name``."""
    match = SWEEP_NAME.match(name)
    if match is None:
        return None
    return match["resize"] or MAIN, float(match["divisor"])
