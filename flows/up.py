"""`make run`'s one local Prefect server: started in the background when none answers, then kept for the next run
and for the UI (issue 22). Prefect's own machinery: ``prefect server start --background`` with SQLite under the
project's ``.prefect/`` (git-ignored), stopped by ``prefect server stop``.

    python -m flows.up start    # prints the API URL to use, starting the server first when none answers there
    python -m flows.up status   # up or down, and where
    python -m flows.up stop     # stops the server `start` started; leaves no Prefect process behind

A server someone already runs is used as it is: ``PREFECT_API_URL`` when it is set (nothing is started for it),
or whatever answers at the project's address (``make server``'s included). One server per project: starting takes
a lock, and a second ``start`` finds the first one's server answering.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from flows.cli import print_error
from flows.local_server import descendants

# not from `storage`: importing that package (pyarrow) would double this command's 0.1 s, paid by every `make run`
PROJECT_ROOT = Path(__file__).resolve().parent.parent

PREFECT = str(Path(sys.executable).with_name("prefect"))
HOME = Path(os.environ.get("LINREG_SERVER_HOME", PROJECT_ROOT / ".prefect"))
HOST = os.environ.get("SERVER_HOST", "127.0.0.1")
PORT = int(os.environ.get("SERVER_PORT", "4200"))
STARTUP_SECONDS = 120  # a cold SQLite server (migrations) takes 10–30 s on 2 busy cores
PID_FILE = "server.pid"  # prefect.cli._server_utils.SERVER_PID_FILE_NAME


class UpError(RuntimeError):
    """A server that cannot be used or started: one line for the user."""


def project_url() -> str:
    return f"http://{HOST}:{PORT}/api"


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(HOME),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_API_URL=project_url(),
    )
    return env


def start() -> str:
    """The API URL of a healthy server: $PREFECT_API_URL's, the one at the project's address, or a new one there."""
    if given := os.environ.get("PREFECT_API_URL"):
        if not healthy(given):
            raise UpError(
                f"PREFECT_API_URL={given} does not answer; start that server, or unset PREFECT_API_URL for "
                "make run's own local server"
            )
        return given
    url = project_url()
    HOME.mkdir(parents=True, exist_ok=True)
    with open(HOME / "up.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one start at a time: the second finds the first one's server
        if healthy(url):
            return url
        (HOME / PID_FILE).unlink(missing_ok=True)  # a server that died left it behind (`start` refuses then)
        log = HOME / "server.log"
        command = [PREFECT, "server", "start", "--background", "--host", HOST, "--port", str(PORT), "--analytics-off"]
        with open(log, "ab") as out:
            done = subprocess.run(command, env=_env(), stdout=out, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise UpError(
                f"could not start a Prefect server on {HOST}:{PORT} ({tail[0].strip()}); pass SERVER_PORT=… (see {log})"
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        while not healthy(url):
            if time.monotonic() > deadline:
                stop()
                raise UpError(
                    f"the Prefect server on {HOST}:{PORT} did not answer within {STARTUP_SECONDS} s; see {log}"
                )
            time.sleep(0.5)
    return url


def alive(pid: int) -> bool:
    from storage.atomic import alive  # only `stop` and `status` ask: the start path stays light

    return alive(pid)


def _pid() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int((HOME / PID_FILE).read_text())
    return None


def stop() -> str:
    """Stop the server `start` started (Prefect's `server stop`, then whatever is left of it); say what was done."""
    pid = _pid()
    if pid is None or not alive(pid):
        (HOME / PID_FILE).unlink(missing_ok=True)
        return "no local server of this project is running"
    strays = descendants(pid)  # none seen in 3.9.1 (uvicorn, one process); killed if a later one has them
    subprocess.run([PREFECT, "server", "stop"], env=_env(), capture_output=True, check=False)
    deadline = time.monotonic() + 20
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    for leftover in [pid, *strays]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(leftover, signal.SIGKILL)
    (HOME / PID_FILE).unlink(missing_ok=True)
    return f"stopped the local Prefect server on {HOST}:{PORT} (PREFECT_HOME={HOME})"


def status() -> str:
    if given := os.environ.get("PREFECT_API_URL"):
        return f"PREFECT_API_URL={given}: {'up' if healthy(given) else 'not answering'} (used as it is)"
    url = project_url()
    pid = _pid()
    if healthy(url):
        mine = f"started by make run, PREFECT_HOME={HOME}" if pid and alive(pid) else "not started by make run"
        return f"up at {url} (UI {url.removesuffix('/api')}; {mine}); make stop stops it"
    return f"down (make run starts one at {url.removesuffix('/api')})"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv not in (["start"], ["stop"], ["status"]):
        print("usage: python -m flows.up start|stop|status", file=sys.stderr)
        return 2
    try:
        print({"start": start, "stop": stop, "status": status}[argv[0]]())
    except UpError as exc:
        print_error(exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
