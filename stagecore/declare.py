"""How a stage is declared once, by its typed signature, and how it writes its outputs.

``@stage("name")`` reads the function's signature: ``File``/``Files`` arguments are inputs keyed by content,
every other argument but ``root`` is a parameter in the key. ``outputs()`` inside the function is the writer
for this very call's ``<root>/<stage>/<key>/`` folder: atomic, write-once, a manifest beside each file.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import json
import os
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, BinaryIO, ClassVar, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import Task

from stagecore.behind import ParquetWriteBehind, WriteBehind, write_behind
from stagecore.keys import code_digest, plain, stage_key
from stagecore.manifest import (
    MANIFEST_SUFFIX,
    describe_pt,
    describe_schema,
    localize,
    manifest_of,
    manifest_path,
)
from storage.atomic import atomic_path, write_json
from storage.errors import RETRIES
from storage.hashing import HashingWriter, remember, sha256_file
from storage.sources import is_url, redact
from storage.store import Store, open_store, public
from storage.storepaths import recorded

R = TypeVar("R")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _listed(name: str, paths: Iterable[str]) -> dict[str, str]:
    """A list of input files (one per partition) as ``{"name[0]": path, ...}``."""
    return {f"{name}[{i}]": str(path) for i, path in enumerate(paths)}


FILE, FILES = "linreg:file", "linreg:files"


File = Annotated[str, FILE]  # a stage argument that is an input file: keyed by its content, not its path


Files = Annotated[list[str], FILES]  # a list of input files (one per partition)


ROOT_ARGUMENT = "root"  # where the store is: not part of what a stage computes


def stage(name: str, outputs: tuple[str, ...] = (), **options: Any) -> Callable[[Callable[..., R]], Task]:
    """Declare a stage once, by its typed signature, as its Prefect task: ``File``/``Files`` arguments are inputs
    keyed by content, every other argument but ``root`` is a parameter in the key. Nothing is listed by hand.
    ``outputs`` names what the function returns (name → file): a cache record must list exactly those.

    ``options`` are the task's (``retries``, ``timeout_seconds``, ``tags``…), kept by the stage cache
    (`stagecore.cache.bind`); by default a stage retries what may pass (`errors.RETRIES`: a store or network
    that did not answer), never a user's mistake. Inside the function, `outputs` gives the writer for this
    very call's folder, so the arguments are never written out again either. The declaration is the task's
    ``.fn.stage``, which the cache keys on.
    """

    def declare(fn: Callable[..., R]) -> Task:
        hints = typing.get_type_hints(fn, include_extras=True)
        signature = inspect.signature(fn)
        if ROOT_ARGUMENT not in signature.parameters:
            raise TypeError(f"stage {name}: {fn.__qualname__} needs a `root: str` argument (the store)")
        files = tuple(p for p in signature.parameters if _is_file_argument(hints.get(p)))
        params = tuple(p for p in signature.parameters if p not in files and p != ROOT_ARGUMENT)
        declared = Stage(name, fn.__module__, params=params, files=files, returns=tuple(outputs))

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> R:
            return _call_declared(declared, fn, args, kwargs)

        call.stage = declared  # type: ignore[attr-defined]
        return Task(call, **{"name": fn.__name__, **RETRIES, **options})

    return declare


def _call_declared(declared: Stage, fn: Callable[..., R], args: tuple, kwargs: dict) -> R:
    """Run a declared stage function with its call's arguments known to `outputs`. At module level, so a
    stage shipped to a Dask worker pickles this by reference (a ContextVar cannot be pickled by value)."""
    bound = inspect.signature(fn).bind(*args, **kwargs)
    bound.apply_defaults()
    bound.arguments.update(declared.localize(bound.arguments))
    token = _CALL.set((declared, dict(bound.arguments)))
    try:
        return fn(*bound.args, **bound.kwargs)
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
        raise RuntimeError("core.outputs() is for the body of a function declared with @core.stage") from None
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
    returns: tuple[str, ...] = ()  # the output names the function returns; () when not declared (not checked)

    names: ClassVar[set[str]] = set()  # every stage's name: the top-level folders a store may hold

    def __post_init__(self) -> None:
        Stage.names.add(self.name)

    def localize(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """The call's arguments with each input file that is an artifact's URL on its store (``root``) replaced
        by this process's verified local copy (`stagecore.manifest.localize`); anything else as it is.

        On an object store, stages hand each other artifact URLs, which mean the same in every process; here,
        before the key is taken and the stage runs, each becomes a local file in this process's scratch
        mirror. A stage therefore always opens local files, whichever process (or machine) wrote them.
        """
        store = open_store(str(args.get(ROOT_ARGUMENT, "")))
        return self._map_files(args, lambda value: localize(value) if store.artifact(value) else value)

    def published(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """The call's arguments as any process can use them: each input file in this process's scratch mirror by
        its URL (`localize`'s inverse); anything else as it is."""
        return self._map_files(args, open_store(str(args.get(ROOT_ARGUMENT, ""))).public)

    def _map_files(self, args: Mapping[str, Any], each: Callable[[Any], Any]) -> dict[str, Any]:
        """``args`` with ``each`` applied to every input file (a ``File``, or each path of a ``Files``)."""
        out = dict(args)
        for name in self.files:
            if name in out:
                value = out[name]
                out[name] = each(value) if isinstance(value, str | os.PathLike) else [each(v) for v in value]
        return out

    def parameters(self, args: Mapping[str, Any]) -> dict[str, Any]:
        return {name: plain(args[name]) for name in self.params}

    def inputs(self, args: Mapping[str, Any], digests: Mapping[str, str] | None = None) -> list[dict[str, str]] | None:
        """``[{name, path, sha256}]`` for the input files; None when one is a URL (unknown until downloaded).

        A file inside the store is named relative to its root, anything else as given, redacted (`recorded`).
        """
        out = []
        root = args.get(ROOT_ARGUMENT)
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
                shown = recorded(root, path) if root is not None else redact(public(path))
                out.append({"name": label, "path": shown, "sha256": sha})
        return out

    def urls(self, args: Mapping[str, Any]) -> dict[str, str]:
        """The input files that are URLs (``http(s)://``, ``s3://``… not artifacts of the store), by label."""
        out = {}
        for name in self.files:
            value = args[name]
            paths = {name: str(value)} if isinstance(value, str | os.PathLike) else _listed(name, value)
            out.update({label: path for label, path in paths.items() if is_url(path)})
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
        store = open_store(root)
        folder = store.work / store.claim(self.name, key)
        return Outputs(folder, self.name, key, params, inputs, store)


@contextmanager
def hashed_file(final: Path) -> Iterator[HashingWriter]:
    """A sink for ``final``'s bytes, written atomically (`atomic_path`) and hashed as they pass: once the block
    has ended, the file is in place and `sha256_file` knows its digest without reading it back."""
    with atomic_path(final) as tmp, open(tmp, "wb") as raw:
        sink = HashingWriter(raw)
        try:
            yield sink
        except Exception as exc:
            # torch.save reports a write that failed (a full disk) as "RuntimeError: [enforce fail at
            # inline_container.cc…]": the OSError underneath is what `atomic_path` names in one line
            if sink.failed is not None and not isinstance(exc, OSError):
                raise sink.failed from None
            raise
    remember(final, sink.sha256.hexdigest(), sink.size)


# How every stage writes Parquet. No column statistics: the stages read whole files, never filter row groups by
# them, and computing min/max of every page costs as much as encoding it (20M rows × 4 float columns: 1.7 s →
# 1.0 s plain, 2.1 → 1.6 s with dictionaries).
PARQUET_OPTIONS: dict[str, Any] = {"write_statistics": False}


def parquet_options(sample: pa.Table) -> dict[str, Any]:
    """`PARQUET_OPTIONS` for a table whose rows look like ``sample``'s: an integer column of mostly distinct values
    (a row index, an id) delta-encoded, every other column dictionary-encoded as by default.

    A dictionary of distinct values only grows until the writer gives up on it and falls back to plain values,
    so it costs time and saves nothing; the deltas of a row index are all 1. The 20M-row CSV's index column:
    1.02 s and 85 MB with a dictionary, 0.19 s and 0.1 MB delta-encoded (2026-11-27).
    """
    delta = [
        field.name
        for field, column in zip(sample.schema, sample.columns, strict=True)
        if pa.types.is_integer(field.type) and len(column) and 2 * pc.count_distinct(column).as_py() > len(column)
    ]
    if not delta:
        return dict(PARQUET_OPTIONS)
    dictionary = [name for name in sample.column_names if name not in delta]
    encoding = dict.fromkeys(delta, "DELTA_BINARY_PACKED")
    return {**PARQUET_OPTIONS, "use_dictionary": dictionary, "column_encoding": encoding}


@dataclass(frozen=True)
class Outputs:
    """Writes one stage's artifacts, each atomically and with its manifest beside it."""

    folder: Path
    stage: str
    key: str
    params: dict[str, Any]
    inputs: list[dict[str, str]]
    store: Store  # where `record` publishes each file (on an object store: uploads it from the scratch mirror)

    parquet_options = staticmethod(parquet_options)
    write_behind = staticmethod(write_behind)

    def sink(self, name: str) -> AbstractContextManager[HashingWriter]:
        """Where a stage streams ``name``'s bytes itself (`hashed_file`); `record` writes its manifest after."""
        return hashed_file(self.folder / name)

    def discard(self) -> None:
        """Remove what this writer left in its folder, and the folder: a refused input leaves nothing behind."""
        for path in self.folder.iterdir():
            path.unlink(missing_ok=True)
        discard_if_empty(self.folder)

    def write_parquet(self, table: pa.Table, name: str) -> str:
        return self._write(name, "parquet", lambda sink: pq.write_table(table, sink, **PARQUET_OPTIONS))

    @contextmanager
    def parquet_writer(self, name: str, schema: pa.Schema) -> Iterator[ParquetWriteBehind]:
        """Write ``name`` batch by batch, for a table too large to hold whole (millions of predictions); each
        batch is encoded on a second thread while the caller makes the next (`stagecore.behind`).

        The same guarantees as `write_parquet`: the batches go to a temp file (hashed as they are written) that
        is renamed into place once the writer has closed, then the manifest is written; an exception in the
        block leaves nothing behind.
        """
        final = self.folder / name
        with (
            hashed_file(final) as sink,
            pq.ParquetWriter(sink, schema, **PARQUET_OPTIONS) as writer,
            WriteBehind(writer.write) as behind,
        ):
            yield ParquetWriteBehind(behind)
        self.record(name, "parquet")

    def write_pt(self, obj: Mapping[str, Any], name: str) -> str:
        # Saved to a file object, never to a path: torch.save to a path names the archive's folder after the
        # (random) temp file, so the same tensors would give different bytes, and a rebuild a different key
        # downstream. Streamed into the hashing sink, not through a BytesIO: 400 MB of tensors, 1.4 → 0.8 s.
        import torch  # where used: a cached run that writes no tensors never imports torch

        return self._write(name, "pt", lambda sink: torch.save(dict(obj), sink), schema=describe_pt(obj))

    def write_json(self, obj: Any, name: str) -> str:
        return self._write(name, "json", lambda sink: sink.write((json.dumps(obj, indent=2) + "\n").encode()))

    def write_png(self, data: bytes, name: str) -> str:
        if not data.startswith(_PNG_SIGNATURE):
            raise ValueError(f"{name}: not PNG bytes")
        return self._write(name, "png", lambda sink: sink.write(data))

    def _write(self, name: str, fmt: str, writer: Callable[[BinaryIO], Any], schema: dict | None = None) -> str:
        """Write ``name`` atomically through ``writer``, hashed as it is written: its manifest's digest costs no
        second read of the file."""
        with hashed_file(self.folder / name) as sink:
            writer(sink)
        return self.record(name, fmt, schema)

    def record(self, name: str, fmt: str, schema: dict[str, Any] | None = None) -> str:
        """Write the manifest of ``name``, a file this stage has just put (atomically) into its folder.

        The artifact lands first and its manifest second: a crash in between leaves an artifact without a
        manifest, which every read and every cache check treats as missing, so the stage runs again. On an
        object store both are uploaded in that same order, after the local file is complete and hashed.
        """
        final = self.folder / name
        schema = schema if schema is not None else describe_schema(final, fmt)
        size, digest = final.stat().st_size, sha256_file(final)
        manifest = manifest_of(name, digest, size, fmt, schema, self.stage, self.inputs, self.key, self.params)
        try:
            write_json(manifest, manifest_path(final))
        except BaseException:  # no artifact without its manifest: a full disk leaves neither
            final.unlink(missing_ok=True)
            raise
        rel = self.store.relative(final)
        self.store.put(rel)
        self.store.put(rel + MANIFEST_SUFFIX)
        return str(final)


def discard_if_empty(folder: Path) -> None:
    """Remove a stage folder that a failed stage created but never wrote to."""
    with suppress(OSError):  # not empty (an earlier run's complete output) or already gone
        folder.rmdir()
