"""A run readable at a glance in the Prefect UI: named from its parameters, tagged with its settings and outcome.

The name is ``<data>-<preset>-<key>``: the input's file (or folder) name, the recipe, and six hex digits of the
parameters' hash, so two runs of the same settings share a name and a changed setting shows. The tags say the
preset, the engine, where the artifacts live, and (once decided) whether the model was promoted. Labels are
for people: a server that refuses them costs a WARNING, never the run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePosixPath
from typing import Any

from flows.params import Params


def data_stem(data: str | None) -> str:
    """The input's file (or folder) name without its extension; never a URL's query or fragment (a secret)."""
    data = (data or "Advertising.csv").split("?", 1)[0].split("#", 1)[0]
    path = PurePosixPath(data.rstrip("/"))
    if any(c in path.name for c in "*?["):  # a glob: its folder names the data
        path = path.parent
    return path.name.rsplit(".", 1)[0] if "." in path.name else path.name or "data"


def _work(p: Params) -> dict[str, Any]:
    return p.model_dump(mode="json", exclude={"artifacts_dir", "refresh"})  # same work, same name


def _key(shown: Any) -> str:
    return hashlib.sha256(json.dumps(shown, sort_keys=True).encode()).hexdigest()[:6]


def run_name(p: Params) -> str:
    return f"{data_stem(p.data)}-{p.preset}-{_key(_work(p))}"


def sweep_name(configs: list[Params], folds: int) -> str:
    """``<data>-sweep-<key>``: six hex digits of every configuration's parameters and the folds."""
    return f"{data_stem(configs[0].data)}-sweep-{_key([[_work(p) for p in configs], folds])}"


def run_tags(p: Params, root: str, promotion: dict[str, Any] | None = None, engine: str | None = None) -> list[str]:
    return [f"preset:{p.preset}", f"engine:{engine or p.engine}", f"store:{_store(root)}", *_outcome(promotion)]


def _outcome(promotion: dict[str, Any] | None) -> list[str]:
    return [] if promotion is None else ["promoted" if promotion["promoted"] else "not-promoted"]


def label(run_id: str, p: Params, root: str, promotion: dict | None = None, engine: str | None = None) -> None:
    """Name and tag training flow run ``run_id`` (the tags a deployment gave it are kept)."""
    _update(run_id, run_name(p), run_tags(p, root, promotion, engine))


def label_sweep(run_id: str, configs: list[Params], folds: int, root: str, promotion: dict | None = None) -> None:
    """Name a sweep's flow run (`sweep_name`) and tag it ``sweep``, its store kind and (once decided) whether its
    best configuration's model was promoted."""
    _update(run_id, sweep_name(configs, folds), ["sweep", f"store:{_store(root)}", *_outcome(promotion)])


def label_prediction(run_id: str, data: str | None, model_sha256: str, root: str) -> None:
    """Name a prediction run ``<data>-predict-<model>`` (six hex digits of the model file's sha256, as the
    model's events name it) and tag it ``predict`` and its store kind."""
    _update(run_id, f"{data_stem(data)}-predict-{model_sha256[:6]}", ["predict", f"store:{_store(root)}"])


def _store(root: str) -> str:
    return root.split("://", 1)[0] if "://" in root else "local"


def _update(run_id: str, name: str, ours: list[str]) -> None:
    from prefect import get_client, get_run_logger

    try:
        with get_client(sync_client=True) as client:
            given = [t for t in client.read_flow_run(run_id).tags if not _ours(t)]
            client.update_flow_run(run_id, name=name, tags=[*given, *ours])
    except Exception as exc:  # a label is for people: never the reason a run fails
        get_run_logger().warning("could not name and tag this flow run (%s)", exc)


def _ours(tag: str) -> bool:
    return tag.startswith(("preset:", "engine:", "store:")) or tag in ("promoted", "not-promoted", "predict", "sweep")
