"""How every ingest flow ends, written once: a run named after what it ingests, and one failure path.

The failure path is the same in all four domains: say what went wrong in one line, tell the
submitter (each domain's channel), clean up what this attempt left, publish a report the
operator can act on, and re-raise so the run ends Failed. Only the telling and the cleaning
differ per domain; they come in as one ``on_failure`` callback.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from tasks.errors import is_user_error

log = logging.getLogger(__name__)

MAX_NAME = 120


def describe_error(exc: BaseException) -> str:
    """The reason in the submitter's words for bad input; the exception's own words otherwise."""
    from tasks.run_logging import user_error_of

    user = user_error_of(exc)
    if user is not None:
        return user.message
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def run_name(prefix: str, key: str) -> str:
    """``ega-EGAF…``, ``apt-test.edu.bag``: readable, no slashes, bounded."""
    key = re.sub(r"\s+", "_", key.strip()).replace("/", ".")
    return f"{prefix}-{key}"[:MAX_NAME]


def dated(prefix: str) -> Callable[[], str]:
    """A ``flow_run_name`` for a run about no one object: ``fixity-2026-11-30T0130`` (UTC)."""
    def name() -> str:
        from datetime import datetime, timezone

        return f"{prefix}-{datetime.now(timezone.utc):%Y-%m-%dT%H%M}"

    return name


def parameter(name: str, field: str | None = None) -> Any:
    """A flow-run parameter (or one field of it), for ``flow_run_name`` callables; models or dicts."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    value = (ctx.parameters or {}).get(name) if ctx is not None else None
    if field is None or value is None:
        return value
    return value.get(field) if isinstance(value, dict) else getattr(value, field, None)


def name_run(name: str) -> None:
    """Rename the current flow run once what it ingests is known (one PATCH; nothing outside a run)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None or ctx.flow_run.name == name:
        return
    try:
        ctx.client.set_flow_run_name(flow_run_id=ctx.flow_run.id, name=name)
        ctx.flow_run.name = name
    except Exception as exc:  # a name is never worth failing an ingest over
        log.debug("flow run not renamed: %s", exc)


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return log


NEXT_FOR_SYSTEM_ERROR = (
    "Nothing is needed from the submitter. The fault is on our side: a crashed run is re-run "
    "automatically, and `python flows/run.py reconcile` resumes what is left. Once the cause is fixed, "
    "sending the same input again starts a new attempt (it is not treated as a duplicate).")


@contextmanager
def failure_path(domain: str, subject: Callable[[], str], *,
                 on_failure: Callable[[BaseException, bool], Iterable[str] | None],
                 resubmit: str, context: Callable[[], dict[str, Any]] | None = None,
                 describe: Callable[[BaseException], str] = describe_error,
                 not_failures: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Wrap a flow's steps; on any exception: log, ``on_failure`` (report + clean up), failed-run report, re-raise.

    ``on_failure(exc, user_error)`` tells the domain's channel and removes this attempt's leftovers,
    returning a description of each thing it removed. ``resubmit`` says how a submitter sends a
    corrected input; ``context`` gives the submitter and source for the report. ``not_failures``
    (a cancellation, say) pass through untouched for the flow to handle.
    """
    try:
        yield
    except not_failures:
        raise
    except BaseException as exc:
        user_error = is_user_error(exc)
        reason = describe(exc)
        step = getattr(exc, "ingest_step", None)
        run_log = _run_logger()
        if user_error:
            run_log.error("rejected: %s", reason)
        else:
            run_log.error("system error%s: %s", f" in step {step}" if step else "", reason)
        try:
            exc.ingest_logged = True  # type: ignore[attr-defined]  (Prefect's own repeat is then dropped)
        except (AttributeError, TypeError):
            pass
        cleaned: list[str] = []
        try:
            cleaned = list(on_failure(exc, user_error) or [])
        except Exception as report_exc:  # noqa: BLE001 - the original error matters more
            run_log.error("could not report or clean up after the failure: %s: %s",
                          type(report_exc).__name__, report_exc)
        from flows.reporting import failure_report

        try:
            where = context() if context else {}
        except Exception:  # noqa: BLE001
            where = {}
        failure_report(domain, _safe(subject), reason=reason, user_error=user_error, step=step,
                       cleaned=cleaned, next_step=resubmit if user_error else NEXT_FOR_SYSTEM_ERROR,
                       context=where)
        raise


def _safe(subject: Callable[[], str]) -> str:
    try:
        return str(subject() or "unknown")
    except Exception:  # noqa: BLE001
        return "unknown"

