"""The work pool's flow-run command: hand the run to the worker machine's warm runner, else run it here.

Prefect's process worker starts one process per flow run (``python -m prefect.engine``, the run id in
PREFECT__FLOW_RUN_ID). Before this, each run paid an interpreter start and the imports of Prefect,
boto3, astropy and our flows, twice (Prefect's workspace supervisor, then the engine), which was
most of the wait between a message and its run. ``python flows/run.py worker`` keeps a warm runner
(deployments/warm.py) beside the worker and tells this launcher its socket (INGEST_WARM_SOCKET).
The launcher imports only the stdlib, passes the run's environment, cwd and fds to the runner,
which forks; the fork runs Prefect's engine for the run. The launcher stays the process the worker
knows: signals it gets (a cancel) reach the fork, it exits with the fork's code or dies by the
fork's signal (a SIGKILLed fork is a Crashed run, as before), and when the launcher is killed the
fork dies at once.

No runner, a runner that does not answer, or one that imported other code (``stale``): the engine
runs in this process, as ``python -m prefect.engine`` would. A run never fails because of the runner.
"""
from __future__ import annotations

import os
import signal
import socket
import sys

SOCKET_ENV = "INGEST_WARM_SOCKET"
ANSWER_SECONDS = 20.0  # the runner forks in milliseconds; it may be busy importing between runs


def hand_off(path: str) -> int | None:
    """The run's exit code once a fork of the runner ran it; None when no fork took it (run it here)."""
    from deployments.warm_wire import fingerprint, forward_signals, read_line, send_request

    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(ANSWER_SECONDS)
        conn.connect(path)
        send_request(conn, {"kind": "engine", "cwd": os.getcwd(), "env": dict(os.environ),
                            "fingerprint": fingerprint()})
        reply = read_line(conn)
        if not reply.startswith("started "):
            conn.close()
            return None  # stale or refused
        conn.sendall(b"go\n")  # from here the fork runs the flow: never run it twice
    except OSError:
        conn.close()  # a fork that did not get "go" exits without running anything
        return None
    conn.settimeout(None)
    forwarded = forward_signals(conn)
    tail = read_line(conn)
    conn.close()
    if tail.startswith("exit "):
        return int(tail.split()[1])
    if tail.startswith("killed "):
        die_by(int(tail.split()[1]))
    if forwarded:
        return 128 + forwarded[-1]
    print("archive-ingest: the warm runner lost this flow run's process (the runner was killed)", file=sys.stderr)
    return 1


def die_by(signum: int) -> None:
    """End as the fork ended, so the worker reports what it would have seen (e.g. -9: Crashed)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if signum not in (signal.SIGKILL, signal.SIGSTOP):  # (those two have no handler to reset)
        signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
    os.kill(os.getpid(), signum)


def run_in_process() -> None:
    """``python -m prefect.engine``, in this process (raises SystemExit as it would)."""
    import runpy

    runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)


def main() -> int:
    # A session of its own, as Prefect gives a run's process: a worker killed with its process group
    # leaves its runs to finish; a cancel (a signal to this pid) still reaches the fork.
    try:
        os.setsid()
    except OSError:
        pass
    path = os.environ.get(SOCKET_ENV)
    code = hand_off(path) if path else None
    if code is not None:
        return code
    run_in_process()
    return 0


if __name__ == "__main__":
    sys.exit(main())
