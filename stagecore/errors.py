"""The one exception type for problems the user can fix (bad data, bad parameters)."""

import logging


class InputError(ValueError):
    """A problem with the user's input, reported as one line without a traceback.

    The message names the file, column or parameter and says what to do about it.
    """


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
