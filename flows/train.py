"""The linear-regression flow: seven stages, in order, each handing the next a file.

Run it with ``python -m flows.train`` (``--help`` lists the options) or as a Prefect deployment.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from prefect import flow

from flows.params import PRESETS, Params
from tasks import store
from tasks.drop_index import drop_index_column
from tasks.errors import InputError
from tasks.evaluate import evaluate_model
from tasks.ingest import ingest_csv
from tasks.plot import plot_results
from tasks.report import publish_report
from tasks.split import split_data
from tasks.tensorize import tensorize
from tasks.train import train_model

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
    artifacts_dir: str | None = _D.artifacts_dir,
) -> dict[str, Any]:
    """Ingest → drop index → split → tensorize → train → evaluate → plot; returns the run's summary.

    Then ``publish_report`` turns the files into UI artifacts; it is not a stage and is never cached.
    """
    p = Params.parse(**locals())
    root = str(store.artifacts_root(p.artifacts_dir))
    raw = ingest_csv(store.data_source(p.data), root)
    clean = drop_index_column(raw["table"], p.index_column, root)
    split = split_data(clean["table"], p.test_size, p.seed, root)
    tensors = tensorize(split["train"], split["test"], p.target, p.features, root)
    trained = train_model(tensors["tensors"], p.training(), root)
    evaluation = evaluate_model(tensors["tensors"], trained["model"], root)
    plots = plot_results(evaluation["predictions"], trained["model"], root)
    artifacts = dict(zip(STAGES, (raw, clean, split, tensors, trained, evaluation, plots), strict=True))
    publish_report({**p.model_dump(mode="json"), "data": store.data_source(p.data), "artifacts_dir": root}, artifacts)
    return summarize(artifacts)


def summarize(artifacts: dict[str, dict[str, str]]) -> dict[str, Any]:
    """The run's result: the evaluation summary plus where every artifact is."""
    summary = json.loads(Path(artifacts["evaluate"]["summary"]).read_text())
    return {**summary, "artifacts": artifacts, "cached": dict.fromkeys(artifacts, False)}


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

    opt("data", metavar="CSV")
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
    opt("artifacts_dir", metavar="DIR")
    parser.add_argument("--json", action="store_true", help="print the run's summary as one JSON line at the end")
    return parser


def format_summary(s: dict[str, Any]) -> str:
    rows = [f"{'':<26}{'MSE':>10}{'RMSE':>10}{'MAE':>10}{'R²':>10}"]
    for label, key in (("gradient descent", "metrics"), ("least squares (OLS)", "baseline")):
        for part in ("train", "test"):
            m = s[key][part]
            rows.append(f"{label + ' ' + part:<26}{m['mse']:>10.4f}{m['rmse']:>10.4f}{m['mae']:>10.4f}{m['r2']:>10.4f}")
    weights = ", ".join(f"{k} {v:.6g}" for k, v in s["weights"].items())
    stop = "converged" if s["converged"] else "epoch cap"
    root = Path(s["artifacts"]["ingest"]["table"]).parents[2]
    return "\n".join(
        [
            *rows,
            f"optimality gap (train MSE vs OLS): {s['optimality_gap']:.3e}",
            f"weights: {weights}; bias {s['bias']:.6g}",
            f"epochs run: {s['epochs_run']} ({stop}), lr {s['lr']:.4g} (largest stable {s['max_stable_lr']:.4g})",
            f"artifacts under {root}:",
            *(f"  {stage:<11}{path}" for stage, files in s["artifacts"].items() for path in files.values()),
        ]
    )


class _NoTracebackForInputErrors(logging.Filter):
    """Prefect logs a failed task's traceback; for a user's mistake the one-line message is the whole story."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], InputError):
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_input_errors() -> None:
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", ""):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_NoTracebackForInputErrors())


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    as_json = args.pop("json", False)
    try:
        Params.parse(**args)  # fail on bad parameters before starting Prefect
        _quiet_input_errors()
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
