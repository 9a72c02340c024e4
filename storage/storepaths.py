"""How a store's own files (manifests, run records, the champion's manifest) name other files.

A file inside the store is named relative to the store's root (posix), so the store can be moved or renamed
and still read: `recorded` writes such a name, `resolved` reads it back against where the store is now. A
file outside the store (the user's source data) is named as given, a URL redacted. An absolute path, which
stores written before names were relative hold, reads back as it is.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from storage.layout import (
    CHAMPION_ALIASES,
    CHAMPION_BY_COLUMNS,
    CHAMPION_BY_NAME,
    CHAMPION_DIR,
    CHAMPION_GENERATIONS,
    RUNS_DIR,
)
from storage.sources import is_url, redact
from storage.store import open_store, public

BY = (CHAMPION_BY_NAME, CHAMPION_BY_COLUMNS)


def recorded(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> str:
    """``path`` as the store at ``root`` records it: relative to the root when it lies inside (on an object
    store: an artifact's URL under the root, or its scratch copy), else as given (redacted)."""
    try:
        return open_store(root).relative(path)
    except ValueError:
        return redact(public(path))


def is_relative(entry: str) -> bool:
    """Whether a recorded name is relative to the store (neither a URL nor an absolute path)."""
    return not is_url(entry) and not Path(entry).is_absolute()


def resolved(root: str | os.PathLike[str] | None, entry: str) -> str:
    """A recorded name as a path (or URL) to open now: a relative one joined to ``root``; anything else as it is.

    ValueError for a relative name that would leave the store (``..``), or when the store is not known.
    """
    if not is_relative(entry):
        return entry
    parts = PurePosixPath(entry)
    if ".." in parts.parts:
        raise ValueError(f"{entry!r} points outside the store")
    if root is None:
        raise ValueError(f"{entry!r} is relative to a store, and no store holds the file that names it")
    return open_store(root).path(parts.as_posix())


def store_of(path: str | os.PathLike[str]) -> str | None:
    """The root of the store that holds ``path``, from where the store puts its files (no file is read):
    ``<root>/<stage>/<key>/<file>`` (an artifact), ``<root>/runs/<record>``,
    ``<root>/champion/<by-name|by-columns>/<model>/gen/<n>.json`` (an alias's
    ``…/<model>/aliases/<alias>/gen/<n>.json``), from before 2026-12-10
    ``<root>/champion/gen/<n>.json``, ``<root>/champion/champion.json`` (a folder's pointer before 2026-12-02); the
    same on disk and on an object store. None for a shorter path."""
    parts = str(path).rstrip("/").split("/")
    alias = len(parts) > 7 and parts[-7] == CHAMPION_DIR and parts[-6] in BY and parts[-4] == CHAMPION_ALIASES
    if alias and parts[-2] == CHAMPION_GENERATIONS:
        depth = 7
    elif len(parts) > 5 and parts[-5] == CHAMPION_DIR and parts[-4] in BY and parts[-2] == CHAMPION_GENERATIONS:
        depth = 5
    elif len(parts) > 3 and parts[-3:-1] == [CHAMPION_DIR, CHAMPION_GENERATIONS]:
        depth = 3
    elif len(parts) > 2 and parts[-2] in (RUNS_DIR, CHAMPION_DIR):
        depth = 2
    else:
        depth = 3
    root = "/".join(parts[:-depth])
    return root if len(parts) > depth and root.strip("/") and not root.endswith(":/") else None
