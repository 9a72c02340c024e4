"""Store benchmark: the flow with its artifacts in a local folder and on an S3-protocol server, same command.

    python -m bench.store_bench                  # 2,000,000 rows
    python -m bench.store_bench --rows 200

Starts moto's standalone S3 server on loopback (``moto[server]``, the dev extra; in memory, no auth) and a
Prefect server, then runs ``python -m flows.train --data CSV --json`` four times as separate processes (peak RSS
read by `bench/peak_rss.py`): cold and rerun (every stage *Cached*) in a fresh local folder, then the same on a
fresh ``s3://`` prefix. It prints wall time and peak RSS side by side and the store's cost as differences.
A real store adds network time roughly in proportion to the bytes moved; moto on loopback shows the code's own.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import urllib.request
from pathlib import Path

from bench.make_data import make_csv
from bench.scale_bench import DATA_DIR, last_json, measured
from flows.local_server import isolated_env, start_moto, start_server

BUCKET = "linreg-bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    args = parser.parse_args()
    csv = make_csv(args.rows, DATA_DIR / f"advertising_{args.rows}.csv") if args.rows != 200 else None
    data = ["--data", str(csv)] if csv else []
    with tempfile.TemporaryDirectory(prefix="linreg-store-bench-") as folder:
        base = Path(folder)
        moto, endpoint = start_moto(base / "moto.log")
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT"), timeout=10)
        server = start_server(base / "server")
        try:
            aws = {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
            env = isolated_env(base / "client", PREFECT_API_URL=server.url, **aws)
            results = {}
            for store, root in (("local folder", str(base / "artifacts")), ("s3:// (moto)", f"s3://{BUCKET}/run")):
                cmd = [sys.executable, "-m", "flows.train", *data, "--artifacts-dir", root, "--json"]
                for run in ("cold", "rerun"):
                    wall, rss, out = measured(cmd, env)
                    cached = last_json(out)["cached"]
                    assert all(cached.values()) == (run == "rerun"), cached
                    results[store, run] = (wall, rss)
        finally:
            server.stop()
            moto.terminate()
            moto.wait(timeout=10)
    print(f"\n{args.rows:,} rows, one `python -m flows.train` process each, against a running Prefect server")
    print(f"{'run':<8} {'local s':>8} {'local MB':>9} {'s3 s':>8} {'s3 MB':>8} {'store +s':>9} {'store +MB':>10}")
    for run in ("cold", "rerun"):
        (lw, lr), (sw, sr) = results["local folder", run], results["s3:// (moto)", run]
        print(f"{run:<8} {lw:>8.1f} {lr:>9.0f} {sw:>8.1f} {sr:>8.0f} {sw - lw:>9.1f} {sr - lr:>10.0f}")


if __name__ == "__main__":
    main()
