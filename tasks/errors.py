"""The two kinds of failure every flow distinguishes.

A ``UserError`` is bad input: retrying cannot help, the submitter must be told
why, and the run ends Failed. Anything else is transient and is retried with
exponential backoff.
"""
from __future__ import annotations

from typing import Any


class UserError(Exception):
    """Bad input from the submitter: never retried, reported verbatim."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def is_user_error(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, UserError):
            return True
        exc = exc.__cause__
    return False


def retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry transient failures only."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - we classify, not handle
        return not is_user_error(exc)
    return True


def backoff(retries: int = 3, base: float = 2.0) -> list[float]:
    """Exponential retry delays (base, 2·base, 4·base, …) for ``retry_delay_seconds``."""
    return [base * (2**i) for i in range(retries)]
