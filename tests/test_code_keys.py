"""A stage's key covers every line of project code it can run: an edit re-runs exactly the stages that import
the edited module, directly or through another module, and no others."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import stagecore as core
from conftest import ADVERTISING, ROOT

PARTITIONED = ["ingest", "drop_index", "split", "tensorize", "accumulate", "train", "evaluate", "plot"]


@pytest.mark.no_server
def test_import_closure_follows_every_form_of_import():
    # every stage runs the stage core, which the stages import as a package (stagecore/__init__.py)
    core_modules = {"stagecore", "stagecore.declare", "stagecore.manifest", "stagecore.hashing", "stagecore.errors"}
    assert core_modules <= set(core.import_closure("tasks.plot"))
    assert not {m for m in core.import_closure("tasks.plot") if m.startswith("tasks")} - {"tasks.plot"}
    # accumulate runs Stats.of from train.py and qr_factor from evaluate.py
    assert {"tasks.train", "tasks.evaluate", *core_modules} <= set(core.import_closure("tasks.accumulate"))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project's code, to edit without touching the checkout, and a partitioned input."""
    copy = tmp_path / "project"
    for package in core.PROJECT_PACKAGES:
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    frame = pd.read_csv(ADVERTISING)
    (copy / "parts").mkdir()
    frame.iloc[:120].to_csv(copy / "parts" / "a.csv", index=False)
    frame.iloc[120:].to_csv(copy / "parts" / "b.csv", index=False)
    return copy


def cached_stages(project: Path, artifacts: Path) -> dict[str, bool]:
    """Run the copy's flow in its own process (its own modules) against the session's server."""
    env = {**os.environ, "PYTHONPATH": str(project)}
    command = [sys.executable, "-m", "flows.train", "--data", "parts", "--artifacts-dir", str(artifacts), "--json"]
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return summary["cached"]


def edit(path: Path) -> None:
    """An output-neutral edit: a new line of code that changes no result."""
    path.write_text(path.read_text() + "\n_EDITED_FOR_THE_TEST = True\n")


def test_an_edit_reruns_exactly_the_stages_that_can_run_the_edited_code(project: Path, artifacts: Path):
    assert cached_stages(project, artifacts) == dict.fromkeys(PARTITIONED, False)

    # plot.py: imported by plot alone
    edit(project / "tasks" / "plot.py")
    assert cached_stages(project, artifacts) == {stage: stage != "plot" for stage in PARTITIONED}

    # evaluate.py: imported by evaluate, and by accumulate (for qr_factor). Their outputs are the same bytes,
    # so train (keyed on accumulate's output) and plot (on evaluate's) stay cached.
    edit(project / "tasks" / "evaluate.py")
    assert cached_stages(project, artifacts) == {
        stage: stage not in ("accumulate", "evaluate") for stage in PARTITIONED
    }

    # stagecore/errors.py: imported by the stage core, which every stage imports: everything runs again
    edit(project / "stagecore" / "errors.py")
    assert cached_stages(project, artifacts) == dict.fromkeys(PARTITIONED, False)
