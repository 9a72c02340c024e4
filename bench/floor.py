"""The floor a flow run cannot go below, as one process: what every run must do whatever the stages compute.

    python -m bench.floor CSV      # against PREFECT_API_URL, like the flow runs it is compared with

It imports the flow module (Prefect, torch, pyarrow), runs a Prefect flow of one no-op task per stage, reads
the CSV once with pyarrow, hashes it once with sha256, and exits the way the flow's command line does
(`flows.cli.exit_with`: without the collector's last walk over every object, 1.5 s with torch loaded).
`bench/scale_bench.py` times this process beside the flow's, so the ratio flow ÷ floor is what the stages
add on top of what cannot be avoided.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time

started = time.perf_counter()

import pyarrow.csv as pacsv  # noqa: E402
from prefect import flow, task  # noqa: E402

import flows.train  # noqa: E402, F401  (the import is part of the floor)
from flows.cli import exit_with  # noqa: E402
from flows.train import STAGES  # noqa: E402

imported = time.perf_counter()


@task
def noop(value: int) -> int:
    return value


@flow(name="noop-task-per-stage")
def noop_stages() -> int:
    value = 0
    for _ in STAGES:
        value = noop(value)
    return value


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def main(path: str) -> dict[str, float]:
    t0 = time.perf_counter()
    noop_stages()
    t1 = time.perf_counter()
    rows = pacsv.read_csv(path).num_rows
    t2 = time.perf_counter()
    sha256(path)
    t3 = time.perf_counter()
    return {
        "rows": rows,
        "import_s": imported - started,
        "noop_flow_s": t1 - t0,
        "read_s": t2 - t1,
        "sha256_s": t3 - t2,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
    exit_with(0)  # the way the flow's command line ends (flows/cli.py): no collection of every object at exit
