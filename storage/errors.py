"""The one exception type for problems the user can fix (bad data, bad parameters).

`InputError` is the library's (linreg/errors.py), imported here as the very same class. The library raises it
without knowing about stages (a diverging fit, a constant target), and everything that turns a user's mistake
into one line and exit 2 (the CLI's ``except InputError``, the log filter below) catches it with no second
type to list. A subclass defined here would miss what the library raises; a second base would mean widening
every ``except``. The dependency points one way: the stage core needs the library's error, never the reverse.
"""

import logging

from linreg.errors import InputError


def api_lost(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is the Prefect API's connection failing: httpx's."""
    seen = 0
    while exc is not None and seen < 10:
        if type(exc).__module__.split(".")[0] in ("httpx", "httpcore"):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class NoTracebackForInputErrors(logging.Filter):
    """Prefect logs a failed run's traceback; for a user's mistake, or a server that went away, the one-line
    message is the whole story."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and (isinstance(record.exc_info[1], InputError) or api_lost(record.exc_info[1])):
            record.exc_info, record.exc_text = None, None
        return True


# On the loggers Prefect reports failed task and flow runs with: set here, on import, so that every process
# that runs a stage (the flow's, a worker's, a Dask worker's) keeps user errors to one line.
for _name in ("prefect.task_runs", "prefect.flow_runs"):
    logging.getLogger(_name).addFilter(NoTracebackForInputErrors())


class IntegrityError(InputError):
    """An artifact is missing, or does not match its manifest (truncated, altered, or never finished)."""


class Transient(InputError):
    """A failure that may pass by itself: a store or a network that did not answer, a connection dropped. A stage
    retries it (`retry_transient`); once its retries are spent it is one line like any user error."""


def retry_transient(task: object, task_run: object, state: object) -> bool:
    """Prefect's ``retry_condition_fn`` of every stage that touches storage: retry a `Transient` failure (or a
    connection or timeout error nothing named yet), never a user's mistake (`InputError`) or a damaged file
    (`IntegrityError`), which would fail the same way again."""
    exc = getattr(state, "data", None)
    if isinstance(exc, Transient):
        return True
    return isinstance(exc, ConnectionError | TimeoutError) and not isinstance(exc, InputError)


# Retries of a stage that touches storage or the network: two more tries, after about 2 s and 8 s (±50 %).
# Overridden on the stage's decorator (``@core.stage(..., retries=0)``).
RETRIES: dict[str, object] = {
    "retries": 2,
    "retry_delay_seconds": [2, 8],
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_transient,
}
