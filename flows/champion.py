"""Where the champion model is: a stand-in reader of ``<root>/champion/champion.json`` for the predict flow.

The promote stage (``tasks/promote.py``, being written) owns the pointer and will provide
``champion_model_path``; this module parses the same fixed shape until then, and is replaced by it at merge.
The pointer is plain JSON, never unpickled, and may only name a file inside the store.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from stagecore.errors import InputError

CHAMPION_FILE = Path("champion") / "champion.json"
FIELDS = {
    "champion_version": int,
    "model": str,
    "model_sha256": str,
    "flow_run_id": str,
    "features": list,
    "target": str,
    "test_mse": (int, float),
    "promoted_at": str,
}


def read_champion(root: str | Path) -> dict | None:
    """The champion pointer, checked against its fixed shape; None when nothing has been promoted yet."""
    path = Path(root) / CHAMPION_FILE
    if not path.is_file():
        return None
    try:
        pointer = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot be read as the champion pointer ({exc})") from None
    if not isinstance(pointer, dict) or set(pointer) != set(FIELDS):
        raise InputError(f"{path}: is not a champion pointer (fields {sorted(FIELDS)} expected)")
    for name, kind in FIELDS.items():
        if not isinstance(pointer[name], kind) or isinstance(pointer[name], bool):
            raise InputError(f"{path}: field {name!r} of the champion pointer has the wrong type")
    return pointer


def champion_model_path(root: str | Path) -> str | None:
    """The absolute path of the champion's ``model.pt``, which must stay inside ``root``; None: no champion."""
    pointer = read_champion(root)
    if pointer is None:
        return None
    relative = PurePosixPath(pointer["model"])
    base = Path(root).resolve()
    path = (base / Path(*relative.parts)).resolve() if relative.parts else base
    if relative.is_absolute() or ".." in relative.parts or not path.is_relative_to(base) or path == base:
        raise InputError(f"{Path(root) / CHAMPION_FILE}: model {pointer['model']!r} is not a path inside {base}")
    return str(path)
