"""Stage by stage: each stage's function run without Prefect, with its wall and CPU time (an A/B tool).

    python -m bench.stage_bench CSV                  # --preset seed's settings, a fresh artifacts folder
    python -m bench.stage_bench CSV --repeats 3      # the median of 3 passes, each in a fresh folder

The flow's run adds Prefect, the cache's lookups and the overlaps between stages; this shows what each stage
itself costs, and how much of both cores it uses (CPU ÷ wall near 2 means both were busy). On a noisy
machine, compare two variants in one command's passes, never across commands. Point PREFECT_API_URL at a
running server: train publishes a progress artifact, and without one Prefect starts a temporary server inside
train's first pass.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from prefect.logging import disable_run_logger

from flows.params import Params
from tasks import accumulate, drop_index, evaluate, ingest, plot, promote, split, tensorize, train


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_pass(csv: str, p: Params, timed: Callable[[str, Callable[[], Any]], Any]) -> None:
    """The flow's stages on one file, in its order, each through ``timed``."""
    with tempfile.TemporaryDirectory(prefix="linreg-stage-bench-") as root:
        raw = timed("ingest", lambda: ingest.ingest_csv.fn(csv, root))["table"]
        clean = timed("drop_index", lambda: drop_index.drop_index_column.fn(raw, p.index_column, root))["table"]
        rows = split.count_rows([clean])[0]
        parts = timed("split", lambda: split.split_data.fn(clean, p.test_size, p.seed, 0, rows, root))
        tensors = timed(
            "tensorize",
            lambda: tensorize.tensorize.fn(parts["train"], parts["test"], p.target, p.features, p.dtype, rows, root),
        )["tensors"]
        stats = timed("accumulate", lambda: accumulate.accumulate_stats.fn(tensors, root))["stats"]
        model = timed("train", lambda: train.train_model.fn([tensors], [stats], p.training(), root))["model"]
        evaluation = timed("evaluate", lambda: evaluate.evaluate_model.fn([tensors], [stats], model, root))
        timed("plot", lambda: plot.plot_results.fn(evaluation["predictions"], model, root))
        summary, off, run_id = evaluation["summary"], p.promote_off_optimum, "stage-bench"
        timed(
            "promote",
            lambda: promote.promote_model.fn([tensors], model, run_id, p.promote_tolerance, summary, off, root),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--preset", default="seed", choices=Params.choices("preset"))
    args = parser.parse_args()
    p = Params.parse(data=args.csv, preset=args.preset)
    walls: dict[str, list[float]] = defaultdict(list)
    cpus: dict[str, list[float]] = defaultdict(list)

    def timed(stage: str, call: Callable[[], Any]) -> Any:
        wall, cpu = time.perf_counter(), cpu_seconds()
        out = call()
        walls[stage].append(time.perf_counter() - wall)
        cpus[stage].append(cpu_seconds() - cpu)
        return out

    with disable_run_logger():
        for _ in range(args.repeats):
            one_pass(args.csv, p, timed)
    print(f"{'stage':<12}{'wall s':>8}{'CPU s':>8}{'CPU÷wall':>9}   (median of {args.repeats})")
    for stage in walls:
        wall, cpu = statistics.median(walls[stage]), statistics.median(cpus[stage])
        print(f"{stage:<12}{wall:>8.2f}{cpu:>8.2f}{cpu / wall:>9.2f}")
    total_wall = sum(statistics.median(w) for w in walls.values())
    total_cpu = sum(statistics.median(c) for c in cpus.values())
    print(f"{'all':<12}{total_wall:>8.2f}{total_cpu:>8.2f}{total_cpu / total_wall:>9.2f}")


if __name__ == "__main__":
    main()
