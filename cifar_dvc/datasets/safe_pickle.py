"""A restricted unpickler for the official CIFAR python batches, which are untrusted input.

A pickle is a program: ``pickle.load`` imports and calls whatever the file names, so a crafted
"data batch" could run any code (``os.system`` through ``__reduce__``). The official files need
only built-in containers and scalars (which need no imports) plus the three NumPy names that
rebuild an ndarray: ``numpy.core.multiarray._reconstruct`` (``numpy._core`` since NumPy 2),
``numpy.ndarray`` and ``numpy.dtype``. ``SafeUnpickler.find_class`` allows exactly those and refuses
every other global before anything is called. The allowed callables are wrapped so they can only
make plain ndarrays of numeric dtypes (no object arrays, whose items could hide other objects).
Keys are decoded with ``encoding="bytes"`` (the files come from Python 2), then made ``str``.

Reads the bytes it is given. Writes nothing. Used by ``cifar_dvc.datasets.cifar``.
"""

from __future__ import annotations

import io
import pickle
import re
from typing import Any

import numpy as np

from cifar_dvc.errors import DataError

_DTYPE_SPEC = re.compile(r"[<>|=]?[biuf][1-8]?")  # what NumPy pickles for bool/int/uint/float arrays
_RECONSTRUCT_NAMES = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """``numpy.core.multiarray._reconstruct`` restricted to plain ndarrays of numeric dtype."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError("array reconstruction of a type other than numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, shape, _dtype(dtype))


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """``numpy.dtype`` restricted to booleans, integers and floats (no object, void or structured)."""
    if isinstance(spec, bytes):
        spec = spec.decode("ascii")
    if not isinstance(spec, str) or not _DTYPE_SPEC.fullmatch(spec):
        raise pickle.UnpicklingError(f"disallowed dtype specification {spec!r}")
    dt = np.dtype(spec)
    if dt.kind not in "biuf":
        raise pickle.UnpicklingError(f"disallowed dtype {dt} (only numeric arrays are accepted)")
    return dt


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals an official CIFAR batch needs (see module doc)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _RECONSTRUCT_NAMES:
            return _reconstruct
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return _dtype
        raise pickle.UnpicklingError(f"refused to load global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def loads(data: bytes, source: str) -> Any:
    """Unpickle ``data`` safely; ``source`` names the file in the one-line DataError on failure.

    Mapping keys that are bytes are decoded to ``str`` (one level deep, as in the official batches).
    """
    try:
        obj = SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{source}: unsafe or invalid pickle: {exc}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError,
            OverflowError, UnicodeDecodeError) as exc:
        raise DataError(f"{source}: truncated or invalid pickle ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, dict):
        obj = {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    return obj
