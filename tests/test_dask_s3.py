"""A Dask cluster without a shared disk, and the store on S3 (moto's server): issue 11.

The scheduler and two workers are separate processes started from the `dask` command line, each in a working
folder of its own and with a temporary folder of its own (where the store's scratch mirror goes), on loopback.
The flow's process, the workers and the store share nothing but S3, where the partitioned input is too: a worker
downloads the partitions it ingests, and a stage on one worker reads what another worker (or the flow's process)
wrote by its URL, through its own verified copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

import stagecore as core
import storage
import storage.store
from bench.make_data import make_csv
from conftest import ROOT
from flows import lineage
from flows.local_server import free_port, start_process, stop_process
from flows.train import STAGES, linear_regression, main
from moto_s3 import s3_server, use_env

distributed = pytest.importorskip("distributed")
s3fs = pytest.importorskip("s3fs")

BUCKET = "linreg-dask"
DASK = str(Path(sys.executable).with_name("dask"))
PARTITION_STAGES = {"ingest_csv", "drop_index_column", "split_data", "tensorize", "accumulate_stats"}
ARTIFACT_SUFFIXES = (".parquet", ".pt", ".png", ".json")


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[dict[str, str]]:
    with s3_server(tmp_path_factory.mktemp("moto"), BUCKET) as env, use_env(env):
        yield env


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory) -> Iterator[dict]:
    """``dask scheduler`` and two ``dask worker`` processes, each in its own working folder and temp folder.

    The workers import the flow's modules as they start (``--preload``), while the test does other work; call
    ``ready()`` before using them."""
    base = tmp_path_factory.mktemp("cluster")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's code; the Prefect API and S3 of the tests
    procs = []
    folders = {}

    def ready() -> dict[str, int]:
        with distributed.Client(address, timeout=90) as client:
            client.wait_for_workers(2, timeout=90)
            return client.run(os.getpid)

    try:
        for name in ("scheduler", "worker-0", "worker-1"):
            work, tmp = base / name / "work", base / name / "tmp"
            work.mkdir(parents=True)
            tmp.mkdir()
            folders[name] = (work, tmp)
            command = [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port)]
            if name != "scheduler":
                command = [DASK, "worker", address, "--name", name, "--nthreads", "1", "--no-nanny"]
                command += ["--host", "127.0.0.1", "--death-timeout", "60"]
            # without a dashboard; importing the flow's modules at start (the scheduler unpickles tasks too)
            command += ["--no-dashboard", "--preload", "flows.train"]
            procs.append(start_process(command, {**env, "TMPDIR": str(tmp)}, base / f"{name}.log", cwd=work))
        yield {"address": address, "folders": folders, "ready": ready}
    finally:
        for proc in procs:  # all at once: each takes a few seconds to exit
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            stop_process(proc, timeout=15)


@pytest.fixture(scope="module")
def partitioned(s3, tmp_path_factory) -> tuple[Path, str]:
    """3,000 Advertising-shaped rows as one local CSV, and the same rows as three CSV partitions on S3 (the
    prefix's URL, with an object that is not a partition): the Dask run has no local input at all."""
    folder = tmp_path_factory.mktemp("inputs")
    whole = make_csv(3000, folder / "whole.csv", seed=11)
    frame = pd.read_csv(whole)
    parts = f"s3://{BUCKET}/inputs/"
    fs = s3fs.S3FileSystem()
    for i, (start, stop) in enumerate([(0, 900), (900, 2000), (2000, 3000)]):
        fs.pipe_file(f"{parts}part-{i}.csv", frame.iloc[start:stop].to_csv(index=False).encode())
    fs.pipe_file(f"{parts}_SUCCESS", b"")
    return whole, parts


def artifacts_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.name.endswith(ARTIFACT_SUFFIXES)]


def test_dask_workers_without_a_shared_disk_equal_the_single_file_run(
    cluster, partitioned, tmp_path, capsys, monkeypatch
):
    whole, parts = partitioned
    single = linear_regression(data=str(whole), engine="stats", artifacts_dir=str(tmp_path / "local"))
    here = tmp_path / "flow-work"  # the flow's own working folder, which must stay empty too
    here.mkdir()
    monkeypatch.chdir(here)
    pids = cluster["ready"]()  # the workers are other processes
    assert len(pids) == 2 and os.getpid() not in pids.values()
    url = f"s3://{BUCKET}/dask"
    args = ["--data", parts, "--task-runner", "dask", "--dask-address", cluster["address"], "--engine", "stats"]
    code = main([*args, "--artifacts-dir", url, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])

    # the fit is the single file's (float64 statistics summed in another order: equal to rounding)
    gap = max(abs(summary["weights"][n] / w - 1) for n, w in single["weights"].items())
    for name, weight in single["weights"].items():
        assert summary["weights"][name] == pytest.approx(weight, rel=1e-9), name
    assert summary["bias"] == pytest.approx(single["bias"], rel=1e-9)
    assert summary["metrics"]["test"]["mse"] == pytest.approx(single["metrics"]["test"]["mse"], rel=1e-9)

    # every artifact is on the store, named by its URL, whole
    assert list(summary["artifacts"]) == list(STAGES)
    assert sorted(summary["artifacts"]["ingest"]) == ["table[0]", "table[1]", "table[2]"]
    sources = [s["path"] for s in lineage.explain(summary["run_record"])["sources"]]
    assert sources == [f"{parts}part-{i}.csv" for i in range(3)]  # the partitions on S3, by URL
    for files in summary["artifacts"].values():
        for path in files.values():
            assert path.startswith(url + "/") and core.verify(path), path  # in place, on the store

    # the partitions' stages ran on the workers, in their own scratch; the flow's process never held their files
    with distributed.Client(cluster["address"], timeout=30) as client:
        ran = client.run_on_scheduler(lambda dask_scheduler: set(dask_scheduler.task_prefixes))
    assert ran >= PARTITION_STAGES, ran
    assert list(here.iterdir()) == []
    ingested = set()
    for name, (work, tmp) in cluster["folders"].items():
        assert list(work.iterdir()) == [], name  # nothing at all in a worker's (or the scheduler's) working folder
        ingested |= {p.parent.name for p in artifacts_under(tmp) if p.name == "raw.parquet"}
    assert len(ingested) == 3  # each partition's raw table is in some worker's own scratch
    for path in summary["artifacts"]["ingest"].values():
        assert not storage.store.local_copy(path).exists()  # the flow read only their manifests
    assert storage.store.local_copy(summary["artifacts"]["train"]["model"]).exists()  # train ran here, on worker files

    # a rerun: every stage Cached (keys are the files' contents, wherever they were computed), same fit
    assert main([*args, "--artifacts-dir", url, "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["cached"] == dict.fromkeys(STAGES, True)
    assert again["weights"] == summary["weights"]
    with capsys.disabled():
        print(f"\nlargest relative weight difference to the single-file run: {gap:.1e}")
