"""The test session's Prefect server (tests/conftest.py) starts only before the first test not marked ``no_server``.

Each case runs pytest in a subprocess, with the real conftest, on a small test file written here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT

INNER = """
import os
import socket
import urllib.parse
import urllib.request

import pytest


def api_port() -> int:
    return urllib.parse.urlsplit(os.environ["PREFECT_API_URL"]).port


def refused() -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", api_port())) != 0


@pytest.mark.no_server
def test_1_no_server_before():
    assert refused(), "a server answers before any test needs one"


def test_2_needs_server():
    with urllib.request.urlopen(os.environ["PREFECT_API_URL"] + "/health", timeout=10) as response:
        assert response.status == 200


@pytest.mark.no_server
def test_3_talks_to_the_api():
    from prefect import flow

    @flow
    def nothing():
        return 1

    assert nothing() == 1
"""


def run_inner(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(INNER)
    env = {k: v for k, v in os.environ.items() if k != "LINREG_TEST_SERVER"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT)])
    command = [sys.executable, "-m", "pytest", "-p", "conftest", "-c", str(ROOT / "pyproject.toml")]
    command += ["--rootdir", str(tmp_path), "-q", "-rA", "-p", "no:cacheprovider", *args, str(test_file)]
    started = time.monotonic()
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    return done, time.monotonic() - started


def test_only_no_server_tests_start_no_server_and_the_api_is_refused_at_once(tmp_path: Path):
    done, seconds = run_inner(tmp_path, "-m", "no_server")
    out = done.stdout + done.stderr
    assert "1 failed, 1 passed, 1 deselected" in out, out
    assert "PASSED test_inner.py::test_1_no_server_before" in out, out
    assert "FAILED test_inner.py::test_3_talks_to_the_api" in out, out
    assert "Connection refused" in out, out
    assert seconds < 120, f"took {seconds:.0f} s: a no_server test that calls the API must fail at once"


def test_the_server_starts_before_the_first_test_that_needs_it(tmp_path: Path):
    done, _ = run_inner(tmp_path, "-k", "not talks_to_the_api")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "2 passed, 1 deselected" in out, out
    assert "PASSED test_inner.py::test_1_no_server_before" in out, out
    assert "PASSED test_inner.py::test_2_needs_server" in out, out
