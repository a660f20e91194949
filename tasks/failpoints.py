"""Failpoints: kill a run at a named step, on purpose, to prove that recovery needs no human.

Issue 13 asks that a kill at any step of any domain end in one stored copy, one terminal answer and
no leftovers. Timed kills from outside land somewhere in a step, rarely at its very start and never
the same place twice; a failpoint lands exactly where it is told, every time, for the price of one
environment lookup per task. bench/kill_loop.py and tests/integration/test_kill_loop.py use it.

Off unless set. ``INGEST_FAILPOINT`` is a comma-separated list of ``<task-name>:<action>``:

- ``kill``: SIGKILL this process at the start of that task (its first attempt): nothing of the
  step runs, and no ``finally``, ``atexit`` or failure path of ours either, as when a machine dies.
- ``kill-after=<seconds>``: start the step, and SIGKILL this process that many seconds into it
  (a kill in the middle of a byte-heavy step: a half-written ``.part``, an open multipart upload).

``INGEST_FAILPOINT_TRACE=<file>`` appends ``<pid> <task-name> <unix time>`` at every task start, so
a harness learns a flow's steps and which process runs them (under the warm runner, the fork, not
the caller it launched), and can kill that process from outside while a step is under way.
"""
from __future__ import annotations

import os
import signal
import threading
import time

FAILPOINT_ENV = "INGEST_FAILPOINT"
TRACE_ENV = "INGEST_FAILPOINT_TRACE"


def parse(spec: str) -> dict[str, tuple[str, float]]:
    """``"a:kill,b:kill-after=0.5"`` → ``{"a": ("kill", 0.0), "b": ("kill-after", 0.5)}``."""
    points: dict[str, tuple[str, float]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        step, sep, action = item.rpartition(":")
        if not sep or not step:
            raise ValueError(f"{FAILPOINT_ENV}: {item!r} is not <task-name>:<action>")
        if action == "kill":
            points[step] = ("kill", 0.0)
        elif action.startswith("kill-after="):
            points[step] = ("kill-after", float(action.split("=", 1)[1]))
        else:
            raise ValueError(f"{FAILPOINT_ENV}: unknown action {action!r} (kill, kill-after=<seconds>)")
    return points


def at_task_start(step: str) -> None:
    """Called by every ingest task before its function runs; does nothing unless the env asks."""
    trace = os.environ.get(TRACE_ENV)
    if trace:
        with open(trace, "a", encoding="utf-8") as out:
            out.write(f"{os.getpid()} {step} {time.time():.3f}\n")
    spec = os.environ.get(FAILPOINT_ENV)
    if not spec:
        return
    action = parse(spec).get(step)
    if action is None:
        return
    kind, seconds = action
    if kind == "kill":
        _die()
    timer = threading.Timer(seconds, _die)
    timer.daemon = True
    timer.start()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
