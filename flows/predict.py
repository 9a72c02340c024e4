"""The predict flow: apply a trained model (the champion by default) to new data, streamed, with lineage.

    python -m flows.predict --data new.csv [--model champion|@previous|@NAME|PATH] [--model-name NAME]
                            [--max-drift Z | --no-drift] [--json]

With ``--model champion`` (the default) the model is the champion of the model whose features the data has
(`pick`: all of them among its columns; the most features if several fit; ``--model-name`` to say which).

Ingest and drop_index are the training flow's stages (once per partition, on the task runner); then the data's
columns are checked against the model's features; then ``predict`` writes ``predictions.parquet`` per
partition, whose manifest names the model's sha256, so ``python -m flows.lineage`` leads from a prediction file
through the model back to the training data. Each partition's feature moments are compared with the model's
training moments (`tasks.drift`): a table in the report and ``drift`` in the summary; ``--max-drift`` refuses.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import time
from pathlib import Path
from typing import Any

from prefect import Task, flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

import lifecycle
import stagecore as core
import storage
from flows import labels
from flows.cli import exit_with, print_error
from flows.params import Params, _message, _typed
from flows.train import settle_prefect, task_runner
from storage import validate
from storage.errors import InputError, IntegrityError
from tasks import drift, drop_index, events, ingest, predict, predict_report

CHAMPION = "champion"
_SHARED = ("data", "index_column", "task_runner", "dask_address", "artifacts_dir", "refresh")  # defined in Params


class _Base(BaseModel):
    """What one prediction run needs: the model, and the training flow's own fields for the data and the store."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def parse(cls, **values: Any) -> _Base:
        try:
            return cls(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            name = "--" + str(err["loc"][0]).replace("_", "-")
            raise InputError(f"{name}: {_message(err)} (got {err.get('input')!r})") from None

    @classmethod
    def signature(cls) -> inspect.Signature:
        """The flow's signature, so the deployment's run form has each field's type, default and description."""
        return inspect.Signature(
            [
                inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=field, annotation=_typed(field))
                for name, field in cls.model_fields.items()
            ],
            return_annotation=dict[str, Any],
        )


PredictParams = create_model(
    "PredictParams",
    __base__=_Base,
    __doc__=_Base.__doc__,
    model=(
        str,
        Field(
            CHAMPION,
            description="champion (or @champion): the promoted model of the artifacts folder; @previous: the champion "
            "before it; @NAME: an alias (python -m flows.registry); or a model.pt path",
        ),
    ),
    model_name=(
        str | None,
        Field(
            None,
            pattern=f"^{storage.MODEL_NAME_PATTERN}$",
            description="with --model champion: the champion of the model of this name (or id); None: of the model "
            "whose features the data has (the most features, if several)",
        ),
    ),
    drift=(bool, Field(True, description="measure the input's drift from the model's training data")),
    max_drift=(
        float | None,
        Field(
            None,
            gt=0,
            description="fail (exit 2) when a feature's mean moved more than this many training standard "
            "deviations; None: only warn",
        ),
    ),
    **{name: (Params.model_fields[name].annotation, Params.model_fields[name]) for name in _SHARED},
)


def describe_model(model: lifecycle.champion.Model) -> str:
    """A model as predict lists it: its label, and for an unnamed model the id ``--model-name`` takes."""
    return model.label if model.name is not None else f"{model.label} [id {model.id}]"


def candidates(root: str, name: str | None) -> list[lifecycle.champion.Model]:
    """The models with a champion that ``--model champion`` may pick: all, or the one of ``name`` (a model's name,
    or an unnamed model's id). One line when there is none yet, or no model of that name."""
    found = lifecycle.champion.models(root)
    if not found:
        raise InputError(f"no champion model in {root} yet; train first (python -m flows.train), or pass --model PATH")
    if name is None:
        return found
    named = [m for m in found if m.name == name] or [m for m in found if m.name is None and m.id == name]
    if not named:
        raise InputError(
            f"--model-name {name}: no model of that name or id has a champion in {root} (models: "
            f"{'; '.join(describe_model(m) for m in found)}); pass --model-name with one of them, or --model PATH"
        )
    return named


def pick(found: list[lifecycle.champion.Model], columns: set[str], data: str) -> lifecycle.champion.Model:
    """The model whose features are all among the data's ``columns``; of several, the one with the most features.
    One line listing the models when none fits, or when several fit equally well."""
    fits = [m for m in found if set(m.features) <= columns]
    most = max((len(m.features) for m in fits), default=0)
    best = [m for m in fits if len(m.features) == most]
    if len(best) == 1:
        return best[0]
    if not best:
        listed = "; ".join(f"{describe_model(m)}, lacks {_missing(m, columns)}" for m in found)
        raise InputError(
            f"{data}: no model's features are all among its columns (models: {listed}); pass --data with a "
            "model's features, --model-name NAME, or --model PATH"
        )
    listed = "; ".join(describe_model(m) for m in best)
    raise InputError(
        f"{data}: {len(best)} models fit its columns equally ({listed}); pass --model-name or --model PATH"
    )


def _missing(model: lifecycle.champion.Model, columns: set[str], shown: int = 3) -> str:
    """The model's features the data lacks, the first few by ``repr``."""
    missing = [f for f in model.features if f not in columns]
    return ", ".join(repr(f) for f in missing[:shown]) + (f" (+{len(missing) - shown})" if len(missing) > shown else "")


def alias_of(model: str) -> str | None:
    """The alias ``--model`` names (``champion`` as ever, or ``@NAME``); None for a path. One line for a name that
    is no alias's."""
    alias = CHAMPION if model == CHAMPION else model[1:] if model.startswith("@") else None
    if alias is not None and not re.fullmatch(storage.ALIAS_PATTERN, alias):
        raise InputError(f"--model {model}: not an alias ({storage.ALIAS_PATTERN}); pass @champion, @previous or @NAME")
    return alias


def resolve_model(model: str, root: str, champion_of: lifecycle.champion.Model | None = None) -> str:
    """The model file to use, verified against its manifest: ``champion_of``'s champion or other alias, or the
    path given."""
    if (alias := alias_of(model)) not in (None, CHAMPION):
        try:
            path = lifecycle.registry.resolve(root, champion_of, alias)["model"]
        except ValueError as exc:  # names nothing, or a pointer that is not ours
            if isinstance(exc, core.InputError) and not isinstance(exc, core.IntegrityError):
                raise
            raise InputError(f"--model {model}: {exc}") from None
    elif alias == CHAMPION:
        try:
            path = lifecycle.champion.champion_model_path(root, champion_of)
        except ValueError as exc:  # a pointer that is not ours: say so, never follow it
            if isinstance(exc, core.InputError) and not isinstance(exc, core.IntegrityError):
                raise  # a store that cannot be reached or refused us: its own one line
            raise InputError(f"{exc}; train again to write a new champion, or pass --model PATH") from None
        if path is None:
            raise InputError(
                f"no champion model in {root} yet; train first (python -m flows.train), or pass --model PATH"
            )
    else:
        path = _model_file(model, storage.open_store(root))
    manifest = core.verify(path, load=True)  # IntegrityError when it does not match its manifest
    try:
        validate.model_manifest(manifest, what=model if alias_of(model) is None else path)
    except validate.Invalid as exc:
        raise InputError(f"{exc}; pass --model with the path of a model.pt the training flow wrote") from None
    return path


def preflight(p: _Base, root: str) -> None:
    """What can be refused before any data is read: a model file that fails verification, no champion yet, a
    --model-name no model has. Which champion fits the data is decided once its columns are known."""
    if p.max_drift is not None and not p.drift:
        raise InputError(f"--max-drift {p.max_drift:g}: needs drift measured; drop --no-drift")
    if alias_of(p.model) is None:
        if p.model_name is not None:
            raise InputError(f"--model-name {p.model_name}: picks a champion; pass it with --model champion")
        resolve_model(p.model, root)
    else:
        candidates(root, p.model_name)


def _model_file(model: str, store: storage.Store) -> str:
    """The local file of ``--model``: a file of the store by the name the store gives it (on an object store its
    URL, downloaded with its manifest into the scratch mirror), or any local path; verified by the caller."""
    if model.startswith(store.url + "/"):
        relative = model[len(store.url) + 1 :]
        if ".." in relative.split("/"):
            raise InputError(f"{model}: not a model path of the store")
        try:
            path = store.get(relative)
            store.get(relative + storage.MANIFEST_SUFFIX)
        except core.IntegrityError as exc:
            raise InputError(f"{exc}; pass --model with the URL of a model.pt the training flow wrote") from None
    elif storage.is_url(model):
        raise InputError(f"{model}: a model on an object store must be under --artifacts-dir; pass its URL there")
    else:
        path = Path(model).expanduser().resolve()
    if not path.is_file():
        raise InputError(f"{model}: model file not found; pass --model with the path of a model.pt, or champion")
    return str(path)


def linear_regression_predict(**values: Any) -> dict[str, Any]:
    """Ingest → drop index → check columns → predict (per partition), then the UI report; returns the summary."""
    started = time.perf_counter()
    p = PredictParams.parse(**values)
    root = str(storage.prepare_root(p.artifacts_dir))
    with storage.in_use(root):  # held for the whole run: a --clean-artifacts refuses meanwhile, and the reverse
        return _predict(p, root, started)


def _predict(p: PredictParams, root: str, started: float) -> dict[str, Any]:
    preflight(p, root)
    run = core.StageRunner(root, refresh=p.refresh)
    sources = storage.partition_sources(p.data) if storage.is_partitioned(p.data) else [storage.data_source(p.data)]
    with task_runner(p) as pool:

        def each(task: Task, calls: list[tuple]) -> list[dict[str, str]]:
            try:
                return run.map(pool, task, calls, sources)
            except InputError as exc:  # a single file's stage errors name intermediate files: add the source
                if len(sources) == 1 and sources[0] not in str(exc):
                    raise InputError(f"{storage.redact(sources[0])}: {exc}") from None
                raise

        raw = [r["table"] for r in each(ingest.ingest_csv, [(s, root) for s in sources])]
        clean = [c["table"] for c in each(drop_index.drop_index_column, [(r, p.index_column, root) for r in raw])]
        schemas = [core.open_parquet(table).schema_arrow for table in clean]
        champion_of = None
        if alias_of(p.model) is not None:  # (an alias of) the champion of the model the data has the features of
            columns = set.intersection(*(set(schema.names) for schema in schemas))
            shown_data = storage.redact(sources[0]) if len(sources) == 1 else storage.redact(p.data)
            champion_of = pick(candidates(root, p.model_name), columns, shown_data)
        model_path = resolve_model(p.model, root, champion_of)
        if champion_of is not None:
            used = storage.public(model_path)
            get_run_logger().info("the champion of model %s (%s): the data has its features", champion_of.label, used)
        if flow_run.id:  # named for the runs list: <data>-predict-<model>
            labels.label_prediction(str(flow_run.id), p.data, core.read_manifest(model_path)["sha256"], root)
        features = list(core.read_pt(model_path)["features"])
        for schema, source in zip(schemas, sources, strict=True):
            predict.check_features(schema, features, storage.redact(source))
        calls = [(c, r, model_path, p.index_column, p.drift, root) for c, r in zip(clean, raw, strict=True)]
        stage_outputs = each(predict.predict_rows, calls)
    outputs = [o["predictions"] for o in stage_outputs]
    measured = drift.check_drift([o["drift"] for o in stage_outputs], model_path)
    data = p.data if len(sources) > 1 else sources[0]  # redacted by the report
    rows = predict_report.publish_predictions(outputs, model_path, features, data, root, measured)
    drift.refuse(measured, p.max_drift)  # after the report (it shows why), before the event (nothing follows)
    events.emit_predictions(root, str(flow_run.id), model_path, outputs, rows, data)
    shown = [storage.public(o) for o in outputs]  # on an object store: the URLs, not the scratch mirror's files
    return {
        "predictions": shown[0] if len(shown) == 1 else shown,
        "rows": rows,
        "model": storage.public(model_path),
        "champion_of": None if champion_of is None else champion_of.label,  # which model's champion predicted
        "features": features,
        "drift": measured,
        "cached": dict(run.cached),
        "seconds": round(time.perf_counter() - started, 3),  # the flow's own time: process start-up not included
    }


linear_regression_predict.__signature__ = PredictParams.signature()
linear_regression_predict = flow(
    name="linear-regression-predict",
    description="Predict with a trained linear regression (the champion by default), streamed, with lineage.",
)(linear_regression_predict)


def build_parser() -> argparse.ArgumentParser:
    fields = PredictParams.model_fields
    parser = argparse.ArgumentParser(
        prog="python -m flows.predict",
        description="Predict with a trained linear regression as a Prefect flow.",
        argument_default=argparse.SUPPRESS,
    )

    def opt(name: str, **kwargs: Any) -> None:
        field = fields[name]
        default = "none" if field.default is None else field.default
        parser.add_argument(f"--{name.replace('_', '-')}", help=f"{field.description} (default: {default})", **kwargs)

    opt("data", metavar="CSV|Parquet|FOLDER|GLOB")
    opt("model", metavar="champion|@previous|@NAME|PATH")
    opt("model_name", metavar="NAME")
    opt("index_column", metavar="COLUMN", type=lambda v: None if v.lower() == "none" else v)
    opt("task_runner", choices=Params.choices("task_runner"))
    opt("dask_address", metavar="tcp://HOST:PORT")
    opt("artifacts_dir", metavar="DIR")
    opt("max_drift", metavar="Z", type=float)
    parser.add_argument(
        "--no-drift", dest="drift", action="store_false", help="do not measure drift (default: measured)"
    )
    opt("refresh", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the run's summary as one JSON line at the end")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    as_json = args.pop("json", False)
    try:
        p = PredictParams.parse(**args)  # bad parameters, no champion, a broken model: before Prefect starts
        preflight(p, str(storage.prepare_root(p.artifacts_dir)))
    except (InputError, IntegrityError) as exc:
        print_error(exc)
        return 2
    try:
        summary = linear_regression_predict(**args)
    except (InputError, IntegrityError) as exc:
        settle_prefect()
        print_error(exc)
        return 2
    shown = summary["predictions"] if isinstance(summary["predictions"], list) else [summary["predictions"]]
    cached = ", ".join(stage for stage, hit in summary["cached"].items() if hit) or "none"
    which = f" (the champion of {summary['champion_of']})" if summary["champion_of"] else ""
    print(f"{summary['rows']} predictions with model {summary['model']}{which} (cached stages: {cached}):")
    print("\n".join(f"  {path}" for path in shown))
    if as_json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    exit_with(main())
