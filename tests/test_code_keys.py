"""A stage's key covers every line of project code it can run: an edit re-runs exactly the stages that import
the edited module, directly or through another module, and no others."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import storage
from conftest import ADVERTISING, ROOT
from stagecore.keys import import_closure

PARTITIONED = ["ingest", "drop_index", "split", "tensorize", "accumulate", "train", "evaluate", "plot"]


@pytest.mark.no_server
def test_import_closure_follows_every_form_of_import():
    # every stage runs the stage core, which the stages import as a package (stagecore/__init__.py)
    core_modules = {"stagecore", "stagecore.declare", "stagecore.manifest", "storage.hashing", "storage.errors"}
    assert core_modules <= set(import_closure("tasks.plot"))
    assert not {m for m in import_closure("tasks.plot") if m.startswith("tasks")} - {"tasks.plot"}
    # accumulate runs Stats.of from the library, and no other stage's module, nor the reference
    accumulate = set(import_closure("tasks.accumulate"))
    assert {"linreg", "linreg.stats", *core_modules} <= accumulate and "linreg.reference" not in accumulate
    assert not {m for m in accumulate if m.startswith("tasks")} - {"tasks.accumulate"}


@pytest.mark.no_server
def test_the_training_loops_are_in_trains_key_and_not_in_accumulates():
    """An edit to the loops re-runs training, never the statistics it reads (linreg/__init__.py imports nothing)."""
    assert {"linreg.loops", "linreg.monitor", "linreg.training"} <= set(import_closure("tasks.train"))
    accumulate = set(import_closure("tasks.accumulate"))
    assert not {"linreg.loops", "linreg.monitor", "linreg.training", "linreg.evaluation"} & accumulate
    assert "linreg.loops" not in import_closure("tasks.evaluate")


def linreg_imports(path: Path) -> list[str]:
    """How ``path`` imports the library: ``from linreg.x import …`` as "linreg.x", any other form as written."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] == "linreg"]
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "linreg":
            found.append(node.module if "." in node.module else f"from linreg import {node.names[0].name}")
    return found


@pytest.mark.no_server
def test_project_code_imports_the_library_by_submodule():
    """The package's names are lazy (PEP 562), which an AST import closure cannot follow: ``from linreg import
    fit`` would key a stage without linreg/training.py. So the project's own code names the submodule."""
    offenders = [
        f"{path.relative_to(ROOT)}: {form}"
        for package in storage.PROJECT_PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for form in linreg_imports(path)
        if not form.startswith("linreg.")
    ]
    assert offenders == []


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project's code, to edit without touching the checkout, and a partitioned input."""
    copy = tmp_path / "project"
    for package in storage.PROJECT_PACKAGES:
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

    # linreg/reference.py: imported by evaluate alone. Its outputs are the same bytes, so plot (keyed on
    # evaluate's) stays cached.
    edit(project / "linreg" / "reference.py")
    assert cached_stages(project, artifacts) == {stage: stage != "evaluate" for stage in PARTITIONED}

    # linreg/loops.py: imported by train alone, so the statistics stay cached; the new model.pt (its training
    # time differs) re-runs evaluate, and the new evaluation plot
    edit(project / "linreg" / "loops.py")
    assert cached_stages(project, artifacts) == {
        stage: stage not in ("train", "evaluate", "plot") for stage in PARTITIONED
    }

    # storage/errors.py: imported by the stage core, which every stage imports: everything runs again
    edit(project / "storage" / "errors.py")
    assert cached_stages(project, artifacts) == dict.fromkeys(PARTITIONED, False)
