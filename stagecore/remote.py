"""Artifacts on object storage (``s3://``, ``gs://``, ``az://``, … through fsspec): the store behind a URL root.

Stages compute on local files as they always have, in a per-process scratch folder that mirrors the store's
layout; this module moves whole files between that folder and the store with fsspec's streaming
``put_file``/``get_file`` (multipart on S3), so no big file is ever buffered whole. What is written where, and
in which order, is the local store's: the artifact, then its manifest, then (after every output) the cache
record. On an object store one PUT is atomic (a multipart upload appears only once completed), so a run
killed mid-upload leaves no object under a final name, or an artifact without a manifest, which every read
treats as missing.

Without ``flock``, exclusion comes from conditional writes (``If-None-Match: *``): a stage folder is claimed
by creating its ``.claim`` object (two runs never write into one folder), and a cache record is created only
if there is none. Two runs computing the same key both compute it, into different folders; the first record
wins and both runs' outputs stay whole. See docs/storage.md.

Credentials and endpoints come from the standard places (``AWS_*`` variables, ``~/.aws``, ``AWS_ENDPOINT_URL``)
through fsspec's own backends; nothing here reads, logs or records them.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import errno
import functools
import hashlib
import itertools
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import fsspec
from fsspec.spec import AbstractFileSystem

from stagecore.atomic import atomic_path
from stagecore.errors import InputError, IntegrityError
from stagecore.keys import KEY_PATTERN

CLAIM = ".claim"  # the first object of a stage folder on an object store: whoever creates it owns the folder

_CHUNK = 1 << 20

# How often, and how long, the S3 client tries before a store counts as unreachable: botocore's "standard"
# retries (3 attempts, jittered backoff) and a 5 s connect timeout. botocore's default (legacy mode, 5 attempts)
# took 10 s per call against a closed port, and a run makes dozens of calls. AWS_MAX_ATTEMPTS/AWS_RETRY_MODE, or
# fsspec's own config (``fsspec.config.conf["s3"]["config_kwargs"]``), override these.
S3_CONFIG = {"retries": {"max_attempts": 3, "mode": "standard"}, "connect_timeout": 5}

R = TypeVar("R")


def is_remote(root: str | os.PathLike[str]) -> bool:
    """Whether ``root`` is a URL of a store other than the local disk (``file://`` counts as local)."""
    text = str(root)
    return "://" in text and not text.startswith(("file://", "local://"))


def local_path(url: str) -> str:
    """``file:///a/b`` → ``/a/b``; anything else unchanged."""
    return fsspec.core.url_to_fs(url)[1] if url.startswith(("file://", "local://")) else url


def filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """The one filesystem interface: fsspec's (fs, path) for ``url``; a one-line error for an unknown scheme."""
    try:
        return fsspec.core.url_to_fs(url, **_options(url))
    except (ImportError, ValueError) as exc:
        scheme = url.split("://", 1)[0]
        raise InputError(f"{url}: no storage backend for {scheme}:// ({exc}); install its fsspec package") from None


def _options(url: str) -> dict[str, Any]:
    """Storage options for ``url``'s backend: on S3, `S3_CONFIG` under whatever the user configured."""
    if not url.startswith(("s3://", "s3a://")):
        return {}
    configured = fsspec.config.conf.get("s3", {}).get("config_kwargs", {})
    defaults = copy.deepcopy(S3_CONFIG)  # botocore rewrites the retries dict it is given (max → total_max_attempts)
    if os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE"):
        defaults.pop("retries")  # botocore reads them, unless a client config says otherwise
    return {"config_kwargs": {**defaults, **configured}}


class StoreUnreachable(ConnectionError, InputError):
    """A store's transport failed: the endpoint is closed or unreachable, the connection dropped, a request
    timed out (botocore's and aiohttp's own exceptions, which are not OSErrors, after the client's retries).

    An OSError, so every caller that turns a store's OSError into `storage_error` names its own store; and an
    `InputError`, so a path that does not still ends in one line. Never taken for a missing or damaged file.
    """

    def __init__(self, url: str, reason: str):
        super().__init__(
            f"object store bucket {bucket(url)!r} cannot be reached ({reason}); check AWS_ENDPOINT_URL and the network"
        )
        self.url, self.reason = url, reason

    def __reduce__(self):  # pickled across processes (Dask) and by Prefect: rebuilt from its arguments
        return type(self), (self.url, self.reason)


def _transport(exc: BaseException) -> bool:
    """Whether ``exc`` is a backend's transport failure that is no OSError (botocore's, aiobotocore's, aiohttp's)."""
    return not isinstance(exc, OSError) and type(exc).__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp")


@contextlib.contextmanager
def translated(url: str) -> Iterator[None]:
    """Around a call to a store's backend: a transport failure becomes `StoreUnreachable` (an OSError)."""
    try:
        yield
    except Exception as exc:
        if _transport(exc):
            raise StoreUnreachable(url, _reason(exc)) from exc
        raise


def _talks(fn: Callable[..., R]) -> Callable[..., R]:
    """A function whose first argument is a store URL, its backend's transport failures `translated`."""

    @functools.wraps(fn)
    def call(url: Any, *args: Any, **kwargs: Any) -> R:
        with translated(str(url)):
            return fn(url, *args, **kwargs)

    return call


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *parts])


def bucket(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


def storage_error(
    url: str, exc: BaseException, what: str = "artifacts store", option: str = "--artifacts-dir"
) -> InputError:
    """A store failure as one line naming the bucket and what to do; never the credentials.

    ``what`` and ``option`` say whose URL it is: the artifacts store's, or ``--data``'s partitions."""
    where = f"{what} {url} (bucket {bucket(url)!r})"
    if isinstance(exc, StoreUnreachable):
        return InputError(f"{where}: cannot be reached ({exc.reason}); check AWS_ENDPOINT_URL and the network")
    if isinstance(exc, PermissionError):
        return InputError(
            f"{where}: access denied ({_reason(exc)}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws"
        )
    if isinstance(exc, FileNotFoundError):
        return InputError(f"{where}: no such bucket ({_reason(exc)}); create it or pass another {option}")
    return InputError(f"{where}: cannot be reached ({_reason(exc)}); check AWS_ENDPOINT_URL and the network")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


# --- scratch: where stages compute on local files ---------------------------------------------------------

_SCRATCH: dict[str, Path] = {}
_SCRATCH_LOCK = threading.Lock()


def scratch(url: str) -> Path:
    """This process's local mirror of the store at ``url`` (created on first use, removed at exit)."""
    url = url.rstrip("/")
    with _SCRATCH_LOCK:
        if url not in _SCRATCH:
            _SCRATCH[url] = Path(tempfile.mkdtemp(prefix="linreg-scratch-")).resolve()
        return _SCRATCH[url]


@atexit.register
def drop_scratch() -> None:
    with _SCRATCH_LOCK:
        for folder in _SCRATCH.values():
            shutil.rmtree(folder, ignore_errors=True)
        _SCRATCH.clear()


def remote_of(path: str | os.PathLike[str]) -> str | None:
    """The store URL of a local scratch file, or None for any other path."""
    resolved = Path(path)
    with _SCRATCH_LOCK:
        known = list(_SCRATCH.items())
    for url, base in known:
        if resolved.is_relative_to(base):
            return join(url, resolved.relative_to(base).as_posix())
    return None


def public(path: str | os.PathLike[str]) -> str:
    """What records, manifests and summaries name: the store URL of a scratch file, else the path itself."""
    return remote_of(path) or str(path)


def relative(root: str, path: str | os.PathLike[str]) -> str:
    """A file's path relative to the store at ``root``: a scratch file's, or an artifact URL's under ``root``."""
    text, base = str(path), root.rstrip("/") + "/"
    if is_remote(text):
        if not text.startswith(base):
            raise ValueError(f"{text} is not in the store at {root}")
        return text[len(base) :]
    return Path(path).resolve().relative_to(scratch(root)).as_posix()


# <root>/<stage>/<key folder>/<file>: where every artifact (and its manifest) lives, on any store
_ARTIFACT = re.compile(rf"(?P<root>.+)/(?P<relative>[A-Za-z_][A-Za-z0-9_]*/{KEY_PATTERN}(\.\d+)?/[^/]+)")


def artifact_of(url: str) -> tuple[str, str] | None:
    """(store root, path relative to it) of a URL shaped like an artifact; None for any other string."""
    found = _ARTIFACT.fullmatch(url) if is_remote(url) else None
    return (found["root"], found["relative"]) if found else None


def local_copy(url: str) -> Path | None:
    """Where this process's scratch mirror keeps (or would keep) the artifact at ``url``; None if not one."""
    located = artifact_of(url)
    return None if located is None else scratch(located[0]) / located[1]


# --- conditional writes and transfers ----------------------------------------------------------------------


def create(fs: AbstractFileSystem, path: str, data: bytes) -> bool:
    """Write ``data`` at ``path`` only if nothing is there (``If-None-Match: *``); False when something is.

    A backend without conditional writes falls back to check-then-write, which two writers can both pass:
    on such a store two runs may race for one folder (docs/storage.md).
    """
    with translated(fs.unstrip_protocol(path)):
        try:
            fs.pipe_file(path, data, mode="create")
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno == errno.EINVAL and "recondition" in str(exc):
                return False
            raise
        except TypeError:  # a backend whose pipe_file has no `mode`
            if fs.exists(path):
                return False
            fs.pipe_file(path, data)
            return True


@_talks
def claim_folder(root: str, stage: str, key: str) -> str:
    """The name of a new stage folder under ``root``: ``<key>``, else ``<key>.1``, ``<key>.2``…

    Write-once, as on disk: the folder is this run's once it has created the folder's ``.claim`` object, so a
    concurrent run, or a rebuild of a damaged output, never writes over files someone may be reading.
    """
    fs, base = filesystem(root)
    payload = json.dumps({"pid": os.getpid()}).encode()
    for n in itertools.count():
        name = key if n == 0 else f"{key}.{n}"
        if create(fs, f"{base}/{stage}/{name}/{CLAIM}", payload):
            return name
    raise AssertionError("unreachable")


def upload(local: str | os.PathLike[str], url: str) -> None:
    """Stream a local file to ``url`` (one PUT, or a multipart upload that appears only when complete)."""
    fs, path = filesystem(url)
    with translated(url):
        fs.put_file(str(local), path)


def download(url: str, local: Path) -> None:
    """Stream ``url`` to ``local``, atomically: a failed download leaves nothing at ``local``."""
    fs, path = filesystem(url)
    local.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(local) as tmp:
        try:
            with translated(url):
                fs.get_file(path, str(tmp))
        except StoreUnreachable:  # the store's fault, not the file's: never taken for a missing artifact
            raise
        except FileNotFoundError:  # raised inside: atomic_path would report an OSError as a write failure
            raise IntegrityError(f"{url}: file is missing") from None
        except OSError as exc:
            raise IntegrityError(f"{url}: cannot be downloaded ({_reason(exc)})") from None


def fetch(root: str, rel: str) -> Path:
    """Download ``<root>/<rel>`` into the scratch mirror; IntegrityError when it is missing or unreadable."""
    local = scratch(root) / rel
    download(join(root, rel), local)
    return local


@_talks
def read_bytes(url: str, limit: int | None = None) -> bytes | None:
    """The content of a small object (records, manifests, the marker); None when there is none."""
    fs, path = filesystem(url)
    try:
        with fs.open(path, "rb") as fh:
            return fh.read(-1 if limit is None else limit + 1)
    except FileNotFoundError:
        return None


@_talks
def write_bytes(url: str, data: bytes) -> str:
    fs, path = filesystem(url)
    fs.pipe_file(path, data)
    return url


@_talks
def exists(url: str) -> bool:
    fs, path = filesystem(url)
    try:
        return fs.exists(path)
    except StoreUnreachable:
        raise
    except (OSError, ValueError):
        return False


@_talks
def remove(url: str) -> None:
    fs, path = filesystem(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


@_talks
def size(url: str) -> int | None:
    fs, path = filesystem(url)
    try:
        return int(fs.info(path)["size"])
    except FileNotFoundError:
        return None


@_talks
def sha256(url: str) -> str:
    """sha256 of an object, streamed (lineage verifies artifacts it does not download)."""
    fs, path = filesystem(url)
    digest = hashlib.sha256()
    with fs.open(path, "rb", block_size=8 * _CHUNK) as fh:
        while chunk := fh.read(8 * _CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@_talks
def find(url: str) -> list[str]:
    """Every object under ``url``, as paths relative to it (listed afresh: another process may just have
    written one; and no listing is left cached, where fsspec would answer later lookups from it)."""
    fs, base = filesystem(url)
    base = base.rstrip("/")
    fs.invalidate_cache(base)
    try:
        return sorted(p[len(base) + 1 :] for p in fs.find(base) if p.startswith(base + "/"))
    finally:
        fs.invalidate_cache(base)


@_talks
def find_sizes(url: str) -> dict[str, int]:
    """Every object under ``url`` with its size in bytes, as paths relative to it, listed afresh."""
    fs, base = filesystem(url)
    base = base.rstrip("/")
    fs.invalidate_cache(base)
    try:
        found = fs.find(base, detail=True)
    finally:
        fs.invalidate_cache(base)
    return {p[len(base) + 1 :]: int(info.get("size") or 0) for p, info in found.items() if p.startswith(base + "/")}


@_talks
def names(url: str) -> list[str]:
    """The names of the objects directly under ``url`` (a "folder"), listed afresh; [] when there are none."""
    fs, base = filesystem(url)
    base = base.rstrip("/")
    fs.invalidate_cache(base)
    try:
        entries = fs.ls(base, detail=False)
    except FileNotFoundError:
        return []
    finally:
        fs.invalidate_cache(base)
    return sorted({p.rstrip("/").rsplit("/", 1)[-1] for p in entries if p.rstrip("/") != base})


@_talks
def cat(url: str, limit: int | None = None) -> bytes | None:
    """The content of an object in one GET (at most ``limit`` + 1 bytes), never from a cached listing; None
    when there is none. For objects another process may have created a moment ago (the champion's pointer)."""
    fs, path = filesystem(url)
    try:
        return fs.cat_file(path, start=0, end=None if limit is None else limit + 1)
    except FileNotFoundError:
        return None


@_talks
def remove_many(url: str, paths: list[str]) -> None:
    fs, base = filesystem(url)
    if paths:
        fs.rm([f"{base.rstrip('/')}/{p}" for p in paths])


def json_object(data: bytes | None) -> Any:
    return None if data is None else json.loads(data)
