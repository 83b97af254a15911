"""Atomic writes: a killed stage never leaves a half-written file that looks valid.

Every file is written to a temporary and renamed over the target (``os.replace`` is atomic on
POSIX within one file system). A stage with several outputs writes them into ``atomic_dir``: a
temporary directory that replaces the output directory only when the whole stage succeeded, and
is deleted otherwise, so a failure leaves no output behind at all.

Where temporaries live: inside a DVC project (a folder with ``dvc.yaml`` or ``.dvc/`` above the
output) in ``<project>/.staging/<output path, quoted>/``, never beside the output: ``models/`` and
``dvclive/`` are whole-folder dependencies of ``report``, so a temporary left there by a killed
stage changed what ``report`` read. Outside a project (or if the staging folder is on another file
system than the output) they are hidden siblings ``.<name>.*.tmp`` as before. ``clean_stale``
removes both kinds for given outputs; stages call it when they start, since ``kill -9`` runs no
``finally``.

A write refused by the disk or the folder (full, read-only, not writable) raises ``OutputError``
naming the output, after removing the temporaries.

Reads nothing. Writes only the paths it is given (and their temporaries).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cifar_dvc.errors import WRITE_ERRNOS, OutputError, os_error_reason

STAGING = ".staging"  # at the project root; per output a sub-folder named by its quoted path
_PROJECT_MARKERS = ("dvc.yaml", ".dvc")
# Temporary directories of the atomic_dir blocks running now: a failed write of a file inside one
# is reported by that atomic_dir, naming its output directory rather than the temporary file.
_OPEN_DIRS: set[Path] = set()


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path for ``path``; on success it is renamed to ``path``."""
    path = Path(path)
    inner = _inside_open_dir(path)
    with output_errors(path, enabled=not inner):
        staging = staging_dir(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=staging)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with output_errors(path, tmp_path, enabled=not inner):
            tmp_path.chmod(0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
            yield tmp_path
            os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
        _remove_if_empty(staging, path.parent)


def write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path | str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def json_text(obj: Any) -> str:
    """``obj`` as indented, key-sorted JSON (stable diffs), with a final newline."""
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"


def write_json(path: Path | str, obj: Any) -> None:
    """Write ``obj`` as ``json_text`` atomically."""
    write_text(path, json_text(obj))


def save_npz(path: Path | str, **arrays: np.ndarray) -> None:
    """Save arrays uncompressed to ``path`` (.npz) atomically; loads are fast and mmap-friendly."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a file object: no in-memory copy
        np.savez(handle, **arrays)


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces ``path`` as a whole.

    On failure the temporary directory is removed and an existing ``path`` is left untouched.
    """
    path = Path(path)
    with output_errors(path):
        staging = staging_dir(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=staging))
    _OPEN_DIRS.add(Path(os.path.abspath(tmp)))
    try:
        with output_errors(path, tmp):
            tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700
            yield tmp
            if path.is_dir() and not path.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=staging))
                os.replace(path, old)  # onto the empty directory just made
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                if path.exists() or path.is_symlink():
                    path.unlink()
                os.replace(tmp, path)
    finally:
        _OPEN_DIRS.discard(Path(os.path.abspath(tmp)))
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_if_empty(staging, path.parent)


def staging_dir(path: Path | str) -> Path:
    """The folder that holds the temporaries of output ``path`` (created; see the module docstring)."""
    path = Path(path)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    root = project_root(parent)
    if root is None:
        return parent
    top = root / STAGING
    absolute = Path(os.path.abspath(path))
    if absolute.is_relative_to(top):  # a file inside an atomic_dir's temporary directory
        return parent
    staging = top / _quote(absolute.relative_to(root))
    try:
        staging.mkdir(parents=True, exist_ok=True)
        same_fs = staging.stat().st_dev == parent.stat().st_dev
    except OSError:  # e.g. a read-only project root: fall back to the output's own folder
        return parent
    if not same_fs:  # os.replace cannot cross file systems
        _remove_if_empty(staging, parent)
        return parent
    return staging


def clean_stale(*paths: Path | str) -> list[Path]:
    """Remove the temporaries that earlier, killed runs left for the outputs ``paths``.

    Both places are cleaned: the output's staging folder, and hidden siblings ``.<name>.*`` (this
    module's old location, and e.g. ``tempfile.TemporaryDirectory(prefix=".<name>.")``).
    Returns what was removed. Call it when a stage starts, before it writes anything.
    """
    removed: list[Path] = []
    for path in map(Path, paths):
        root = project_root(path.parent) if path.parent.is_dir() else None
        if root is not None:
            staging = root / STAGING / _quote(Path(os.path.abspath(path)).relative_to(root))
            if staging.is_dir():
                removed.extend(sorted(staging.iterdir()))
                shutil.rmtree(staging, ignore_errors=True)
                _remove_if_empty(staging, path.parent)
        if path.parent.is_dir():
            for entry in sorted(path.parent.glob(f".{_glob_escape(path.name)}.*")):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def project_root(start: Path | str) -> Path | None:
    """The nearest folder at or above ``start`` holding ``dvc.yaml`` or ``.dvc/``; None if there is none."""
    folder = Path(os.path.abspath(start))
    for candidate in (folder, *folder.parents):
        if any((candidate / marker).exists() for marker in _PROJECT_MARKERS):
            return candidate
    return None


def _inside_open_dir(path: Path) -> bool:
    absolute = Path(os.path.abspath(path))
    return any(absolute.is_relative_to(folder) for folder in list(_OPEN_DIRS))


@contextlib.contextmanager
def output_errors(path: Path, tmp: Path | None = None, enabled: bool = True) -> Iterator[None]:
    """Turn an OSError of writing ``path`` (or its temporary ``tmp``) into one-line ``OutputError``.

    Used by ``atomic_path``/``atomic_dir``; wrap other writes of an output in it (e.g. a library's
    own ``save``) to get the same one-line error. Errors about other files (e.g. an unreadable
    input read inside an ``atomic_dir`` block) pass through unchanged, as does everything when
    not ``enabled``.
    """
    try:
        yield
    except OSError as exc:
        if not enabled or exc.errno not in WRITE_ERRNOS or not _about_output(exc, path, tmp):
            raise
        reason, hint = os_error_reason(exc)
        raise OutputError(f"{path}: cannot write ({reason}){hint}; nothing was written") from None


def _about_output(exc: OSError, path: Path, tmp: Path | None) -> bool:
    """Whether ``exc`` is about writing ``path``: no file named (a write() call), the output or one of
    its folders, or a temporary of ours."""
    if exc.filename is None:
        return True
    named = Path(os.path.abspath(exc.filename))
    target = Path(os.path.abspath(path))
    if target.is_relative_to(named):  # the output itself, or a folder on its way (mkdir, mkstemp)
        return True
    ours = [Path(os.path.abspath(target.parent)) / f".{path.name}."]  # sibling temporaries
    if tmp is not None:
        ours.append(Path(os.path.abspath(tmp)))
    root = project_root(target.parent) if target.parent.exists() else None
    if root is not None:
        ours.append(root / STAGING)
    return any(named.is_relative_to(p) or str(named).startswith(str(p)) for p in ours)


def _quote(relative: Path) -> str:
    """One folder name per output path: ``models/cnn.keras`` -> ``models%2Fcnn.keras``."""
    return urllib.parse.quote(relative.as_posix(), safe="")


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _remove_if_empty(staging: Path, parent: Path) -> None:
    """Remove an output's staging folder and ``.staging`` itself once empty (never ``parent``)."""
    if staging == parent:
        return
    for folder in (staging, staging.parent):
        if folder != staging and folder.name != STAGING:
            return
        try:
            folder.rmdir()
        except FileNotFoundError:  # already gone (clean_stale removed it): try the next one
            continue
        except OSError:  # not empty (another output's temporaries)
            return


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
