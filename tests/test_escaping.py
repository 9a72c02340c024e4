"""Text from data reaches the UI and the plots as text: never as HTML, a link, an image or math (docs/security.md).

The Prefect UI renders markdown artifacts, and every string cell of a table artifact, as markdown, and keeps
``<img>`` tags and ``javascript:`` links; so a CSV's column names are escaped (`core.escape_md`) wherever they
are put into an artifact. Rendered here with markdown-it (CommonMark, raw HTML allowed, as the UI allows it).
"""

from __future__ import annotations

import csv
import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
from markdown_it import MarkdownIt
from matplotlib import cbook
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter

import stagecore as core
from conftest import ROOT
from flows.predict import linear_regression_predict
from flows.train import linear_regression
from lifecycle.markdown import markdown_table
from stagecore.markup import escape_cells
from tasks.plot import predicted_vs_actual
from tasks.report import COEFFICIENTS_KEY, REPORT_KEY

IMG = """<img src=x onerror="document.title='PWNED'">"""
LINK = "[click](javascript:alert(1))"
TARGET = "revenue_$M_vs_$K"
NASTY = [
    IMG,
    LINK,
    TARGET,
    "![pixel](https://tracker.example/p.png)",
    "<a href='javascript:alert(1)'>x</a>",
    "http://evil.example/ and www.evil.example and a@evil.example",
    "**bold** _em_ `code` ~~gone~~ \\*",
    "# heading",
    "- item",
    "1. item",
    "> quote",
    "===",
    "a | b",
    "&lt;img src=x&gt; &amp; &#60;",
    "{curly} #hash +plus !bang",
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MARKDOWN = MarkdownIt("commonmark", {"html": True}).enable("table")  # raw HTML on: escaping must not rely on it


def text_of(rendered: str) -> str:
    """The text a reader sees in rendered HTML: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]*>", "", rendered))


def tags(rendered: str) -> set[str]:
    return set(re.findall(r"<([a-zA-Z][a-zA-Z0-9]*)", rendered))


@pytest.mark.parametrize("text", NASTY)
@pytest.mark.no_server
def test_escaped_text_renders_as_itself_and_as_nothing_else(text):
    rendered = MARKDOWN.render(core.escape_md(text))
    assert tags(rendered) == {"p"}, rendered
    assert text_of(rendered).strip() == text


@pytest.mark.parametrize("text", NASTY)
@pytest.mark.no_server
def test_a_table_cell_keeps_its_text_and_its_row(text):
    rendered = MARKDOWN.render(markdown_table([{"feature": text, "weight": 1.5}]))
    assert tags(rendered) <= {"table", "thead", "tbody", "tr", "th", "td"}, rendered
    cells = re.findall(r"<td>(.*?)</td>", rendered)
    assert [html.unescape(c) for c in cells] == [text, "1.5"]


@pytest.mark.no_server
def test_control_characters_are_spaces_so_a_row_stays_one_row():
    assert core.escape_md("a\nb\r\tc\x1b\u2028d") == "a b  c  d"
    rendered = MARKDOWN.render(markdown_table([{"feature": "x\n| y | z |\n|---|---|"}]))
    assert len(re.findall(r"<tr>", rendered)) == 2  # the header and the one row


@pytest.mark.no_server
def test_a_target_with_dollars_plots_literally():
    """matplotlib parsed ``revenue_$M_vs_$K`` as math text and raised a ParseException."""
    png = predicted_vs_actual(np.array([1.0, 2.0, 3.0]), np.array([1.1, 1.9, 3.2]), TARGET)
    assert png[:8] == PNG_SIGNATURE
    shown = core.escape_mathtext(TARGET)
    assert not cbook.is_math_text(shown)
    assert shown.replace(r"\$", "$") == TARGET  # what matplotlib draws for text that is not math


@pytest.mark.no_server
def test_every_artifact_is_published_through_the_escaping_helpers():
    """Nothing but stagecore/markup.py calls Prefect's create_*_artifact for markup (progress bars carry none)."""
    direct = re.compile(r"create_(markdown|table|link|image)_artifact")
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("stagecore", "lifecycle", "tasks", "flows", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != ROOT / "stagecore" / "markup.py" and direct.search(path.read_text())
    ]
    assert offenders == []


@pytest.mark.no_server
def test_table_artifacts_escape_string_cells_only():
    """String cells are markdown in the UI; column names (ours) are plain text there, so they stay as they are."""
    rows = escape_cells([{"feature": LINK, "test_mse": 0.5, "promoted": True, "note": None}])
    assert rows == [{"feature": core.escape_md(LINK), "test_mse": 0.5, "promoted": True, "note": None}]


@pytest.mark.no_server
def test_only_the_entities_the_ui_decodes_are_used():
    """The UI's renderer turns &lt; &gt; &quot; &#39; &amp; back into characters for display, and no other
    entity: an &#x27; (Python's html.escape) would show as those six characters."""
    entities = set(re.findall(r"&#?\w+;", core.escape_md("".join(map(chr, range(32, 127))))))
    assert entities == {"&amp;", "&lt;", "&gt;", "&quot;", "&#39;"}


def _nasty_csv(path: Path) -> str:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(80, 2))
    y = 3.0 + 2.0 * x[:, 0] - 1.0 * x[:, 1] + rng.normal(scale=0.1, size=80)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([IMG, LINK, TARGET])
        writer.writerows([[f"{a:.6f}", f"{b:.6f}", f"{c:.6f}"] for (a, b), c in zip(x, y, strict=True)])
    return str(path)


def _artifacts(flow_run_id) -> list:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id={"any_": [flow_run_id]}))


RUN_LINK = re.compile(r'<a href="(http://127\.0\.0\.1:\d+)?/runs/flow-run/[0-9a-f-]{36}">')


def _assert_inert(artifact) -> None:
    """No HTML, no javascript: link, from data, in what the API stores; rendered, only our own tags: our plots,
    and links to flow runs of the UI (the history's runs, a prediction's training run), nothing else."""
    assert "<" not in artifact.data, artifact.key
    assert "javascript:" not in artifact.data and "](javascript" not in artifact.data, artifact.key
    assert "<" not in (artifact.description or ""), artifact.key
    if artifact.type == "markdown":
        rendered = MARKDOWN.render(artifact.data)
        links = re.findall(r"<a [^>]*>", rendered)
        assert all(RUN_LINK.fullmatch(link) for link in links), (artifact.key, links)
        assert "onerror" not in re.sub(r"&lt;.*?&gt;", "", rendered)  # only as escaped text
        sources = re.findall(r"<img ([^>]*)>", rendered)
        assert all(s.startswith('src="data:image/png;base64,') for s in sources), sources


def test_hostile_column_names_reach_the_ui_as_text(tmp_path: Path, artifacts: Path):
    data = _nasty_csv(tmp_path / "hostile.csv")
    state = linear_regression(
        data=data, target=TARGET, index_column=None, artifacts_dir=str(artifacts), return_state=True
    )
    summary = state.result()
    assert list(summary["weights"]) == [IMG, LINK]  # trained fine: the names are data, kept as they are
    trained = {a.key: a for a in _artifacts(state.state_details.flow_run_id) if a.key}
    for artifact in trained.values():
        if artifact.type in ("markdown", "table"):
            _assert_inert(artifact)

    report = trained[REPORT_KEY].data
    assert core.escape_md(IMG) in report and core.escape_md(LINK) in report and core.escape_md(TARGET) in report
    shown = text_of(MARKDOWN.render(report))
    assert IMG in shown and LINK in shown and TARGET in shown  # what a reader sees: the names as written
    assert len(re.findall(r"!\[[^\]]*\]\(data:image/png;base64,", report)) >= 2  # our plots still show
    features = [row["feature"] for row in json.loads(trained[COEFFICIENTS_KEY].data)]
    assert features == [core.escape_md(IMG), core.escape_md(LINK), core.escape_md("(intercept)")]
    assert [text_of(MARKDOWN.render(f)).strip() for f in features[:2]] == [IMG, LINK]

    predicted = linear_regression_predict(data=data, index_column=None, artifacts_dir=str(artifacts), return_state=True)
    assert predicted.result()["features"] == [IMG, LINK]
    [published] = [a for a in _artifacts(predicted.state_details.flow_run_id) if a.type == "markdown"]
    _assert_inert(published)
    rendered = MARKDOWN.render(published.data)
    shown = text_of(rendered)
    assert IMG in shown and LINK in shown
    assert f'/runs/flow-run/{state.state_details.flow_run_id}">' in rendered  # the model's training run, linked
