"""Session fixtures for the real services on loopback.

PostgreSQL gets a scratch database per session, S3 is moto's standalone server
over HTTP (started here unless .ci/run already exported one), RabbitMQ is the
local broker with per-test exchange and queue names.
"""
from __future__ import annotations

import os
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
os.environ.setdefault("INGEST_RETRY_BASE_SECONDS", "0.05")

PG_ADMIN_DSN = os.environ.get("INGEST_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("INGEST_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F")


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
    return home


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """A scratch database on the real PostgreSQL, dropped at the end of the session."""
    import psycopg

    name = f"ingest_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
    """One Prefect test harness (temporary server + database) for the whole session (~13 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
