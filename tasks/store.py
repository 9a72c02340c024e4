"""Where stage artifacts live, how they are named, hashed, written and read.

Every artifact is written to ``<root>/<stage>/<key>/<name>`` where ``key`` hashes everything that decides its
bytes: the stage, its parameters, the sha256 of its input files and the source of the code that made it.
Two runs that would write different bytes therefore never share a file, and a run that would write the same
bytes writes to the same place. Writes go to a temporary file in the same folder and are renamed into place,
so a crash never leaves a half-written file under a final name.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tasks.errors import InputError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = PROJECT_ROOT / "data" / "Advertising.csv"
DEFAULT_ROOT = PROJECT_ROOT / "data" / "artifacts"
ROOT_ENV = "LINREG_ARTIFACTS_DIR"

_CHUNK = 1 << 20


def artifacts_root(override: str | os.PathLike[str] | None = None) -> Path:
    """The absolute artifacts folder: the override, else ``$LINREG_ARTIFACTS_DIR``, else ``data/artifacts``.

    Absolute, so a worker that runs the flow from a temporary directory writes to the same place.
    """
    chosen = override or os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    return Path(chosen).expanduser().resolve()


def data_source(data: str | None) -> str:
    """The CSV to read: a URL as given, a local path made absolute, or the shipped Advertising file."""
    if data is None:
        return str(DEFAULT_DATA)
    if data.startswith(("http://", "https://")):
        return data
    return str(Path(data).expanduser().resolve())


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def code_digest(*modules: ModuleType) -> str:
    """sha256 of the source of the given modules (and of this one), so a code change changes the key."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for module in modules:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def stage_key(stage: str, params: Mapping[str, Any], inputs: Iterable[str], code: str) -> str:
    """A short content hash of one stage's work: stage name, parameters, sha256 of its inputs, code."""
    payload = {
        "stage": stage,
        "params": params,
        "inputs": list(inputs),
        "code": code,
        "versions": {"torch": torch.__version__, "pyarrow": pa.__version__},
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def output_dir(
    root: str | os.PathLike[str],
    stage: str,
    module: ModuleType,
    params: Mapping[str, Any],
    input_files: Iterable[str | os.PathLike[str]] = (),
    input_digests: Iterable[str] = (),
) -> Path:
    """The folder for one stage's outputs, keyed on its work (see `stage_key`), created on demand."""
    digests = [*input_digests, *(sha256_file(p) for p in input_files)]
    key = stage_key(stage, params, digests, code_digest(module))
    folder = Path(root) / stage / key
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"artifacts folder {Path(root)} is not writable ({exc.strerror}); pass --artifacts-dir"
        ) from None
    return folder


def discard_if_empty(folder: Path) -> None:
    """Remove a stage folder that a failed stage created but never wrote to."""
    with suppress(OSError):  # not empty (an earlier run's complete output) or already gone
        folder.rmdir()


@contextmanager
def atomic_path(final: Path):
    """Yield a temporary path beside ``final``; rename it over ``final`` only if the block succeeds."""
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write {final} ({exc.strerror}); check space and permissions") from None
        raise


def _write(final: Path, writer: Callable[[Path], None]) -> str:
    with atomic_path(final) as tmp:
        writer(tmp)
    return str(final)


def write_parquet(table: pa.Table, final: Path) -> str:
    return _write(final, lambda tmp: pq.write_table(table, tmp))


def read_parquet(path: str | os.PathLike[str]) -> pa.Table:
    return pq.read_table(path)


def write_pt(obj: Mapping[str, Any], final: Path) -> str:
    return _write(final, lambda tmp: torch.save(dict(obj), tmp))


def read_pt(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a stage's ``.pt`` file without unpickling arbitrary objects."""
    return torch.load(path, map_location="cpu", weights_only=True)


def write_json(obj: Any, final: Path) -> str:
    return _write(final, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def write_bytes(data: bytes, final: Path) -> str:
    return _write(final, lambda tmp: tmp.write_bytes(data))


def png_bytes(figure: Any) -> bytes:
    """Render a matplotlib figure to PNG bytes (kept in memory so the write stays atomic)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def describe(path: str | os.PathLike[str]) -> str:
    """``path (12.3 kB)`` for log lines."""
    size = Path(path).stat().st_size
    return f"{path} ({size / 1000:.1f} kB)"
