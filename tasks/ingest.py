"""Stage 1: read the CSV (a local path or an http(s) URL) or Parquet file and store it unchanged as Parquet.

The CSV is read in blocks of whole records (cut at a line break outside quotes: a quoted field may hold line
breaks, RFC 4180), each parsed by pyarrow on all cores and stored as one Parquet row
group, so a file of tens of millions of rows never sits in memory whole. The column types are inferred from the
first block; if a later block contradicts them (an integer column that turns decimal further down), the file is
read again whole, which lets pyarrow widen the types. Each block is encoded to Parquet on a second thread while
the next is parsed (both release the GIL). The delimiter (comma,
semicolon, tab or pipe) is read off the header line; a CSV compressed with gzip or bzip2 (``.csv.gz``,
``.csv.bz2``) is decompressed on the fly.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import itertools
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from prefect import get_run_logger

import stagecore as core
import storage
from storage.errors import InputError

_SNIFF_BYTES = 8192
DELIMITERS = (",", ";", "\t", "|")  # the ones a header line is searched for, in order of preference
_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open}  # by the file's name, which a download keeps (core.sources)
_QUOTED = re.compile(r'"[^"]*"')
# Bytes of CSV per block and so per row group: a block is parsed by pyarrow's multithreaded reader (its own
# streaming reader parses on one thread: 9.0 s against 5.0 s for a 558 MB file on 2 cores), and memory holds
# about two blocks and their tables at a time.
BLOCK_BYTES = 16 << 20


@contextmanager
def local_copy(source: str) -> Iterator[Path]:
    """A local path for ``source``: the file itself, or a URL (http(s), s3://…) downloaded (streamed) to a
    temporary file, once: the stage cache's download when it made one."""
    if not storage.is_url(source):
        yield check_file(source)
        return
    already = storage.downloaded_copy(source)  # the stage cache downloaded it to key this stage
    if already is not None:
        yield already
        return
    with storage.downloaded([source]) as paths:
        yield paths[source]


def check_file(source: str) -> Path:
    """The path of a readable regular file, or a one-line error saying what is wrong with it."""
    path = Path(source)
    if not path.exists():
        raise InputError(f"{source}: file not found; pass --data with the path of a CSV file")
    if path.is_dir():
        raise InputError(f"{source}: is a folder, not a CSV file; pass --data with a file")
    storage.check_regular(path, source)
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise InputError(f"{source}: cannot be read ({exc.strerror}); check its permissions") from None
    return path


def read_head(path: Path, source: str) -> bytes:
    """The first bytes of the CSV's text: decompressed for a ``.gz`` or ``.bz2`` file."""
    opener = COMPRESSED.get(path.suffix.lower(), open)
    try:
        with opener(path, "rb") as fh:
            return fh.read(_SNIFF_BYTES)
    except (OSError, EOFError, ValueError) as exc:  # gzip.BadGzipFile is an OSError, a bad bz2 stream OSError
        kind = path.suffix.lower().lstrip(".")
        raise InputError(f"{source}: cannot be decompressed as {kind} ({exc}); pass --data with a valid file") from None


def check_text(head: bytes, source: str) -> None:
    """Refuse an empty, binary or non-UTF-8 file from its first bytes, before pyarrow gives a cryptic message."""
    if not head.strip():
        raise InputError(f"{source}: file is empty; pass --data with a CSV that has a header and rows")
    if b"\x00" in head:
        raise InputError(f"{source}: is a binary file, not a CSV; pass --data with a text CSV")
    try:  # incremental: a character cut at the end of the sniffed bytes is not an error
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as exc:
        raise _not_utf8(source, f"byte {head[exc.start]:#04x} at offset {exc.start}") from None


def _not_utf8(source: str, where: str) -> InputError:
    return InputError(
        f"{source}: is not UTF-8 text ({where}; Latin-1 or Windows-1252?); re-save it as UTF-8 and pass it again"
    )


def detect_delimiter(head: bytes) -> str:
    """The delimiter of the header line: the most frequent of , ; TAB | outside quotes (a comma on a tie or none)."""
    line = head.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    counts = Counter(c for c in _QUOTED.sub("", line) if c in DELIMITERS)
    return max(DELIMITERS, key=lambda d: (counts[d], -DELIMITERS.index(d)))


def delimiter_name(delimiter: str) -> str:
    return _DELIMITER_NAMES.get(delimiter, repr(delimiter))


def check_header(names: list[str], source: str) -> None:
    """Refuse a header that repeats a column name: every later stage picks columns by name."""
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if repeated:
        shown = ", ".join("'' (an empty name: a trailing delimiter?)" if n == "" else repr(n) for n in repeated)
        raise InputError(
            f"{source}: the header repeats column name(s) {shown}; give every column a unique name and pass it again"
        )


def check_schema(schema: pa.Schema, source: str) -> None:
    """The header's checks on a CSV's schema: names that are UTF-8 and unique, no undecodable (binary) column.

    pyarrow reads invalid UTF-8 in a column as ``binary`` and keeps it in a name as raw bytes, which only fail
    when Python decodes them; both mean the file is not UTF-8.
    """
    try:
        names = schema.names
    except UnicodeDecodeError:
        raise _not_utf8(source, "in the header") from None
    check_header(names, source)
    binary = [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    if binary:
        raise _not_utf8(source, f"in column {binary[0]!r}")


def _parse_error(exc: Exception, source: str) -> InputError:
    reason = str(exc).splitlines()[0]
    return InputError(f"{source}: cannot be parsed as CSV ({reason})")


def sniff_csv(path: Path, source: str) -> str:
    """Check the start of a CSV (empty, binary, not UTF-8) and return its delimiter."""
    head = read_head(path, source)
    check_text(head, source)
    return detect_delimiter(head)


def csv_to_parquet(
    path: Path, out: core.Outputs, source: str, delimiter: str | None = None, name: str = "raw.parquet"
) -> pa.Schema:
    """Stream ``path`` into ``raw.parquet`` (atomically), block by block; returns the schema written.

    ``delimiter``: None to read it off the header line. Nothing is left at ``name`` unless every check passed.
    """
    if delimiter is None:
        delimiter = sniff_csv(path, source)
    parse = pacsv.ParseOptions(delimiter=delimiter)
    seen: dict[str, bool] = {}
    try:
        with out.sink(name) as sink:
            rows, schema = _stream(path, sink, parse, source, seen)
            if rows == 0:
                raise InputError(f"{source}: has a header but no data rows; add rows or pass another --data")
    except pa.ArrowInvalid as exc:
        if "conversion error" not in str(exc) and not seen.get("quotes"):
            raise _parse_error(exc, source) from None
        # a later block contradicts the types guessed from the first one: read whole, let pyarrow widen; or a
        # file with quotes that the blocks could not parse (a stray `"` inside a field, not RFC 4180, can put a
        # cut inside a quoted field): read whole, by pyarrow's own quote rules, which decide
        if seen.get("quotes"):
            parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
        try:
            table = pacsv.read_csv(path, parse_options=parse)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc2:
            raise _parse_error(exc2, source) from None
        check_schema(table.schema, source)  # a later block's invalid UTF-8 turns its column binary
        with out.sink(name) as sink:
            pq.write_table(table, sink, **out.parquet_options(table))
        schema = table.schema
    return schema


def is_parquet(source: str) -> bool:
    return Path(source).suffix.lower() in storage.PARQUET_SUFFIXES


def parquet_to_parquet(path: Path, out: core.Outputs, source: str, name: str = "raw.parquet") -> pa.Schema:
    """Copy a Parquet input into ``raw.parquet`` (atomically) a row group at a time, checking it is readable Parquet."""
    try:
        reader = pq.ParquetFile(path, pre_buffer=False)  # read a row group at a time, keep none
        check_header(reader.schema_arrow.names, source)
        groups = (reader.read_row_group(group) for group in range(reader.num_row_groups))
        first = next(groups, reader.schema_arrow.empty_table())
        with out.sink(name) as sink:
            with pq.ParquetWriter(sink, reader.schema_arrow, **out.parquet_options(first)) as writer:
                for table in itertools.chain([first], groups):
                    writer.write_table(table)
            if reader.metadata.num_rows == 0:
                raise InputError(f"{source}: has a schema but no rows; add rows or pass another --data")
    except (pa.ArrowInvalid, OSError) as exc:
        reason = str(exc).splitlines()[0]
        raise InputError(f"{source}: cannot be read as Parquet ({reason})") from None
    return reader.schema_arrow


def _stream(
    path: Path, out: BinaryIO, parse: pacsv.ParseOptions, source: str, seen: dict[str, bool]
) -> tuple[int, pa.Schema]:
    tables = parsed_blocks(path, parse, seen)
    first = next(tables)
    check_schema(first.schema, source)  # before a byte is written
    with pq.ParquetWriter(out, first.schema, **core.Outputs.parquet_options(first)) as writer:
        rows = core.Outputs.write_behind(itertools.chain([first], tables), writer.write_table)
    return rows, first.schema


def parsed_blocks(path: Path, parse: pacsv.ParseOptions, seen: dict[str, bool] | None = None) -> Iterator[pa.Table]:
    """The CSV as tables of ``BLOCK_BYTES`` of whole records each: the first one parses the header and infers the
    types, the later ones are parsed with its names and types (a value that does not fit is an
    ``ArrowInvalid`` "conversion error"). A block with a ``"`` in it is parsed with ``newlines_in_values`` (a
    quoted field may hold a line break; pyarrow's own blocks would cut it), and ``seen["quotes"]`` is set."""
    seen = {} if seen is None else seen
    quoted = pacsv.ParseOptions(
        delimiter=parse.delimiter, quote_char=parse.quote_char, double_quote=parse.double_quote, newlines_in_values=True
    )

    def options(block: bytes) -> pacsv.ParseOptions:
        if b'"' not in block:
            return parse
        seen["quotes"] = True
        return quoted

    blocks = line_blocks(path, BLOCK_BYTES)
    head = next(blocks, b"")
    first = pacsv.read_csv(pa.py_buffer(head), parse_options=options(head))
    yield first
    read = pacsv.ReadOptions(column_names=first.column_names)
    convert = pacsv.ConvertOptions(column_types=first.schema)
    for block in blocks:
        opts = options(block)
        table = pacsv.read_csv(pa.py_buffer(block), read_options=read, parse_options=opts, convert_options=convert)
        if table.num_rows:
            yield table


def line_blocks(path: Path, size: int) -> Iterator[bytes]:
    """The file's bytes (decompressed for ``.gz``, ``.bz2``) in blocks of about ``size`` that end at a record's
    end (`record_end`): never inside a quoted field, however many line breaks it holds.

    Each block starts at a record's start, so the quotes are counted from there; a block without a record's end
    (a quoted field longer than ``size``) grows until it has one.
    """
    opener = COMPRESSED.get(path.suffix.lower(), open)
    with opener(path, "rb") as fh:
        rest: list[bytes] = []  # read since the last cut, which holds no record's end
        odd = False  # whether ``rest`` holds an odd number of quotes
        while chunk := fh.read(size):
            cut = record_end(chunk, odd)
            if cut:
                yield b"".join([*rest, chunk[:cut]])
                rest, odd = [chunk[cut:]], chunk.count(b'"', cut) % 2 == 1
            else:
                rest.append(chunk)
                odd ^= chunk.count(b'"') % 2 == 1
        if tail := b"".join(rest):
            yield tail


def record_end(data: bytes, odd: bool = False) -> int:
    """The offset just past the last line break in ``data`` that ends a record, or 0 if none does.

    A line break ends a record when an even number of ``"`` precede it since a record's start (RFC 4180: a
    quoted field's own quotes are doubled, so a break inside one follows an odd number); ``odd``: the bytes
    before ``data`` since that start held an odd number. A block without quotes costs one ``memchr``.
    """
    end = data.rfind(b"\n")
    if not odd and b'"' not in data:
        return end + 1
    quotes = int(odd) + data.count(b'"', 0, end) if end >= 0 else 0
    while end >= 0 and quotes % 2:
        start = data.rfind(b"\n", 0, end)
        quotes -= data.count(b'"', start + 1, end)
        end = start
    return end + 1


def partition_columns(table_paths: list[str], sources: list[str]) -> list[list[str]]:
    """Each partition's column names, from its table's manifest (no file is read); a one-line error naming the
    first partition (by its source file) whose columns are not the first partition's, in some order.

    Partitions are one data set cut into files: the same columns in another order are the same data (the flow
    aligns them by name, `aligned_features`), but a column missing from one file or extra in it is not.
    """
    columns = [[c["name"] for c in core.read_manifest(path)["schema"]["columns"]] for path in table_paths]
    first = columns[0]
    for names, source in zip(columns[1:], sources[1:], strict=True):
        extra, missing = [n for n in names if n not in first], [n for n in first if n not in names]
        if extra or missing:
            differ = [f"extra column(s) {', '.join(map(repr, extra))}"] if extra else []
            differ += [f"missing column(s) {', '.join(map(repr, missing))}"] if missing else []
            raise InputError(
                f"{storage.redact(source)}: its columns are not those of {storage.redact(sources[0])} "
                f"({'; '.join(differ)}); give every partition the same columns (their order may differ)"
            )
    return columns


def aligned_features(
    table_paths: list[str], sources: list[str], target: str, features: list[str] | None
) -> list[str] | None:
    """The features to train on: ``features`` when named (each is read by name); else, when the partitions hold
    their columns in different orders, every column but the target in the first partition's order, so each
    partition's tensors have the same columns in the same order; else None (every column but the target)."""
    if features is not None or len(table_paths) < 2:
        return features
    columns = partition_columns(table_paths, sources)
    if all(names == columns[0] for names in columns):
        return None
    return [name for name in columns[0] if name != target]


RAW = "raw.parquet"


@core.stage("ingest", outputs=("table",))
def ingest_csv(source: core.File, root: str) -> dict[str, str]:
    """Read ``source`` (CSV, or Parquet by its suffix) and write ``raw.parquet``: column names and types kept."""
    label = storage.redact(source)  # what messages and logs name: a URL without its secrets
    with local_copy(source) as path:
        # keyed on the bytes read: for a URL, those of the download
        outputs = core.outputs(digests={"source": storage.sha256_file(path)})
        out = outputs.folder / RAW
        delimiter = None
        try:
            if is_parquet(source):
                schema = parquet_to_parquet(path, outputs, label)
            else:
                delimiter = sniff_csv(path, label)
                schema = csv_to_parquet(path, outputs, label, delimiter)
            outputs.record(RAW, "parquet")
        except BaseException as exc:
            outputs.discard()  # a refused input leaves nothing behind: no file without its manifest, not a folder
            if isinstance(exc, pa.ArrowInvalid):  # e.g. "Empty CSV file" from open_csv
                raise _parse_error(exc, label) from None
            raise
    rows = pq.ParquetFile(out).metadata.num_rows
    read = f"{label} ({delimiter_name(delimiter)}-delimited)" if delimiter else label
    get_run_logger().info(
        "read %s: %d rows × %d columns %s; wrote %s", read, rows, len(schema), schema.names, core.describe(out)
    )
    return {"table": str(out)}
