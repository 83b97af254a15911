"""Load a saved model checked: any unreadable or corrupt ``.keras`` file is one ``DataError`` line.

``keras.saving.load_model`` reports a bad file with whatever exception its code path meets
(``KeyError: 'config.json'`` for a zip without it, ``BadZipFile``, ``JSONDecodeError``,
``TypeError`` ...), so callers that caught only OSError/ValueError showed tracebacks. ``load_model``
first checks the ``.keras`` zip itself (readable, ``config.json`` and ``metadata.json`` present,
``config.json`` a JSON object, a bounded uncompressed size, since Keras reads the weights into
memory), then loads it with the project's custom layers registered and turns any failure of
Keras into one line naming the file.

Reads the model file. Writes nothing. Used by ``cifar_dvc.serve`` (``cifar-dvc-serve --model``)
and ``cifar_dvc.evaluation.evaluate`` (``dvc repro evaluate@<name>``).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from cifar_dvc.errors import DataError

# Keras 3's .keras format: a zip with these members (and the weights, model.weights.h5).
REQUIRED_MEMBERS = ("config.json", "metadata.json")
MAX_CONFIG_BYTES = 64 * 1024 * 1024  # config.json is parsed in memory; real ones are kilobytes
MAX_UNCOMPRESSED_BYTES = 2 * 1024**3  # the whole archive inflated; MobileNet's is about 17 MB
_MAX_DETAIL = 300  # characters of Keras' own message kept in ours


def load_model(path: Path | str) -> Any:
    """The Keras model saved at ``path`` (uncompiled), or ``DataError`` naming the file and why not."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model not found; it is written by `dvc repro train@<name>`")
    if path.suffix == ".keras":
        check_keras_archive(path)
    import keras

    import cifar_dvc.models  # noqa: F401  (registers the custom layers used by saved models)

    try:
        return keras.saving.load_model(path, compile=False)
    except (MemoryError, ImportError):
        raise  # not the file's fault
    except Exception as exc:  # the file drives every code path in here: any failure means a bad file
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        if len(detail) > _MAX_DETAIL:
            detail = detail[:_MAX_DETAIL] + "..."
        raise DataError(f"{path}: not a loadable Keras model ({detail})") from None


def check_keras_archive(path: Path) -> None:
    """Raise ``DataError`` unless ``path`` is a plausible Keras 3 ``.keras`` zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            missing = [m for m in REQUIRED_MEMBERS if m not in members]
            if missing:
                raise DataError(f"{path}: not a Keras model file: the zip has no {missing[0]} "
                                "(expected a .keras file saved by `dvc repro train@<name>`)")
            total = sum(info.file_size for info in members.values())
            if total > MAX_UNCOMPRESSED_BYTES:
                raise DataError(f"{path}: inflates to {total} bytes, more than the {MAX_UNCOMPRESSED_BYTES} "
                                "bytes a model of this project may have")
            if members["config.json"].file_size > MAX_CONFIG_BYTES:
                raise DataError(f"{path}: config.json of {members['config.json'].file_size} bytes is "
                                "implausibly large")
            config = json.loads(archive.read("config.json"))
    except zipfile.BadZipFile as exc:
        raise DataError(f"{path}: not a Keras model file (not a zip archive: {exc})") from None
    except (OSError, EOFError, zipfile.LargeZipFile, NotImplementedError) as exc:
        raise DataError(f"{path}: unreadable Keras model file ({type(exc).__name__}: {exc})") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise DataError(f"{path}: config.json is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(config, dict):
        raise DataError(f"{path}: config.json is not a JSON object")
