"""Every trained variant of a ``models/`` folder, loaded lazily and cached within a memory budget.

``Variants.from_folder(models/)`` lists each ``<name>.keras`` of the folder (hidden files, such as
a training's temporary ``.cnn.keras.xyz``, are skipped) with its sidecar ``<name>.json``. Cheap
checks run at once: the sidecar must load (``cifar_dvc.modelinfo``) and the ``.keras`` zip must
be plausible (``cifar_dvc.inference.check_keras_archive``); a variant that fails them, or fails to
load later, is listed as unavailable with its one-line reason instead of stopping the server.

``get(name)`` builds the variant's ``Predictor`` on first use (a per-variant lock: two requests
for the same cold variant load it once) and keeps it in an LRU cache. The cache is bounded by an
estimate of the memory the loaded models hold: ``MEMORY_FACTOR`` x the model archive's inflated
size plus ``MEMORY_OVERHEAD`` per model (measured: a seed-000 ``cnn``, 0.3 MB inflated, added
0.5-2 MB of RSS when loaded and run on a batch of 50; a MobileNet at 128x128, 12.7 MB inflated,
added 16-55 MB). Over the budget, the least recently used variants other than the default are
dropped; the default stays loaded, so ``/api/health`` keeps meaning "ready".

Reads the folder's model files and sidecars. Writes nothing. Used by ``cifar_dvc.serve.app``
(``cifar-dvc-serve --models models/``).
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import logging
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cifar_dvc.errors import DataError, UserError
from cifar_dvc.inference import check_keras_archive
from cifar_dvc.modelinfo import ModelInfo, info_path, load_info

log = logging.getLogger("cifar_dvc.serve")

MB = 1024 * 1024
MEMORY_FACTOR = 4  # loaded + traced model vs its inflated archive; see the module docstring
MEMORY_OVERHEAD = 2 * MB  # per loaded model: the Keras objects and the traced graph
DEFAULT_BUDGET = 512 * MB  # every variant of params.yaml fits (the two MobileNets ~110 MB of it)


class VariantError(UserError):
    """A request for a variant that does not exist (404) or cannot be loaded (409)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class Variant:
    """One ``<name>.keras`` of the folder: its sidecar, its estimated memory, or why it is unusable."""

    name: str  # the file's stem: what the picker and the API call it
    model_path: Path
    info: ModelInfo | None = None  # the sidecar, when it loaded
    memory: int = 0  # estimated bytes once loaded
    reason: str | None = None  # one line: why it is unavailable; None when usable


def _one_line(exc: BaseException, *paths: Path) -> str:
    """The error's message on one line, with paths shortened to file names (clients see it)."""
    text = " ".join(str(exc).split())
    for path in paths:
        text = text.replace(str(path), path.name)
    return text


def inspect(model_path: Path) -> Variant:
    """The variant of ``model_path``, checked without loading TensorFlow."""
    variant = Variant(model_path.stem, model_path)
    sidecar = info_path(model_path)
    try:
        variant.info = load_info(model_path)
        check_keras_archive(model_path)
        with zipfile.ZipFile(model_path) as archive:
            inflated = sum(member.file_size for member in archive.infolist())
    except (DataError, OSError, zipfile.BadZipFile) as exc:  # a file replaced between the checks
        variant.reason = _one_line(exc, model_path, sidecar)
        return variant
    shape = variant.info.image_shape
    if len(shape) != 3 or shape[0] != shape[1] or shape[2] not in (1, 3):
        variant.reason = (f"{sidecar.name}: the demo needs square RGB or grayscale input, "
                          f"the sidecar says {variant.info.image_shape}")
    variant.memory = MEMORY_FACTOR * inflated + MEMORY_OVERHEAD
    return variant


def discover(folder: Path) -> list[Variant]:
    """Every ``<name>.keras`` file in ``folder``, sorted by name, checked by ``inspect``."""
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of trained models (models/<name>.keras)")
    paths = sorted(p for p in folder.glob("*.keras") if p.is_file() and not p.name.startswith("."))
    return [inspect(path) for path in paths]


class Variants:
    """The variants the demo can serve, their lazily loaded predictors and the LRU cache of them."""

    def __init__(self, variants: list[Variant], loader: Callable[[Path], Any], default: str | None = None,
                 budget: int = DEFAULT_BUDGET, preloaded: Any = None) -> None:
        """``loader(model_path)`` builds a predictor; the ``default`` variant is loaded now.

        ``preloaded`` is the default's predictor when the caller has already built it. A default
        that cannot be loaded raises its ``UserError`` as is (the server cannot start without it);
        with no ``default``, the first variant that loads is the default.
        """
        self._variants = {v.name: v for v in variants}
        self._loader = loader
        self.budget = budget
        self._lock = threading.Lock()  # guards _loaded and the variants' reasons
        self._loaded: collections.OrderedDict[str, Any] = collections.OrderedDict()  # LRU order
        self._load_locks = {name: threading.Lock() for name in self._variants}
        self.default = ""  # the variant shown first and never unloaded; set below
        if default is not None:
            if default not in self._variants:
                raise DataError(f"{default}: no such model among {sorted(self._variants) or 'none'}")
            self.default = default
            variant = self._variants[default]
            self._loaded[default] = preloaded if preloaded is not None else loader(variant.model_path)
            variant.reason = None  # it loaded, whatever the cheap checks thought
            return
        for variant in variants:
            if variant.reason is None:
                self.default = variant.name
                try:
                    self._load(variant)
                    return
                except VariantError:
                    continue  # now marked unavailable; try the next one
        reasons = "; ".join(f"{v.name}: {v.reason}" for v in variants) or "the folder has no .keras file"
        raise DataError(f"no usable model: {reasons}")

    @classmethod
    def from_folder(cls, folder: Path, loader: Callable[[Path], Any], default: str | None = None,
                    budget: int = DEFAULT_BUDGET, preloaded: Any = None) -> Variants:
        """Every variant of ``folder`` (see ``discover``); ``default`` is a stem in it."""
        return cls(discover(folder), loader, default, budget, preloaded)

    @classmethod
    def single(cls, predictor: Any) -> Variants:
        """Just one already loaded predictor (tests and embedding): never unloaded."""
        path = Path(predictor.model_path)
        variant = Variant(path.stem, path, predictor.info)
        return cls([variant], lambda _: predictor, default=variant.name, preloaded=predictor)

    @property
    def names(self) -> list[str]:
        """Every variant's name, usable or not, sorted as discovered."""
        return list(self._variants)

    def available(self) -> list[str]:
        """The names of the variants not (yet) known to be unusable."""
        with self._lock:
            return [name for name, v in self._variants.items() if v.reason is None]

    def listing(self) -> list[dict[str, Any]]:
        """What ``GET /api/models`` shows of each variant: status, reason, data set, input, size."""
        out = []
        with self._lock:
            for name, v in self._variants.items():
                entry: dict[str, Any] = {"name": name, "default": name == self.default}
                if v.reason is not None:
                    entry.update(status="unavailable", reason=v.reason)
                else:
                    entry["status"] = "loaded" if name in self._loaded else "not loaded"
                if v.info is not None:
                    entry.update(dataset=v.info.dataset, classes=len(v.info.classes),
                                 image_shape=list(v.info.image_shape))
                entry["memory_mb"] = round(v.memory / MB, 1)
                out.append(entry)
        return out

    def loaded(self) -> list[str]:
        """Names of the variants in memory, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def get(self, name: str | None = None) -> Any:
        """The predictor of ``name`` (None: the default), loading it first if needed."""
        name = self.default if name is None else name
        variant = self._variants.get(name)
        if variant is None:
            raise VariantError(f"unknown model {name[:60]!r}; GET /api/models lists them", 404)
        with self._lock:
            if variant.reason is not None:
                raise VariantError(f"model {name!r} is unavailable: {variant.reason}", 409)
            predictor = self._loaded.get(name)
            if predictor is not None:
                self._loaded.move_to_end(name)
                return predictor
        return self._load(variant)

    def _load(self, variant: Variant) -> Any:
        # Loading takes seconds: hold only this variant's lock meanwhile, so other variants serve.
        with self._load_locks[variant.name]:
            with self._lock:
                if variant.name in self._loaded:
                    self._loaded.move_to_end(variant.name)
                    return self._loaded[variant.name]
                if variant.reason is not None:
                    raise VariantError(f"model {variant.name!r} is unavailable: {variant.reason}", 409)
            try:
                predictor = self._loader(variant.model_path)
            except UserError as exc:
                with self._lock:
                    variant.reason = _one_line(exc, variant.model_path, info_path(variant.model_path))
                log.warning("model %s is unavailable: %s", variant.name, variant.reason)
                raise VariantError(f"model {variant.name!r} is unavailable: {variant.reason}", 409) from None
            with self._lock:
                self._loaded[variant.name] = predictor
                evicted = self._evict(keep=variant.name)
        if evicted:
            log.info("unloaded %s to stay within the %.0f MB model budget", ", ".join(evicted),
                     self.budget / MB)
            gc.collect()  # Keras models hold reference cycles; free them now, not at some later GC
        return predictor

    def _evict(self, keep: str) -> list[str]:
        """Drop least recently used predictors until the estimate fits the budget (lock held)."""
        evicted = []
        while sum(self._variants[n].memory for n in self._loaded) > self.budget:
            victim = next((n for n in self._loaded if n not in (keep, self.default)), None)
            if victim is None:
                break  # only the default and the one just asked for are left: both are needed
            del self._loaded[victim]  # requests still using it hold their own reference
            evicted.append(victim)
        return evicted
