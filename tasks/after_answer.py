"""Work a CLI call's answer need not wait for, done after the answer in a warm runner's fork.

A call through the warm runner (deployments/warm.py) tells its caller the exit status as soon as the
command is done; what the user does not read at the prompt (the run's report artifact, Prefect's
log and event shipping) follows in the same fork before it exits. Everywhere else (a call in its own
process, a deployed run, tests) ``later`` runs the work at once, as before.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)
_held: list[list[Callable[[], None]]] = []  # one list once ``hold`` was called in this process


def hold() -> None:
    """From now on, ``later`` queues work until ``run_held`` (the fork calls it after answering)."""
    if not _held:
        _held.append([])


def later(work: Callable[[], None]) -> None:
    if _held:
        _held[0].append(work)  # (list.append is atomic: batch calls queue from several threads)
    else:
        work()


def run_held() -> None:
    while _held and _held[0]:
        work = _held[0].pop(0)
        try:
            work()
        except Exception as exc:  # noqa: BLE001 - one report's failure must not lose the others
            log.warning("deferred work failed: %s: %s", type(exc).__name__, exc)
