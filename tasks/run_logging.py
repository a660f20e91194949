"""How a rejected input reads in a run's log: one line "rejected: <reason>", never a traceback.

Prefect logs a failed task or flow with the exception's traceback, which for bad input is
noise: the submitter's mistake is the whole story. A filter on Prefect's run loggers turns
those records into one line for a ``UserError``, before the console and the API handlers see
them, so the CLI, the worker's output and the UI all read the same. System errors keep their
traceback in the UI; on the CLI it is shown with ``--verbose`` only (``quiet_console_tracebacks``).
"""
from __future__ import annotations

import logging

from tasks.errors import UserError, is_user_error

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "prefect.engine", "prefect.flow_engine",
               "prefect.task_engine")
# Prefect's own "the flow raised" records; once our failure path has logged the rejection,
# they only repeat it.
_ENGINE_REPEATS = ("Encountered exception during execution", "Engine execution exited")


def user_error_of(exc: BaseException | None) -> UserError | None:
    while exc is not None:
        if isinstance(exc, UserError):
            return exc
        exc = exc.__cause__
    return None


class RejectedInputFilter(logging.Filter):
    """A record carrying a UserError becomes "rejected: <reason>" with no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not is_user_error(exc):
            return True
        if getattr(exc, "ingest_logged", False) and str(record.msg).startswith(_ENGINE_REPEATS):
            return False
        record.msg, record.args = "rejected: %s", (user_error_of(exc).message,)
        record.exc_info = None
        record.exc_text = None
        return True


class NoTracebackFilter(logging.Filter):
    """For the console of a CLI call without --verbose: the message, not the traceback, and the
    failure said once (by the flow's failure path), not again by every task and engine that saw it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _is_repeat(record):
            return False
        if record.exc_info or record.exc_text:
            exc = record.exc_info[1] if record.exc_info else None
            if exc is not None and str(exc) and str(exc) not in record.getMessage():
                record.msg, record.args = f"{record.getMessage()}: {type(exc).__name__}: {exc}", ()
            record.exc_info = None
            record.exc_text = None
        return True


def _is_repeat(record: logging.LogRecord) -> bool:
    message = str(record.msg)
    if message.startswith("Finished in state Failed"):
        return True  # Prefect's closing line of a failed task or flow: the reason was logged already
    if record.levelno < logging.ERROR:
        return False
    exc = record.exc_info[1] if record.exc_info else None
    if exc is not None and getattr(exc, "ingest_logged", False):
        return not message.startswith(("rejected:", "system error"))
    return record.name == "prefect.task_runs" and message.startswith("rejected:")


_FILTER = RejectedInputFilter()


def install() -> None:
    """Idempotent; kept across Prefect's logging set-up, which never removes logger filters."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def quiet_console_tracebacks() -> None:
    """Strip tracebacks from what Prefect's console handler prints (the API keeps them)."""
    import prefect.main  # noqa: F401  (sets up Prefect's logging, whose console handler this filters)
    from prefect.logging.handlers import PrefectConsoleHandler

    seen: set[int] = set()
    for logger in [logging.getLogger(), *(logging.getLogger(n) for n in ("prefect", *RUN_LOGGERS))]:
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler) and id(handler) not in seen:
                seen.add(id(handler))
                if not any(isinstance(f, NoTracebackFilter) for f in handler.filters):
                    handler.addFilter(NoTracebackFilter())


def step_logger(fallback: logging.Logger) -> logging.Logger | logging.LoggerAdapter:
    """The run's logger inside a flow or task (its lines reach the UI), else ``fallback``."""
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return fallback
    from prefect import get_run_logger

    return get_run_logger()


def rate(nbytes: int, seconds: float) -> str:
    """``512.0 MiB at 270 MB/s``: what a person wants from a streaming step."""
    from flows.reporting import human_size

    size = human_size(nbytes).split(" (")[0]
    return f"{size} at {nbytes / seconds / 1e6:.0f} MB/s" if seconds > 0 else size
