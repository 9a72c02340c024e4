"""One real Prefect server per test session, isolated from the user's Prefect state, started only when needed.

The environment is set here, at import, because Prefect reads its settings when it is first imported: a
temporary PREFECT_HOME, and PREFECT_API_URL on a loopback port picked now. The server itself starts before the
first test that is not marked ``no_server`` (`pytest_runtest_setup`), so ``pytest -m no_server`` (``make
test-fast``) starts none. Until it starts, the port is held by a bound socket that does not listen: no other
process is given the port, and a ``no_server`` test that does call the API is refused at once ("connection
refused"; Prefect retries that only once it has connected) instead of hanging.

``LINREG_TEST_SERVER=0`` never starts the server: every test runs against the refusing port, which is how to
find the tests that need none (they pass).
"""

from __future__ import annotations

import atexit
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
