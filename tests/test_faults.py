"""Faults and load, each in real flow processes against the session's Prefect server (SQLite-backed).

kill -9 in the middle of training, four flow runs at once on one artifacts folder, and a write that fails
the way a full disk does. Every artifact left behind must verify against its manifest.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_postgres import postgres  # noqa: F401  (the throwaway PostgreSQL cluster fixture)

import stagecore as core
import storage
from conftest import ROOT
from flows.local_server import isolated_env, start_server
from flows.train import STAGES, linear_regression


def flow_cmd(artifacts: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "flows.train", "--artifacts-dir", str(artifacts), "--json", *args]


def summary_of(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def artifact_files(root: Path) -> list[Path]:
    """Every file under a stage folder that is not a manifest (temp files included: there must be none)."""
    return [
        p
        for p in root.rglob("*")
        if p.is_file()
        and not p.name.endswith(storage.MANIFEST_SUFFIX)
        and p.relative_to(root).parts[0]
        not in (storage.CACHE_DIR, storage.RUNS_DIR, storage.CHAMPION_DIR, storage.HISTORY_DIR)
        and p.name != storage.MARKER
    ]


def assert_every_artifact_verifies(root: Path) -> list[Path]:
    files = artifact_files(root)
    for path in files:
        assert not path.name.endswith(".tmp"), f"temporary file left behind: {path}"
        manifest = core.verify(path)
        # folder = <root>/<stage>/<key>[.n]/: no file is shared by two keys or two stages
        key = path.parent.name.split(".")[0]  # <key>, or <key>.1 for a rebuild written beside it
        assert manifest["key"] == key and manifest["stage"] == path.parent.parent.name, path
    return files


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def records(root: Path, stage: str) -> list[Path]:
    folder = root / storage.CACHE_DIR / stage
    return [p for p in folder.glob("*") if p.suffix != ".lock"] if folder.exists() else []


def test_kill_9_mid_training_leaves_only_whole_artifacts_and_the_next_run_reuses_them(artifacts: Path):
    # The seed preset's tiny step on raw features and 50M epochs: training runs for many minutes, long after the
    # stages before it have finished. (--tol 0 alone is not enough: the default recipe reaches a float32 loss
    # that stops changing within ~50 epochs, which counts as converged.)
    proc = subprocess.Popen(
        flow_cmd(artifacts, "--preset", "seed", "--epochs", "50000000"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: records(artifacts, "tensorize"), 120, "the tensorize stage to finish")
        wait_for(lambda: list((artifacts / storage.CACHE_DIR / "train").glob("*.lock")), 30, "training to start")
        time.sleep(1.0)  # well inside the training loop
        assert proc.poll() is None, "the flow ended before it could be killed"
    finally:
        proc.kill()  # SIGKILL: no cleanup code of ours or Prefect's runs
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    files = assert_every_artifact_verifies(artifacts)
    assert {p.parent.parent.name for p in files} == {"ingest", "drop_index", "split", "tensorize", "accumulate"}
    assert records(artifacts, "train") == []

    # the dead process's lock died with it: the next run (in this process) does not wait, and reuses the
    # five finished stages
    summary = linear_regression(artifacts_dir=str(artifacts), preset="seed", epochs=300)
    finished = ("ingest", "drop_index", "split", "tensorize", "accumulate")
    assert summary["cached"] == {stage: stage in finished for stage in STAGES}
    assert summary["epochs_run"] == 300
    assert_every_artifact_verifies(artifacts)


def test_four_concurrent_runs_on_one_folder_all_complete_and_compute_each_key_once(artifacts: Path):
    four_concurrent_runs(artifacts)  # against the session's server: SQLite


def test_four_concurrent_runs_against_a_postgres_backed_server(postgres: str, artifacts: Path, tmp_path: Path):  # noqa: F811
    server = start_server(tmp_path / "server", PREFECT_SERVER_DATABASE_CONNECTION_URL=postgres)
    try:
        four_concurrent_runs(artifacts, env=isolated_env(tmp_path / "client", PREFECT_API_URL=server.url))
    finally:
        server.stop()


def four_concurrent_runs(artifacts: Path, env: dict[str, str] | None = None) -> None:
    """Two identical runs, one with other epochs, one with another test size: all at once, on one folder."""
    variants = [(), (), ("--epochs", "300"), ("--test-size", "0.3")]
    procs = [
        subprocess.Popen(
            flow_cmd(artifacts, *args), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args in variants
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=400)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    summaries = [summary_of(r) for r in results]

    assert summaries[0]["artifacts"] == summaries[1]["artifacts"]
    assert summaries[0]["metrics"] == summaries[1]["metrics"]
    assert summaries[2]["training"]["epochs"] == 300
    assert summaries[3]["artifacts"]["split"] != summaries[0]["artifacts"]["split"]
    # each stage key is computed by exactly one run; the others wait on its lock and find it Cached
    by_key: dict[str, list[bool]] = {}
    for s in summaries:
        for stage, files in s["artifacts"].items():
            key = Path(next(iter(files.values()))).parent.name
            by_key.setdefault(f"{stage}/{key}", []).append(s["cached"][stage])
    for key, cached in by_key.items():
        assert cached.count(False) == 1, (key, cached)
    files = assert_every_artifact_verifies(artifacts)
    assert len({p.parent for p in files}) == len(by_key)
    assert len(list((artifacts / storage.RUNS_DIR).glob("*.json"))) == 4
    for r in results:
        assert "Traceback" not in r.stderr, r.stderr[-3000:]


def _limit_file_size() -> None:
    """In the child: any file write past 4 kB fails with EFBIG, as a full disk fails with ENOSPC."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_a_failing_write_is_one_line_naming_the_file_and_leaves_no_partial_file(artifacts: Path):
    # No tmpfs can be mounted here; RLIMIT_FSIZE makes write() fail the way ENOSPC does, for this process only.
    result = subprocess.run(
        flow_cmd(artifacts),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_file_size,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write {artifacts}/ingest/") and "raw.parquet in" in last, last
    assert "File too large" in last and "check space and permissions" in last
    assert "Traceback" not in result.stderr
    assert artifact_files(artifacts) == []  # the temp file was removed, nothing under a final name
