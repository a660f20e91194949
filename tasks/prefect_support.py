"""How our plain functions become Prefect tasks: retries for transient errors only.

Every task gets exponential backoff and a retry condition that gives up at once
on a UserError. The backoff base comes from INGEST_RETRY_BASE_SECONDS so tests
and demos need not wait through production delays.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.errors import backoff, retry_unless_user_error

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_RETRIES = 3


def retry_base() -> float:
    return float(os.environ.get("INGEST_RETRY_BASE_SECONDS", "2"))


def ingest_task(fn: F | None = None, *, retries: int = DEFAULT_RETRIES, name: str | None = None,
                **options: Any):
    """``task(fn)`` with our retry policy; side effects mean no result caching unless asked."""
    def wrap(f: F):
        options.setdefault("cache_policy", NO_CACHE)
        return task(
            f,
            name=name or f.__name__.replace("_", "-"),
            retries=retries,
            retry_delay_seconds=backoff(retries, retry_base()) if retries else 0,
            retry_condition_fn=retry_unless_user_error,
            **options,
        )

    return wrap(fn) if fn is not None else wrap
