"""Predict benchmark: rows/s and peak RSS of ``python -m flows.predict`` on an Advertising-shaped CSV.

    python -m bench.predict_bench                   # 2,000,000 rows
    python -m bench.predict_bench --rows 20000000

Trains once (and twice more with other epoch caps: models whose training reuses every stage but train),
promotes the first, then measures predict processes against a running Prefect server, each started through
`bench/peak_rss.py`: a cold one in a fresh store (ingest, drop_index and predict all run), then, with each other
model in the trained store (ingest and drop_index Cached, so only the streamed predict stage runs), one with
``--no-drift`` and one with drift measured (issue 25: drift's cost, in the same process setup, alternated).
It checks the predictions against ``x @ w + b``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

import lifecycle
import stagecore as core
from bench.make_data import make_csv
from bench.scale_bench import DATA_DIR, ROOT, last_json, measured
from flows.local_server import isolated_env, start_server


def train(csv: Path, root: Path, env: dict[str, str], *extra: str) -> dict:
    cmd = [sys.executable, "-m", "flows.train", "--data", str(csv), "--artifacts-dir", str(root), "--json", *extra]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return last_json(proc.stdout)


def promote(root: Path, summary: dict) -> Path:
    """The champion after a training run: the first run's model is promoted by the flow itself."""
    assert summary["promotion"]["promoted"], summary["promotion"]
    model = Path(lifecycle.champion.champion_model_path(root))
    assert model == Path(summary["artifacts"]["train"]["model"])
    return model


def check(summary: dict, model: Path, rows: int) -> None:
    """Spot-check the first batch of predictions against ``x @ w + b`` in float64 from the ingested table."""
    saved = core.read_pt(model)
    out = pq.ParquetFile(summary["predictions"])
    assert out.metadata.num_rows == rows == summary["rows"], (out.metadata.num_rows, rows)
    got = next(out.iter_batches(batch_size=100_000)).column("prediction").to_numpy()
    [clean] = Path(summary["predictions"]).parents[2].glob("drop_index/*/clean.parquet")
    x = next(pq.ParquetFile(clean).iter_batches(batch_size=100_000, columns=saved["features"]))
    xs = np.column_stack([x.column(f).to_numpy() for f in saved["features"]]).astype(np.float64)
    np.testing.assert_allclose(got, xs @ saved["weights"].double().reshape(-1).numpy() + float(saved["bias"]), 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    args = parser.parse_args()
    csv = make_csv(args.rows, DATA_DIR / f"advertising_{args.rows}.csv")
    with tempfile.TemporaryDirectory(prefix="linreg-predict-bench-") as folder:
        base = Path(folder)
        server = start_server(base / "server")
        try:
            env = isolated_env(base / "client", PREFECT_API_URL=server.url)
            root = base / "artifacts"
            champion = promote(root, train(csv, root, env))
            others = [Path(train(csv, root, env, "--epochs", e)["artifacts"]["train"]["model"]) for e in ("999", "998")]
            predict = [sys.executable, "-m", "flows.predict", "--data", str(csv), "--artifacts-dir", str(root)]
            predict.append("--json")
            cold = [*predict[:-3], "--artifacts-dir", str(base / "cold"), "--model", str(champion), "--json"]
            runs = [("cold: ingest + drop_index + predict (a fresh store)", cold, champion)]
            for other in others:
                for drift, flag in (("off", ["--no-drift"]), ("on", [])):
                    label = f"predict stage only (ingest, drop_index cached), drift {drift}"
                    runs.append((label, [*predict, "--model", str(other), *flag], other))
            for label, cmd, model in runs:
                wall, rss, stdout = measured(cmd, env)
                summary = last_json(stdout)
                check(summary, model, args.rows)
                flow_s = summary["seconds"]
                print(
                    f"{args.rows:>11,} rows, {label}: {wall:6.1f} s, {args.rows / wall:>12,.0f} rows/s "
                    f"(whole process, imports and Prefect included); flow body {flow_s:6.1f} s, "
                    f"{args.rows / flow_s:>12,.0f} rows/s; peak RSS {rss:6.0f} MB; cached {summary['cached']}"
                )
        finally:
            server.stop()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
