"""Start and stop a real ``prefect server`` (tests, benchmarks): own PREFECT_HOME, free loopback port, killed by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PREFECT = str(Path(sys.executable).with_name("prefect"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def isolated_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for a Prefect process that shares nothing with the user's ~/.prefect."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_LOCAL_STORAGE_PATH=str(home / "storage"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        **extra,
    )
    return env


@dataclass
class Server:
    process: subprocess.Popen
    url: str  # the API URL, .../api
    log: Path

    def stop(self) -> None:
        """Kill the server's whole process group, whatever state it is in."""
        stop_process(self.process)


def descendants(pid: int) -> list[int]:
    """PIDs of every process below ``pid`` (from /proc; empty where there is none), children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def start_process(command: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
    """Start ``command`` in its own process group (so `stop_process` takes its children too), output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        return subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Signal ``process``'s group, then SIGKILL whatever is left of it and of processes it started elsewhere.

    Workers start flow runs in sessions of their own, which a signal to the worker's group would not reach.
    """
    if process.poll() is not None:
        return
    strays = descendants(process.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    for pid in strays:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def start_server(home: Path, timeout: float = 120.0, port: int | None = None, **extra_env: str) -> Server:
    """``prefect server start`` on ``port`` (a free loopback port by default); returns once ``/api/health`` answers."""
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = home / "server.log"
    env = isolated_env(home, PREFECT_API_URL=url, PREFECT_UI_API_URL=url, **extra_env)
    process = start_process(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off"], env, log
    )
    server = Server(process, url, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"prefect server did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


def start_moto(log: Path, **extra_env: str) -> tuple[subprocess.Popen, str]:
    """moto's standalone S3 server (``moto[server]``) on a free loopback port: (process, endpoint URL), once it
    answers. For the tests and benchmarks that need an S3-protocol store; ``extra_env`` goes to the server."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log.parent.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **extra_env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            return server, endpoint
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                server.wait(timeout=10)
                raise RuntimeError(f"moto server did not start: {log.read_text()[-500:]}") from None
            time.sleep(0.2)
