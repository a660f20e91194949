"""`init --prefect-database`: local runs keep their Prefect state in PostgreSQL, not SQLite."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from tasks.errors import UserError
from tasks.prefect_database import sqlalchemy_url

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN_DSN = os.environ.get("INGEST_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def test_urls_are_postgres_only() -> None:
    assert sqlalchemy_url("postgresql://u@h:5/db") == "postgresql+asyncpg://u@h:5/db"
    assert sqlalchemy_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert sqlalchemy_url("postgresql+asyncpg://u@h/db") == "postgresql+asyncpg://u@h/db"
    with pytest.raises(UserError, match="postgresql:// URL"):
        sqlalchemy_url("sqlite:///x.db")


def _cli(home: Path, *args: str) -> tuple[int, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "INGEST_"))}
    env.update({"INGEST_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_LOGGING_LEVEL": "WARNING"})
    proc = subprocess.run([sys.executable, "flows/run.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.returncode, json.loads(lines[-1])


@pytest.mark.integration
def test_init_records_the_database_and_later_runs_use_it(tmp_path: Path) -> None:
    name = f"prefect_local_{uuid.uuid4().hex[:10]}"
    url = f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    home = tmp_path / "home"
    try:
        code, out = _cli(home, "init", "--prefect-database", url)       # the database does not exist yet
        assert code == 0 and out["prefect_api"]["database"].endswith(f"/{name}"), out
        assert 'PREFECT_SERVER_DATABASE_CONNECTION_URL = "postgresql+asyncpg://' in (
            home / "prefect" / "profiles.toml").read_text()
        with psycopg.connect(url) as conn:                                # the blocks were saved there
            slugs = {r[0] for r in conn.execute(
                "SELECT bt.slug FROM block_document bd JOIN block_type bt ON bt.id = bd.block_type_id "
                "WHERE bd.name = 'default'")}
        assert {"ingest-vault", "ingest-registry", "ingest-broker"} <= slugs

        code, out = _cli(home, "fits-work-orders")                         # a later local run, its own process
        assert code == 0 and out["cubes"] == 0, out
        with psycopg.connect(url) as conn:
            runs = conn.execute(
                "SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id").fetchall()
        assert ("process-fits-work-orders", "COMPLETED") in runs
        assert not (home / "prefect" / "prefect.db").exists()            # nothing went to SQLite
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_an_unreachable_server_is_a_clear_error() -> None:
    from tasks.prefect_database import ensure_database

    with pytest.raises(UserError, match="cannot reach the Prefect database server at 127.0.0.1"):
        ensure_database("postgresql://postgres@127.0.0.1:1/prefect")
