"""The warm runner's wire protocol, shared by its callers (CLI calls, the worker's launcher) and the runner.

Stdlib only, and nothing at import time: the worker's launcher (deployments/warm_engine.py) pays for
every import here on every flow run, before it knows whether a runner will take the run.

A caller connects to the runner's Unix socket and sends one length-prefixed JSON request with its
stdin/stdout/stderr (SCM_RIGHTS). Then lines: the fork answers ``started <pid>`` (or the runner
``stale``); the caller may send ``go`` (engine calls: the caller commits to the fork, see
warm_engine) and ``signal <n>`` (a signal it received, passed on); the fork ends with ``exit <code>``,
or the runner, which reaps the fork, with ``killed <signal>`` when it died by a signal.
"""
from __future__ import annotations

import array
import json
import os
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("flows", "tasks", "blocks", "deployments")
LEN = struct.Struct("!I")
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
DISABLE_ENV = "INGEST_WARM_RUNNER"  # "0" runs every call in its own process, as before


def enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "1") not in ("0", "false", "no")


def sock_path(home: Path) -> Path:
    return home / "prefect" / "runner.sock"


def fingerprint(root: Path = ROOT) -> str:
    """What the runner's imports depend on: interpreter, project source, installed packages."""
    import sysconfig

    newest = 0.0
    for name in SOURCE_DIRS:
        if not (root / name).is_dir():
            continue
        stack = [root / name]
        while stack:
            for entry in os.scandir(stack.pop()):
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        stack.append(Path(entry.path))
                elif entry.name.endswith((".py", ".json", ".sql")):
                    newest = max(newest, entry.stat().st_mtime)
    try:
        packages = os.stat(sysconfig.get_paths()["purelib"]).st_mtime
    except OSError:
        packages = 0.0
    # the interpreter by its prefix (a venv's or the base's) and version, not by its path: the worker's
    # "python3" and the runner's "python" are the same interpreter
    return json.dumps([sys.prefix, sys.version, str(root), newest, packages])


def send_request(conn: socket.socket, request: dict[str, Any]) -> None:
    """The request and this process's fds 0, 1 and 2, which the fork makes its own."""
    body = json.dumps(request).encode()
    conn.sendmsg([LEN.pack(len(body)), body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))])


def read_line(conn: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1)  # one byte at a time: what follows the line belongs to the next reader
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


def forward_signals(conn: socket.socket) -> list[int]:
    """SIGTERM, SIGINT and SIGHUP sent to the caller (a service manager, Ctrl-C, a worker cancelling a
    run) reach the fork, whose own handlers then run, as they would in-process."""
    received: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        try:
            conn.sendall(f"signal {signum}\n".encode())
        except OSError:
            pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    return received


def end_line(status: int) -> str:
    """The runner's line for a fork it reaped: how the caller should end (a raw wait status)."""
    if os.WIFSIGNALED(status):
        return f"killed {os.WTERMSIG(status)}\n"
    return f"exit {os.waitstatus_to_exitcode(status)}\n"


def run_in_runner(home: Path, argv: list[str], *, unparsed: bool = False) -> int | None:
    """Run this CLI call in the home's warm runner; None when there is none, it is stale, or (``unparsed``)
    its fork found the command one that runs in the caller's own process: then run it in-process.

    ``unparsed``: ``flows/run.py`` calls this first thing, before importing the CLI's modules or
    checking the API (~0.25 s of a call): the fork parses the command line and checks the API, with
    everything already imported. A runner is up only while its home's API is.
    """
    if not enabled():
        return None
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(sock_path(home)))
    except OSError:
        return None
    with conn:
        try:
            send_request(conn, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ),
                                "fingerprint": fingerprint(), "unparsed": unparsed})
            reply = read_line(conn)
        except OSError:
            return None
        if not reply.startswith("started"):
            return None  # stale, or refused: the caller runs the command itself
        forwarded = forward_signals(conn)
        tail = read_line(conn)
    if tail.startswith("exit "):
        return int(tail.split()[1])
    if tail.startswith("killed "):
        return 128 + int(tail.split()[1])
    if forwarded:  # the signal we passed on ended the call before it could answer
        return 128 + forwarded[-1]
    print("archive-ingest: the warm runner's process for this call died without an exit status", file=sys.stderr)
    return 2
