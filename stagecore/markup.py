"""Text from data or users, made inert where something renders it: markdown and tables in the UI, plot labels.

The Prefect UI renders markdown artifacts and every string cell of a table artifact as markdown, and its
sanitizer keeps ``<img>`` tags and ``javascript:`` links (it drops only event handlers): escaping is ours. A
column name, a file name or URL, a reason or a parameter value goes through `escape_md` before it is put into
markdown, and every artifact is published through `markdown_artifact` or `table_artifact` (nothing else in the
project calls Prefect's ``create_*_artifact``; tests/test_escaping.py checks). See docs/security.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# one pass, one character at a time: an entity this makes is never escaped again, and no escape is undone
# the five entities the UI's markdown renderer decodes back for display (it shows &#x27; as written)
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}
# markdown's active characters, plus $ (math in some renderers), : and @ (autolinks: http://…, www., a@b.c)
_MARKDOWN = "\\`*_{}[]()#+-.!|~=$:@"
_CONTROL = [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]  # a newline would end a table row, a line
_TABLE = str.maketrans({**{c: "\\" + c for c in _MARKDOWN}, **_HTML, **dict.fromkeys(map(chr, _CONTROL), " ")})


def escape_md(text: Any) -> str:
    """``text`` as markdown that renders as exactly that text, and as nothing else: no HTML tag, link, image,
    emphasis, heading, list, quote, code or table break can come out of it.

    HTML's ``& < > " '`` become entities, every other ASCII character markdown gives a meaning to is
    backslash-escaped, and control characters (newlines, tabs, …) become spaces. The result is for markdown
    text and table cells, not for code spans (where neither escape applies): do not put it between backticks.
    """
    return str(text).translate(_TABLE)


def escape_mathtext(text: Any) -> str:
    """``text`` for a matplotlib label, title or legend entry: shown as written, never parsed as math text.

    matplotlib parses a string with an even number of unescaped ``$`` as math (``revenue_$M_vs_$K`` raised
    a ParseException), and shows ``\\$`` as ``$``; nothing else is special while ``text.usetex`` is off, its
    default.
    """
    return str(text).replace("$", r"\$")


def escape_cells(rows: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Table-artifact rows with every string cell through `escape_md` (the UI renders string cells as markdown);
    numbers, booleans and None are left as they are, and so are the column names: the UI shows those as plain
    text, and they are the project's own (``feature``, ``test_mse``), never data."""
    return [{k: escape_md(v) if isinstance(v, str) else v for k, v in row.items()} for row in rows]


def markdown_artifact(markdown: str, *, key: str, description: str) -> Any:
    """Publish a markdown artifact: every value from data in ``markdown`` has been through `escape_md`.

    The project's markdown never uses raw HTML, so any ``<`` left here is turned into ``&lt;`` too: one more
    guarantee that no tag reaches the page, whatever a caller forgot."""
    from prefect.artifacts import create_markdown_artifact

    return create_markdown_artifact(markdown.replace("<", "&lt;"), key=key, description=description)


def table_artifact(rows: list[Mapping[str, Any]], *, key: str, description: str) -> Any:
    """Publish a table artifact, its string cells escaped (the UI renders them as markdown)."""
    from prefect.artifacts import create_table_artifact

    return create_table_artifact(escape_cells(rows), key=key, description=description)
