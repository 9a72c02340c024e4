"""The run history: one Parquet file per run, read back by concatenation; the ``flows.history`` CLI; the trend
plot in the report; ``--clean-artifacts`` deletes it with the champion pointer."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

import storage
from flows import history as cli
from lifecycle import history, trend
from lifecycle.markdown import Link, markdown_table, run_link
from tasks import history as tasks_history
from tasks.history import history_markdown
from tasks.report import render_report

pytestmark = pytest.mark.no_server

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MARKDOWN = MarkdownIt("commonmark", {"html": True}).enable("table")  # as tests/test_escaping.py renders
SUMMARY = {
    "metrics": {"train": {"mse": 2.0, "r2": 0.9}, "test": {"mse": 3.0, "r2": None}},
    "baseline": {"train": {"mse": 1.9, "r2": 0.91}, "test": {"mse": 2.9, "r2": 0.8}},
    "optimality_gap": 0.05,
}


def record(root: Path, n: int, test_mse: float, promoted: bool) -> str:
    when = dt.datetime(2026, 11, 27, 1, 0, n, tzinfo=dt.UTC)
    summary = {**SUMMARY, "metrics": {**SUMMARY["metrics"], "test": {"mse": test_mse, "r2": None}}}
    row = history.history_row(when, f"run-{n}", "ab" * 32, 200, {"epochs": n}, summary, promoted, f"train/{n}/m.pt")
    return history.write_row(root, row)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = Path(storage.prepare_root(tmp_path / "store"))
    for n, (mse, promoted) in enumerate([(4.0, True), (5.0, False), (3.0, True)]):
        record(root, n, mse, promoted)
    return root


def test_one_file_per_run_read_back_in_time_order(store):
    files = sorted(p.name for p in (store / "history").iterdir())
    assert files == [f"20261127T0100{n:02d}000000Z-run-{n}.parquet" for n in range(3)]
    runs = history.read_history(store).to_pylist()
    assert [r["flow_run_id"] for r in runs] == ["run-0", "run-1", "run-2"]
    assert [r["test_mse"] for r in runs] == [4.0, 5.0, 3.0] and [r["promoted"] for r in runs] == [True, False, True]
    first = runs[0]
    assert first["train_mse"] == 2.0 and first["train_r2"] == 0.9 and first["test_r2"] is None
    assert first["optimality_gap"] == 0.05 and first["rows"] == 200 and json.loads(first["params"]) == {"epochs": 0}
    assert [r["flow_run_id"] for r in history.read_history(store, last=2).to_pylist()] == ["run-1", "run-2"]
    (store / "history" / "notes.txt").write_text("mine")  # not ours: skipped
    assert history.read_history(store).num_rows == 3
    assert history.read_history(store.parent / "nowhere").num_rows == 0


def test_cli_prints_table_and_json(store, capsys):
    assert cli.main(["--artifacts-dir", str(store), "--last", "2", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"]
    assert [(r["flow_run_id"], r["test_mse"], r["promoted"]) for r in runs] == [
        ("run-1", 5.0, False),
        ("run-2", 3.0, True),
    ]
    assert runs[0]["time"] == "2026-11-27T01:00:01+00:00" and runs[0]["params"] == {"epochs": 1}
    assert cli.main(["--artifacts-dir", str(store)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and "test MSE" in lines[0] and lines[1].endswith("yes") and lines[2].endswith("no")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--last", "0"], "error: --last 0: must be a positive number of runs"),
        (["--last", "x"], "error: argument --last: invalid int value: 'x'"),
        (["--bogus"], "error: unrecognized arguments: --bogus"),
        (["--artifacts-dir", "/nonexistent/store"], "error: --artifacts-dir /nonexistent/store: no such folder"),
    ],
)
def test_cli_errors_are_one_line_exit_2(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)


def test_report_leads_with_the_headline_and_embeds_the_trend(store):
    runs = history.read_history(store)
    png = trend.svg(runs.column("test_mse").to_pylist(), runs.column("promoted").to_pylist())
    assert png.startswith(b"<svg")
    summary = {
        **SUMMARY,
        "training": {"epochs": 3},
        "epochs_run": 3,
        "converged": True,
        "lr": 0.1,
        "max_stable_lr": 0.2,
        "reference_ok": True,
        "reference_rank": 3,
        "weights": {"a": 1.0, "b": 2.0},
        "optimality_gap_abs": 0.1,
    }
    promotion = {"promoted": False, "reason": "worse, not promoted", "champion": "/s/train/k/model.pt"}
    plots = {"predicted_vs_actual": PNG_SIGNATURE, "loss_curve": PNG_SIGNATURE, "trend": png}
    report = render_report(
        {"epochs": 3}, summary, [{"m": 1.0}], [{"feature": "a"}], plots, {"s": {"f": "/p"}}, promotion
    )
    headline, details = report.split("## Details")
    assert "test MSE **3**" in headline and "**not promoted**: the champion stays: worse" in headline
    images = re.findall(r"\(data:image/(?:png|svg\+xml);base64,([A-Za-z0-9+/=]+)\)", headline)
    assert base64.b64decode(images[-1]) == png and len(images) == 3
    assert "### Parameters" in details


def test_clean_deletes_history_and_champion_but_not_user_files(store):
    rows = sorted(p.name for p in (store / storage.HISTORY_DIR).iterdir())
    champion = store / storage.CHAMPION_DIR
    champion.mkdir()
    for name in ("champion.json", "champion.json.manifest.json"):  # named as the store's, but not its content
        (champion / name).write_text("{}")
    (champion / "mine.txt").write_text("keep")
    cleared = storage.clear(store)
    assert cleared.deleted == len(rows) and cleared.kept == 3  # the history rows; the marker stays
    assert sorted(p.relative_to(store).as_posix() for p in store.rglob("*")) == [
        storage.MARKER,
        "champion",
        "champion/champion.json",
        "champion/champion.json.manifest.json",
        "champion/mine.txt",
    ]


IDS = [f"0000000{n}-0000-4000-8000-00000000000{n}" for n in range(3)]


@pytest.fixture
def runs(tmp_path: Path):
    """Three runs with UUIDs, the middle one unknown to the server; numbers with 16 digits."""
    root = Path(storage.prepare_root(tmp_path / "ui"))
    for n, run_id in enumerate(IDS):
        when = dt.datetime(2026, 12, 7, 4, n, 30, tzinfo=dt.UTC)
        summary = {**SUMMARY, "metrics": {**SUMMARY["metrics"], "test": {"mse": 2.123456789012345 + n, "r2": None}}}
        summary["optimality_gap"] = 1.234567890123e-9
        params = {"preset": "default", "epochs": n}
        model = f"train/{'c' * 64}/model.pt"
        row = history.history_row(when, run_id, "ab" * 32, 200, params, summary, n == 0, model)
        history.write_row(root, row)
    return str(root)


def test_the_ui_table_is_newest_first_narrow_and_links_each_run(runs, monkeypatch):
    names = {IDS[0]: "Advertising-default-d0c541", IDS[2]: "<img src=x onerror=alert(1)>|[x](javascript:y)"}
    asked = []
    monkeypatch.setattr(tasks_history, "server_names", lambda ids, warn: asked.append(ids) or names)
    kept, known, recorded = tasks_history.seen_history(runs, print)
    assert asked == [IDS] and known == names and recorded == 3
    assert kept.column("flow_run_id").to_pylist() == [IDS[0], IDS[2]]  # the run the server never saw: left out
    rows = history.shown_rows(kept, names, lambda text, run_id: run_link(text, run_id, "http://127.0.0.1:4200"))
    assert list(rows[0]) == [
        "run",
        "time (UTC)",
        "test MSE",
        "gap",
        "promoted",
        "preset",
        "rows",
        "data",
        "model",
    ]
    assert [r["time (UTC)"] for r in rows] == ["2026-12-07 04:02:30", "2026-12-07 04:00:30"]  # newest first
    assert [r["test MSE"] for r in rows] == ["4.1235", "2.1235"] and rows[0]["gap"] == "1.235e-09"
    assert [r["promoted"] for r in rows] == ["no", "★ yes"] and rows[0]["preset"] == "default"
    assert (rows[0]["data"], rows[0]["model"]) == ("abababab", "c" * 8)  # short digests, last
    table = markdown_table(rows)
    assert max(len(line) for line in table.splitlines()) < 250  # was 2,307 px: every column fits the panel
    rendered = MARKDOWN.render(table)
    links = re.findall(r'<a href="([^"]*)">([^<]*)</a>', rendered)
    assert [href for href, _ in links] == [f"http://127.0.0.1:4200/runs/flow-run/{i}" for i in (IDS[2], IDS[0])]
    # a hostile run name is the link's text, nothing more: kept to letters, digits, spaces, "." and "-", since
    # the UI shows a link's text as written (backslash escapes too); a plain name is kept whole
    assert links[0][1] == "-img src-x onerror-alert-1----x--javascript-y-" and links[1][1] == names[IDS[0]]
    assert "<img" not in rendered and "javascript" not in "".join(href for href, _ in links)
    relative = history.shown_rows(kept, {}, lambda text, run_id: run_link(text, run_id))
    assert relative[0]["run"] == run_link(IDS[2][:8], IDS[2]) and relative[0]["run"].url.startswith("/runs/")


def test_a_link_goes_only_to_a_flow_run():
    for url in ("javascript:alert(1)", "/runs/flow-run/x", "https://evil.example/", "/runs/flow-run/../../x"):
        with pytest.raises(ValueError, match="not a link to a flow run"):
            Link("x", url).markdown()


def test_the_history_artifact_says_what_it_shows(runs):
    names = {IDS[0]: "a", IDS[2]: "b"}
    rows = [r for r in history.shown_rows(history.read_history(runs), names) if r["run"] in names.values()]
    text, description = history_markdown(rows, recorded=3)
    assert description == "2 runs, newest first: latest test MSE 4.1235 (not promoted); best 2.1235"
    assert "(1 more recorded by runs this server never saw)" in text.splitlines()[0]
    assert history_markdown([], 3)[1] == "no runs"
