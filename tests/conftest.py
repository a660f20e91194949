"""Session fixtures for the real services on loopback.

PostgreSQL gets a scratch database per session, S3 is moto's standalone server
over HTTP (started here unless .ci/run already exported one), RabbitMQ is the
local broker with per-test exchange and queue names.
"""
from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A session home before anything imports `tasks` (which pins PREFECT_HOME under it);
# each test then gets its own INGEST_HOME from the autouse fixture below.
# (Guarded: `from tests.conftest import …` in a sub-conftest executes this module again.)
if "INGEST_TEST_SESSION_HOME" not in os.environ:
    os.environ["INGEST_TEST_SESSION_HOME"] = os.environ["INGEST_HOME"] = tempfile.mkdtemp(prefix="ingest-session-")
    # removed by the process that made it (xdist's controller, which outlives its workers): no leftover
    atexit.register(shutil.rmtree, os.environ["INGEST_TEST_SESSION_HOME"], True)
os.environ.setdefault("INGEST_RETRY_BASE_SECONDS", "0.05")

PG_ADMIN_DSN = os.environ.get("INGEST_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("INGEST_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F")


def _create_database(prefix: str) -> str:
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def _drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# The session's Prefect API keeps its state in PostgreSQL, as a production server does.
# On Prefect's default SQLite the task-run recorder's writes collide with the next
# create_flow_run (SQLITE_BUSY_SNAPSHOT: a 503 the client retries after 2 s), which
# stalls about every second flow run. Set before Prefect is imported: it reads its
# settings once, and the API subprocess inherits them.
# One database per pytest process: xdist's workers inherit the controller's environment, and a worker
# that finished first dropped the database (WITH FORCE) under the other worker's API.
_DB_OWNER = os.environ.get("PYTEST_XDIST_WORKER", "main")
if os.environ.get("INGEST_TEST_PREFECT_DB_OWNER") != _DB_OWNER:
    os.environ["INGEST_TEST_PREFECT_DB"] = _create_database("prefect_test")
    os.environ["INGEST_TEST_PREFECT_DB_OWNER"] = _DB_OWNER
    os.environ["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = (
        PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        + "/" + os.environ["INGEST_TEST_PREFECT_DB"])

    def _drop_at_exit(name: str = os.environ["INGEST_TEST_PREFECT_DB"]) -> None:
        try:  # (xdist's controller creates one it never uses)
            _drop_database(name)
        except Exception:
            pass

    atexit.register(_drop_at_exit)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def ingest_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own INGEST_HOME so no two share embedded state."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("INGEST_HOME", str(home))
    yield home
    stop_local_services(home)


def stop_local_services(home: Path) -> None:
    """Stop what a test's CLI calls started in its home: the local Prefect API, then the embedded PostgreSQL."""
    from deployments import localapi
    from tasks import embedded_pg

    if (home / "prefect" / "api.json").exists():
        localapi.stop(home)
    if (home / "pg" / "postmaster.pid").exists():
        embedded_pg.stop_if_unused(home / "pg")


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """A scratch database on the real PostgreSQL, dropped at the end of the session."""
    name = _create_database("ingest_test")
    yield f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    _drop_database(name)


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """HTTP endpoint of an S3-compatible server (moto standalone) on loopback."""
    existing = os.environ.get("INGEST_TEST_S3_ENDPOINT")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    if existing:
        yield existing
        return
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh bucket on the S3 endpoint."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def amqp_url() -> str:
    return AMQP_URL


@pytest.fixture
def unique() -> str:
    """A short unique token for exchange, queue and key names."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect API server for the whole session, on the scratch PostgreSQL database.

    ``prefect_test_harness`` without its SQLite override: the same subprocess server,
    registered as the process default so flow runs find it.
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = SubprocessASGIServer(port=free_port())
    prior = SubprocessASGIServer._instances.get(None)
    SubprocessASGIServer._instances[None] = server
    server.start(timeout=120)
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
            from flows.cli_common import drain_prefect_workers

            drain_prefect_workers()
    finally:
        server.stop()
        if prior is not None:
            SubprocessASGIServer._instances[None] = prior
        else:
            SubprocessASGIServer._instances.pop(None, None)


@pytest.fixture(scope="session", autouse=True)
def _drop_prefect_database():
    yield
    if os.environ.get("INGEST_TEST_PREFECT_DB", "").startswith("prefect_test_"):
        try:
            _drop_database(os.environ["INGEST_TEST_PREFECT_DB"])
        except Exception:  # a server still shutting down: the database is a scratch one anyway
            pass
