"""The stage core: how a stage is declared, keyed, cached, verified and recorded; it writes through `storage`.

What a stage module needs, and nothing else: ``@core.stage`` and its ``File``/``Files`` inputs, ``core.outputs()``
(the writer of this call's folder), the verified readers, the UI's two artifact kinds with the escaping of
anything from data, and the two errors. A flow adds `StageRunner` and `write_run_record`. Nothing outside the
package imports its submodules (tests/test_surface.py); each does one job (docs/architecture.md).
"""

from stagecore.cache import StageRunner
from stagecore.declare import File, Files, Outputs, outputs, stage
from stagecore.manifest import (
    describe,
    manifest_of,
    manifest_path,
    open_parquet,
    read_bytes,
    read_json,
    read_manifest,
    read_parquet,
    read_pt,
    verify,
)
from stagecore.markup import escape_mathtext, escape_md, markdown_artifact, table_artifact
from stagecore.runs import write_run_record
from storage.errors import InputError, IntegrityError

__all__ = [
    "File",
    "Files",
    "InputError",
    "IntegrityError",
    "Outputs",
    "StageRunner",
    "describe",
    "escape_mathtext",
    "escape_md",
    "manifest_of",
    "manifest_path",
    "markdown_artifact",
    "open_parquet",
    "outputs",
    "read_bytes",
    "read_json",
    "read_manifest",
    "read_parquet",
    "read_pt",
    "stage",
    "table_artifact",
    "verify",
    "write_run_record",
]
