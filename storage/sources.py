"""The data a run reads: the default file, a path, a URL (recorded only redacted), or a folder/glob of partitions."""

from __future__ import annotations

import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from storage.errors import InputError, Transient
from storage.project import DEFAULT_DATA
from storage.remote import filesystem, local_path, storage_error, translated


def is_url(source: str) -> bool:
    """A source read by downloading it: ``http(s)://``, or an object store's URL (``s3://``, ``gs://``…)."""
    return "://" in source and not source.startswith(("file://", "local://"))


def download(source: str, dest: Path) -> None:
    """Stream the URL ``source`` to ``dest``: http(s) through urllib, any other scheme through fsspec (its
    credentials from the standard places); a one-line error naming the redacted URL if it cannot be read."""
    try:
        if source.startswith(("http://", "https://")):
            with urllib.request.urlopen(source, timeout=60) as response, open(dest, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        else:
            fs, path = filesystem(source)
            with translated(source):
                fs.get_file(path, str(dest))
    except OSError as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        # a server that answered with an error (404, 403) or a file that is not there will not change; anything
        # else (a refused or dropped connection, a timeout, a server busy or failing: 429, 5xx) may pass: retried
        # by the stage
        busy = isinstance(exc, urllib.error.HTTPError) and (exc.code == 429 or exc.code >= 500)
        permanent = not busy and (
            isinstance(exc, urllib.error.HTTPError | FileNotFoundError | PermissionError)
            or (isinstance(exc, InputError) and not isinstance(exc, Transient))
        )
        kind = InputError if permanent else Transient
        raise kind(f"{redact(source)}: cannot download ({reason}); check the URL passed to --data") from None


COMPRESSED_SUFFIXES = (".gz", ".bz2")  # kept on a download's name: ingest decompresses by the file's name


def download_name(source: str) -> str:
    """The local name of a download: ``download.csv``, with the URL's compression suffix if it has one."""
    suffix = Path(urllib.parse.urlparse(source).path).suffix.lower()
    return "download.csv" + (suffix if suffix in COMPRESSED_SUFFIXES else "")


_DOWNLOADED: ContextVar[Mapping[str, Path] | None] = ContextVar("linreg_downloaded", default=None)


@contextmanager
def downloaded(urls: Iterable[str]) -> Iterator[dict[str, Path]]:
    """Each URL downloaded (streamed) once into a temporary folder, removed on exit: ``{url: local file}``.

    While open, `downloaded_copy` hands the same files to the code it runs (the stage cache downloads a URL
    input to key the stage on its bytes; the stage then reads that copy instead of downloading it again).
    """
    with tempfile.TemporaryDirectory(prefix="linreg-download-") as folder:
        paths: dict[str, Path] = {}
        for i, url in enumerate(dict.fromkeys(urls)):
            path = Path(folder) / str(i) / download_name(url)
            path.parent.mkdir()
            download(url, path)
            paths[url] = path
        token = _DOWNLOADED.set({**(_DOWNLOADED.get() or {}), **paths})
        try:
            yield paths
        finally:
            _DOWNLOADED.reset(token)


def downloaded_copy(url: str) -> Path | None:
    """This call's download of ``url`` (`downloaded`), or None."""
    return (_DOWNLOADED.get() or {}).get(url)


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
    data = local_path(data)
    if is_url(data):
        return data
    return str(Path(data).expanduser().resolve())


PARQUET_SUFFIXES = (".parquet", ".pq")  # read as Parquet; anything else as CSV


PARTITION_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", *PARQUET_SUFFIXES)  # the files a partitioned folder contributes


_GLOB_CHARS = re.compile(r"[*?\[]")


def is_partitioned(data: str | None) -> bool:
    """Whether ``data`` names several files: a folder, or a glob pattern (``*``, ``?``, ``[...]``).

    On an object store (``s3://``, ``gs://``…) a URL ending in ``/``, or with a glob character in its path, is a
    folder or pattern of partitions; a URL ending in a data file's suffix (``.csv``, ``.parquet``…) is one file
    (no request made); any other is a folder if the store lists objects under it. An http(s) URL is one file.
    """
    if data is None:
        return False
    if is_url(data):
        return not data.startswith(("http://", "https://")) and _remote_partitioned(data)
    return bool(_GLOB_CHARS.search(data)) or Path(data).expanduser().is_dir()


def _remote_partitioned(url: str) -> bool:
    path = url.split("://", 1)[1]
    if url.endswith("/") or _GLOB_CHARS.search(path):
        return True
    if "/" not in path:  # a bare bucket: its top-level "folder"
        return True
    if path.lower().endswith(PARTITION_SUFFIXES):  # a data file's name: one file
        return False
    try:  # a prefix given without its trailing slash: one listing tells (an error is left to ingest to report)
        fs, key = filesystem(url)
        fs.invalidate_cache(key)
        with translated(url):
            return bool(fs.isdir(key))
    except (OSError, ValueError, InputError):
        return False


def partition_sources(data: str) -> list[str]:
    """The files of a partitioned input, sorted: a folder's CSV and Parquet files, or a glob's.

    Local ones as absolute paths; on an object store as URLs (`remote_partitions`). Sorted, so the partitions
    (and the global row order the split relies on) are the same every run.
    """
    if is_url(data):
        return remote_partitions(data)
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
        raise _no_data_files(where)
    return sorted(str(p.resolve()) for p in found)


def remote_partitions(url: str) -> list[str]:
    """The objects of a folder (prefix) or glob on an object store, as sorted URLs, listed afresh.

    A folder contributes every object directly under it whose name has a data suffix (`PARTITION_SUFFIXES`;
    nothing from deeper "subfolders"), a glob every object it matches. Each URL is then a single file that the
    ingest stage downloads and keys on the bytes read.
    """
    scheme = url.split("://", 1)[0]
    fs, path = filesystem(url)
    pattern = bool(_GLOB_CHARS.search(path))
    fs.invalidate_cache()
    try:
        with translated(url):
            found = _listed(fs, path, pattern)
    except FileNotFoundError:  # no object under the prefix, or no bucket at all: told apart below
        found = []
    except OSError as exc:  # access denied, an endpoint that cannot be reached
        raise storage_error(url, exc, "--data", "--data") from None
    finally:
        fs.invalidate_cache()
    if not found:
        if not _bucket_exists(fs, path, url):  # a glob of a missing bucket matches nothing, without an error
            raise storage_error(url, FileNotFoundError("the bucket does not exist"), "--data", "--data")
        raise _no_data_files(f"{'pattern' if pattern else 'prefix'} {url}")
    return sorted(f"{scheme}://{name.lstrip('/')}" for name in found)


def _listed(fs: Any, path: str, pattern: bool) -> list[str]:
    """The files a glob matches, or the data files directly under a prefix."""
    if pattern:
        return [name for name, info in fs.glob(path, detail=True).items() if info.get("type") == "file"]
    return [
        info["name"]
        for info in fs.ls(path.rstrip("/"), detail=True)
        if info.get("type") == "file" and info["name"].rsplit("/", 1)[-1].lower().endswith(PARTITION_SUFFIXES)
    ]


def _bucket_exists(fs: Any, path: str, url: str) -> bool:
    bucket = path.split("/", 1)[0]
    try:
        fs.invalidate_cache(bucket)
        with translated(url):
            return bool(fs.exists(bucket))
    except OSError as exc:
        raise storage_error(url, exc, "--data", "--data") from None


def _no_data_files(where: str) -> InputError:
    kinds = ", ".join(PARTITION_SUFFIXES)
    return InputError(f"{where} matches no data files ({kinds}); pass --data with a CSV, a folder or a glob")
