"""Artifacts on an S3-protocol server (moto's standalone server, with IAM checks on): the whole store there,
with the model's lifecycle (champion, promotion, run history, predict).

The server starts once for the module on a free loopback port (tests/moto_s3.py); the credentials are a real IAM
user's key made on it, so a wrong key is refused as it would be by AWS, and the secret is a string no artifact
may contain. Three training runs on one prefix (`lifecycle`) are made once and read by several tests.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

import stagecore as core
import storage
import storage.atomic
from conftest import ADVERTISING, ROOT
from flows import history as history_cli
from flows import lineage, train
from flows import predict as predict_cli
from lifecycle import champion
from lifecycle.history import read_history
from moto_s3 import s3_server, use_env
from stagecore.manifest import describe_pt
from storage import remote
from storage.atomic import write_json
from tasks import promote

boto3 = pytest.importorskip("boto3")
s3fs = pytest.importorskip("s3fs")

BUCKET = "linreg-test"
STAGES = set(train.STAGES)
OUTPUT: list[str] = []  # everything the runs printed, searched for the secret at the end
LIFE = f"s3://{BUCKET}/life"
# two standardized epochs: a worse model than the default's (whitened, one epoch is the optimum); off the optimum,
# so promoted only when asked, which these tests do: the champion-vs-challenger rule is what they are about
WORSE = ("--epochs", "2", "--tol", "0", "--scaling", "standardize", "--promote-off-optimum")


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[dict[str, str]]:
    """moto's server with auth enforced (tests/moto_s3.py), its credentials in this process's environment."""
    with s3_server(tmp_path_factory.mktemp("moto"), BUCKET) as env, use_env(env):
        yield env


def fs():
    """The very filesystem object the store's code uses (same options, so the same cached instance and listings)."""
    return remote.filesystem(f"s3://{BUCKET}")[0]


def run(capsys, *args: str) -> tuple[int, dict]:
    code = train.main([*args, "--json"])
    out, err = capsys.readouterr()
    OUTPUT.extend([out, err])
    summary = json.loads(out.strip().splitlines()[-1]) if code == 0 else {}
    return code, summary


def cli(capsys, main, *args: str) -> dict:
    """A CLI's ``--json`` line (flows.history, flows.predict), exit status 0."""
    code = main([*args, "--json"])
    out, err = capsys.readouterr()
    OUTPUT.extend([out, err])
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


_LIFE: dict[str, dict] = {}


def lifecycle(capsys) -> dict[str, dict]:
    """Three runs on `LIFE`, one after the other, made once for the tests that read them: ``a`` (--epochs 2,
    cold), ``b`` (the default: better, so promoted over a), ``c`` (a again: every stage cached, a's model, worse
    than the champion b: not promoted)."""
    if not _LIFE:
        for name, args in (("a", WORSE), ("b", ()), ("c", WORSE)):
            code, summary = run(capsys, *args, "--artifacts-dir", LIFE)
            assert code == 0, name
            _LIFE[name] = summary
    return _LIFE


def generations(url: str) -> dict[int, dict]:
    """The champion's pointer generations on the store: number → pointer (each has its manifest)."""
    found = fs().find(f"{url.removeprefix('s3://')}/champion")
    pointers = sorted(p for p in found if p.endswith(".json") and not p.endswith(storage.MANIFEST_SUFFIX))
    assert sorted(found) == sorted([*pointers, *(p + storage.MANIFEST_SUFFIX for p in pointers)])
    out = {}
    for path in pointers:
        assert path.rsplit("/", 2)[-2] == "gen"
        core.verify(f"s3://{path}")  # the pointer matches its manifest
        out[int(path.rsplit("/", 1)[1].removesuffix(".json"))] = json.loads(fs().cat_file(path))
    assert sorted(out) == list(range(1, len(out) + 1))
    return out


def no_local_url_folder() -> None:
    """A URL root never becomes a local folder named ``s3:`` (the per-key lock is a no-op on a store)."""
    assert not (Path.cwd() / "s3:").exists() and not (ROOT / "s3:").exists()


def test_cold_run_then_every_stage_cached_and_lineage_verifies(s3, capsys):
    runs = lifecycle(capsys)
    cold, warm = runs["a"], runs["c"]
    assert not any(cold["cached"].values())
    for files in cold["artifacts"].values():
        for path in files.values():
            assert path.startswith(LIFE + "/") and fs().exists(path) and fs().exists(path + ".manifest.json")
    assert cold["run_record"].startswith(f"{LIFE}/runs/")
    assert warm["cached"] == dict.fromkeys(STAGES, True)
    assert warm["weights"] == cold["weights"]
    report = lineage.explain(warm["run_record"])
    assert report["ok"] and report["sources"][0]["path"] == str(ADVERTISING)
    assert lineage.main([cold["artifacts"]["train"]["model"]]) == 0
    OUTPUT.append(capsys.readouterr().out)
    no_local_url_folder()


def test_flipped_byte_and_deleted_object_are_rebuilt(s3, capsys):
    url = f"s3://{BUCKET}/damage"
    code, first = run(capsys, "--artifacts-dir", url)
    assert code == 0
    tensors, model = first["artifacts"]["tensorize"]["tensors"], first["artifacts"]["train"]["model"]
    data = bytearray(fs().cat_file(tensors))
    data[len(data) // 2] ^= 0xFF
    fs().pipe_file(tensors, bytes(data))
    fs().rm_file(model)
    assert lineage.main([tensors]) == 1  # lineage sees it too
    OUTPUT.append(capsys.readouterr().out)
    code, again = run(capsys, "--artifacts-dir", url)
    assert code == 0
    assert not again["cached"]["tensorize"] and not again["cached"]["train"]
    assert again["cached"]["ingest"] and again["cached"]["accumulate"]  # same bytes rebuilt: same keys downstream
    rebuilt = again["artifacts"]["tensorize"]["tensors"]
    assert rebuilt != tensors and rebuilt.rsplit("/", 2)[1].endswith(".1")  # write-once: a new folder
    assert again["weights"] == first["weights"]
    assert lineage.main([rebuilt]) == 0
    assert core.verify(again["artifacts"]["train"]["model"])["stage"] == "train"  # checked in place on the store
    OUTPUT.append(capsys.readouterr().out)


def test_promotion_across_runs_on_s3(s3, capsys):
    runs = lifecycle(capsys)
    a, b, c = (runs[n]["promotion"] for n in "abc")
    models = {n: runs[n]["artifacts"]["train"]["model"] for n in "abc"}
    assert models["a"] == models["c"] != models["b"]
    assert a["promoted"] and a["champion_test_mse"] is None and a["champion"] == models["a"]
    # b is better: re-scored on b's test rows (the same split), a's MSE is the one a's run measured
    assert b["promoted"] and "not worse, promoted" in b["reason"] and b["champion"] == models["b"]
    assert b["champion_test_mse"] == pytest.approx(a["challenger_test_mse"], rel=1e-12)
    assert b["challenger_test_mse"] < b["champion_test_mse"]
    # c (a's model again) is worse than the champion b: not promoted, the champion stays
    assert not c["promoted"] and "worse, not promoted" in c["reason"] and c["champion"] == models["b"]
    assert c["champion_test_mse"] == pytest.approx(b["challenger_test_mse"], rel=1e-12)
    pointers = generations(LIFE)  # two promotions: two immutable generations, nothing else under champion/
    assert [pointers[n]["model"] for n in (1, 2)] == [m.removeprefix(LIFE + "/") for m in (models["a"], models["b"])]
    current = champion.read_champion(LIFE)  # downloaded and verified in the scratch mirror
    assert storage.public(current["model"]) == models["b"] and current == {**pointers[2], "model": current["model"]}
    assert current["model_sha256"] == core.read_manifest(models["b"])["sha256"]
    assert champion.champion_model_path(LIFE) == current["model"]


def test_history_via_flows_history_json(s3, capsys):
    runs = lifecycle(capsys)
    rows = cli(capsys, history_cli.main, "--artifacts-dir", LIFE)["runs"]
    assert [r["promoted"] for r in rows] == [True, True, False]
    assert [r["test_mse"] for r in rows] == [runs[n]["promotion"]["challenger_test_mse"] for n in "abc"]
    models = [runs[n]["artifacts"]["train"]["model"] for n in "abc"]
    assert [r["model"] for r in rows] == [m.removeprefix(LIFE + "/") for m in models]
    assert [r["params"]["epochs"] for r in rows] == [2, None, 2] and len({r["flow_run_id"] for r in rows}) == 3
    assert all(r["rows"] == 200 and r["params"]["artifacts_dir"] == LIFE for r in rows)
    assert rows[0]["time"] < rows[1]["time"] < rows[2]["time"]
    last = cli(capsys, history_cli.main, "--artifacts-dir", LIFE, "--last", "1")["runs"]
    assert [r["flow_run_id"] for r in last] == [rows[2]["flow_run_id"]]
    assert len(fs().find(f"{BUCKET}/life/history")) == 3  # one object per run
    assert history_cli.main(["--artifacts-dir", f"s3://{BUCKET}/no-store-here"]) == 2
    err = capsys.readouterr().err
    OUTPUT.append(err)
    assert "no artifacts store there" in err and len(err.strip().splitlines()) == 1


def expected(model_url: str) -> np.ndarray:
    saved = torch.load(io.BytesIO(fs().cat_file(model_url)), weights_only=True)
    table = pacsv.read_csv(ADVERTISING)
    x = np.column_stack([table[f].to_numpy().astype(np.float64) for f in saved["features"]])
    return x @ saved["weights"].double().reshape(-1).numpy() + float(saved["bias"])


def test_predict_with_the_champion_on_s3(s3, capsys):
    champion = lifecycle(capsys)["b"]["artifacts"]["train"]["model"]
    summary = cli(capsys, predict_cli.main, "--data", str(ADVERTISING), "--artifacts-dir", LIFE)
    assert summary["model"] == champion and summary["rows"] == 200
    out = summary["predictions"]
    assert out.startswith(f"{LIFE}/predict/") and fs().exists(out) and fs().exists(out + storage.MANIFEST_SUFFIX)
    table = pq.read_table(pa.BufferReader(fs().cat_file(out)))
    np.testing.assert_allclose(table["prediction"].to_numpy(), expected(champion), rtol=1e-6)
    report = lineage.explain(out)  # the prediction → the champion model → the training CSV, verified on the store
    assert report["ok"] and [s["path"] for s in report["sources"]] == [str(ADVERTISING)]
    model = next(i for i in report["artifact"]["inputs"] if i.get("stage") == "train")
    assert model["path"] == champion and report["parameters"]["train"]["cfg"]["epochs"] == 1000
    assert lineage.main([out]) == 0
    OUTPUT.append(capsys.readouterr().out)
    other = lifecycle(capsys)["a"]["artifacts"]["train"]["model"]  # --model: a model of the store, by its URL
    chosen = cli(capsys, predict_cli.main, "--data", str(ADVERTISING), "--artifacts-dir", LIFE, "--model", other)
    assert chosen["model"] == other and chosen["cached"]["ingest"] and chosen["predictions"] != out
    table = pq.read_table(pa.BufferReader(fs().cat_file(chosen["predictions"])))
    np.testing.assert_allclose(table["prediction"].to_numpy(), expected(other), rtol=1e-6)


def _save(obj: dict, path: Path) -> str:
    """A ``.pt`` with the manifest `core.verify` accepts (what a stage writes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    path.write_bytes(buffer.getvalue())
    manifest = {"sha256": storage.sha256_file(path), "size": path.stat().st_size, "format": "pt"}
    manifest.update(stage=path.parent.parent.name, schema=describe_pt(obj))  # a model's: stage train, its entries
    write_json(manifest, core.manifest_path(path))
    return str(path)


W = torch.tensor([2.0, -1.0])


def _test_rows(tmp_path: Path) -> str:
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    return _save({"x_test": x, "y_test": (x @ W + 0.5).unsqueeze(1)}, tmp_path / "tensors.pt")


def _model(url: str, name: str, scale: float) -> str:
    """A model ``scale`` times the true weights (1.0: the best) on the store at ``url``, as a stage leaves it:
    uploaded with its manifest, and in this process's scratch mirror."""
    local = storage.open_store(url).work / "train" / name / "model.pt"
    _save({"weights": W * scale, "bias": 0.5, "features": ["p", "q"], "target": "y", "name": name}, local)
    remote.upload(local, f"{url}/train/{name}/model.pt")
    remote.upload(core.manifest_path(local), f"{url}/train/{name}/model.pt{storage.MANIFEST_SUFFIX}")
    return str(local)


def test_a_failed_runs_promotion_is_taken_back_on_s3(s3, tmp_path):
    """A run that fails before its run record deletes its generation (docs/lifecycle.md), unless a later run has
    promoted over it."""
    url = f"s3://{BUCKET}/takeback"
    tensors = _test_rows(tmp_path)
    assert promote.promote(url, [tensors], _model(url, "worse", 0.5), "run-a", 0.0)[0]["promoted"]
    assert promote.promote(url, [tensors], _model(url, "best", 1.0), "run-b", 0.0)[0]["promoted"]
    assert not champion.take_back(url, "run-a")  # not the latest: a later run decided against it, it stays
    assert champion.take_back(url, "run-b")
    assert [p["flow_run_id"] for p in generations(url).values()] == ["run-a"]
    assert champion.read_champion(url)["flow_run_id"] == "run-a"
    assert not champion.take_back(url, "run-b")  # nothing of run-b's left


def test_two_promotions_racing_on_s3_end_as_if_one_ran_after_the_other(s3, tmp_path, monkeypatch):
    """b and c both decide against champion a (each waits for the other's read); c creates generation 2 first
    (b's create waits for c's), so b's conditional create of generation 2 loses, and b decides again, against c:
    not promoted. Ordered by events, not sleeps: a busy machine cannot reorder the race."""
    url = f"s3://{BUCKET}/race"
    tensors = _test_rows(tmp_path)

    def model(name: str, scale: float) -> str:
        return _model(url, name, scale)

    def race(name: str, path: str) -> dict:
        return promote.promote(url, [tensors], path, f"run-{name}", 0.0)[0]

    assert race("a", model("a", 0.5))["promoted"]
    read, create = champion.read_champion, champion.create_generation
    both_read, c_created, decided = threading.Barrier(2, timeout=120), threading.Event(), set()

    def read_then_wait(root, generation=None, model=None):
        champion = read(root, generation, model)
        name = threading.current_thread().name
        if name not in decided:  # a challenger's first read: neither decides before both have read champion a
            decided.add(name)
            both_read.wait()
        return champion

    def create_c_first(root, generation, *args, **kwargs):
        name = threading.current_thread().name
        if name == "b":
            assert c_created.wait(120), "c never created its generation"
        try:
            return create(root, generation, *args, **kwargs)
        finally:
            if name == "c":
                c_created.set()

    monkeypatch.setattr(champion, "read_champion", read_then_wait)
    monkeypatch.setattr(champion, "create_generation", create_c_first)
    paths = {"b": model("b", 0.8), "c": model("c", 1.0)}  # c is the best
    results = {}

    def challenger(name: str) -> None:
        results[name] = race(name, paths[name])

    threads = [threading.Thread(target=challenger, args=(n,), name=n) for n in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["c"]["promoted"] and results["c"]["champion"] == f"{url}/train/c/model.pt"
    assert not results["b"]["promoted"] and "decided again after 1 concurrent promotion" in results["b"]["reason"]
    assert results["b"]["champion"] == f"{url}/train/c/model.pt"  # b was compared with c, not with a
    pointers = generations(url)
    assert [p["model"] for p in pointers.values()] == ["train/a/model.pt", "train/c/model.pt"]
    monkeypatch.undo()
    assert storage.public(champion.champion_model_path(url)) == f"{url}/train/c/model.pt"


def test_an_unusable_champion_on_s3_is_replaced_and_a_store_error_keeps_it(s3, tmp_path, monkeypatch):
    url = f"s3://{BUCKET}/unusable"
    tensors = _test_rows(tmp_path)
    assert promote.promote(url, [tensors], _model(url, "best", 1.0), "run-1", 0.0)[0]["promoted"]
    worse = _model(url, "worse", 0.5)

    def broken_download(url: str, local: Path) -> None:
        raise core.IntegrityError(f"{url}: cannot be downloaded (connection reset)")

    monkeypatch.setattr(remote, "download", broken_download)
    with pytest.raises(core.InputError, match="cannot be downloaded") as refused:  # the object is there
        promote.promote(url, [tensors], worse, "run-2", 0.0)
    assert not isinstance(refused.value, core.IntegrityError) and len(generations(url)) == 1  # champion kept
    monkeypatch.undo()
    fs().rm_file(f"{url}/train/best/model.pt")  # the champion's model is gone: it cannot be used
    with pytest.raises(core.IntegrityError, match="missing"):
        champion.read_champion(url)
    block = promote.promote(url, [tensors], worse, "run-3", 0.0)[0]
    assert block["promoted"] and "cannot be used" in block["reason"]
    assert block["champion"] == f"{url}/train/worse/model.pt"
    assert [p["model"] for p in generations(url).values()] == ["train/best/model.pt", "train/worse/model.pt"]


def test_two_concurrent_runs_on_one_prefix(s3, capsys):
    """Two runs at once on one prefix: the stages they share (same data, same split) race for the same keys,
    and both race to promote their (different) models. Both complete; one consistent champion, the better."""
    url = f"s3://{BUCKET}/together"
    command = [sys.executable, "-m", "flows.train", "--artifacts-dir", url, "--json"]
    commands = [[*command, *extra] for extra in (WORSE, ())]
    procs = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for command in commands
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    OUTPUT.extend(outs)
    assert [p.returncode for p in procs] == [0, 0], outs
    worse, better = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    records = [p for p in fs().find(f"{BUCKET}/together/.cache")]
    assert {p.split("/")[-2] for p in records} == STAGES
    for record in records:
        body = json.loads(fs().cat_file(record))
        for relative in body["outputs"].values():
            assert lineage.main([f"{url}/{relative}"]) == 0  # whole, and matching its manifest
    for summary in (worse, better):
        assert lineage.explain(summary["run_record"])["ok"]  # each run's own files are whole too
    # promotion: as if one ran after the other, whichever promoted first
    models = {n: s["artifacts"]["train"]["model"].removeprefix(url + "/") for n, s in (("w", worse), ("b", better))}
    pointers = generations(url)
    assert better["promotion"]["promoted"] and pointers[max(pointers)]["model"] == models["b"]
    if worse["promotion"]["promoted"]:  # the worse run promoted first (no champion yet); the better one after it
        assert [p["model"] for p in pointers.values()] == [models["w"], models["b"]]
        assert better["promotion"]["champion_test_mse"] == pytest.approx(worse["promotion"]["challenger_test_mse"])
    else:  # the better run promoted first; the worse one was compared with it
        assert [p["model"] for p in pointers.values()] == [models["b"]]
        assert worse["promotion"]["champion_test_mse"] == pytest.approx(better["promotion"]["challenger_test_mse"])
    assert storage.public(champion.champion_model_path(url)) == better["artifacts"]["train"]["model"]
    rows = read_history(url).to_pylist()
    assert len(rows) == 2 and sorted(r["promoted"] for r in rows) == sorted(
        s["promotion"]["promoted"] for s in (worse, better)
    )
    no_local_url_folder()


def test_s3_clean_proves_what_it_deletes_knows_predict_and_waits_for_no_run(s3, capsys):
    url = f"s3://{BUCKET}/proven"
    assert run(capsys, "--artifacts-dir", url)[0] == 0
    cli(capsys, predict_cli.main, "--data", str(ADVERTISING), "--artifacts-dir", url)
    key = "0" * 64
    mine = {  # a user's objects, named as the store names its own
        "runs/my-analysis.json": b'{"run_id": "mine"}',
        "runs/20260101T000000-mine.json": b'{"run_id": "mine"}',
        "history/20260101T000000000000Z-mine.parquet": b"PAR1 not ours PAR1",
        f".cache/train/{key}.json": b"{}",
        f"train/{key}/model.pt": b"mine",
        "predict/README.md": b"mine",
        ".notes.tmp": b"mine",
    }
    for rel, content in mine.items():
        fs().pipe_file(f"{BUCKET}/proven/{rel}", content)

    with storage.in_use(url):  # a run holds the store: a clean refuses, in one line, and deletes nothing
        before = sorted(fs().find(f"{BUCKET}/proven"))
        assert train.main(["--artifacts-dir", url, "--clean-artifacts"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            f"error: artifacts store {url} is in use by a running flow; "
            "run --clean-artifacts again once it has finished"
        ]
        assert sorted(fs().find(f"{BUCKET}/proven")) == before
    # a lease of a dead process on this host is stale: it does not hold the store
    dead = {"host": storage.atomic.HOST, "pid": 2**22 + 1, "started": "2026-12-01T00:00:00+00:00"}
    fs().pipe_file(f"{BUCKET}/proven/.cache/active/{'a' * 32}.json", json.dumps(dead).encode())

    assert train.main(["--artifacts-dir", url, "--clean-artifacts"]) == 0
    assert f"kept {len(mine)} files the store did not write" in capsys.readouterr().out
    left = sorted(p.removeprefix(f"{BUCKET}/proven/") for p in fs().find(f"{BUCKET}/proven"))
    assert left == sorted([*mine, storage.MARKER])
    assert all(fs().cat_file(f"{BUCKET}/proven/{rel}") == content for rel, content in mine.items())
    assert run(capsys, "--artifacts-dir", url)[0] == 0  # still a store: the next run works
    assert not fs().exists(f"{BUCKET}/proven/.cache/active") or not fs().ls(f"{BUCKET}/proven/.cache/active")


def test_s3_data_and_clean_deletes_only_what_the_store_wrote(s3, capsys):
    url = f"s3://{BUCKET}/cleaned"
    data = f"s3://{BUCKET}/inputs/Advertising.csv"
    fs().put_file(str(ADVERTISING), data)
    code, summary = run(capsys, *WORSE, "--artifacts-dir", url, "--data", data)
    assert code == 0
    assert lineage.explain(summary["run_record"])["sources"][0]["path"] == data
    assert len(generations(url)) == 1 and len(fs().find(f"{BUCKET}/cleaned/history")) == 1  # champion, history
    mine = ["cleaned/notes.txt", "cleaned/champion/gen/readme.txt", "cleaned/history/notes.txt"]
    for path in mine:
        fs().pipe_file(f"{BUCKET}/{path}", b"mine")
    assert train.main(["--artifacts-dir", url, "--clean-artifacts"]) == 0
    OUTPUT.append(capsys.readouterr().out)
    kept = [*mine, f"cleaned/{storage.MARKER}"]  # the user's objects, and the marker that keeps the prefix a store
    assert sorted(fs().find(f"{BUCKET}/cleaned")) == sorted(f"{BUCKET}/{p}" for p in kept)
    assert fs().exists(data)  # outside the prefix: untouched


PARTS = f"s3://{BUCKET}/parts"  # Advertising cut into three CSV objects, with objects that are not partitions
PARTS_STORE = f"s3://{BUCKET}/partitioned"
CUTS = [(0, 70), (70, 140), (140, 200)]


def upload_parts() -> list[str]:
    """Advertising's rows cut into three CSVs (each with the header) under `PARTS`, uploaded with s3fs, plus
    objects a prefix must ignore: a marker, a text file and a CSV one level deeper. The partitions' URLs."""
    header, *rows = ADVERTISING.read_text().splitlines(keepends=True)
    urls = [f"{PARTS}/part-{i}.csv" for i in range(len(CUTS))]
    for url, (start, stop) in zip(urls, CUTS, strict=True):
        fs().pipe_file(url, (header + "".join(rows[start:stop])).encode())
    for name, content in (("_SUCCESS", b""), ("notes.txt", b"not data"), ("old/part-9.csv", header.encode())):
        fs().pipe_file(f"{PARTS}/{name}", content)
    return urls


def sources_of(summary: dict) -> list[str]:
    return [s["path"] for s in lineage.explain(summary["run_record"])["sources"]]


def test_partitions_on_s3_train_as_the_same_rows_in_one_local_file(s3, capsys, tmp_path):
    urls = upload_parts()
    assert (
        storage.is_partitioned(PARTS + "/")
        and storage.is_partitioned(PARTS)
        and storage.is_partitioned(f"{PARTS}/*.csv")
    )
    assert not storage.is_partitioned(urls[0]) and not storage.is_partitioned("https://example.com/data/")
    assert storage.partition_sources(PARTS + "/") == urls  # sorted by URL; the other objects ignored
    stats = ("--engine", "stats")
    code, single = run(capsys, *stats, "--data", str(ADVERTISING), "--artifacts-dir", str(tmp_path / "local"))
    assert code == 0
    code, parts = run(capsys, *stats, "--data", PARTS + "/", "--artifacts-dir", PARTS_STORE)
    assert code == 0
    assert sorted(parts["artifacts"]["ingest"]) == ["table[0]", "table[1]", "table[2]"]
    for name, weight in single["weights"].items():  # float64 statistics summed in another order
        assert parts["weights"][name] == pytest.approx(weight, rel=1e-9), name
    assert parts["bias"] == pytest.approx(single["bias"], rel=1e-9)
    assert parts["metrics"]["test"]["mse"] == pytest.approx(single["metrics"]["test"]["mse"], rel=1e-9)
    assert sources_of(parts) == urls  # each partition recorded by its URL, keyed on the bytes read

    code, again = run(capsys, *stats, "--data", PARTS + "/", "--artifacts-dir", PARTS_STORE)
    assert code == 0 and again["cached"] == dict.fromkeys(STAGES, True) and again["weights"] == parts["weights"]

    assert storage.partition_sources(f"{PARTS}/part-[01].csv") == urls[:2]  # a glob selects (a run costs 15 s)

    fs().pipe_file(f"{BUCKET}/no-data/readme.txt", b"not data")
    for data in (f"s3://{BUCKET}/no-data/", f"{PARTS}/*.parquet"):
        err = _one_line_error(capsys, "--data", data, *stats, "--artifacts-dir", PARTS_STORE)
        assert data in err and "matches no data files" in err
    err = _one_line_error(capsys, "--data", "s3://no-such-bucket-here/parts/", "--artifacts-dir", PARTS_STORE)
    assert "no-such-bucket-here" in err and "no such bucket" in err and "--data" in err


def test_predict_on_partitions_on_s3_writes_one_file_per_partition(s3, capsys):
    urls = upload_parts()
    if not fs().exists(f"{PARTS_STORE}/champion"):  # run alone: a model for the store
        assert run(capsys, "--engine", "stats", "--data", PARTS + "/", "--artifacts-dir", PARTS_STORE)[0] == 0
    summary = cli(capsys, predict_cli.main, "--data", PARTS + "/", "--artifacts-dir", PARTS_STORE)
    outputs = summary["predictions"]
    assert isinstance(outputs, list) and len(outputs) == len(urls) and summary["rows"] == 200
    values = []
    for out in outputs:
        assert out.startswith(f"{PARTS_STORE}/predict/") and fs().exists(out + storage.MANIFEST_SUFFIX)
        values.append(pq.read_table(pa.BufferReader(fs().cat_file(out)))["prediction"].to_numpy())
    assert [len(v) for v in values] == [stop - start for start, stop in CUTS]  # in the partitions' order
    np.testing.assert_allclose(np.concatenate(values), expected(summary["model"]), rtol=1e-6)
    report = lineage.explain(outputs[1])  # back to its partition, and to the model's training partitions
    assert report["ok"] and {s["path"] for s in report["sources"]} == set(urls)


def _one_line_error(capsys, *args: str) -> str:
    assert train.main(list(args)) == 2
    out, err = capsys.readouterr()
    OUTPUT.extend([out, err])
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_missing_bucket_and_bad_credentials_are_one_line_errors(s3, capsys, monkeypatch):
    err = _one_line_error(capsys, "--artifacts-dir", "s3://no-such-bucket-here/x")
    assert "no-such-bucket-here" in err and "no such bucket" in err
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        err = _one_line_error(capsys, "--artifacts-dir", f"s3://{BUCKET}/denied")
        assert BUCKET in err and "access denied" in err
    finally:
        monkeypatch.undo()
        s3fs.S3FileSystem.clear_instance_cache()


def test_no_secret_in_any_object_or_output(s3):
    secret = s3["AWS_SECRET_ACCESS_KEY"].encode()
    objects = fs().find(BUCKET)
    assert len(objects) > 50
    for written in ("/champion/by-columns/", "/history/", "/predict/", "/runs/", "/.cache/"):  # the lifecycle's too
        assert any(written in path for path in objects), written
    leaked = [path for path, content in fs().cat(objects).items() if secret in content]  # fetched concurrently
    assert leaked == []
    assert OUTPUT and not any(secret.decode() in text for text in OUTPUT)
    no_local_url_folder()
