"""automations.yaml on a real Prefect server: `apply` is idempotent, and the server's triggers service calls the
webhook for a failed run of the daily deployment and for a rejected model (never for an unscheduled deployment).

The webhook is a small HTTP receiver on loopback (a thread, shut down after the module or after 3 minutes).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import time
import uuid
from http.server import BaseHTTPRequestHandler

import pytest
from loopback import http_server
from prefect.client.orchestration import get_client
from prefect.events import emit_event
from prefect.events.worker import EventsWorker
from prefect.states import Failed

from flows import automations
from storage.throttle import WRITE_LIMIT

WAIT_SECONDS = 60  # the triggers service reacts within seconds; a loaded 2-core machine may take tens


@pytest.fixture(scope="module")
def receiver():
    """(url, queue of JSON bodies POSTed to it)."""
    bodies: queue.Queue = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            bodies.put(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    with http_server(Handler, seconds=180) as base:
        yield f"{base}/alert", bodies


def wait_for(bodies: queue.Queue, matches, seconds: float = WAIT_SECONDS) -> tuple[dict, list[dict]]:
    """The first body ``matches`` accepts, and every body seen before it."""
    seen, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            body = bodies.get(timeout=0.5)
        except queue.Empty:
            continue
        if matches(body):
            return body, seen
        seen.append(body)
    raise AssertionError(f"no matching webhook call in {seconds}s; got {seen}")


@pytest.fixture(scope="module")
def applied(receiver) -> list[str]:
    """`apply` once without a URL or write limit (nothing created), then twice with both: its output lines."""
    old = {name: os.environ.pop(name, None) for name in (automations.URL_ENV, automations.WRITES_ENV)}
    try:
        assert automations.apply(automations.load()) == [
            "no alerts: set LINREG_ALERT_WEBHOOK_URL (or create Webhook block 'linreg-alerts'); no automation created"
        ]  # and no write limit: it is opt-in
        with get_client(sync_client=True) as client:
            assert client.read_automations() == []
            assert WRITE_LIMIT not in {limit.name for limit in client.read_global_concurrency_limits()}
        os.environ[automations.URL_ENV] = receiver[0]
        os.environ[automations.WRITES_ENV] = "8"
        first = automations.apply(automations.load())
        second = automations.apply(automations.load())
    finally:
        for name, value in old.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
    assert [line.split(":")[0] for line in first] == [line.split(":")[0] for line in second]
    return second


def test_apply_twice_leaves_one_of_each_automation_and_the_write_limit(applied):
    assert applied == [
        f"concurrency limit {WRITE_LIMIT}: 8 slots",
        "automation linreg-scheduled-run-failed: updated",
        "automation linreg-model-rejected: updated",
    ]
    with get_client(sync_client=True) as client:
        found = client.read_automations()
        assert sorted(a.name for a in found) == ["linreg-model-rejected", "linreg-scheduled-run-failed"]
        assert all(a.enabled and a.actions[0].type == "call-webhook" for a in found)
        assert client.read_global_concurrency_limit_by_name(WRITE_LIMIT).limit == 8
    assert automations.main(["list"]) == 0


def _failed_run(client, flow_id, deployment: str) -> object:
    deployment_id = client.create_deployment(flow_id=flow_id, name=deployment)
    run = client.create_flow_run_from_deployment(deployment_id)
    client.set_flow_run_state(run.id, Failed(message='stage "train" failed'), force=True)
    return client.read_flow_run(run.id)


def test_a_failed_daily_run_is_posted_and_an_on_demand_one_is_not(applied, receiver):
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("linear-regression")
        on_demand = _failed_run(client, flow_id, "on-demand")
        daily = _failed_run(client, flow_id, "daily")
    body, before = wait_for(receiver[1], lambda b: b.get("alert") == "linreg-scheduled-run-failed")
    assert body == {
        "alert": "linreg-scheduled-run-failed",
        "state": "Failed",
        "flow_run": daily.name,
        "flow_run_id": f"prefect.flow-run.{daily.id}",
        "deployment": "daily",
        "message": 'stage "train" failed',
    }
    assert on_demand.name not in json.dumps(before)


def test_a_rejected_model_is_posted_with_its_reason(applied, receiver):
    model = f"linreg.model.{uuid.uuid4().hex[:16]}"
    reason = 'test MSE 4.1 > champion\'s 2.9 "by 41%"'
    emit_event("linreg.model.rejected", resource={"prefect.resource.id": model}, payload={"reason": reason})
    EventsWorker.drain_all(timeout=10)
    body, _ = wait_for(receiver[1], lambda b: b.get("alert") == "linreg-model-rejected")
    assert body == {"alert": "linreg-model-rejected", "model": model, "reason": reason}


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium is not installed (.ci/run installs it)")
def test_the_automations_page_lists_both_alerts(applied, prefect_api_url, tmp_path):
    """The UI's Automations page, as a person sees it (docs/screenshots/ui-automations.png)."""
    from test_ui_browser import Page, render_checked

    names = ("linreg-scheduled-run-failed", "linreg-model-rejected")
    page = Page("v1 automations", f"{prefect_api_url.removesuffix('/api')}/automations", "Automations", names)
    page.screenshot = "ui-automations.png"
    dom = render_checked([page], tmp_path)[0][page.label]
    assert dom.text.count("Call webhook using") == 2 and "2 automations" in dom.text
