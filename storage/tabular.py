"""Reading a user's table: the checks and the block-wise CSV parsing.

Every check refuses with a one-line `InputError` naming the file: a missing, unreadable, empty, binary or
non-UTF-8 file, a header that repeats a name. The CSV is read in blocks of whole records (cut at a line break
outside quotes: a quoted field may hold line breaks, RFC 4180), each parsed by pyarrow on all cores, so a file
of tens of millions of rows never sits in memory whole; the column types are inferred from the first block. The
delimiter (comma, semicolon, tab or pipe) is read off the header line; a CSV compressed with gzip or bzip2
(``.csv.gz``, ``.csv.bz2``) is decompressed on the fly, by its name.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from storage.errors import InputError
from storage.hashing import check_regular
from storage.sources import PARQUET_SUFFIXES

_SNIFF_BYTES = 8192
DELIMITERS = (",", ";", "\t", "|")  # the ones a header line is searched for, in order of preference
_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open}  # by the file's name, which a download keeps (storage.sources)
_QUOTED = re.compile(r'"[^"]*"')
# Bytes of CSV per block and so per row group: a block is parsed by pyarrow's multithreaded reader (its own
# streaming reader parses on one thread: 9.0 s against 5.0 s for a 558 MB file on 2 cores), and memory holds
# about two blocks and their tables at a time.
BLOCK_BYTES = 16 << 20


def check_file(source: str) -> Path:
    """The path of a readable regular file, or a one-line error saying what is wrong with it."""
    path = Path(source)
    if not path.exists():
        raise InputError(f"{source}: file not found; pass --data with the path of a CSV file")
    if path.is_dir():
        raise InputError(f"{source}: is a folder, not a CSV file; pass --data with a file")
    check_regular(path, source)
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


def parse_error(exc: Exception, source: str) -> InputError:
    reason = str(exc).splitlines()[0]
    return InputError(f"{source}: cannot be parsed as CSV ({reason})")


def sniff_csv(path: Path, source: str) -> str:
    """Check the start of a CSV (empty, binary, not UTF-8) and return its delimiter."""
    head = read_head(path, source)
    check_text(head, source)
    return detect_delimiter(head)


def read_whole(path: Path, delimiter: str, source: str, failed: pa.ArrowInvalid, quotes: bool) -> pa.Table:
    """The CSV read whole, by pyarrow, after its blocks failed with ``failed``: a later block contradicted the
    types guessed from the first one (read whole, pyarrow widens them), or a file with quotes (``quotes``) could
    not be parsed block by block (a stray `"` inside a field, not RFC 4180, can put a cut inside a quoted field:
    read whole, by pyarrow's own quote rules, which decide). Any other failure is a one-line error."""
    if "conversion error" not in str(failed) and not quotes:
        raise parse_error(failed, source) from None
    parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=quotes)
    try:
        table = pacsv.read_csv(path, parse_options=parse)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise parse_error(exc, source) from None
    check_schema(table.schema, source)  # a later block's invalid UTF-8 turns its column binary
    return table


def is_parquet(source: str) -> bool:
    return Path(source).suffix.lower() in PARQUET_SUFFIXES


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
