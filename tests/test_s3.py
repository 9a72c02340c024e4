"""Artifacts on an S3-protocol server (moto's standalone server, with IAM checks on): the whole store there.

The server starts once for the module on a free loopback port (tests/moto_s3.py); the credentials are a real IAM
user's key made on it, so a wrong key is refused as it would be by AWS, and the secret is a string no artifact
may contain.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

import stagecore as core
from conftest import ADVERTISING, ROOT
from flows import lineage, train
from moto_s3 import s3_server, use_env

boto3 = pytest.importorskip("boto3")
s3fs = pytest.importorskip("s3fs")

BUCKET = "linreg-test"
STAGES = set(train.STAGES)
OUTPUT: list[str] = []  # everything the runs printed, searched for the secret at the end


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[dict[str, str]]:
    """moto's server with auth enforced (tests/moto_s3.py), its credentials in this process's environment."""
    with s3_server(tmp_path_factory.mktemp("moto"), BUCKET) as env, use_env(env):
        yield env


def fs():
    return s3fs.S3FileSystem()


def run(capsys, *args: str) -> tuple[int, dict]:
    code = train.main([*args, "--json"])
    out, err = capsys.readouterr()
    OUTPUT.extend([out, err])
    summary = json.loads(out.strip().splitlines()[-1]) if code == 0 else {}
    return code, summary


def test_cold_run_then_every_stage_cached_and_lineage_verifies(s3, capsys):
    url = f"s3://{BUCKET}/cold"
    code, cold = run(capsys, "--artifacts-dir", url)
    assert code == 0 and not any(cold["cached"].values())
    for files in cold["artifacts"].values():
        for path in files.values():
            assert path.startswith(url + "/") and fs().exists(path) and fs().exists(path + ".manifest.json")
    assert cold["run_record"].startswith(f"{url}/runs/")
    code, warm = run(capsys, "--artifacts-dir", url)
    assert code == 0 and warm["cached"] == dict.fromkeys(STAGES, True)
    assert warm["weights"] == cold["weights"]
    report = lineage.explain(warm["run_record"])
    assert report["ok"] and report["sources"][0]["path"] == str(ADVERTISING)
    assert lineage.main([cold["artifacts"]["train"]["model"]]) == 0
    OUTPUT.append(capsys.readouterr().out)


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


def test_two_concurrent_runs_on_one_prefix(s3, capsys):
    url = f"s3://{BUCKET}/together"
    command = [sys.executable, "-m", "flows.train", "--artifacts-dir", url, "--json"]
    procs = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    OUTPUT.extend(outs)
    assert [p.returncode for p in procs] == [0, 0], outs
    summaries = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    assert summaries[0]["weights"] == summaries[1]["weights"]
    records = [p for p in fs().find(f"{BUCKET}/together/.cache")]
    assert {p.split("/")[-2] for p in records} == STAGES
    for record in records:
        body = json.loads(fs().cat_file(record))
        for relative in body["outputs"].values():
            assert lineage.main([f"{url}/{relative}"]) == 0  # whole, and matching its manifest
    for summary in summaries:
        assert lineage.explain(summary["run_record"])["ok"]  # each run's own files are whole too
    code, third = run(capsys, "--artifacts-dir", url)
    assert code == 0 and third["cached"] == dict.fromkeys(STAGES, True)


def test_s3_data_and_clean_deletes_only_what_the_store_wrote(s3, capsys):
    url = f"s3://{BUCKET}/cleaned"
    data = f"s3://{BUCKET}/inputs/Advertising.csv"
    fs().put_file(str(ADVERTISING), data)
    code, summary = run(capsys, "--artifacts-dir", url, "--data", data)
    assert code == 0
    assert lineage.explain(summary["run_record"])["sources"][0]["path"] == data
    fs().pipe_file(f"{url}/notes.txt", b"mine")
    assert train.main(["--artifacts-dir", url, "--clean-artifacts"]) == 0
    OUTPUT.append(capsys.readouterr().out)
    assert fs().find(f"{BUCKET}/cleaned") == [f"{BUCKET}/cleaned/notes.txt"]
    assert fs().exists(data)  # outside the prefix: untouched


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
    leaked = [path for path in objects if secret in fs().cat_file(path)]
    assert leaked == []
    assert OUTPUT and not any(secret.decode() in text for text in OUTPUT)
