"""Which CSV and which parameters produced this file? Walks the manifests back to the ingested source.

    python -m flows.lineage data/artifacts/train/<key>/model.pt        # the chain, verified at every step
    python -m flows.lineage data/artifacts/runs/<time>-<run id>.json   # a run record: every stage it linked
    python -m flows.lineage PATH --json                                # the same, as one JSON document

Exit status: 0 when every file on the way verifies against its manifest, 1 when one does not (a malformed
manifest included: the file cannot be verified), 2 on bad input (no such file, no manifest, a malformed run
record).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import stagecore as core
import storage
import storage.validate
from flows.cli import exit_with, print_error
from storage import storepaths, validate
from storage.errors import InputError


def _exists(path: str) -> bool:
    store, name = storage.locate(path)
    try:
        return store.size(name) is not None
    except (OSError, ValueError):  # a name too long for the file system, say
        return False


MAX_CHAIN = 100  # steps from an artifact back to its source: the store's chains are under 10 (plot … ingest, CSV)
MAX_NODES = 1_000_000  # files one walk visits: a 10,000-partition run's chain is some 60,000


def read_manifest(path: str | Path) -> dict[str, Any]:
    """``core.read_manifest``: checked against a manifest's shape (`storage.validate.manifest`), so the walk can
    rely on its stage, key, params and ``inputs`` being ``[{path, sha256}]``; IntegrityError naming what is not."""
    return core.read_manifest(path)


def trace(path: str | Path, seen: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The artifact at ``path`` with its manifest's stage, key, parameters and, in turn, its inputs.

    An input with a manifest is another artifact (traced in turn); one without is the source CSV, reported
    with the sha256 that was ingested and whether the file still has it. A manifest that is there but cannot
    be read or is malformed makes its file one that does not verify. Walked with a stack of its own, not by
    recursion; a chain longer than `MAX_CHAIN` steps, or more than `MAX_NODES` files, is a one-line error
    (no file the store writes comes near either).
    """
    seen = {} if seen is None else seen
    top, pending = _visit(_absolute(path), seen)
    # each frame: a node whose inputs are being walked, those still to walk, and the entry that named it
    stack: list[tuple[dict[str, Any], Any, dict[str, Any] | None]] = [(top, iter(pending), None)]
    while stack:
        node, todo, named = stack[-1]
        recorded = next(todo, None)
        if recorded is not None:
            if len(stack) >= MAX_CHAIN:
                raise InputError(
                    f"{top['path']}: its lineage is more than {MAX_CHAIN} steps long, which no store writes "
                    "(its manifests were altered); rebuild it with python -m flows.train --refresh"
                )
            if recorded.get("problem"):
                child, more = {"path": recorded["path"], "stage": None, "broken": True, "ok": False}, []
                child.update(problem=recorded["problem"], inputs=[])
            elif _exists(recorded["path"]):
                child, more = _visit(_absolute(recorded["path"]), seen)
            else:
                child, more = _source(recorded["path"]), []
            node["inputs"].append(child)
            stack.append((child, iter(more), recorded))
            if len(seen) > MAX_NODES:
                raise InputError(
                    f"{top['path']}: its lineage names more than {MAX_NODES} files; not one the store wrote"
                )
            continue
        stack.pop()
        if node.get("inputs") and not node.get("broken"):
            node["ok"] = node["ok"] and all(child["ok"] for child in node["inputs"])
        if named is not None:
            node["recorded_sha256"] = named["sha256"]
            if node.get("sha256") and node["sha256"] != named["sha256"] and node["ok"]:
                node["ok"] = False
                node["problem"] = f"{named['path']}: changed since it was used (sha256 {node['sha256'][:12]}…)"
    return top


def _visit(path: str, seen: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The node for ``path`` (its own checks done, its inputs not yet walked) and the inputs its manifest lists."""
    if path in seen:
        return {"path": path, "see_above": True, "ok": seen[path]["ok"]}, []
    try:
        manifest = read_manifest(path)
    except core.IntegrityError as exc:
        if not _exists(_manifest_of(path)):
            return _source(path), []
        seen[path] = {"path": path, "stage": None, "broken": True, "ok": False, "problem": str(exc), "inputs": []}
        return seen[path], []
    node: dict[str, Any] = {
        "path": path,
        "stage": manifest.get("stage"),
        "key": manifest.get("key"),
        "params": manifest.get("params", {}),
        "sha256": manifest.get("sha256"),
        "created": manifest.get("created"),
    }
    try:
        core.verify(path, key=manifest.get("key"))
        node["ok"], node["problem"] = True, None
    except core.IntegrityError as exc:
        node["ok"], node["problem"] = False, str(exc)
    seen[path] = node
    node["inputs"] = []
    return node, _inputs(path, manifest.get("inputs", []))


def _inputs(path: str, recorded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The inputs a manifest lists, each path made one to open now: a name inside the store is relative to it
    (found wherever the store is now), an older absolute one as it is; one that would leave the store is marked
    ``problem``."""
    store = storepaths.store_of(path) if any(storepaths.is_relative(r["path"]) for r in recorded) else None
    found = []
    for entry in recorded:
        try:
            found.append({**entry, "path": storepaths.resolved(store, entry["path"])})
        except ValueError as exc:
            found.append({**entry, "problem": f"{path}: input {exc}"})
    return found


def _source(path: str) -> dict[str, Any]:
    """A file without a manifest: the CSV the ingest stage read (or an artifact whose manifest is gone)."""
    node: dict[str, Any] = {"path": path, "stage": None, "source": True}
    if storage.is_url(path):
        node.update(sha256=None, ok=True, problem=None)
    elif _is_file(path):
        node.update(sha256=storage.sha256_file(path), ok=True, problem=None)
    else:
        node.update(sha256=None, ok=False, problem=f"{path}: no longer exists")
    return node


def _is_file(path: str) -> bool:
    try:
        return Path(path).is_file()  # a regular file: never a FIFO or device, which hashing would block on
    except (OSError, ValueError):
        return False


def _absolute(path: str | Path) -> str:
    """A local path made absolute; an object store's URL as it is."""
    store, name = storage.locate(path)
    return store.path(name)


def _manifest_of(path: str) -> str:
    return path + storage.MANIFEST_SUFFIX


def sources(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The source files at the end of the chain."""
    if node.get("source"):
        return [node]
    found = [s for child in node.get("inputs", []) for s in sources(child)]
    return list({s["path"]: s for s in found}.values())


def parameters(node: dict[str, Any], out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stage → the parameters it ran with, along the whole chain, upstream first (as people read a pipeline)."""
    out = {} if out is None else out
    for child in node.get("inputs", []):
        parameters(child, out)
    if node.get("stage") and not node.get("see_above"):
        out.setdefault(node["stage"], node["params"])
    return out


def explain(path: str | Path) -> dict[str, Any]:
    """What `main` prints, for an artifact or a run record."""
    path = _absolute(path)
    if not _exists(path):
        raise InputError(f"{path}: no such file; pass an artifact or a run record")
    if path.endswith(".json") and path.rsplit("/", 2)[-2:-1] == [storage.RUNS_DIR]:
        record, paths = read_run_record(path)
        traces = [trace(p) for p in paths]
        found = {s["path"]: s for t in traces for s in sources(t)}
        params: dict[str, Any] = {}
        for t in traces:
            parameters(t, params)
        return {
            "run_record": str(path),
            "run_id": record.get("run_id"),
            "run_params": record.get("params"),
            "ok": all(t["ok"] for t in traces),
            "sources": list(found.values()),
            "parameters": params,
            "artifacts": traces,
        }
    if not _exists(_manifest_of(path)):
        raise InputError(
            f"{path}: no manifest ({core.manifest_path(path).name} is missing); lineage needs a stage artifact "
            f"(or a run record under {storage.RUNS_DIR}/)"
        )
    node = trace(path)  # a manifest that is there but malformed: reported as not verifying (exit 1)
    return {
        "ok": node["ok"],
        "sources": sources(node),
        "parameters": parameters(node),
        "artifact": node,
    }


def read_run_record(path: str) -> tuple[dict[str, Any], list[str]]:
    """A run record and the artifact paths it lists, stage by stage; a one-line error if it is malformed
    (`storage.validate.run_record`)."""
    try:
        store, name = storage.locate(path)
        content = store.read(name, limit=validate.MAX_JSON_BYTES) or b""
        record = validate.run_record(validate.load_json(content, path), path)
    except (OSError, validate.Invalid) as exc:
        raise InputError(f"{path}: not a readable run record ({str(exc).removeprefix(f'{path}: ')})") from None
    stages = record["stages"]
    paths = [entry["path"] for stage in stages.values() for entry in stage["artifacts"].values()]
    store = storepaths.store_of(path) if any(storepaths.is_relative(p) for p in paths) else None
    try:  # inside the store: relative to it, found wherever the store is now (absolute in older records)
        return record, [storepaths.resolved(store, p) for p in paths]
    except ValueError as exc:
        raise InputError(f"{path}: not a readable run record (an artifact {exc})") from None


def format_tree(node: dict[str, Any], depth: int = 0) -> list[str]:
    pad = "  " * depth
    status = "ok" if node["ok"] else f"PROBLEM: {node.get('problem') or 'an input does not verify'}"
    if node.get("see_above"):
        return [f"{pad}{node['path']} (see above)"]
    if node.get("broken"):
        return [f"{pad}{node['path']} [{status}]"]
    if node.get("source"):
        sha = node.get("recorded_sha256") or node.get("sha256")
        same = "" if node.get("sha256") in (None, sha) else f" (now {node['sha256'][:12]}…: changed since)"
        return [f"{pad}source {node['path']} sha256 {sha}{same} [{status}]"]
    params = ", ".join(f"{k}={v!r}" for k, v in node["params"].items()) or "no parameters"
    lines = [f"{pad}{node['path']} [{status}]", f"{pad}  made by stage {node['stage']} (key {node['key']}): {params}"]
    for child in node["inputs"]:
        lines += format_tree(child, depth + 1)
    return lines


def format_report(report: dict[str, Any]) -> str:
    lines = []
    if "run_record" in report:
        lines.append(f"run {report['run_id']} ({report['run_record']})")
        lines.append(f"  flow parameters: {json.dumps(report['run_params'])}")
    for source in report["sources"]:
        lines.append(f"source data: {source['path']} (sha256 {source.get('recorded_sha256') or source['sha256']})")
    lines.append("parameters by stage:")
    lines += [f"  {stage:<11}{json.dumps(params)}" for stage, params in report["parameters"].items()]
    for tree in report.get("artifacts", [report.get("artifact")]):
        lines += format_tree(tree)
    lines.append("all files verify against their manifests" if report["ok"] else "SOME FILES DO NOT VERIFY (see above)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.lineage", description=__doc__.splitlines()[0])
    parser.add_argument("path", metavar="PATH", help="an artifact (e.g. model.pt) or a run record (runs/*.json)")
    parser.add_argument("--json", action="store_true", help="print the lineage as one JSON document")
    args = parser.parse_args(argv)
    try:
        report = explain(args.path)
    except InputError as exc:
        print_error(exc)
        return 2
    print(json.dumps(report) if args.json else format_report(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    exit_with(main())
