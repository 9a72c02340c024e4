"""One storage interface: a store is a local folder or an object store's prefix, behind one small protocol.

``--artifacts-dir`` (a folder, ``file://…``, or ``s3://…``, ``gs://…`` through fsspec) becomes a `Store` the moment
it is read (`open_store`): nothing else in the project asks which kind it is. Everything the store holds is
written once, against this protocol: stage folders and their manifests (stagecore/declare.py), cache records
(stagecore/cache.py), run records, the marker and `clear` (storage/root.py, storage/clean.py), the champion's
pointer generations (lifecycle/champion.py) and the history (lifecycle/history.py).

The protocol, in paths relative to the store's root (posix):

- ``files()`` / ``names(folder)``: list (afresh: another process may just have written);
- ``read(rel)`` a small file, ``write(rel, data)`` one atomically, ``create(rel, data)`` one only if absent
  (``O_EXCL`` + link on disk, ``If-None-Match: *`` on an object store), ``remove(rels)``;
- ``claim(stage, key)``: a new ``<stage>/<key>[.N]`` folder that no other run writes into;
- ``work``: the local folder where this process computes the store's files (the folder itself, or a
  per-process scratch mirror of the object store); ``put(rel)`` publishes ``work/rel`` (a no-op on disk),
  ``get(rel)`` makes ``work/rel`` a local copy (a no-op on disk);
- ``lock(rel)``: one writer across processes where the store can lock (``flock``); on an object store none,
  by design: conditional creates take its place (docs/storage.md);
- ``in_use()`` / ``cleaning()``: a run and a clean exclude each other.
"""

from __future__ import annotations

import atexit
import datetime as dt
import errno
import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any

from storage import remote, validate
from storage.atomic import HOST, alive, makedirs, sweep_temporary_files, write_bytes, write_error
from storage.errors import InputError, IntegrityError
from storage.hashing import sha256_file
from storage.layout import CACHE_DIR, KEY_PATTERN, MARKER
from storage.lock import exclusive
from storage.throttle import write_slot

CLAIM = ".claim"  # the first object of a stage folder on an object store: whoever creates it owns the folder
ACTIVE_DIR = f"{CACHE_DIR}/active"  # on an object store: one lease object per running flow
CLEANING = f"{CACHE_DIR}/cleaning.json"  # on an object store: exists while a clean runs
LEASE = re.compile(r"[0-9a-f]{32}\.json")
LEASE_HOURS = 24  # an object-store lease older than this (or of a dead process on this host) is stale
SMALL = 1 << 20  # records, pointers, manifests and history rows are a few kB

# <root>/<stage>/<key folder>/<file>: where every artifact (and its manifest) lives, on any store
_ARTIFACT = re.compile(rf"(?P<root>.+)/(?P<relative>[A-Za-z_][A-Za-z0-9_]*/{KEY_PATTERN}(\.\d+)?/[^/]+)")


def is_remote(root: str | os.PathLike[str]) -> bool:
    """Whether ``root`` names an object store (a URL other than ``file://``): the one question of its kind."""
    text = str(root)
    return "://" in text and not text.startswith(("file://", "local://"))


class Store:
    """A store's root, and the operations every module writes its files with (the module docstring)."""

    url: str  # the root as files and messages name it: a folder's absolute path, or the URL
    others: list[str]  # what `files` saw that is no regular file (links, sockets): never the store's

    @property
    def work(self) -> Path:
        raise NotImplementedError

    def path(self, rel: str) -> str:
        """What names ``rel`` in records, summaries and across processes: a path on disk, else its URL."""
        return f"{self.url}/{rel}"

    def public(self, path: str | os.PathLike[str]) -> str:
        """A file of ``work`` by the name any process can open (`path`); anything else as it is."""
        try:
            return self.path(Path(path).resolve().relative_to(self.work).as_posix())
        except ValueError:
            return str(path)

    def relative(self, path: str | os.PathLike[str]) -> str:
        """``path`` (a file of ``work``, or a name `path` gave) relative to the root; ValueError outside it."""
        text = str(path)
        if text.startswith(self.url + "/"):
            return text[len(self.url) + 1 :]
        if "://" in text:
            raise ValueError(f"{text} is not in the store at {self.url}")
        return Path(path).resolve().relative_to(self.work).as_posix()

    def artifact(self, value: Any) -> bool:
        """Whether ``value`` is the name of an artifact of this store that a process must fetch to open."""
        return False

    def files(self) -> dict[str, int]:
        raise NotImplementedError

    def names(self, folder: str) -> list[str]:
        raise NotImplementedError

    def read(self, rel: str, limit: int = SMALL) -> bytes | None:
        raise NotImplementedError

    def write(self, rel: str, data: bytes) -> str:
        raise NotImplementedError

    def create(self, rel: str, data: bytes) -> bool:
        """Write ``rel`` only if nothing is there, whole or not at all; False when something is."""
        raise NotImplementedError

    def remove(self, rels: list[str]) -> None:
        raise NotImplementedError

    def size(self, rel: str) -> int | None:
        raise NotImplementedError

    def sha256(self, rel: str) -> str:
        raise NotImplementedError

    def claim(self, stage: str, key: str) -> str:
        """A new folder ``<stage>/<key>``, else ``<key>.1``, ``<key>.2``…, as a path relative to the root.

        Artifacts are written once and never replaced: a rebuild (``--refresh``, a damaged file, a lost
        record) goes to a new folder, so a run record or a concurrent run that uses the earlier files still
        finds them as they were."""
        for n in itertools.count():
            rel = f"{stage}/{key if n == 0 else f'{key}.{n}'}"
            if self._take(rel):
                makedirs(self.work / rel)
                return rel
        raise AssertionError("unreachable")

    def _take(self, rel: str) -> bool:
        raise NotImplementedError

    def put(self, rel: str) -> None:
        """Publish ``work/rel``, complete, under ``rel``."""

    def get(self, rel: str) -> Path:
        """A local copy of ``rel`` at ``work/rel``; IntegrityError when there is no such file."""
        raise NotImplementedError

    def lock(self, rel: str) -> AbstractContextManager[None]:
        return nullcontext()

    def in_use(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    def cleaning(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Make the root ready to be marked (a folder: created and proven writable)."""

    def drop(self) -> None:
        """Remove the root itself, now empty (a prefix of an object store is gone with its last object)."""

    def missing(self) -> str | None:
        """Why the root is no folder (or prefix) at all; None when it is one, or may be."""
        return None

    def error(self, exc: OSError, deleting: bool = False) -> InputError:
        """A failure of this store as one line that names it and says what to do."""
        raise NotImplementedError


class FolderStore(Store):
    """A folder on disk: exclusive create, rename, ``flock``. Only regular files are ever the store's."""

    kind, items, place = "folder", "files", "folder"

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(remote.local_path(str(root))).expanduser().resolve()  # a worker elsewhere: same place
        self.url = str(self.root)
        self.others = []

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return FolderStore, (self.url,)

    def prepare(self) -> None:
        """Created, proven writable, and rid of the temporary files that killed writers left."""
        if self.root.exists() and not self.root.is_dir():
            raise InputError(
                f"artifacts folder {self.root} is a file, not a folder; pass --artifacts-dir with a folder"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            os.unlink(tempfile.mkstemp(dir=self.root, prefix=".probe.", suffix=".tmp")[1])
        except OSError as exc:
            raise InputError(
                f"artifacts folder {self.root} is not writable ({exc.strerror}); "
                "pass --artifacts-dir with a writable folder"
            ) from None
        sweep_temporary_files(self.root)

    @property
    def work(self) -> Path:
        return self.root

    def path(self, rel: str) -> str:
        return str(self.root / rel)

    def public(self, path: str | os.PathLike[str]) -> str:
        return str(path)  # every process of this machine opens the file where it is

    def files(self) -> dict[str, int]:
        found: dict[str, int] = {}
        self.others = []
        for folder, dirs, names in os.walk(self.root):
            base = Path(folder)
            self.others += [(base / d).relative_to(self.root).as_posix() for d in dirs if (base / d).is_symlink()]
            for name in names:
                info = (base / name).lstat()
                rel = (base / name).relative_to(self.root).as_posix()
                if stat.S_ISREG(info.st_mode):
                    found[rel] = info.st_size
                else:
                    self.others.append(rel)
        return found

    def names(self, folder: str) -> list[str]:
        try:
            return sorted(os.listdir(self.root / folder))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def read(self, rel: str, limit: int = SMALL) -> bytes | None:
        try:
            fd = os.open(self.root / rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EISDIR):  # a link or a folder: no file of ours
                return None
            raise
        with os.fdopen(fd, "rb") as fh:
            return fh.read(limit + 1)

    def write(self, rel: str, data: bytes) -> str:
        final = self.root / rel
        makedirs(final.parent)
        return write_bytes(data, final)

    def create(self, rel: str, data: bytes) -> bool:
        final = self.root / rel
        makedirs(final.parent)
        try:  # written whole under a temporary name, then linked to its own (a link never replaces a file)
            fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.{HOST}-{os.getpid()}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.link(tmp, final)
            finally:
                os.unlink(tmp)
        except FileExistsError:
            return False
        except OSError as exc:
            raise write_error(final.parent, exc, final) from None
        return True

    def remove(self, rels: list[str]) -> None:
        for rel in rels:
            (self.root / rel).unlink(missing_ok=True)
        folders = sorted({p for rel in rels for p in Path(rel).parents if p != Path(".")}, key=lambda p: -len(p.parts))
        for folder in folders:  # the folders that became empty; one that holds a file of the user's stays
            with suppress(OSError):
                (self.root / folder).rmdir()

    def size(self, rel: str) -> int | None:
        try:
            info = (self.root / rel).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return info.st_size if stat.S_ISREG(info.st_mode) else None

    def sha256(self, rel: str) -> str:
        return sha256_file(self.root / rel)

    def _take(self, rel: str) -> bool:
        folder = self.root / rel
        try:
            folder.mkdir(parents=True)
            return True
        except FileExistsError:  # an empty folder is one a failed run left: reused
            return folder.is_dir() and not any(folder.iterdir())
        except OSError as exc:
            raise write_error(folder.parent, exc) from None

    def get(self, rel: str) -> Path:
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.work):  # a link out of the store: never followed
            raise IntegrityError(f"{self.path(rel)}: points outside the store")
        return path

    def lock(self, rel: str) -> AbstractContextManager[None]:
        return exclusive(self.root / rel)

    @contextmanager
    def in_use(self) -> Iterator[None]:
        marker = self.root / MARKER
        try:
            fd = os.open(marker, os.O_RDONLY)
        except FileNotFoundError:
            raise being_cleaned(self.url) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise being_cleaned(self.url) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(marker).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # a clean deleted the marker while this run opened it
                raise being_cleaned(self.url)
            yield
        finally:
            os.close(fd)

    @contextmanager
    def cleaning(self) -> Iterator[None]:
        fd = os.open(self.root / MARKER, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise in_use(self.url) from None
            yield
        finally:
            os.close(fd)

    def missing(self) -> str | None:
        if not self.root.exists():
            return "no such folder"
        return None if self.root.is_dir() else "a file, not a folder"

    def drop(self) -> None:
        with suppress(OSError):  # not empty: a file of the user's is left
            self.root.rmdir()

    def error(self, exc: OSError, deleting: bool = False) -> InputError:
        if isinstance(exc, InputError):
            return exc
        if deleting:
            reason = exc.strerror or str(exc)
            return InputError(
                f"cannot delete in artifacts folder {self.root} ({reason}); check its permissions and run again"
            )
        return write_error(self.root, exc)


class ObjectStore(Store):
    """An object store's prefix through fsspec: conditional PUT in place of ``flock`` and rename; stages compute
    in this process's scratch mirror, and whole files move with fsspec's streaming (multipart) transfers."""

    kind, items, place = "store", "objects", "prefix"

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.others = []  # an object store holds only objects
        self._work: Path | None = None

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return open_store, (self.url,)  # another process (a Dask worker) computes in a scratch mirror of its own

    @property
    def work(self) -> Path:
        """This process's scratch mirror of the store (created on first use, removed at exit)."""
        with _LOCK:
            if self._work is None:
                self._work = Path(tempfile.mkdtemp(prefix="linreg-scratch-")).resolve()
            return self._work

    def artifact(self, value: Any) -> bool:
        return isinstance(value, str) and value.startswith(self.url + "/") and artifact_of(value) is not None

    def _fs(self, rel: str = "") -> tuple[Any, str]:
        return remote.filesystem(self.path(rel) if rel else self.url)

    def files(self) -> dict[str, int]:
        fs, base = self._fs()
        with remote.translated(self.url):
            fs.invalidate_cache(base)
            try:
                found = fs.find(base, detail=True)
            finally:
                fs.invalidate_cache(base)
        return {p[len(base) + 1 :]: int(i.get("size") or 0) for p, i in found.items() if p.startswith(base + "/")}

    def names(self, folder: str) -> list[str]:
        fs, base = self._fs(folder)
        with remote.translated(self.url):
            fs.invalidate_cache(base)
            try:
                entries = fs.ls(base, detail=False)
            except FileNotFoundError:
                return []
            finally:
                fs.invalidate_cache(base)
        return sorted({p.rstrip("/").rsplit("/", 1)[-1] for p in entries if p.rstrip("/") != base})

    def read(self, rel: str, limit: int = SMALL) -> bytes | None:
        """One GET, never from a cached listing (another process may have created it a moment ago)."""
        fs, path = self._fs(rel)
        with remote.translated(self.url):
            try:
                return fs.cat_file(path, start=0, end=limit + 1)
            except FileNotFoundError:
                return None

    def write(self, rel: str, data: bytes) -> str:
        fs, path = self._fs(rel)
        with remote.translated(self.url):
            fs.pipe_file(path, data)
        return self.path(rel)

    def create(self, rel: str, data: bytes) -> bool:
        fs, path = self._fs(rel)
        return remote.create(fs, path, data)

    def remove(self, rels: list[str]) -> None:
        fs, base = self._fs()
        if rels:
            with remote.translated(self.url), suppress(FileNotFoundError):
                fs.rm([f"{base}/{rel}" for rel in rels])

    def size(self, rel: str) -> int | None:
        fs, path = self._fs(rel)
        with remote.translated(self.url):
            try:
                return int(fs.info(path)["size"])
            except FileNotFoundError:
                return None

    def sha256(self, rel: str) -> str:
        """Streamed: lineage verifies artifacts it does not download."""
        fs, path = self._fs(rel)
        digest = hashlib.sha256()
        with remote.translated(self.url), fs.open(path, "rb", block_size=8 << 20) as fh:
            while chunk := fh.read(8 << 20):
                digest.update(chunk)
        return digest.hexdigest()

    def _take(self, rel: str) -> bool:
        try:
            return self.create(f"{rel}/{CLAIM}", json.dumps({"pid": os.getpid()}).encode())
        except OSError as exc:
            raise self.error(exc) from None

    def put(self, rel: str) -> None:
        try:
            with write_slot():  # the artifacts' uploads; small records, claims and leases take no slot
                remote.upload(self.work / rel, self.path(rel))
        except OSError as exc:
            raise self.error(exc) from None

    def get(self, rel: str) -> Path:
        local = self.work / rel
        remote.download(self.path(rel), local)
        return local

    @contextmanager
    def in_use(self) -> Iterator[None]:
        lease = f"{ACTIVE_DIR}/{uuid.uuid4().hex}.json"
        try:
            self.write(lease, lease_body())
            cleaning = self.read(CLEANING)
        except OSError as exc:
            raise self.error(exc) from None
        try:
            if cleaning is not None and not stale(cleaning):
                raise being_cleaned(self.url)
            yield
        finally:
            with suppress(OSError):
                self.remove([lease])

    @contextmanager
    def cleaning(self) -> Iterator[None]:
        if not self.create(CLEANING, lease_body()):
            if not stale(self.read(CLEANING)):
                raise InputError(f"artifacts store {self.url} is being cleaned by another --clean-artifacts; wait")
            self.write(CLEANING, lease_body())
        try:
            for name in self.names(ACTIVE_DIR):
                if LEASE.fullmatch(name) and not stale(self.read(f"{ACTIVE_DIR}/{name}")):
                    raise in_use(self.url)
            yield
        finally:
            with suppress(OSError):
                self.remove([CLEANING])

    def error(self, exc: OSError, deleting: bool = False) -> InputError:
        return remote.storage_error(self.url, exc)


_LOCK = threading.Lock()
_OPEN: dict[str, ObjectStore] = {}


def open_store(root: str | os.PathLike[str] | Store) -> Store:
    """The store at ``root``: the one place where a root's kind is decided. One `ObjectStore` per URL per
    process, so its scratch mirror is shared by every stage of the process."""
    if isinstance(root, Store):
        return root
    text = str(root)
    if not is_remote(text):
        return FolderStore(remote.local_path(text))
    url = text.rstrip("/")
    with _LOCK:
        if url not in _OPEN:
            _OPEN[url] = ObjectStore(url)
        return _OPEN[url]


def locate(path: str | os.PathLike[str]) -> tuple[Store, str]:
    """The store of ``path``'s folder, and its name there: any file, with its manifest beside it, on any store."""
    parent, slash, name = str(path).rstrip("/").rpartition("/")
    return open_store(parent or slash or "."), name


def artifact_of(url: str) -> tuple[str, str] | None:
    """(store root, path relative to it) of a URL shaped like an artifact; None for any other string."""
    found = _ARTIFACT.fullmatch(url) if is_remote(url) else None
    return (found["root"], found["relative"]) if found else None


def local_copy(url: str) -> Path | None:
    """Where this process's scratch mirror keeps (or would keep) the artifact at ``url``; None if not one."""
    located = artifact_of(url)
    return None if located is None else open_store(located[0]).work / located[1]


def public(path: str | os.PathLike[str]) -> str:
    """What records, manifests and summaries name: the store URL of a scratch file, else the path itself."""
    with _LOCK:
        stores = [s for s in _OPEN.values() if s._work is not None]
    for store in stores:
        named = store.public(path)
        if named != str(path):
            return named
    return str(path)


@atexit.register
def drop_scratch() -> None:
    with _LOCK:
        for store in _OPEN.values():
            if store._work is not None:
                shutil.rmtree(store._work, ignore_errors=True)
                store._work = None


# --- a run and a clean exclude each other ----------------------------------------------------------


def lease_body() -> bytes:
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return json.dumps({"host": HOST, "pid": os.getpid(), "started": started}).encode()


def lease_ok(body: object) -> bool:
    return (
        isinstance(body, dict)
        and isinstance(body.get("host"), str)
        and isinstance(body.get("pid"), int)
        and isinstance(body.get("started"), str)
    )


def stale(content: bytes | None) -> bool:
    try:
        body = validate.load_json(content or b"", "lease")
    except ValueError:
        return True
    if not lease_ok(body):
        return True
    if body["host"] == HOST and not alive(body["pid"]):
        return True
    try:
        started = dt.datetime.fromisoformat(body["started"])
    except ValueError:
        return True
    return dt.datetime.now(dt.UTC) - started > dt.timedelta(hours=LEASE_HOURS)


def being_cleaned(where: str) -> InputError:
    return InputError(f"artifacts store {where} is being cleaned (--clean-artifacts); run again once that has finished")


def in_use(where: str) -> InputError:
    return InputError(
        f"artifacts store {where} is in use by a running flow; run --clean-artifacts again once it has finished"
    )
