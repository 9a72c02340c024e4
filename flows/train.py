"""The linear-regression flow: seven stages, in order, each handing the next a file.

Run it with ``python -m flows.train`` (``--help`` lists the options) or as a Prefect deployment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from prefect import Task, flow, get_client
from prefect.runtime import flow_run
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.params import PRESETS, Params
from tasks import accumulate, drop_index, evaluate, ingest, plot, split, store, tensorize, train
from tasks.cache import StageRunner
from tasks.errors import InputError
from tasks.report import publish_report

STAGES = ("ingest", "drop_index", "split", "tensorize", "train", "evaluate", "plot")
_D = Params()


@flow(
    name="linear-regression",
    description="Train a linear regression from scratch with PyTorch, stage by stage.",
)
def linear_regression(
    data: str | None = _D.data,
    target: str = _D.target,
    features: list[str] | None = _D.features,
    index_column: str | None = _D.index_column,
    test_size: float = _D.test_size,
    seed: int = _D.seed,
    preset: str = _D.preset,
    epochs: int | None = _D.epochs,
    lr: float | str | None = _D.lr,
    tol: float | None = _D.tol,
    standardize: bool | None = _D.standardize,
    init: str | None = _D.init,
    method: str = _D.method,
    device: str = _D.device,
    engine: str = _D.engine,
    task_runner: str = _D.task_runner,
    dask_address: str | None = _D.dask_address,
    artifacts_dir: str | None = _D.artifacts_dir,
    refresh: bool = _D.refresh,
) -> dict[str, Any]:
    """Ingest → drop index → split → tensorize → train → evaluate → plot; returns the run's summary.

    Each stage is cached on the content of its inputs, its parameters and its code (see tasks/cache.py):
    an unchanged stage is *Cached*; ``refresh`` runs every stage regardless. Then ``publish_report`` turns the
    files into UI artifacts; it is not a stage and is never cached.
    """
    p = Params.parse(**locals())
    root = str(store.prepare_root(p.artifacts_dir))
    run = StageRunner(root, refresh=p.refresh)
    if store.is_partitioned(p.data):
        source = p.data
        trained, evaluation = partitioned_stages(run, p, store.partition_sources(p.data), root)
    else:
        source = store.data_source(p.data)
        raw = run(ingest.ingest_csv, ingest.STAGE, source, root)
        clean = run(drop_index.drop_index_column, drop_index.STAGE, raw["table"], p.index_column, root)
        parts = run(split.split_data, split.STAGE, clean["table"], p.test_size, p.seed, root)
        tensors = run(tensorize.tensorize, tensorize.STAGE, parts["train"], parts["test"], p.target, p.features, root)
        trained = run(train.train_model, train.STAGE, tensors["tensors"], p.training(), root)
        evaluation = run(evaluate.evaluate_model, evaluate.STAGE, tensors["tensors"], trained["model"], root)
    run(plot.plot_results, plot.STAGE, evaluation["predictions"], trained["model"], root)
    publish_report({**p.model_dump(mode="json"), "data": source, "artifacts_dir": root}, run.results)
    record = store.write_run_record(root, str(flow_run.id), p.model_dump(), run.results, run.cached)
    return summarize(run.results, run.cached, record)


def partitioned_stages(
    run: StageRunner, p: Params, sources: list[str], root: str
) -> tuple[dict[str, str], dict[str, str]]:
    """A folder or glob of files: each partition's stages run on the task runner, training on summed statistics.

    ingest, drop_index, split, tensorize and accumulate run once per file, in parallel; the split draws the
    single-file run's permutation over all rows (by each partition's offset), so the train and test rows are
    the same as for the files concatenated. train adds the partitions' statistics; evaluate reads the
    partitions one at a time.
    """
    with task_runner(p) as pool:

        def each(task: Task, stage: store.Stage, calls: list[tuple]) -> list[dict[str, str]]:
            return run.map(pool, task, stage, calls, sources)

        raw = each(ingest.ingest_csv, ingest.STAGE, [(s, root) for s in sources])
        calls = [(r["table"], p.index_column, root) for r in raw]
        clean = [c["table"] for c in each(drop_index.drop_index_column, drop_index.STAGE, calls)]
        rows = split.count_rows(clean)
        offsets = split.partition_offsets(rows)
        calls = [(t, p.test_size, p.seed, o, sum(rows), root) for t, o in zip(clean, offsets, strict=True)]
        parts = each(split.split_partition_data, split.PARTITION_STAGE, calls)
        calls = [(s["train"], s["test"], p.target, p.features, root) for s in parts]
        tensors = [t["tensors"] for t in each(tensorize.tensorize, tensorize.STAGE, calls)]
        stats = [s["stats"] for s in each(accumulate.accumulate_stats, accumulate.STAGE, [(t, root) for t in tensors])]
    trained = run(train.train_model_on_stats, train.STATS_STAGE, stats, p.training(), root)
    stage = evaluate.PARTITIONS_STAGE
    evaluation = run(evaluate.evaluate_model_on_partitions, stage, tensors, stats, trained["model"], root)
    return trained, evaluation


def task_runner(p: Params) -> TaskRunner:
    """Threads in this process, or Dask: the scheduler at ``dask_address``, else a local cluster (loopback)."""
    if p.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=os.cpu_count() or 1)
    from prefect_dask import DaskTaskRunner  # imported only when asked for: dask is slow to import

    if p.dask_address:
        return DaskTaskRunner(address=p.dask_address)
    # The workers report to this run's API, even when it is the temporary one of a local run: left to
    # themselves, each would start a temporary server of its own.
    with get_client(sync_client=True) as client:
        api = str(client.api_url).rstrip("/")
    env = {"PREFECT_API_URL": api}
    return DaskTaskRunner(cluster_kwargs={"host": "127.0.0.1", "dashboard_address": None, "env": env})


def summarize(artifacts: dict[str, dict[str, str]], cached: dict[str, bool], record: str) -> dict[str, Any]:
    """The run's result: the evaluation summary, where every artifact is, which stages were cached."""
    summary = store.read_json(artifacts["evaluate"]["summary"])
    return {**summary, "artifacts": artifacts, "cached": dict(cached), "run_record": record}


# --- command line --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    fields = Params.model_fields
    parser = argparse.ArgumentParser(
        prog="python -m flows.train",
        description="Train a linear regression from scratch with PyTorch as a Prefect flow.",
        argument_default=argparse.SUPPRESS,  # only what the user gives reaches the flow; Params has the defaults
    )

    def opt(name: str, **kwargs: Any) -> None:
        field = fields[name]
        default = field.default if field.default is not None else "from the preset"
        parser.add_argument(f"--{name.replace('_', '-')}", help=f"{field.description} (default: {default})", **kwargs)

    opt("data", metavar="CSV|FOLDER|GLOB")
    opt("target", metavar="COLUMN")
    opt("features", metavar="COLUMN", nargs="+")
    opt("index_column", metavar="COLUMN", type=lambda v: None if v.lower() == "none" else v)
    opt("test_size", metavar="FRACTION", type=float)
    opt("seed", type=int)
    opt("preset", choices=list(PRESETS))
    opt("epochs", type=int)
    opt("lr", metavar="FLOAT|auto", type=lambda v: v if v == "auto" else float(v))
    opt("tol", type=float)
    opt("standardize", action=argparse.BooleanOptionalAction)
    opt("init", choices=["zeros", "randn"])
    opt("method", choices=["scratch", "builtins"])
    opt("device", choices=["auto", "cpu", "cuda"])
    opt("engine", choices=["auto", "rows", "stats"])
    opt("task_runner", choices=["threads", "dask"])
    opt("dask_address", metavar="tcp://HOST:PORT")
    opt("artifacts_dir", metavar="DIR")
    opt("refresh", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the run's summary as one JSON line at the end")
    parser.add_argument(
        "--clean-artifacts",
        action="store_true",
        help="delete the artifacts folder (artifacts, manifests, cache and run records) and exit",
    )
    return parser


def format_summary(s: dict[str, Any]) -> str:
    rows = [f"{'':<26}{'MSE':>10}{'RMSE':>10}{'MAE':>10}{'R²':>10}"]
    for label, key in (("gradient descent", "metrics"), ("least squares (OLS)", "baseline")):
        for part in ("train", "test"):
            m = {name: evaluate.format_metric(value, ".4f") for name, value in s[key][part].items()}
            rows.append(f"{label + ' ' + part:<26}{m['mse']:>10}{m['rmse']:>10}{m['mae']:>10}{m['r2']:>10}")
    weights = ", ".join(f"{k} {v:.6g}" for k, v in s["weights"].items())
    stop = "converged" if s["converged"] else "epoch cap"
    root = Path(next(iter(s["artifacts"]["ingest"].values()))).parents[2]
    cached = ", ".join(stage for stage, hit in s["cached"].items() if hit) or "none"
    return "\n".join(
        [
            *rows,
            f"optimality gap (train MSE vs OLS): {evaluate.describe_gap(s)}",
            *evaluate.reference_notes(s),
            f"weights: {weights}; bias {s['bias']:.6g}",
            f"epochs run: {s['epochs_run']} ({stop}), lr {s['lr']:.4g} (largest stable {s['max_stable_lr']:.4g})",
            f"artifacts under {root} (cached stages: {cached}):",
            *(f"  {stage:<11}{path}" for stage, files in s["artifacts"].items() for path in files.values()),
            f"run record: {s['run_record']}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    as_json = args.pop("json", False)
    clean = args.pop("clean_artifacts", False)
    try:
        if clean:
            print(f"deleted {store.clear(args.get('artifacts_dir'))}")
            return 0
        Params.parse(**args)  # fail on bad parameters before starting Prefect
        summary = linear_regression(**args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    if as_json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
