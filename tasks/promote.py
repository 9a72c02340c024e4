"""After evaluate: champion and challenger. The first successful run's model becomes the champion; each later
run's model (the challenger) is promoted only if its test MSE is not worse than the champion's, re-scored on
THIS run's test rows, by more than ``promote_tolerance`` (relative to the champion's MSE).

The champion is a pointer, ``<root>/champion/champion.json`` (plus its manifest), naming the model artifact and
the run that made it; the model file is never copied or changed. Its shape is fixed (``champion_version`` 1):
``model`` (the model's path relative to the root, posix), ``model_sha256``, ``flow_run_id``, ``features``,
``target``, ``test_mse``, ``promoted_at``.

Why one uncached task rather than a cached "score champion" stage plus a promote step: the decision must be made
against the champion read under the pointer's lock (two runs racing to promote must end as if they ran one after
the other), so the champion can only be scored after that lock is taken. Scoring it on the test rows is cheap
next to training, and it stays a pure function (`mse`); the task is never cached, like ``publish_report``,
because its side effect (the pointer swap) must happen on every run.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import stagecore as core
from stagecore.atomic import write_json
from tasks.evaluate import Sums, predict

CHAMPION_VERSION = 1
POINTER = "champion.json"
LOCK = "champion.lock"
MAX_POINTER_BYTES = 64 << 10
FIELDS = {
    "champion_version": int,
    "model": str,
    "model_sha256": str,
    "flow_run_id": str,
    "features": list,
    "target": str,
    "test_mse": float,
    "promoted_at": str,
}


class NotPromoted(core.InputError):
    """``--require-promotion`` and the challenger was not promoted: the run fails (exit 2 from the CLI)."""


# --- pure ------------------------------------------------------------------------------------------


def mse(partitions: Iterable[dict], weights: torch.Tensor, bias: float) -> float:
    """Test MSE of ``x @ weights + bias`` over every partition's test rows, in float64 (as evaluate computes it)."""
    sums = Sums()
    w = weights.double().numpy().ravel()
    for tensors in partitions:
        sums.add(tensors["y_test"].double().numpy().ravel(), predict(tensors["x_test"], w, float(bias)))
    return float(sums.metrics()["mse"])


def decide(
    challenger_mse: float, champion_mse: float | None, tolerance: float, why_no_champion: str | None = None
) -> tuple[bool, str]:
    """(promoted, reason). Promoted when there is no comparable champion, or when the challenger's test MSE is
    at most ``champion_mse * (1 + tolerance)``: equal counts as not worse."""
    if champion_mse is None:
        return True, why_no_champion or "first successful run: no champion yet"
    if not math.isfinite(champion_mse):
        return True, f"the champion's test MSE on this run's test rows is {champion_mse}: promoted"
    limit = champion_mse * (1 + tolerance)
    compare = f"challenger test MSE {challenger_mse:.6g} vs champion {champion_mse:.6g} on this run's test rows"
    allowed = f" (tolerance {tolerance:g}: up to {limit:.6g})" if tolerance else ""
    if challenger_mse <= limit:
        return True, f"{compare}{allowed}: not worse, promoted"
    return False, f"{compare}{allowed}: worse, not promoted; the champion stays"


# --- the pointer -----------------------------------------------------------------------------------


def pointer_path(root: str | Path) -> Path:
    return Path(root) / core.CHAMPION_DIR / POINTER


def _inside(root: str | Path, relative: str) -> Path:
    """``relative`` as an absolute path inside the root; ValueError for an absolute path, ``..`` or a link out."""
    parts = PurePosixPath(relative)
    base = Path(root).resolve()
    resolved = (base / parts).resolve()
    if parts.is_absolute() or ".." in parts.parts or base not in resolved.parents:
        raise ValueError(f"{pointer_path(root)}: model {relative!r} is outside the artifacts folder")
    return resolved


def read_champion(root: str | Path) -> dict[str, Any] | None:
    """The champion pointer, checked field by field, with ``model`` made absolute; None when there is none.

    ValueError when the pointer is not ours (wrong shape, a model outside the root); ``core.IntegrityError``
    when the model file does not match its manifest or the pointer's sha256.
    """
    path = pointer_path(root)
    try:
        with open(path, "rb") as fh:
            content = fh.read(MAX_POINTER_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(content) > MAX_POINTER_BYTES:
        raise ValueError(f"{path}: too large to be a champion pointer")
    try:
        pointer = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{path}: not JSON") from None
    if not isinstance(pointer, dict) or set(pointer) != set(FIELDS):
        raise ValueError(f"{path}: not a champion pointer (fields {sorted(FIELDS)} expected)")
    for name, kind in FIELDS.items():
        value = pointer[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            pointer[name] = value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{path}: field {name} is not a {kind.__name__}")
    if pointer["champion_version"] != CHAMPION_VERSION:
        raise ValueError(f"{path}: champion_version {pointer['champion_version']}, expected {CHAMPION_VERSION}")
    if not all(isinstance(f, str) for f in pointer["features"]):
        raise ValueError(f"{path}: features are not column names")
    model = _inside(root, pointer["model"])
    manifest = core.verify(model)
    if manifest["sha256"] != pointer["model_sha256"]:
        raise core.IntegrityError(f"{model}: sha256 does not match the champion pointer {path}")
    return {**pointer, "model": str(model)}


def champion_model_path(root: str | Path) -> str | None:
    """The absolute path of the champion's verified ``model.pt``, or None when there is no champion yet."""
    champion = read_champion(root)
    return None if champion is None else champion["model"]


def write_champion(root: str | Path, model: str, run_id: str, trained: dict, test_mse: float) -> dict[str, Any]:
    """Point the champion at ``model`` (atomically: the pointer, then its manifest). Call it under ``lock``."""
    base = Path(root).resolve()
    pointer = {
        "champion_version": CHAMPION_VERSION,
        "model": Path(model).resolve().relative_to(base).as_posix(),
        "model_sha256": core.read_manifest(model)["sha256"],
        "flow_run_id": run_id,
        "features": list(trained["features"]),
        "target": str(trained["target"]),
        "test_mse": float(test_mse),
        "promoted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    path = pointer_path(base)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(pointer, path)
    manifest = {
        "manifest_version": core.MANIFEST_VERSION,
        "file": POINTER,
        "sha256": core.sha256_file(path),
        "size": path.stat().st_size,
        "format": "json",
        "schema": {"keys": sorted(pointer)},
        "stage": "promote",
        "inputs": [{"name": "model", "path": str(model), "sha256": pointer["model_sha256"]}],
        "versions": core.versions(),
        "created": pointer["promoted_at"],
    }
    write_json(manifest, core.manifest_path(path))
    return pointer


def lock(root: str | Path):
    """The one lock on the pointer, held across the decision and the swap (swap this for an object-store lock)."""
    return core.exclusive(Path(root) / core.CHAMPION_DIR / LOCK)


# --- the task --------------------------------------------------------------------------------------


def promote(
    root: str, tensors_paths: list[str], model_path: str, run_id: str, tolerance: float
) -> tuple[dict[str, Any], str, str | None]:
    """Under the pointer's lock: read the champion, score both models on this run's test rows, decide, swap the
    pointer if promoted. Returns the ``promotion`` block, the log level's name and the pointer if it was written."""
    trained = core.read_pt(model_path)
    partitions = [core.read_pt(p) for p in tensors_paths]
    challenger_mse = mse(partitions, trained["weights"], trained["bias"])
    level = "info"
    with lock(root):
        try:
            champion = read_champion(root)
            unusable = None
        except (ValueError, core.IntegrityError) as exc:
            champion, unusable = None, f"the champion cannot be used ({exc}): promoted in its place"
            level = "warning"
        champion_mse, why = None, unusable
        if champion is not None and champion["model_sha256"] == core.read_manifest(model_path)["sha256"]:
            reason = "this run's model is already the champion (same model file): unchanged"
            block = _block(True, reason, champion["model"], challenger_mse, challenger_mse)
            return block, level, None
        if champion is not None:
            same = list(champion["features"]) == list(trained["features"]) and champion["target"] == trained["target"]
            if same:
                model = core.read_pt(champion["model"])
                champion_mse = mse(partitions, model["weights"], model["bias"])
            else:
                why = (
                    f"champion trained on features {champion['features']} → {champion['target']}, this run on "
                    f"{list(trained['features'])} → {trained['target']}: not comparable, promoted"
                )
        promoted, reason = decide(challenger_mse, champion_mse, tolerance, why)
        if promoted:
            write_champion(root, model_path, run_id, trained, challenger_mse)
            path = str(Path(model_path).resolve())
        else:
            path, level = champion["model"], "warning"
    wrote = str(pointer_path(root)) if promoted else None
    return _block(promoted, reason, path, champion_mse, challenger_mse), level, wrote


def _block(promoted: bool, reason: str, champion: str, champion_mse: float | None, challenger_mse: float) -> dict:
    finite = champion_mse is not None and math.isfinite(champion_mse)
    return {
        "promoted": promoted,
        "reason": reason,
        "champion": champion,
        "champion_test_mse": float(champion_mse) if finite else None,
        "challenger_test_mse": float(challenger_mse),
    }


@task(name="promote_model", cache_policy=NO_CACHE, persist_result=False)
def promote_model(tensors_paths: list[str], model_path: str, run_id: str, tolerance: float, root: str) -> dict:
    """Champion vs challenger on this run's test rows; moves the champion pointer when the challenger wins."""
    block, level, wrote = promote(root, tensors_paths, model_path, run_id, tolerance)
    getattr(get_run_logger(), level)(
        "read %s, %s and %d partition(s)' test rows; %s; wrote %s; champion: %s",
        pointer_path(root),
        model_path,
        len(tensors_paths),
        block["reason"],
        wrote or "nothing (the pointer stays)",
        block["champion"],
    )
    return block


def enforce(block: dict[str, Any], required: bool) -> None:
    """With ``--require-promotion``, a challenger that was not promoted fails the run (one line)."""
    if required and not block["promoted"]:
        raise NotPromoted(f"--require-promotion: {block['reason']}")


def describe(block: dict[str, Any]) -> str:
    """One line for the printed summary."""
    verdict = "promoted" if block["promoted"] else "NOT promoted"
    return f"promotion: {verdict} ({block['reason']}); champion {block['champion']}"
