"""How our plain functions become Prefect tasks: retries for transient errors only.

Every task gets exponential backoff and a retry condition that gives up at once
on a UserError. The backoff base comes from INGEST_RETRY_BASE_SECONDS so tests
and demos need not wait through production delays.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import failpoints, prefect_client_reuse, run_logging
from tasks.errors import backoff, retry_unless_user_error

run_logging.install()  # every process that runs our tasks logs a rejected input as one line
prefect_client_reuse.install()  # one TLS context and one result-storage read per process, not per use

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_RETRIES = 3


def retry_base() -> float:
    return float(os.environ.get("INGEST_RETRY_BASE_SECONDS", "2"))


def ingest_task(fn: F | None = None, *, retries: int = DEFAULT_RETRIES, name: str | None = None,
                **options: Any):
    """``task(fn)`` with our retry policy; side effects mean no result caching unless asked."""
    def wrap(f: F):
        options.setdefault("cache_policy", NO_CACHE)
        step = name or f.__name__.replace("_", "-")
        return task(
            tag_failed_step(f, step),
            name=step,
            retries=retries,
            retry_delay_seconds=backoff(retries, retry_base()) if retries else 0,
            retry_condition_fn=retry_unless_user_error,
            **options,
        )

    return wrap(fn) if fn is not None else wrap


def tag_failed_step(fn: F, step: str) -> F:
    """Let the flow's failure report name the step that failed: the first step an exception leaves is it."""
    @functools.wraps(fn)
    def run_step(*args: Any, **kwargs: Any) -> Any:
        failpoints.at_task_start(step)  # off unless INGEST_FAILPOINT(_TRACE) is set: bench/kill_loop.py
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            if getattr(exc, "ingest_step", None) is None:
                try:
                    exc.ingest_step = step  # type: ignore[attr-defined]
                except (AttributeError, TypeError):  # an exception type that takes no attributes
                    pass
            raise

    return run_step  # type: ignore[return-value]
