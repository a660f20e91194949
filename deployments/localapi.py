"""One long-lived Prefect API per INGEST_HOME, started on demand and shared by every CLI call.

Prefect's temporary server costs ~7 s per CLI call, times out on a loaded machine and then
leaks its process. Instead the first call that needs Prefect starts a detached server for its
home (``python -m deployments.localapi serve``): uvicorn serving Prefect's app in one process,
on loopback, on a free port, with its database on the home's embedded PostgreSQL (or the one
``init --prefect-database`` recorded). Its URL and pid live in ``$INGEST_HOME/prefect/api.json``;
later calls check its health and reuse it. A file lock makes concurrent first calls start one
server. The server stops itself after an idle time (no request and no live CLI client), or on
``python flows/run.py server stop``. When the user set ``PREFECT_API_URL``, nothing is started.

This module must stay light: it runs before ``import prefect`` in every CLI call.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasks.processes import pid_alive, process_state

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IDLE_MINUTES = 30.0
DEFAULT_START_TIMEOUT = 900.0  # generous: a fresh home runs Prefect's migrations, on a machine that may be loaded
DEFAULT_ANSWER_TIMEOUT = 120.0  # a running server silent this long is taken for hung and replaced
IDLE_ENV = "INGEST_LOCAL_API_IDLE_MINUTES"
START_TIMEOUT_ENV = "INGEST_LOCAL_API_START_TIMEOUT"
ANSWER_TIMEOUT_ENV = "INGEST_LOCAL_API_ANSWER_TIMEOUT"
SERVE_MARK = "deployments.localapi"


_started_here: list[ApiState] = []  # the server this process started, if any (demo stops what it started)


class LocalApiError(RuntimeError):
    """The local API could not be started (its log says why)."""


@dataclass
class ApiState:
    url: str
    pid: int
    port: int
    home: str
    database: str
    started_at: float
    idle_minutes: float
    ready: bool = False  # set once it has served: from then on, silence means hung, not still starting


# ---------------------------------------------------------------- where things live

def home() -> Path:
    return Path(os.environ.get("INGEST_HOME") or "./var").resolve()


def api_dir(at: Path | None = None) -> Path:
    path = (at or home()) / "prefect"
    path.mkdir(parents=True, exist_ok=True)
    return path


def state_path(at: Path | None = None) -> Path:
    return api_dir(at) / "api.json"


def log_path(at: Path | None = None) -> Path:
    return api_dir(at) / "api.log"


def clients_dir(at: Path | None = None) -> Path:
    path = api_dir(at) / "clients"
    path.mkdir(exist_ok=True)
    return path


def read_state(at: Path | None = None) -> ApiState | None:
    try:
        return ApiState(**json.loads(state_path(at).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_state(state: ApiState, at: Path) -> None:
    tmp = state_path(at).with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(asdict(state)))
    os.replace(tmp, state_path(at))


@contextmanager
def _locked(at: Path) -> Iterator[None]:
    """An exclusive lock on the home's API; released by the kernel even when the holder is killed."""
    with open(api_dir(at) / "api.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---------------------------------------------------------------- processes

def _is_our_server(state: ApiState) -> bool:
    """The recorded pid is still this home's server, not a recycled pid."""
    try:
        cmdline = Path(f"/proc/{state.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in cmdline]
    return SERVE_MARK in args and state.home in args and pid_alive(state.pid)


def healthy(url: str, timeout: float = 2.0) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _terminate(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM (uvicorn shuts down cleanly and the database handle is released), SIGKILL if it lingers
    (at once when the process is stopped: it could not act on SIGTERM)."""
    try:
        os.kill(pid, signal.SIGKILL if process_state(pid) in ("T", "t") else signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------- clients

def register_client(at: Path | None = None) -> None:
    """Mark this process as a user of the API, so the server never idles out under a long run."""
    marker = clients_dir(at) / str(os.getpid())
    marker.touch()
    import atexit

    atexit.register(_unregister_client, marker)


def _unregister_client(marker: Path) -> None:
    try:
        marker.unlink()
    except OSError:
        pass
    try:  # the departure is activity: the idle clock starts now
        os.utime(marker.parent)
    except OSError:
        pass


def live_clients(at: Path | None = None) -> list[int]:
    """Pids of CLI calls using the API; markers of killed calls are removed."""
    live = []
    for marker in clients_dir(at).iterdir():
        try:
            pid = int(marker.name)
        except ValueError:
            continue
        if pid_alive(pid):
            live.append(pid)
        else:
            marker.unlink(missing_ok=True)
    return live


# ---------------------------------------------------------------- the client side

def user_api_url(*, loaded_settings: bool = True) -> str | None:
    """An API the user chose (PREFECT_API_URL in the environment or, with ``loaded_settings``, already in
    Prefect's settings)."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    if loaded_settings and "prefect.settings" in sys.modules:
        from prefect.settings import get_current_settings

        return get_current_settings().api.url or None
    return None


def ensure(*, announce: bool = True, idle_minutes: float | None = None, caller_env: bool = False) -> str:
    """The URL of this home's API: the user's, a healthy running one, or one started now.

    Sets PREFECT_API_URL for this process (it must run before Prefect reads its settings).
    ``caller_env``: a warm runner's fork, whose loaded Prefect settings are the runner's, decides from
    its caller's environment alone, as the caller would have.
    """
    chosen = user_api_url(loaded_settings=not caller_env)
    if chosen:
        return chosen
    at = home()
    register_client(at)
    state = _reusable(read_state(at))
    if state is None:
        with _locked(at):
            state = _reusable(read_state(at), wait=True)
            if state is None:
                state = _start(at, announce=announce, idle_minutes=idle_minutes)
                _started_here.append(state)
    os.environ["PREFECT_API_URL"] = state.url
    return state.url


def started_here() -> ApiState | None:
    """The local server this process started (None when it found one running, or uses the user's API)."""
    return _started_here[-1] if _started_here else None


def _reusable(state: ApiState | None, *, wait: bool = False) -> ApiState | None:
    """The recorded server when it is alive and healthy. With ``wait`` (under the lock), a live server
    that is still starting, or slow under load, gets time before it is declared unhealthy and replaced."""
    if state is None or not _is_our_server(state):
        return None
    if healthy(state.url):
        return state
    if not wait:
        return None
    if state.ready:
        deadline = time.monotonic() + float(os.environ.get(ANSWER_TIMEOUT_ENV) or DEFAULT_ANSWER_TIMEOUT)
    else:  # still starting (a fresh home runs Prefect's migrations): give it the start timeout
        deadline = time.monotonic() + max(0.0, state.started_at + _start_timeout() - time.time())
    while time.monotonic() < deadline and _is_our_server(state):
        if healthy(state.url, timeout=5):
            return state
        time.sleep(0.25)
    if _is_our_server(state):
        print(f"archive-ingest: the local Prefect API (pid {state.pid}) does not answer; replacing it",
              file=sys.stderr, flush=True)
        _terminate(state.pid)
    return None


def _start_timeout() -> float:
    return float(os.environ.get(START_TIMEOUT_ENV) or DEFAULT_START_TIMEOUT)


def _start(at: Path, *, announce: bool, idle_minutes: float | None, port: int | None = None) -> ApiState:
    if announce:
        print(f"archive-ingest: starting the local Prefect API for {at} (reused by later calls; "
              f"'python flows/run.py server stop' stops it)", file=sys.stderr, flush=True)
    idle = idle_minutes if idle_minutes is not None else float(os.environ.get(IDLE_ENV) or DEFAULT_IDLE_MINUTES)
    last_error = ""
    for attempt in range(3):
        chosen = port if (port and attempt == 0) else _free_port()
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env["INGEST_HOME"] = str(at)
        env["PREFECT_HOME"] = str(api_dir(at))
        with open(log_path(at), "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", SERVE_MARK, "serve", "--home", str(at), "--port", str(chosen),
                 "--idle-minutes", str(idle)],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)  # detached: a Ctrl-C or kill of this call never reaches it
        url = f"http://127.0.0.1:{chosen}/api"
        deadline = time.monotonic() + _start_timeout()
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if healthy(url, timeout=5):
                state = read_state(at)
                if state is not None and state.pid == proc.pid:
                    if not state.ready:  # it has answered: from now on silence means hung
                        state.ready = True
                        _write_state(state, at)
                    return state
            time.sleep(0.1)
        if proc.poll() is None:  # timed out: never leave it behind
            _terminate(proc.pid)
            last_error = f"no answer from {url} within {_start_timeout():.0f} s"
        else:
            last_error = f"the server exited with status {proc.returncode}"
    tail = log_path(at).read_text(errors="replace")[-2000:] if log_path(at).exists() else ""
    raise LocalApiError(f"could not start the local Prefect API: {last_error}; log {log_path(at)}:\n{tail}")


# ---------------------------------------------------------------- operator commands

def stop(at: Path | None = None, timeout: float = 20.0) -> dict[str, Any]:
    at = at or home()
    with _locked(at):
        state = read_state(at)
        if state is None or not _is_our_server(state):
            state_path(at).unlink(missing_ok=True)
            return {"stopped": False, "running": False, "home": str(at)}
        _terminate(state.pid, timeout)
        state_path(at).unlink(missing_ok=True)
    return {"stopped": True, "pid": state.pid, "url": state.url, "home": str(at)}


def status(at: Path | None = None) -> dict[str, Any]:
    at = at or home()
    chosen = os.environ.get("PREFECT_API_URL")
    state = read_state(at)
    if chosen and not (state is not None and state.url == chosen):
        return {"running": healthy(chosen), "url": chosen, "managed": False,
                "note": "PREFECT_API_URL is set: that API is used and no local server is started"}
    if state is None or not _is_our_server(state):
        return {"running": False, "managed": True, "home": str(at)}
    return {"running": True, "managed": True, "healthy": healthy(state.url), "url": state.url,
            "ui": state.url[: -len("/api")], "pid": state.pid, "database": state.database,
            "uptime_seconds": round(time.time() - state.started_at, 1), "idle_minutes": state.idle_minutes,
            "clients": len(live_clients(at)), "log": str(log_path(at)), "home": str(at)}


def restart(at: Path | None = None) -> str | None:
    """Restart a running local server on the same port (after its database setting changed)."""
    at = at or home()
    state = read_state(at)
    if state is None or not _is_our_server(state) or user_api_url() not in (None, state.url):
        return None
    with _locked(at):
        _terminate(state.pid)
        return _start(at, announce=False, idle_minutes=state.idle_minutes, port=state.port).url


# ---------------------------------------------------------------- the server side

def configured_database(prefect_home: Path) -> str | None:
    """A database the user chose: the environment, else the Prefect profile (``init --prefect-database``)."""
    for key in ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL"):
        if os.environ.get(key):
            return os.environ[key]
    import tomllib

    try:
        profiles = tomllib.loads((prefect_home / "profiles.toml").read_text())
    except (OSError, ValueError):
        return None
    active = profiles.get("profiles", {}).get(profiles.get("active", "ephemeral"), {})
    return active.get("PREFECT_SERVER_DATABASE_CONNECTION_URL") or active.get("PREFECT_API_DATABASE_CONNECTION_URL")


def _database(at: Path) -> tuple[str, str]:
    """(SQLAlchemy URL, label without credentials) of the server's database."""
    chosen = configured_database(api_dir(at))
    if chosen:
        from tasks.prefect_database import describe

        return chosen, describe(chosen)
    from tasks import embedded_pg

    uri = embedded_pg.dsn(at / "pg", "prefect")
    sock = embedded_pg.socket_dir(uri)
    return f"postgresql+asyncpg://postgres@/prefect?host={sock}", f"embedded PostgreSQL {at / 'pg'} (prefect)"


class _Activity:
    """ASGI wrapper that remembers when the API last served a request (health checks do not count)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.last = time.time()
        self.in_flight = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        counted = scope.get("type") == "http" and not scope.get("path", "").endswith("/health")
        if counted:
            self.in_flight += 1
            self.last = time.time()
        try:
            await self.app(scope, receive, send)
        finally:
            if counted:
                self.in_flight -= 1
                self.last = time.time()


def _idle_watch(server: Any, activity: _Activity, at: Path, idle_seconds: float, runner: Any) -> None:
    from tasks import embedded_pg

    period = max(0.5, min(15.0, idle_seconds / 4))
    next_check = time.monotonic() + period
    marked_ready = False
    while not server.should_exit:
        time.sleep(0.5)
        if server.started and not marked_ready:
            state = read_state(at)
            if state is not None and state.pid == os.getpid():
                state.ready = True
                _write_state(state, at)
            marked_ready = True
        if server.started:
            runner.tick()  # the warm runner (deployments/warm.py) lives beside the API, restarted if it exits
        if time.monotonic() < next_check:
            continue
        next_check = time.monotonic() + period
        clients = live_clients(at)
        try:
            since = max(activity.last, clients_dir(at).stat().st_mtime)
        except OSError:
            since = activity.last
        if (at / "pg" / embedded_pg.HANDLE_FILE).exists():
            embedded_pg.reap(at / "pg")  # a killed CLI call's pid must not keep the database up after us
        if not clients and activity.in_flight == 0 and time.time() - since > idle_seconds:
            print(f"idle for {idle_seconds / 60:.1f} min with no client: stopping", flush=True)
            server.should_exit = True


def serve(at: Path, port: int, idle_minutes: float) -> int:
    os.environ.pop("PREFECT_API_URL", None)
    os.environ["PREFECT_HOME"] = str(api_dir(at))
    database, label = _database(at)
    url = f"http://127.0.0.1:{port}/api"
    os.environ.update({
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": database,
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_API_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": os.environ.get("PREFECT_SERVER_LOGGING_LEVEL", "WARNING"),
    })
    _write_state(ApiState(url=url, pid=os.getpid(), port=port, home=str(at), database=label,
                          started_at=time.time(), idle_minutes=idle_minutes), at)
    import uvicorn
    from prefect.server.api.server import create_app

    from deployments.warm import Supervisor

    activity = _Activity(create_app(final=True))
    server = uvicorn.Server(uvicorn.Config(activity, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", timeout_graceful_shutdown=5))
    runner = Supervisor(at, url)
    threading.Thread(target=_idle_watch, args=(server, activity, at, idle_minutes * 60, runner),
                     daemon=True).start()
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, with the handlers it found; with the
    # default ones the process would die right there, skipping the atexit hooks that release (and, for
    # the last user, stop) the embedded PostgreSQL.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: setattr(server, "should_exit", True))
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} local Prefect API pid {os.getpid()} at {url} on {label}",
          flush=True)
    try:
        server.run()
    finally:
        runner.stop()
        state = read_state(at)
        if state is not None and state.pid == os.getpid():
            state_path(at).unlink(missing_ok=True)
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {SERVE_MARK}")
    sub = parser.add_subparsers(dest="action", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--home", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--idle-minutes", type=float, default=DEFAULT_IDLE_MINUTES)
    args = parser.parse_args(argv)
    os.environ["INGEST_HOME"] = args.home
    return serve(Path(args.home), args.port, args.idle_minutes)


if __name__ == "__main__":
    sys.exit(main())
