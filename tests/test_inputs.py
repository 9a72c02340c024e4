"""Inputs that training and prediction must treat alike, and errors that stay one line whatever the input."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import ROOT
from flows.cli import one_line
from flows.predict import linear_regression_predict
from flows.train import linear_regression
from storage.errors import InputError
from tasks import predict as stage

BOOLS = "a,flag,sales\n" + "".join(
    f"{a},{'True' if a % 3 else 'False'},{2.0 * a + (5.0 if a % 3 else 0.0) + 0.1 * (a % 2)}\n" for a in range(40)
)


def test_a_bool_feature_trains_and_predicts_as_one_and_zero(write_csv, artifacts: Path):
    """tensorize took a bool column as 1/0; predict refused it ("is bool, not numeric"). One rule now."""
    data = write_csv(BOOLS)
    linear_regression(data=data, index_column=None, artifacts_dir=str(artifacts))
    summary = linear_regression_predict(data=data, index_column=None, artifacts_dir=str(artifacts))
    assert summary["features"] == ["a", "flag"]
    model = torch.load(Path(summary["model"]), weights_only=True)
    a = np.arange(40, dtype=np.float64)
    flag = (np.arange(40) % 3 != 0).astype(np.float64)
    weights = model["weights"].double().reshape(-1).numpy()
    expected = weights[0] * a + weights[1] * flag + float(model["bias"])
    got = pq.read_table(summary["predictions"]).column("prediction").to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert abs(weights[1] - 5.0) < 0.5  # the flag's effect was learnt: True counted as 1


@pytest.mark.no_server
def test_predict_takes_a_bool_column_as_one_and_zero_and_refuses_its_gaps_by_row():
    batch = pa.record_batch({"flag": pa.array([True, None, False])})
    stage.check_features(batch.schema, ["flag"], "new.csv")  # a bool column is a feature column, as in training
    full = pa.record_batch({"flag": pa.array([True, False, True])})
    np.testing.assert_array_equal(stage.predict_batch(full, ["flag"], np.array([2.0]), 0.5), [2.5, 0.5, 2.5])
    with pytest.raises(InputError, match=r"feature column 'flag' is empty or NaN at data row 1"):
        stage.predict_batch(batch, ["flag"], np.array([1.0]), 0.0)


@pytest.mark.no_server
def test_one_line_writes_control_characters_as_escapes():
    assert one_line("bad\nname.csv\r\t\x1b[31m é — ×") == "bad\\nname.csv\\r\\t\\x1b[31m é — ×"
    assert one_line("a\u2028b\x85c") == "a\\u2028b\\x85c"


@pytest.mark.no_server
def test_every_command_line_prints_errors_through_one_function():
    """A `print(f"error: …")` of its own would not keep the message to one line."""
    offenders = [
        path.name
        for path in sorted((ROOT / "flows").glob("*.py"))
        if path.name != "cli.py" and re.search(r"""print\(f?["']error:""", path.read_text())
    ]
    assert offenders == []


def test_a_data_path_with_a_newline_is_one_error_line(tmp_path: Path):
    data = tmp_path / "bad\nname.csv"
    result = subprocess.run(
        [sys.executable, "-m", "flows.train", "--data", str(data), "--artifacts-dir", str(tmp_path / "a")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    shown = str(data).replace("\n", "\\n")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {shown}: file not found; pass --data with the path of a CSV file"]
    assert not any(line.startswith("name.csv") for line in result.stderr.splitlines())
