"""The registry (lifecycle/registry.py, flows/registry.py): aliases of a model's champion, set and rollback through
the CLI and its ``--json``, racing rollbacks on a folder and on moto's S3, predict's ``--model @ALIAS``, and
clean's knowledge of alias files. The store is built with `tasks.promote.promote` (no Prefect server)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from test_promotion import model, save

import storage
from flows import history as history_cli
from flows import predict as predict_cli
from flows import registry as cli
from lifecycle import champion, registry
from moto_s3 import s3_server, use_env
from storage import remote
from tasks import events, promote

pytestmark = pytest.mark.no_server


@pytest.fixture(autouse=True)
def no_events(monkeypatch):
    """No Prefect server here: the registry sends its events only where one is configured."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store whose model had two champions: ``a`` (worse), then ``b``."""
    root = Path(storage.prepare_root(tmp_path / "store"))
    tensors = _tensors(root)
    for name, scale in (("a", 0.5), ("b", 1.0)):
        assert promote.promote(str(root), [tensors], model(root, name, scale), f"run-{name}", 0.0)[0]["promoted"]
    return root


def _tensors(root: Path) -> str:
    import torch

    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    return save({"x_test": x, "y_test": (x @ torch.tensor([2.0, -1.0]) + 0.5).unsqueeze(1)}, root / "t" / "k" / "t.pt")


def call(capsys, *args: str) -> tuple[int, dict | str]:
    code = cli.main([*args, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else err


def test_list_show_set_rollback_through_the_cli(store, capsys):
    root = str(store)
    code, listed = call(capsys, "list", "--artifacts-dir", root)
    assert code == 0 and set(listed["aliases"]) == {"champion", "previous"}
    assert listed["aliases"]["champion"]["model"] == "train/b/model.pt"
    assert listed["aliases"]["champion"]["run"] == "run-b" and listed["aliases"]["champion"]["generation"] == 2
    assert listed["aliases"]["previous"]["model"] == "train/a/model.pt"

    code, staged = call(capsys, "set", "staging", "@previous", "--artifacts-dir", root, "--reason", "try a")
    assert code == 0 and staged["changed"] and staged["model"] == "train/a/model.pt" and staged["run"] == "run-a"
    assert "try a" in staged["reason"]
    code, again = call(capsys, "set", "staging", str(store / "train" / "a" / "model.pt"), "--artifacts-dir", root)
    assert code == 0 and not again["changed"] and again["generation"] == 1  # already names it: nothing written
    code, served = call(capsys, "set", "served", "train/b/model.pt", "--artifacts-dir", root)
    assert code == 0 and served["model"] == "train/b/model.pt" and served["test_mse"] > 0
    code, shown = call(capsys, "show", "@staging", "--artifacts-dir", root)
    assert code == 0 and shown["alias"] == "staging" and shown["model"] == "train/a/model.pt"

    code, rolled = call(capsys, "rollback", "--artifacts-dir", root, "--reason", "b drifts")
    assert code == 0 and rolled["changed"] and rolled["generation"] == 3 and rolled["model"] == "train/a/model.pt"
    assert rolled["reason"].startswith("rollback from generation 2 (train/b/model.pt) to 1: by ")
    assert rolled["reason"].endswith(": b drifts")
    assert champion.read_champion(root)["flow_run_id"] == "run-a"
    _, listed = call(capsys, "list", "--artifacts-dir", root)
    assert [listed["aliases"][a]["model"] for a in ("champion", "previous", "served", "staging")] == [
        "train/a/model.pt",
        "train/b/model.pt",
        "train/b/model.pt",
        "train/a/model.pt",
    ]
    # every change is in the history, after the runs
    history = history_cli.main(["--artifacts-dir", root, "--json"])
    body = json.loads(capsys.readouterr().out)
    assert history == 0 and [(c["alias"], c["model"]) for c in body["registry"]] == [
        ("staging", "train/a/model.pt"),
        ("served", "train/b/model.pt"),
        ("champion", "train/a/model.pt"),
    ]
    # a text listing, one line per alias
    assert cli.main(["list", "--artifacts-dir", root]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["champion", "train/a/model.pt"]


def test_predict_resolves_previous_after_a_rollback_to_the_old_model(store, capsys):
    root = str(store)
    kind = champion.models(root)[0]
    assert predict_cli.resolve_model("@previous", root, kind) == str(store / "train/a/model.pt")
    assert cli.main(["rollback", "--artifacts-dir", root]) == 0
    assert predict_cli.resolve_model("@previous", root, kind) == str(store / "train/b/model.pt")
    assert predict_cli.resolve_model("@champion", root, kind) == str(store / "train/a/model.pt")
    assert predict_cli.resolve_model("champion", root, kind) == str(store / "train/a/model.pt")
    with pytest.raises(storage.InputError, match="no alias staging"):
        predict_cli.resolve_model("@staging", root, kind)
    with pytest.raises(storage.InputError, match="not an alias"):
        predict_cli.alias_of("@Bad/name")


def test_refusals_are_one_line_exit_2(store, tmp_path, capsys):
    root = str(store)
    for args, says in (
        (["set", "champion", "@previous"], "cannot be set"),
        (["set", "previous", "@champion"], "cannot be set"),
        (["set", "Bad", "@champion"], "not an alias name"),
        (["set", "../x", "@champion"], "not an alias name"),
        (["set", "staging", "../../etc/passwd"], "outside the artifacts folder"),
        (["set", "staging", "@nothing"], "no alias nothing"),
        (["show", "staging"], "no alias staging"),
        (["show"], "takes 1 argument"),
        (["set", "staging", "@champion", "--model-name", "other"], "no model of that name"),
    ):
        code = cli.main([*args, "--artifacts-dir", root])
        err = capsys.readouterr().err
        assert code == 2 and says in err and err.count("\n") == 1, (args, err)
    other = model(store, "z", 1.0, target="w")  # another model's file
    assert cli.main(["set", "staging", other, "--artifacts-dir", root]) == 2
    assert "not of" in capsys.readouterr().err

    one = Path(storage.prepare_root(tmp_path / "one"))
    assert promote.promote(str(one), [_tensors(one)], model(one, "a"), "run-a", 0.0)[0]["promoted"]
    code, err = call(capsys, "rollback", "--artifacts-dir", str(one))
    assert code == 2 and "no previous champion" in err and err.count("\n") == 1
    assert champion.latest_generation(storage.open_store(str(one))) == 1


def race(root: str) -> list[dict]:
    """Two rollbacks that both read generation 2 before either creates generation 3."""
    create, both_read = champion.create_pointer, threading.Barrier(2, timeout=60)
    results: list[dict] = []

    def create_after_both_read(*args, **kwargs):
        both_read.wait()
        return create(*args, **kwargs)

    def roll() -> None:
        results.append(registry.rollback(root, champion.models(root)[0], "race"))

    champion.create_pointer = create_after_both_read
    try:
        threads = [threading.Thread(target=roll) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        champion.create_pointer = create
    return results


def test_two_racing_rollbacks_on_a_folder_make_one_generation(store):
    results = race(str(store))
    assert sorted(r["changed"] for r in results) == [False, True]
    assert {r["generation"] for r in results} == {3}
    assert sorted(p.name for p in (store / champion.models(str(store))[0].folder).glob("*[0-9].json")) == [
        "00000001.json",
        "00000002.json",
        "00000003.json",
    ]
    assert champion.read_champion(str(store))["model"] == str(store / "train/a/model.pt")


def test_a_rollback_that_loses_to_a_promotion_refuses(store, monkeypatch):
    kind = champion.models(str(store))[0]
    create = champion.create_pointer

    def promote_first(st, rel, pointer):
        b = registry.entries(str(store), kind)["champion"]["sha256"]
        other = {k: v for k, v in pointer.items() if k != "reason"} | {"model": "train/b/model.pt", "model_sha256": b}
        assert create(st, rel, other)
        return create(st, rel, pointer)

    monkeypatch.setattr(champion, "create_pointer", promote_first)
    with pytest.raises(registry.Conflict, match="changed while rolling back"):
        registry.rollback(str(store), kind, "lost")


def test_clean_removes_alias_files(store, capsys):
    assert cli.main(["set", "staging", "@previous", "--artifacts-dir", str(store)]) == 0
    assert cli.main(["rollback", "--artifacts-dir", str(store)]) == 0
    capsys.readouterr()
    aliases = list(store.rglob("aliases/staging/gen/*"))
    assert len(aliases) == 2  # the pointer and its manifest
    (store / "champion" / "notes.json").write_text("{}")  # not the store's: stays
    storage.clear(store)
    left = sorted(p.relative_to(store).as_posix() for p in (store / "champion").rglob("*") if p.is_file())
    assert left == ["champion/notes.json"]  # every pointer (champion's and alias's) and manifest proven and gone


def test_registry_events_name_the_model_and_why(store):
    entry = registry.rollback(str(store), champion.models(str(store))[0], "why")
    name, resource, payload = events.registry_event(entry, alias="champion", model_label="y ← a, b", store=str(store))
    assert name == events.ROLLED_BACK and payload["model"] == "train/a/model.pt" and payload["generation"] == 3
    assert resource["prefect.resource.id"] == events.RESOURCE_PREFIX + entry["sha256"][:16]
    assert events.registry_event(entry, alias="staging", model_label="m", store=str(store))[0] == events.ALIAS_SET


BUCKET = "linreg-registry"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("moto"), BUCKET) as env, use_env(env):
        yield env


def test_two_racing_rollbacks_on_s3_make_one_generation(s3, tmp_path):
    url = f"s3://{BUCKET}/race"
    storage.prepare_root(url)
    tensors = _tensors(tmp_path)
    for name, scale in (("a", 0.5), ("b", 1.0)):
        local = model(storage.open_store(url).work, name, scale)
        remote.upload(local, f"{url}/train/{name}/model.pt")
        remote.upload(local + storage.MANIFEST_SUFFIX, f"{url}/train/{name}/model.pt{storage.MANIFEST_SUFFIX}")
        assert promote.promote(url, [tensors], local, f"run-{name}", 0.0)[0]["promoted"]
    results = race(url)
    assert sorted(r["changed"] for r in results) == [False, True]
    store = storage.open_store(url)
    kind = champion.models(url)[0]
    assert champion.latest_generation(store, kind) == 3
    assert storage.public(champion.champion_model_path(url)) == f"{url}/train/a/model.pt"
    assert registry.set_alias(url, kind, "served", "@previous", "s3")["model"] == "train/b/model.pt"
    assert registry.entries(url, kind)["served"]["generation"] == 1
