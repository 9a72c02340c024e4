"""The linear-regression flow: eight stages, in order, each handing the next a file.

Run it with ``python -m flows.train`` (``--help`` lists the options) or as a Prefect deployment.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from prefect import Task, flow, get_client, get_run_logger
from prefect.futures import PrefectFuture, wait
from prefect.runtime import flow_run
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

import lifecycle
import stagecore as core
import storage
from flows import labels
from flows.cli import exit_at_once, exit_with, print_error
from flows.params import PRESETS, Params
from storage.errors import InputError, api_lost
from tasks import accumulate, drop_index, evaluate, events, history, ingest, plot, promote, split, tensorize, train
from tasks.report import publish_report

PRESET_KNOBS = set(PRESETS["default"])  # parameters whose default comes from the preset
API_LOST = False  # set by `main` when the run ended because the Prefect server went away
STAGES = ("ingest", "drop_index", "split", "tensorize", "accumulate", "train", "evaluate", "plot")


def linear_regression(**values: Any) -> dict[str, Any]:
    """Ingest → drop index → split → tensorize → accumulate → train → evaluate → plot; returns the run's summary.

    One pipeline for one file or many: a folder or glob of files is read as partitions, each partition's first
    five stages run on the task runner (threads, or Dask), and a single file is the one-partition case. The
    split draws one permutation over all rows (by each partition's offset), so the rows a model trains and is
    tested on do not depend on how the input is cut into files. train adds the partitions' statistics (and
    joins their rows for the textbook row loop); evaluate reads the partitions one at a time.

    The parameters are `flows.params.Params`' fields (its ``signature``): each one's type, default, valid range
    and description is defined there once. Each stage is cached on the content of its inputs, its parameters
    and its code (stagecore/cache.py): an unchanged stage is *Cached*; ``refresh`` runs every stage
    regardless. Then ``promote_model`` (champion vs challenger, tasks/promote.py), ``record_history`` (one row per
    run, tasks/history.py) and ``publish_report`` (the UI artifacts) run; they are not stages and are never cached.
    """
    p = Params.parse(**values)
    root = str(storage.prepare_root(p.artifacts_dir))
    with storage.in_use(root):  # held for the whole run: a --clean-artifacts refuses meanwhile, and the reverse
        return _train(p, root)


def _train(p: Params, root: str) -> dict[str, Any]:
    labels.label(str(flow_run.id), p, root)
    run = core.StageRunner(root, refresh=p.refresh, on_run=plot.preload)
    sources, tensors, stats = upstream(p, root, run)
    trained = run(train.train_model, tensors, stats, p.training(), root)
    evaluation = run(evaluate.evaluate_model, tensors, stats, trained["model"], root)
    run_id = str(flow_run.id)
    promotion, record, shown, seen = commit(
        p,
        root,
        run,
        sources,
        tensors,
        lambda: run(plot.plot_results, evaluation["predictions"], trained["model"], root),
    )
    published = publish_report(shown, run.results, promotion, seen, run.cached)
    summary = summarize(run.results, run.cached, record)
    events.emit_training(root, run_id, trained["model"], promotion, summary, p.target)  # committed: announce it
    labels.label(run_id, p, root, promotion, summary["engine"])
    promote.enforce(promotion, p.require_promotion)
    return {**summary, "promotion": promotion, "flow_run_id": run_id, "report_id": published["report_id"]}


def upstream(p: Params, root: str, run: core.StageRunner) -> tuple[list[str], list[str], list[str]]:
    """Ingest → drop index → split → tensorize → accumulate, once per partition on the task runner; returns the
    sources, each partition's tensors and its statistics (what train and evaluate read). A sweep runs it too."""
    sources = storage.partition_sources(p.data) if storage.is_partitioned(p.data) else [storage.data_source(p.data)]
    with task_runner(p) as pool:

        def each(task: Task, calls: list[tuple]) -> list[dict[str, str]]:
            return run.map(pool, task, calls, sources)

        raw = each(ingest.ingest_csv, [(s, root) for s in sources])
        ingest.partition_columns([r["table"] for r in raw], sources)  # a missing or extra column: refused, named
        clean = [
            c["table"] for c in each(drop_index.drop_index_column, [(r["table"], p.index_column, root) for r in raw])
        ]
        rows = split.count_rows(clean)
        offsets = split.partition_offsets(rows)
        calls = [(t, p.test_size, p.seed, o, sum(rows), root) for t, o in zip(clean, offsets, strict=True)]
        parts = each(split.split_data, calls)
        features = ingest.aligned_features(clean, sources, p.target, p.features)  # columns in another order
        calls = [(s["train"], s["test"], p.target, features, p.dtype, sum(rows), root) for s in parts]
        tensors = [t["tensors"] for t in each(tensorize.tensorize, calls)]
        stats = [s["stats"] for s in each(accumulate.accumulate_stats, [(t, root) for t in tensors])]
    return sources, tensors, stats


def commit(
    p: Params, root: str, run: core.StageRunner, sources: list[str], tensors: list[str], beside: Any = lambda: None
) -> tuple[dict[str, Any], str, dict[str, Any], dict[str, Any]]:
    """The champion decision on ``run``'s model, then the history row and the run record: all or nothing
    (docs/lifecycle.md), a failure before the record taking the first two back. ``beside`` runs while the
    promotion does (the plots). Returns the promotion block, the run record, the parameters as shown and the
    history's last runs (the report's trend)."""
    run_id = str(flow_run.id)
    trained, evaluation = run.results["train"], run.results["evaluate"]
    # the champion decision needs the model and the test rows, not the plots: it runs beside them
    promoting = promote.promote_model.submit(
        tensors,
        trained["model"],
        run_id,
        p.promote_tolerance,
        evaluation["summary"],
        p.promote_off_optimum,
        p.target,
        p.model_name,
        root,
    )
    data = p.data if len(sources) > 1 else sources[0]
    shown = storage.redact_all({**p.model_dump(mode="json"), "data": data, "artifacts_dir": root})
    try:
        beside()
        promotion = promoting.result()
        seen = history.record_history(root, run_id, shown, run.results, promotion)
        record = core.write_run_record(root, run_id, p.model_dump(), run.results, run.cached)
    except BaseException:
        take_back(root, run_id, promoting)
        raise
    return promotion, record, shown, seen


linear_regression.__signature__ = Params.signature()
linear_regression = flow(
    name="linear-regression",
    description="Train a linear regression from scratch with PyTorch, stage by stage.",
)(linear_regression)
# What Prefect builds the run form from (inspect.signature(flow) reads it); calls bind the function's own.
linear_regression.__signature__ = Params.form_signature()


def take_back(root: str, run_id: str, promoting: PrefectFuture) -> None:
    """Undo a failed run's lifecycle writes (its history row, then its champion pointer), once its promotion has
    ended; best effort: when the store itself is what failed, this may fail too (docs/lifecycle.md)."""
    wait([promoting])
    for undo in (lifecycle.history.take_back, lifecycle.champion.take_back):
        try:
            undo(root, run_id)
        except Exception as exc:  # the run's own error is the one to report
            get_run_logger().warning("could not take back this run's %s (%s)", undo.__module__, exc)


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
    summary = core.read_json(artifacts["evaluate"]["summary"])
    named = {stage: {name: storage.public(path) for name, path in files.items()} for stage, files in artifacts.items()}
    return {**summary, "artifacts": named, "cached": dict(cached), "run_record": record}


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
        default = field.default if field.default is not None else "from the preset" if name in PRESET_KNOBS else "none"
        parser.add_argument(f"--{name.replace('_', '-')}", help=f"{field.description} (default: {default})", **kwargs)

    opt("data", metavar="CSV|FOLDER|GLOB")
    opt("target", metavar="COLUMN")
    opt("features", metavar="COLUMN", nargs="+")
    opt("index_column", metavar="COLUMN", type=lambda v: None if v.lower() == "none" else v)
    opt("test_size", metavar="FRACTION", type=float)
    opt("seed", type=int)
    opt("preset", choices=Params.choices("preset"))
    opt("epochs", type=int)
    opt("lr", metavar="FLOAT|auto", type=lambda v: v if v == "auto" else float(v))
    opt("tol", type=float)
    opt("scaling", choices=Params.choices("scaling"))
    opt("init", choices=Params.choices("init"))
    opt("method", choices=Params.choices("method"))
    opt("device", choices=Params.choices("device"))
    opt("dtype", choices=Params.choices("dtype"))
    opt("engine", choices=Params.choices("engine"))
    opt("task_runner", choices=Params.choices("task_runner"))
    opt("dask_address", metavar="tcp://HOST:PORT")
    opt("artifacts_dir", metavar="DIR")
    opt("refresh", action="store_true")
    opt("promote_tolerance", metavar="FRACTION", type=float)
    opt("require_promotion", action="store_true")
    opt("promote_off_optimum", action="store_true")
    opt("model_name", metavar="NAME")
    parser.add_argument("--json", action="store_true", help="print the run's summary as one JSON line at the end")
    parser.add_argument(
        "--clean-artifacts",
        action="store_true",
        help="delete what the store wrote in the artifacts folder (artifacts, manifests, cache and run records, "
        "champion pointers, run history) and exit",
    )
    return parser


def _cell(value: float) -> str:
    """A metric in a 10-wide column: fixed-point, or scientific when fixed-point would not fit (a target of ~1e20)."""
    return f"{value:>10.4f}" if abs(value) < 1e5 else f"{value:>10.4g}"


def format_summary(s: dict[str, Any]) -> str:
    rows = [f"{'':<26}{'MSE':>10}{'RMSE':>10}{'MAE':>10}{'R²':>10}"]
    for label, key in (("gradient descent", "metrics"), ("least squares (OLS)", "baseline")):
        for part in ("train", "test"):
            m = s[key][part]  # a metric may be None (R² of a constant target): "n/a"
            cells = "".join(f"{'n/a':>10}" if m[k] is None else _cell(m[k]) for k in ("mse", "rmse", "mae", "r2"))
            rows.append(f"{label + ' ' + part:<26}{cells}")
    weights = ", ".join(f"{k} {v:.6g}" for k, v in s["weights"].items())
    stop = "converged" if s["converged"] else "epoch cap"
    root = str(next(iter(s["artifacts"]["ingest"].values()))).rsplit("/", 3)[0]  # a folder or a store's URL
    cached = ", ".join(stage for stage, hit in s["cached"].items() if hit) or "none"
    warning = evaluate.off_optimum_warning(s)
    condition = "" if math.isnan(s["condition"]) else f", condition number {s['condition']:.3g} after standardizing"
    return "\n".join(
        [
            *([warning] if warning else []),
            *rows,
            f"optimality gap (train MSE vs OLS): {evaluate.describe_gap(s)}",
            *evaluate.reference_notes(s),
            f"weights: {weights}; bias {s['bias']:.6g}",
            f"epochs run: {s['epochs_run']} ({stop}), lr {s['lr']:.4g} (largest stable {s['max_stable_lr']:.4g})",
            f"features: {s['scaling']}{condition}; tensors {s['dtype']} ({s['dtype_reason']})",
            *([promote.describe(s["promotion"])] if "promotion" in s else []),
            f"artifacts under {root} (cached stages: {cached}):",
            *(f"  {stage:<11}{path}" for stage, files in s["artifacts"].items() for path in files.values()),
            f"run record: {s['run_record']}",
            *(
                [f"run in the Prefect UI: {s['ui_url']}", f"report: {s['report_url']}"]
                if s.get("ui_url")
                else ["tip: make run keeps a local Prefect server with a UI; this run used a temporary one"]
            ),
        ]
    )


def settle_prefect(lost: bool = False) -> None:
    """Let Prefect finish talking now, so the ``error:`` line is the last one a person sees.

    Left to exit time, Prefect sends its queued events and logs (warning "Still processing items") and stops its
    temporary server (logging "Stopping temporary server"), all after the error line. With the server ``lost``,
    nothing queued can be sent: the queues are dropped, and nothing more is sent to the API.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    if lost:
        import logging

        from prefect.logging.handlers import APILogHandler

        for logger in [logging.getLogger(), *map(logging.getLogger, logging.root.manager.loggerDict)]:
            for handler in [h for h in logger.handlers if isinstance(h, APILogHandler)]:
                logger.removeHandler(handler)
    EventsWorker.drain_all(timeout=1 if lost else 10)
    APILogWorker.drain_all(timeout=1 if lost else 10)
    SubprocessASGIServer().stop()  # the temporary server of a run without PREFECT_API_URL; else nothing


def ui_links(summary: dict[str, Any]) -> dict[str, str | None]:
    """``ui_url`` (the flow run) and ``report_url`` (its report artifact) in the Prefect UI of the server the run
    reported to; None for a run on the temporary server, whose UI is gone when the run ends."""
    ui = history.ui_url()
    if not ui:
        return {"ui_url": None, "report_url": None}
    return {
        "ui_url": f"{ui}/runs/flow-run/{summary['flow_run_id']}",
        "report_url": f"{ui}/artifacts/artifact/{summary['report_id']}",
    }


def api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or "the temporary server"


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    as_json = args.pop("json", False)
    clean = args.pop("clean_artifacts", False)
    try:
        if clean:
            cleared = storage.clear(storage.store_root(args.get("artifacts_dir")))
            kept = (
                f"; kept {cleared.kept} files the store did not write, and the store's marker" if cleared.kept else ""
            )
            print(f"deleted {cleared.deleted} files the store wrote under {cleared.where}{kept}")
            return 0
        p = Params.parse(**args)  # fail on bad parameters (and a --data that is none) before starting Prefect
        storage.prepare_root(p.artifacts_dir)  # and on an artifacts folder that cannot be written
    except InputError as exc:
        print_error(exc)
        return 2
    try:
        summary = linear_regression(**args)
    except InputError as exc:
        settle_prefect()
        print_error(exc)
        return 2
    except Exception as exc:
        if not api_lost(exc):
            raise
        global API_LOST
        API_LOST = True
        settle_prefect(lost=True)
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        print(file=sys.stderr)  # a line of its own: Prefect's log worker prints its failures without a newline
        print_error(
            f"lost the Prefect API at {api_url()} ({reason}); start the server again (or check "
            "PREFECT_API_URL) and rerun: the stages that finished are cached"
        )
        return 2
    summary |= ui_links(summary)
    print(format_summary(summary))
    if as_json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    code = main()
    (exit_at_once if API_LOST else exit_with)(code)
