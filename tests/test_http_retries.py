"""Fault injection end to end: ``--data http://127.0.0.1:PORT/data.csv`` from a loopback server that answers the
first requests 503. The run retries the download (ingest's `storage.RETRIES`), Completes, and its numbers and model
are those of a run whose server never failed; the retries are in the task run's log.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from loopback import http_server

import storage
from conftest import ADVERTISING
from flows import train
from tasks.ingest import ingest_csv

FAILURES = 2  # the production retries (2) just cover it: the third try succeeds


@pytest.fixture
def flaky_csv():
    """(url, state): serves Advertising.csv at /data.csv, answering 503 while state["fail"] > 0."""
    body, state = ADVERTISING.read_bytes(), {"fail": 0, "requests": 0, "code": 503}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            state["requests"] += 1
            if state["fail"] > 0:
                state["fail"] -= 1
                self.send_error(state["code"], "busy")
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with http_server(Handler, seconds=120) as base:
        yield f"{base}/data.csv", state


def run(url: str, root, capsys) -> dict:
    code = train.main(["--data", url, "--artifacts-dir", str(root), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def model(summary: dict) -> tuple[str, dict]:
    """The model's stage key (its folder) and its contents but the one field that differs run to run."""
    import torch

    path = Path(summary["artifacts"]["train"]["model"])
    saved = torch.load(path, weights_only=True)
    saved.pop("train_seconds")
    return path.parent.name, {k: v.tolist() if torch.is_tensor(v) else v for k, v in saved.items()}


@pytest.mark.no_server
@pytest.mark.parametrize(("code", "transient"), [(503, True), (502, True), (429, True), (404, False), (403, False)])
def test_a_busy_or_failing_server_may_pass_a_missing_file_will_not(flaky_csv, tmp_path, code, transient):
    url, state = flaky_csv
    state.update(fail=1, code=code)
    with pytest.raises(storage.InputError, match=f"HTTP Error {code}") as refused:
        storage.download(url, tmp_path / "data.csv")
    assert isinstance(refused.value, storage.Transient) is transient
    assert not (tmp_path / "data.csv").exists()  # nothing half-written


@pytest.mark.no_server
def test_production_backoff_is_jittered_and_only_shortened_here():
    assert ingest_csv.retries == 2
    assert (ingest_csv.retry_delay_seconds, ingest_csv.retry_jitter_factor) == ([2, 8], 0.5)


def test_a_503_twice_then_the_data_the_run_completes_as_a_clean_one(flaky_csv, task_log, tmp_path, capsys, monkeypatch):
    url, state = flaky_csv
    monkeypatch.setattr(ingest_csv, "retry_delay_seconds", [0.2, 0.2])  # the test's delays; jitter kept
    state["fail"] = FAILURES
    faulty = run(url, tmp_path / "faulty", capsys)
    assert state["requests"] == FAILURES + 1 and state["fail"] == 0
    retries = [line for line in task_log if "Retry" in line and "will start" in line]
    assert len(retries) == FAILURES, task_log
    assert all("503" in line and "Transient" in line for line in retries), retries

    clean = run(url, tmp_path / "clean", capsys)
    assert state["requests"] == FAILURES + 2
    for key in ("metrics", "baseline", "weights", "bias", "epochs_run"):
        assert faulty[key] == clean[key], key
    assert model(faulty) == model(clean)
    raw = [storage.sha256_file(summary["artifacts"]["ingest"]["table"]) for summary in (faulty, clean)]
    assert raw[0] == raw[1]  # the very bytes were read
