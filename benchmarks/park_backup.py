"""Carry an unfinished training from one session to the next through the repository's DVC cache.

A variant whose budget is longer than a session (``imp2``: 240 epochs, 2.5-4 hours on 2 cores)
resumes from its per-epoch backup (``backups/<name>/``, ``cifar_dvc/training/resume.py``), but
that folder lives in the workspace, and a new session may start in another workspace that shares
only the git history and a DVC cache (this repository's ``.dvc/cache``, or ``--cache``). So:

- ``park`` stores the backup folder in that cache as a DVC directory object (the layout ``dvc
  add`` writes: every file under ``files/md5/<2>/<30>``, and a ``.dir`` listing named by the md5
  of its JSON) and writes a small pointer for git: the object's hash, the epoch reached, the
  run's fingerprint, the machine, and the curve of the epochs run so far (from the backup's
  ``state.json``).
- ``unpark`` checks every object against its md5 and puts the folder back (atomically) in a
  workspace, where ``dvc repro evaluate@<name>`` then resumes it if the fingerprint matches
  (same params, seed, data and resolved precision: bfloat16 on an AMX Xeon and on a Zen 4/5 EPYC
  alike).

Stop the training first (``kill -STOP`` or end it): a backup being written is not a consistent
one. ``dvc gc`` removes objects that no ``.dvc`` file or ``dvc.lock`` points at, parked ones too.
The cache is not in git: a session on a new machine, from a fresh clone, has the pointer but not
the object (``unpark`` then fails with "cache object ... is missing"; seen 2026-12-04).
Park into a cache that outlives the machine where there is one.

    python benchmarks/park_backup.py park --backup /work/repro/backups/imp2 \
        --out benchmarks/results/reproduction/imp2.parked.json
    python benchmarks/park_backup.py unpark benchmarks/results/reproduction/imp2.parked.json \
        --backup /work/repro/backups/imp2

Reads and writes the backup folder, the cache (default: this repository's ``.dvc/cache``) and the
pointer file (written atomically).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from reproduction import machine

from cifar_dvc import atomic

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".dvc" / "cache"
POINTER_FORMAT = 1
# cifar_dvc.training.resume.STATE_FILE, not imported: that module loads Keras, which a copy of files
# does not need (tests/test_benchmark_park.py checks they agree)
STATE_FILE = "state.json"


class ParkError(Exception):
    """A backup, cache object or pointer that cannot be parked or restored (one-line message)."""


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def object_path(cache: Path, md5: str) -> Path:
    """Where DVC 3 keeps the object ``md5`` (``<hash>`` or ``<hash>.dir``) in ``cache``."""
    return cache / "files" / "md5" / md5[:2] / md5[2:]


def _put(cache: Path, data: bytes, suffix: str = "") -> str:
    md5 = _md5(data) + suffix
    path = object_path(cache, md5)
    if not path.exists():  # content-addressed: an object present is the same bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(path, data)
    return md5


def store_dir(directory: Path, cache: Path) -> dict[str, Any]:
    """Store every file under ``directory`` in ``cache`` as DVC does; the ``.dir`` hash, count, size."""
    entries, size = [], 0
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        data = path.read_bytes()
        entries.append({"md5": _put(cache, data), "relpath": path.relative_to(directory).as_posix()})
        size += len(data)
    entries.sort(key=lambda e: e["relpath"])
    listing = json.dumps(entries).encode()  # DVC's own serialization: its md5 names the object
    return {"md5": _put(cache, listing, ".dir"), "nfiles": len(entries), "size": size}


def _read_object(cache: Path, md5: str) -> bytes:
    path = object_path(cache, md5)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ParkError(f"{path}: cache object {md5} is missing ({exc.strerror})") from None
    if _md5(data) != md5.removesuffix(".dir"):
        raise ParkError(f"{path}: content does not match its md5 {md5} (corrupted cache object)")
    return data


def restore_dir(md5: str, cache: Path, target: Path) -> int:
    """Put the directory object ``md5`` back at ``target`` (which must not exist); files written."""
    if not md5.endswith(".dir"):
        raise ParkError(f"backup md5 {md5!r}: expected a DVC directory hash ending in .dir")
    try:
        entries = json.loads(_read_object(cache, md5))
        files = [(str(e["relpath"]), str(e["md5"])) for e in entries]
    except (ValueError, TypeError, KeyError):
        raise ParkError(f"{object_path(cache, md5)}: not a DVC directory listing") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}-", dir=target.parent) as tmp:
        staging = Path(tmp) / "dir"
        for relpath, file_md5 in files:
            dest = (staging / relpath).resolve()
            if staging.resolve() not in dest.parents:
                raise ParkError(f"{object_path(cache, md5)}: entry {relpath!r} leaves the folder")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(_read_object(cache, file_md5))
        staging.rename(target)  # all files or none: a half-restored backup never looks valid
    return len(files)


def _state(backup: Path) -> dict[str, Any]:
    try:
        state = json.loads((backup / STATE_FILE).read_text())
        weights, epoch = backup / str(state["weights"]), int(state["epoch"])
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ParkError(f"{backup / STATE_FILE}: not a training backup's state ({exc})") from None
    if not weights.is_file():
        raise ParkError(f"{weights}: the weights {STATE_FILE} names are missing (is the training "
                        "still writing? stop it first)")
    return {**state, "epoch": epoch}


def _commit(workspace: Path) -> str | None:
    result = subprocess.run(["git", "-C", str(workspace), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True)
    return result.stdout.strip() or None


def park(backup: Path, cache: Path, epochs: int | None = None) -> dict[str, Any]:
    """Store ``backup`` in ``cache``; the pointer record (what ``unpark`` needs, and the curve)."""
    state = _state(backup)
    before = (backup / STATE_FILE).read_bytes()
    stored = store_dir(backup, cache)
    if (backup / STATE_FILE).read_bytes() != before:  # an epoch ended meanwhile: files of two epochs
        raise ParkError(f"{backup}: the training wrote a new epoch while it was parked; stop it first")
    history = state.get("history", [])
    return {
        "format": POINTER_FORMAT,
        "variant": backup.name,
        "epoch": state["epoch"],
        "epochs": epochs,
        "fingerprint": state.get("fingerprint"),
        "backup": stored,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        # the workspace's code: a later change to the variant's params (a new key's default too)
        # changes the fingerprint, and the resumed stage then starts over
        "commit": _commit(backup.parent.parent),
        "machine": machine(),
        "seconds": state.get("seconds"),
        "cpu_seconds": state.get("cpu_seconds"),
        "curve": {key: [round(float(h[key]), 4) for h in history if key in h]
                  for key in ("accuracy", "val_accuracy")},
    }


def unpark(pointer: dict[str, Any], cache: Path, backup: Path, force: bool = False) -> int:
    """Restore the parked backup of ``pointer`` at ``backup``; refuses to overwrite one unless
    ``force``. Returns the epoch it resumes after."""
    if pointer.get("format") != POINTER_FORMAT or not isinstance(pointer.get("backup"), dict):
        raise ParkError(f"pointer: expected format {POINTER_FORMAT} with a 'backup' entry")
    if backup.exists():
        if not force:
            raise ParkError(f"{backup}: a backup is already there (--force replaces it)")
        shutil.rmtree(backup)
    restore_dir(str(pointer["backup"].get("md5", "")), cache, backup)
    return _state(backup)["epoch"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=CACHE, help="DVC cache folder (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("park", help="store a backup folder in the cache and write its pointer")
    p.add_argument("--backup", type=Path, required=True, help="backups/<name> of a workspace")
    p.add_argument("--epochs", type=int, help="the run's planned epochs, for the record")
    p.add_argument("--out", type=Path, required=True, help="pointer JSON to write")
    u = sub.add_parser("unpark", help="restore a parked backup into a workspace")
    u.add_argument("pointer", type=Path)
    u.add_argument("--backup", type=Path, required=True, help="backups/<name> of the workspace")
    u.add_argument("--force", action="store_true", help="replace a backup already there")
    args = parser.parse_args(argv)
    try:
        if args.command == "park":
            record = park(args.backup, args.cache, args.epochs)
            atomic.write_json(args.out, record)
            print(f"parked {args.backup} (epoch {record['epoch']}) as {record['backup']['md5']} "
                  f"in {args.cache}; pointer {args.out}")
        else:
            try:
                pointer = json.loads(args.pointer.read_text())
            except (OSError, ValueError) as exc:
                raise ParkError(f"{args.pointer}: cannot read the pointer ({exc})") from None
            epoch = unpark(pointer, args.cache, args.backup, args.force)
            print(f"restored {args.backup}: resumes after epoch {epoch}")
    except ParkError as exc:
        print(f"park_backup: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
