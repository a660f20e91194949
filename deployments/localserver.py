"""Start a Prefect server on PostgreSQL as a child process (tests, benchmarks, a one-box setup).

Production runs ``prefect server start`` under a service manager (docs/operations.md); this
is the same command with the settings that matter spelled out, and a readiness wait.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx


def server_env(port: int, database_url: str, home: Path, **extra: str) -> dict[str, str]:
    """Environment for the server and every client of it (workers, listeners, deploy)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_API_DATABASE_CONNECTION_URL": database_url.replace("postgresql://", "postgresql+asyncpg://", 1),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    })
    env.update(extra)
    return env


def start_server(env: dict[str, str], log: Path, *, cwd: Path | None = None, timeout: float = 120) -> subprocess.Popen:
    port = env["PREFECT_API_URL"].rsplit(":", 1)[1].split("/")[0]
    out = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", port], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(env["PREFECT_API_URL"] + "/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"prefect server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
