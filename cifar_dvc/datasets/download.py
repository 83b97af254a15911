"""The ``fetch`` stage's logic: get each data file once, check its md5, write it atomically.

For each file (``sources.RemoteFile``), in order:
1. ``data.url`` is a local path or ``file://`` URL: copy it.
2. A copy with the right md5 already sits in a download cache (``~/.keras/datasets/`` under its
   own name or a name Keras uses): copy that, no network.
3. Download over HTTP(S) with ``urllib``: a progress bar when stderr is a terminal, a few log lines
   otherwise. Every network step has a timeout, so offline it fails within seconds with one line
   saying where to put the file and how to run the offline demo instead.
The md5 is computed while the bytes stream to a temporary file that is renamed into place only
when it matches, so a wrong or partial download never leaves a file behind.

Reads ``data.url`` (network or disk) and the cache directories. Writes the output paths given.
Run by ``stages/fetch.py``.
"""

from __future__ import annotations

import hashlib
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from cifar_dvc import atomic
from cifar_dvc.datasets.sources import RemoteFile
from cifar_dvc.errors import FetchError, ParamsError

CACHE_DIRS = (Path("~/.keras/datasets"),)  # where other tools (Keras) keep their downloads
TIMEOUT_S = 10.0  # per network operation (DNS, connect, each read): offline fails well within 15 s
CHUNK = 1 << 20
Log = Callable[[str], None]


def log_stderr(message: str) -> None:
    """Default logger: one line on stderr."""
    print(message, file=sys.stderr, flush=True)


def md5_file(path: Path) -> str:
    """Hex md5 of the file at ``path``."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def local_path(url: str) -> Path | None:
    """The path ``url`` names if it is a ``file://`` URL or a plain path; None for http(s)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path)).expanduser()
    if parsed.scheme in ("http", "https"):
        return None
    if "://" in url:
        raise ParamsError(f"data.url: unsupported scheme {parsed.scheme!r}; "
                          "use http(s)://, file:// or a path")
    return Path(url).expanduser()


def find_cached(spec: RemoteFile, cache_dirs: Iterable[Path]) -> Path | None:
    """A file in ``cache_dirs`` named like ``spec`` (or an alias) whose md5 matches, if any."""
    for directory in cache_dirs:
        for name in (spec.name, *spec.aliases):
            candidate = directory.expanduser() / name
            if candidate.is_file() and md5_file(candidate) == spec.md5:
                return candidate
    return None


def fetch_file(spec: RemoteFile, dest: Path, cache_dirs: Iterable[Path] = CACHE_DIRS,
               timeout: float = TIMEOUT_S, log: Log = log_stderr) -> str:
    """Put the file ``spec`` describes at ``dest``, md5-checked; returns where it came from."""
    source = local_path(spec.url)
    if source is not None:
        if not source.is_file():
            raise FetchError(f"data.url: {source} does not exist (expected {spec.name}, md5 {spec.md5})")
        with source.open("rb") as handle:
            _store(handle, dest, spec, str(source), None, log)
        return str(source)
    cached = find_cached(spec, cache_dirs)
    if cached is not None:
        log(f"fetch: reusing {cached} (md5 matches)")
        with cached.open("rb") as handle:
            _store(handle, dest, spec, str(cached), None, log)
        return str(cached)
    _download(spec, dest, timeout, log)
    return spec.url


def fetch_all(files: list[RemoteFile], out_dir: Path, cache_dirs: Iterable[Path] = CACHE_DIRS,
              timeout: float = TIMEOUT_S, log: Log = log_stderr) -> list[str]:
    """``fetch_file`` for each of ``files`` into ``out_dir``; returns their sources."""
    cache_dirs = list(cache_dirs)
    return [fetch_file(spec, Path(out_dir) / spec.name, cache_dirs, timeout, log) for spec in files]


def _download(spec: RemoteFile, dest: Path, timeout: float, log: Log) -> None:
    host = urllib.parse.urlparse(spec.url).hostname or ""
    try:
        _resolve_within(host, timeout)
        request = urllib.request.Request(spec.url, headers={"User-Agent": "cifar-dvc-fetch"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
            log(f"fetch: downloading {spec.url}" + (f" ({size / 1e6:.1f} MB)" if size else ""))
            _store(response, dest, spec, spec.url, size, log)
    except FetchError:
        raise
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{spec.url}: HTTP {exc.code} {exc.reason}; {_offline_hint(spec)}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise FetchError(f"cannot download {spec.url} ({reason}); {_offline_hint(spec)}") from None


def _offline_hint(spec: RemoteFile) -> str:
    return (f"to work offline, put {spec.name} (md5 {spec.md5}) into ~/.keras/datasets/ or set data.url "
            f"to its local path, then run `dvc repro` again; or run the offline demo on synthetic data: "
            f"`make demo`")


def _resolve_within(host: str, timeout: float) -> None:
    """Resolve ``host`` or fail after ``timeout`` s (socket timeouts do not cover DNS lookups)."""
    outcome: list[BaseException | None] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, None)
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        raise urllib.error.URLError(f"name lookup of {host} timed out after {timeout:.0f} s")
    if outcome[0] is not None:
        raise urllib.error.URLError(outcome[0])


def _store(stream: BinaryIO, dest: Path, spec: RemoteFile, source: str, size: int | None, log: Log) -> None:
    """Copy ``stream`` to ``dest`` atomically, checking its md5 against ``spec.md5``."""
    digest = hashlib.md5()
    progress = _Progress(spec.name, size, log)
    with atomic.atomic_path(dest) as tmp, tmp.open("wb") as out:
        while block := stream.read(CHUNK):
            digest.update(block)
            out.write(block)
            progress.update(len(block))
        progress.close()
        out.flush()
        got = digest.hexdigest()
        if got != spec.md5:
            raise FetchError(f"{source}: md5 {got} does not match the expected {spec.md5} (data.md5); "
                             f"the file is corrupt or not the expected {spec.name}")


class _Progress:
    """A tqdm bar on a terminal; otherwise a log line at each quarter (every 50 MB if the size is unknown)."""

    def __init__(self, name: str, total: int | None, log: Log) -> None:
        self.total, self.log, self.done = total, log, 0
        self.step = total / 4 if total else 50e6  # bytes between two log lines
        self.next_report = self.step
        self.start = time.monotonic()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm  # installed with dvc; imported only when a bar is shown

            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        while self.done >= self.next_report:
            if self.total:
                self.log(f"fetch: {self.done / 1e6:.1f} of {self.total / 1e6:.1f} MB "
                         f"({round(self.next_report / self.total * 100)}%)")
            else:
                self.log(f"fetch: {self.done / 1e6:.0f} MB")
            self.next_report += self.step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.done > 8 * CHUNK:
            self.log(f"fetch: {self.done / 1e6:.1f} MB in {time.monotonic() - self.start:.1f} s")
