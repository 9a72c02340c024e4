"""Atomic writes: a temporary file beside the final name, renamed over it only when complete; and the sweep of
temporary files that killed writers left behind.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from stagecore.errors import InputError

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


@contextmanager
def atomic_path(final: Path):
    """Yield a temporary path beside ``final``; rename it over ``final`` only if the block succeeds."""
    try:
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.{HOST}-{os.getpid()}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(f"cannot write in {final.parent} ({exc.strerror}); check space and permissions") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise InputError(
                f"cannot write {final} in {final.parent} ({exc.strerror}); check space and permissions"
            ) from None
        raise


def write_bytes(data: bytes, final: Path) -> str:
    """Atomically write bytes that are not a stage artifact (cache and run records); no manifest."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return str(final)


def write_json(obj: Any, final: Path) -> str:
    return write_bytes((json.dumps(obj, indent=2) + "\n").encode(), final)
