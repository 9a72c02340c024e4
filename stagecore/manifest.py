"""Manifests beside every artifact (sha256, size, format, schema, and what produced it), and the verified reads
that check a file against its manifest before anyone uses it.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import pickle
import platform
import struct
import sys
import zipfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from stagecore import ptscan
from storage import validate
from storage.errors import IntegrityError
from storage.layout import MANIFEST_SUFFIX
from storage.remote import StoreUnreachable
from storage.store import artifact_of, local_copy, locate, open_store

MANIFEST_VERSION = 1


# Packages whose versions a manifest records: those that write the bytes, and those that compute them.
PACKAGES = ("torch", "pyarrow", "numpy", "pandas", "scikit-learn", "matplotlib", "prefect")


def versions() -> dict[str, str]:
    """The versions every manifest and run record carries: read from package metadata once per process (each
    read scans the installed distributions: 15 ms, and a run writes about twenty manifests)."""
    return dict(_versions())


@functools.cache
def _versions() -> tuple[tuple[str, str], ...]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return tuple(found.items())


def describe_schema(path: Path, fmt: str) -> dict[str, Any]:
    """What a reader can rely on: Parquet columns and dtypes, tensor names/shapes/dtypes, PNG size, JSON keys."""
    if fmt == "parquet":
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
        return {"rows": meta.num_rows, "columns": [{"name": f.name, "type": str(f.type)} for f in schema]}
    if fmt == "pt":
        import torch  # where used: a cached run that reads no tensors never imports torch (2 s)

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
    """Entry names of a ``.pt`` dict, with shape and dtype for tensors (torch's, or `ptscan`'s descriptions of
    them) and the type of anything else."""
    torch = sys.modules.get("torch")  # no value is a torch.Tensor where torch was never imported
    out: dict[str, Any] = {}
    for name, value in obj.items():
        if isinstance(value, ptscan.TensorInfo):
            out[name] = {"shape": list(value.shape), "dtype": value.dtype}
        elif torch is not None and isinstance(value, torch.Tensor):
            out[name] = {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
        else:
            out[name] = {"type": type(value).__name__}
    return {"entries": out}


def manifest_of(
    file: str,
    sha256: str,
    size: int,
    fmt: str,
    schema: dict[str, Any],
    stage: str,
    inputs: list[dict[str, str]],
    key: str | None = None,
    params: dict[str, Any] | None = None,
    created: str | None = None,
) -> dict[str, Any]:
    """The manifest of a file the store wrote: what it is (digest, size, format, schema), which stage made it
    from which inputs (under which key and parameters, for a stage's artifact), and the library versions."""
    made = {"stage": stage} | ({"key": key, "params": params} if key is not None else {})
    return {
        "manifest_version": MANIFEST_VERSION,
        "file": file,
        "sha256": sha256,
        "size": size,
        "format": fmt,
        "schema": schema,
        **made,
        "inputs": inputs,
        "versions": versions(),
        "created": created or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def manifest_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path.with_name(path.name + MANIFEST_SUFFIX)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of ``path`` (an artifact, or its URL on an object store), checked against its kind's shape
    (`storage.validate.manifest`); IntegrityError when it is missing, unreadable or malformed: the artifact is
    then treated as missing, and the stage that wrote it runs again."""
    mpath = manifest_path(path)
    try:
        content = _read_content(path)
    except FileNotFoundError:
        raise IntegrityError(f"{path}: no manifest ({mpath.name} is missing)") from None
    except StoreUnreachable:  # the store's fault: not a manifest to give up on
        raise
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"{path}: manifest {mpath.name} is unreadable ({exc})") from None
    try:
        body = validate.load_json(content, mpath.name)
    except validate.Invalid as exc:
        raise IntegrityError(f"{path}: manifest {mpath.name} is unreadable ({_problem(exc, mpath.name)})") from None
    try:
        return validate.manifest(body, file=Path(str(path)).name, what=mpath.name)
    except validate.Invalid as exc:
        raise IntegrityError(f"{path}: manifest {mpath.name} is malformed ({_problem(exc, mpath.name)})") from None


def _problem(exc: validate.Invalid, name: str) -> str:
    return str(exc).removeprefix(f"{name}: ")


def _read_content(path: str | os.PathLike[str]) -> bytes:
    """The bytes of ``path``'s manifest (at most one byte over the limit)."""
    store, name = locate(path)
    data = store.read(name + MANIFEST_SUFFIX, limit=validate.MAX_JSON_BYTES)
    if data is None:
        raise FileNotFoundError(str(path) + MANIFEST_SUFFIX)
    return data


def verify(path: str | os.PathLike[str], key: str | None = None, load: bool = False) -> dict[str, Any]:
    """Check ``path`` against its manifest (and, if given, that it was produced under ``key``); its manifest.

    Raises IntegrityError saying what is wrong: missing file, missing manifest, size or sha256 mismatch. With
    ``load``, a ``.pt`` must also load under ``weights_only`` with the entries its manifest lists: a file whose
    manifest was made to match is still refused if torch would refuse it. An object store's URL is checked in
    place (size, then sha256 streamed).
    """
    store, name = locate(path)
    size = store.size(name)
    if size is None:
        raise IntegrityError(f"{path}: file is missing")
    manifest = read_manifest(path)
    if key is not None and manifest.get("key") != key:
        raise IntegrityError(f"{path}: was produced under key {manifest.get('key')}, not {key}")
    if size != manifest.get("size"):
        raise IntegrityError(f"{path}: size {size} bytes, manifest says {manifest.get('size')} (truncated?)")
    actual = store.sha256(name)
    if actual != manifest["sha256"]:
        raise IntegrityError(f"{path}: sha256 {actual[:12]}… does not match its manifest ({manifest['sha256'][:12]}…)")
    if load and manifest.get("format") == "pt":
        schema = describe_pt(_scan_pt(store.get(name)))
        if schema != manifest.get("schema"):
            raise IntegrityError(f"{path}: its entries do not match its manifest's schema")
    return manifest


def verify_used(path: str | os.PathLike[str]) -> dict[str, Any]:
    """`verify` of the bytes this process used for ``path``: for an artifact's URL, this process's copy in its
    scratch mirror when it has one (what a run record vouches for: the files the run read and wrote, hashed
    once), else the object in place on the store, streamed."""
    copy = local_copy(str(path))
    if copy is not None and copy.is_file() and manifest_path(copy).is_file():
        return _as_url(lambda: verify(copy), copy, str(path))
    return verify(path)


def _scan_pt(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The entries of a ``.pt`` file for a check: read without torch where `ptscan` can vouch for the file (a
    cached run then never imports torch), else as torch loads it under ``weights_only`` (mapped, not read)."""
    try:
        return ptscan.scan(path)
    except ptscan.Unproven:
        return _load_pt(path, mmap=True)


def _load_pt(path: str | os.PathLike[str], mmap: bool = False) -> dict[str, Any]:
    """``torch.load`` with ``weights_only`` (never unpickles arbitrary objects); a refused file is an
    IntegrityError. ``mmap`` maps the tensors instead of reading them, for a cheap check."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, AttributeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IntegrityError(f"{path}: torch refuses to load it under weights_only ({reason[:200]})") from None
    if not isinstance(obj, dict):
        raise IntegrityError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    return obj


def localize(path: str | os.PathLike[str]) -> str:
    """The local file to open for an artifact: a local path as it is; an artifact's URL on an object store, this
    process's copy of it in its scratch mirror, downloaded with its manifest unless this process already has
    it, and verified against that manifest before it is returned.

    This is how files travel between processes that share no disk (Dask workers, the flow's process): what is
    handed from stage to stage on an object store is the artifact's URL, and whichever process opens it gets
    its own verified copy. A copy that fails its check is downloaded once more, then refused.
    """
    url = str(path)
    located = artifact_of(url)
    if located is None:  # a file of this machine
        return url
    store, relative = open_store(located[0]), located[1]
    local = store.work / relative
    if local.is_file() and manifest_path(local).is_file():
        try:
            verify(local)
            return str(local)
        except IntegrityError:
            pass  # damaged here, in this process's scratch: fetched again
    store.get(relative + MANIFEST_SUFFIX)
    store.get(relative)
    _as_url(lambda: verify(local), local, url)
    return str(local)


def _as_url(check: Any, local: Path, url: str) -> Any:
    """Run ``check`` on a scratch copy, naming the artifact's URL rather than the copy in any error."""
    try:
        return check()
    except IntegrityError as exc:
        raise IntegrityError(str(exc).replace(str(local), url)) from None


def _verified(path: str | os.PathLike[str]) -> str:
    """The local file to read for ``path``, verified against its manifest (an artifact's URL: `localize`)."""
    try:
        local = localize(path)
        if local == str(path):  # not a copy, which `localize` verified
            verify(path)
    except IntegrityError as exc:
        raise IntegrityError(f"{exc}; run the flow again to rebuild it (--refresh rebuilds every stage)") from None
    return local


def read_parquet(path: str | os.PathLike[str]) -> pa.Table:
    return pq.read_table(_verified(path))


def open_parquet(path: str | os.PathLike[str]) -> pq.ParquetFile:
    """A verified Parquet file, for readers that take one column or row group at a time.

    ``pre_buffer`` off: pyarrow otherwise keeps what it pre-read for the reader's lifetime, so a streamed read
    grows with the file (20M rows: 78 MB still held after the last batch, against 1 MB).
    """
    return pq.ParquetFile(_verified(path), pre_buffer=False)


def read_pt(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a stage's ``.pt`` file, verified, without unpickling arbitrary objects."""
    local = _verified(path)
    try:
        return _load_pt(local)
    except IntegrityError as exc:
        raise IntegrityError(f"{exc}; run the flow again with --refresh to rebuild it") from None


def read_json(path: str | os.PathLike[str]) -> Any:
    """A JSON artifact, verified, and parsed within `storage.validate.load_json`'s bounds."""
    local = _verified(path)
    try:
        return validate.load_json(Path(local).read_bytes(), str(path))
    except validate.Invalid as exc:
        raise IntegrityError(f"{exc}; run the flow again with --refresh to rebuild it") from None


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an artifact (a PNG), verified."""
    return Path(_verified(path)).read_bytes()


def describe(path: str | os.PathLike[str]) -> str:
    """``path (12.3 kB)`` for log lines."""
    store, name = locate(path)
    size = store.size(name) or 0
    return f"{path} ({size / 1000:.1f} kB)"
