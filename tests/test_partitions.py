"""A folder or glob of CSV/Parquet partitions: the same rows, statistics, weights and metrics as one file.

The partition functions are checked against their single-file counterparts on inline data (the statistics, metrics
and least squares that add up over partitions: tests/test_linreg.py); the flow is run on partitions with threads
and on a loopback Dask cluster, and compared with the single-file run.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import stagecore as core
import storage
from bench.make_data import make_csv
from conftest import writer
from flows.params import Params
from flows.train import linear_regression, main
from storage.errors import InputError
from tasks.ingest import parquet_to_parquet
from tasks.split import partition_offsets, split_partition, split_table

WEIGHTS_RTOL = 1e-10  # float64 statistics summed in another order: equal to rounding


def numbered(n: int) -> pa.Table:
    return pa.table({"row": np.arange(n), "x": np.arange(n) * 0.5})


@pytest.mark.parametrize("sizes", [[50, 30, 20], [1, 98, 1], [100]])
@pytest.mark.no_server
def test_partition_split_gives_the_single_file_rows(sizes):
    whole = numbered(sum(sizes))
    train, test = split_table(whole, test_size=0.25, seed=3)
    offsets = partition_offsets(sizes)
    assert offsets == np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
    parts = [split_partition(whole.slice(o, n), 0.25, 3, o, sum(sizes)) for o, n in zip(offsets, sizes, strict=True)]
    got_train = np.concatenate([p[0].column("row").to_numpy() for p in parts])
    got_test = np.concatenate([p[1].column("row").to_numpy() for p in parts])
    assert sorted(got_train) == sorted(train.column("row").to_numpy())
    assert sorted(got_test) == sorted(test.column("row").to_numpy())


@pytest.mark.no_server
def test_partition_sources_lists_a_folder_or_a_glob_sorted(tmp_path):
    for name in ("b.csv", "a.parquet", "c.CSV", "notes.txt"):
        (tmp_path / name).write_text("x\n1\n")
    (tmp_path / "sub.csv").mkdir()
    assert storage.is_partitioned(str(tmp_path)) and storage.is_partitioned(str(tmp_path / "*.csv"))
    assert not storage.is_partitioned(str(tmp_path / "b.csv")) and not storage.is_partitioned(None)
    names = [p.rsplit("/", 1)[1] for p in storage.partition_sources(str(tmp_path))]
    assert names == ["a.parquet", "b.csv", "c.CSV"]
    assert [p.rsplit("/", 1)[1] for p in storage.partition_sources(str(tmp_path / "[ab].*"))] == ["a.parquet", "b.csv"]
    with pytest.raises(InputError, match=r"matches no data files"):
        storage.partition_sources(str(tmp_path / "*.json"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=rf"folder {empty} matches no data files"):
        storage.partition_sources(str(empty))


@pytest.mark.no_server
def test_parquet_input_is_copied_unchanged_and_garbage_is_refused(tmp_path):
    source = tmp_path / "in.parquet"
    table = pa.table({"TV": [1.5, 2.5, 3.5], "sales": [1, 2, 3]})
    pq.write_table(table, source, row_group_size=2)
    out = tmp_path / "raw.parquet"
    parquet_to_parquet(source, writer(tmp_path), str(source))
    assert pq.read_table(out).equals(table)
    bad = tmp_path / "bad.parquet"
    bad.write_text("TV,sales\n1,2\n")
    with pytest.raises(InputError, match=r"bad.parquet: cannot be read as Parquet"):
        parquet_to_parquet(bad, writer(tmp_path), str(bad), name="raw2.parquet")
    assert not (tmp_path / "raw2.parquet").exists() and not list(tmp_path.glob("*.tmp"))


@pytest.mark.no_server
def test_a_folder_refuses_row_engine_and_builtins_before_running(tmp_path):
    with pytest.raises(InputError, match=r"folder or glob.*--engine auto or stats"):
        Params.parse(data=str(tmp_path), engine="rows")
    with pytest.raises(InputError, match=r"--method scratch"):
        Params.parse(data=str(tmp_path), method="builtins")


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory):
    """3,000 Advertising-shaped rows as one CSV, and the same rows as three partitions: CSV, Parquet, CSV."""
    folder = tmp_path_factory.mktemp("partitions")
    whole = make_csv(3000, folder / "whole.csv", seed=5)
    frame = pd.read_csv(whole)
    parts = folder / "parts"
    parts.mkdir()
    frame.iloc[:1000].to_csv(parts / "part-0.csv", index=False)
    frame.iloc[1000:2200].to_parquet(parts / "part-1.parquet", index=False)
    frame.iloc[2200:].to_csv(parts / "part-2.csv", index=False)
    return whole, parts


def assert_same_fit(got: dict, want: dict) -> None:
    for name, weight in want["weights"].items():
        assert got["weights"][name] == pytest.approx(weight, rel=WEIGHTS_RTOL), name
    assert got["bias"] == pytest.approx(want["bias"], rel=WEIGHTS_RTOL)
    assert got["epochs_run"] == want["epochs_run"]
    for key in ("metrics", "baseline"):
        for part in ("train", "test"):
            assert got[key][part] == pytest.approx(want[key][part], rel=1e-9), (key, part)


def test_partitioned_run_with_threads_equals_the_single_file_run(partitioned, artifacts):
    whole, parts = partitioned
    single = linear_regression(data=str(whole), engine="stats", artifacts_dir=str(artifacts))
    split = linear_regression(data=str(parts), engine="stats", artifacts_dir=str(artifacts))
    assert_same_fit(split, single)
    stages = ["ingest", "drop_index", "split", "tensorize", "accumulate", "train", "evaluate", "plot"]
    assert list(split["artifacts"]) == stages
    assert sorted(split["artifacts"]["ingest"]) == ["table[0]", "table[1]", "table[2]"]
    rows = [pq.read_metadata(p).num_rows for p in split["artifacts"]["split"].values()]
    assert sum(rows) == 3000
    # same bytes in, same keys: a second run is cached throughout
    again = linear_regression(data=str(parts / "part-*"), engine="stats", artifacts_dir=str(artifacts))
    assert all(again["cached"].values())
    # the engine is chosen by the number of rows, however they are cut into files: 3000 rows take the row loop,
    # gradient descent in float32 over the partitions' joined rows, so equal to the single file's to 1e-5
    rows_engine = linear_regression(data=str(whole), engine="rows", artifacts_dir=str(artifacts))
    auto = linear_regression(data=str(parts), artifacts_dir=str(artifacts))
    assert auto["engine"] == rows_engine["engine"] == "rows"
    for name, weight in rows_engine["weights"].items():
        assert split["weights"][name] == pytest.approx(weight, rel=1e-5), name
        assert auto["weights"][name] == pytest.approx(weight, rel=1e-5), name


def test_partitioned_run_on_a_loopback_dask_cluster_equals_the_single_file_run(partitioned, artifacts, capsys):
    distributed = pytest.importorskip("distributed")
    whole, parts = partitioned
    single = linear_regression(data=str(whole), engine="stats", artifacts_dir=str(artifacts))
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None, processes=True
    ) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        dask = ["--task-runner", "dask", "--dask-address", cluster.scheduler_address, "--engine", "stats"]
        code = main(["--data", str(parts), *dask, "--artifacts-dir", str(artifacts / "dask"), "--json"])
        assert code == 0
        ran = set(cluster.scheduler.task_prefixes)  # Dask names a task after its function
        assert {"ingest_csv", "drop_index_column", "split_data", "tensorize", "accumulate_stats"} <= ran, ran
        with distributed.Client(cluster) as client:
            ran_on = client.run(lambda: os.getpid())  # the workers are other processes
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not any(summary["cached"].values())
    assert_same_fit(summary, single)
    assert len(ran_on) == 2 and os.getpid() not in ran_on.values()


def test_a_partition_without_the_target_is_a_one_line_error_naming_its_file_and_column(tmp_path, artifacts, capsys):
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "a.csv").write_text("x,y\n" + "".join(f"{i},{2 * i + 1}\n" for i in range(10)))
    (parts / "b.csv").write_text("x,z\n" + "".join(f"{i},{i}\n" for i in range(10)))
    code = main(["--data", str(parts), "--target", "y", "--index-column", "none", "--artifacts-dir", str(artifacts)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == (
        f"error: {parts / 'b.csv'}: its columns are not those of {parts / 'a.csv'} (extra column(s) 'z'; "
        "missing column(s) 'y'); give every partition the same columns (their order may differ)"
    ), err[-1]
    assert not any("Traceback" in line for line in err)


@pytest.mark.parametrize(
    ("header", "differ"),
    [("x,w,y", "extra column(s) 'w'"), ("y", "missing column(s) 'x'"), ("x,y,w,v", "extra column(s) 'w', 'v'")],
)
def test_a_partition_with_an_extra_or_missing_column_is_refused_by_name(header, differ, tmp_path, artifacts, capsys):
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "a.csv").write_text("x,y\n" + "".join(f"{i},{2 * i + 1}\n" for i in range(10)))
    width = len(header.split(","))
    (parts / "b.csv").write_text(header + "\n" + "".join(",".join([str(i)] * width) + "\n" for i in range(10)))
    code = main(["--data", str(parts), "--target", "y", "--index-column", "none", "--artifacts-dir", str(artifacts)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith(f"error: {parts / 'b.csv'}: its columns are not those of {parts / 'a.csv'} ({differ})")
    with pytest.raises(InputError, match=rf"b\.csv: its columns are not those of .*a\.csv \({re.escape(differ)}\)"):
        linear_regression(data=str(parts), target="y", index_column=None, artifacts_dir=str(artifacts))


def test_partitions_with_their_columns_in_another_order_train_the_same_model(tmp_path, artifacts):
    """Aligned by name, in the first partition's order: the very model of the partitions written in one order."""
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({"a": rng.uniform(0, 9, 300), "b": rng.uniform(0, 5, 300), "c": rng.uniform(0, 2, 300)})
    frame["y"] = 1.5 * frame["a"] - 2 * frame["b"] + 0.5 * frame["c"] + rng.normal(0, 0.1, 300)
    same, shuffled = tmp_path / "same", tmp_path / "shuffled"
    for folder, orders in ((same, ["abcy", "abcy", "abcy"]), (shuffled, ["abcy", "ycab", "bayc"])):
        folder.mkdir()
        for i, (order, rows) in enumerate(zip(orders, (slice(0, 100), slice(100, 180), slice(180, 300)), strict=True)):
            part = frame.iloc[rows][list(order)]
            if i == 1:
                part.to_parquet(folder / f"part-{i}.parquet", index=False)
            else:
                part.to_csv(folder / f"part-{i}.csv", index=False)
    common = {"target": "y", "index_column": None, "engine": "stats", "artifacts_dir": str(artifacts)}
    want = linear_regression(data=str(same), **common)
    got = linear_regression(data=str(shuffled), **common)
    assert list(got["weights"]) == ["a", "b", "c"]  # the first partition's order
    assert got["weights"] == want["weights"] and got["bias"] == want["bias"]
    assert got["metrics"] == want["metrics"] and got["baseline"] == want["baseline"]
    model = core.read_pt(got["artifacts"]["train"]["model"])
    assert model["features"] == ["a", "b", "c"]
    # named features are read by name, in the order named, whatever each file's order
    named = linear_regression(data=str(shuffled), features=["c", "a", "b"], **common)
    assert named["weights"] == pytest.approx({k: want["weights"][k] for k in "cab"}, rel=WEIGHTS_RTOL)
