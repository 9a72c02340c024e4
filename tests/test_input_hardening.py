"""Inputs an outside test broke the pipeline with: each is a one-line error (or now works), by its cause.

Repeated column names, non-UTF-8 files, seeds numpy cannot take, devices and FIFOs as --data, malformed
manifests given to lineage, values beyond float32, a target whose squares overflow the float32 loss, an index
column that is also the target, other delimiters, compressed CSVs, and nothing printed after ``error:``.
"""

from __future__ import annotations

import bz2
import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_bad_input import assert_one_line_error, run_cli

import stagecore as core
import storage
from conftest import ADVERTISING, ROOT, writer
from flows import lineage
from flows.local_server import isolated_env
from flows.params import SEED_MAX, Params
from flows.train import STAGES, main
from linreg import DivergenceError, LossOverflowError, fit
from linreg.tensors import to_tensors
from storage.errors import InputError
from storage.tabular import check_file, detect_delimiter
from tasks.drop_index import drop_index_column
from tasks.ingest import csv_to_parquet, ingest_csv, parquet_to_parquet

ROWS = "a,b,sales\n1,2,3\n2,1,4\n3,5,6\n4,4,7\n5,3,8\n6,2,9\n"


def unmanifested(root: Path) -> list[Path]:
    """Files in the stage folders under ``root`` that no manifest describes (a temp file counts)."""
    files = [p for stage in STAGES for p in (root / stage).rglob("*") if p.is_file()]
    return [p for p in files if not p.name.endswith(storage.MANIFEST_SUFFIX) and not core.manifest_path(p).exists()]


# --- 1. a header that repeats a column name --------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "shown"),
    [
        ("TV,TV,sales\n1,2,3\n", "'TV'"),
        (",a,b,\n1,2,3,4\n", "'' \\(an empty name: a trailing delimiter\\?\\)"),  # index column + trailing comma
        ("x;x;y;y\n1;2;3;4\n", "'x', 'y'"),
    ],
)
@pytest.mark.no_server
def test_csv_header_with_a_repeated_name_is_refused(content, shown, write_csv, tmp_path):
    path = write_csv(content)
    with pytest.raises(InputError, match=rf"data\.csv: the header repeats column name\(s\) {shown}; .*unique name"):
        csv_to_parquet(Path(path), writer(tmp_path), path)
    assert not list(tmp_path.glob("*.parquet")) and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.no_server
def test_parquet_with_a_repeated_name_is_refused(tmp_path):
    source = tmp_path / "dup.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array([1, 2]), pa.array([3, 4])], names=["TV", "TV"]), source)
    with pytest.raises(InputError, match=r"dup\.parquet: the header repeats column name\(s\) 'TV'"):
        parquet_to_parquet(source, writer(tmp_path), str(source))
    assert not (tmp_path / "raw.parquet").exists()


def test_repeated_name_is_one_line_from_the_cli(tmp_path, artifacts, capfd):
    data = tmp_path / "dup.csv"
    data.write_text(ROWS.replace("a,b,sales", "TV,TV,sales"))
    code, err = run_cli(["--data", str(data), "--artifacts-dir", str(artifacts), "--index-column", "none"], capfd)
    assert_one_line_error(code, err, r"dup\.csv: the header repeats column name\(s\) 'TV'")
    assert not unmanifested(artifacts)


# --- 2. a file that is not UTF-8 ------------------------------------------------------------------

LATIN1_HEADER = b"a,caf\xe9,sales\n1,2,3\n4,5,6\n7,8,9\n"
LATIN1_VALUE = b"a,b,sales\n1,caf\xe9,3\n4,5,6\n7,8,9\n"


@pytest.mark.usefixtures("no_run_logger")
@pytest.mark.parametrize("content", [LATIN1_HEADER, LATIN1_VALUE], ids=["in the header", "in a value"])
@pytest.mark.no_server
def test_latin1_csv_is_refused_and_leaves_nothing(content, write_csv, artifacts):
    path = write_csv(content)
    with pytest.raises(
        InputError, match=r"data\.csv: is not UTF-8 text \(byte 0xe9 at offset \d+.*re-save it as UTF-8"
    ):
        ingest_csv.fn(path, str(artifacts))
    assert not unmanifested(artifacts)
    assert not list((artifacts / "ingest").iterdir())  # not even the stage's folder


@pytest.mark.usefixtures("no_run_logger")
@pytest.mark.no_server
def test_latin1_beyond_the_sniffed_bytes_is_refused(tmp_path, artifacts, monkeypatch):
    """Past the first 8 kB only pyarrow sees the bytes: it reads them as a binary column, or a binary name."""
    monkeypatch.setattr(storage.tabular, "BLOCK_BYTES", 4096)
    rows = "".join(f"{i},{i}\n" for i in range(3000)).encode()
    (tmp_path / "late.csv").write_bytes(b"a,sales\n" + rows + b"caf\xe9,1\n")
    with pytest.raises(InputError, match=r"late\.csv: is not UTF-8 text \(in column 'a'.*re-save it as UTF-8"):
        ingest_csv.fn(str(tmp_path / "late.csv"), str(artifacts))
    assert not unmanifested(artifacts)
    monkeypatch.undo()  # the header below must fit in one block
    # a long header whose non-UTF-8 byte lies past the sniffed bytes: pyarrow keeps it raw in the name, and the
    # manifest (written after the file was in place) used to fail on it, leaving raw.parquet without one
    names = ",".join(f"column_{i:05d}" for i in range(1000)).encode() + b",caf\xe9\n"
    (tmp_path / "wide.csv").write_bytes(names + b",".join([b"1"] * 1001) + b"\n")
    with pytest.raises(InputError, match=r"wide\.csv: is not UTF-8 text \(in the header"):
        ingest_csv.fn(str(tmp_path / "wide.csv"), str(artifacts))
    assert not unmanifested(artifacts)


# --- 3. seeds numpy cannot take --------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "message"), [(-1, "greater than or equal to 0"), (2**40, "less than or equal to")])
@pytest.mark.no_server
def test_seed_outside_numpys_range_is_refused(seed, message):
    with pytest.raises(InputError, match=rf"--seed: Input should be {message}"):
        Params.parse(seed=seed)
    assert Params.parse(seed=SEED_MAX).seed == SEED_MAX == 2**32 - 1


@pytest.mark.no_server
def test_seed_out_of_range_from_the_cli(artifacts, capfd):
    code, err = run_cli(["--data", str(ADVERTISING), "--artifacts-dir", str(artifacts), "--seed", "-1"], capfd)
    assert_one_line_error(code, err, r"--seed: Input should be greater than or equal to 0 \(got -1\)")
    assert not artifacts.exists()


# --- 4. a device or a FIFO as --data ----------------------------------------------------------------


@pytest.fixture
def fifo(tmp_path: Path) -> str:
    path = tmp_path / "pipe.csv"
    os.mkfifo(path)
    return str(path)


@pytest.mark.timeout(30)
@pytest.mark.no_server
def test_devices_and_fifos_are_refused_before_anything_reads_them(fifo):
    for source in (fifo, "/dev/zero"):
        with pytest.raises(InputError, match=r"is not a regular file \(a device, FIFO or socket"):
            check_file(source)
        with pytest.raises(InputError, match=rf"{source}: is not a regular file"):
            Params.parse(data=source)  # before Prefect starts, and before the stage cache hashes the file
    assert Params.parse(data=str(ROOT / "nope.csv")).data  # a missing file is the ingest stage's to report


@pytest.mark.timeout(60)
@pytest.mark.no_server
def test_fifo_as_data_is_one_line_from_the_cli(fifo, artifacts, capfd):
    code, err = run_cli(["--data", fifo, "--artifacts-dir", str(artifacts)], capfd)
    assert_one_line_error(code, err, r"pipe\.csv: is not a regular file")


# --- 5. lineage on malformed manifests ------------------------------------------------------------


@pytest.fixture
def chain(write_csv, artifacts) -> Path:
    """A real two-stage chain, ingest → drop_index: the manifests the fuzzing starts from."""
    from prefect.logging import disable_run_logger

    with disable_run_logger():
        raw = ingest_csv.fn(write_csv(ROWS), str(artifacts))["table"]
        return Path(drop_index_column.fn(raw, None, str(artifacts))["table"])


def mutations(manifest: dict, rng: random.Random) -> list:
    """Malformed versions of a manifest: not JSON, not an object, and fields of the wrong shape."""
    odd = [None, 1, -1.5, True, "", "x", [], {}, [1], ["a"], [{}], [{"path": 1, "sha256": 2}], {"a": 1}, "\x00"]
    out: list = ["{not json", "", "[]", "[1, 2]", '"text"', "null", "3"]
    for field in ("sha256", "inputs", "params", "key", "stage", "size", "created", "file"):
        for value in odd:
            out.append({**manifest, field: value})
        out.append({k: v for k, v in manifest.items() if k != field})
    for _ in range(40):  # a few random ones: several fields at once
        broken = dict(manifest)
        for field in rng.sample(sorted(manifest), 3):
            broken[field] = rng.choice(odd)
        out.append(broken)
    return out


@pytest.mark.no_server
def test_lineage_on_malformed_manifests_never_gives_a_traceback(chain, capsys):
    rng = random.Random(0)
    assert lineage.main([str(chain)]) == 0
    capsys.readouterr()
    raw = chain.parents[2] / json.loads(core.manifest_path(chain).read_text())["inputs"][0]["path"]  # store-relative
    for target in (chain, raw):  # the artifact asked about, and an input found on the way
        mpath = core.manifest_path(target)
        original = mpath.read_text()
        for mutation in mutations(json.loads(original), rng):
            mpath.write_text(mutation if isinstance(mutation, str) else json.dumps(mutation))
            for args in ([str(chain)], [str(chain), "--json"]):
                code = lineage.main(args)  # any exception fails the test
                out, err = capsys.readouterr()
                assert code in (0, 1, 2), (mutation, code)
                if code == 2:
                    assert err.count("\n") == 1 and err.startswith("error: "), err
                if code == 1 and "--json" not in args:
                    assert "SOME FILES DO NOT VERIFY" in out
        mpath.write_text(original)
    assert lineage.main([str(chain)]) == 0


@pytest.mark.no_server
def test_lineage_reports_a_malformed_manifest_as_not_verifying(chain, capsys):
    manifest = {"sha256": "ab" * 32, "size": 1, "format": "parquet", "inputs": "not a list"}
    core.manifest_path(chain).write_text(json.dumps(manifest))
    assert lineage.main([str(chain)]) == 1
    assert "manifest clean.parquet.manifest.json is malformed (field 'inputs' is not a list" in capsys.readouterr().out
    core.manifest_path(chain).write_text("{not json")
    assert lineage.main([str(chain)]) == 1
    assert "is unreadable" in capsys.readouterr().out


@pytest.mark.parametrize(
    "record", ["{", "[]", '{"stages": []}', '{"stages": {"a": 1}}', '{"stages": {"a": {"artifacts": {"x": {}}}}}']
)
@pytest.mark.no_server
def test_lineage_on_a_malformed_run_record_is_one_line(record, tmp_path, capsys):
    path = tmp_path / storage.RUNS_DIR / "r.json"
    path.parent.mkdir()
    path.write_text(record)
    assert lineage.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: not a readable run record")


# --- 6a. values beyond float32 --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"a": [1.0, 1e39], "y": [1.0, 2.0]}, r"feature column 'a' has 1 value\(s\) beyond float32's range"),
        ({"a": [1.0, 2.0], "y": [1.0, -1e39]}, r"target column 'y' has 1 value\(s\) beyond float32's range"),
    ],
)
@pytest.mark.no_server
def test_values_beyond_float32_are_not_called_missing(columns, message):
    """Asked for float32, they are refused by name; the default (float64 for data this small) keeps them."""
    t = pa.table(columns)
    with pytest.raises(
        InputError, match=rf"{message} in the train rows \(up to 1e\+39; float32's largest is ≈3\.4e38\); rescale"
    ):
        to_tensors(t, t, "y", None, "float32")
    kept = to_tensors(t, t, "y", None)
    assert kept["dtype"] == "float64" and float(abs(torch.cat([kept["x_train"], kept["y_train"]], 1)).max()) == 1e39


@pytest.mark.no_server
def test_real_nan_inf_and_nulls_are_still_called_missing():
    for values in ([1.0, float("nan")], [1.0, float("inf")], [1.0, None], [True, None]):
        t = pa.table({"a": values, "y": [1.0, 2.0]})
        with pytest.raises(InputError, match=r"column 'a' has 1 missing or non-finite \(NaN/inf\)"):
            to_tensors(t, t, "y", None)


# --- 6b. a target whose squares overflow the float32 loss -------------------------------------------


def big_target(scale: float, n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 2))
    y = (x @ [1.0, 2.0] + 5.0) * scale
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32).reshape(-1, 1)


@pytest.mark.parametrize("method", ["scratch", "builtins"])
@pytest.mark.no_server
def test_target_beyond_the_float32_loss_says_rescale_not_lr(method):
    """The row loop sums squared errors in float32: at a target of ~1e20 the first loss is inf, whatever lr."""
    x, y = big_target(1e20)
    cfg = Params.parse(device="cpu", method=method, engine="rows").training()
    with pytest.raises(
        LossOverflowError, match=r"overflowed float32 at epoch 1: the target has a scale of ~\d\.\d+e\+20"
    ) as err:
        fit(x, y, cfg)
    assert "rescale the target (e.g. divide it by 1e+20)" in str(err.value) and "--lr" not in str(err.value)
    # a few huge rows do it too
    y[:3] = 1e30
    with pytest.raises(LossOverflowError, match="rescale the target"):
        fit(x, y, cfg)
    # the float64 statistics engine does not overflow, nor do float64 rows: they train
    assert fit(x, y, Params.parse(device="cpu", engine="stats").training()).weights.isfinite().all()
    assert fit(x.double(), y.double(), cfg).weights.isfinite().all()


@pytest.mark.no_server
def test_a_real_divergence_keeps_its_lr_advice():
    x, y = big_target(1.0)
    cfg = Params.parse(device="cpu", engine="rows", lr=50.0, scaling="none", tol=0.0).training()
    with pytest.raises(DivergenceError, match="pass a smaller --lr") as err:
        fit(x, y, cfg)
    assert not isinstance(err.value, LossOverflowError)


def test_target_overflow_names_the_column_from_the_cli(tmp_path, artifacts, capfd):
    """In float32 (asked for) the loss overflows, named; the default, float64 for data this small, trains."""
    data = tmp_path / "big.csv"
    data.write_text("a,sales\n" + "".join(f"{i},{(i % 7 + 1) * 1e20}\n" for i in range(40)))
    args = ["--data", str(data), "--artifacts-dir", str(artifacts), "--index-column", "none", "--engine", "rows"]
    assert run_cli(args, capfd)[0] == 0
    code, err = run_cli([*args, "--dtype", "float32"], capfd)
    assert_one_line_error(
        code, err, r"training loss overflowed float32 at epoch 1: target column 'sales' has .*rescale"
    )


# --- 6c. the index column is the target or a feature -----------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"index_column": "sales"}, r"--index-column 'sales' is also the --target"),
        ({"index_column": "y", "target": "y"}, r"--index-column 'y' is also the --target"),
        ({"index_column": "TV", "features": ["TV", "radio"]}, r"--index-column 'TV' is also listed in --features"),
    ],
)
@pytest.mark.no_server
def test_index_column_that_is_the_target_or_a_feature_is_refused(values, message):
    with pytest.raises(InputError, match=message):
        Params.parse(**values)
    assert Params.parse(index_column=None, target="sales").index_column is None


@pytest.mark.no_server
def test_index_column_equal_to_target_is_blamed_on_index_column(artifacts, capfd):
    args = ["--data", str(ADVERTISING), "--artifacts-dir", str(artifacts), "--index-column", "sales"]
    code, err = run_cli(args, capfd)
    assert_one_line_error(code, err, r"^error: --index-column 'sales' is also the --target")


# --- 6d. delimiters ---------------------------------------------------------------------------------


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
@pytest.mark.no_server
def test_delimiter_is_read_off_the_header(delimiter, write_csv, tmp_path):
    content = '"a, the first"' + ROWS.replace(",", delimiter)[1:]
    schema = csv_to_parquet(Path(write_csv(content)), writer(tmp_path), "d.csv")
    assert schema.names == ["a, the first", "b", "sales"]
    assert pq.read_table(tmp_path / "raw.parquet").num_rows == 6


@pytest.mark.no_server
def test_detect_delimiter():
    assert detect_delimiter(b"sales\n1\n") == ","  # one column: none of them
    assert detect_delimiter(b'"x;y",b,c\n') == ","  # a delimiter inside quotes does not count
    assert detect_delimiter(b"a;b,c;d\n") == ";"


@pytest.mark.no_server
def test_one_column_file_still_reads(write_csv, tmp_path):
    schema = csv_to_parquet(Path(write_csv("sales\n1\n2\n")), writer(tmp_path), "one.csv")
    assert schema.names == ["sales"]


def test_semicolon_csv_trains_from_the_cli(tmp_path, artifacts, capfd):
    data = tmp_path / "semi.csv"
    data.write_text(ADVERTISING.read_text().replace(",", ";"))
    assert main(["--data", str(data), "--artifacts-dir", str(artifacts), "--epochs", "50"]) == 0
    assert "TV" in capfd.readouterr().out


# --- 6e. compressed CSVs ----------------------------------------------------------------------------


@pytest.mark.parametrize(("suffix", "opener"), [(".gz", gzip.open), (".bz2", bz2.open)])
@pytest.mark.no_server
def test_compressed_csv_is_read(suffix, opener, tmp_path):
    source = tmp_path / f"data.csv{suffix}"
    with opener(source, "wt") as fh:
        fh.write(ROWS.replace(",", ";"))
    schema = csv_to_parquet(source, writer(tmp_path), str(source))
    assert schema.names == ["a", "b", "sales"] and pq.read_table(tmp_path / "raw.parquet").num_rows == 6
    # the sniff looks at the decompressed bytes: an empty or binary file inside is still refused
    for content, message in ((b"", "file is empty"), (b"\x00\x01\x02" * 10, "is a binary file")):
        with opener(source, "wb") as fh:
            fh.write(content)
        with pytest.raises(InputError, match=message):
            csv_to_parquet(source, writer(tmp_path), str(source))
    source.write_bytes(ROWS.encode())  # named .gz, but plain text
    with pytest.raises(InputError, match=rf"cannot be decompressed as {suffix[1:]}"):
        csv_to_parquet(source, writer(tmp_path), str(source))


# --- 6f. nothing after the error line ----------------------------------------------------------------


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.train", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )


def assert_error_is_last(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, result.stderr


@pytest.mark.timeout(300)
def test_error_is_the_last_line_the_real_cli_prints(tmp_path):
    """As a person runs it: no PREFECT_API_URL, so Prefect starts (and at exit stops) a temporary server."""
    env = isolated_env(tmp_path / "prefect-home")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    cases = [  # two of the four refused before the flow (an unmatched glob and /proc/x go the same ways)
        (["--data", str(tmp_path / "empty"), "--artifacts-dir", str(tmp_path / "a")], "matches no data files"),
        (["--artifacts-dir", str(tmp_path / "file" / "sub")], "is not writable (Not a directory)"),
    ]
    for args, message in cases:  # refused before Prefect starts
        result = cli(args, env)
        assert_error_is_last(result, message)
        assert "Starting temporary server" not in result.stderr
    # refused inside the flow, after the temporary server started: it is stopped before the error line
    (tmp_path / "header.csv").write_text("a,b,sales\n")
    result = cli(["--data", str(tmp_path / "header.csv"), "--artifacts-dir", str(tmp_path / "a")], env)
    assert "Starting temporary server" in result.stderr
    assert_error_is_last(result, "has a header but no data rows")
