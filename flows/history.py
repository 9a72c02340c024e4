"""Print the run history kept under the artifacts root: ``python -m flows.history [--artifacts-dir DIR|s3://…]
[--last N] [--json]``. Reads the per-run Parquet files (lifecycle/history.py), on disk or on an object store,
then the registry's changes (lifecycle/registry.py); needs no Prefect server."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn

import lifecycle
import storage
from flows.cli import exit_with, one_line, print_error
from storage import validate
from storage.errors import InputError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line and exit 2, like the flow's own errors (argparse would print its usage first)."""
        raise InputError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m flows.history", description="Print the runs recorded under the artifacts folder.")
    parser.add_argument(
        "--artifacts-dir", metavar="DIR|URL", help="the artifacts folder or store URL (default: as the flow chooses it)"
    )
    parser.add_argument("--last", metavar="N", type=int, help="only the last N runs (default: all)")
    parser.add_argument("--json", action="store_true", help='print {"runs": [...]} as one JSON line')
    parser.add_argument(
        "--diff",
        nargs=2,
        metavar=("RUN_A", "RUN_B"),
        help="two runs' parameters and metrics side by side (ids or prefixes)",
    )
    return parser


def load(artifacts_dir: str | None, last: int | None) -> list[dict[str, Any]]:
    """The runs, oldest first, as plain dicts (``params`` parsed back from JSON)."""
    if last is not None and last < 1:
        raise InputError(f"--last {last}: must be a positive number of runs")
    store = storage.open_store(storage.store_root(artifacts_dir))
    if problem := store.missing():
        raise InputError(f"--artifacts-dir {store.url}: {problem}; pass the folder the flow wrote to")
    try:
        marked = store.read(storage.MARKER, limit=4096) is not None
    except (OSError, ValueError) as exc:
        raise store.error(exc) from None
    if not marked:
        where = f"--artifacts-dir {store.url}"
        raise InputError(f"{where}: no artifacts store there; pass the {store.place} the flow wrote to")
    root = store.url
    runs = lifecycle.history.read_history(root, last, lambda message: print(f"warning: {message}", file=sys.stderr))
    rows = lifecycle.history.table_rows(runs)
    for row in rows:
        row["params"] = validate.load_json(row["params"], "params")  # checked by read_history: a JSON object
    return rows


def format_runs(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "no runs recorded yet"
    lines = [f"{'time':<26}{'flow run':<38}{'rows':>8}{'test MSE':>12}{'test R²':>10}  promoted"]
    for r in runs:
        r2 = "n/a" if r["test_r2"] is None else f"{r['test_r2']:.4f}"
        mark = "yes" if r["promoted"] else "no"
        lines.append(f"{r['time']:<26}{r['flow_run_id']:<38}{r['rows']:>8}{r['test_mse']:>12.6g}{r2:>10}  {mark}")
    return "\n".join(lines)


def find(runs: list[dict[str, Any]], wanted: str) -> dict[str, Any]:
    """The one run whose flow run id is, or starts with, ``wanted``."""
    found = [r for r in runs if r["flow_run_id"].startswith(wanted)] if wanted else []
    if len(found) != 1:
        what = "no recorded run" if not found else f"{len(found)} recorded runs"
        raise InputError(
            f"--diff {wanted}: {what} with that id; pass a flow run id (or a prefix of one) from the history"
        )
    return found[0]


def diff(runs: list[dict[str, Any]], a: str, b: str) -> dict[str, Any]:
    """Both runs' parameters and recorded numbers, key by key (``[value in A, value in B]``), and which differ."""
    one, two = find(runs, a), find(runs, b)
    sides = {}
    for part, of in (
        ("params", lambda r: r["params"]),
        ("metrics", lambda r: {k: v for k, v in r.items() if k != "params"}),
    ):
        left, right = of(one), of(two)
        sides[part] = {k: [left.get(k), right.get(k)] for k in sorted({*left, *right})}
    changed = [k for part in sides.values() for k, (x, y) in part.items() if x != y]
    return {"runs": [one["flow_run_id"], two["flow_run_id"]], **sides, "differ": changed}


def format_diff(d: dict[str, Any]) -> str:
    lines = [f"{'':<24}{d['runs'][0]:<40}{d['runs'][1]}"]
    for part in ("params", "metrics"):
        lines.append(f"{part}:")
        for key, (x, y) in d[part].items():
            mark = "*" if x != y else " "
            lines.append(f"{mark} {key:<22}{one_line(json.dumps(x))[:38]:<40}{one_line(json.dumps(y))[:60]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        runs = load(args.artifacts_dir, None if args.diff else args.last)
        shown = diff(runs, *args.diff) if args.diff else {"runs": runs}
        changes = [] if args.diff else registry_changes(args.artifacts_dir)
    except InputError as exc:
        print_error(exc)
        return 2
    if args.json:
        print(json.dumps(shown if args.diff else {**shown, "registry": changes}))
    else:
        print(format_diff(shown) if args.diff else format_runs(runs))
    if changes and not args.json:
        print("\nregistry changes (python -m flows.registry):")
        for c in changes:
            print(one_line(f"{c['time']:<26}{c['alias']:<12}{c['model']} (run {c['run']}): {c['reason']}"))
    return 0


def registry_changes(artifacts_dir: str | None) -> list[dict]:
    """The registry's changes (rollbacks, aliases set), oldest first: they are pointer generations, not runs, so
    they follow the runs (``registry`` in the JSON; ``runs`` as before)."""
    root = storage.store_root(artifacts_dir)
    try:
        return lifecycle.registry.changes(root)
    except OSError as exc:
        raise storage.open_store(root).error(exc) from None


if __name__ == "__main__":
    exit_with(main())
