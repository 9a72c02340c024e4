"""``--clean-artifacts`` deletes only what the store can prove it wrote, for every stage and flow, and never
while a run uses the store (issue 19's data-loss cases, on a folder; tests/test_s3.py has them on S3)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import stagecore as core
import storage
import storage.atomic
from conftest import ADVERTISING, ROOT
from flows import predict as predict_cli
from flows.train import linear_regression, main

KEY = "0" * 64  # a name of the store's shape: proves nothing by itself


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One store with a training run and a predict run in it (every stage, both flows), copied per test."""
    store = tmp_path_factory.mktemp("trained") / "store"
    linear_regression(artifacts_dir=str(store))
    assert predict_cli.main(["--artifacts-dir", str(store), "--data", str(ADVERTISING)]) == 0
    assert (store / "predict").is_dir() and (store / storage.CACHE_DIR / "predict").is_dir()
    return store


@pytest.fixture
def store(trained: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(trained, copy, symlinks=True)
    return copy


def files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def users_files(store: Path) -> dict[str, bytes]:
    """Files of a user's, put where the store writes and named as the store names its own."""
    model_folder = next((store / "train").iterdir()).name
    table = pa.table({"time": [1], "note": ["mine"]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    planted = {
        "runs/my-analysis.json": b'{"run_id": "mine"}\n',
        "runs/20260101T000000-mine.json": b'{"run_id": "mine", "notes": []}\n',
        "history/notes.parquet": sink.getvalue().to_pybytes(),
        "history/20260101T000000000000Z-mine.parquet": sink.getvalue().to_pybytes(),
        f"train/{model_folder}/notes.txt": b"mine",
        f"train/{model_folder}/model.pt.bak": b"mine",
        f"train/{KEY}/model.pt": b"mine",
        f"train/{KEY}/model.pt.manifest.json": b'{"file": "model.pt"}',
        f"{storage.CACHE_DIR}/train/{KEY}.json": b'{"mine": true}',
        f"{storage.CACHE_DIR}/train/{KEY}.lock": b"a lock with my data in it",
        f"{storage.CHAMPION_DIR}/champion.json.bak": b"{}",
        f"{storage.CHAMPION_DIR}/champion.lock": b"mine",
        ".notes.tmp": b"mine",
        "predict/README.md": b"mine",
        "notes.txt": b"mine",
    }
    for rel, content in planted.items():
        (store / rel).parent.mkdir(parents=True, exist_ok=True)
        (store / rel).write_bytes(content)
    return planted


@pytest.mark.no_server
def test_a_users_folder_with_store_like_names_is_never_adopted(tmp_path: Path, capsys):
    mine = tmp_path / "mine"
    (mine / "runs").mkdir(parents=True)
    (mine / "history").mkdir()
    (mine / "runs" / "exp1.json").write_text('{"lr": 0.1}')
    pq.write_table(pa.table({"x": [1.0]}), mine / "history" / "r.parquet")
    before = {rel: (mine / rel).read_bytes() for rel in files(mine)}
    assert main(["--artifacts-dir", str(mine)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds files the store did not write (history/r.parquet, runs/exp1.json)" in err[0]
    assert main(["--clean-artifacts", "--artifacts-dir", str(mine)]) == 2
    assert "does not look like an artifacts folder" in capsys.readouterr().err
    assert {rel: (mine / rel).read_bytes() for rel in files(mine)} == before


def test_clean_deletes_every_stage_of_both_flows_and_then_the_folder(store: Path, capsys):
    assert main(["--clean-artifacts", "--artifacts-dir", str(store)]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("deleted ") and "kept" not in out
    assert not store.exists()


def test_clean_keeps_every_file_of_the_users_whatever_its_name(store: Path, capsys):
    planted = users_files(store)
    assert main(["--clean-artifacts", "--artifacts-dir", str(store)]) == 0
    assert f"kept {len(planted)} files the store did not write" in capsys.readouterr().out
    assert files(store) == {*planted, storage.MARKER}
    assert all((store / rel).read_bytes() == content for rel, content in planted.items())

    # the folder is still a store: the next runs work (training, then predict on its champion) and a second
    # clean deletes what they wrote, still keeping the user's files
    summary = linear_regression(artifacts_dir=str(store))
    assert summary["metrics"]["test"]["mse"] == pytest.approx(4.4021, abs=1e-3)
    assert predict_cli.main(["--artifacts-dir", str(store), "--data", str(ADVERTISING)]) == 0
    assert main(["--clean-artifacts", "--artifacts-dir", str(store)]) == 0
    assert files(store) == {*planted, storage.MARKER}


def test_a_symlink_in_the_store_is_never_followed_or_deleted(store: Path, tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    (store / "runs" / "linked").symlink_to(outside)
    (store / "train" / "link.pt").symlink_to(outside / "precious.txt")
    cleared = storage.clear(store)
    assert cleared.kept == 2
    assert (outside / "precious.txt").read_text() == "keep"
    assert files(store) == {"runs/linked", "train/link.pt", storage.MARKER}


def test_clean_and_a_run_exclude_each_other(store: Path, capsys):
    before = files(store)
    holder = subprocess.Popen(  # a run in another process, holding the store as every flow run does
        [
            sys.executable,
            "-c",
            f"import storage as c, sys\nwith c.in_use({str(store)!r}):\n print(1, flush=True)\n sys.stdin.read()",
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "1"
        assert main(["--clean-artifacts", "--artifacts-dir", str(store)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            f"error: artifacts store {store} is in use by a running flow; "
            "run --clean-artifacts again once it has finished"
        ]
        assert files(store) == before
    finally:
        holder.communicate("", timeout=30)
    cleaning = storage.open_store(store).cleaning()
    with cleaning, pytest.raises(core.InputError, match="is being cleaned"), storage.in_use(store):
        pass
    with storage.in_use(store), storage.in_use(store):  # runs share the store
        pass
    assert main(["--clean-artifacts", "--artifacts-dir", str(store)]) == 0


def test_clean_on_a_read_only_store_is_one_line_and_deletes_nothing(trained: Path, tmp_path: Path, capsys):
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        shutil.copytree(trained, mount / "store")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        before = files(mount / "store")
        assert main(["--clean-artifacts", "--artifacts-dir", str(mount / "store")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: cannot delete in artifacts folder {mount / 'store'}")
        assert "Read-only file system" in err[0]
        assert files(mount / "store") == before
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_an_old_empty_marker_is_upgraded_only_beside_the_stores_own_files(store: Path, tmp_path: Path):
    (store / storage.MARKER).write_text("")  # as an older version wrote it
    storage.prepare_root(store)
    assert json.loads((store / storage.MARKER).read_text())["store"] == storage.STORE_NAME
    (store / storage.MARKER).write_text("")
    (store / "runs" / "exp1.json").write_text("{}")
    with pytest.raises(core.InputError, match=r"already holds files the store did not write \(runs/exp1.json\)"):
        storage.prepare_root(store)


def test_temporary_files_of_writers_are_the_stores(store: Path):
    dead = f".model.pt.{storage.atomic.HOST}-{2**22 + os.getpid()}.abc123.tmp"  # a pid beyond pid_max: dead
    (store / "train" / dead).write_bytes(b"partial")
    (store / ".my.tmp").write_bytes(b"mine")
    cleared = storage.clear(store)
    assert cleared.kept == 1 and files(store) == {".my.tmp", storage.MARKER}
