"""Atomic writes: a temporary file beside the final name, renamed over it only when complete; and the sweep of
temporary files that killed writers left behind.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from storage.errors import InputError

HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"  # in temporary files' names, with the pid


# ``.<name>.<host>-<pid>.<random>.tmp``: a writer's temporary file, named by `atomic_path`
TEMP_OWNER = re.compile(r"\..+\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[^.]+\.tmp")


TEMPORARY = re.compile(r"\..+\.tmp")


def sweep_temporary_files(root: Path) -> int:
    """Delete the temporary files of writers that died on this host (a ``kill -9`` mid-write leaves them).

    A temporary file's name carries its writer's host and pid; a file whose writer is still alive, or runs on
    another host sharing the folder, is left alone.
    """
    removed = 0
    for path in root.rglob(".*.tmp"):
        match = TEMP_OWNER.fullmatch(path.name)
        if match is None or match["host"] != HOST or alive(int(match["pid"])):
            continue
        with suppress(OSError):
            path.unlink()
            removed += 1
    return removed


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        pass
    return True


def write_error(folder: Path, exc: OSError, final: Path | None = None) -> InputError:
    """A failed write in ``folder`` as one line that says what to do: a full disk, a read-only or refused
    folder by name; any other failure (EFBIG, EIO, …) with its reason."""
    what = f"cannot write {final}" if final is not None else f"cannot write in {folder}"
    if exc.errno == errno.ENOSPC:
        return InputError(f"{what}: no space left on device in {folder}; free space or pass --artifacts-dir elsewhere")
    if exc.errno == errno.EROFS:
        return InputError(f"{what}: {folder} is on a read-only file system; pass --artifacts-dir elsewhere")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return InputError(f"{what}: permission denied in {folder}; fix its permissions or pass --artifacts-dir")
    where = f" in {folder}" if final is not None else ""
    return InputError(f"{what}{where} ({exc.strerror or exc}); check space and permissions")


@contextmanager
def atomic_path(final: Path):
    """Yield a temporary path beside ``final``; rename it over ``final`` only if the block succeeds.

    Whatever fails, the temporary file is removed; a write that fails (a full disk, a read-only or refused
    folder) is `write_error`'s one line. An `InputError` raised in the block (a store that cannot be reached,
    while downloading into ``tmp``) is the block's own and passes through as it is.
    """
    try:
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.{HOST}-{os.getpid()}.", suffix=".tmp")
    except OSError as exc:
        raise write_error(final.parent, exc) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, InputError):
            raise write_error(final.parent, exc, final) from None
        raise


def makedirs(folder: Path) -> Path:
    """``mkdir -p folder``; a failure is `write_error`'s one line."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(folder, exc) from None
    return folder


def write_bytes(data: bytes, final: Path) -> str:
    """Atomically write bytes that are not a stage artifact (cache and run records); no manifest."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return str(final)


def write_json(obj: Any, final: Path) -> str:
    return write_bytes((json.dumps(obj, indent=2) + "\n").encode(), final)
