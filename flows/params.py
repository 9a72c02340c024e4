"""The flow's parameters: the one place each setting, its default and its valid range are defined."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import MISSING, BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, WithJsonSchema
from pydantic.fields import FieldInfo

import storage
from linreg.config import Device, Engine, Init, Method, Scaling, TrainConfig, check_config, trains_on_stats
from linreg.precision import Dtype
from storage.errors import InputError

TaskRunnerName = Literal["threads", "dask"]

SEED_MAX = 2**32 - 1  # numpy's RandomState, which draws the split, takes seeds in 0..2**32-1

# What a preset decides, unless a parameter of the same name is given, and what it is for (the form and --help
# say both, from here).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"epochs": 1000, "lr": "auto", "tol": 1e-7, "scaling": "auto", "init": "zeros"},
    "seed": {"epochs": 1000, "lr": 1e-5, "tol": 0.0, "scaling": "none", "init": "randn"},
}
PURPOSES = {"default": "reaches the least-squares optimum", "seed": "reproduces the original tutorial"}
FEATURES = {"auto": "whitened features", "none": "raw features", "standardize": "standardized features"}
FEATURES["whiten"] = FEATURES["auto"]  # auto whitens unless the standardized features are uncorrelated

Preset = Literal[tuple(PRESETS)]  # the presets' names, from PRESETS itself


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _recipe(preset: str) -> str:
    """A preset in words: what it is for, then what it sets."""
    knobs = PRESETS[preset]
    stop = f"early stop below {_shown(knobs['tol'])}" if knobs["tol"] else "no early stop"
    return (
        f"{preset} {PURPOSES[preset]}: {FEATURES[knobs['scaling']]} (scaling {knobs['scaling']}), "
        f"lr {_shown(knobs['lr'])}, {stop}, {knobs['init']} init, at most {knobs['epochs']} epochs"
    )


def _from_presets(description: str, knob: str) -> str:
    """A preset-driven field's description, with the value each preset gives it (None: the preset's)."""
    return f"{description}; " + ", ".join(f"{name} preset: {_shown(knobs[knob])}" for name, knobs in PRESETS.items())


class Params(BaseModel):
    """Everything one run needs. ``None`` on a training knob means: take it from the preset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: str | None = Field(
        None,
        description="CSV or Parquet path, http(s) URL, or a folder or glob of CSV/Parquet partitions; "
        "None: the shipped Advertising.csv",
    )
    target: str = Field("sales", description="column to predict")
    features: list[str] | None = Field(None, description="feature columns; None: every other column")
    index_column: str | None = Field("Unnamed: 0", description="row-index column to drop; None: there is none")
    test_size: float = Field(0.2, gt=0, lt=1, description="fraction of rows held out for testing")
    seed: int = Field(
        0, ge=0, le=SEED_MAX, description=f"seed of the split and of a random initialisation, 0 to {SEED_MAX}"
    )
    preset: Preset = Field(
        "default",
        description=f"training recipe, which sets {', '.join(PRESETS['default'])} unless given: "
        + "; ".join(map(_recipe, PRESETS)),
    )
    epochs: PositiveInt | None = Field(None, description=_from_presets("most epochs to train", "epochs"))
    lr: PositiveFloat | Literal["auto"] | None = Field(
        None, description=_from_presets("step size, a number or auto (1/L of the Hessian)", "lr")
    )
    tol: float | None = Field(
        None, ge=0, description=_from_presets("early stop below this relative loss change, 0: never", "tol")
    )
    scaling: Scaling | None = Field(
        None,
        description=_from_presets(
            "change of variables gradient descent runs in: none, standardize, whiten (Hessian = identity), "
            "or auto: whiten unless the standardized features are uncorrelated",
            "scaling",
        ),
    )
    init: Init | None = Field(None, description=_from_presets("initial weights", "init"))
    method: Method = Field("scratch", description="hand-written loop or nn/optim")
    device: Device = Field("auto", description="auto: cuda when available")
    dtype: Dtype = Field(
        "auto", description="precision of the tensors and the loop; auto: float64 unless big data is safe in float32"
    )
    engine: Engine = Field(
        "auto", description="rows: loop over every row; stats: same iterates from XᵀX, Xᵀy; auto: by size"
    )
    task_runner: TaskRunnerName = Field(
        "threads", description="where a partitioned input's per-partition stages run: local threads, or Dask"
    )
    dask_address: str | None = Field(
        None, description="Dask scheduler to use with --task-runner dask (tcp://host:8786); None: a local cluster"
    )
    artifacts_dir: str | None = Field(
        None, description="where artifacts go; None: $LINREG_ARTIFACTS_DIR or data/artifacts"
    )
    refresh: bool = Field(False, description="run every stage even when its cached result is still valid")
    promote_tolerance: float = Field(
        0.0,
        ge=0,
        description="promote the model unless its test MSE exceeds the champion's (re-scored on this run's test "
        "rows) by more than this fraction of the champion's MSE; 0: not worse",
    )
    require_promotion: bool = Field(False, description="fail the run when its model is not promoted to champion")
    promote_off_optimum: bool = Field(
        False, description="let a model that ended off the least-squares optimum be promoted (it is not by default)"
    )
    model_name: str | None = Field(
        None,
        pattern=f"^{storage.MODEL_NAME_PATTERN}$",
        description="the model this run trains, by name (letters, digits, '.', '_', '-'; at most 64): each model "
        "has its own champion; None: the model is its target and features",
    )

    @classmethod
    def parse(cls, **values: Any) -> Params:
        """Validate, turning pydantic's report into the one-line ``InputError`` users see."""
        try:
            params = cls(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            name = "--" + "-".join(str(part) for part in err["loc"][:1]).replace("_", "-")
            raise InputError(f"{name}: {_message(err)} (got {err.get('input')!r})") from None
        check_config(params.training())  # rules between training settings, before the first stage runs
        if storage.is_partitioned(params.data) and not trains_on_stats(params.training()):
            raise InputError(
                f"--data {params.data} is a folder or glob, which trains on per-partition statistics: "
                "pass --method scratch and --engine auto or stats, or a single file"
            )
        params.check_columns()
        params.check_data()
        return params

    def check_columns(self) -> None:
        """The index column is dropped before the target and features are chosen: it cannot be one of them."""
        if self.index_column is None:
            return
        if self.index_column == self.target:
            raise InputError(
                f"--index-column {self.index_column!r} is also the --target; the index column is dropped before "
                "training: pass --index-column with the row-index column (or none), or another --target"
            )
        if self.features and self.index_column in self.features:
            raise InputError(
                f"--index-column {self.index_column!r} is also listed in --features; the index column is dropped "
                "before training: pass --index-column with the row-index column (or none), or fix --features"
            )

    def check_data(self) -> None:
        """Cheap checks of ``--data`` before anything reads or hashes it (the stage cache hashes the file before
        the ingest stage runs): a device or FIFO would never end; a folder or glob (local, or on an object store:
        one listing) must hold data files.

        A path that does not exist is left to the ingest stage, which says so in its own words.
        """
        if self.data is None:
            return
        if storage.is_partitioned(self.data):  # a folder or glob, here or on an object store
            storage.partition_sources(self.data)  # a one-line error when it holds no data file
            return
        if storage.is_url(self.data):
            return
        path = Path(self.data).expanduser()
        if path.exists():
            storage.check_regular(path, self.data)

    def training(self) -> TrainConfig:
        """The training stage's config: explicit parameters first, then the preset's values."""
        preset = PRESETS[self.preset]
        chosen = {k: getattr(self, k) if getattr(self, k) is not None else v for k, v in preset.items()}
        return TrainConfig(method=self.method, seed=self.seed, device=self.device, engine=self.engine, **chosen)

    @classmethod
    def choices(cls, name: str) -> list[str] | None:
        """The values a parameter may take, from its ``Literal`` type (None for a free value): the CLI's
        choices and the deployment form's dropdown both come from here."""
        members = [t for t in _flatten(cls.model_fields[name].annotation) if t is not type(None)]
        if not all(typing.get_origin(t) is Literal for t in members):
            return None  # a free value (``lr`` takes any positive float, or "auto")
        return [v for lit in members for v in typing.get_args(lit)]

    @classmethod
    def signature(cls) -> inspect.Signature:
        """The flow's signature, made from the fields: each parameter's type, default and description (what a
        call binds and records)."""
        return inspect.Signature(
            [
                inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=field, annotation=_typed(field))
                for name, field in cls.model_fields.items()
            ],
            return_annotation=dict[str, Any],
        )

    @classmethod
    def form_signature(cls) -> inspect.Signature:
        """The signature Prefect builds the deployment's run form and its server-side check from.

        A field whose default is None (unset: the preset's value, the shipped data…) is shown as one plain input
        of its real type, with no ``default`` in its schema: Prefect 3.9.1's UI turns ``X | None`` into a type
        switch that starts on None ("Property is type None"), and with ``"default": null`` its server refuses
        the null an untouched input sends. Without a default, the server accepts null or absent for a typed
        field. pydantic writes no default for ``MISSING``; it lives only here, never in a call's parameters
        (the flow binds calls with `signature`)."""
        return inspect.Signature(
            [
                inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
                for name, field in cls.model_fields.items()
                for default, annotation in [_form(name, field)]
            ],
            return_annotation=dict[str, Any],
        )


# lr in the form: one text input that takes auto or a positive number (Params reads "0.01" as 0.01). The UI picks
# an input by "type" alone (a list of types renders nothing, none a JSON editor) and the server checks that same
# "type", so a JSON number from `prefect deployment run --param lr=0.01` is refused: pass lr='"0.01"' there.
LR_FORM = {"type": "string", "pattern": r"^(auto|([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?)$"}


def _form(name: str, field: FieldInfo) -> tuple[Any, Any]:
    """A field's default and type in the run form: a None default becomes no default, ``X | None`` becomes X."""
    if field.default is not None:
        return field, _typed(field)
    unset = Field(MISSING, description=field.description)
    if name == "lr":
        return unset, typing.Annotated[Any, WithJsonSchema(LR_FORM)]
    members = [t for t in _flatten(field.annotation) if t is not type(None)]
    (kind,) = members  # one type besides None; lr, the one union, is the case above
    return unset, typing.Annotated[(kind, *field.metadata)] if field.metadata else kind


NAME_RULE = "a model's name is 1 to 64 letters, digits, '.', '_' or '-', the first a letter or digit"


def _message(err: Mapping[str, Any]) -> str:
    """pydantic's message, or for a name that does not match its pattern the rule in words."""
    return NAME_RULE if err["type"] == "string_pattern_mismatch" else err["msg"]


def _typed(field: FieldInfo) -> Any:
    """The field's type with its constraints (``gt``, ``ge``…) attached, so the form checks ranges too."""
    return typing.Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation


def _flatten(annotation: Any) -> list[Any]:
    """The members of a union (``A | B``, ``Optional[A]``), or the annotation itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _flatten(arg)]
    return [annotation]
