"""Write an Advertising-shaped CSV of any size: same header, value ranges and a linear sales model with noise.

python -m bench.make_data 2000000 bench/data/advertising_2m.csv
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

CHUNK_ROWS = 1_000_000
# Ranges of the real file, and a sales model close to its least-squares fit.
RANGES = {"TV": (0.7, 296.4), "radio": (0.0, 49.6), "newspaper": (0.3, 114.0)}
COEF = {"TV": 0.0458, "radio": 0.1885, "newspaper": -0.001}
INTERCEPT, NOISE = 2.94, 1.7


def chunk(rng: np.random.Generator, start: int, rows: int) -> pa.Table:
    columns = {"": pa.array(np.arange(start + 1, start + rows + 1))}
    sales = np.full(rows, INTERCEPT)
    for name, (low, high) in RANGES.items():
        values = np.round(rng.uniform(low, high, rows), 1)
        columns[name] = pa.array(values)
        sales += COEF[name] * values
    columns["sales"] = pa.array(np.round(sales + rng.normal(0, NOISE, rows), 1))
    return pa.table(columns)


def make_csv(rows: int, path: Path, seed: int = 0) -> Path:
    """Write ``rows`` rows to ``path`` (atomically) unless a file of that name exists already."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    first = chunk(rng, 0, min(rows, CHUNK_ROWS))
    with pacsv.CSVWriter(tmp, first.schema) as writer:
        writer.write_table(first)
        for start in range(CHUNK_ROWS, rows, CHUNK_ROWS):
            writer.write_table(chunk(rng, start, min(CHUNK_ROWS, rows - start)))
    os.replace(tmp, path)
    return path


def split_csv(path: Path, parts: int, folder: Path) -> Path:
    """The rows of ``path`` cut into ``parts`` CSV files of consecutive rows (``part-00.csv`` …), streamed."""
    if folder.exists():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    rows = sum(batch.num_rows for batch in pacsv.open_csv(path))
    bounds = [rows * (i + 1) // parts for i in range(parts)]
    reader = pacsv.open_csv(path)
    part, written, writer = 0, 0, None
    for batch in reader:
        while batch.num_rows:
            if writer is None:
                writer = pacsv.CSVWriter(tmp / f"part-{part:02d}.csv", reader.schema)
            take = min(batch.num_rows, bounds[part] - written)
            writer.write_batch(batch.slice(0, take))
            batch, written = batch.slice(take), written + take
            if written == bounds[part]:
                writer.close()
                writer, part = None, part + 1
    os.replace(tmp, folder)
    return folder


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("rows", type=int)
    parser.add_argument("path", type=Path)
    args = parser.parse_args()
    print(make_csv(args.rows, args.path))
