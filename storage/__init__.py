"""Where the artifacts live: one storage interface (`Store`) for a local folder and an object store, the store's
layout, what it can prove it wrote (`clear`), the checks of every file it holds, and the data a run reads.

It knows nothing of stages: the stage core (stagecore/) writes through it, and nothing here imports stagecore.
"""

from storage.clean import clear, in_use
from storage.errors import RETRIES, InputError, IntegrityError, Transient
from storage.hashing import HASHING, check_regular, sha256_file
from storage.layout import (
    ALIAS_PATTERN,
    CACHE_DIR,
    CHAMPION_ALIASES,
    CHAMPION_BY_COLUMNS,
    CHAMPION_BY_NAME,
    CHAMPION_DIR,
    CHAMPION_GENERATIONS,
    HISTORY_DIR,
    HISTORY_SCHEMA,
    MANIFEST_SUFFIX,
    MARKER,
    MODEL_DIGEST_PATTERN,
    MODEL_NAME_PATTERN,
    RUNS_DIR,
    STORE_NAME,
)
from storage.project import DEFAULT_DATA, PROJECT_PACKAGES, PROJECT_ROOT
from storage.root import ROOT_ENV, prepare_root, store_relative, store_root
from storage.sources import (
    PARQUET_SUFFIXES,
    REDACTED,
    data_source,
    download,
    downloaded,
    downloaded_copy,
    is_partitioned,
    is_url,
    partition_sources,
    redact,
    redact_all,
)
from storage.store import Store, locate, open_store, public

__all__ = [
    "ALIAS_PATTERN",
    "CACHE_DIR",
    "CHAMPION_ALIASES",
    "CHAMPION_BY_COLUMNS",
    "CHAMPION_BY_NAME",
    "CHAMPION_DIR",
    "CHAMPION_GENERATIONS",
    "DEFAULT_DATA",
    "HASHING",
    "HISTORY_DIR",
    "HISTORY_SCHEMA",
    "MANIFEST_SUFFIX",
    "MARKER",
    "MODEL_DIGEST_PATTERN",
    "MODEL_NAME_PATTERN",
    "PARQUET_SUFFIXES",
    "PROJECT_PACKAGES",
    "PROJECT_ROOT",
    "REDACTED",
    "RETRIES",
    "ROOT_ENV",
    "RUNS_DIR",
    "STORE_NAME",
    "InputError",
    "IntegrityError",
    "Store",
    "Transient",
    "check_regular",
    "clear",
    "data_source",
    "download",
    "downloaded",
    "downloaded_copy",
    "in_use",
    "is_partitioned",
    "is_url",
    "locate",
    "open_store",
    "partition_sources",
    "prepare_root",
    "public",
    "redact",
    "redact_all",
    "sha256_file",
    "store_relative",
    "store_root",
]
