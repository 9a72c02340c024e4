"""The stage cache: content keys, data-only records beside the artifacts, one process per key at a time.

Prefect's default policy never hits across flow runs (it includes the run id) and its ``INPUTS`` policy hashes
the path strings a task receives, not the files behind them. Here each stage is keyed on exactly what
`stagecore.declare.Stage.key` hashes (the sha256 of its input files, its parameters, its code, library versions), so
an unchanged stage is *Cached* in Prefect (and the UI), across runs and processes, and any change re-runs the
stages it affects.

The records are the project's own, and data only: ``<root>/.cache/<stage>/<key>.json`` holds the names of the
files the stage wrote, relative to the store, and is parsed as plain JSON against a fixed shape. Nothing in a
record names a serializer or a type, so a record planted in a shared store can point at files, never run code
(Prefect's own result records name their serializer, pickle included, and Prefect obeys it: that is why the
stages do not persist Prefect results at all). Before a record is used every file it names is verified
against its manifest (and a ``.pt`` is loaded with ``weights_only``); a missing, truncated, altered or refused
file drops the record, logs why, and the stage runs again.

One process computes a key at a time: the stage runs under an ``flock`` on ``<key>.lock``, which the kernel
drops when its process dies, so a ``kill -9`` leaves no stale lock. A second run that needs the same key waits,
then finds the record. On an object store there is no lock: records are created with a conditional write and
outputs go to folders claimed the same way (`storage.store`, docs/storage.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import inspect
import json
import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
from prefect import Task, get_run_logger
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.states import Completed, State
from prefect.task_runners import TaskRunner

from stagecore.declare import Stage
from stagecore.manifest import MANIFEST_SUFFIX, verify
from storage import validate
from storage.errors import InputError, IntegrityError
from storage.hashing import sha256_file
from storage.layout import CACHE_DIR
from storage.remote import StoreUnreachable
from storage.sources import downloaded
from storage.store import Store, open_store

RECORD_VERSION = validate.RECORD_VERSION


def record_rel(stage: str, key: str) -> str:
    return f"{CACHE_DIR}/{stage}/{key}.json"


def write_record(store: Store, stage: str, key: str, outputs: dict[str, str], replace: bool = True) -> str:
    """Record that ``stage`` under ``key`` wrote ``outputs`` (name → path): paths stored relative to the store.

    Created only if there is none (``replace``: overwritten, for --refresh): on a store without locks, of two
    runs that computed the same key the first record stays, and the other run's outputs stay whole."""
    files = {name: store.relative(path) for name, path in outputs.items()}  # a stage writes inside the store
    record = {"record_version": RECORD_VERSION, "stage": stage, "key": key, "outputs": files}
    data = (json.dumps(record, indent=2) + "\n").encode()
    try:
        if replace:
            store.write(record_rel(stage, key), data)
        else:
            store.create(record_rel(stage, key), data)
    except OSError as exc:
        raise store.error(exc) from None
    return store.path(record_rel(stage, key))


def read_record(
    root: str | os.PathLike[str] | Store, stage: str, key: str, names: tuple[str, ...] = ()
) -> dict[str, str] | None:
    """The outputs (name → local path) a record lists, each a local copy with its manifest; None if there is
    none; ValueError if it is not valid (a path outside this stage's folder, a link out of the store).
    IntegrityError when a listed file is missing."""
    store = open_store(root)
    try:
        content = store.read(record_rel(stage, key), limit=validate.MAX_RECORD_BYTES)
    except StoreUnreachable:  # a good record is not dropped because the store did not answer
        raise
    except OSError as exc:
        raise ValueError(f"record unreadable ({exc.strerror or exc})") from None
    if content is None:
        return None
    outputs = {}
    for name, relative in validate.parse_record(content, stage, key, names).items():
        if len(PurePosixPath(relative).parts) != 3:  # <stage>/<key folder>/<file>
            raise ValueError(f"record points outside the stage's folder ({relative!r})")
        outputs[name] = str(store.get(relative))
        store.get(relative + MANIFEST_SUFFIX)
    return outputs


def check_record(
    store: Store, stage: str, key: str, names: tuple[str, ...] = ()
) -> tuple[dict[str, str] | None, str | None]:
    """(outputs, None) for a record whose files all verify (and that lists exactly ``names``, when given);
    (None, why) after dropping a bad one; (None, None) when there is none."""
    try:
        outputs = read_record(store, stage, key, names)
        if outputs is None:
            return None, None
        for artifact in outputs.values():
            verify(artifact, key=key, load=True)
    except StoreUnreachable:  # the store did not answer: the record may be good, it is not dropped
        raise
    except (ValueError, IntegrityError) as exc:
        with suppress(OSError):  # an unusable record that cannot be removed is dropped again next time
            store.remove([record_rel(stage, key)])
        return None, str(exc)
    return outputs, None


def bind(task: Task, root: str | os.PathLike[str], refresh: bool = False) -> Task:
    """``task`` (a function declared with `stagecore.stage`) run through the stage cache under ``root``;
    ``refresh`` runs it even when a valid record exists.

    A hit returns a Completed state named ``Cached`` (as Prefect names its own hits) carrying the recorded
    outputs, so the UI shows the stage as Cached.
    Nothing goes through Prefect's result persistence: no record is written for a failed run either.
    """
    fn, store = task.fn, open_store(root)  # a worker that unpickles this task gets its own (`Store.__reduce__`)
    stage: Stage = fn.stage
    signature = inspect.signature(fn)

    def published(outputs: dict[str, str]) -> dict[str, str]:
        """What the stage hands on: names any process can open (on an object store the outputs' URLs, each
        process fetching its own verified copy, `Stage.localize`; on disk, the paths as they are)."""
        return {name: store.public(path) for name, path in outputs.items()}

    @functools.wraps(fn)
    def run_cached(*args: Any, **kwargs: Any) -> Any:
        call = stage.localize(signature.bind(*args, **kwargs).arguments)
        logger = get_run_logger()
        try:
            key = stage.key(call)
        except (OSError, IntegrityError) as exc:
            logger.warning("%s: not cached, its inputs cannot be hashed (%s)", stage.name, exc)
            return published(fn(**call))
        if key is None:  # an input is a URL: its content is known once downloaded, which the stage reuses
            urls = stage.urls(call)
            with downloaded(urls.values()) as local:
                key = stage.key(call, {label: sha256_file(local[url]) for label, url in urls.items()})
                return through_cache(call, key)
        return through_cache(call, key)

    def through_cache(call: dict[str, Any], key: str) -> Any:
        logger = get_run_logger()
        with store.lock(f"{CACHE_DIR}/{stage.name}/{key}.lock"):  # one writer per key, where the store locks
            if not refresh:
                outputs, problem = check_record(store, stage.name, key, stage.returns)
                if outputs is not None:
                    message = f"{stage.name} {key}: every output verified"
                    return Completed(name="Cached", data=published(outputs), message=message)
                if problem:
                    logger.warning(
                        "%s: cached result %s is not usable (%s); running the stage again", stage.name, key, problem
                    )
            outputs = fn(**call)
            if stage.returns and sorted(outputs) != sorted(stage.returns):
                raise TypeError(f"stage {stage.name} returned {sorted(outputs)}, declared {sorted(stage.returns)}")
            write_record(store, stage.name, key, outputs, replace=refresh)
        return published(outputs)

    options = {option: getattr(task, attribute) for option, attribute in _OPTIONS.items()}
    return Task(run_cached, **options, cache_policy=NO_CACHE, persist_result=False)


# The options of a stage's task that its cached form keeps: (Task argument, Task attribute)
_OPTIONS = {
    "name": "name",
    "description": "description",
    "tags": "tags",
    "version": "version",
    "retries": "retries",
    "retry_delay_seconds": "retry_delay_seconds",
    "retry_jitter_factor": "retry_jitter_factor",
    "retry_condition_fn": "retry_condition_fn",
    "timeout_seconds": "timeout_seconds",
    "task_run_name": "task_run_name",
    "log_prints": "log_prints",
    "on_completion": "on_completion_hooks",
    "on_failure": "on_failure_hooks",
}


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
    """Runs stages through their cache and remembers, from each task run's final state, which were Cached.

    ``on_run`` is called after each stage that was not Cached: the flow starts what later stages will need then
    (matplotlib's import), and a fully cached run never pays for it.
    """

    def __init__(self, root: str | os.PathLike[str], refresh: bool = False, on_run: Callable[[], Any] = lambda: None):
        self.root, self.refresh, self.on_run = str(root), refresh, on_run
        self.results: dict[str, dict[str, str]] = {}
        self.cached: dict[str, bool] = {}

    def __call__(self, task: Task, *args: Any) -> dict[str, str]:
        stage = task.fn.stage
        state: State = bind(task, self.root, self.refresh)(*args, return_state=True)
        release_memory()
        result = state.result()  # raises the task's exception if it failed
        self.results[stage.name] = result
        self._ended(stage.name, state.name == "Cached")
        return result

    def map(self, pool: TaskRunner, task: Task, calls: list[tuple], sources: list[str]) -> list[dict[str, str]]:
        """Run ``task`` once per partition on ``pool`` (threads or Dask), one argument tuple per call.

        The stage's artifacts are recorded as ``name[i]`` for partition i (plain ``name`` for a single file);
        it counts as cached when every call was. Once all calls have finished, the first failure is raised; a
        user's error names its partition's source file, since the stage itself only sees intermediate files.
        """
        stage = task.fn.stage
        bound = bind(task, self.root, self.refresh)
        names = list(inspect.signature(task.fn).parameters)
        # on an object store, a file of this process's scratch (predict's model) goes by its URL: the task may
        # run in another process, which fetches its own copy
        futures = [pool.submit(bound, stage.published(dict(zip(names, args, strict=True)))) for args in calls]
        wait(futures)
        release_memory()
        states = [future.state for future in futures]
        for state, source in zip(states, sources, strict=True):
            if not state.is_completed():
                try:
                    state.result()
                except InputError as exc:
                    if len(sources) == 1 or source in str(exc):  # a single file's errors are as they are
                        raise
                    raise type(exc)(f"{source}: {exc}") from None
        results = [state.result() for state in states]
        if len(results) == 1:  # a single file: its artifacts keep their plain names
            self.results[stage.name] = dict(results[0])
        else:
            self.results[stage.name] = {f"{n}[{i}]": path for i, r in enumerate(results) for n, path in r.items()}
        self._ended(stage.name, all(state.name == "Cached" for state in states))
        return results

    def _ended(self, name: str, cached: bool) -> None:
        self.cached[name] = cached
        if not cached:
            self.on_run()
