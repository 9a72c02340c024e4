"""Many columns: tensorize verifies each table once and reads every column through one reader (it used to open
and check the file once per column: 107 of 138 s at 3,000 columns)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

import stagecore as core
from flows.train import linear_regression

COLUMNS, ROWS = 500, 800


def test_a_wide_csv_trains_to_the_least_squares_answer(tmp_path, artifacts, monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(ROWS, COLUMNS))
    weights = rng.normal(size=COLUMNS)
    y = x @ weights + 0.5
    source = tmp_path / "wide.csv"
    pacsv.write_csv(pa.table({**{f"f{j}": x[:, j] for j in range(COLUMNS)}, "y": y}), source)
    opened = []
    real = core.open_parquet
    monkeypatch.setattr(core, "open_parquet", lambda path: opened.append(path) or real(path))
    summary = linear_regression(data=str(source), target="y", index_column=None, artifacts_dir=str(artifacts))
    tensors = core.read_pt(summary["artifacts"]["tensorize"]["tensors"])
    assert tensors["x_train"].shape == (640, COLUMNS) and len(tensors["features"]) == COLUMNS
    assert sorted(opened.count(p) for p in set(opened) if "/split/" in p) == [1, 1]  # train and test, once each
    # numpy's least squares on the rows trained on (float32, as tensorize stores them), with an intercept
    a = np.hstack([tensors["x_train"].double().numpy(), np.ones((640, 1))])
    want, *_ = np.linalg.lstsq(a, tensors["y_train"].double().numpy().ravel(), rcond=None)
    got = np.array([summary["ols_weights"][f"f{j}"] for j in range(COLUMNS)])
    np.testing.assert_allclose(got, want[:-1], rtol=1e-6, atol=1e-6)
    trained = np.array([summary["weights"][f"f{j}"] for j in range(COLUMNS)])  # gradient descent, to --tol
    np.testing.assert_allclose(trained, want[:-1], atol=1e-2)
    assert summary["bias"] == pytest.approx(want[-1], abs=1e-2)
