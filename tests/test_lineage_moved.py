"""A store names the files inside it relative to its root: moved or renamed, it still traces, caches and predicts.

Manifests' inputs, run records and the champion's manifest used to hold absolute paths, so lineage failed once
the store folder moved. The user's source data, outside the store, stays named as given.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import stagecore as core
import storage
from conftest import ADVERTISING
from flows import lineage
from flows import predict as predict_flow
from flows.train import linear_regression
from storage.storepaths import recorded, resolved, store_of


@pytest.mark.no_server
def test_recorded_names_are_relative_inside_the_store_and_as_given_outside(tmp_path):
    root = tmp_path / "store"
    storage.prepare_root(root)
    inside = root / "train" / "0123456789abcdef" / "model.pt"
    assert recorded(root, inside) == "train/0123456789abcdef/model.pt"
    assert recorded(root, tmp_path / "data.csv") == str(tmp_path / "data.csv")
    assert recorded(root, "https://user:pw@host/a.csv?token=t") == "https://user:REDACTED@host/a.csv?token=REDACTED"
    assert resolved(root, "train/0123456789abcdef/model.pt") == str(inside)
    assert resolved(root, str(tmp_path / "data.csv")) == str(tmp_path / "data.csv")  # an older store's entry
    with pytest.raises(ValueError, match="outside the store"):
        resolved(root, "../elsewhere/model.pt")
    assert store_of(inside) == str(root) and store_of(root / storage.RUNS_DIR / "x.json") == str(root)
    assert store_of("data.csv") is None
    assert store_of("s3://bucket/s/train/0123456789abcdef/model.pt") == "s3://bucket/s"
    assert store_of("s3://bucket/s/runs/x.json") == "s3://bucket/s"


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    """A store trained in one folder, then renamed: (the first run's summary, the new root)."""
    base = tmp_path_factory.mktemp("moved")
    first = linear_regression(data=str(ADVERTISING), engine="stats", artifacts_dir=str(base / "before"))
    (base / "before").rename(base / "after")
    return first, base / "after"


def now(path: str, root: Path) -> Path:
    """Where a file of the renamed store is now."""
    return root / Path(path).relative_to(Path(path).parents[2])


def test_store_files_name_their_inputs_relative_to_the_root(moved):
    first, root = moved
    model = now(first["artifacts"]["train"]["model"], root)
    manifest = core.read_manifest(model)
    assert [i["path"].split("/")[0] for i in manifest["inputs"]] == ["tensorize", "accumulate"]
    ingest = core.read_manifest(now(first["artifacts"]["ingest"]["table"], root))
    assert ingest["inputs"][0]["path"] == str(ADVERTISING)  # the source data, outside the store
    [record] = (root / storage.RUNS_DIR).iterdir()
    stages = json.loads(record.read_text())["stages"]
    assert stages["train"]["artifacts"]["model"]["path"] == model.relative_to(root).as_posix()
    [pointer] = root.glob(f"{storage.CHAMPION_DIR}/*/*/{storage.CHAMPION_GENERATIONS}/00000001.json")  # its model's
    champion = core.read_manifest(pointer)
    assert champion["inputs"][0]["path"] == model.relative_to(root).as_posix()


def test_lineage_traces_a_moved_store(moved, capsys):
    first, root = moved
    model = now(first["artifacts"]["train"]["model"], root)
    assert lineage.main([str(model)]) == 0
    report = lineage.explain(model)
    assert report["ok"] and [s["path"] for s in report["sources"]] == [str(ADVERTISING)]
    assert {"ingest", "drop_index", "split", "tensorize", "accumulate", "train"} <= set(report["parameters"])
    [record] = (root / storage.RUNS_DIR).iterdir()
    assert lineage.main([str(record)]) == 0
    traced = lineage.explain(record)
    assert traced["ok"] and all(str(root) in t["path"] for t in traced["artifacts"])
    [pointer] = root.glob(f"{storage.CHAMPION_DIR}/*/*/{storage.CHAMPION_GENERATIONS}/00000001.json")
    assert lineage.main([str(pointer)]) == 0
    capsys.readouterr()


def test_a_rerun_against_a_moved_store_is_fully_cached_and_predicts(moved, capsys):
    first, root = moved
    again = linear_regression(data=str(ADVERTISING), engine="stats", artifacts_dir=str(root))
    assert all(again["cached"].values()), again["cached"]
    assert again["weights"] == first["weights"]
    assert again["promotion"]["champion"] == str(now(first["artifacts"]["train"]["model"], root))
    code = predict_flow.main(["--data", str(ADVERTISING), "--artifacts-dir", str(root), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert lineage.explain(summary["predictions"])["ok"]


def test_an_older_stores_absolute_entries_still_trace(tmp_path):
    summary = linear_regression(data=str(ADVERTISING), engine="stats", artifacts_dir=str(tmp_path / "old"))
    model = Path(summary["artifacts"]["train"]["model"])
    mpath = core.manifest_path(model)
    manifest = json.loads(mpath.read_text())
    for entry in manifest["inputs"]:  # as the previous version wrote them
        entry["path"] = str(resolved(tmp_path / "old", entry["path"]))
    mpath.write_text(json.dumps(manifest))
    report = lineage.explain(model)
    assert report["ok"] and [s["path"] for s in report["sources"]] == [str(ADVERTISING)]
