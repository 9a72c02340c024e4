"""What a team sees in the Prefect UI after a few runs, in headless Chromium: the runs list with the runs' names and
tags, the history artifact (newest first, runs linked, narrow enough for the panel), the run report's stages and
a prediction report's drift table (its input Advertising with TV moved 5 training σ: TV drifted, the others not).

Three training runs on the Advertising data go to the suite's server; the pages are rendered in both UIs' list and
artifact routes and checked as a reader would read them. ``LINREG_UI_SCREENSHOTS=docs/screenshots`` keeps the
screenshots (how docs/screenshots/ui-runs.png and ui-history.png were made, docs/deployment.md shows them; and
ui-predict-drift.png, in docs/lifecycle.md).
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter
from prefect.logging.handlers import APILogWorker
from test_ui_browser import CHROMIUM, Page, render_checked

import stagecore as core
from conftest import ADVERTISING
from flows.predict import linear_regression_predict
from flows.train import linear_regression
from tasks.history import HISTORY_KEY
from tasks.predict_report import REPORT_KEY as PREDICTIONS_KEY
from tasks.report import REPORT_KEY

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium; .ci/run does)"
)
DRIFT_HEADING = "Drift from the training data"
RUN_LINK = re.compile(r"/runs/flow-run/[0-9a-f-]{36}$")


def _artifact(run_id, key: str):
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id={"any_": [run_id]}))
    [artifact] = [a for a in found if a.key == key]
    return artifact


def _run_links(dom) -> list[str]:
    return [a["href"] for tag, a in dom.elements if tag == "a" and RUN_LINK.search(a.get("href", ""))]


def test_the_runs_list_and_the_history_read_at_a_glance(tmp_path: Path, artifacts: Path, prefect_api_url):
    ui = prefect_api_url.removesuffix("/api")
    with urllib.request.urlopen(f"{ui}/ui-settings", timeout=10) as response:
        assert json.load(response)["api_url"] == prefect_api_url

    # a default run, the seed tutorial (off the optimum: not promoted), and a cached rerun of the first
    runs = [
        linear_regression(artifacts_dir=str(artifacts), return_state=True),
        linear_regression(artifacts_dir=str(artifacts), preset="seed", epochs=50, return_state=True),
        linear_regression(artifacts_dir=str(artifacts), return_state=True),
    ]
    summaries = [run.result() for run in runs]
    ids = [str(run.state_details.flow_run_id) for run in runs]
    # the prediction run's input is Advertising with TV moved 5 training σ: its report's drift table says so
    model = summaries[0]["artifacts"]["train"]["model"]
    data = pd.read_csv(ADVERTISING, index_col=0)
    shifted = tmp_path / "shifted" / "Advertising.csv"  # the same name: the run is named after the file
    shifted.parent.mkdir()
    data.assign(TV=data["TV"] + 5 * float(core.read_pt(model)["train_std"][0])).to_csv(shifted)
    predicted = linear_regression_predict(artifacts_dir=str(artifacts), data=str(shifted), return_state=True)
    drift = predicted.result()["drift"]
    assert [f for f, r in drift["features"].items() if r["drifted"]] == ["TV"]
    model_sha = json.loads(Path(model + ".manifest.json").read_text())["sha256"]
    with get_client(sync_client=True) as client:
        prediction = client.read_flow_run(predicted.state_details.flow_run_id)
    assert prediction.name == f"Advertising-predict-{model_sha[:6]}" and {"predict", "store:local"} <= set(
        prediction.tags
    )
    with get_client(sync_client=True) as client:
        names = [client.read_flow_run(run_id).name for run_id in ids]
        tags = [set(client.read_flow_run(run_id).tags) for run_id in ids]
    assert names[0].startswith("Advertising-default-") and names[1].startswith("Advertising-seed-")
    assert names[0] == names[2]  # same data, same parameters: the same name (the run id tells them apart)
    assert {"preset:default", "engine:rows", "store:local", "promoted"} <= tags[0]
    assert {"preset:seed", "not-promoted"} <= tags[1]
    assert [s["promotion"]["promoted"] for s in summaries] == [True, False, True]  # the rerun: already champion
    APILogWorker.drain_all(timeout=30)

    history = _artifact(ids[2], HISTORY_KEY)
    report = _artifact(ids[2], REPORT_KEY)
    predictions = _artifact(predicted.state_details.flow_run_id, PREDICTIONS_KEY)
    pages = [
        Page("v1 runs", f"{ui}/runs", "Runs", (names[0], names[1], prediction.name), "ui-runs.png"),
        Page("v1 history", f"{ui}/artifacts/artifact/{history.id}", f"Artifact: {HISTORY_KEY}", (names[1],)),
        Page("v2 history", f"{ui}/v2/artifacts/artifact/{history.id}", f"Artifact: {HISTORY_KEY}", (names[1],)),
        Page("v1 report", f"{ui}/artifacts/artifact/{report.id}", f"Artifact: {REPORT_KEY}", ("Stages",)),
        Page(
            "v1 predictions",
            f"{ui}/artifacts/artifact/{predictions.id}",
            f"Artifact: {PREDICTIONS_KEY}",
            (DRIFT_HEADING, "Mahalanobis distance of the mean"),
            "ui-predict-drift.png",
            DRIFT_HEADING,
        ),
        # our events in Prefect's feed, newest first: the prediction's, after the training runs' (tasks/events.py)
        Page(
            "v1 events", f"{ui}/events", "Event Feed", ("Linreg predictions written", "linreg.model."), "ui-events.png"
        ),
    ]
    pages[1].screenshot = "ui-history.png"
    for page in pages[1:3]:  # the table rendered, not only its text (a UI may show the source first): all links in
        page.ready = lambda dom: {run.rsplit("/", 1)[1] for run in _run_links(dom)} >= set(ids)

    rendered, shots = render_checked(pages, tmp_path)

    for label in ("v1 history", "v2 history"):
        dom = rendered[label]
        # each run a link to its page, newest first: the cached rerun, the seed run, the first run
        links = _run_links(dom)
        assert [link.rsplit("/", 1)[1] for link in links][:3] == ids[::-1], (label, links)
        for header in ("run", "test MSE", "promoted", "preset"):
            assert header in dom.text, (label, header)
        assert not re.search(r"\d\.\d{7,}", dom.text), f"{label}: a number with more than 6 significant digits"
        assert not re.search(r"[0-9a-f]{64}", dom.text), f"{label}: a whole sha256"
    # the drift table, as text: TV's row says drifted, with its mean moved 5 training σ; the others' say no
    table = rendered["v1 predictions"].text.split(DRIFT_HEADING, 1)[1]
    for feature, figures in drift["features"].items():
        shift, verdict = re.escape(f"{figures['mean_shift']:.3g}"), "yes" if feature == "TV" else "no"
        row = rf"{feature}\s*{shift}\s*[0-9.e+-]+\s*[0-9.e+-]+\s*{verdict}"
        assert re.search(row, table), (feature, table[:400])
    for shot in {page.screenshot for page in pages if page.screenshot}:
        assert (shots / shot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", shot
