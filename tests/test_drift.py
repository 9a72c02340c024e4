"""Drift at prediction time (linreg/drift.py, tasks/drift.py): the figures against a direct numpy computation,
merged over batches and partitions; and end to end, predict on the training data, on shifted and on rescaled
data, and ``--max-drift``'s one line."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import stagecore as core
from conftest import ADVERTISING
from flows.predict import main
from flows.train import linear_regression
from linreg.drift import Baseline, Moments, compare, mahalanobis
from linreg.stats import Stats
from tasks import drift as drift_task
from tasks import predict as stage
from tasks import predict_report

FEATURES = ["TV", "radio", "newspaper"]


def numpy_drift(train: np.ndarray, new: np.ndarray) -> dict[str, np.ndarray | float]:
    """The definitions of docs/lifecycle.md, computed directly on all the rows."""
    mean, std = train.mean(0), train.std(0)
    delta = new.mean(0) - mean
    return {
        "mean_shift": delta / std,
        "outside_range": ((new < train.min(0)) | (new > train.max(0))).mean(0),
        "spread_ratio": new.std(0) / std,
        "mahalanobis": float(np.sqrt(delta @ np.linalg.pinv(np.cov(train.T, bias=True)) @ delta)),
    }


def figures(table: dict, name: str) -> list[float]:
    return [table["features"][f][name] for f in table["features"]]


@pytest.mark.no_server
@pytest.mark.parametrize("collinear", [False, True])
def test_the_figures_are_numpys_merged_over_batches_and_partitions(collinear):
    rng = np.random.default_rng(3)
    train = rng.normal([5.0, 1e9, -2.0], [2.0, 3e3, 0.5], size=(4000, 3))  # a Unix-time-sized column too
    if collinear:  # a singular covariance: the pseudo-inverse's distance
        train[:, 2] = 2 * train[:, 0] + 1
    new = rng.normal([6.0, 1e9 + 2e3, -2.0], [2.0, 9e3, 0.5], size=(3001, 3))
    if collinear:
        new[:, 2] = 2 * new[:, 0] + 1
    baseline = Baseline.of(Stats.of(torch.tensor(train), torch.zeros(len(train))))
    np.testing.assert_allclose(baseline.mean, train.mean(0), rtol=1e-13)
    np.testing.assert_allclose(baseline.cov, np.cov(train.T, bias=True), rtol=1e-9, atol=1e-12)
    assert list(baseline.min) == list(train.min(0)) and list(baseline.max) == list(train.max(0))
    # partitions of uneven sizes (one empty, one a single row), each streamed in batches, through JSON
    parts = []
    for part in np.split(new, [1000, 1000, 1001, 2500]):
        batches = [Moments.of_columns(list(b.T.copy()), baseline) for b in np.array_split(part, 3)]
        parts.append(Moments.from_dict(json.loads(json.dumps(Moments.merge(batches).as_dict()))))
    got = compare(["a", "b", "c"], baseline, Moments.merge(parts))
    want = numpy_drift(train, new)
    assert got["rows"] == len(new)
    for name in ("mean_shift", "outside_range", "spread_ratio"):
        np.testing.assert_allclose(figures(got, name), want[name], rtol=1e-9, err_msg=name)
    assert got["mahalanobis"] == pytest.approx(want["mahalanobis"], rel=1e-6)
    assert figures(got, "drifted") == [False, True, False]  # b: the spread tripled (its mean moved < 1σ)


@pytest.mark.no_server
def test_edge_cases_no_rows_a_constant_feature_and_no_baseline():
    baseline = Baseline(np.array([1.0]), np.array([0.0]), np.array([1.0]), np.array([1.0]), np.zeros((1, 1)))
    assert compare(["k"], baseline, Moments.empty(1)) == {"rows": 0, "features": {}, "mahalanobis": None}
    same = compare(["k"], baseline, Moments.of_columns([np.ones(40)], baseline))
    assert same["features"]["k"] == {"mean_shift": 0.0, "outside_range": 0.0, "spread_ratio": 1.0, "drifted": False}
    moved = compare(["k"], baseline, Moments.of_columns([np.full(40, 2.0)], baseline))["features"]["k"]
    assert moved["mean_shift"] == np.inf and moved["outside_range"] == 1.0 and moved["drifted"]
    assert mahalanobis(np.array([1.0, 0.0]), np.diag([4.0, 0.0])) == pytest.approx(0.5)
    assert Baseline.from_model({"weights": torch.zeros(1)}) is None
    assert drift_task.measure([], {"weights": torch.zeros(1), "features": ["k"]})["available"] is False


@pytest.mark.no_server
def test_the_stage_streams_the_moments_in_its_one_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(stage, "BATCH_ROWS", 7)
    rng = np.random.default_rng(1)
    train, new = rng.normal(size=(50, 2)), rng.normal(0.5, 2.0, size=(45, 2))
    baseline = Baseline.of(Stats.of(torch.tensor(train), torch.zeros(50)))
    model = {"weights": torch.tensor([1.0, 2.0]), "bias": 0.0, **baseline.as_model_entries()}
    pq.write_table(pa.table({"a": new[:, 0], "b": new[:, 1]}), tmp_path / "clean.parquet", row_group_size=10)
    clean = pq.ParquetFile(tmp_path / "clean.parquet")
    moments: list[Moments] = []
    _, batches = stage.predictions(clean, clean, ["a", "b"], model, None, moments)
    assert sum(b.num_rows for b in batches) == 45 and len(moments) == 7
    got, want = compare(["a", "b"], baseline, Moments.merge(moments)), numpy_drift(train, new)
    np.testing.assert_allclose(figures(got, "mean_shift"), want["mean_shift"], rtol=1e-9)
    np.testing.assert_allclose(figures(got, "spread_ratio"), want["spread_ratio"], rtol=1e-9)


@pytest.mark.no_server
def test_the_report_shows_the_drift_table_escaped():
    from markdown_it import MarkdownIt

    hostile = "**tv** | <script>alert(1)</script>"
    drift = {
        "available": True,
        "rows": 200,
        "features": {hostile: {"mean_shift": 5.02, "outside_range": 0.41, "spread_ratio": 1.0, "drifted": True}},
        "mahalanobis": 5.3,
    }
    summary = predict_report.Summary(200, 14.02, 5.1, 1.5, 10.3, 14.1, 17.9, 26.7)
    report = predict_report.render_report("d.csv", "m.pt", "x", [hostile], summary, [], b"\x89PNG", drift)
    rendered = MarkdownIt("commonmark", {"html": True}).enable("table").render(report)
    assert "<script" not in rendered and "<strong>" not in rendered
    text = html.unescape(re.sub(r"<[^>]*>", "", rendered))
    assert "Drift from the training data" in text and hostile in text
    assert re.search(r"<td>5.02</td>\s*<td>0.41</td>\s*<td>1</td>\s*<td>yes</td>", rendered)
    assert re.search(r"Mahalanobis distance of the mean\)</td>\s*<td>5.3</td>", rendered)
    off = predict_report.render_report(
        "d.csv", "m.pt", "x", ["TV"], summary, [], b"\x89PNG", {"available": False, "reason": "r"}
    )
    assert r"not measured\: r" in off


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One training run on Advertising, and the model's training moments."""
    root = tmp_path_factory.mktemp("drift") / "artifacts"
    summary = linear_regression(artifacts_dir=str(root))
    model = Path(summary["artifacts"]["train"]["model"])
    tensors = core.read_pt(summary["artifacts"]["tensorize"]["tensors"])
    return {"root": root, "model": model, "saved": core.read_pt(model), "x_train": tensors["x_train"].double().numpy()}


def predict(capsys, trained: dict, csv: Path, *args: str) -> tuple[int, dict | None, str]:
    code = main(
        ["--data", str(csv), "--artifacts-dir", str(trained["root"]), "--model", str(trained["model"]), *args, "--json"]
    )
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]) if code == 0 else None, err


def test_predict_names_the_features_that_drifted(trained, capsys, tmp_path):
    saved, x_train = trained["saved"], trained["x_train"]
    np.testing.assert_allclose(saved["train_mean"].numpy(), x_train.mean(0), rtol=1e-12)  # the training rows'
    np.testing.assert_allclose(saved["train_std"].numpy(), x_train.std(0), rtol=1e-10)
    data = pd.read_csv(ADVERTISING, index_col=0)
    code, summary, err = predict(capsys, trained, ADVERTISING)
    assert code == 0, err
    drift = summary["drift"]
    assert drift["available"] and drift["rows"] == 200 and not any(r["drifted"] for r in drift["features"].values())
    want = numpy_drift(x_train, data[FEATURES].to_numpy())
    np.testing.assert_allclose(figures(drift, "mean_shift"), want["mean_shift"], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(figures(drift, "outside_range"), want["outside_range"])
    np.testing.assert_allclose(figures(drift, "spread_ratio"), want["spread_ratio"], rtol=1e-8)
    assert drift["mahalanobis"] == pytest.approx(want["mahalanobis"], rel=1e-6)

    mean, std = saved["train_mean"].numpy(), saved["train_std"].numpy()
    shifted = data.assign(TV=data["TV"] + 5 * std[0])
    shifted.to_csv(tmp_path / "shifted.csv")
    code, summary, err = predict(capsys, trained, tmp_path / "shifted.csv")
    assert code == 0, err
    assert [f for f, r in summary["drift"]["features"].items() if r["drifted"]] == ["TV"]
    assert summary["drift"]["features"]["TV"]["mean_shift"] == pytest.approx(5 + want["mean_shift"][0])

    rescaled = data.assign(radio=mean[1] + 3 * (data["radio"] - mean[1]))
    rescaled.to_csv(tmp_path / "rescaled.csv")
    code, summary, err = predict(capsys, trained, tmp_path / "rescaled.csv")
    assert code == 0, err
    radio = summary["drift"]["features"]["radio"]
    assert radio["spread_ratio"] == pytest.approx(3 * want["spread_ratio"][1]) and radio["drifted"]
    assert [f for f, r in summary["drift"]["features"].items() if r["drifted"]] == ["radio"]

    code, _, err = predict(capsys, trained, tmp_path / "shifted.csv", "--max-drift", "2")
    assert (
        code == 2
        and err.count("\n") == 1
        and err.startswith("error: --max-drift 2: ")
        and "the mean of TV (+4.9" in err
    )
    assert "radio" not in err and "newspaper" not in err and "Traceback" not in err

    code, summary, err = predict(capsys, trained, tmp_path / "shifted.csv", "--no-drift")
    assert code == 0 and summary["drift"] == {"available": False, "reason": "switched off (--no-drift)"}
    code, _, err = predict(capsys, trained, ADVERTISING, "--no-drift", "--max-drift", "2")
    assert code == 2 and "drop --no-drift" in err
