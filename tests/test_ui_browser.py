"""The hostile column names of tests/test_escaping.py, seen through the Prefect UI itself, in headless Chromium.

The suite's server (tests/conftest.py) serves the UI at ``/`` and the new one at ``/v2``. The training flow and
a predict run go through a CSV whose feature columns are ``<img src=x onerror=…>`` and
``[click](javascript:alert(1))``; then every artifact page of both runs and both flow-run pages are rendered
(the artifacts in both UIs where they carry column names), and the DOM Chromium built is checked: no image but our
``data:image/png`` plots, no ``javascript:`` URL, the title untouched, and the names shown as text. Skips when
Chromium is missing (Debian's package ``chromium``; .ci/run installs it). docs/security.md describes it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import html
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest
from prefect import get_client
from prefect.logging.handlers import APILogWorker
from test_escaping import IMG, LINK, TARGET, _artifacts, _nasty_csv
from websockets.sync.client import connect

from flows.params import Params
from flows.predict import linear_regression_predict
from flows.train import linear_regression
from tasks.predict_report import REPORT_KEY as PREDICT_REPORT_KEY
from tasks.report import COEFFICIENTS_KEY, REPORT_KEY

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium; .ci/run does)"
)
# LINREG_UI_SCREENSHOTS=docs/screenshots keeps the screenshots there (how docs/screenshots/ was made)
SCREENSHOTS = os.environ.get("LINREG_UI_SCREENSHOTS")
PLOTS = ("data:image/png;base64,", "data:image/svg+xml;base64,")  # the plots, and the trend (lifecycle.trend)
URL_ATTRIBUTES = {"href", "src", "xlink:href", "action", "formaction", "poster", "srcset", "data"}
# no network but loopback here; the background-networking flags keep Chromium from trying
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGE_TIMEOUT = 30.0  # seconds for a page to show what it must; the UI's requests are slow on a busy machine


@dataclass
class Page:
    label: str
    url: str
    title: str  # how the document's title starts once the UI has loaded the artifact or the flow run
    shows: tuple[str, ...] = ()  # text the page must show, as text
    screenshot: str | None = None  # file name, 1400 × 1000
    scroll_to: str | None = None  # the heading a screenshot starts at
    ready: Callable[[Dom], bool] | None = None  # more than text: e.g. the markdown's links are in (not its source)


class Dom(HTMLParser):
    """A DOM as HTML: every element's attributes, and its text with the entities decoded."""

    def __init__(self, dom: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.parts: list[str] = []
        self.feed(dom)
        self.close()
        title = re.search(r"<title>(.*?)</title>", dom, re.S)  # the document's, in <head>; an SVG's come later
        self.title = html.unescape(title.group(1)) if title else ""
        self.text = "".join(self.parts)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, {name: value or "" for name, value in attrs}))

    def handle_data(self, data):
        self.parts.append(data)


class Chromium:
    """One headless Chromium, in a session of its own, driven over the DevTools protocol: a websocket (the
    ``websockets`` package, which Prefect depends on). `close` kills it and everything it started."""

    def __init__(self, profile: Path):
        profile.mkdir(parents=True)
        self.profile = profile
        self.log = (profile.parent / "chromium.log").open("wb")
        self.process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.ids = itertools.count(1)
        try:
            active = profile / "DevToolsActivePort"  # "<port>\n<path>", written once it listens
            deadline = time.monotonic() + 30
            while len(lines := active.read_text().split() if active.exists() else []) < 2:
                assert self.process.poll() is None and time.monotonic() < deadline, "chromium did not start"
                time.sleep(0.1)
            self.socket = connect(f"ws://127.0.0.1:{lines[0]}{lines[1]}", max_size=None, open_timeout=10)
        except BaseException:
            self.close()
            raise

    def call(self, method: str, session: str | None = None, **params):
        """Send one command; its result, skipping the events that come in meanwhile."""
        ident = next(self.ids)
        message = {"id": ident, "method": method, "params": params} | ({"sessionId": session} if session else {})
        self.socket.send(json.dumps(message))
        while True:
            reply = json.loads(self.socket.recv(timeout=PAGE_TIMEOUT))
            if reply.get("id") == ident:
                assert "error" not in reply, (method, reply["error"])
                return reply["result"]

    def render(self, page: Page, shots: Path, then: Callable[[str], None] | None = None) -> Dom:
        """``page`` in a new tab, once it has its title and shows what it must (or PAGE_TIMEOUT is up): its DOM;
        ``then(session)`` acts on the page before the tab closes."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        try:
            size = {"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": False}
            self.call("Emulation.setDeviceMetricsOverride", session, **size)
            self.call("Page.navigate", session, url=page.url)
            deadline = time.monotonic() + PAGE_TIMEOUT
            while time.monotonic() < deadline:  # past it, the checks on the DOM say what is missing
                dom = self.dom(session)
                shown = dom.title.startswith(page.title) and all(text in dom.text for text in page.shows)
                if shown and (page.ready is None or page.ready(dom)):
                    break
                time.sleep(0.5)
            time.sleep(0.5)  # what renders right after the data came in (tables, images, markdown)
            if page.screenshot:
                if page.scroll_to:
                    find = f"h => h.textContent.trim() == {json.dumps(page.scroll_to)}"
                    scroll = f"[...document.querySelectorAll('h1, h2, h3, label')].find({find}).scrollIntoView()"
                    self.call("Runtime.evaluate", session, expression=scroll)
                    time.sleep(0.3)
                png = self.call("Page.captureScreenshot", session, format="png")["data"]
                (shots / page.screenshot).write_bytes(base64.b64decode(png))
            dom = self.dom(session)
            if then:
                then(session)
            return dom
        finally:
            self.call("Target.closeTarget", targetId=target)

    def dom(self, session: str) -> Dom:
        expression = "document.documentElement.outerHTML"
        result = self.call("Runtime.evaluate", session, expression=expression, returnByValue=True)
        return Dom(result["result"].get("value", ""))  # none while a navigation replaces the document

    def close(self) -> None:
        """Kill Chromium's process group, then anything else of its profile (a helper that left the group), and
        wait until the kernel has taken them all: a killed process lingers a moment on a loaded machine."""
        with contextlib.suppress(AttributeError):
            self.socket.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.log.close()
        deadline = time.monotonic() + 20
        while (left := chromium_processes(self.profile)) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)


def chromium_processes(profile: Path) -> list[int]:
    """PIDs of live processes started with ``profile`` (from /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if str(profile).encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
    return found


def assert_inert(page: Page, dom: Dom) -> None:
    """Nothing from data became markup: no image but our plots, no javascript: URL, the title is the UI's; and
    the page shows what it must, as text."""
    assert "PWNED" not in dom.title, page.label
    for tag, attributes in dom.elements:
        if tag == "img" and attributes.get("src"):  # an <img> without a src (an editor's spacer) loads nothing
            assert attributes["src"].startswith(PLOTS), (page.label, attributes)
        for name, value in attributes.items():
            url = re.sub(r"[\x00-\x20]", "", value).lower()  # what a browser strips from a URL before its scheme
            assert not (name in URL_ATTRIBUTES and url.startswith("javascript:")), (page.label, tag, attributes)
    assert dom.title.startswith(page.title), f"{page.label}: the UI did not load it within {PAGE_TIMEOUT:.0f}s"
    for text in page.shows:
        assert text in dom.text, f"{page.label} does not show {text!r} as text"


def render_checked(pages: list[Page], tmp_path: Path) -> tuple[dict[str, Dom], Path]:
    """Render ``pages`` in one headless Chromium (screenshots to $LINREG_UI_SCREENSHOTS or under ``tmp_path``),
    check each is inert and shows what it must, and that Chromium left no process: the DOMs by label, and the
    screenshots' folder."""
    profile, shots = tmp_path / "chromium" / "profile", Path(SCREENSHOTS or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    browser = Chromium(profile)
    try:
        rendered = {page.label: browser.render(page, shots) for page in pages}
    finally:
        browser.close()
    assert chromium_processes(profile) == []  # Chromium ended, and everything it started
    for page in pages:
        assert_inert(page, rendered[page.label])
    return rendered, shots


def test_the_ui_shows_hostile_column_names_as_text_and_nothing_else(tmp_path: Path, artifacts: Path, prefect_api_url):
    ui = prefect_api_url.removesuffix("/api")
    with urllib.request.urlopen(f"{ui}/ui-settings", timeout=10) as response:
        assert json.load(response)["api_url"] == prefect_api_url  # the UI's JS asks this server, not :4200

    data = _nasty_csv(tmp_path / "hostile.csv")
    trained = linear_regression(
        data=data, target=TARGET, index_column=None, artifacts_dir=str(artifacts), return_state=True
    )
    assert list(trained.result()["weights"]) == [IMG, LINK]
    predicted = linear_regression_predict(data=data, index_column=None, artifacts_dir=str(artifacts), return_state=True)
    assert predicted.result()["features"] == [IMG, LINK]
    APILogWorker.drain_all(timeout=30)  # the runs' logs are on the server before a page asks for them

    pages = []
    for run, name in ((trained, "train"), (predicted, "predict")):
        run_id = run.state_details.flow_run_id
        for ui_name, base in (("v1", ui), ("v2", f"{ui}/v2")):
            # training logs the names as Python reprs, plain text in both UIs (predict's logs name no column)
            shot = "ui-flow-run.png" if (ui_name, name) == ("v1", "train") else None
            shows = (repr(IMG), repr(LINK)) if name == "train" else ()
            pages.append(
                Page(f"{ui_name} {name} flow run", f"{base}/runs/flow-run/{run_id}", "Flow Run: ", shows, shot)
            )
            for artifact in _artifacts(run_id):
                # the v2 UI shows a table's cells as plain text, so there they read escaped (docs/security.md)
                named = artifact.key in (
                    REPORT_KEY,
                    COEFFICIENTS_KEY,
                    PREDICT_REPORT_KEY,
                )  # the others hold no column name
                if ui_name == "v2" and not named:
                    continue  # the v1 pages of these check what the v2 ones would (no text from data in them)
                readable = named and (ui_name, artifact.type) != ("v2", "table")
                label = f"{ui_name} {name} {artifact.key}"
                page = Page(label, f"{base}/artifacts/artifact/{artifact.id}", f"Artifact: {artifact.key}")
                page.shows = (IMG, LINK) if readable else ()
                if label == "v1 train linear-regression-report":
                    page.screenshot, page.scroll_to = "ui-report.png", "Metrics"  # metrics, fit and coefficients
                pages.append(page)
    # training: 2 × flow run, 5 + 2 artifacts (v1 + v2); predict: 2 × (flow run + report)
    assert len(pages) == 13 and sum(bool(page.shows) for page in pages) == 7

    rendered, shots = render_checked(pages, tmp_path)
    for ui_name in ("v1", "v2"):  # our own plots still show in the report
        report = rendered[f"{ui_name} train linear-regression-report"]
        assert len([a for tag, a in report.elements if tag == "img" and a.get("src", "").startswith(PLOTS)]) >= 2
    for page in pages:
        if page.screenshot:
            assert (shots / page.screenshot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", page.label


# The lr field of the run form: its input(s), and the buttons of a type switch (its menu's button aside).
LR_FIELD = """(() => {
  const field = [...document.querySelectorAll('.schema-form-property')]
    .find(p => p.querySelector('.schema-form-property__label')?.textContent.trim() == 'lr (Optional)');
  const inputs = [...field.querySelectorAll('input, textarea, select')];
  const switches = [...field.querySelectorAll('.p-label__body button')];
  return {inputs: inputs.map(i => i.tagName), switches: switches.length};
})()"""
TYPE_LR = """(() => {
  const field = [...document.querySelectorAll('.schema-form-property')]
    .find(p => p.querySelector('.schema-form-property__label')?.textContent.trim() == 'lr (Optional)');
  const input = field.querySelector('textarea');
  Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, 'value').set.call(input, '0.01');
  input.dispatchEvent(new Event('input', {bubbles: true}));
  [...document.querySelectorAll('button')].find(b => b.textContent.trim() == 'Submit').click();
})()"""


def test_the_run_form_shows_plain_inputs_and_submits_clean_parameters(tmp_path: Path, prefect_api_url):
    """A deployment's run form (issue 23): no "Property is type None", the presets' values in the descriptions,
    lr one text input; submitted with lr typed and the rest untouched, the run's parameters hold lr as typed and
    no unset field, so it trains with the preset's values."""
    deployment = linear_regression.to_deployment(name="run-form").apply()
    ui = prefect_api_url.removesuffix("/api")
    presets = (Params.model_fields["epochs"].description, Params.model_fields["lr"].description)
    page = Page("run form", f"{ui}/deployments/deployment/{deployment}/run", "Create Flow Run for Deployment: run-form")
    page.shows, page.screenshot, page.scroll_to = presets, "run-form.png", "preset (Optional)"
    seen = {}

    def submit(session: str) -> None:
        evaluate = lambda expression: browser.call(  # noqa: E731
            "Runtime.evaluate", session, expression=expression, returnByValue=True
        )["result"].get("value")
        seen["lr"] = evaluate(LR_FIELD)
        evaluate(TYPE_LR)
        deadline = time.monotonic() + PAGE_TIMEOUT
        while "/run" in evaluate("location.pathname") and time.monotonic() < deadline:
            time.sleep(0.2)  # the UI leaves the form once the server created the run

    profile, shots = tmp_path / "chromium" / "profile", Path(SCREENSHOTS or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    browser = Chromium(profile)
    try:
        dom = browser.render(page, shots, then=submit)
    finally:
        browser.close()
    assert_inert(page, dom)
    assert "Property is type" not in dom.text
    assert seen["lr"] == {"inputs": ["TEXTAREA"], "switches": 0}  # one input, no str/float/None switch

    async def runs():
        async with get_client() as client:
            return await client.read_flow_runs()

    (run,) = [r for r in asyncio.run(runs()) if r.deployment_id == deployment]
    assert run.parameters["lr"] == "0.01"
    unset = {name for name, field in Params.model_fields.items() if field.default is None} - {"lr"}
    assert not unset & {name for name, value in run.parameters.items() if value is not None}
    assert all(not isinstance(value, dict) for value in run.parameters.values())  # no sentinel object
    assert Params.parse(**run.parameters).training() == Params.parse(lr=0.01).training()  # the preset's, lr typed
    assert (shots / "run-form.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
