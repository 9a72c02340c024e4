"""Where stage artifacts live, how they are named, hashed, described, written, verified and read.

Every artifact is written to ``<root>/<stage>/<key>/<name>`` where ``key`` hashes everything that decides its
bytes: the stage, its parameters, the sha256 of its input files, the source of the code that made it and the
versions of the libraries that write the bytes. Two runs that would write different bytes therefore never share
a file, and a run that would write the same bytes writes to the same place.

Beside each artifact lies ``<name>.manifest.json``: its sha256, size, format and schema, and the stage, key,
parameters and inputs (path and sha256) that produced it. Every read verifies the file against its manifest, so
a missing, truncated or altered artifact is reported instead of being used. Writes go to a temporary file in the
same folder and are renamed into place, so a crash never leaves a half-written file under a final name.
"""

from __future__ import annotations

import ast
import contextvars
import dataclasses
import datetime as dt
import functools
import hashlib
import inspect
import io
import itertools
import json
import os
import pickle
import platform
import re
import socket
import stat
import struct
import tempfile
import threading
import typing
import urllib.parse
import zipfile
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tasks.errors import InputError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = PROJECT_ROOT / "data" / "Advertising.csv"
DEFAULT_ROOT = PROJECT_ROOT / "data" / "artifacts"
ROOT_ENV = "LINREG_ARTIFACTS_DIR"
MARKER = ".linreg-store"  # marks a folder as an artifacts store (JSON naming the store), written at creation
STORE_NAME, STORE_VERSION = "linreg-flow", 1
CACHE_DIR = ".cache"  # the stages' cache records and locks (see tasks/cache.py)
RUNS_DIR = "runs"  # one JSON run record per flow run
MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_VERSION = 1
# Packages whose versions a manifest records: those that write the bytes, and those that compute them.
PACKAGES = ("torch", "pyarrow", "numpy", "pandas", "scikit-learn", "matplotlib", "prefect")

_CHUNK = 1 << 20
R = TypeVar("R")
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"  # in temporary files' names, with the pid
_TEMP_OWNER = re.compile(r"\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[^.]+\.tmp$")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class IntegrityError(InputError):
    """An artifact is missing, or does not match its manifest (truncated, altered, or never finished)."""


def artifacts_root(override: str | os.PathLike[str] | None = None) -> Path:
    """The absolute artifacts folder: the override, else ``$LINREG_ARTIFACTS_DIR``, else ``data/artifacts``.

    Absolute, so a worker that runs the flow from a temporary directory writes to the same place.
    """
    chosen = override or os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    return Path(chosen).expanduser().resolve()


def prepare_root(override: str | os.PathLike[str] | None = None) -> Path:
    """The artifacts folder, created and marked as a store, proven writable; a one-line error if not.

    A folder becomes a store only when this creates it, or when it is empty: a non-empty folder without the
    store's marker is someone's own folder, and the store refuses it rather than mixing its files (and, later,
    ``--clean-artifacts``) into it. Temporary files that a killed run left behind are removed here.
    """
    root = artifacts_root(override)
    if root.exists() and not root.is_dir():
        raise InputError(f"artifacts folder {root} is a file, not a folder; pass --artifacts-dir with a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
        _mark(root)
        fd, probe = tempfile.mkstemp(dir=root, prefix=".probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(
            f"artifacts folder {root} is not writable ({exc.strerror}); pass --artifacts-dir with a writable folder"
        ) from None
    sweep_temporary_files(root)
    return root


def _mark(root: Path) -> None:
    """Write the store's marker into an empty folder (or an old, empty marker into a folder that holds only
    store entries); refuse any other folder that lacks it."""
    marker = root / MARKER
    if _marker_ok(marker):
        return
    foreign = sorted(entry.name for entry in root.iterdir() if not _store_entry(entry))
    if foreign:
        shown = ", ".join(foreign[:3]) + (" …" if len(foreign) > 3 else "")
        raise InputError(
            f"artifacts folder {root} already holds files the store did not write ({shown}); "
            "pass --artifacts-dir with a new or empty folder"
        )
    content = {"store": STORE_NAME, "version": STORE_VERSION, "created": dt.datetime.now(dt.UTC).isoformat()}
    write_json(content, marker)


def _marker_ok(marker: Path) -> bool:
    """Whether ``marker`` is this store's marker (plain JSON naming the store)."""
    try:
        with open(marker, "rb") as fh:
            content = json.loads(fh.read(4096))
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and content.get("store") == STORE_NAME


_KEY = r"[0-9a-f]{16}"  # a stage key, as `stage_key` writes it
_KEY_FOLDER = re.compile(rf"{_KEY}(\.\d+)?")
_TEMPORARY = re.compile(r"\..+\.tmp")


def _store_entry(entry: Path) -> bool:
    """Whether a top-level entry of a folder is one the store writes (marker, cache, runs, a stage's folder)."""
    if entry.name in (MARKER, CACHE_DIR, RUNS_DIR):
        return True
    if _TEMPORARY.fullmatch(entry.name) and entry.is_file():
        return True
    return entry.name in Stage.names and entry.is_dir() and all(_KEY_FOLDER.fullmatch(e.name) for e in entry.iterdir())


def clear(override: str | os.PathLike[str] | None = None) -> tuple[Path, int]:
    """Delete what the store wrote (artifacts with their manifests, cache and run records, its marker) and
    nothing else: a file of the user's inside the folder survives, and so does the folder then. Returns
    (root, number of files deleted)."""
    root = artifacts_root(override)
    if not root.exists():
        raise InputError(f"{root}: no such folder; nothing to delete")
    if not root.is_dir():
        raise InputError(f"{root} is a file, not an artifacts folder; not deleting it")
    if not (root / MARKER).is_file():
        raise InputError(f"{root} does not look like an artifacts folder (no {MARKER} file in it); not deleting it")
    deleted = 0
    for entry in root.iterdir():
        if entry.is_symlink() or not entry.is_dir():
            continue
        if entry.name in Stage.names:
            for folder in entry.iterdir():
                if folder.is_dir() and not folder.is_symlink() and _KEY_FOLDER.fullmatch(folder.name):
                    deleted += _delete_files(folder, _artifact_files(folder))
        elif entry.name == CACHE_DIR:
            for folder in entry.iterdir():
                if folder.is_dir() and not folder.is_symlink() and folder.name in Stage.names:
                    deleted += _delete_files(folder, [f for f in folder.iterdir() if _cache_file(f.name)])
        elif entry.name == RUNS_DIR:
            deleted += _delete_files(entry, [f for f in entry.iterdir() if f.suffix == ".json"])
        with suppress(OSError):
            entry.rmdir()  # once emptied; a folder that still holds a file of the user's stays
    deleted += _delete_files(root, [f for f in root.iterdir() if _TEMPORARY.fullmatch(f.name)])
    (root / MARKER).unlink(missing_ok=True)
    with suppress(OSError):
        root.rmdir()
    return root, deleted + 1


def _artifact_files(folder: Path) -> list[Path]:
    """The files of a stage folder the store wrote: manifests, the artifacts they describe, temporary files."""
    files = [f for f in folder.iterdir() if f.is_file() and not f.is_symlink()]
    manifests = {f.name for f in files if f.name.endswith(MANIFEST_SUFFIX)}
    return [
        f for f in files if f.name in manifests or f.name + MANIFEST_SUFFIX in manifests or _TEMPORARY.fullmatch(f.name)
    ]


def _cache_file(name: str) -> bool:
    stem = name.split(".", 1)[0]
    return bool(re.fullmatch(_KEY, stem)) and name[len(stem) :] in ("", ".json", ".lock")


def _delete_files(folder: Path, files: Iterable[Path]) -> int:
    count = 0
    for file in files:
        if file.is_file() and not file.is_symlink():
            file.unlink()
            count += 1
    with suppress(OSError):
        folder.rmdir()  # once emptied
    return count


def sweep_temporary_files(root: Path) -> int:
    """Delete the temporary files of writers that died on this host (a ``kill -9`` mid-write leaves them).

    A temporary file's name carries its writer's host and pid; a file whose writer is still alive, or runs on
    another host sharing the folder, is left alone.
    """
    removed = 0
    for path in root.rglob(".*.tmp"):
        match = _TEMP_OWNER.search(path.name)
        if match is None or match["host"] != _HOST or _alive(int(match["pid"])):
            continue
        with suppress(OSError):
            path.unlink()
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        pass
    return True


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


REDACTED = "REDACTED"


def redact(value: str) -> str:
    """A URL fit to record: the password of ``user:password@`` and every query value replaced by REDACTED.

    Signed URLs and tokens travel in the query (``?token=…``, ``X-Amz-Signature=…``) or the userinfo; none of
    it is needed to trace a run, which records the content's sha256. Anything that is not a URL is unchanged.
    """
    if "://" not in value:
        return value
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{host}" if ":" in userinfo else f"{REDACTED}@{host}"
    query = "&".join(f"{name}={REDACTED}" for name, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    if parts.query and not query:
        query = REDACTED
    fragment = REDACTED if parts.fragment else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def redact_all(obj: Any) -> Any:
    """``obj`` (parameters, a record) with every string in it passed through `redact`."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, Mapping):
        return {k: redact_all(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact_all(v) for v in obj]
    return obj


def data_source(data: str | None) -> str:
    """The CSV to read: a URL as given, a local path made absolute, or the shipped Advertising file."""
    if data is None:
        return str(DEFAULT_DATA)
    if is_url(data):
        return data
    return str(Path(data).expanduser().resolve())


PARQUET_SUFFIXES = (".parquet", ".pq")  # read as Parquet; anything else as CSV
PARTITION_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", *PARQUET_SUFFIXES)  # the files a partitioned folder contributes
_GLOB_CHARS = re.compile(r"[*?\[]")


def is_partitioned(data: str | None) -> bool:
    """Whether ``data`` names several files: a folder, or a glob pattern (``*``, ``?``, ``[...]``)."""
    if data is None or is_url(data):
        return False
    return bool(_GLOB_CHARS.search(data)) or Path(data).expanduser().is_dir()


def partition_sources(data: str) -> list[str]:
    """The files of a partitioned input, as sorted absolute paths: a folder's CSV and Parquet files, or a glob's.

    Sorted by path, so the partitions (and the global row order the split relies on) are the same every run.
    """
    path = Path(data).expanduser()
    if path.is_dir():
        found = [p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(PARTITION_SUFFIXES)]
        where = f"folder {data}"
    else:
        anchor = Path(path.anchor) if path.is_absolute() else Path.cwd()
        pattern = str(path.relative_to(path.anchor)) if path.is_absolute() else str(path)
        found = [p for p in anchor.glob(pattern) if p.is_file()]
        where = f"pattern {data}"
    if not found:
        kinds = ", ".join(PARTITION_SUFFIXES)
        raise InputError(f"{where} matches no data files ({kinds}); pass --data with a CSV, a folder or a glob")
    return sorted(str(p.resolve()) for p in found)


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
HASHING = {"files": 0, "bytes": 0, "lookups": 0}  # this process's sha256 work: for the bench, and its tests


PROJECT_PACKAGES = ("tasks", "flows")  # the project's own code, whose every line a stage runs is in its key


def code_digest(module: str) -> str:
    """sha256 of the source of ``module`` and of every project module it imports, directly or through others.

    A stage runs more code than its own module: `accumulate` runs `Stats.of` from tasks/train.py, every stage
    runs tasks/store.py. Hashing the whole import closure means an edit to any of them re-runs exactly the
    stages that can run the edited code (tests/test_code_keys.py).
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
    tree = ast.parse(_source(path, mtime_ns, size), filename=str(path))
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


def _plain(value: Any) -> Any:
    """Parameters as JSON-able values (a dataclass config becomes its dict)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def _listed(name: str, paths: Iterable[str]) -> dict[str, str]:
    """A list of input files (one per partition) as ``{"name[0]": path, ...}``."""
    return {f"{name}[{i}]": str(path) for i, path in enumerate(paths)}


FILE, FILES = "linreg:file", "linreg:files"
File = Annotated[str, FILE]  # a stage argument that is an input file: keyed by its content, not its path
Files = Annotated[list[str], FILES]  # a list of input files (one per partition)
ROOT_ARGUMENT = "root"  # where the store is: not part of what a stage computes


def stage(name: str) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Declare a stage function once, by its typed signature: ``File``/``Files`` arguments are inputs keyed by
    content, every other argument but ``root`` is a parameter in the key. Nothing is listed by hand.

    Inside the function, `outputs` gives the writer for this very call's folder, so the arguments are never
    written out again either. The declaration is the function's ``.stage`` (and its Prefect task's
    ``.fn.stage``), which the cache keys on (tasks/cache.py).
    """

    def declare(fn: Callable[..., R]) -> Callable[..., R]:
        hints = typing.get_type_hints(fn, include_extras=True)
        signature = inspect.signature(fn)
        if ROOT_ARGUMENT not in signature.parameters:
            raise TypeError(f"stage {name}: {fn.__qualname__} needs a `root: str` argument (the store)")
        files = tuple(p for p in signature.parameters if _is_file_argument(hints.get(p)))
        params = tuple(p for p in signature.parameters if p not in files and p != ROOT_ARGUMENT)
        declared = Stage(name, fn.__module__, params=params, files=files)

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> R:
            return _call_declared(declared, fn, args, kwargs)

        call.stage = declared  # type: ignore[attr-defined]
        return call

    return declare


def _call_declared(declared: Stage, fn: Callable[..., R], args: tuple, kwargs: dict) -> R:
    """Run a declared stage function with its call's arguments known to `outputs`. At module level, so a
    stage shipped to a Dask worker pickles this by reference (a ContextVar cannot be pickled by value)."""
    bound = inspect.signature(fn).bind(*args, **kwargs)
    bound.apply_defaults()
    token = _CALL.set((declared, dict(bound.arguments)))
    try:
        return fn(*args, **kwargs)
    finally:
        _CALL.reset(token)


def _is_file_argument(hint: Any) -> bool:
    return any(marker in getattr(hint, "__metadata__", ()) for marker in (FILE, FILES))


_CALL: contextvars.ContextVar[tuple[Stage, dict[str, Any]]] = contextvars.ContextVar("linreg_stage_call")


def outputs(digests: Mapping[str, str] | None = None) -> Outputs:
    """The writer for the running stage call's outputs: ``<root>/<stage>/<key>/``, keyed on this call's
    arguments (``digests``: the sha256 of an input already hashed, e.g. a download)."""
    try:
        declared, args = _CALL.get()
    except LookupError:
        raise RuntimeError("store.outputs() is for the body of a function declared with @store.stage") from None
    return declared.outputs(args[ROOT_ARGUMENT], args, digests)


@dataclass(frozen=True)
class Stage:
    """What decides one stage's output: which of its arguments are parameters and which are input files.

    Made by `stage` from the function's signature. The task and the cache both derive the stage's key from
    the call's arguments through this one description, so the folder a task writes to and the cache record
    that points at it always agree.
    """

    name: str
    module: str  # the stage module, whose source is part of the key
    params: tuple[str, ...] = ()
    files: tuple[str, ...] = ()  # arguments that are input file paths (or lists of them), keyed by content

    names: ClassVar[set[str]] = set()  # every stage's name: the top-level folders a store may hold

    def __post_init__(self) -> None:
        Stage.names.add(self.name)

    def parameters(self, args: Mapping[str, Any]) -> dict[str, Any]:
        return {name: _plain(args[name]) for name in self.params}

    def inputs(self, args: Mapping[str, Any], digests: Mapping[str, str] | None = None) -> list[dict[str, str]] | None:
        """``[{name, path, sha256}]`` for the input files; None when one is a URL (unknown until downloaded)."""
        out = []
        for name in self.files:
            value = args[name]
            paths = {name: str(value)} if isinstance(value, str | os.PathLike) else _listed(name, value)
            for label, path in paths.items():
                if digests and label in digests:
                    sha = digests[label]
                elif is_url(path):
                    return None
                else:
                    sha = sha256_file(path)
                out.append({"name": label, "path": redact(path), "sha256": sha})
        return out

    def key(self, args: Mapping[str, Any], digests: Mapping[str, str] | None = None) -> str | None:
        """The stage's content key for these task arguments (None when an input is a URL)."""
        inputs = self.inputs(args, digests)
        if inputs is None:
            return None
        return self._key(self.parameters(args), inputs)

    def _key(self, params: Mapping[str, Any], inputs: list[dict[str, str]]) -> str:
        code = code_digest(self.module)
        return stage_key(self.name, params, [i["sha256"] for i in inputs], code)

    def outputs(
        self, root: str | os.PathLike[str], args: Mapping[str, Any], digests: Mapping[str, str] | None = None
    ) -> Outputs:
        """The writer for this stage's outputs under ``<root>/<stage>/<key>/``, folder created on demand."""
        params = self.parameters(args)
        inputs = self.inputs(args, digests)
        if inputs is None:
            raise ValueError(f"stage {self.name}: pass the digest of every URL input")
        key = self._key(params, inputs)
        try:
            folder = new_folder(Path(root) / self.name / key)
        except OSError as exc:
            raise InputError(
                f"artifacts folder {Path(root)} is not writable ({exc.strerror}); pass --artifacts-dir"
            ) from None
        return Outputs(folder, self.name, key, params, inputs)


def new_folder(base: Path) -> Path:
    """An empty folder for one run of a stage: ``<key>``, or ``<key>.1``, ``<key>.2``… when it is taken.

    Artifacts are written once and never replaced: a rebuild (``--refresh``, a damaged file, a lost record)
    goes to a new folder, so a run record or a concurrent run that uses the earlier files still finds them as
    they were. An empty folder is one a failed run left, and is reused.
    """
    for n in itertools.count():
        folder = base if n == 0 else base.with_name(f"{base.name}.{n}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            if folder.is_dir() and not any(folder.iterdir()):
                return folder
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Outputs:
    """Writes one stage's artifacts, each atomically and with its manifest beside it."""

    folder: Path
    stage: str
    key: str
    params: dict[str, Any]
    inputs: list[dict[str, str]]

    def write_parquet(self, table: pa.Table, name: str) -> str:
        return self._write(name, "parquet", lambda tmp: pq.write_table(table, tmp))

    def write_pt(self, obj: Mapping[str, Any], name: str) -> str:
        # Saved through memory: torch.save to a path names the archive's folder after the (random) temp file,
        # so the same tensors would give different bytes, and a rebuild a different key downstream.
        buffer = io.BytesIO()
        torch.save(dict(obj), buffer)
        return self._write(name, "pt", lambda tmp: tmp.write_bytes(buffer.getvalue()), schema=describe_pt(obj))

    def write_json(self, obj: Any, name: str) -> str:
        return self._write(name, "json", lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))

    def write_png(self, data: bytes, name: str) -> str:
        if not data.startswith(_PNG_SIGNATURE):
            raise ValueError(f"{name}: not PNG bytes")
        return self._write(name, "png", lambda tmp: tmp.write_bytes(data))

    def _write(self, name: str, fmt: str, writer: Callable[[Path], None], schema: dict | None = None) -> str:
        with atomic_path(self.folder / name) as tmp:
            writer(tmp)
        return self.record(name, fmt, schema)

    def record(self, name: str, fmt: str, schema: dict[str, Any] | None = None) -> str:
        """Write the manifest of ``name``, a file this stage has just put (atomically) into its folder.

        The artifact lands first and its manifest second: a crash in between leaves an artifact without a
        manifest, which every read and every cache check treats as missing, so the stage runs again.
        """
        final = self.folder / name
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "file": name,
            "sha256": sha256_file(final),
            "size": final.stat().st_size,
            "format": fmt,
            "schema": schema if schema is not None else describe_schema(final, fmt),
            "stage": self.stage,
            "key": self.key,
            "params": self.params,
            "inputs": self.inputs,
            "versions": versions(),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        write_json(manifest, manifest_path(final))
        return str(final)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def describe_schema(path: Path, fmt: str) -> dict[str, Any]:
    """What a reader can rely on: Parquet columns and dtypes, tensor names/shapes/dtypes, PNG size, JSON keys."""
    if fmt == "parquet":
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
        return {"rows": meta.num_rows, "columns": [{"name": f.name, "type": str(f.type)} for f in schema]}
    if fmt == "pt":
        return describe_pt(torch.load(path, map_location="cpu", weights_only=True))
    if fmt == "png":
        head = path.read_bytes()[:24]
        width, height = struct.unpack(">II", head[16:24])
        return {"width": width, "height": height}
    if fmt == "json":
        obj = json.loads(path.read_text())
        return {"keys": sorted(obj)} if isinstance(obj, dict) else {"type": type(obj).__name__}
    raise ValueError(f"unknown artifact format {fmt!r}")


def describe_pt(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Entry names of a ``.pt`` dict, with shape and dtype for tensors and the type of anything else."""
    out: dict[str, Any] = {}
    for name, value in obj.items():
        if isinstance(value, torch.Tensor):
            out[name] = {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
        else:
            out[name] = {"type": type(value).__name__}
    return {"entries": out}


def manifest_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path.with_name(path.name + MANIFEST_SUFFIX)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of ``path`` (an artifact); IntegrityError when it is missing or unreadable."""
    mpath = manifest_path(path)
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise IntegrityError(f"{path}: no manifest ({mpath.name} is missing)") from None
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"{path}: manifest {mpath.name} is unreadable ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("sha256"), str):
        raise IntegrityError(f"{path}: manifest {mpath.name} has no sha256")
    return manifest


def verify(path: str | os.PathLike[str], key: str | None = None, load: bool = False) -> dict[str, Any]:
    """Check ``path`` against its manifest (and, if given, that it was produced under ``key``); its manifest.

    Raises IntegrityError saying what is wrong: missing file, missing manifest, size or sha256 mismatch. With
    ``load``, a ``.pt`` must also load under ``weights_only`` with the entries its manifest lists: a file whose
    manifest was made to match is still refused if torch would refuse it.
    """
    path = Path(path)
    if not path.is_file():
        raise IntegrityError(f"{path}: file is missing")
    manifest = read_manifest(path)
    if key is not None and manifest.get("key") != key:
        raise IntegrityError(f"{path}: was produced under key {manifest.get('key')}, not {key}")
    size = path.stat().st_size
    if size != manifest.get("size"):
        raise IntegrityError(f"{path}: size {size} bytes, manifest says {manifest.get('size')} (truncated?)")
    actual = sha256_file(path)
    if actual != manifest["sha256"]:
        raise IntegrityError(f"{path}: sha256 {actual[:12]}… does not match its manifest ({manifest['sha256'][:12]}…)")
    if load and manifest.get("format") == "pt":
        schema = describe_pt(_load_pt(path, mmap=True))
        if schema != manifest.get("schema"):
            raise IntegrityError(f"{path}: its entries do not match its manifest's schema")
    return manifest


def _load_pt(path: str | os.PathLike[str], mmap: bool = False) -> dict[str, Any]:
    """``torch.load`` with ``weights_only`` (never unpickles arbitrary objects); a refused file is an
    IntegrityError. ``mmap`` maps the tensors instead of reading them, for a cheap check."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, AttributeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IntegrityError(f"{path}: torch refuses to load it under weights_only ({reason[:200]})") from None
    if not isinstance(obj, dict):
        raise IntegrityError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    return obj


def _verified(path: str | os.PathLike[str]) -> None:
    try:
        verify(path)
    except IntegrityError as exc:
        raise IntegrityError(f"{exc}; run the flow again to rebuild it (--refresh rebuilds every stage)") from None


def read_parquet(path: str | os.PathLike[str]) -> pa.Table:
    _verified(path)
    return pq.read_table(path)


def open_parquet(path: str | os.PathLike[str]) -> pq.ParquetFile:
    """A verified Parquet file, for readers that take one column or row group at a time."""
    _verified(path)
    return pq.ParquetFile(path)


def read_pt(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a stage's ``.pt`` file, verified, without unpickling arbitrary objects."""
    _verified(path)
    try:
        return _load_pt(path)
    except IntegrityError as exc:
        raise IntegrityError(f"{exc}; run the flow again with --refresh to rebuild it") from None


def read_json(path: str | os.PathLike[str]) -> Any:
    _verified(path)
    return json.loads(Path(path).read_text())


def discard_if_empty(folder: Path) -> None:
    """Remove a stage folder that a failed stage created but never wrote to."""
    with suppress(OSError):  # not empty (an earlier run's complete output) or already gone
        folder.rmdir()


@contextmanager
def atomic_path(final: Path):
    """Yield a temporary path beside ``final``; rename it over ``final`` only if the block succeeds."""
    try:
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.{_HOST}-{os.getpid()}.", suffix=".tmp")
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


def png_bytes(figure: Any) -> bytes:
    """Render a matplotlib figure to PNG bytes (kept in memory so the write stays atomic)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def describe(path: str | os.PathLike[str]) -> str:
    """``path (12.3 kB)`` for log lines."""
    size = Path(path).stat().st_size
    return f"{path} ({size / 1000:.1f} kB)"


# --- run records -----------------------------------------------------------------------------------


def write_run_record(
    root: str | os.PathLike[str],
    run_id: str,
    params: Mapping[str, Any],
    artifacts: Mapping[str, Mapping[str, str]],
    cached: Mapping[str, bool],
) -> str:
    """``<root>/runs/<time>-<run id>.json``: the run's parameters and, per stage, its key and verified artifacts."""
    stages: dict[str, Any] = {}
    for stage, files in artifacts.items():
        entries = {}
        key = None
        for name, path in files.items():
            manifest = verify(path)
            key = manifest["key"]
            entries[name] = {"path": str(path), "sha256": manifest["sha256"], "size": manifest["size"]}
        stages[stage] = {"key": key, "cached": bool(cached.get(stage, False)), "artifacts": entries}
    now = dt.datetime.now(dt.UTC)
    record = {
        "run_id": run_id,
        "finished": now.isoformat(timespec="seconds"),
        "params": redact_all(dict(params)),
        "stages": stages,
        "versions": versions(),
    }
    folder = Path(root) / RUNS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return write_json(record, folder / f"{now:%Y%m%dT%H%M%S}-{run_id}.json")
