"""One real Prefect server per test session, isolated from the user's Prefect state, started only when needed.

The environment is set here, at import, because Prefect reads its settings when it is first imported: a
temporary PREFECT_HOME, and PREFECT_API_URL on a loopback port picked now. The server itself starts before the
first test that is not marked ``no_server`` (`pytest_runtest_setup`), so ``pytest -m no_server`` (``make
test-fast``) starts none. Until it starts, the port is held by a bound socket that does not listen: no other
process is given the port, and a ``no_server`` test that does call the API is refused at once ("connection
refused"; Prefect retries that only once it has connected) instead of hanging.

Under pytest-xdist (``make test``) each worker process imports this file, and so has a server, port and
PREFECT_HOME of its own: tests on different workers share no Prefect state.

``LINREG_TEST_SERVER=0`` never starts the server: every test runs against the refusing port, which is how to
find the tests that need none (they pass).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import tempfile
from pathlib import Path

import pytest

from flows.local_server import Server, isolated_env, start_server

# A shell that runs the tests in the background (`bash .ci/run &`) starts them with SIGINT ignored, and every
# process a test starts would inherit that: a Ctrl-C sent to `serve` would do nothing. A handler, unlike
# "ignore", is reset to the default when a child starts, so children get a working Ctrl-C.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_HOME = Path(tempfile.mkdtemp(prefix="linreg-prefect-"))
# SO_REUSEADDR on both this socket and the server's (Prefect's port check and uvicorn set it) lets the server
# bind the port while this one still holds it; a socket that only binds never accepts a connection.
_PORT_HOLD = socket.socket()
_PORT_HOLD.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
_PORT_HOLD.bind(("127.0.0.1", 0))
_PORT = _PORT_HOLD.getsockname()[1]
_URL = f"http://127.0.0.1:{_PORT}/api"
os.environ.update(isolated_env(_HOME / "client", PREFECT_API_URL=_URL, PREFECT_UI_API_URL=_URL))
_SERVER: Server | None = None

ROOT = Path(__file__).resolve().parent.parent
ADVERTISING = ROOT / "data" / "Advertising.csv"


def _start_server() -> None:
    global _SERVER
    if _SERVER is not None or os.environ.get("LINREG_TEST_SERVER") == "0":
        return
    _SERVER = start_server(_HOME / "server", port=_PORT)
    atexit.register(_SERVER.stop)
    _PORT_HOLD.close()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Start the session's server before the first test that may need it (before its fixtures, too)."""
    if item.get_closest_marker("no_server") is None:
        _start_server()


# `make test` runs the suite on pytest-xdist workers, each module whole on one worker (--dist loadscope), handed
# out in collection order. Longest first, so that no long module starts when the others are nearly done: these
# took 30 s or more each (their tests' durations summed) in a run on 4 workers on the 2-core machine, 2026-12-02;
# the property test, one 80-170 s item, first of all. The order changes which worker runs a module and when,
# never what it checks; a module missing here goes after them, in file order.
SLOW_MODULES_FIRST = (
    "test_properties.py",
    "test_s3.py",
    "test_faults.py",
    "test_input_hardening.py",
    "test_partitions.py",
    "test_faults_second.py",
    "test_store_validation.py",
    "test_predict.py",
    "test_deployment.py",
    "test_events.py",
    "test_rollback.py",
    "test_sweep.py",
    "test_ui_screens.py",
    "test_drift.py",
    "test_automations.py",
    "test_cache.py",
    "test_code_keys.py",
    "test_dask_s3.py",
    "test_flow.py",
    "test_store_security.py",
    "test_serve.py",
    "test_git_worker.py",
    "test_postgres.py",
    "test_session_server.py",
    "test_ui_browser.py",
    "test_numbers.py",
    "test_wide.py",
    "test_inputs.py",
    "test_clean.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker, put the slow modules first (every worker sorts alike: xdist needs one collection)."""
    if not hasattr(config, "workerinput"):
        return
    rank = {name: i for i, name in enumerate(SLOW_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a module's own order is kept


def pytest_unconfigure(config):
    import sys

    if _SERVER is None:
        return
    if "prefect" in sys.modules:  # send the run logs still queued before the server goes away
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
    _SERVER.stop()


@pytest.fixture(scope="session")
def prefect_api_url() -> str:
    return _URL


PROMOTION_TRIGGER = "linreg predict-on-promotion"  # prefect.yaml's automation (docs/deployment.md)


def retire_promotion_trigger(deployment: str = "predict-on-promotion") -> None:
    """Delete ``deployment``'s trigger (predict-on-promotion's, or its git twin's) and its flow runs from the
    session's server. Left there, every later module's promotion would queue a prediction run for the next module
    that starts a worker of its pool."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        for automation in client.read_automations_by_name(f"linreg {deployment}"):
            client.delete_automation(automation.id)
        by_name = DeploymentFilter(name=DeploymentFilterName(any_=[deployment]))
        for run in client.read_flow_runs(deployment_filter=by_name):
            client.delete_flow_run(run.id)


def events_of(resource_id: str, name: str, timeout: float = 30) -> list:
    """The server's events ``name`` about ``resource_id``; waits for the first (the client sends them batched)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    flt = EventFilter(event=EventNameFilter(name=[name]), resource=EventResourceFilter(id=[resource_id]))
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            found = client.read_events(
                filter=flt, limit=50
            ).events  # the client's default, 100, is over the server's 50
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.3)


def worker_env(home: Path, api_url: str, **extra: str) -> dict[str, str]:
    """A process worker's environment (`isolated_env`), polling its pool every second: a test waits on it."""
    return isolated_env(
        home, PREFECT_API_URL=api_url, PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="1", **extra
    )


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    """A fresh artifacts folder per test."""
    return tmp_path / "artifacts"


@pytest.fixture
def write_csv(tmp_path: Path):
    """Write inline CSV text (or bytes) to a file and return its path as a string."""

    def write(content: str | bytes, name: str = "data.csv") -> str:
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return str(path)

    return write


@pytest.fixture
def task_log():
    """Messages logged by task runs (Prefect's task-run logger does not propagate to pytest's caplog)."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Collect(level=logging.INFO)
    logger = logging.getLogger("prefect.task_runs")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.fixture
def no_run_logger():
    """Lets a task's ``.fn`` run outside a flow: Prefect's documented way to silence ``get_run_logger``."""
    from prefect.logging import disable_run_logger

    with disable_run_logger():
        yield


def writer(folder: Path):
    """A stage's writer (`core.Outputs`) for ``folder``, for tests of the functions a stage streams its files with."""
    import stagecore as core
    import storage

    return core.Outputs(folder, "ingest", "0" * 16, {}, [], storage.open_store(folder))
