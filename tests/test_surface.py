"""The stage core's and the lifecycle library's public surfaces are small and the only way in; the project's
modules import in one direction.

Read from the source (AST), every import counted, those inside functions too: an import cycle hidden by an
import in a function body is still a cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import lifecycle
import stagecore as core
import storage

pytestmark = pytest.mark.no_server

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = ("flows", "tasks", "bench", "linreg", "storage", "lifecycle")
# tests of a module's own internals, which open it up on purpose (each named for the module it tests)
WHITE_BOX = {
    "test_cache.py": {"stagecore.cache"},
    "test_code_keys.py": {"stagecore.keys"},
    "test_escaping.py": {"stagecore.markup"},
    "test_faults_second.py": {"stagecore.declare"},
    "test_numbers.py": {"stagecore.declare"},
    "test_promotion.py": {"stagecore.manifest"},
    "test_ptscan.py": {"stagecore.manifest", "stagecore.ptscan"},
    "test_retries.py": {"stagecore.cache"},
    "test_s3.py": {"stagecore.manifest"},
    "test_stage_decl.py": {"stagecore.declare"},
    "test_stages.py": {"stagecore.behind", "stagecore.declare"},
    "test_store_security.py": {"stagecore.cache"},
}
MAX_NAMES = 23
MAX_LIFECYCLE_NAMES = 27  # over all of lifecycle's modules (issue 25: the registry's 6; issue 26: trend.curves)


def modules(package: str) -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports (``from a import b`` counts ``a.b`` when ``a.b`` is a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


PROJECT = {
    name: path
    for package in ("linreg", "storage", "stagecore", "lifecycle", "tasks", "flows")
    for name, path in modules(package).items()
}
SUBMODULES = {name for name in PROJECT if name.startswith("stagecore.")}


def test_the_stage_core_exports_about_twenty_names_each_used_by_a_stage_a_flow_or_the_lifecycle():
    assert len(core.__all__) <= MAX_NAMES, sorted(core.__all__)
    used = "\n".join(p.read_text() for package in ("tasks", "flows", "lifecycle") for p in modules(package).values())
    unused = [name for name in core.__all__ if f"core.{name}" not in used]
    assert not unused, f"exported but used by no stage, flow or lifecycle module: {unused}"


def test_nothing_outside_the_stage_core_imports_a_submodule_of_it():
    reached = {}
    for package in PRODUCTION:
        for name, path in modules(package).items():
            if inside := imported(path) & SUBMODULES:
                reached[name] = sorted(inside)
    assert not reached, f"past stagecore's exports: {reached}"
    for path in sorted((ROOT / "tests").glob("*.py")):
        inside = imported(path) & SUBMODULES
        assert inside <= WHITE_BOX.get(path.name, set()), f"{path.name} imports {sorted(inside)}"


def test_storage_knows_nothing_of_stages_and_the_library_nothing_of_either():
    for name, path in PROJECT.items():
        reach = {m.split(".")[0] for m in imported(path)}
        if name.startswith("storage"):
            assert not reach & {"stagecore", "lifecycle", "tasks", "flows"}, name
        if name.startswith("stagecore"):
            assert not reach & {"lifecycle", "tasks", "flows"}, name
        if name.startswith("linreg"):
            assert not reach & {"storage", "stagecore", "lifecycle", "tasks", "flows", "prefect"}, name
        if name.startswith("lifecycle"):  # a library: the Prefect tasks that call it are in tasks/
            assert not reach & {"tasks", "flows", "prefect"}, name
    assert set(storage.__all__) >= {"Store", "open_store", "prepare_root", "clear", "in_use"}


def test_each_package_imports_only_those_below_it():
    """flows → tasks → lifecycle → stagecore → storage (docs/architecture.md), and linreg from anywhere."""
    order = ["flows", "tasks", "lifecycle", "stagecore", "storage"]
    upward = [
        (name, m)
        for name, path in PROJECT.items()
        if name.split(".")[0] in order
        for m in imported(path)
        if m.split(".")[0] in order[: order.index(name.split(".")[0])]
    ]
    assert not upward, upward


def test_the_lifecycle_is_used_through_its_modules_small_surfaces():
    """Tasks, flows and benchmarks ``import lifecycle`` and use ``lifecycle.<module>.<name>``, each name in that
    module's ``__all__``; every such name is used by a task or flow, and there are few of them."""
    names = {module: set(getattr(lifecycle, module).__all__) for module in lifecycle.__all__}
    assert {f"lifecycle.{m}" for m in names} == {n for n in PROJECT if n.startswith("lifecycle.")}
    assert sum(map(len, names.values())) <= MAX_LIFECYCLE_NAMES, names
    uses, past = set(), {}
    for package in ("tasks", "flows", "bench"):
        for name, path in modules(package).items():
            if inside := {m for m in imported(path) if m.startswith("lifecycle.")}:
                past[name] = sorted(inside)
            uses |= set(re.findall(r"\blifecycle\.(\w+)\.(\w+)", path.read_text()))
    assert not past, f"imports past lifecycle's surface: {past}"
    outside = sorted((m, n) for m, n in uses if n not in names.get(m, ()))
    assert not outside, f"used, but not in that module's __all__: {outside}"
    unused = sorted((m, n) for m, found in names.items() for n in found if (m, n) not in uses)
    assert not unused, f"exported but used by no task or flow: {unused}"


def test_the_project_has_no_import_cycle():
    graph = {name: {m for m in imported(path) if m in PROJECT and m != name} for name, path in PROJECT.items()}
    for name in graph:  # a package's __init__ is imported before any of its submodules: not an edge of theirs
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                raise AssertionError(" → ".join([*trail[trail.index(target) :], target]))
            if target not in state:
                visit(target, [*trail, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
