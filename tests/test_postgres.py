"""The flow completing against a Prefect server whose database is a real PostgreSQL, started here and thrown away.

PostgreSQL comes from the OS (Debian: ``apt-get install postgresql``; ``.ci/run`` installs it when missing).
The cluster lives in a temporary folder, listens on a free loopback port, and is stopped whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT
from flows.local_server import free_port, isolated_env, start_server

EPOCHS = 8  # below the 12 epochs in which the default recipe converges


def _bindir() -> Path | None:
    """Folder of initdb/pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<version>/bin (newest first)."""
    if found := shutil.which("initdb"):
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def _as_owner(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` user the package creates."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@pytest.fixture
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster with a ``prefect`` database; yields its SQLAlchemy URL for Prefect."""
    bindir = _bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no initdb); install Debian's postgresql package (.ci/run does)")
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root, and there is no postgres user to run PostgreSQL as")
    if os.geteuid() == 0:  # in /tmp: the postgres user must be able to reach the folder, unlike root's $TMPDIR
        folder = Path(tempfile.mkdtemp(prefix="linreg-pg-", dir="/tmp"))
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    else:
        folder = Path(tempfile.mkdtemp(prefix="linreg-pg-"))
    data, port = folder / "data", free_port()

    def run(*command: str) -> None:
        done = subprocess.run(_as_owner([*command]), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command[0]} failed:\n{done.stdout}\n{done.stderr}"

    started = False
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        started = True
        run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "postgres.log"), "-w", "start")
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "prefect")
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"
    finally:
        if started:
            subprocess.run(
                _as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(folder, ignore_errors=True)


async def _query(url: str, sql: str) -> list[tuple]:
    import asyncpg  # installed with prefect's server

    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return [tuple(row) for row in await connection.fetch(sql)]
    finally:
        await connection.close()


def test_flow_completes_against_a_postgres_backed_server(postgres: str, tmp_path: Path):
    server = start_server(tmp_path / "server", PREFECT_SERVER_DATABASE_CONNECTION_URL=postgres)
    try:
        command = [sys.executable, "-m", "flows.train", "--epochs", str(EPOCHS), "--json"]
        result = subprocess.run(
            [*command, "--artifacts-dir", str(tmp_path / "a")],
            env=isolated_env(tmp_path / "client", PREFECT_API_URL=server.url),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        assert json.loads(result.stdout.splitlines()[-1])["epochs_run"] == EPOCHS
        # read PostgreSQL itself: the run, its task runs and its artifacts are stored there. Task-run states are
        # recorded from events, a moment after the flow run ends: wait for them, briefly.
        deadline = time.monotonic() + 60
        while True:
            flow_runs = asyncio.run(_query(postgres, "SELECT id, state_type FROM flow_run"))
            task_states = asyncio.run(_query(postgres, "SELECT state_type FROM task_run"))
            if [s for (s,) in task_states] == ["COMPLETED"] * 11 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert [state for _, state in flow_runs] == ["COMPLETED"]
        assert [state for (state,) in task_states] == ["COMPLETED"] * 11  # eight stages, promote, history, report
        keys = asyncio.run(_query(postgres, "SELECT DISTINCT key FROM artifact WHERE key IS NOT NULL"))
        assert {key for (key,) in keys} == {
            "linear-regression-metrics",
            "linear-regression-coefficients",
            "linear-regression-report",
            "linear-regression-training",
            "linear-regression-history",
        }
    finally:
        with contextlib.suppress(Exception):
            server.stop()
