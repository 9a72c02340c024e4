"""The predict flow: values against the model's weights, row order and index, partitions, cache, errors, lineage,
and the ``predict`` deployment run by a real process worker."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import ArtifactFilter
from prefect.exceptions import ObjectNotFound

import stagecore as core
import storage
from conftest import ADVERTISING, ROOT
from flows import lineage
from flows.local_server import PREFECT, isolated_env, start_process, stop_process
from flows.predict import main
from flows.train import linear_regression
from lifecycle.champion import champion_model_path
from tasks import predict as stage
from tasks import predict_report
from tasks.predict_report import REPORT_KEY

FEATURES = ["TV", "radio", "newspaper"]


def promote(root: Path, summary: dict) -> Path:
    """The champion after a training run: the first run's model is promoted by the flow itself."""
    assert summary["promotion"]["promoted"], summary["promotion"]
    model = Path(champion_model_path(root))
    assert model == Path(summary["artifacts"]["train"]["model"])
    return model


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """One training run on Advertising, promoted: a store with a champion."""
    root = tmp_path_factory.mktemp("predict") / "artifacts"
    summary = linear_regression(artifacts_dir=str(root))
    return {"root": root, "model": promote(root, summary)}


def predict(capsys, *args: str) -> tuple[int, dict | None, str]:
    code = main([*args, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]) if code == 0 else None, err


def expected(csv: Path, model: Path) -> np.ndarray:
    saved = torch.load(model, weights_only=True)
    table = pacsv.read_csv(csv)
    x = np.column_stack([table[f].to_numpy().astype(np.float64) for f in saved["features"]])
    return x @ saved["weights"].double().reshape(-1).numpy() + float(saved["bias"])


def test_predictions_are_the_models_weights_applied_in_row_order_with_the_index(store, capsys):
    code, summary, err = predict(capsys, "--data", str(ADVERTISING), "--artifacts-dir", str(store["root"]))
    assert code == 0, err
    assert summary["model"] == str(store["model"]) and summary["features"] == FEATURES
    assert summary["rows"] == 200 and Path(summary["predictions"]).is_absolute()
    table = pq.read_table(summary["predictions"])
    assert table.column_names == ["Unnamed: 0", "prediction"]
    assert str(table.schema.field("prediction").type) == "double"
    assert table["Unnamed: 0"].to_pylist() == list(range(1, 201))
    np.testing.assert_allclose(table["prediction"].to_numpy(), expected(ADVERTISING, store["model"]), rtol=1e-6)
    # the manifest names the model by content, and by its path relative to the store
    manifest = core.read_manifest(summary["predictions"])
    model = Path(store["model"]).relative_to(store["root"]).as_posix()
    assert {"path": model, "sha256": storage.sha256_file(store["model"])}.items() <= {
        k: v for i in manifest["inputs"] if i["name"] == "model_path" for k, v in i.items()
    }.items()

    # a second run is cached stage by stage, and lineage leads through the model to the training CSV
    code, again, err = predict(capsys, "--data", str(ADVERTISING), "--artifacts-dir", str(store["root"]))
    assert code == 0, err
    assert again["cached"] == {"ingest": True, "drop_index": True, "predict": True}
    assert again["predictions"] == summary["predictions"]
    report = lineage.explain(summary["predictions"])
    assert report["ok"]
    assert [s["path"] for s in report["sources"]] == [str(ADVERTISING)]
    assert {"ingest", "drop_index", "split", "tensorize", "accumulate", "train", "predict"} <= set(report["parameters"])
    inputs = {Path(c["path"]).name for c in report["artifact"]["inputs"]}
    assert inputs == {"clean.parquet", "raw.parquet", "model.pt"}


def test_a_folder_of_partitions_gives_the_single_files_predictions(store, capsys, tmp_path):
    lines = ADVERTISING.read_text().splitlines()
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "a.csv").write_text("\n".join(lines[:121]) + "\n")
    (folder / "b.csv").write_text("\n".join([lines[0], *lines[121:]]) + "\n")
    code, summary, err = predict(capsys, "--data", str(folder), "--artifacts-dir", str(store["root"]))
    assert code == 0, err
    assert len(summary["predictions"]) == 2 and summary["rows"] == 200
    tables = [pq.read_table(p) for p in summary["predictions"]]
    assert [t.num_rows for t in tables] == [120, 80]
    got = np.concatenate([t["prediction"].to_numpy() for t in tables])
    np.testing.assert_allclose(got, expected(ADVERTISING, store["model"]), rtol=1e-6)
    assert np.concatenate([t["Unnamed: 0"].to_numpy() for t in tables]).tolist() == list(range(1, 201))


def test_errors_are_one_line_exit_2(store, capsys, tmp_path, write_csv):
    root = str(store["root"])
    code, _, err = predict(capsys, "--artifacts-dir", str(tmp_path / "empty"))
    assert code == 2 and "train first (python -m flows.train)" in err and err.count("\n") == 1

    missing = write_csv(",TV,radio\n1,1.0,2.0\n", "missing.csv")
    code, _, err = predict(capsys, "--data", missing, "--artifacts-dir", root)
    assert code == 2 and "'newspaper'" in err and missing in err and "Traceback" not in err and err.count("\n") == 1
    assert "no model's features are all among its columns (models: sales ← TV, newspaper, radio" in err

    text = write_csv(",TV,radio,newspaper\n1,1.0,2.0,abc\n", "text.csv")
    code, _, err = predict(capsys, "--data", text, "--artifacts-dir", root)
    assert code == 2 and "'newspaper'" in err and "not numeric" in err and text in err

    nan = write_csv(",TV,radio,newspaper\n1,1.0,2.0,3.0\n2,NaN,2.0,3.0\n", "nan.csv")
    code, _, err = predict(capsys, "--data", nan, "--artifacts-dir", root)
    assert code == 2 and "'TV'" in err and "NaN" in err and nan in err and "row 1" in err

    tampered = tmp_path / "model.pt"
    shutil.copy(store["model"], tampered)
    shutil.copy(core.manifest_path(store["model"]), core.manifest_path(tampered))
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    code, _, err = predict(capsys, "--model", str(tampered), "--artifacts-dir", root)
    assert code == 2 and str(tampered) in err and err.startswith("error: ")


def test_predict_deployment_runs_on_a_process_worker(store, prefect_api_url, tmp_path):
    """prefect.yaml's ``predict`` deployment on the training deployment's pool, run by ``prefect worker``."""
    env = isolated_env(tmp_path / "home", PREFECT_API_URL=prefect_api_url)

    def prefect(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([PREFECT, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    with get_client(sync_client=True) as client:  # the pool `make deploy` creates, unless a test made it already
        try:
            client.read_work_pool("local-process")
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name="local-process", type="process"))
    deployed = prefect("--no-prompt", "deploy", "--name", "predict", timeout=300)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("linear-regression-predict/predict")
    assert deployment.work_pool_name == "local-process" and deployment.schedules == []
    schema = deployment.parameter_openapi_schema["properties"]
    assert all(schema[name].get("description") for name in ("model", "data", "index_column", "artifacts_dir"))

    worker_env = {
        **env,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        "LINREG_ARTIFACTS_DIR": str(store["root"]),
    }
    worker = start_process([PREFECT, "worker", "start", "--pool", "local-process"], worker_env, tmp_path / "w.log")
    try:
        with get_client(sync_client=True) as client:
            run_id = client.create_flow_run_from_deployment(deployment.id).id
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                run = client.read_flow_run(run_id)
                if run.state and run.state.is_final():
                    break
                time.sleep(0.5)
            assert run.state.is_completed(), (tmp_path / "w.log").read_text(errors="replace")[-4000:]
            found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id={"any_": [run_id]}))
    finally:
        stop_process(worker)
    [report] = [a for a in found if a.key == REPORT_KEY]
    assert report.type == "markdown" and "| rows | 200 |" in report.data
    assert core.escape_md(store["model"]) in report.data and "data:image/png;base64," in report.data


@pytest.mark.no_server
def test_streaming_follows_the_row_order_across_batches_and_row_groups(tmp_path, monkeypatch):
    """Batches smaller than the row groups, row groups that differ between the two tables: the index column
    still lines up with its rows, and a NaN is reported at its row of the file."""
    monkeypatch.setattr(stage, "BATCH_ROWS", 4)
    x = np.arange(23, dtype=np.float64)
    raw = pa.table({"": pa.array(np.arange(100, 123)), "a": x, "b": 2 * x})
    pq.write_table(raw, tmp_path / "raw.parquet", row_group_size=5)
    pq.write_table(raw.drop_columns([""]), tmp_path / "clean.parquet", row_group_size=3)
    model = {"weights": torch.tensor([0.5, -1.0]), "bias": 3.0}
    files = [pq.ParquetFile(tmp_path / n) for n in ("clean.parquet", "raw.parquet")]
    schema, batches = stage.predictions(*files, ["a", "b"], model, "Unnamed: 0")
    table = pa.Table.from_batches(list(batches), schema)
    assert table["Unnamed: 0"].to_pylist() == list(range(100, 123))
    np.testing.assert_allclose(table["prediction"].to_numpy(), 0.5 * x - 2 * x + 3.0, rtol=1e-12)

    x[17] = np.nan
    pq.write_table(pa.table({"a": x, "b": 2 * x}), tmp_path / "nan.parquet", row_group_size=3)
    _, batches = stage.predictions(pq.ParquetFile(tmp_path / "nan.parquet"), files[1], ["a", "b"], model, None)
    with pytest.raises(core.InputError, match="'a' is empty or NaN at data row 17"):
        list(batches)


@pytest.mark.no_server
def test_the_summary_is_pandas_describe_streamed_over_files(tmp_path, monkeypatch):
    monkeypatch.setattr(core, "open_parquet", pq.ParquetFile)  # files of this test, without manifests
    rng = np.random.default_rng(7)
    parts = [rng.normal(3.0, 2.0, size=n) for n in (5000, 1, 2500)]
    paths = []
    for n, y in enumerate(parts):
        paths.append(str(tmp_path / f"p{n}.parquet"))
        pq.write_table(pa.table({"prediction": y}), paths[-1], row_group_size=1000)
    counts, edges, summary = predict_report.histogram(paths)
    reference = pd.Series(np.concatenate(parts)).describe()
    assert summary.count == reference["count"] == counts.sum() and len(edges) == predict_report.HISTOGRAM_BINS + 1
    exact = [reference[k] for k in ("mean", "std", "min", "max")]
    assert [summary.mean, summary.std, summary.min, summary.max] == pytest.approx(exact, rel=1e-12)
    width = (summary.max - summary.min) / (predict_report.HISTOGRAM_BINS * predict_report.FINE)
    for ours, name in ((summary.q1, "25%"), (summary.median, "50%"), (summary.q3, "75%")):
        assert abs(ours - reference[name]) <= width  # read from the fine bins: within one bin of the exact value
    assert predict_report.histogram([])[2] is None


@pytest.mark.no_server
def test_the_predict_report_names_its_input_model_and_training_run_escaped():
    from markdown_it import MarkdownIt

    from lifecycle.markdown import run_link

    hostile_file = "s3://bucket/<img src=x onerror=alert(1)>[x](javascript:y).csv"
    hostile_column = "**tv** | <script>alert(1)</script>"
    run = "12345678-1234-4234-8234-123456789abc"
    summary = predict_report.Summary(200, 14.02, 5.1, 1.5, 10.3, 14.1, 17.9, 26.7)
    report = predict_report.render_report(
        storage.redact(hostile_file + "?token=secret"),
        "/store/train/abc/model.pt",
        run_link("Advertising-default-d0c541 (2026-12-07 04:00 UTC)", run),
        [hostile_column, "radio"],
        summary,
        ["/store/predict/k/predictions.parquet"],
        b"\x89PNG\r\n\x1a\n",
    )
    rendered = MarkdownIt("commonmark", {"html": True}).enable("table").render(report)
    assert "<img src=x" not in rendered and "<script" not in rendered and "<strong>" not in rendered
    assert re.findall(r'<a href="([^"]*)"', rendered) == [f"/runs/flow-run/{run}"]  # the training run, only
    text = html.unescape(re.sub(r"<[^>]*>", "", rendered))
    assert hostile_file in text and "secret" not in text  # the input, named and redacted
    assert hostile_column in text and "/store/train/abc/model.pt" in text and "Advertising-default-d0c541" in text
    values = ("200", "14.02", "5.1", "1.5", "10.3", "14.1", "17.9", "26.7")
    for label, value in zip(predict_report.STATISTICS, values, strict=True):
        assert re.search(rf"<td>{re.escape(label)}</td>\s*<td>{re.escape(value)}</td>", rendered), label
    description = predict_report.describe("data.csv", summary)
    assert description == "200 predictions for data.csv: mean 14.02, median ≈ 14.1"
