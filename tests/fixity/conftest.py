"""Fixity and status tests reuse each domain's own fixtures (its block documents, sample inputs and fakes),
on a database of their own: a fixity run checks everything the registry holds, so no other test's
objects may be in it. The database is migrated once and emptied before each test."""
from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent.parent
for _sub in ("apt", "fits", "nrao"):
    if str(TESTS / _sub) not in sys.path:
        sys.path.insert(0, str(TESTS / _sub))

from tests.apt.conftest import apt_corpus, apt_env  # noqa: F401  (fixtures)
from tests.ega.conftest import ega_env, ega_keys, gpg  # noqa: F401  (fixtures)
from tests.nrao.test_nrao_flow import nrao_env  # noqa: F401  (fixture)


@pytest.fixture(scope="session")
def fixity_database():
    import os

    import psycopg

    from tasks.registry import Registry

    admin = os.environ.get("INGEST_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"fixity_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{admin.rsplit('/', 1)[0]}/{name}"
    with Registry(dsn) as registry:
        registry.migrate()
    yield dsn
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_dsn(fixity_database: str) -> str:
    """Overrides the session database for every domain fixture used here: empty tables per test."""
    from tasks.registry import Registry

    with Registry(fixity_database) as registry:
        tables = [r["tablename"] for r in registry.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations' "
            "AND tablename <> 'fits_instruments'")]
        registry.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")
    return fixity_database
