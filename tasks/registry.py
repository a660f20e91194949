"""The registry: PostgreSQL is the source of truth for what was ingested.

Prefect keeps workflow state; the registry keeps archive state (what exists,
where, with which checksums, and the provenance events). Every write is an
upsert on a natural key, so a retried or resumed step never duplicates a row.
"""
from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tasks.home import home_path

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
EVENT_NAMESPACE = uuid.UUID("6f1c1f0e-7d1b-4c53-9d7e-2f3c0a6b9e11")
AGENT = "archive-ingest"

# PREMIS event types used across domains.
INGESTION = "ingestion"
FIXITY_CHECK = "fixity check"
DIGEST_CALCULATION = "message digest calculation"
REPLICATION = "replication"
IDENTIFIER_ASSIGNMENT = "identifier assignment"
FORMAT_IDENTIFICATION = "format identification"
DECRYPTION = "decryption"
ENCRYPTION = "encryption"
CREATION = "creation"
ACCESS_ASSIGNMENT = "access assignment"


@dataclass(frozen=True)
class Ingest:
    id: int
    domain: str
    natural_key: str
    state: str
    attempts: int
    details: dict[str, Any]
    last_error: str | None = None


def event_uuid(ingest_key: str, subject: str, event_type: str, discriminator: str = "") -> uuid.UUID:
    """Stable id of an event, so recording it again (a retry, a resume) is an update."""
    return uuid.uuid5(EVENT_NAMESPACE, "\x1f".join((ingest_key, subject, event_type, discriminator)))


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    return sorted(p for p in directory.glob("*.sql"))


class Registry:
    """A connection to the registry database with the shared-table operations."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg.Connection | None = None

    # ------------------------------------------------------------ plumbing
    @property
    def conn(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row, connect_timeout=10)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        with self.conn.transaction():
            yield self.conn

    def execute(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        cur = self.conn.execute(sql, params)
        return cur.fetchall() if cur.description else []

    # ------------------------------------------------------------ migrations
    def migrate(self, directory: Path = MIGRATIONS_DIR) -> list[str]:
        """Apply numbered .sql files once each, recorded in schema_migrations.

        An advisory lock serialises concurrent workers starting at the same time.
        """
        applied: list[str] = []
        with self.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(874301)")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in conn.execute("SELECT version FROM schema_migrations").fetchall()}
            for path in migration_files(directory):
                if path.name in done:
                    continue
                conn.execute(path.read_text())
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (path.name,))
                applied.append(path.name)
        if applied:
            log.info("registry migrations applied: %s", ", ".join(applied))
        return applied

    # ------------------------------------------------------------ ingests
    def begin_ingest(self, domain: str, natural_key: str, *, flow_run_id: str | None = None,
                     details: dict[str, Any] | None = None) -> Ingest:
        """Upsert the ingest row and move it to in_ingestion, counting the attempt."""
        row = self.execute(
            """
            INSERT INTO ingests (domain, natural_key, state, attempts, started_at, flow_run_id, details)
            VALUES (%(d)s, %(k)s, 'in_ingestion', 1, now(), %(r)s, %(j)s)
            ON CONFLICT (domain, natural_key) DO UPDATE SET
                state = 'in_ingestion', attempts = ingests.attempts + 1, started_at = now(),
                updated_at = now(), finished_at = NULL, last_error = NULL,
                flow_run_id = COALESCE(EXCLUDED.flow_run_id, ingests.flow_run_id),
                details = ingests.details || EXCLUDED.details
            RETURNING *
            """,
            {"d": domain, "k": natural_key, "r": flow_run_id, "j": Jsonb(details or {})},
        )[0]
        return _ingest(row)

    def register_ingest(self, domain: str, natural_key: str, *, details: dict[str, Any] | None = None) -> Ingest:
        """Upsert an ingest in state 'received' without starting it (queued work)."""
        row = self.execute(
            """
            INSERT INTO ingests (domain, natural_key, state, details) VALUES (%s, %s, 'received', %s)
            ON CONFLICT (domain, natural_key) DO UPDATE SET details = ingests.details || EXCLUDED.details,
                updated_at = now()
            RETURNING *
            """,
            (domain, natural_key, Jsonb(details or {})),
        )[0]
        return _ingest(row)

    def set_state(self, ingest_id: int, state: str, *, error: str | None = None,
                  details: dict[str, Any] | None = None) -> None:
        terminal = state in ("completed", "failed", "skipped", "cancelled", "disabled")
        self.execute(
            """
            UPDATE ingests SET state = %s, last_error = %s, updated_at = now(),
                finished_at = CASE WHEN %s THEN now() ELSE finished_at END,
                details = details || %s
            WHERE id = %s
            """,
            (state, error, terminal, Jsonb(details or {}), ingest_id),
        )

    def get_ingest(self, domain: str, natural_key: str) -> Ingest | None:
        rows = self.execute("SELECT * FROM ingests WHERE domain = %s AND natural_key = %s", (domain, natural_key))
        return _ingest(rows[0]) if rows else None

    def ingest_by_id(self, ingest_id: int) -> Ingest | None:
        rows = self.execute("SELECT * FROM ingests WHERE id = %s", (ingest_id,))
        return _ingest(rows[0]) if rows else None

    def mark_for_review(self, ingest_id: int, reason: str) -> None:
        """Flag an ingest for a person (shown by ``status``); repeated marks keep the first time."""
        self.execute(
            "UPDATE ingests SET review_reason = %s, review_at = COALESCE(review_at, now()), updated_at = now()"
            " WHERE id = %s", (reason, ingest_id))

    def clear_review(self, ingest_id: int) -> None:
        self.execute("UPDATE ingests SET review_reason = NULL, review_at = NULL, updated_at = now() WHERE id = %s",
                     (ingest_id,))

    def for_review(self, domain: str | None = None) -> list[dict[str, Any]]:
        return self.execute(
            "SELECT * FROM ingests WHERE review_reason IS NOT NULL AND (%s::text IS NULL OR domain = %s)"
            " ORDER BY review_at, id", (domain, domain))

    def stuck(self, older_than: timedelta) -> list[Ingest]:
        """Ingests left in_ingestion past a deadline: a crashed run that needs reconciling."""
        rows = self.execute(
            "SELECT * FROM ingests WHERE state = 'in_ingestion' AND updated_at < now() - %s ORDER BY id",
            (older_than,),
        )
        return [_ingest(r) for r in rows]

    # ------------------------------------------------------------ events
    def record_event(self, ingest: Ingest, event_type: str, *, subject: str, outcome: str = "success",
                     detail: str | None = None, outcome_detail: str | None = None, agent: str = AGENT,
                     discriminator: str = "", occurred_at: datetime | None = None) -> uuid.UUID:
        eid = event_uuid(f"{ingest.domain}:{ingest.natural_key}", subject, event_type, discriminator)
        self.execute(
            """
            INSERT INTO events (event_uuid, ingest_id, subject, event_type, outcome, detail, outcome_detail,
                                agent, occurred_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, COALESCE(%s, now()))
            ON CONFLICT (event_uuid) DO UPDATE SET outcome = EXCLUDED.outcome, detail = EXCLUDED.detail,
                outcome_detail = EXCLUDED.outcome_detail, agent = EXCLUDED.agent,
                occurred_at = EXCLUDED.occurred_at
            """,
            (eid, ingest.id, subject, event_type, outcome, detail, outcome_detail, agent, occurred_at),
        )
        return eid

    def events(self, ingest_id: int) -> list[dict[str, Any]]:
        return self.execute("SELECT * FROM events WHERE ingest_id = %s ORDER BY occurred_at, id", (ingest_id,))

    # ------------------------------------------------------------ files
    def upsert_file(self, domain: str, file_key: str, *, ingest_id: int | None, vault_uri: str, size: int,
                    checksums: dict[str, str]) -> int:
        row = self.execute(
            """
            INSERT INTO files (domain, file_key, ingest_id, vault_uri, size, checksums)
            VALUES (%s, %s, %s, %s, %s, %s)
            ON CONFLICT (domain, file_key) DO UPDATE SET ingest_id = EXCLUDED.ingest_id,
                vault_uri = EXCLUDED.vault_uri, size = EXCLUDED.size,
                checksums = files.checksums || EXCLUDED.checksums, updated_at = now()
            RETURNING id
            """,
            (domain, file_key, ingest_id, vault_uri, size, Jsonb(checksums)),
        )
        return row[0]["id"]

    def files(self, ingest_id: int) -> list[dict[str, Any]]:
        return self.execute("SELECT * FROM files WHERE ingest_id = %s ORDER BY id", (ingest_id,))


def _ingest(row: dict[str, Any]) -> Ingest:
    details = row["details"]
    if isinstance(details, str):
        details = json.loads(details)
    return Ingest(row["id"], row["domain"], row["natural_key"], row["state"], row["attempts"], details,
                  row.get("last_error"))


# ---------------------------------------------------------------- embedded PostgreSQL

def embedded_dsn(data_dir: Path | None = None) -> str:
    """Start (or join) the embedded PostgreSQL under $INGEST_HOME/pg and return its DSN (tasks/embedded_pg)."""
    from tasks import embedded_pg

    return embedded_pg.dsn(data_dir or home_path("pg"))


def resolve_dsn(dsn: str | None = None) -> str:
    """The DSN to use: explicit, then $INGEST_REGISTRY_DSN, else the embedded server."""
    return dsn or os.environ.get("INGEST_REGISTRY_DSN") or embedded_dsn()


def open_registry(dsn: str | None = None, *, migrate: bool = True) -> Registry:
    """A registry whose schema is current; checked once per process and database, not per flow."""
    registry = Registry(resolve_dsn(dsn))
    if migrate and registry.dsn not in _MIGRATED:
        registry.migrate()
        _MIGRATED.add(registry.dsn)
    return registry


_MIGRATED: set[str] = set()
