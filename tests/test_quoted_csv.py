"""A valid RFC 4180 CSV of any size is read: quoted fields holding line breaks, doubled quotes and delimiters.

Ingest cuts a CSV into blocks for pyarrow's multithreaded reader; a cut used to fall at any line break, inside a
quoted field too, and a file larger than one block was refused. ``BLOCK_BYTES`` is lowered here so that small
files span many blocks.
"""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

import storage.tabular
from conftest import writer
from flows.train import main
from storage.tabular import record_end
from tasks.ingest import csv_to_parquet

BLOCK = 4096


def quoted_rows(n: int, newline: str = "\n") -> str:
    """A numeric column around a string column whose values hold line breaks, doubled quotes and commas."""
    text = [f"x,note,y{newline}"]
    for i in range(n):
        note = f'"row {i}{newline}said ""hi, there""{newline}{newline}, and left"' if i % 3 else f"plain {i}"
        text.append(f"{i},{note},{2.5 * i + 1}{newline}")
    return "".join(text)


@pytest.mark.no_server
@pytest.mark.parametrize(
    ("data", "odd", "want"),
    [
        (b"a,b\n1,2\n", False, 8),
        (b'1,"x\ny"\n2,"z', False, 8),  # the last break is inside the open quote: cut after the first record
        (b'1,"x\ny', False, 0),  # no record ends here
        (b'y"\n2,3\n', True, 7),  # continues a quoted field opened in the block before
        (b'1,"say ""a\nb"""\n', False, 16),  # doubled quotes keep the count even
        (b"no break", False, 0),
    ],
)
def test_record_end_cuts_only_outside_quotes(data, odd, want):
    assert record_end(data, odd) == want


@pytest.mark.no_server
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_quoted_line_breaks_over_many_blocks_read_as_pandas_reads_them(newline, tmp_path, monkeypatch):
    monkeypatch.setattr(storage.tabular, "BLOCK_BYTES", BLOCK)
    source = tmp_path / "quoted.csv"
    source.write_bytes(quoted_rows(600, newline).encode())
    assert source.stat().st_size > 4 * BLOCK
    out = tmp_path / "raw.parquet"
    csv_to_parquet(source, writer(out.parent), str(source), name=out.name)
    assert pq.ParquetFile(out).num_row_groups > 2  # really read block by block
    got = pq.read_table(out).to_pandas()
    pd.testing.assert_frame_equal(got, pd.read_csv(source), check_dtype=False)
    assert got["note"][1] == f'row 1{newline}said "hi, there"{newline}{newline}, and left'


@pytest.mark.no_server
def test_a_quoted_field_longer_than_a_block_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(storage.tabular, "BLOCK_BYTES", BLOCK)
    long = "\n".join(f'line {i}, with ""quotes""' for i in range(3 * BLOCK // 20))
    source = tmp_path / "long.csv"
    source.write_text(f'x,note,y\n1,"{long}",2\n' + "".join(f"{i},short,{i}\n" for i in range(2000)))
    out = tmp_path / "raw.parquet"
    csv_to_parquet(source, writer(out.parent), str(source), name=out.name)
    pd.testing.assert_frame_equal(pq.read_table(out).to_pandas(), pd.read_csv(source), check_dtype=False)


@pytest.mark.no_server
def test_a_stray_quote_inside_a_field_still_reads(tmp_path, monkeypatch):
    """Not RFC 4180 (``5" tall``: a quote inside an unquoted field, which pyarrow keeps as a character), beside
    quoted line breaks: the count of quotes is off, the blocks may not parse, and the file is read whole."""
    monkeypatch.setattr(storage.tabular, "BLOCK_BYTES", BLOCK)
    source = tmp_path / "stray.csv"
    rows = "".join(f'{i}" tall,{i}\n' for i in range(500)) + "".join(f'"two\nlines",{i}\n' for i in range(500))
    source.write_text("height,n\n" + rows)
    out = tmp_path / "raw.parquet"
    csv_to_parquet(source, writer(out.parent), str(source), name=out.name)
    pd.testing.assert_frame_equal(pq.read_table(out).to_pandas(), pd.read_csv(source), check_dtype=False)


def test_a_csv_with_quoted_line_breaks_trains_on_its_numeric_columns(tmp_path, artifacts, monkeypatch, capsys):
    """The string column is refused as a feature by name (one line), and training on the numeric ones works."""
    monkeypatch.setattr(storage.tabular, "BLOCK_BYTES", BLOCK)
    source = tmp_path / "quoted.csv"
    source.write_text(quoted_rows(600))
    common = ["--data", str(source), "--target", "y", "--index-column", "none", "--artifacts-dir", str(artifacts)]
    assert main(common) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: feature column 'note' is not numeric"), err[-1]
    assert main([*common, "--features", "x", "--engine", "stats", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["weights"]["x"] == pytest.approx(2.5, rel=1e-4)  # y = 2.5·x + 1 exactly
    assert summary["bias"] == pytest.approx(1.0, abs=1e-2)
