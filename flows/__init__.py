"""Flows compose the stages in `tasks/`; they compute nothing themselves."""

import os

# Offline machines (CI, air-gapped laptops) would log a telemetry error on every temporary server start.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
