"""One exclusive lock on a path, across threads and processes: the one function to swap for an object-store lock.

``flock`` locks belong to an open file, so two threads of one process that each open the file also exclude each
other, and the kernel drops the lock when its process dies: a ``kill -9`` leaves no stale lock.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from storage.errors import InputError


@contextmanager
def exclusive(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold ``path`` (a lock file, created if missing) exclusively for the block."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise InputError(f"cannot lock {path} ({exc.strerror}); check the artifacts folder's permissions") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock
