"""Where the project is: its root folder, its own packages (whose source keys the stages), the defaults."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = PROJECT_ROOT / "data" / "Advertising.csv"
DEFAULT_ROOT = PROJECT_ROOT / "data" / "artifacts"


# the project's own code: every line of it that a stage can run is in the stage's key
PROJECT_PACKAGES = ("linreg", "storage", "stagecore", "lifecycle", "tasks", "flows")
