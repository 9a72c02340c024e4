"""Sweep benchmark: what a sweep costs next to the single runs it replaces, whole processes, medians.

    python -m bench.sweep_bench                      # 2,000,000 rows, 3 repeats
    python -m bench.sweep_bench --rows 500000 --repeats 1

Against a running Prefect server, each repeat runs, every one in a fresh artifacts folder unless noted:
(a) one cold single run (``flows.train --engine stats``); (b) a one-configuration sweep in (a)'s store, its
upstream Cached: its configuration's own seconds are train + evaluate alone; (c) a cold 12-configuration sweep
(lr × epochs); (d) a cold one-configuration sweep with ``--folds 5`` on the statistics engine. Checks
(c) ≤ (a) + 12 × (b) × 1.2 and (d) ≤ 1.2 × (a).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bench.make_data import make_csv
from bench.scale_bench import DATA_DIR, ROOT, last_json, measured
from flows.local_server import isolated_env, start_server

GRID = ["--set", "lr=auto,0.3,0.1,0.03", "--set", "epochs=100,200,300"]  # 12 configurations
SLACK = 1.2


def repeat(data: Path, env: dict[str, str]) -> dict[str, float]:
    py = [sys.executable, "-m"]
    common = ["--data", str(data), "--engine", "stats", "--json"]
    with tempfile.TemporaryDirectory(prefix="linreg-bench-") as store:
        cold, _, _ = measured([*py, "flows.train", *common, "--artifacts-dir", store], env)
        one, _, out = measured([*py, "flows.sweep", *common, "--artifacts-dir", store, "--set", "lr=0.05"], env)
        [config] = last_json(out)["configs"]
    with tempfile.TemporaryDirectory(prefix="linreg-bench-") as store:
        sweep, _, out = measured([*py, "flows.sweep", *common, "--artifacts-dir", store, *GRID], env)
        assert all(r["status"] == "ok" for r in last_json(out)["configs"]), out[-2000:]
    with tempfile.TemporaryDirectory(prefix="linreg-bench-") as store:
        folds, _, _ = measured(
            [*py, "flows.sweep", *common, "--artifacts-dir", store, "--set", "lr=auto", "--folds", "5"], env
        )
    return {"cold": cold, "one_wall": one, "train_eval": config["seconds"], "sweep12": sweep, "folds5": folds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = make_csv(args.rows, DATA_DIR / f"advertising_{args.rows}.csv")
    home = Path(tempfile.mkdtemp(prefix="linreg-bench-prefect-"))
    server = start_server(home / "server")
    try:
        env = isolated_env(home / "client", PREFECT_API_URL=server.url)
        runs = [repeat(data, env) for _ in range(args.repeats)]
    finally:
        server.stop()
    m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    bound = m["cold"] + 12 * m["train_eval"] * SLACK
    print(f"\n{args.rows:,} rows, medians of {args.repeats} repeat(s), seconds (whole processes, cwd {ROOT.name})")
    print(f"(a) cold single run                   {m['cold']:8.2f}")
    print(f"(b) train+evaluate, one configuration {m['train_eval']:8.2f}  (sweep, upstream Cached {m['one_wall']:.2f})")
    print(
        f"(c) 12-configuration sweep, cold      {m['sweep12']:8.2f}  bound (a) + 12×(b)×{SLACK}: {bound:.2f}  "
        f"ratio {m['sweep12'] / bound:.3f}"
    )
    print(f"(d) --folds 5 sweep (stats), cold     {m['folds5']:8.2f}  ÷ (a): {m['folds5'] / m['cold']:.3f} (≤ {SLACK})")
    failed = [
        what for what, ok in (("(c)", m["sweep12"] <= bound), ("(d)", m["folds5"] <= SLACK * m["cold"])) if not ok
    ]
    if failed:
        sys.exit(f"over the bound: {', '.join(failed)}")


if __name__ == "__main__":
    main()
