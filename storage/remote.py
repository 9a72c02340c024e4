"""Object storage's transport (``s3://``, ``gs://``, ``az://``, … through fsspec), under `storage.store.ObjectStore`
and the data sources that are URLs: one filesystem per URL, conditional creates (``If-None-Match: *``),
streamed whole-file transfers (multipart on S3, so no big file is buffered whole and a PUT appears only
complete), and a store's failures as one line (`storage_error`). See docs/storage.md.

Credentials and endpoints come from the standard places (``AWS_*`` variables, ``~/.aws``, ``AWS_ENDPOINT_URL``)
through fsspec's own backends; nothing here reads, logs or records them.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
from fsspec.spec import AbstractFileSystem

from storage.atomic import atomic_path
from storage.errors import InputError, IntegrityError, Transient

_CHUNK = 1 << 20

# How often, and how long, the S3 client tries before a store counts as unreachable: botocore's "standard"
# retries (3 attempts, jittered backoff) and a 5 s connect timeout. botocore's default (legacy mode, 5 attempts)
# took 10 s per call against a closed port, and a run makes dozens of calls. AWS_MAX_ATTEMPTS/AWS_RETRY_MODE, or
# fsspec's own config (``fsspec.config.conf["s3"]["config_kwargs"]``), override these.
S3_CONFIG = {"retries": {"max_attempts": 3, "mode": "standard"}, "connect_timeout": 5}


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


class StoreUnreachable(ConnectionError, Transient):
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
        return Transient(f"{where}: cannot be reached ({exc.reason}); check AWS_ENDPOINT_URL and the network")
    if isinstance(exc, PermissionError):
        return InputError(
            f"{where}: access denied ({_reason(exc)}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws"
        )
    if isinstance(exc, FileNotFoundError):
        return InputError(f"{where}: no such bucket ({_reason(exc)}); create it or pass another {option}")
    return Transient(f"{where}: cannot be reached ({_reason(exc)}); check AWS_ENDPOINT_URL and the network")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


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
