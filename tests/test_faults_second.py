"""Faults that end in one line, not a traceback (issue 19): an object store that cannot be reached or dies
mid-run, a disk that fills (a real tmpfs where this machine lets us mount one) or turns read-only, the Prefect
server gone mid-run, and the lifecycle writes (champion, history row, run record) all or nothing.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

import stagecore as core
import storage
from conftest import ROOT
from flows.local_server import free_port
from flows.train import STAGES
from lifecycle import champion
from stagecore.declare import Outputs
from storage import remote

BUCKET = "linreg-faults"


def flow(env: dict[str, str], *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    """``python -m flows.train`` in a child process: its result and how long it took."""
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "flows.train", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    return result, time.monotonic() - start


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The run failed with exit 2, its last line is ``error: …``, and nothing printed a traceback."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-3000:]
    return last


def train_in_background(env: dict[str, str], artifacts_dir: str) -> subprocess.Popen:
    """``python -m flows.train`` started in a child process with its output captured, for a fault mid-run."""
    return subprocess.Popen(
        [sys.executable, "-m", "flows.train", "--artifacts-dir", artifacts_dir],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --- the object store --------------------------------------------------------------------------------------


def aws_env(endpoint: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="faults",
        AWS_SECRET_ACCESS_KEY="faults-secret",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        **extra,
    )
    return env


def test_an_unreachable_endpoint_is_one_line_naming_the_bucket_within_seconds():
    env = aws_env(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    result, _ = flow(env, "--artifacts-dir", f"s3://{BUCKET}/x")
    last = one_error_line(result)
    assert f"bucket '{BUCKET}'" in last and "cannot be reached" in last and "AWS_ENDPOINT_URL" in last, last
    # bounded by the client's retry settings, not by a timer (timings belong in bench/): botocore's default
    # legacy retries took 10 s a call here; the client now makes 3 attempts with a 5 s connect timeout
    assert remote.S3_CONFIG == {"retries": {"max_attempts": 3, "mode": "standard"}, "connect_timeout": 5}
    assert remote.filesystem(f"s3://{BUCKET}/x")[0].config_kwargs["connect_timeout"] == 5


def test_a_store_that_dies_mid_run_ends_in_one_line(tmp_path: Path):
    from moto_s3 import s3_server

    with s3_server(tmp_path / "moto", BUCKET) as env:
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        child_env = {**os.environ, **env}
        proc = train_in_background(child_env, f"s3://{BUCKET}/run")
        deadline = time.monotonic() + 60
        while "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="run/ingest/"):  # the flow has started
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its store died"
            time.sleep(0.05)
    # s3_server's exit has killed the server: the run is past prepare_root, inside its stages
    out, err = proc.communicate(timeout=60)
    last = one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    assert f"bucket '{BUCKET}'" in last and "cannot be reached" in last, last


# --- the disk ----------------------------------------------------------------------------------------------


@contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` at ``folder`` (root only: skipped where mounting is not permitted)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
        )
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def outputs_in(folder: Path) -> Outputs:
    folder.mkdir(parents=True)
    return Outputs(folder, "tensorize", folder.name, {}, [], storage.open_store(folder.parent))


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` until ``leave`` bytes are free."""
    stat = os.statvfs(disk)
    (disk / "filler").write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - leave))


@pytest.mark.no_server
def test_a_disk_that_fills_during_torch_save_is_one_line_naming_the_folder_and_leaves_nothing(tmp_path: Path):
    with tmpfs(tmp_path / "disk", "256k") as disk:
        out = outputs_in(disk / "tensorize" / "k")
        with pytest.raises(core.InputError) as raised:
            out.write_pt({"x": torch.zeros(1 << 20)}, "tensors.pt")  # 4 MB: torch said "RuntimeError: [enforce fail…"
        assert str(raised.value) == (
            f"cannot write {out.folder}/tensors.pt: no space left on device in {out.folder}; "
            "free space or pass --artifacts-dir elsewhere"
        )
        with pytest.raises(core.InputError, match="no space left on device in"):
            out.write_json({"x": "y" * (1 << 20)}, "summary.json")
        assert files_in(out.folder) == []  # no temporary file, nothing under a final name


@pytest.mark.no_server
def test_an_artifact_whose_manifest_does_not_fit_is_removed_with_it(tmp_path: Path):
    with tmpfs(tmp_path / "disk", "64k") as disk:
        out = outputs_in(disk / "evaluate" / "k")
        fill(disk, leave=4096)  # one page: the artifact's, none for its manifest
        with pytest.raises(core.InputError, match=r"evaluation\.json\.manifest\.json: no space left on device in"):
            out.write_json({"mse": 1.0}, "evaluation.json")
        assert files_in(out.folder) == []


@pytest.mark.no_server
def test_a_folder_that_turns_read_only_mid_run_is_one_line(tmp_path: Path):
    with tmpfs(tmp_path / "disk", "1m") as disk:
        out = outputs_in(disk / "train" / "k")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(core.InputError) as raised:
            out.write_pt({"w": torch.ones(3)}, "model.pt")
        assert str(raised.value) == (
            f"cannot write in {out.folder}: {out.folder} is on a read-only file system; pass --artifacts-dir elsewhere"
        )
        assert files_in(out.folder) == []


def test_a_full_disk_during_a_run_is_one_line_and_leaves_no_partial_file(tmp_path: Path):
    with tmpfs(tmp_path / "disk", "64k") as disk:
        result, _ = flow(os.environ.copy(), "--artifacts-dir", str(disk / "artifacts"))
        last = one_error_line(result)
        assert "no space left on device in " + str(disk / "artifacts") in last, last
        assert "free space or pass --artifacts-dir elsewhere" in last, last
        left = [p for p in (disk / "artifacts").rglob("*") if p.is_file()]
        assert not [p for p in left if p.name.endswith(".tmp")], left
        for path in left:  # whatever was written whole verifies against its manifest
            if path.parent.parent.name in STAGES and not path.name.endswith(storage.MANIFEST_SUFFIX):
                core.verify(path)


# --- the Prefect server gone mid-run, and the lifecycle writes ------------------------------------------------


def lifecycle_files(root: Path) -> dict[str, list[str]]:
    """What the lifecycle wrote: the champions' pointers (every model's), the history rows, the run records."""
    return {
        "champion": sorted(p.relative_to(root).as_posix() for p in (root / storage.CHAMPION_DIR).rglob("*.json")),
        "history": sorted(p.name for p in (root / storage.HISTORY_DIR).glob("*.parquet")),
        "runs": sorted(p.name for p in (root / storage.RUNS_DIR).glob("*.json")),
    }


NOTHING = {"champion": [], "history": [], "runs": []}


RETRY = re.compile(r"Another attempt will be made in ([0-9.]+)s\. This is attempt (\d+)/(\d+)\.")


def logging_with_client_retries(config: Path, log: Path) -> Path:
    """Prefect's own logging config, plus its client's DEBUG lines (one per retry, with the backoff chosen) in
    ``log``. Those lines carry the error's traceback, so they go to the file only: stderr gets what it gets
    without this (the client's INFO and above, through a handler like the console's)."""
    from prefect.logging.configuration import DEFAULT_LOGGING_SETTINGS_PATH

    settings = yaml.safe_load(DEFAULT_LOGGING_SETTINGS_PATH.read_text())
    settings["handlers"]["client_console"] = {**copy.deepcopy(settings["handlers"]["console"]), "level": "INFO"}
    settings["handlers"]["client_retries"] = {
        "class": "logging.FileHandler",
        "filename": str(log),
        "level": "DEBUG",
        "formatter": "debug",
    }
    settings["loggers"]["prefect.client"] = {
        "level": "DEBUG",
        "handlers": ["client_console", "client_retries"],
        "propagate": False,
    }
    config.write_text(yaml.safe_dump(settings))
    return config


def test_the_prefect_server_gone_mid_run_is_one_line_naming_it_and_the_lifecycle_writes_nothing(tmp_path: Path):
    from flows.local_server import isolated_env, start_server

    server = start_server(tmp_path / "server")
    artifacts = tmp_path / "artifacts"
    retries_log = tmp_path / "client-retries.log"
    logging_config = logging_with_client_retries(tmp_path / "logging.yml", retries_log)
    try:
        env = isolated_env(
            tmp_path / "client", PREFECT_API_URL=server.url, PREFECT_LOGGING_SETTINGS_PATH=str(logging_config)
        )
        proc = train_in_background(env, str(artifacts))
        deadline = time.monotonic() + 90
        while not (artifacts / "ingest").exists():  # the flow run has started, and its first stage has written
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its server went away"
            time.sleep(0.05)
    finally:
        server.stop()
    out, err = proc.communicate(timeout=120)
    last = one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    assert last.startswith(f"error: lost the Prefect API at {server.url} ("), last
    assert "start the server again" in last, last
    # Bounded by the client's retry settings, not by a timer (timings belong in bench/): two retries a call
    # (PREFECT_CLIENT_MAX_RETRIES=2, flows/__init__.py), so the client logs attempts 1/3 and 2/3 before it gives
    # up, and waits 2 s, then 4 s (Prefect's backoff, 2**attempt with 20% jitter): 7.2 s at most per call.
    # Prefect's default (5 retries, waits 2+4+8+16+32 s) waited 62 s on a single call: 297 s and a traceback.
    retries = [(float(wait), int(attempt), int(of)) for wait, attempt, of in RETRY.findall(retries_log.read_text())]
    print(f"{len(retries)} retries after the server went away, {sum(w for w, _, _ in retries):.1f} s of backoff")
    assert retries, "the client retried nothing: the run did not see the server go away mid-call"
    assert {of for _, _, of in retries} == {3}, retries
    assert {attempt for _, attempt, _ in retries} <= {1, 2}, retries
    assert all(wait <= 2**attempt * 1.2 for wait, attempt, _ in retries), retries
    # the run gave up after a handful of failed calls instead of retrying call after call
    assert sum(wait for wait, _, _ in retries) < 62, retries
    # the run got as far as writing its champion pointer, then failed publishing its history: all taken back
    assert lifecycle_files(artifacts) == NOTHING


# two standardized epochs: a worse model than the default's (whitened, one epoch is the optimum), off the
# optimum and promoted all the same, as the champion-vs-challenger rule is what these tests are about
WORSE = {"epochs": 2, "tol": 0.0, "scaling": "standardize", "promote_off_optimum": True}


def test_lifecycle_writes_are_all_or_nothing(artifacts: Path, monkeypatch):
    from flows.train import linear_regression

    real = core.write_run_record

    def fails(*args, **kwargs):
        raise core.InputError("injected: the run record could not be written")

    monkeypatch.setattr(core, "write_run_record", fails)
    with pytest.raises(core.InputError, match="injected"):  # the first run: its champion and row are taken back
        linear_regression(artifacts_dir=str(artifacts), **WORSE)
    assert lifecycle_files(artifacts) == NOTHING

    monkeypatch.setattr(core, "write_run_record", real)
    worse = linear_regression(artifacts_dir=str(artifacts), **WORSE)
    assert worse["promotion"]["promoted"]
    before = lifecycle_files(artifacts)
    pointer = Path(champion.pointer_path(artifacts)).read_bytes()
    assert [len(v) for v in before.values()] == [2, 1, 1]  # the pointer and its manifest, a row, a record

    monkeypatch.setattr(core, "write_run_record", fails)
    with pytest.raises(core.InputError, match="injected"):  # a better model, promoted, then the record fails
        linear_regression(artifacts_dir=str(artifacts))
    assert lifecycle_files(artifacts) == before
    assert Path(champion.pointer_path(artifacts)).read_bytes() == pointer  # the earlier champion, back

    monkeypatch.setattr(core, "write_run_record", real)

    def no_table(*args, **kwargs):
        raise core.InputError("injected: the history table could not be published")

    # the history publishes its (markdown) table after the row is written, and before the report's artifacts
    monkeypatch.setattr(core, "markdown_artifact", no_table)
    with pytest.raises(core.InputError, match="injected"):
        linear_regression(artifacts_dir=str(artifacts))
    assert lifecycle_files(artifacts) == before
    assert Path(champion.pointer_path(artifacts)).read_bytes() == pointer

    monkeypatch.undo()
    better = linear_regression(artifacts_dir=str(artifacts))
    assert better["promotion"]["promoted"]
    after = lifecycle_files(artifacts)
    assert [len(after["history"]), len(after["runs"])] == [2, 2]
