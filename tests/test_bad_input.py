"""Every bad input: a one-line error naming the problem, exit code 2, no traceback, no partial artifact."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import ADVERTISING
from flows.train import main

ROWS = "a,b,sales\n1,2,3\n2,1,4\n3,5,6\n4,4,7\n5,3,8\n6,2,9\n"

# (what, file content or None for the shipped data, extra CLI args, message, stage that must leave nothing)
CASES = [
    ("missing file", "MISSING", [], r"nope\.csv: file not found; pass --data", "ingest"),
    ("binary file", b"\x7fELF\x02\x01\x01\x00\x00\x00\x00" * 20, [], r"is a binary file, not a CSV", "ingest"),
    ("empty file", b"", [], r"file is empty", "ingest"),
    ("header only", "a,b,sales\n", [], r"has a header but no data rows", "ingest"),
    ("target absent", ROWS, ["--target", "revenue"], r"target column 'revenue' not found .*--target", "tensorize"),
    (
        "index column absent",
        ROWS,
        ["--index-column", "id"],
        r"index column 'id' not found.*--index-column",
        "drop_index",
    ),
    (
        "non-numeric feature",
        ROWS.replace("\n1,2,3", "\nx,2,3").replace("\n2,1,4", "\ny,1,4"),
        [],
        r"feature column 'a' is not numeric \(string\); choose numeric columns with --features",
        "tensorize",
    ),
    ("missing values", ROWS.replace("\n3,5,6", "\n3,,6"), [], r"column 'b' has 1 missing or non-finite", "tensorize"),
    ("inf values", ROWS.replace("\n3,5,6", "\n3,inf,6"), [], r"column 'b' has 1 missing or non-finite", "tensorize"),
    ("too few rows", "a,sales\n1,2\n2,3\n3,4\n", [], r"3 rows are too few to split", "split"),
]


def run_cli(args: list[str], capfd) -> tuple[int, str]:
    code = main(args)
    return code, capfd.readouterr().err


def assert_one_line_error(code: int, err: str, message: str) -> None:
    assert code == 2
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ")

    assert re.search(message, last), last


@pytest.mark.parametrize(("what", "content", "extra", "message", "stage"), CASES, ids=[c[0] for c in CASES])
def test_bad_data(what, content, extra, message, stage, tmp_path: Path, artifacts: Path, capfd):
    data = tmp_path / ("nope.csv" if content == "MISSING" else "data.csv")
    if content != "MISSING":
        data.write_bytes(content if isinstance(content, bytes) else content.encode())
    index = [] if "--index-column" in extra else ["--index-column", "none"]
    code, err = run_cli(["--data", str(data), "--artifacts-dir", str(artifacts), *index, *extra], capfd)
    assert_one_line_error(code, err, message)
    left = [p for p in (artifacts / stage).rglob("*") if p.is_file()]
    assert not left, f"{stage} left {left} behind"
    assert not list(artifacts.rglob("*.tmp")) if artifacts.exists() else True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--test-size", "0"], r"--test-size: Input should be greater than 0"),
        (["--test-size", "1.5"], r"--test-size: Input should be less than 1"),
        (["--epochs", "0"], r"--epochs: Input should be greater than 0"),
        (["--epochs", "-5"], r"--epochs: Input should be greater than 0"),
        (["--lr", "0"], r"--lr: .*greater than 0"),
        (["--lr", "-0.1"], r"--lr: .*greater than 0"),
    ],
)
@pytest.mark.no_server
def test_bad_parameters_fail_before_any_work(args, message, artifacts: Path, capfd):
    code, err = run_cli(["--data", str(ADVERTISING), "--artifacts-dir", str(artifacts), *args], capfd)
    assert_one_line_error(code, err, message)
    assert not artifacts.exists()


def test_diverging_lr_is_a_clear_error(artifacts: Path, capfd):
    code, err = run_cli(["--artifacts-dir", str(artifacts), "--lr", "0.001", "--scaling", "none"], capfd)
    assert_one_line_error(code, err, r"training diverged at epoch \d+ .*largest stable lr for this data is 3\.22")
    assert not (artifacts / "train").exists()
