"""Flows compose the stages in `tasks/`; they compute nothing themselves."""

import os

# Offline machines (CI, air-gapped laptops) would log a telemetry error on every temporary server start.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A run without PREFECT_API_URL starts a temporary server: on a busy 2-core machine that took 13-23 s, and
# Prefect's 20 s default timed out (seen in the scale benchmark). A user can still set a value of their own.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
