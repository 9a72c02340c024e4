"""Inputs that training and prediction must treat alike, and errors that stay one line whatever the input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from flows.predict import linear_regression_predict
from flows.train import linear_regression
from stagecore.errors import InputError
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


def test_predict_takes_a_bool_column_as_one_and_zero_and_refuses_its_gaps_by_row():
    batch = pa.record_batch({"flag": pa.array([True, None, False])})
    stage.check_features(batch.schema, ["flag"], "new.csv")  # a bool column is a feature column, as in training
    full = pa.record_batch({"flag": pa.array([True, False, True])})
    np.testing.assert_array_equal(stage.predict_batch(full, ["flag"], np.array([2.0]), 0.5), [2.5, 0.5, 2.5])
    with pytest.raises(InputError, match=r"feature column 'flag' is empty or NaN at data row 1"):
        stage.predict_batch(batch, ["flag"], np.array([1.0]), 0.0)
