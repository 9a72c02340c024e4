"""The store is data only, it never adopts or deletes a user's files, and it records no secrets.

Each test plays someone with write access to the artifacts folder (a shared disk, a bucket, a Dask worker's
disk) or a user who points the flow at the wrong folder, and checks the documented security model holds.
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from prefect.results import ResultRecord, ResultRecordMetadata
from prefect.serializers import JSONSerializer, PickleSerializer

import stagecore as core
import storage
import storage.atomic
from conftest import ADVERTISING, ROOT
from flows.lineage import main as lineage_main
from flows.train import STAGES, linear_regression, main
from stagecore.cache import read_record

ALL_CACHED = dict.fromkeys(STAGES, True)


def run(artifacts: Path, **params) -> dict:
    return linear_regression(artifacts_dir=str(artifacts), **params)


class Payload:
    """Unpickling this creates ``flag``: the stand-in for an attacker's code."""

    def __init__(self, flag: Path):
        self.flag = flag

    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


def pickled_payload(flag: Path) -> bytes:
    import pickle

    return pickle.dumps(Payload(flag))


def record_of(artifacts: Path, stage: str) -> Path:
    [record] = (artifacts / storage.CACHE_DIR / stage).glob("*.json")
    return record


def match_manifest(path: Path) -> None:
    """Make ``path``'s manifest agree with its (replaced) bytes, as an attacker with write access could."""
    manifest_file = core.manifest_path(path)
    manifest = json.loads(manifest_file.read_text())
    manifest.update(sha256=storage.sha256_file(path), size=path.stat().st_size)
    manifest_file.write_text(json.dumps(manifest))


def test_planted_cache_records_never_run_code(artifacts: Path, tmp_path: Path):
    """Prefect-format records naming the pickle serializer, or a JSON decoder that imports and calls a class,
    in the record's own name and in the legacy one, in every stage: nothing runs, every stage rebuilds."""
    first = run(artifacts)
    flags = []
    for stage in STAGES:
        record = record_of(artifacts, stage)
        key = record.stem
        flag = tmp_path / f"pwned-{stage}"
        flags.append(flag)
        pickle_record = ResultRecord(
            metadata=ResultRecordMetadata(serializer=PickleSerializer(picklelib="pickle"), storage_key=key),
            result=Payload(flag),
        ).serialize()
        json_record = ResultRecord(
            metadata=ResultRecordMetadata(serializer=JSONSerializer(), storage_key=key), result={"x": 1}
        ).model_dump(mode="json")
        json_record["result"] = json.dumps({"__exc_type__": "subprocess.CalledProcessError", "message": "1"})
        json_record["metadata"]["serializer"]["object_decoder"] = "os.system"
        record.write_bytes(pickle_record if stage in ("ingest", "train", "plot") else json.dumps(json_record).encode())
        (record.parent / key).write_bytes(pickle_record)  # where Prefect itself would look

    second = run(artifacts)

    assert not [f for f in flags if f.exists()], "a planted cache record ran code"
    assert second["cached"] == dict.fromkeys(STAGES, False)
    assert second["metrics"] == first["metrics"]
    assert run(artifacts)["cached"] == ALL_CACHED  # fresh records were written in place of the planted ones


def test_records_that_point_outside_the_store_are_refused(artifacts: Path, tmp_path: Path):
    run(artifacts)
    outside = tmp_path / "elsewhere.parquet"
    outside.write_bytes(b"PAR1")
    record = record_of(artifacts, "ingest")
    for target in ("../../elsewhere.parquet", str(outside), "ingest/../../elsewhere.parquet", "split/x/y"):
        content = json.loads(record.read_text())
        content["outputs"]["table"] = target
        record.write_text(json.dumps(content))
        with pytest.raises(ValueError, match=r"outside the stage.s folder|record unreadable"):
            read_record(artifacts, "ingest", record.stem)
    for bad in ('{"record_version": 1}', "[]", '"x"', "\u00ff\u00fe", "{" * 10_000, " " * 70_000):
        record.write_text(bad)
        with pytest.raises(ValueError, match="record unreadable"):
            read_record(artifacts, "ingest", record.stem)


def test_pt_files_whose_manifest_was_made_to_match_are_rebuilt_not_loaded(artifacts: Path, tmp_path: Path):
    first = run(artifacts)
    flag = tmp_path / "pwned-pt"
    model = Path(first["artifacts"]["train"]["model"])
    tensors = Path(first["artifacts"]["tensorize"]["tensors"])
    buffer = io.BytesIO()
    torch.save({"weights": Payload(flag)}, buffer)  # a real torch archive whose pickle runs code
    model.write_bytes(buffer.getvalue())
    match_manifest(model)
    tensors.write_bytes(pickled_payload(flag))  # a bare pickle, not even a torch archive
    match_manifest(tensors)

    with pytest.raises(core.IntegrityError, match="torch refuses to load it under weights_only"):
        core.read_pt(model)
    second = run(artifacts)

    assert not flag.exists()
    rebuilt = ("tensorize", "train", "evaluate", "plot")
    assert second["cached"] == {stage: stage not in rebuilt for stage in STAGES}
    assert second["metrics"] == first["metrics"]


def test_planted_manifests_markers_and_run_records_are_plain_data(artifacts: Path, tmp_path: Path, capsys):
    first = run(artifacts)
    flag = tmp_path / "pwned-json"
    payload = pickled_payload(flag)
    clean = Path(first["artifacts"]["drop_index"]["table"])
    core.manifest_path(clean).write_bytes(payload)  # a manifest that is a pickle
    (artifacts / storage.MARKER).write_bytes(payload)  # a marker that is a pickle
    run_record = Path(first["run_record"])
    run_record.write_bytes(payload)  # a run record that is a pickle

    # a damaged marker beside files nothing proves to be the store's: refused in one line, nothing touched
    with pytest.raises(core.InputError, match=r"its marker \.linreg-store is not a store's marker") as refused:
        run(artifacts)
    assert "\n" not in str(refused.value) and (artifacts / storage.MARKER).read_bytes() == payload
    (artifacts / storage.MARKER).write_text(json.dumps({"store": storage.STORE_NAME, "version": 1}))  # restored

    second = run(artifacts)
    assert second["cached"]["drop_index"] is False and second["cached"]["ingest"] is True
    assert lineage_main([str(run_record)]) == 2
    assert "not a readable run record" in capsys.readouterr().err
    # the cached stages after drop_index still name the first clean.parquet, whose manifest is now garbage:
    # lineage says so (exit 1), and reads nothing it should not
    assert lineage_main([second["artifacts"]["plot"]["loss_curve"]]) == 1
    assert "clean.parquet" in capsys.readouterr().out
    assert not flag.exists()


def test_a_users_non_empty_folder_is_never_adopted_and_clean_deletes_only_store_files(tmp_path: Path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(["--artifacts-dir", str(mine)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"error: artifacts folder {mine} already holds files the store did not write (notes.txt); "
        "pass --artifacts-dir with a new or empty folder"
    )
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]

    # A folder an older version marked (an empty marker, the user's files beside the store's): still no adoption
    # of the user's files by clean. Everything the store wrote goes; the user's files, and so the folder, stay.
    (mine / storage.MARKER).write_text("")
    with pytest.raises(core.InputError, match="already holds files the store did not write"):
        storage.prepare_root(mine)
    (mine / storage.MARKER).write_text(json.dumps({"store": storage.STORE_NAME, "version": 1}))
    summary = run(mine)
    (mine / "train").mkdir(exist_ok=True)
    (Path(summary["artifacts"]["train"]["model"]).parent / "my-notes.txt").write_text("mine too")
    (mine / "runs" / "todo.md").write_text("mine too")
    assert main(["--clean-artifacts", "--artifacts-dir", str(mine)]) == 0
    assert "kept 3 files the store did not write, and the store's marker" in capsys.readouterr().out
    left = sorted(str(p.relative_to(mine)) for p in mine.rglob("*") if p.is_file())
    model_dir = Path(summary["artifacts"]["train"]["model"]).parent.relative_to(mine)
    assert left == sorted([storage.MARKER, "notes.txt", str(model_dir / "my-notes.txt"), "runs/todo.md"])


@pytest.mark.no_server
def test_clean_artifacts_on_a_file_or_a_missing_folder_is_one_line(tmp_path: Path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("data")
    assert main(["--clean-artifacts", "--artifacts-dir", str(a_file)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {a_file}: a file, not a folder; nothing to delete"
    assert a_file.read_text() == "data"
    assert main(["--clean-artifacts", "--artifacts-dir", str(tmp_path / "nope")]) == 2
    assert "no such folder; nothing to delete" in capsys.readouterr().err
    assert main(["--artifacts-dir", str(a_file)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err.strip().splitlines()[-1]


def test_refresh_writes_new_files_and_earlier_run_records_still_verify(artifacts: Path, capsys):
    first = run(artifacts)
    model = Path(first["artifacts"]["train"]["model"])
    model_sha = storage.sha256_file(model)
    second = run(artifacts, refresh=True)
    assert second["cached"] == dict.fromkeys(STAGES, False)
    assert Path(second["artifacts"]["train"]["model"]) != model
    assert storage.sha256_file(model) == model_sha  # written once, never replaced
    assert lineage_main([first["run_record"]]) == 0
    assert lineage_main([second["run_record"]]) == 0
    assert "all files verify" in capsys.readouterr().out
    assert run(artifacts)["artifacts"] == second["artifacts"]  # the record follows the newest files


@pytest.mark.no_server
def test_temporary_files_of_dead_writers_are_swept(artifacts: Path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    storage.prepare_root(artifacts)
    folder = artifacts / "ingest" / "0123456789abcdef"
    folder.mkdir(parents=True)
    host = storage.atomic.HOST
    orphan = folder / f".raw.parquet.{host}-{dead_pid}.abc123.tmp"
    live = folder / f".raw.parquet.{host}-{os.getpid()}.def456.tmp"
    other_host = folder / f".raw.parquet.elsewhere-{dead_pid}.ghi789.tmp"
    for path in (orphan, live, other_host):
        path.write_bytes(b"half a file")
    storage.prepare_root(artifacts)
    assert not orphan.exists()
    assert live.exists() and other_host.exists()


def test_failed_runs_leave_no_records(artifacts: Path):
    with pytest.raises(core.InputError):
        run(artifacts, preset="seed", lr=1.0)
    files = [p for p in (artifacts / storage.CACHE_DIR).rglob("*") if p.is_file()]
    assert files and all(p.suffix in (".lock", ".json") for p in files)
    for record in (p for p in files if p.suffix == ".json"):
        assert read_record(artifacts, record.parent.name, record.stem)


@pytest.mark.parametrize(
    ("url", "recorded"),
    [
        ("https://host/a.csv?token=s3cr3t&raw=1", "https://host/a.csv?token=REDACTED&raw=REDACTED"),
        ("https://user:pa55@host:8443/a.csv", "https://user:REDACTED@host:8443/a.csv"),
        ("https://tok3n@host/a.csv#frag", "https://REDACTED@host/a.csv#REDACTED"),
        ("s3://bucket/a.csv?X-Amz-Signature=abc", "s3://bucket/a.csv?X-Amz-Signature=REDACTED"),
        ("/plain/path?not=a&url=1", "/plain/path?not=a&url=1"),
    ],
)
@pytest.mark.no_server
def test_redact(url: str, recorded: str):
    assert storage.redact(url) == recorded


@pytest.fixture
def http_server(tmp_path: Path):
    """Serves ``tmp_path`` on loopback (query strings are ignored, as a signed-URL store would check them)."""
    (tmp_path / "ads.csv").write_bytes(ADVERTISING.read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_secrets_in_a_url_are_not_written_into_the_store(artifacts: Path, http_server: str, capsys):
    secret = "s3cr3t-T0KEN"
    url = f"{http_server}/ads.csv?token={secret}&sig={secret}"
    assert main(["--data", url, "--artifacts-dir", str(artifacts), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["metrics"]["test"]["mse"] == pytest.approx(4.402119, rel=1e-4)
    leaked = [p for p in artifacts.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaked == []
    manifest = core.read_manifest(summary["artifacts"]["ingest"]["table"])
    assert manifest["inputs"][0]["path"] == f"{http_server}/ads.csv?token=REDACTED&sig=REDACTED"


@pytest.mark.no_server
def test_nothing_in_the_repository_loads_pickles_or_unsafe_torch_files():
    """A guard for the future: every torch.load passes weights_only=True, and nothing unpickles."""
    offenders = []
    for path in [*ROOT.glob("tasks/*.py"), *ROOT.glob("flows/*.py"), *ROOT.glob("bench/*.py")]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path.name}:{number}")
            if "pickle.load" in line or "cloudpickle" in line or "ResultRecord" in line:
                offenders.append(f"{path.name}:{number}")
    assert offenders == []


@pytest.mark.no_server
def test_sha256_refuses_what_is_not_a_regular_file(tmp_path: Path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero"), tmp_path):
        with pytest.raises((core.InputError, IsADirectoryError)):
            storage.sha256_file(path)
