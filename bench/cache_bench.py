"""Cold run vs warm (all stages cached) run vs Prefect's floor: a flow of one no-op task per stage. One process.

    python -m bench.cache_bench [--runs 5] [--json]

Against $PREFECT_API_URL when it is set; otherwise against a throwaway ``prefect server`` on a free loopback
port with its own PREFECT_HOME (as the tests do), so nothing touches ~/.prefect. Each figure is the median
of ``--runs`` flow runs, after one untimed no-op flow run that pays for the first connection.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import stagecore as core
import storage
import storage.hashing
from storage.storepaths import resolved, store_of

REPO = Path(__file__).resolve().parent.parent


def _start_server_if_needed() -> Callable[[], None]:
    """Point Prefect at a server before it is imported; return how to stop the one we started."""
    if os.environ.get("PREFECT_API_URL"):
        return lambda: None
    from flows.local_server import isolated_env, start_server

    home = Path(tempfile.mkdtemp(prefix="linreg-bench-"))
    server = start_server(home / "server")
    os.environ.update(isolated_env(home / "client", PREFECT_API_URL=server.url))
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"  # the figures, not a log line per stage and run
    return server.stop


def _timed(fn: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _hashing(run: Callable[[], dict]) -> dict[str, int]:
    """sha256 work of one flow run, started with no digest remembered (as a new process would be), against the
    bytes of the files the run's stages read and wrote (for a fully cached run: those its stages would have)."""
    storage.hashing._DIGESTS.clear()
    before = dict(storage.HASHING)
    summary = run()
    files = {Path(p) for stage in summary["artifacts"].values() for p in stage.values()}
    named = {(f, i["path"]) for f in files for i in core.read_manifest(f)["inputs"]}  # relative inside the store
    inputs = {Path(resolved(store_of(f), path)) for f, path in named}
    inputs = {path for path in inputs if path.exists()}
    io = sum(f.stat().st_size for f in files) + sum(f.stat().st_size for f in inputs)
    return {
        "hashed": storage.HASHING["bytes"] - before["bytes"] + storage.HASHING["streamed"] - before["streamed"],
        "read_to_hash": storage.HASHING["bytes"] - before["bytes"],
        "files": storage.HASHING["files"] - before["files"],
        "io": io,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cache_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="flow runs per figure (median reported)")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = parser.parse_args(argv)
    stop = _start_server_if_needed()
    try:  # from here on, the server we may have started is stopped whatever happens
        from prefect import flow, task

        from flows.train import STAGES, linear_regression

        @task
        def noop(value: dict) -> dict:
            return value

        @flow(name="noop-task-per-stage")
        def noop_stages() -> dict:
            value: dict = {}
            for _ in STAGES:
                value = noop(value)
            return value

        noop_stages()  # untimed: the first flow run of a process sets up the client and the loggers
        with tempfile.TemporaryDirectory(prefix="linreg-bench-artifacts-") as tmp:
            cold_roots = iter(str(Path(tmp) / f"cold-{i}") for i in range(args.runs))
            cold = _timed(lambda: linear_regression(artifacts_dir=next(cold_roots)), args.runs)
            warm_root = str(Path(tmp) / "cold-0")  # filled by the first cold run
            summary = linear_regression(artifacts_dir=warm_root)
            if not all(summary["cached"].values()):
                raise SystemExit(f"warm run was not fully cached: {summary['cached']}")
            warm = _timed(lambda: linear_regression(artifacts_dir=warm_root), args.runs)
            hashing = {
                "cold": _hashing(lambda: linear_regression(artifacts_dir=str(Path(tmp) / "hash-cold"))),
                "warm": _hashing(lambda: linear_regression(artifacts_dir=warm_root)),
            }
        floor = _timed(noop_stages, args.runs)
    finally:
        stop()

    figures = {
        "runs": args.runs,
        "cold_s": statistics.median(cold),
        "warm_s": statistics.median(warm),
        "noop_floor_s": statistics.median(floor),
    }
    figures["warm_over_floor"] = figures["warm_s"] / figures["noop_floor_s"]
    figures["cold_over_warm"] = figures["cold_s"] / figures["warm_s"]
    print(f"median of {args.runs} flow runs each, one process, {len(STAGES)} tasks per flow:")
    print(f"  cold run (empty artifacts folder)     {figures['cold_s']:7.3f} s")
    print(f"  warm run (all stages Cached)          {figures['warm_s']:7.3f} s")
    print(f"  floor: flow of a no-op task per stage {figures['noop_floor_s']:7.3f} s")
    print(f"  warm / floor  {figures['warm_over_floor']:.2f}x    cold / warm  {figures['cold_over_warm']:.2f}x")
    for run, h in hashing.items():
        figures[f"{run}_hashed_bytes"] = h["hashed"]
        figures[f"{run}_hashed_over_io"] = h["hashed"] / h["io"]
        print(
            f"  {run}: hashed {h['hashed']:,} bytes ({h['read_to_hash']:,} read back from {h['files']} files, the "
            f"rest as written); the stages wrote+read {h['io']:,} bytes; hashed / (written+read) "
            f"{h['hashed'] / h['io']:.2f}"
        )
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
