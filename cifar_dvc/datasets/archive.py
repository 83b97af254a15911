"""Reading chosen members of a tar archive into memory, never extracting anything to disk.

Extraction is where tar files attack (``../`` paths, absolute paths, links, device files): this
module never extracts. It looks members up by exact name, accepts only regular files of bounded
size, and returns their bytes. A truncated or corrupt archive becomes a one-line DataError.

Memory is bounded by the caps below, not by the input: the archive (plain tar, gzip, xz or bzip2)
is decompressed as a stream in 1 MiB pieces, every inflated byte is counted against
``MAX_ARCHIVE_BYTES`` whatever the compression (a decompression bomb stops there, having held one
piece at a time), members that are not asked for are read through and dropped, and the members
that are kept may not exceed ``MAX_MEMBER_BYTES`` each nor ``MAX_KEPT_BYTES`` together (checked on
their tar headers, before their data is read).

Reads the archive it is given. Writes nothing. Used by ``cifar_dvc.datasets.cifar``.
"""

from __future__ import annotations

import bz2
import io
import lzma
import os
import stat
import tarfile
import zlib
from pathlib import Path
from typing import Any

from cifar_dvc.errors import DataError

MiB = 1024 * 1024
MAX_MEMBER_BYTES = 256 * MiB  # CIFAR-100's train pickle, the largest member, is about 155 MB
MAX_KEPT_BYTES = 384 * MiB  # all members asked for; CIFAR-10's and CIFAR-100's are about 180 MB
MAX_ARCHIVE_BYTES = 1024 * MiB  # the inflated tar stream; CIFAR's are about 180 MB
CHUNK = MiB  # bytes read (and inflated) per step; large steps keep the streaming as fast as one call

# Leading bytes of each compression this reader inflates; anything else is read as a plain tar.
MAGIC = {"gzip": b"\x1f\x8b", "xz": b"\xfd7zXZ\x00", "bzip2": b"BZh"}


def read_members(path: Path | str, names: list[str]) -> dict[str, bytes]:
    """Bytes of the regular-file members ``names`` of tar(.gz/.xz/.bz2) ``path``; all must be there.

    Other members are read through and dropped. See the module docstring for the size caps.
    """
    path = Path(path)
    try:
        with open(path, "rb", opener=_open_nonblocking) as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise DataError(f"{path}: not a regular file; expected the data set archive")
            head = handle.read(6)
            handle.seek(0)
            codec = next((name for name, magic in MAGIC.items() if head.startswith(magic)), None)
            if codec is None and info.st_size > MAX_ARCHIVE_BYTES:
                raise DataError(f"{path}: {info.st_size} bytes, more than the {MAX_ARCHIVE_BYTES} bytes "
                                "a data set archive may have")
            stream = InflatingReader(handle, codec, MAX_ARCHIVE_BYTES, path)
            with tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK) as tar:
                found = _collect(tar, path, names)
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run `dvc repro fetch` first") from None
    except IsADirectoryError:
        raise DataError(f"{path}: a folder, not a regular file; expected the data set archive") from None
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        raise DataError(f"{path}: truncated or corrupt archive ({reason})") from None
    missing = [n for n in names if n not in found]
    if missing:
        raise DataError(f"{path}: missing {', '.join(missing)} (is this the right archive for data.dataset?)")
    return found


class InflatingReader(io.RawIOBase):
    """A read-only stream of the inflated content of ``raw`` (compression ``codec``, None = none).

    Refuses (``DataError``) to give more than ``limit`` bytes in all, and reports a stream that ends
    before its compressed data does as truncated. Concatenated streams (``cat a.gz b.gz``) are
    read as one, as ``gzip``/``xz`` do; zero padding after the last one is ignored.
    """

    def __init__(self, raw: Any, codec: str | None, limit: int, path: Path) -> None:
        super().__init__()
        self.raw, self.codec, self.limit, self.path = raw, codec, limit, path
        self.total = 0
        self._decoder: Any = None
        self._pending = b""  # compressed bytes not yet given to the decoder
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self.limit + 1 - self.total  # "everything" is never more than the cap
        pieces: list[bytes] = []
        got = 0
        while got < size and not self._done:
            piece = self._next(min(size - got, CHUNK))
            pieces.append(piece)
            got += len(piece)
        self.total += got
        if self.total > self.limit:
            raise DataError(f"{self.path}: inflates to more than {self.limit} bytes; not a data set archive")
        return b"".join(pieces)

    def _next(self, want: int) -> bytes:
        """Up to ``want`` inflated bytes (possibly none, e.g. between streams); sets ``_done`` at the end."""
        if self.codec is None:
            data = self.raw.read(want)
            self._done = not data
            return data
        if (self._decoder is None or self._decoder.eof) and not self._start_stream():
            self._done = True
            return b""
        decoder = self._decoder
        if self.codec == "gzip":  # zlib keeps what max_length left over in unconsumed_tail
            data = self._pending or self.raw.read(CHUNK)
            if not data:
                raise DataError(f"{self.path}: truncated or corrupt archive (the gzip stream ends early)")
            out = decoder.decompress(data, want)
            self._pending = decoder.unconsumed_tail
            return out
        data = b""
        if decoder.needs_input:  # lzma and bz2 keep their leftovers inside
            data, self._pending = self._pending or self.raw.read(CHUNK), b""
            if not data:
                raise DataError(f"{self.path}: truncated or corrupt archive (the {self.codec} stream "
                                "ends early)")
        return decoder.decompress(data, max_length=want)

    def _start_stream(self) -> bool:
        """A new decoder for the first stream or the next concatenated one; False at the end of input."""
        first = self._decoder is None
        # At the end of a stream zlib leaves the input after it both in unused_data and in
        # unconsumed_tail (our _pending): take it from unused_data alone, or it is read twice.
        data = self._pending if first else self._decoder.unused_data
        self._pending = b""
        while True:
            if not first:
                data = data.lstrip(b"\0")  # zero padding after the last stream is allowed
            if data:
                break
            data = self.raw.read(CHUNK)
            if not data:
                return False
        # A continuation that is not a stream of the same compression makes the decoder raise.
        self._decoder, self._pending = _decoder(self.codec), data
        return True


def _decoder(codec: str) -> Any:
    if codec == "gzip":
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip header and trailer
    if codec == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    return bz2.BZ2Decompressor()


def _open_nonblocking(path: str, flags: int) -> int:
    # A FIFO would block the open until a writer appears; the fstat check refuses it right after.
    return os.open(path, flags | os.O_NONBLOCK)


def _collect(tar: tarfile.TarFile, path: Path, names: list[str]) -> dict[str, bytes]:
    wanted = set(names)
    found: dict[str, bytes] = {}
    kept = 0
    for member in tar:
        if member.name not in wanted or member.name in found:
            continue
        if not member.isfile():
            raise DataError(f"{path}: member {member.name} is not a regular file")
        if member.size > MAX_MEMBER_BYTES:
            raise DataError(f"{path}: member {member.name} is implausibly large ({member.size} bytes, "
                            f"more than {MAX_MEMBER_BYTES})")
        kept += member.size
        if kept > MAX_KEPT_BYTES:
            raise DataError(f"{path}: the members read hold more than {MAX_KEPT_BYTES} bytes "
                            f"(at {member.name}); not a data set archive")
        handle = tar.extractfile(member)
        data = handle.read() if handle is not None else b""
        if len(data) != member.size:
            raise DataError(f"{path}: member {member.name} is truncated")
        found[member.name] = data
        if len(found) == len(wanted):
            break
    return found
