"""A production-shaped stack for the operations tests: `prefect server start` on a scratch
PostgreSQL database, a process work pool, `prefect deploy --all`, block documents from
`python flows/run.py init`, and helpers to start workers and listeners as real processes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from deployments.localserver import server_env, start_server
from tests.conftest import AMQP_URL, PG_ADMIN_DSN, free_port

ROOT = Path(__file__).resolve().parents[2]


def _create_db(name: str) -> str:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + name


def _drop_db(name: str) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Stack:
    env: dict[str, str]
    api_url: str
    registry_dsn: str
    ingest_home: Path
    logs: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode:
            raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def start(self, name: str, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}-{len(self.procs)}.log", "w")
        proc = subprocess.Popen(list(args), cwd=ROOT, env={**self.env, **(extra_env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def live_workers(self) -> list[subprocess.Popen]:
        """Workers still running: a test that must know which worker takes its run starts its own only
        when this is empty (a worker left by another module would take the run instead)."""
        return [p for p in self.procs if p.poll() is None and "worker" in p.args]

    @contextmanager
    def client(self):
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api_url}):
            with get_client(sync_client=True) as client:
                yield client


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist (``-n 2 --dist loadgroup``, as .ci/run runs), every operations test goes to one worker:
    one stack for all of them, and the day-one test's fixed queue names used by one test at a time."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.xdist_group("deploy-stack"))


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    base = tmp_path_factory.mktemp("stack")
    token = uuid.uuid4().hex[:8]
    prefect_db, registry_db = f"prefect_ops_{token}", f"registry_ops_{token}"
    prefect_dsn = _create_db(prefect_db)
    registry_dsn = _create_db(registry_db)
    port = free_port()
    extra = {
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "INGEST_HOME": str(base / "ingest"),
        "INGEST_RETRY_BASE_SECONDS": "0.2",
        "PYTHONPATH": str(ROOT),
    }
    env = server_env(port, prefect_dsn, base / "prefect", **extra)
    logs = base / "logs"
    logs.mkdir()
    s = Stack(env, env["PREFECT_API_URL"], registry_dsn, base / "ingest", logs)
    s.procs.append(start_server(env, logs / "server.log", cwd=ROOT))
    s.run(sys.executable, "flows/run.py", "init", "--registry-dsn", registry_dsn, "--amqp-url", AMQP_URL)
    # Heartbeats at Prefect's floor (30 s): a dead worker's run is Crashed 75 s after its last beat.
    s.run(sys.executable, "flows/run.py", "deploy", "--heartbeat-seconds", "30")
    yield s
    for proc in reversed(s.procs):
        stop(proc)
    _drop_db(prefect_db)
    _drop_db(registry_db)
