"""One champion per model (issue 23): a model is its target, its set of features and its name; a run on other data
gets its own champion and never replaces another model's; predict picks the champion whose features the data has.
A store from before (one champion for every run) keeps its champion, and --clean-artifacts still proves every
champion file."""

# ruff: noqa: F811  (store and tensors are test_promotion's fixtures, imported, then named by the tests)

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pytest
import torch
from test_promotion import FEATURES, TRUE_W, model, run, save, store, tensors  # noqa: F401  (fixtures)

import stagecore as core
import storage
from conftest import ADVERTISING
from flows import predict as predict_flow
from flows.train import main as train_main
from lifecycle import champion, decision
from lifecycle.champion import Model
from storage.clean import inventory
from tasks import promote

Y = Model.of("y", FEATURES)


def pointers(root: Path) -> dict[str, bytes]:
    """Every file under champion/, by path relative to the root: what a promotion may not touch."""
    base = root / storage.CHAMPION_DIR
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


@pytest.mark.no_server
def test_a_model_is_its_target_feature_set_and_name_and_no_column_is_a_path():
    assert Model.of("y", ["b", "a"]) == Model.of("y", ["a", "b"]) != Model.of("z", ["a", "b"])
    assert Model.of("y", ["a", "b"], "ads") != Model.of("y", ["a", "b"])
    nasty = Model.of("../../t", ["a/b", "..", "\x1b[31m"])
    assert nasty.folder == f"champion/by-columns/{nasty.id}/gen" and len(nasty.id) == 16 and "/.." not in nasty.folder
    assert "'\\x1b[31m'" in nasty.label and "\x1b" not in nasty.label  # a control character is shown, not sent
    assert Model.of("y", ["a"], "ads.v2").folder == "champion/by-name/ads.v2/gen"
    assert Model.of("y", ["a"], "ads").label == "ads (y ← a)" and Y.label == "y ← a, b"
    for bad in ("../x", "a/b", ".x", "x" * 65, ""):
        with pytest.raises(ValueError, match="not a model's name"):
            Model.of("y", ["a"], bad)


@pytest.mark.no_server
def test_a_run_on_other_columns_gets_its_own_champion_and_the_first_keeps_its_own(store, tensors):
    first = run(store, tensors, model(store, "first", scale=0.9))
    assert first["promoted"] and first["reason"] == "first model of its kind: promoted" and first["model"] == Y.label
    before = pointers(store)
    other = run(store, tensors, model(store, "other", scale=0.1, features=["p", "q"]))  # much worse, other columns
    assert other["promoted"] and other["reason"] == "first model of its kind: promoted"
    assert other["model"] == "y ← p, q" and other["champion_test_mse"] is None
    assert all(pointers(store)[path] == content for path, content in before.items())  # the first model's untouched
    assert champion.champion_model_path(store, Y) == first["champion"]
    assert champion.champion_model_path(store, Model.of("y", ["p", "q"])) == other["champion"]
    assert champion.models(store) == [Y, Model.of("y", ["p", "q"])]
    with pytest.raises(ValueError, match="2 models have a champion"):
        champion.champion_model_path(store)  # no model named: which one is not a guess
    # the same model still competes with its own champion, and nothing else
    worse = run(store, tensors, model(store, "worse", scale=0.5))
    assert not worse["promoted"] and worse["champion"] == first["champion"]
    assert worse["champion_test_mse"] == pytest.approx(first["challenger_test_mse"], rel=1e-12)
    better = run(store, tensors, model(store, "better", scale=1.0))
    assert better["promoted"] and better["champion_test_mse"] == pytest.approx(first["challenger_test_mse"], rel=1e-12)
    assert champion.champion_model_path(store, Model.of("y", ["p", "q"])) == other["champion"]
    # a failed run takes back its own model's generation, and no other model's
    assert champion.take_back(store, "run-better") and champion.champion_model_path(store, Y) == first["champion"]
    assert champion.champion_model_path(store, Model.of("y", ["p", "q"])) == other["champion"]


@pytest.mark.no_server
def test_the_same_features_in_another_order_are_the_same_model_scored_column_for_column(store, tensors):
    run(store, tensors, model(store, "champ", scale=1.0))
    rows = core.read_pt(tensors)
    swapped = save({"x_test": rows["x_test"][:, [1, 0]], "y_test": rows["y_test"]}, store / "tensorize/s/tensors.pt")
    obj = {"weights": TRUE_W.flip(0) * 0.9, "bias": 0.5, "features": ["b", "a"], "target": "y", "name": "ba"}
    challenger = save(obj, store / "train" / "ba" / "model.pt")
    block = promote.promote(str(store), [swapped], challenger, "run-ba", 0.0)[0]
    # the champion's weights are put in this run's column order: its MSE is its own, so it stays (0.9 is worse)
    assert not block["promoted"] and block["model"] == Y.label
    assert block["champion_test_mse"] == pytest.approx(decision.mse([rows], TRUE_W, 0.5), rel=1e-12)


@pytest.mark.no_server
def test_a_name_is_a_model_of_its_own_and_is_not_given_to_other_columns(store, tensors):
    unnamed = run(store, tensors, model(store, "unnamed", scale=1.0))
    ads = Model.of("y", FEATURES, "ads")
    block = promote.promote(str(store), [tensors], model(store, "ads", scale=0.5), "run-ads", 0.0, model=ads)[0]
    assert block["promoted"] and block["reason"] == "first model of its kind: promoted" and block["model"] == ads.label
    assert (store / "champion/by-name/ads/gen/00000001.json").is_file()
    assert json.loads((store / "champion/by-name/ads/gen/00000001.json").read_text())["model_name"] == "ads"
    assert champion.champion_model_path(store, Y) == unnamed["champion"]  # a worse named model: another champion
    other = Model.of("z", FEATURES, "ads")
    refused = promote.promote(str(store), [tensors], model(store, "z", target="z"), "run-z", 0.0, model=other)
    block, level, wrote = refused
    assert not block["promoted"] and level == "warning" and wrote is None
    assert "another model under the same name, not promoted; pass another --model-name" in block["reason"]
    assert champion.champion_model_path(store, ads).endswith("train/ads/model.pt")


def legacy_pointer(root: Path, rel: str, path: str, target: str = "y", features=FEATURES) -> None:
    """A pointer as a store from before 2026-12-10 holds it: version 1, no name, one for every model."""
    body = {
        "champion_version": 1,
        "model": Path(path).relative_to(root).as_posix(),
        "model_sha256": storage.sha256_file(path),
        "flow_run_id": "old-run",
        "features": list(features),
        "target": target,
        "test_mse": 1.0,
        "promoted_at": "2026-12-01T00:00:00+00:00",
    }
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(json.dumps(body))


@pytest.mark.parametrize("rel", ["champion/gen/00000001.json", "champion/champion.json"])
@pytest.mark.no_server
def test_a_store_from_before_keeps_its_champion_as_the_champion_of_its_model(store, tensors, rel):
    old = model(store, "old", scale=0.9)
    legacy_pointer(store, rel, old)
    assert champion.models(store) == [Y] and champion.champion_model_path(store, Y) == str(Path(old).resolve())
    other = run(store, tensors, model(store, "other", target="z"))  # another model: its first
    assert other["promoted"] and other["reason"] == "first model of its kind: promoted"
    assert champion.champion_model_path(store, Y) == str(Path(old).resolve())  # the old champion stays its model's
    worse = run(store, tensors, model(store, "worse", scale=0.5))  # the same model competes with the old champion
    assert not worse["promoted"] and worse["champion"] == str(Path(old).resolve())
    better = run(store, tensors, model(store, "better", scale=1.0))
    assert better["promoted"] and better["champion_test_mse"] == pytest.approx(worse["champion_test_mse"])
    assert (store / Y.folder / "00000001.json").is_file() and (store / rel).is_file()  # never rewritten
    assert champion.champion_model_path(store, Y).endswith("train/better/model.pt")
    assert champion.models(store) == [Y, Model.of("z", FEATURES)]


@pytest.mark.no_server
def test_clean_proves_every_champion_file_and_nothing_else(store, tensors):
    run(store, tensors, model(store, "a", scale=0.9))
    run(store, tensors, model(store, "b", scale=1.0))
    run(store, tensors, model(store, "z", target="z"))
    promote.promote(str(store), [tensors], model(store, "n"), "run-n", 0.0, model=Model.of("y", FEATURES, "n.1"))
    legacy_pointer(store, "champion/gen/00000001.json", model(store, "old"))
    ours = set(pointers(store))
    assert len(ours) == 2 * 4 + 1  # four generations and their manifests, the old pointer
    digest = Y.id
    theirs = {  # named like the store's, but not its content, or in a folder no model can have
        f"champion/by-columns/{digest}/gen/notes.txt": b"mine",
        f"champion/by-columns/{digest}/gen/00000009.json": b"{}",
        "champion/by-columns/not-a-digest/gen/00000001.json": (store / Y.folder / "00000001.json").read_bytes(),
        "champion/by-name/.hidden/gen/00000001.json": (store / Y.folder / "00000001.json").read_bytes(),
        "champion/by-name/n.1/readme.json": b"{}",
        f"champion/by-columns/{digest}/gen/00000001.json.manifest.json.bak": b"{}",
    }
    for rel, content in theirs.items():
        (store / rel).parent.mkdir(parents=True, exist_ok=True)
        (store / rel).write_bytes(content)
    found = inventory(storage.open_store(store))
    assert {f for f in found.owned if f.startswith("champion/")} == ours
    assert {f for f in found.foreign if f.startswith("champion/")} == set(theirs)


@pytest.mark.no_server
def test_predict_picks_the_model_whose_features_the_data_has(store, tensors):
    run(store, tensors, model(store, "ab"))
    run(store, tensors, model(store, "a", features=["a"]))
    run(store, tensors, model(store, "pq", features=["p", "q"], target="z"))
    found = predict_flow.candidates(str(store), None)
    assert predict_flow.pick(found, {"a", "b", "c"}, "d.csv") == Y  # a and a, b fit: the most features
    assert predict_flow.pick(found, {"a", "q"}, "d.csv") == Model.of("y", ["a"])
    with pytest.raises(core.InputError) as none:
        predict_flow.pick(found, {"x"}, "d.csv")
    message = str(none.value)
    assert message.startswith("d.csv: no model's features are all among its columns (models: ")
    assert "y ← a, b [id " in message and "lacks 'a', 'b'" in message and "z ← p, q" in message
    assert "--model-name NAME, or --model PATH" in message and "\n" not in message
    run(store, tensors, model(store, "pq-y", features=["p", "q"], target="y"))  # same columns, another target
    with pytest.raises(core.InputError, match="2 models fit its columns equally"):
        predict_flow.pick(predict_flow.candidates(str(store), None), {"p", "q"}, "d.csv")
    chosen = predict_flow.candidates(str(store), Model.of("z", ["p", "q"]).id)  # an unnamed model by its id
    assert predict_flow.pick(chosen, {"p", "q"}, "d.csv") == Model.of("z", ["p", "q"])
    with pytest.raises(core.InputError, match="--model-name nope: no model of that name or id"):
        predict_flow.candidates(str(store), "nope")


def test_a_second_dataset_gets_its_own_champion_and_predict_on_the_first_still_works(artifacts, capsys, tmp_path):
    """The issue's case, end to end: Advertising, then other data with other feature names."""
    assert train_main(["--artifacts-dir", str(artifacts), "--json"]) == 0
    ads = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    gen = np.random.default_rng(0)
    x = gen.normal(size=(120, 2))
    y = 3 * x[:, 0] - 2 * x[:, 1] + 1 + 0.1 * gen.normal(size=120)
    other = tmp_path / "other.csv"
    other.write_text("u,v,w\n" + "".join(f"{a},{b},{c}\n" for a, b, c in zip(x[:, 0], x[:, 1], y, strict=True)))
    args = ["--artifacts-dir", str(artifacts), "--data", str(other), "--target", "w", "--index-column", "none"]
    assert train_main([*args, "--model-name", "uv", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    uv = json.loads(out[-1])["promotion"]
    assert uv["promoted"] and uv["reason"] == "first model of its kind: promoted" and uv["model"] == "uv (w ← u, v)"
    assert any(line.startswith("promotion: promoted (first model of its kind") for line in out)
    sales = Model.of("sales", ["TV", "radio", "newspaper"])
    assert champion.champion_model_path(artifacts, sales) == ads["promotion"]["champion"]  # kept its champion

    code = predict_flow.main(["--data", str(ADVERTISING), "--artifacts-dir", str(artifacts), "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert code == 0 and summary["model"] == ads["promotion"]["champion"] and summary["champion_of"] == sales.label
    assert f"(the champion of {sales.label})" in out[0]
    saved = torch.load(summary["model"], weights_only=True)
    table = pacsv.read_csv(ADVERTISING)
    features = np.column_stack([table[f].to_numpy().astype(np.float64) for f in saved["features"]])
    got = core.read_parquet(summary["predictions"])["prediction"].to_numpy()
    np.testing.assert_allclose(got, features @ saved["weights"].double().numpy() + float(saved["bias"]), rtol=1e-9)

    code = predict_flow.main(["--data", str(other), "--index-column", "none", "--artifacts-dir", str(artifacts)])
    assert code == 0 and "(the champion of uv (w ← u, v))" in capsys.readouterr().out

    stranger = tmp_path / "stranger.csv"
    stranger.write_text("k,l\n1,2\n")
    code = predict_flow.main(["--data", str(stranger), "--index-column", "none", "--artifacts-dir", str(artifacts)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no model's features are all among its columns" in err
    assert "sales ← TV, newspaper, radio [id " in err and "uv (w ← u, v), lacks 'u', 'v'" in err
