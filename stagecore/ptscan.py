"""Read what a ``.pt`` file holds without torch: a cached run checks its tensors files and never imports torch (2 s).

`scan` is Python's documented "restricting globals" unpickler (`pickle.Unpickler.find_class`) over the
``data.pkl`` of torch's zip format: it resolves only the three globals a ``torch.save`` of a dict of plain CPU
tensors refers to, each to a stand-in here that records a tensor's shape and dtype and checks that its bytes
are in the archive. It never calls anything from the file, so it is safe on hostile bytes; torch's own
``weights_only`` allowlist holds those three globals, so what it accepts torch would load too. Anything else (a
global it does not know, a malformed archive) is `Unproven`, and the caller asks torch (`manifest._load_pt`),
which decides as before.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# torch's typed-storage names as torch.save writes them: the dtype (as the manifest spells it) and its bytes
STORAGES = {
    "DoubleStorage": ("float64", 8),
    "FloatStorage": ("float32", 4),
    "HalfStorage": ("float16", 2),
    "BFloat16Storage": ("bfloat16", 2),
    "LongStorage": ("int64", 8),
    "IntStorage": ("int32", 4),
    "ShortStorage": ("int16", 2),
    "CharStorage": ("int8", 1),
    "ByteStorage": ("uint8", 1),
    "BoolStorage": ("bool", 1),
}
MAX_PICKLE_BYTES = 16 << 20  # data.pkl holds names and numbers; the tensors' bytes are separate entries


class Unproven(Exception):
    """The scan cannot vouch for the file (torch may still load it, or refuse it): ask torch."""


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """A tensor as the file describes it; its bytes are in the archive (checked), not read."""

    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True, slots=True)
class _StorageType:
    name: str


@dataclass(frozen=True, slots=True)
class _Storage:
    dtype: str
    numel: int


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, metadata=None) -> TensorInfo:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: checks the view lies inside its storage."""
    ints = (offset, *size, *stride)
    if not isinstance(storage, _Storage) or not isinstance(size, tuple) or not isinstance(stride, tuple):
        raise Unproven("not a tensor of a storage")
    if any(type(v) is not int or v < 0 for v in ints) or len(size) != len(stride):
        raise Unproven("a tensor's offset, size or stride is not a count")
    if requires_grad is not False or hooks != OrderedDict() or metadata not in (None, {}):
        raise Unproven("a tensor with gradients, hooks or metadata")
    if all(size) and offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) >= storage.numel:
        raise Unproven("a tensor reaches past its storage")
    return TensorInfo(size, storage.dtype)


def _ordered_dict() -> OrderedDict:
    return OrderedDict()  # a tensor's (empty) backward hooks


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGES:
            return _StorageType(name)
        if (module, name) == ("collections", "OrderedDict"):
            return _ordered_dict
        raise Unproven(f"refers to {module}.{name}")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise Unproven("an unknown persistent id")
        _, kind, key, location, numel = pid
        if not isinstance(kind, _StorageType) or not isinstance(key, str) or location != "cpu":
            raise Unproven("a storage not of a known type on the CPU")
        if type(numel) is not int or numel < 0:
            raise Unproven("a storage's size is not a count")
        dtype, itemsize = STORAGES[kind.name]
        try:
            stored = self.archive.getinfo(f"{self.prefix}data/{key}").file_size
        except KeyError:
            raise Unproven(f"storage {key!r} is not in the archive") from None
        if stored < numel * itemsize:
            raise Unproven(f"storage {key!r} is shorter than its tensors")
        return _Storage(dtype, numel)


def scan(path: str | Path) -> dict[str, Any]:
    """The dict a ``.pt`` file holds, each tensor as a `TensorInfo`; `Unproven` when the file is anything else."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pickles) != 1 or archive.getinfo(pickles[0]).file_size > MAX_PICKLE_BYTES:
                raise Unproven("not one data.pkl of a bounded size")
            prefix = pickles[0].removesuffix("data.pkl")
            obj = _Unpickler(archive.read(pickles[0]), archive, prefix).load()
    except Unproven:
        raise
    except Exception as exc:  # a malformed archive or pickle, a stand-in called wrongly: torch's call to make
        raise Unproven(f"{type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise Unproven("not a dict keyed by names")
    return obj
