"""Scale benchmark: the flow against the tutorial's plain script on the same file, in the same command.

    python -m bench.scale_bench                      # 200 and 2,000,000 rows, 3 repeats each
    python -m bench.scale_bench --rows 20000000 --repeats 1 --no-trajectory --only seed   # flow ÷ floor

For each size it runs, as separate processes (peak RSS read with wait4 by `bench/peak_rss.py`): the plain script
(`bench/plain_script.py`: pandas read_csv + the full-batch loop on all rows, 1000 epochs, lr 1e-5); the flow with
`--preset seed` (the same work: raw features, lr 1e-5, 1000 epochs, no early stop) against a running Prefect
server; the flow with default settings; the flow in ephemeral mode; the flow on the same rows cut into
``--partitions`` CSV files, with threads and with a local Dask cluster; and, for the fixed cost, a process that
only imports the flow. Every flow run gets a fresh artifacts folder, so nothing is reused. It prints medians and
the ratios to the plain script, checks that the flow's per-epoch loss matches the row-wise loop run in float64
on the flow's own training split (1e-4 relative), and compares the partitioned runs' weights with the file's.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import stagecore as core
from bench.make_data import make_csv, split_csv
from flows.local_server import isolated_env, start_server
from linreg.loops import train_scratch
from linreg.model import initial_params

ROOT = Path(__file__).resolve().parent.parent

DATA_DIR = ROOT / "bench" / "data"  # git-ignored
VARIANTS = ("plain", "seed", "default", "ephemeral", "threads", "dask")


def measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stdout) of one child process, started through `bench.peak_rss`."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "rss.json"
        launcher = [sys.executable, "-m", "bench.peak_rss", str(report), "--"]
        started = time.perf_counter()
        proc = subprocess.run([*launcher, *cmd], env=env, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        return wall, json.loads(report.read_text())["peak_rss_mb"], proc.stdout


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def float64_trajectory(tensors_path: str, epochs: int, lr: float, seed: int) -> list[float]:
    """The textbook loop (`train_scratch`) on the flow's training split, in float64, from the same start."""
    data = core.read_pt(tensors_path)
    x, y = data["x_train"].double(), data["y_train"].double()
    w0, b0 = initial_params(x.shape[1], "randn", seed, torch.device("cpu"))
    history: list[float] = []
    train_scratch(x, y, w0.double(), b0.double(), lr, epochs, lambda loss: history.append(loss) or False)
    return history


def bench_size(
    rows: int,
    repeats: int,
    server_env: dict,
    ephemeral_env: dict,
    trajectory: bool,
    partitions: int,
    only: tuple[str, ...] = VARIANTS,
) -> dict:
    path = ROOT / "data" / "Advertising.csv" if rows == 200 else make_csv(rows, DATA_DIR / f"advertising_{rows}.csv")
    wants_parts = {"threads", "dask"} & set(only)
    parted = split_csv(path, partitions, DATA_DIR / f"advertising_{rows}_in_{partitions}") if wants_parts else path
    py = sys.executable
    runs = {
        "seed": (path, ["--preset", "seed"], server_env),
        "default": (path, [], server_env),
        "ephemeral": (path, ["--preset", "seed"], ephemeral_env),
        "threads": (parted, ["--preset", "seed", "--engine", "stats"], server_env),
        "dask": (parted, ["--preset", "seed", "--engine", "stats", "--task-runner", "dask"], server_env),
    }
    runs = {label: run for label, run in runs.items() if label in only}
    results: dict[str, list] = {k: [] for k in ("imports", "floor", *VARIANTS)}
    last_summary = None
    for _ in range(repeats):
        if "plain" in only:
            wall, rss, out = measured([py, "-m", "bench.plain_script", str(path)], server_env)
            results["plain"].append((wall, rss, last_json(out)))
        wall, rss, _ = measured([py, "-c", "import flows.train"], server_env)
        results["imports"].append((wall, rss, {}))
        wall, rss, out = measured([py, "-m", "bench.floor", str(path)], server_env)
        results["floor"].append((wall, rss, last_json(out)))
        for label, (data, args, env) in runs.items():
            with tempfile.TemporaryDirectory(prefix="linreg-bench-") as artifacts:
                cmd = [py, "-m", "flows.train", "--data", str(data), "--json", "--artifacts-dir", artifacts, *args]
                wall, rss, out = measured(cmd, env)
                summary = last_json(out)
                results[label].append((wall, rss, summary))
                if label == "seed" and trajectory and last_summary is None:
                    trained = core.read_pt(summary["artifacts"]["train"]["model"])
                    reference = float64_trajectory(summary["artifacts"]["tensorize"]["tensors"], 1000, 1e-5, 0)
                    got = trained["loss_history"]
                    rel = ((got - torch.tensor(reference)).abs() / torch.tensor(reference).abs()).max().item()
                    last_summary = {"max_rel_loss_diff": rel, "engine": trained["engine"]}

    def med(label: str, i: int) -> float:
        return statistics.median(r[i] for r in results[label]) if results[label] else math.nan

    def med_of(label: str, key: str) -> float:
        return statistics.median(r[2][key] for r in results[label]) if results[label] else math.nan

    plain_train = med_of("plain", "train_s")
    seed_train = med_of("seed", "train_seconds")
    single = results["seed"][0][2] if results["seed"] else None
    weights_diff = max(
        (
            abs(r[2]["weights"][k] - single["weights"][k]) / abs(single["weights"][k])
            for label in ("threads", "dask")
            for r in results[label]
            for k in (single["weights"] if single else ())
        ),
        default=math.nan,
    )
    return {
        "imports_wall": med("imports", 0),
        "floor_wall": med("floor", 0),
        # each repeat's flow ÷ the floor run just before it: on a shared machine whose speed drifts, the pairs
        # are steadier than the ratio of the two medians
        "paired": [f[0] / s[0] for f, s in zip(results["seed"], results["floor"], strict=False)],
        "imports_rss": med("imports", 1),
        "threads_wall": med("threads", 0),
        "threads_rss": med("threads", 1),
        "dask_wall": med("dask", 0),
        "partitions": partitions,
        "partition_weights_diff": weights_diff,
        "rows": rows,
        "plain_wall": med("plain", 0),
        "plain_rss": med("plain", 1),
        "plain_train": plain_train,
        "seed_wall": med("seed", 0),
        "seed_rss": med("seed", 1),
        "seed_train": seed_train,
        "default_wall": med("default", 0),
        "ephemeral_wall": med("ephemeral", 0),
        "engine": single["engine"] if single else None,
        "trajectory": last_summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[200, 2_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-trajectory", action="store_true", help="skip the float64 loss-trajectory check")
    parser.add_argument("--partitions", type=int, default=4, help="files the partitioned runs split the data into")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        help="run only these variants (the import and the floor always run); e.g. --only seed for flow ÷ floor",
    )
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="linreg-bench-prefect-"))
    server = start_server(home / "server")
    try:
        server_env = isolated_env(home / "client", PREFECT_API_URL=server.url)
        ephemeral_env = isolated_env(home / "ephemeral")
        check = not args.no_trajectory
        rows = [
            bench_size(n, args.repeats, server_env, ephemeral_env, check, args.partitions, tuple(args.only))
            for n in args.rows
        ]
    finally:
        server.stop()
    print(f"\nmedians of {args.repeats} run(s); flow runs against a running Prefect server unless noted")
    header = (
        f"{'rows':>10} {'plain s':>8} {'flow s':>8} {'ratio':>6} {'default s':>9} {'ephem. s':>8} "
        f"{'plain train':>11} {'flow train':>10} {'speedup':>8} {'plain MB':>9} {'flow MB':>8} {'RSS ratio':>9}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['rows']:>10,} {r['plain_wall']:>8.2f} {r['seed_wall']:>8.2f} {r['seed_wall'] / r['plain_wall']:>6.3f} "
            f"{r['default_wall']:>9.2f} {r['ephemeral_wall']:>8.2f} {r['plain_train']:>11.3f} {r['seed_train']:>10.3f} "
            f"{r['plain_train'] / r['seed_train']:>7.1f}x {r['plain_rss']:>9.0f} {r['seed_rss']:>8.0f} "
            f"{r['seed_rss'] / r['plain_rss']:>9.2f}"
        )
    print(
        f"\n{'rows':>10} {'import s':>8} {'import MB':>9} {'parts':>5} {'threads s':>9} {'ratio':>6} {'MB':>6} "
        f"{'dask s':>7} {'ratio':>6}  (partitioned: --preset seed on the rows cut into files; import: flows.train)"
    )
    for r in rows:
        print(
            f"{r['rows']:>10,} {r['imports_wall']:>8.2f} {r['imports_rss']:>9.0f} {r['partitions']:>5} "
            f"{r['threads_wall']:>9.2f} {r['threads_wall'] / r['plain_wall']:>6.3f} {r['threads_rss']:>6.0f} "
            f"{r['dask_wall']:>7.2f} {r['dask_wall'] / r['plain_wall']:>6.3f}"
        )
    print(
        f"\n{'rows':>10} {'floor s':>8} {'flow s':>8} {'÷ floor':>8} {'default s':>9} {'÷ floor':>8}  "
        "(floor: bench/floor.py, one process: import the flow, a flow of one no-op task per stage, one pyarrow "
        "read and one sha256 of the CSV)"
    )
    for r in rows:
        paired = ", ".join(f"{x:.2f}" for x in r["paired"])
        print(
            f"{r['rows']:>10,} {r['floor_wall']:>8.2f} {r['seed_wall']:>8.2f} {r['seed_wall'] / r['floor_wall']:>8.2f} "
            f"{r['default_wall']:>9.2f} {r['default_wall'] / r['floor_wall']:>8.2f}  each repeat's flow ÷ its floor: "
            f"{paired} (median {statistics.median(r['paired']) if r['paired'] else math.nan:.2f})"
        )
    for r in rows:
        print(
            f"{r['rows']:>10,} rows: partitioned weights vs single file, max relative difference "
            f"{r['partition_weights_diff']:.1e}"
        )
        if r["trajectory"]:
            t = r["trajectory"]
            print(
                f"{r['rows']:>10,} rows: engine {t['engine']}; max relative per-epoch loss difference vs float64 "
                f"row loop: {t['max_rel_loss_diff']:.2e}"
            )


if __name__ == "__main__":
    main()
