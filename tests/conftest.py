"""One real Prefect server per test session, isolated from the user's Prefect state.

The environment is set here, at import, because Prefect reads its settings when it is first imported.
"""

from __future__ import annotations

import atexit
import os
import signal
import tempfile
from pathlib import Path

import pytest

from flows.local_server import isolated_env, start_server

# A shell that runs the tests in the background (`bash .ci/run &`) starts them with SIGINT ignored, and every
# process a test starts would inherit that: a Ctrl-C sent to `serve` would do nothing. A handler, unlike
# "ignore", is reset to the default when a child starts, so children get a working Ctrl-C.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_HOME = Path(tempfile.mkdtemp(prefix="linreg-prefect-"))
_SERVER = start_server(_HOME / "server")
atexit.register(_SERVER.stop)
os.environ.update(isolated_env(_HOME / "client", PREFECT_API_URL=_SERVER.url))

ROOT = Path(__file__).resolve().parent.parent
ADVERTISING = ROOT / "data" / "Advertising.csv"


def pytest_unconfigure(config):
    import sys

    if "prefect" in sys.modules:  # send the run logs still queued before the server goes away
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
    _SERVER.stop()


@pytest.fixture(scope="session")
def prefect_api_url() -> str:
    return _SERVER.url


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
