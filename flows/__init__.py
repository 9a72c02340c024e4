"""Flows compose the stages in `tasks/`; they compute nothing themselves."""

import os

# Offline machines (CI, air-gapped laptops) would log a telemetry error on every temporary server start.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A run without PREFECT_API_URL starts a temporary server: on a busy 2-core machine that took 13-23 s, and
# Prefect's 20 s default timed out (seen in the scale benchmark). A user can still set a value of their own.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
# Each call to a Prefect server that has gone away is retried with backoff 2, 4, 8, 16, 32 s by default: a run
# whose server died mid-run failed after ~5 minutes (several calls, one after the other). Two retries (about
# 6 s a call) still ride out a server restart; then the run ends in one line (flows/train.py).
os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "2")
