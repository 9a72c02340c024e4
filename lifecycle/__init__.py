"""The model's life after evaluate, as a library: the champion (`champion`: its pointer generations on any
store; `decision`: the rule between champion and challenger) and the run history (`history`: one Parquet row
per run), and the registry (`registry`: aliases and rollback over the champion's generations).
docs/lifecycle.md describes them.

It imports `storage`, `stagecore` (its public names) and `linreg`, never `tasks` or `flows`, nor Prefect: the
Prefect tasks that decide and record (tasks/promote.py, tasks/history.py) call it. Tasks and flows use
``lifecycle.<module>.<name>`` for the names in that module's ``__all__``, and nothing else
(tests/test_surface.py).
"""

from lifecycle import champion, decision, history, markdown, registry, trend

__all__ = ["champion", "decision", "history", "markdown", "registry", "trend"]
