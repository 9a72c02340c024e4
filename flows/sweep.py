"""A sweep: many training configurations over one data set, in one flow run, ranked; the best one offered to
promotion. ``python -m flows.sweep --set lr=0.1,auto --set epochs=200,1000 [--folds K] [--json]``.

The stages before training (ingest → accumulate) run once, exactly as `flows.train` runs them (they are cached
as usual); each configuration's train → evaluate (and cross-validation, with ``--folds``) then runs as its own
task on the task runner, its stages cached per configuration like any stage: a sweep after a single run with
the same settings finds that configuration's stages Cached. A configuration that fails (it diverges) is a row
of the table, not the end of the sweep. Every configuration is checked by `Params` before anything runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.runtime import flow_run

import stagecore as core
import storage
from flows import labels
from flows import train as single
from flows.cli import exit_with, one_line, print_error
from flows.params import Params
from storage.errors import InputError
from tasks import crossval, evaluate, events, promote, sweep_report, train

# What a sweep may vary: the training and evaluation knobs. The data, the store and the promotion rule are one
# for the whole sweep (plain options, as for flows.train).
KNOBS = ("preset", "epochs", "lr", "tol", "scaling", "init", "method", "device", "dtype", "engine", "seed", "test_size")
UPSTREAM = ("seed", "test_size", "dtype")  # the knobs the stages before training read: one upstream run each
MAX_CONFIGS = 1000


def grid(assignments: list[str]) -> list[dict[str, str]]:
    """``KEY=V1,V2,…`` options → their product, one dict per configuration (in the order given)."""
    axes: dict[str, list[str]] = {}
    for assignment in assignments:
        key, sep, values = assignment.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values.strip():
            raise InputError(f"--set {assignment}: expected KEY=V1,V2,… (e.g. --set lr=0.1,auto)")
        if key not in KNOBS:
            raise InputError(f"--set {assignment}: {key} is not a knob a sweep varies; one of {', '.join(KNOBS)}")
        if key in axes:
            raise InputError(f"--set {assignment}: {key} is set twice; give its values in one --set")
        axes[key] = [v.strip() for v in values.split(",")]
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


def read_file(path: str) -> list[dict[str, Any]]:
    """A YAML file: a mapping of knob → list of values (their product), or a list of mappings (one each)."""
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"--file {path}: {exc.strerror or exc}; pass a readable YAML file") from None
    except yaml.YAMLError as exc:
        raise InputError(f"--file {path}: not valid YAML ({one_line(exc)})") from None
    if isinstance(loaded, dict):
        return product(loaded, f"--file {path}")
    if isinstance(loaded, list) and all(isinstance(c, dict) for c in loaded):
        return known([{str(k): v for k, v in c.items()} for c in loaded], f"--file {path}")
    raise InputError(f"--file {path}: expected a mapping of KEY: [values] or a list of mappings")


def product(axes: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """A mapping knob → list of values (a single value: a list of one) → their product, one dict each."""
    lists = {str(k): v if isinstance(v, list) else [v] for k, v in axes.items()}
    return known([dict(zip(lists, values, strict=True)) for values in itertools.product(*lists.values())], where)


def known(configs: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    for config in configs:
        if unknown := sorted(set(config) - set(KNOBS)):
            raise InputError(f"{where}: {unknown[0]} is not a knob a sweep varies; one of {', '.join(KNOBS)}")
    return configs


def validate(base: dict[str, Any], settings: list[dict[str, Any]]) -> list[Params]:
    """Every configuration as `Params`, or a one-line error naming the bad ``KEY=VALUE`` (then the configuration,
    for a rule between settings), before anything runs."""
    if not settings:
        raise InputError("no configuration to sweep: pass --set KEY=V1,V2,… or --file sweep.yaml")
    if len(settings) > MAX_CONFIGS:
        raise InputError(f"{len(settings)} configurations: at most {MAX_CONFIGS}; sweep fewer values")
    for key in sorted({k for s in settings for k in s} & set(base)):
        raise InputError(f"--{key.replace('_', '-')} is also swept; give its values only in the sweep")
    Params.parse(**base)  # the common options first: their errors name them
    checked = set()
    for setting in settings:
        for key, value in setting.items():
            if (key, str(value)) not in checked:
                checked.add((key, str(value)))
                try:
                    Params.parse(**base, **{key: value})
                except InputError as exc:
                    raise InputError(f"--set {key}={value}: {exc}") from None
    configs = []
    for setting in settings:
        try:
            configs.append(Params.parse(**base, **setting))
        except InputError as exc:
            raise InputError(f"configuration {describe(setting)}: {exc}") from None
    return configs


def describe(setting: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.items()) or "(defaults)"


@task(name="configuration", task_run_name="configuration {index}", cache_policy=NO_CACHE, persist_result=False)
def fit_configuration(
    index: int, p: Params, swept: list[str], tensors: list[str], stats: list[str], folds: int, root: str
) -> dict[str, Any]:
    """One configuration's train → evaluate (and its cross-validation), each a cached stage; a failure (the
    training diverged) is this configuration's row, status ``failed``, not the sweep's end."""
    run = core.StageRunner(root, refresh=p.refresh)
    row: dict[str, Any] = {"params": {k: p.model_dump(mode="json")[k] for k in swept}}
    started = time.perf_counter()
    try:
        cv = None
        if folds:
            validated = run(crossval.cross_validate, tensors, p.training(), folds, root)
            cv = core.read_json(validated["folds"])["validation_mse"]
        trained = run(train.train_model, tensors, stats, p.training(), root)
        evaluated = run(evaluate.evaluate_model, tensors, stats, trained["model"], root)
    except Exception as exc:  # a configuration's failure is reported, whatever it is
        reason = one_line(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        return {**row, **_numbers(None, None), "status": "failed", "reason": reason, "seconds": _since(started)}
    summary = core.read_json(evaluated["summary"])
    return {
        **row,
        **_numbers(summary, cv),
        "status": "ok",
        "reason": None,
        "seconds": _since(started),
        "results": run.results,
        "cached": run.cached,
    }


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)


def _numbers(summary: dict[str, Any] | None, cv: list[float] | None) -> dict[str, Any]:
    s = summary or {}
    return {
        "test_mse": s["metrics"]["test"]["mse"] if s else None,
        "cv_mse_mean": statistics.fmean(cv) if cv else None,
        "cv_mse_std": statistics.pstdev(cv) if cv else None,
        "gap": s.get("optimality_gap"),
        "epochs_run": s.get("epochs_run"),
        "engine": s.get("engine"),
    }


def rank_key(row: dict[str, Any]) -> float:
    """What selects the best: the validation mean with folds, else the test MSE; a failure last."""
    value = row["cv_mse_mean"] if row["cv_mse_mean"] is not None else row["test_mse"]
    return value if row["status"] == "ok" and value is not None and math.isfinite(value) else math.inf


def linear_regression_sweep(
    grid: dict[str, list[Any]] | None = None,
    configurations: list[dict[str, Any]] | None = None,
    options: dict[str, Any] | None = None,
    folds: int = 0,
) -> dict[str, Any]:
    """Train and evaluate each configuration on one data set: the product of ``grid`` (knob → its values, as a
    sweep file's mapping) and each of ``configurations`` (knob → value), over ``options`` (flows.train's
    parameters, the same for all); with ``folds`` ≥ 2 each is also cross-validated on the training rows and
    selected by that. The best configuration's model is offered to promotion by the usual rule (tasks/promote.py)."""
    options = dict(options or {})
    if folds == 1 or folds < 0:
        raise InputError(f"--folds {folds}: pass 2 or more folds, or none")
    settings = (product(grid, "grid") if grid else []) + known(
        [dict(c) for c in configurations or []], "configurations"
    )
    configs = validate(options, settings)
    root = str(storage.prepare_root(configs[0].artifacts_dir))
    with storage.in_use(root):
        return _sweep(configs, [list(s) for s in settings], folds, root)


def _sweep(configs: list[Params], swept: list[list[str]], folds: int, root: str) -> dict[str, Any]:
    run_id = str(flow_run.id)
    labels.label_sweep(run_id, configs, folds, root)
    upstreams: dict[tuple, tuple[core.StageRunner, list[str], list[str], list[str]]] = {}
    for p in configs:  # the stages before training, once per split (a swept seed or test size splits anew)
        key = tuple(getattr(p, k) for k in UPSTREAM)
        if key not in upstreams:
            run = core.StageRunner(root, refresh=p.refresh)
            upstreams[key] = (run, *single.upstream(p, root, run))
    with single.task_runner(configs[0]) as pool:
        futures = []
        for i, (p, keys) in enumerate(zip(configs, swept, strict=True)):
            _, _, tensors, stats = upstreams[tuple(getattr(p, k) for k in UPSTREAM)]
            futures.append(
                pool.submit(
                    fit_configuration,
                    {
                        "index": i,
                        "p": p,
                        "swept": keys,
                        "tensors": tensors,
                        "stats": stats,
                        "folds": folds,
                        "root": root,
                    },
                )
            )
        wait(futures)
        rows = [f.result() for f in futures]
    order = sorted(range(len(rows)), key=lambda i: rank_key(rows[i]))
    best_i = order[0] if rows and rank_key(rows[order[0]]) < math.inf else None
    promotion = None
    if best_i is not None:
        p = configs[best_i]
        up, sources, tensors, _ = upstreams[tuple(getattr(p, k) for k in UPSTREAM)]
        run = core.StageRunner(root, refresh=p.refresh)
        run.results = {**up.results, **rows[best_i]["results"]}
        run.cached = {**up.cached, **rows[best_i]["cached"]}
        promotion, *_ = single.commit(p, root, run, sources, tensors)
        evaluated = core.read_json(run.results["evaluate"]["summary"])
        events.emit_training(root, run_id, run.results["train"]["model"], promotion, evaluated, p.target)
    labels.label_sweep(run_id, configs, folds, root, promotion)
    table = [{k: v for k, v in r.items() if k not in ("results", "cached")} for r in rows]
    models = {i: r["results"]["train"]["model"] for i, r in enumerate(rows) if r["status"] == "ok"}
    sweep_report.publish_sweep(table, order, best_i, folds, models)
    summary = {
        "configs": table,
        "best": None if best_i is None else {**table[best_i], "index": best_i, "model": _model(rows[best_i])},
        "promotion": promotion,
        "upstream_cached": next(iter(upstreams.values()))[0].cached,
        "flow_run_id": run_id,
    }
    if promotion is not None:
        promote.enforce(promotion, configs[best_i].require_promotion)
    return summary


def _model(row: dict[str, Any]) -> str:
    return storage.public(row["results"]["train"]["model"])


linear_regression_sweep = flow(
    name="linear-regression-sweep",
    description="Train and compare many configurations of the linear regression on one data set.",
)(linear_regression_sweep)


# --- command line --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """flows.train's options (the common ones: a knob given there is the same for every configuration), plus the
    sweep's own."""
    parser = single.build_parser()
    parser.prog = "python -m flows.sweep"
    parser.description = "Train and compare many configurations of the linear regression as one Prefect flow."
    parser.add_argument(
        "--set", dest="sets", metavar="KEY=V1,V2,…", action="append", help="a knob's values; the grid is their product"
    )
    parser.add_argument("--file", metavar="SWEEP.yaml", help="the configurations: KEY: [values] or a list of them")
    parser.add_argument("--folds", metavar="K", type=int, help="cross-validate on K folds of the training rows")
    return parser


def format_table(summary: dict[str, Any]) -> str:
    cv = any(r["cv_mse_mean"] is not None for r in summary["configs"])
    lines = [
        f"{'#':>3}  {'validation MSE':>22}{'test MSE':>12}  {'status':<7}configuration"
        if cv
        else f"{'#':>3}  {'test MSE':>12}  {'status':<7}configuration"
    ]
    for i, r in enumerate(summary["configs"]):
        test = "—" if r["test_mse"] is None else f"{r['test_mse']:.6g}"
        what = describe(r["params"]) + (f" ({r['reason']})" if r["reason"] else "")
        if cv:
            val = "—" if r["cv_mse_mean"] is None else f"{r['cv_mse_mean']:.6g} ± {r['cv_mse_std']:.3g}"
            lines.append(f"{i:>3}  {val:>22}{test:>12}  {r['status']:<7}{what}")
        else:
            lines.append(f"{i:>3}  {test:>12}  {r['status']:<7}{what}")
    best = summary["best"]
    lines.append(
        "best: none (every configuration failed)"
        if best is None
        else f"best: #{best['index']} {describe(best['params'])}, model {best['model']}"
    )
    if summary["promotion"]:
        lines.append(promote.describe(summary["promotion"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    as_json = args.pop("json", False)
    sets, path, folds = args.pop("sets", None) or [], args.pop("file", None), args.pop("folds", None) or 0
    try:
        if args.pop("clean_artifacts", False):
            raise InputError("--clean-artifacts: run python -m flows.train --clean-artifacts")
        settings = (read_file(path) if path else []) + (grid(sets) if sets else [])
        if folds == 1 or folds < 0:
            raise InputError(f"--folds {folds}: pass 2 or more folds, or none")
        configs = validate(args, settings)
        storage.prepare_root(configs[0].artifacts_dir)
    except InputError as exc:
        print_error(exc)
        return 2
    try:
        summary = linear_regression_sweep(configurations=settings, options=args, folds=folds)
    except InputError as exc:
        single.settle_prefect()
        print_error(exc)
        return 2
    print(format_table(summary))
    if as_json:
        print(json.dumps(summary))
    if summary["best"] is None:
        print_error("every configuration failed (reasons above)")
        return 1
    return 0


if __name__ == "__main__":
    exit_with(main())
