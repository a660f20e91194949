"""A CLI call's fork answers its caller, then finishes its after-answer work: the runner's backstop, which
kills forks whose caller went away, must tell that fork from an abandoned one."""
from __future__ import annotations

import os
import socket
import time

from deployments import warm


def test_an_answered_fork_is_not_abandoned(tmp_path) -> None:
    log = os.open(tmp_path / "runner.log", os.O_WRONLY | os.O_CREAT)
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the fork: answer, then go on as after-answer work would
        try:
            ours.close()
            warm._LOG_FD[:] = [log]
            warm._answer(theirs, 0, let_go=True)
            time.sleep(5)
        finally:
            os._exit(0)
    try:
        theirs.close()
        assert warm.read_line(ours) == "exit 0"
        deadline = time.monotonic() + 5
        while warm._comm(pid) != warm.ANSWERED_COMM and time.monotonic() < deadline:
            time.sleep(0.01)
        assert warm._comm(pid) == warm.ANSWERED_COMM
        assert warm.abandoned_after("cli", answered=True) == warm.ANSWERED_SECONDS
        assert warm.abandoned_after("cli", answered=False) == warm.GRACE_SECONDS + 1
        assert warm.abandoned_after("engine", answered=True) == 1.0
        assert warm._comm(os.getpid()) != warm.ANSWERED_COMM  # a call that has not answered
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        ours.close()
        os.close(log)
