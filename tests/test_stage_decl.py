"""A stage is declared once, by its typed signature: every argument but ``root`` is in its key, files by
content and the rest by value, and nothing is listed by hand."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest
from prefect import Task

import stagecore as core
import tasks
from stagecore.declare import ROOT_ARGUMENT

pytestmark = pytest.mark.no_server


def stage_tasks() -> list[Task]:
    found = []
    for module in pkgutil.iter_modules(tasks.__path__):
        for value in vars(importlib.import_module(f"tasks.{module.name}")).values():
            if isinstance(value, Task) and hasattr(value.fn, "stage"):
                found.append(value)
    return found


def test_every_stage_of_the_pipeline_is_declared_by_signature():
    names = {t.name for t in stage_tasks()}
    assert names >= {
        "ingest_csv",
        "drop_index_column",
        "split_data",
        "tensorize",
        "accumulate_stats",
        "train_model",
        "evaluate_model",
        "plot_results",
    }


@pytest.mark.parametrize("task", stage_tasks(), ids=lambda t: t.name)
def test_every_argument_but_root_changes_the_key(task: Task, tmp_path: Path):
    stage = task.fn.stage
    arguments = set(inspect.signature(task.fn).parameters) - {ROOT_ARGUMENT}
    assert set(stage.params) | set(stage.files) == arguments and not set(stage.params) & set(stage.files)

    def file(name: str, content: str) -> str:
        path = tmp_path / f"{name}-{content}"
        path.write_text(content)
        return str(path)

    def args(changed: str | None = None) -> dict:
        out = {ROOT_ARGUMENT: str(tmp_path / "root")}
        for name in stage.files:
            content = "other bytes" if name == changed else "bytes"
            hint = inspect.signature(task.fn).parameters[name].annotation
            out[name] = [file(name, content)] if "Files" in str(hint) else file(name, content)
        for name in stage.params:
            out[name] = "another value" if name == changed else "a value"
        return out

    base = stage.key(args())
    for name in arguments:
        assert stage.key(args(changed=name)) != base, f"{task.name}: {name} does not reach the key"
    moved = args()
    moved[ROOT_ARGUMENT] = str(tmp_path / "elsewhere")
    assert stage.key(moved) == base  # where the store is does not change what a stage computes


def test_a_stage_needs_a_root_argument():
    with pytest.raises(TypeError, match="needs a `root: str` argument"):

        @core.stage("nowhere")
        def nowhere(x: core.File) -> dict[str, str]:
            return {}
