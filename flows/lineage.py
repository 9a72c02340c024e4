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
import sys
from pathlib import Path
from typing import Any

import stagecore as core
from flows.cli import exit_with
from stagecore import remote, storepaths
from stagecore.errors import InputError


def _is_path(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and "\x00" not in value


def _exists(path: str) -> bool:
    if core.is_remote(path):
        return remote.exists(path)
    try:
        return Path(path).exists()
    except (OSError, ValueError):  # a name too long for the file system, say
        return False


def read_manifest(path: str | Path) -> dict[str, Any]:
    """``core.read_manifest``, plus the shape this walk relies on; IntegrityError naming what is malformed."""
    manifest = core.read_manifest(path)
    name = core.manifest_path(path).name
    problems = []
    if not isinstance(manifest["sha256"], str):
        problems.append("sha256 is not a string")
    for field in ("stage", "key", "created"):
        if not isinstance(manifest.get(field), str | None):
            problems.append(f"{field} is not a string")
    if not isinstance(manifest.get("params", {}), dict):
        problems.append("params is not an object")
    inputs = manifest.get("inputs", [])
    if not isinstance(inputs, list) or not all(
        isinstance(i, dict) and _is_path(i.get("path")) and isinstance(i.get("sha256"), str) for i in inputs
    ):
        problems.append("inputs is not a list of {path, sha256} objects")
    if problems:
        raise core.IntegrityError(f"{path}: manifest {name} is malformed ({'; '.join(problems)})")
    return manifest


def trace(path: str | Path, seen: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The artifact at ``path`` with its manifest's stage, key, parameters and, recursively, its inputs.

    An input with a manifest is another artifact (traced in turn); one without is the source CSV, reported
    with the sha256 that was ingested and whether the file still has it. A manifest that is there but cannot
    be read or is malformed makes its file one that does not verify.
    """
    seen = {} if seen is None else seen
    path = _absolute(path)
    if path in seen:
        return {"path": path, "see_above": True, "ok": seen[path]["ok"]}
    try:
        manifest = read_manifest(path)
    except core.IntegrityError as exc:
        if not _exists(_manifest_of(path)):
            return _source(path)
        seen[path] = {"path": path, "stage": None, "broken": True, "ok": False, "problem": str(exc), "inputs": []}
        return seen[path]
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
    store = None
    for recorded in manifest.get("inputs", []):
        if storepaths.is_relative(recorded["path"]):  # inside the store: found wherever the store is now
            store = store or storepaths.store_of(path)
        try:
            where = storepaths.resolved(store, recorded["path"])
        except ValueError as exc:
            node["inputs"].append(
                {
                    "path": recorded["path"],
                    "stage": None,
                    "broken": True,
                    "ok": False,
                    "problem": f"{path}: input {exc}",
                    "inputs": [],
                }
            )
            continue
        child = trace(where, seen) if _exists(where) else _source(where)
        child["recorded_sha256"] = recorded["sha256"]
        if child.get("sha256") and child["sha256"] != recorded["sha256"] and child["ok"]:
            child["ok"] = False
            child["problem"] = f"{where}: changed since it was used (sha256 {child['sha256'][:12]}…)"
        node["inputs"].append(child)
    node["ok"] = node["ok"] and all(child["ok"] for child in node["inputs"])
    return node


def _source(path: str) -> dict[str, Any]:
    """A file without a manifest: the CSV the ingest stage read (or an artifact whose manifest is gone)."""
    node: dict[str, Any] = {"path": path, "stage": None, "source": True}
    if core.is_url(path):
        node.update(sha256=None, ok=True, problem=None)
    elif _is_file(path):
        node.update(sha256=core.sha256_file(path), ok=True, problem=None)
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
    return str(path) if core.is_remote(path) else str(Path(path).expanduser().resolve())


def _manifest_of(path: str) -> str:
    return path + core.MANIFEST_SUFFIX if core.is_remote(path) else str(core.manifest_path(path))


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
    if path.endswith(".json") and path.rsplit("/", 2)[-2:-1] == [core.RUNS_DIR]:
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
            f"(or a run record under {core.RUNS_DIR}/)"
        )
    node = trace(path)  # a manifest that is there but malformed: reported as not verifying (exit 1)
    return {
        "ok": node["ok"],
        "sources": sources(node),
        "parameters": parameters(node),
        "artifact": node,
    }


def read_run_record(path: str) -> tuple[dict[str, Any], list[str]]:
    """A run record and the artifact paths it lists, stage by stage; a one-line error if it is malformed."""
    try:
        record = json.loads((remote.read_bytes(path) or b"") if core.is_remote(path) else Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable run record ({exc})") from None
    stages = record.get("stages") if isinstance(record, dict) else None
    if not isinstance(stages, dict) or not all(
        isinstance(stage, dict)
        and isinstance(stage.get("artifacts"), dict)
        and all(isinstance(entry, dict) and _is_path(entry.get("path")) for entry in stage["artifacts"].values())
        for stage in stages.values()
    ):
        raise InputError(
            f"{path}: not a readable run record (its stages are not {{stage: {{artifacts: {{name: {{path}}}}}}}})"
        )
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
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report) if args.json else format_report(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    exit_with(main())
