"""linreg-flow against the Prefect flow a user would write first (`bench/naive_flow.py`), whole processes, in the
same command, against one running Prefect server (as `make run` uses), medians of alternating runs:

    python -m bench.naive_bench [--runs 5]     # or: make bench-naive

For each round, in turn: the naive flow (no cache: it computes everything), linreg-flow cold (a fresh artifacts
folder), linreg-flow cached (the folder of the round before: every stage *Cached*), and Prefect's own no-op floor
(`bench/floor.py`). Prints each median and the ratios to the naive flow.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flows.local_server import isolated_env, start_server
from storage.project import DEFAULT_DATA, PROJECT_ROOT


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="linreg-naive-bench-") as tmp:
        home = Path(tmp)
        server = start_server(home / "server")
        try:
            env = isolated_env(home / "client", PREFECT_API_URL=server.url)
            py, csv = sys.executable, str(DEFAULT_DATA)
            cached_dir = str(home / "cached")
            timed([py, "-m", "flows.train", "--artifacts-dir", cached_dir], env)  # the cached runs' folder
            times: dict[str, list[float]] = {"naive": [], "cold": [], "cached": [], "floor": []}
            for i in range(args.runs):
                times["naive"].append(timed([py, "-m", "bench.naive_flow", csv, str(home / f"naive{i}")], env))
                times["cold"].append(timed([py, "-m", "flows.train", "--artifacts-dir", str(home / f"cold{i}")], env))
                times["cached"].append(timed([py, "-m", "flows.train", "--artifacts-dir", cached_dir], env))
                times["floor"].append(timed([py, "-m", "bench.floor", csv], env))
        finally:
            server.stop()
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"medians of {args.runs} alternating runs, whole processes, against one running Prefect server:")
    for label, what in (
        ("naive", "naive Prefect flow (one @task per stage, no cache)"),
        ("cold", "linreg-flow, cold (fresh artifacts folder)"),
        ("cached", "linreg-flow, cached rerun (every stage Cached)"),
        ("floor", "floor: import, a no-op task per stage, read + hash the CSV"),
    ):
        runs = ", ".join(f"{t:.2f}" for t in times[label])
        print(f"  {what:<60} {median[label]:6.2f} s  ({runs})")
    cold, cached = median["cold"] / median["naive"], median["cached"] / median["naive"]
    print(f"  cold / naive {cold:.2f}x    cached / naive {cached:.2f}x")


if __name__ == "__main__":
    main()
