"""sha256 of files: as they are written, or once per process per state of a file; the one rule for what may
be read as data."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
from pathlib import Path
from typing import Any, BinaryIO

from storage.errors import InputError

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 of a regular file, computed once per process for a given state of the file.

    Anything but a regular file (a FIFO, ``/dev/zero``, a folder) is refused before a byte is read: a FIFO would
    block and ``/dev/zero`` never ends; it is opened non-blocking, so even a FIFO returns. The digest is
    remembered against the file's identity and change times (device, inode, size, mtime and ctime in ns; ctime
    cannot be set back by a writer), so the cache check, the verified read, the manifest and the run record of
    one run hash a file once between them, and any write to it makes the next call hash it again.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as fh:
        before = os.fstat(fd)
        refuse_special(before.st_mode, path)  # a folder then fails to read (IsADirectoryError)
        ident = _identity(before)
        with _DIGESTS_LOCK:
            known = _DIGESTS.get(ident)
            HASHING["lookups"] += 1
        if known is not None:
            return known
        digest = hashlib.sha256()
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            HASHING["bytes"] += len(chunk)
        unchanged = _identity(os.fstat(fd)) == ident  # a file written while it was hashed is not remembered
    with _DIGESTS_LOCK:
        HASHING["files"] += 1
        if unchanged:
            if len(_DIGESTS) >= _DIGESTS_MAX:
                _DIGESTS.clear()
            _DIGESTS[ident] = digest.hexdigest()
    return digest.hexdigest()


class HashingWriter(io.RawIOBase):
    """A write-only file that hashes what passes through it into ``raw``: a file is hashed as it is written,
    never read back for its digest (pyarrow and torch write to any such file object)."""

    def __init__(self, raw: BinaryIO):
        super().__init__()
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0
        self.failed: OSError | None = None  # the write that failed (torch reports it only as a RuntimeError)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            return self._write(data)
        except OSError as exc:
            self.failed = exc
            raise

    def _write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.raw.write(view)
        self.sha256.update(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size

    def close(self) -> None:  # the owner of ``raw`` closes it; a writer closing its sink must not
        super().close()


def remember(path: str | os.PathLike[str], digest: str, size: int) -> None:
    """Record the digest of a file just written (hashed while written), so `sha256_file` never reads it back."""
    ident = _identity(os.stat(path))
    if ident[2] != size:
        return  # not the bytes that were hashed: leave it to sha256_file
    with _DIGESTS_LOCK:
        HASHING["streamed"] += size
        if len(_DIGESTS) >= _DIGESTS_MAX:
            _DIGESTS.clear()
        _DIGESTS[ident] = digest


def check_regular(path: Path, label: str | os.PathLike[str]) -> None:
    """Refuse a device, FIFO or socket before anything opens it: /dev/zero never ends, a FIFO blocks forever."""
    refuse_special(path.stat().st_mode, label)


def refuse_special(mode: int, label: str | os.PathLike[str]) -> None:
    """The one rule for what may be read as data: a regular file (or a folder of them), nothing else."""
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise InputError(
            f"{label}: is not a regular file (a device, FIFO or socket, which may never end); "
            "pass --data with a CSV or Parquet file, a folder or a glob"
        )


def _identity(info: os.stat_result) -> tuple[int, ...]:
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


_DIGESTS: dict[tuple[int, ...], str] = {}


_DIGESTS_MAX = 100_000


_DIGESTS_LOCK = threading.Lock()


# this process's sha256 work, for the bench and its tests: files and bytes read to hash them, lookups of the
# memo, and bytes hashed as they were written
HASHING = {"files": 0, "bytes": 0, "lookups": 0, "streamed": 0}
