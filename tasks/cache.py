"""The stage cache: a Prefect cache policy keyed on content, with its records beside the artifacts.

Prefect's default policy never hits across flow runs (it includes the run id) and its ``INPUTS`` policy hashes
the path strings a task receives, not the files behind them. `StageCache` keys a stage on exactly what
`tasks.store.Stage.key` hashes (the sha256 of its input files, its parameters, its code, library versions),
so an unchanged stage is *Cached* in Prefect (and the UI), across runs and processes, and any change re-runs
the stages it affects.

A cache record is Prefect's own result record: the small dict of artifact paths the task returned, serialized
as JSON under ``<root>/.cache/<stage>/<key>``, so deleting the artifacts folder clears artifacts and cache at
once. Before Prefect may use a record, the policy verifies every artifact it names against its manifest; a
missing, truncated or altered artifact drops the record, logs why, and the stage runs again.

Prefect writes a record in place (not atomically), so every stage runs under Prefect's SERIALIZABLE isolation
with `FileLocks`: one process computes a key while others wait for it and then read a whole record. A record
cut short by a crash does not parse, which Prefect and `StageCache` both treat as a miss.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import inspect
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
from prefect import Task, get_run_logger
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.futures import wait
from prefect.locking.protocol import LockManager
from prefect.results import ResultRecord
from prefect.states import State
from prefect.task_runners import TaskRunner

from tasks import store
from tasks.errors import InputError


class FileLocks(LockManager):
    """Per-key locks on ``<root>/.cache/<stage>/<key>.lock`` with ``flock``, for Prefect's SERIALIZABLE isolation.

    While one process runs a stage, another that needs the same key waits, then finds the record: the work is
    done once and the record is never written by two processes at once. The kernel drops an ``flock`` when its
    process dies, so a ``kill -9`` leaves no stale lock (Prefect's own file lock manager would: its locks are
    files that only their holder deletes).
    """

    _held: ClassVar[dict[tuple[str, str], tuple[str, int]]] = {}  # (folder, key) -> (holder, fd), per process
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = str(folder)

    def _path(self, key: str) -> Path:
        return Path(self.folder) / f"{key}.lock"

    def _open(self, key: str) -> int:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def acquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        if self.is_lock_holder(key, holder):
            return True
        fd = self._open(key)
        if not _flock(fd, fcntl.LOCK_EX, acquire_timeout):
            os.close(fd)
            return False
        with self._guard:
            self._held[(self.folder, key)] = (holder, fd)
        return True

    async def aacquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        return self.acquire_lock(key, holder, acquire_timeout, hold_timeout)

    def release_lock(self, key: str, holder: str) -> None:
        with self._guard:
            held = self._held.get((self.folder, key))
            if held is None or held[0] != holder:
                raise ValueError(f"No lock held by {holder} for transaction with key {key}")
            del self._held[(self.folder, key)]
        fcntl.flock(held[1], fcntl.LOCK_UN)
        os.close(held[1])

    def is_locked(self, key: str) -> bool:
        if (self.folder, key) in self._held:
            return True
        if not self._path(key).exists():
            return False
        fd = self._open(key)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the shared lock, if taken
        return False

    def is_lock_holder(self, key: str, holder: str) -> bool:
        held = self._held.get((self.folder, key))
        return held is not None and held[0] == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        if (self.folder, key) in self._held:
            return False  # held by this process; waiting would deadlock
        if not self._path(key).exists():
            return True
        fd = self._open(key)
        try:
            return _flock(fd, fcntl.LOCK_SH, timeout)
        finally:
            os.close(fd)

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        return self.wait_for_lock(key, timeout)


def _flock(fd: int, mode: int, timeout: float | None) -> bool:
    """Take an flock on ``fd``; block, or give up after ``timeout`` seconds."""
    if timeout is None:
        fcntl.flock(fd, mode)
        return True
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def records_dir(root: str | os.PathLike[str]) -> Path:
    return Path(root) / store.CACHE_DIR


@dataclass
class StageCache(CachePolicy):
    """Cache key = the stage's content key; a hit only stands if every artifact it names still verifies."""

    stage: store.Stage | None = None
    root: str = ""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        assert self.stage is not None, "StageCache needs the stage it keys"
        logger = get_run_logger()
        try:
            key = self.stage.key(inputs)
        except (OSError, store.IntegrityError) as exc:
            logger.warning("%s: not cached, its inputs cannot be hashed (%s)", self.stage.name, exc)
            return None
        if key is None:
            logger.info("%s: not cached, an input is a URL whose content is unknown until it is read", self.stage.name)
            return None
        record_key = f"{self.stage.name}/{key}"
        if self.lock_manager is not None:
            self.lock_manager.wait_for_lock(record_key)  # another process may be writing this very record
        problem = self.check_record(record_key, key)
        if problem:
            logger.warning(
                "%s: cached result %s is not usable (%s); running the stage again", self.stage.name, key, problem
            )
        return record_key

    def check_record(self, record_key: str, key: str) -> str | None:
        """None if there is no record or it holds; else why not, after dropping the record (a cache miss)."""
        path = records_dir(self.root) / record_key
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"record unreadable: {exc.strerror}"
        try:
            outputs = cached_outputs(content)
            for artifact in outputs.values():
                store.verify(artifact, key=key)
        except (ValueError, store.IntegrityError) as exc:
            path.unlink(missing_ok=True)
            return str(exc)
        return None


def cached_outputs(record: bytes) -> dict[str, str]:
    """The dict of artifact paths a cache record holds; ValueError if it is not such a record."""
    try:
        result = ResultRecord.deserialize(record).result
    except Exception as exc:  # a damaged record can fail to parse in many ways; all mean "not usable"
        raise ValueError(f"record unreadable ({type(exc).__name__})") from None
    if not (isinstance(result, dict) and all(isinstance(v, str) for v in result.values())):
        raise ValueError("record does not hold a dict of artifact paths")
    return result


def bind(task: Task, stage: store.Stage, root: str | os.PathLike[str], refresh: bool = False) -> Task:
    """``task`` keyed by `StageCache`, its records JSON under ``<root>/.cache``; ``refresh`` ignores old records."""
    return task.with_options(
        cache_policy=StageCache(
            stage=stage, root=str(root), lock_manager=FileLocks(records_dir(root)), isolation_level="SERIALIZABLE"
        ),
        result_storage=records_dir(root),
        result_serializer="json",
        persist_result=True,
        cache_result_in_memory=False,
        refresh_cache=refresh,
    )


def release_memory() -> None:
    """Hand the memory a finished stage freed back to the operating system.

    Stages run one after another in one process; pyarrow's allocator and glibc's keep freed memory for reuse,
    and not for each other, so each stage's peak would stack on its predecessors' leftovers. At 2M rows this
    took the run's peak RSS from about 700 to 570 MB.
    """
    pa.default_memory_pool().release_unused()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None  # glibc only (not musl, not macOS)
    except OSError:
        return None


_LIBC = _glibc()


class StageRunner:
    """Runs stages through their cache and remembers, from each task run's final state, which were Cached."""

    def __init__(self, root: str | os.PathLike[str], refresh: bool = False):
        self.root, self.refresh = str(root), refresh
        self.results: dict[str, dict[str, str]] = {}
        self.cached: dict[str, bool] = {}

    def __call__(self, task: Task, stage: store.Stage, *args: Any) -> dict[str, str]:
        state: State = bind(task, stage, self.root, self.refresh)(*args, return_state=True)
        release_memory()
        result = state.result()  # raises the task's exception if it failed
        self.results[stage.name] = result
        self.cached[stage.name] = state.name == "Cached"
        return result

    def map(
        self, pool: TaskRunner, task: Task, stage: store.Stage, calls: list[tuple], sources: list[str]
    ) -> list[dict[str, str]]:
        """Run ``task`` once per partition on ``pool`` (threads or Dask), one argument tuple per call.

        The stage's artifacts are recorded as ``name[i]`` for partition i; it counts as cached when every call
        was. Once all calls have finished, the first failure is raised; a user's error names its partition's
        source file, since the stage itself only sees intermediate files.
        """
        bound = bind(task, stage, self.root, self.refresh)
        names = list(inspect.signature(task.fn).parameters)
        futures = [pool.submit(bound, dict(zip(names, args, strict=True))) for args in calls]
        wait(futures)
        release_memory()
        states = [future.state for future in futures]
        for state, source in zip(states, sources, strict=True):
            if not state.is_completed():
                try:
                    state.result()
                except InputError as exc:
                    if source in str(exc):
                        raise
                    raise type(exc)(f"{source}: {exc}") from None
        results = [state.result() for state in states]
        self.results[stage.name] = {f"{name}[{i}]": path for i, r in enumerate(results) for name, path in r.items()}
        self.cached[stage.name] = all(state.name == "Cached" for state in states)
        return results
