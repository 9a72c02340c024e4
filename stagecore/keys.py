"""A stage's content key: its parameters, its inputs' digests, the source of all project code it can run, and
the versions of the libraries that shape its bytes.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import json
import threading
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from storage.project import PROJECT_PACKAGES, PROJECT_ROOT


def code_digest(module: str) -> str:
    """sha256 of the source of ``module`` and of every project module it imports, directly or through others.

    A stage runs more code than its own module: `accumulate` runs `Stats.of` from linreg/stats.py, every stage
    runs the stage core. Hashing the whole import closure means an edit to any of them re-runs exactly the
    stages that can run the edited code (tests/test_code_keys.py). A package's ``__init__`` is in the closure of
    every import of its submodules, with all it imports: linreg's imports nothing, so each stage's key holds only
    the library modules that stage imports.
    """
    digest = hashlib.sha256()
    with _PARSING:
        closure = import_closure(module)
    for name in closure:
        path = _module_file(name)
        digest.update(f"{name}\0".encode())
        digest.update(_source(path, *_stamp(path)))
    return digest.hexdigest()


# CPython 3.11's ast.parse is not thread-safe ("AST constructor recursion depth mismatch" when two threads
# parse at once), and partitions' stages compute their keys on parallel threads.
_PARSING = threading.Lock()


def import_closure(module: str) -> list[str]:
    """The project modules ``module`` imports (anywhere in its source, any form of import), transitively, sorted."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        todo += _imports(name, path, *_stamp(path))
    return sorted(seen)


def _module_file(name: str) -> Path:
    base = PROJECT_ROOT.joinpath(*name.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _stamp(path: Path) -> tuple[int, int]:
    """What the per-process memo below is keyed on besides the path: an edit changes it."""
    info = path.stat()
    return info.st_mtime_ns, info.st_size


@functools.lru_cache(maxsize=256)
def _source(path: Path, mtime_ns: int, size: int) -> bytes:
    return path.read_bytes()


@functools.lru_cache(maxsize=256)
def _imports(name: str, path: Path, mtime_ns: int, size: int) -> tuple[str, ...]:
    """The project modules (and packages) that ``name``'s source imports."""
    tree = _parse(_source(path, mtime_ns, size), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            candidates = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for candidate in candidates:
            parts = candidate.split(".")
            # `import tasks.train` runs tasks/__init__.py too: every package on the way counts
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if parts[0] in PROJECT_PACKAGES and _is_module(prefix):
                    found.add(prefix)
    return tuple(sorted(found))


def _parse(source: bytes, filename: str) -> ast.Module:
    """``ast.parse``, tried again when CPython 3.11 reports the parser race with a thread outside `_PARSING`
    (a library's own thread, e.g. fsspec's I/O loop, that compiles code at the same moment)."""
    for attempt in range(3):
        try:
            return ast.parse(source, filename=filename)
        except SystemError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _is_module(name: str) -> bool:
    return _module_file(name).is_file()


@functools.cache
def library_versions() -> dict[str, str]:
    """Versions of the libraries whose code decides a stage's output bytes (torch and pyarrow write them, numpy
    draws the split, matplotlib draws the plots), read from package metadata without importing them."""
    return {name: _version(name) for name in ("torch", "pyarrow", "numpy", "matplotlib")}


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def stage_key(stage: str, params: Mapping[str, Any], inputs: Iterable[str], code: str) -> str:
    """A short content hash of one stage's work: stage name, parameters, sha256 of its inputs, code, versions."""
    payload = {
        "stage": stage,
        "params": params,
        "inputs": list(inputs),
        "code": code,
        "versions": library_versions(),
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def plain(value: Any) -> Any:
    """Parameters as JSON-able values (a dataclass config becomes its dict)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value
