"""Is a pid a live process? Shared by the local API, its warm runner and the embedded PostgreSQL's reaper.

Stdlib only: the CLI consults it before anything heavy is imported.
"""
from __future__ import annotations

import os


def process_state(pid: int) -> str:
    """The state letter from /proc/<pid>/stat (R, S, T, Z, ...), or "" when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def pid_alive(pid: int) -> bool:
    """True for a running (or stopped) process; a zombie is dead for our purposes."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return process_state(pid) not in ("Z", "X", "")
