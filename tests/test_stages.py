"""Each stage's contract on tiny inline data, through its pure functions and its task's ``.fn``."""

from __future__ import annotations

import http.server
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.model_selection import train_test_split

import stagecore as core
import storage
from conftest import ADVERTISING, writer
from linreg.tensors import to_tensors
from stagecore.behind import write_behind
from stagecore.declare import Stage
from storage.errors import InputError
from storage.tabular import check_file
from tasks import split
from tasks.drop_index import drop_index, drop_index_column
from tasks.ingest import csv_to_parquet, ingest_csv
from tasks.plot import loss_curve, predicted_vs_actual
from tasks.split import split_table

pytestmark = pytest.mark.no_server

SMALL = '"",x1,x2,y\n"1",1.0,2,3.5\n"2",2.0,1,4.0\n"3",3.0,0,5.5\n"4",4.0,5,6.0\n'
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def table(**columns) -> pa.Table:
    return pa.table(columns)


# --- ingest ---------------------------------------------------------------------------------------


def small_table() -> pa.Table:
    return pacsv.read_csv(pa.BufferReader(SMALL.encode()))


def test_csv_to_parquet_keeps_names_and_dtypes(write_csv, tmp_path):
    schema = csv_to_parquet(Path(write_csv(SMALL)), writer(tmp_path), "small.csv")
    written = pq.read_table(tmp_path / "raw.parquet")
    assert written.column_names == ["", "x1", "x2", "y"] == schema.names
    assert [str(f.type) for f in written.schema] == ["int64", "double", "int64", "double"]
    assert written.num_rows == 4


def test_csv_to_parquet_streams_blocks_into_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(storage.tabular, "BLOCK_BYTES", 4096)
    rows = "a,b\n" + "".join(f"{i},{i * 0.5}\n" for i in range(5000))
    (tmp_path / "big.csv").write_text(rows)
    csv_to_parquet(tmp_path / "big.csv", writer(tmp_path), "big.csv")
    parquet = pq.ParquetFile(tmp_path / "raw.parquet")
    assert parquet.metadata.num_row_groups > 1 and parquet.metadata.num_rows == 5000
    assert parquet.read().equals(pacsv.read_csv(tmp_path / "big.csv"))


def test_csv_to_parquet_delta_encodes_a_row_index_and_keeps_dictionaries_for_the_rest(tmp_path):
    rows = ",x,k\n" + "".join(f"{i},{i % 7 * 0.5},{i % 3}\n" for i in range(5000))  # index, low-cardinality x, k
    (tmp_path / "indexed.csv").write_text(rows)
    csv_to_parquet(tmp_path / "indexed.csv", writer(tmp_path), "indexed.csv")
    parquet = pq.ParquetFile(tmp_path / "raw.parquet")
    encodings = [set(parquet.metadata.row_group(0).column(i).encodings) for i in range(3)]
    assert "DELTA_BINARY_PACKED" in encodings[0] and "RLE_DICTIONARY" not in encodings[0]
    assert all("RLE_DICTIONARY" in e and "DELTA_BINARY_PACKED" not in e for e in encodings[1:])
    assert parquet.read().equals(pacsv.read_csv(tmp_path / "indexed.csv"))


def test_csv_to_parquet_widens_a_type_contradicted_by_a_later_block(tmp_path, monkeypatch):
    monkeypatch.setattr(storage.tabular, "BLOCK_BYTES", 4096)
    rows = "a,b\n" + "".join(f"{i},{i}\n" for i in range(5000)) + "1.5,2\n"
    (tmp_path / "mixed.csv").write_text(rows)
    csv_to_parquet(tmp_path / "mixed.csv", writer(tmp_path), "mixed.csv")
    written = pq.read_table(tmp_path / "raw.parquet")
    assert str(written.schema.field("a").type) == "double" and written.num_rows == 5001
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.usefixtures("no_run_logger")
def test_ingest_task_writes_parquet_unchanged(write_csv, artifacts):
    out = ingest_csv.fn(write_csv(SMALL), str(artifacts))
    assert core.read_parquet(out["table"]).equals(small_table())
    assert Path(out["table"]).name == "raw.parquet"


@pytest.mark.usefixtures("no_run_logger")
def test_ingest_hashes_the_csv_once_and_its_parquet_as_it_is_written(write_csv, artifacts):
    source = write_csv(SMALL)
    before = dict(storage.HASHING)
    out = ingest_csv.fn(source, str(artifacts))
    assert storage.HASHING["bytes"] - before["bytes"] == Path(source).stat().st_size  # read to hash: the CSV only
    assert storage.HASHING["streamed"] - before["streamed"] == Path(out["table"]).stat().st_size
    assert core.read_manifest(out["table"])["sha256"] == storage.sha256_file(out["table"])


@pytest.mark.usefixtures("no_run_logger")
def test_ingest_reads_an_http_url(tmp_path, artifacts):
    (tmp_path / "d.csv").write_text(SMALL)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/d.csv"
        out = ingest_csv.fn(url, str(artifacts))
        assert core.read_parquet(out["table"]).equals(small_table())
        with pytest.raises(InputError, match="cannot download"):
            ingest_csv.fn(url.replace("d.csv", "missing.csv"), str(artifacts))
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "file is empty"),
        (b"\n\n", "file is empty"),
        (b"a,b,sales\n", "has a header but no data rows"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is a binary file"),
        (b"a,b\n1,2\n3,4,5\n", "cannot be parsed as CSV"),
    ],
)
def test_csv_to_parquet_refuses_what_is_not_a_csv_with_rows(content, message, write_csv, tmp_path):
    with pytest.raises(InputError, match=message):
        csv_to_parquet(Path(write_csv(content)), writer(tmp_path), "bad.csv")
    assert not list(tmp_path.glob("*.parquet*")) and not list(tmp_path.glob(".*.tmp"))


def test_check_file_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match=r"nope\.csv: file not found"):
        check_file(str(tmp_path / "nope.csv"))
    with pytest.raises(InputError, match="is a folder"):
        check_file(str(tmp_path))


def test_write_behind_keeps_order_and_raises_either_sides_error():
    batches = [pa.record_batch({"x": [i, i]}) for i in range(5)]
    got: list[int] = []
    assert write_behind(iter(batches), lambda b: got.append(b.column(0)[0].as_py())) == 10
    assert got == [0, 1, 2, 3, 4]

    def broken_write(batch):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_behind(iter(batches), broken_write)

    def broken_read():
        yield batches[0]
        raise pa.ArrowInvalid("conversion error")

    written: list[int] = []
    with pytest.raises(pa.ArrowInvalid):
        write_behind(broken_read(), lambda b: written.append(b.num_rows))
    assert written == [2]  # the batch read before the error was written before the error surfaced


# --- drop index -----------------------------------------------------------------------------------


def test_drop_index_finds_the_unnamed_column_by_its_pandas_name():
    t = small_table()
    assert drop_index(t, "Unnamed: 0").column_names == ["x1", "x2", "y"]
    assert drop_index(t, "x1").column_names == ["", "x2", "y"]
    assert drop_index(t, None) is t


def test_drop_index_names_the_missing_column():
    t = table(a=[1, 2], b=[3, 4])
    with pytest.raises(InputError, match=r"index column 'Unnamed: 0' not found.*--index-column"):
        drop_index(t, "Unnamed: 0")


@pytest.mark.usefixtures("no_run_logger")
def test_drop_index_task(artifacts):
    raw = Stage("t", "stagecore.declare").outputs(artifacts, {}).write_parquet(small_table(), "r.parquet")
    out = drop_index_column.fn(raw, "Unnamed: 0", str(artifacts))
    assert core.read_parquet(out["table"]).column_names == ["x1", "x2", "y"]


@pytest.mark.usefixtures("no_run_logger")
def test_drop_index_task_streams_batches_in_order(artifacts, monkeypatch):
    """Bounded memory: the table is read and written a batch at a time, rows in order, index column unread."""
    monkeypatch.setattr("tasks.drop_index.BATCH_ROWS", 3)
    n = 10
    t = table(**{"": list(range(n)), "x": [float(i) / 3 for i in range(n)], "y": [2.0 * i for i in range(n)]})
    raw = Stage("t", "stagecore.declare").outputs(artifacts, {}).write_parquet(t, "r.parquet")
    out = drop_index_column.fn(raw, "Unnamed: 0", str(artifacts))
    clean = core.open_parquet(out["table"])
    assert clean.metadata.num_row_groups == 4  # 3 + 3 + 3 + 1 rows
    assert clean.read().equals(t.drop_columns([""]))


# --- split ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("test_size", "seed"), [(0.2, 0), (0.25, 7), (0.5, 123)])
def test_split_matches_sklearn_rows_and_order(test_size, seed):
    frame = pd.read_csv(ADVERTISING).drop(columns="Unnamed: 0")
    expected_train, expected_test = train_test_split(frame, test_size=test_size, random_state=seed)
    train, test = split_table(pa.Table.from_pandas(frame, preserve_index=False), test_size, seed)
    pd.testing.assert_frame_equal(train.to_pandas(), expected_train.reset_index(drop=True))
    pd.testing.assert_frame_equal(test.to_pandas(), expected_test.reset_index(drop=True))


def test_permutation_is_legacy_randomstates_drawn_once_while_held():
    """The very permutation scikit-learn's split takes, read-only; while a split holds it, another finds it drawn."""
    drawn = split.permutation(1001, 3)
    assert np.array_equal(drawn, np.random.RandomState(3).permutation(1001))
    assert not drawn.flags.writeable  # shared between partitions: none may shuffle it in place
    assert split.permutation(1001, 3) is drawn  # shared, not drawn again
    assert np.array_equal(split.permutation(1001, 4), np.random.RandomState(4).permutation(1001))
    mixed = table(a=list(range(1001)), b=[float(i) for i in range(1001)], c=[None, *map(str, range(1000))])
    train, test = split_table(mixed, 0.2, 3)  # numeric columns gathered by numpy, the rest by Arrow
    order = np.random.RandomState(3).permutation(1001)
    assert train.equals(mixed.take(order[201:])) and test.equals(mixed.take(order[:201]))


@pytest.mark.parametrize("test_size", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_test_size_outside_0_1(test_size):
    with pytest.raises(InputError, match="--test-size must be between 0 and 1"):
        split_table(table(a=list(range(10))), test_size, 0)


def test_split_needs_two_rows_each_side():
    with pytest.raises(InputError, match="3 rows are too few to split"):
        split_table(table(a=[1, 2, 3]), 0.5, 0)
    train, test = split_table(table(a=[1, 2, 3, 4]), 0.5, 0)
    assert (train.num_rows, test.num_rows) == (2, 2)


# --- tensorize ------------------------------------------------------------------------------------


def test_to_tensors_shapes_dtypes_and_names():
    train = table(a=[1, 2, 3], b=[1.5, 2.5, 3.5], y=[1.0, 2.0, 3.0])
    out = to_tensors(train, train.slice(0, 2), "y", None)
    assert out["features"] == ["a", "b"] and out["target"] == "y"
    assert out["x_train"].shape == (3, 2) and out["y_train"].shape == (3, 1) and out["x_test"].shape == (2, 2)
    assert all(out[k].dtype == torch.float64 for k in ("x_train", "y_train", "x_test", "y_test"))  # small: float64
    assert out["dtype"] == "float64" and "costs nothing measurable" in out["dtype_reason"]
    asked = to_tensors(train, train, "y", None, "float32")
    assert asked["x_train"].dtype == torch.float32 and asked["dtype_reason"] == "--dtype float32"
    assert to_tensors(train, train, "y", ["b"])["x_train"][:, 0].tolist() == [1.5, 2.5, 3.5]


@pytest.mark.parametrize(
    ("columns", "target", "features", "message"),
    [
        ({"a": [1, 2], "y": [1.0, 2.0]}, "sales", None, "target column 'sales' not found.*--target"),
        ({"a": [1, 2], "y": [1.0, 2.0]}, "y", ["zz"], "feature column 'zz' not found.*--features"),
        ({"a": ["u", "v"], "y": [1.0, 2.0]}, "y", None, r"feature column 'a' is not numeric \(string\).*--features"),
        ({"a": [1, 2], "y": ["p", "q"]}, "y", None, "target column 'y' is not numeric"),
        ({"a": [1.0, None], "y": [1.0, 2.0]}, "y", None, "column 'a' has 1 missing or non-finite"),
        ({"a": [1.0, float("nan")], "y": [1.0, 2.0]}, "y", None, "column 'a' has 1 missing or non-finite"),
        ({"a": [1.0, 2.0], "y": [float("inf"), 2.0]}, "y", None, "column 'y' has 1 missing or non-finite"),
        ({"y": [1.0, 2.0]}, "y", None, "no feature columns"),
    ],
)
def test_to_tensors_names_the_bad_column(columns, target, features, message):
    t = pa.table(columns)
    with pytest.raises(InputError, match=message):
        to_tensors(t, t, target, features)


# --- evaluate and plot ----------------------------------------------------------------------------


def test_plots_are_pngs():
    assert predicted_vs_actual(np.array([1.0, 2.0]), np.array([1.1, 1.9]), "y")[:8] == PNG_SIGNATURE
    assert loss_curve(np.array([4.0, 2.0, 1.0]))[:8] == PNG_SIGNATURE


@pytest.mark.parametrize(("n", "test_size", "seed"), [(37, 0.3, 5), (5, 0.4, 0), (1001, 0.33, 42)])
def test_split_matches_sklearn_on_odd_sizes(n, test_size, seed):
    t = table(i=list(range(n)))
    expected_train, expected_test = train_test_split(list(range(n)), test_size=test_size, random_state=seed)
    train, test = split_table(t, test_size, seed)
    assert train.column("i").to_pylist() == expected_train
    assert test.column("i").to_pylist() == expected_test


def test_to_tensors_refuses_values_beyond_float32():
    t = pa.table({"a": [1.0, 1e300], "y": [1.0, 2.0]})
    with pytest.raises(InputError, match=r"feature column 'a' has 1 value\(s\) beyond float32's range .*rescale"):
        to_tensors(t, t, "y", None, "float32")
