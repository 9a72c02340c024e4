"""Markdown for the run's reports: tables and embedded images, every value from data escaped (`core.escape_md`).

Generic rendering, no Prefect: the report tasks (tasks/report.py, tasks/predict_report.py) build their pages
with it and publish them through `core.markdown_artifact`.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import stagecore as core

# what tasks/ and flows/ use (tests/test_surface.py)
__all__ = ["image_data_uri", "markdown_table", "run_link"]

# the only links the reports make: to a flow run of the Prefect UI, by its UUID (relative, or under the UI's URL)
_NOT_PLAIN = re.compile(r"[^A-Za-z0-9 .-]")
_RUN_LINK = re.compile(r"(https?://[^\s()<>\\]+)?/runs/flow-run/[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}")


class Link(NamedTuple):
    """A cell or line that links ``text`` (escaped) to ``url``, one of `run_link`'s: nothing from data chooses
    where a link goes."""

    text: str
    url: str

    def markdown(self) -> str:
        """The link with its text kept to letters, digits, spaces, ``.`` and ``-`` (anything else shown as ``-``):
        the Prefect UI shows a link's text as written, backslash escapes included (seen in Chromium), so the
        text must need none; such text cannot be markup in any renderer."""
        if not _RUN_LINK.fullmatch(self.url):
            raise ValueError(f"not a link to a flow run of the UI: {self.url!r}")
        text = _NOT_PLAIN.sub("-", self.text).strip() or "run"
        return f"[{text}]({core.escape_md(self.url)})"  # \: and \. decode back in a URL


def run_link(text: str, run_id: str, ui: str | None = None) -> Link:
    """A link to flow run ``run_id`` in the Prefect UI: under ``ui`` (the UI's URL) when known, else relative
    (``/runs/flow-run/<id>``, which the UI serving the page resolves)."""
    return Link(text, f"{ui.rstrip('/') if ui else ''}/runs/flow-run/{run_id}")


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, Link):
        return value.markdown()
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, list):
        return ", ".join(core.escape_md(v) for v in value) or "—"
    return core.escape_md(value)  # a column name, a path or URL, a parameter's value: inert markdown


def markdown_table(rows: list[Mapping[str, Any]]) -> str:
    """A GitHub-flavoured markdown table of ``rows`` (all with the same keys); every cell and header escaped."""
    header = list(rows[0])
    lines = ["| " + " | ".join(map(core.escape_md, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(row[key]) for key in header) + " |" for row in rows]
    return "\n".join(lines)


def image_data_uri(image: bytes) -> str:
    """A PNG (the stages' plots) or an SVG (`lifecycle.trend`) as a ``data:`` URI, for an image embedded in the
    markdown (the UI loads nothing from elsewhere)."""
    kind = "svg+xml" if image.startswith(b"<svg") else "png"
    return f"data:image/{kind};base64," + base64.b64encode(image).decode("ascii")
