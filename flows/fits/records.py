"""FITS rows in the registry: work orders, cubes and everything hanging off a cube.

Every write is an upsert keyed on a natural key (the work order on its path, the
cube on its OID, the observation on POINT_ID/DATE-BEG), so a retried or repeated
step changes rows instead of adding them. The ``fits_metadata`` table has one typed
column per keyword of keywords.json; its DDL is generated from that file by
``metadata_table_sql`` and committed in migrations/030_fits.sql (a unit test
keeps the two in step).
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from flows.fits.metadata import known_keywords
from tasks.registry import Registry

DOMAIN = "fits"

QUEUED, STARTED, COMPLETED, FAILED = "Queued", "Started", "Completed", "Failed"
ORDER_STATES = (QUEUED, STARTED, COMPLETED, FAILED)

SQL_TYPES = {"text": "text", "integer": "bigint", "real": "double precision", "datetime": "timestamp"}
METADATA_TABLE = "fits_metadata"


# ---------------------------------------------------------------- DDL

def metadata_table_sql() -> str:
    """``CREATE TABLE fits_metadata`` with one column per known keyword, as committed in the migration."""
    lines = ["    cube_id     bigint PRIMARY KEY REFERENCES fits_cubes (id) ON DELETE CASCADE"]
    for column, spec in known_keywords().items():
        lines.append(f'    "{column}" {SQL_TYPES[spec.type]}')
    lines.append("    updated_at  timestamptz NOT NULL DEFAULT now()")
    return f"CREATE TABLE IF NOT EXISTS {METADATA_TABLE} (\n" + ",\n".join(lines) + "\n);\n"


# ---------------------------------------------------------------- work orders

def work_order(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON view of a work order that the CLI prints and the flow returns."""
    if row is None:
        return None
    keys = ("id", "path", "state", "oid", "attempts", "created_at", "started_at", "finished_at", "change_key",
            "checksums_seen", "error")
    return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in row.items() if k in keys}


def start_order(reg: Registry, path: str, options: dict[str, Any], flow_run_id: str | None = None) -> dict[str, Any]:
    """Create or re-open the order for ``path`` and move it to Started, counting the attempt."""
    return reg.execute(
        """
        INSERT INTO fits_work_orders (path, state, attempts, started_at, options, flow_run_id)
        VALUES (%s, 'Started', 1, now(), %s, %s)
        ON CONFLICT (path) DO UPDATE SET state = 'Started', attempts = fits_work_orders.attempts + 1,
            started_at = now(), finished_at = NULL, error = NULL, error_kind = NULL, updated_at = now(),
            options = EXCLUDED.options, flow_run_id = COALESCE(EXCLUDED.flow_run_id, fits_work_orders.flow_run_id)
        RETURNING *
        """,
        (path, Jsonb(options), flow_run_id),
    )[0]


def queue_orders(reg: Registry, paths: Sequence[str], options: dict[str, Any],
                 flow_run_id: str | None = None) -> int:
    """One Queued order per path in one statement; a running (Started) order is left alone."""
    if not paths:
        return 0
    rows = reg.execute(
        """
        INSERT INTO fits_work_orders (path, state, options, flow_run_id)
        SELECT p, 'Queued', %s, %s FROM unnest(%s::text[]) AS p
        ON CONFLICT (path) DO UPDATE SET state = 'Queued', updated_at = now(), error = NULL, error_kind = NULL,
            options = EXCLUDED.options, flow_run_id = COALESCE(EXCLUDED.flow_run_id, fits_work_orders.flow_run_id)
        WHERE fits_work_orders.state <> 'Started'
        RETURNING id
        """,
        (Jsonb(options), flow_run_id, list(paths)),
    )
    return len(rows)


def claim_orders(reg: Registry, limit: int, stale_after_s: float,
                 flow_run_id: str | None = None) -> list[dict[str, Any]]:
    """Take up to ``limit`` Queued orders (oldest first) for one processor, moving them to Started.

    ``SKIP LOCKED`` lets several processors drain one queue without taking the same order.
    A Started order older than ``stale_after_s`` is taken again: its processor died.
    """
    return reg.execute(
        """
        UPDATE fits_work_orders SET state = 'Started', started_at = now(), updated_at = now(),
            flow_run_id = COALESCE(%(run)s, flow_run_id)
        WHERE id IN (SELECT id FROM fits_work_orders
                     WHERE state = 'Queued'
                        OR (state = 'Started' AND started_at < now() - make_interval(secs => %(stale)s))
                     ORDER BY updated_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
        RETURNING id, path, options
        """,
        {"run": flow_run_id, "stale": float(stale_after_s), "limit": int(limit)},
    )


def see_change_key(reg: Registry, order_id: int, change_key: str) -> dict[str, Any]:
    """Remember the key this attempt found (the order keeps every distinct key it has seen)."""
    return reg.execute(
        """
        UPDATE fits_work_orders SET change_key = %(k)s, updated_at = now(),
            checksums_seen = CASE WHEN checksums_seen @> jsonb_build_array(%(k)s::text) THEN checksums_seen
                                  ELSE checksums_seen || jsonb_build_array(%(k)s::text) END
        WHERE id = %(id)s RETURNING *
        """,
        {"k": change_key, "id": order_id},
    )[0]


def complete_order(reg: Registry, order_id: int, *, oid: str, change_key: str, ingest_id: int | None,
                   skipped: bool) -> dict[str, Any]:
    return reg.execute(
        """
        UPDATE fits_work_orders SET state = 'Completed', finished_at = now(), updated_at = now(), oid = %s,
            change_key = %s, completed_change_key = %s, ingest_id = COALESCE(%s, ingest_id), error = NULL,
            error_kind = NULL, last_outcome = %s
        WHERE id = %s RETURNING *
        """,
        (oid, change_key, change_key, ingest_id, "skipped" if skipped else "ingested", order_id),
    )[0]


def fail_order(reg: Registry, order_id: int, error: str, *, user_error: bool) -> dict[str, Any] | None:
    rows = reg.execute(
        "UPDATE fits_work_orders SET state = 'Failed', finished_at = now(), updated_at = now(), error = %s, "
        "error_kind = %s, last_outcome = 'failed' WHERE id = %s RETURNING *",
        (error, "user" if user_error else "system", order_id),
    )
    return rows[0] if rows else None


def get_order(reg: Registry, path: str) -> dict[str, Any] | None:
    rows = reg.execute("SELECT * FROM fits_work_orders WHERE path = %s", (path,))
    return rows[0] if rows else None


def order_by_id(reg: Registry, order_id: int) -> dict[str, Any]:
    return reg.execute("SELECT * FROM fits_work_orders WHERE id = %s", (order_id,))[0]


# ---------------------------------------------------------------- the cube and what hangs off it

@dataclass
class CubeRows:
    """Everything the record step writes for one cube, computed from its headers before any write."""

    oid: str
    path: str                      # relative to the science root
    filename: str
    size: int
    instrument: str
    observation_key: str
    grouping: str
    change_key: str
    checksums: dict[str, Any]
    date_beg: dt.datetime | None
    date_end: dt.datetime | None
    release_date: dt.date
    release_comment: str | None
    release_provided: bool
    grants: list[tuple[str, str]]                       # (kind, principal)
    header_text: str
    extension_headers: dict[str, str]
    unknown_keywords: list[str]
    metadata: dict[str, Any]                            # column → typed value
    features: list[str]
    events: list[str]
    features_ingested: bool
    events_ingested: bool
    unmatched_tags: list[str]
    extension_data: dict[str, Any] = field(default_factory=dict)   # kind → JSON (r0, line_profile)


def upsert_cube(reg: Registry, rows: CubeRows, *, ingest_id: int | None, order_id: int | None) -> dict[str, Any]:
    """Write the cube and every row that hangs off it in one transaction."""
    with reg.transaction() as conn:
        instrument = conn.execute("SELECT name FROM fits_instruments WHERE name = %s", (rows.instrument,)).fetchone()
        if instrument is None:  # the flow checks the seeded names first; a removed row is a configuration error
            raise RuntimeError(f"instrument {rows.instrument} is not in fits_instruments")
        # The file at this path is now a different cube (new OID): the old record describes nothing.
        stale = conn.execute("DELETE FROM fits_cubes WHERE path = %s AND oid <> %s RETURNING observation_id",
                             (rows.path, rows.oid)).fetchall()
        observation = conn.execute(
            """
            INSERT INTO fits_observations (key) VALUES (%s)
            ON CONFLICT (key) DO UPDATE SET updated_at = now() RETURNING id
            """,
            (rows.observation_key,),
        ).fetchone()["id"]
        previous = conn.execute("SELECT observation_id FROM fits_cubes WHERE oid = %s", (rows.oid,)).fetchone()
        cube = conn.execute(
            """
            INSERT INTO fits_cubes (oid, path, filename, size, instrument, observation_id, grouping, change_key,
                                    checksums, date_beg, date_end, features_ingested, events_ingested,
                                    unmatched_tags, ingest_id, work_order_id)
            VALUES (%(oid)s, %(path)s, %(filename)s, %(size)s, %(instrument)s, %(obs)s, %(grouping)s, %(key)s,
                    %(checksums)s, %(date_beg)s, %(date_end)s, %(fi)s, %(ei)s, %(unmatched)s, %(ingest)s, %(order)s)
            ON CONFLICT (oid) DO UPDATE SET path = EXCLUDED.path, filename = EXCLUDED.filename,
                size = EXCLUDED.size, instrument = EXCLUDED.instrument, observation_id = EXCLUDED.observation_id,
                grouping = EXCLUDED.grouping, change_key = EXCLUDED.change_key, checksums = EXCLUDED.checksums,
                date_beg = EXCLUDED.date_beg, date_end = EXCLUDED.date_end,
                features_ingested = EXCLUDED.features_ingested, events_ingested = EXCLUDED.events_ingested,
                unmatched_tags = EXCLUDED.unmatched_tags,
                ingest_id = COALESCE(EXCLUDED.ingest_id, fits_cubes.ingest_id),
                work_order_id = COALESCE(EXCLUDED.work_order_id, fits_cubes.work_order_id), updated_at = now()
            RETURNING *
            """,
            {"oid": rows.oid, "path": rows.path, "filename": rows.filename, "size": rows.size,
             "instrument": rows.instrument, "obs": observation, "grouping": rows.grouping, "key": rows.change_key,
             "checksums": Jsonb(rows.checksums), "date_beg": rows.date_beg, "date_end": rows.date_end,
             "fi": rows.features_ingested, "ei": rows.events_ingested, "unmatched": rows.unmatched_tags,
             "ingest": ingest_id, "order": order_id},
        ).fetchone()
        cube_id = cube["id"]
        touched = {observation} | {r["observation_id"] for r in stale}
        if previous is not None:
            touched.add(previous["observation_id"])
        _refresh_observation_dates(conn, touched)

        conn.execute(
            """
            INSERT INTO fits_access (cube_id, release_date, release_comment, release_provided)
            VALUES (%s, %s, %s, %s)
            ON CONFLICT (cube_id) DO UPDATE SET release_date = EXCLUDED.release_date,
                release_comment = EXCLUDED.release_comment, release_provided = EXCLUDED.release_provided,
                updated_at = now()
            """,
            (cube_id, rows.release_date, rows.release_comment, rows.release_provided),
        )
        for kind, principal in rows.grants:  # grants accumulate: a bulk re-ingest never locks an owner out
            conn.execute("INSERT INTO fits_access_grants (cube_id, kind, principal) VALUES (%s, %s, %s) "
                         "ON CONFLICT DO NOTHING", (cube_id, kind, principal))

        conn.execute(
            """
            INSERT INTO fits_headers (cube_id, header_text, extension_headers, unknown_keywords)
            VALUES (%s, %s, %s, %s)
            ON CONFLICT (cube_id) DO UPDATE SET header_text = EXCLUDED.header_text,
                extension_headers = EXCLUDED.extension_headers, unknown_keywords = EXCLUDED.unknown_keywords,
                updated_at = now()
            """,
            (cube_id, rows.header_text, Jsonb(rows.extension_headers), rows.unknown_keywords),
        )
        _upsert_metadata(conn, cube_id, rows.metadata)

        conn.execute("DELETE FROM fits_tags WHERE cube_id = %s", (cube_id,))
        for kind, tags in (("feature", rows.features), ("event", rows.events)):
            for tag in tags:
                conn.execute("INSERT INTO fits_tags (cube_id, kind, tag) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                             (cube_id, kind, tag))

        conn.execute("DELETE FROM fits_extension_data WHERE cube_id = %s AND NOT (kind = ANY(%s))",
                     (cube_id, list(rows.extension_data)))
        for kind, data in rows.extension_data.items():
            conn.execute(
                "INSERT INTO fits_extension_data (cube_id, kind, data) VALUES (%s, %s, %s) "
                "ON CONFLICT (cube_id, kind) DO UPDATE SET data = EXCLUDED.data, updated_at = now()",
                (cube_id, kind, Jsonb(data)),
            )
    return cube


def _upsert_metadata(conn, cube_id: int, values: dict[str, Any]) -> None:
    """Every known column is written (None when absent), so a keyword removed from the file is cleared."""
    columns = list(known_keywords())
    unknown = set(values) - set(columns)
    if unknown:
        raise ValueError(f"metadata columns not in keywords.json: {sorted(unknown)}")
    idents = [sql.Identifier(c) for c in columns]
    query = sql.SQL(
        "INSERT INTO {table} (cube_id, {cols}) VALUES (%s, {vals}) ON CONFLICT (cube_id) DO UPDATE SET {sets}, "
        "updated_at = now()"
    ).format(
        table=sql.Identifier(METADATA_TABLE),
        cols=sql.SQL(", ").join(idents),
        vals=sql.SQL(", ").join(sql.Placeholder() for _ in columns),
        sets=sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=i) for i in idents),
    )
    conn.execute(query, [cube_id, *(values.get(c) for c in columns)])


def _refresh_observation_dates(conn, observation_ids: Iterable[int]) -> None:
    """An observation spans its cubes: date_beg/date_end are the min/max over them."""
    conn.execute(
        """
        UPDATE fits_observations o SET date_beg = s.beg, date_end = s.fin, cube_count = s.n, updated_at = now()
        FROM (SELECT ob.id, min(c.date_beg) AS beg, max(COALESCE(c.date_end, c.date_beg)) AS fin,
                     count(c.id) AS n
              FROM fits_observations ob LEFT JOIN fits_cubes c ON c.observation_id = ob.id
              WHERE ob.id = ANY(%s) GROUP BY ob.id) s
        WHERE o.id = s.id
        """,
        (list(observation_ids),),
    )


def get_cube(reg: Registry, oid: str) -> dict[str, Any] | None:
    rows = reg.execute("SELECT * FROM fits_cubes WHERE oid = %s", (oid,))
    return rows[0] if rows else None


def cube_by_id(reg: Registry, cube_id: int) -> dict[str, Any]:
    return reg.execute("SELECT * FROM fits_cubes WHERE id = %s", (cube_id,))[0]


# ---------------------------------------------------------------- previews

def previews(reg: Registry, cube_id: int) -> dict[str, dict[str, Any]]:
    return {r["kind"]: r for r in reg.execute("SELECT * FROM fits_previews WHERE cube_id = %s", (cube_id,))}


def upsert_preview(reg: Registry, cube_id: int, kind: str, *, path: str, thumbnail_path: str | None,
                   source: str, source_key: str, width: int | None = None, height: int | None = None) -> None:
    reg.execute(
        """
        INSERT INTO fits_previews (cube_id, kind, path, thumbnail_path, source, source_key, width, height)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (cube_id, kind) DO UPDATE SET path = EXCLUDED.path, thumbnail_path = EXCLUDED.thumbnail_path,
            source = EXCLUDED.source, source_key = EXCLUDED.source_key, width = EXCLUDED.width,
            height = EXCLUDED.height, updated_at = now()
        """,
        (cube_id, kind, path, thumbnail_path, source, source_key, width, height),
    )


# ---------------------------------------------------------------- access

def access(reg: Registry, oid: str) -> dict[str, Any] | None:
    rows = reg.execute(
        "SELECT c.id AS cube_id, c.oid, a.release_date, a.release_comment, a.release_provided "
        "FROM fits_cubes c JOIN fits_access a ON a.cube_id = c.id WHERE c.oid = %s", (oid,))
    if not rows:
        return None
    row = rows[0]
    row["grants"] = reg.execute("SELECT kind, principal FROM fits_access_grants WHERE cube_id = %s "
                                "ORDER BY kind, principal", (row["cube_id"],))
    return row


# ---------------------------------------------------------------- SVO

def svo_sources(reg: Registry, oids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """What an SVO record is built from: the cube, its instrument's dataset, header text and thumbnail."""
    rows = reg.execute(
        """
        SELECT c.id AS cube_id, c.oid, c.path, c.filename, c.size, c.date_beg, c.instrument, i.svo_dataset,
               h.header_text, p.thumbnail_path,
               ARRAY(SELECT t.tag FROM fits_tags t WHERE t.cube_id = c.id ORDER BY t.kind DESC, t.tag) AS tags
        FROM fits_cubes c
        JOIN fits_instruments i ON i.name = c.instrument
        JOIN fits_headers h ON h.cube_id = c.id
        LEFT JOIN fits_previews p ON p.cube_id = c.id AND p.kind = 'image'
        WHERE (%(all)s OR c.oid = ANY(%(oids)s)) ORDER BY c.oid
        """,
        {"all": oids is None, "oids": list(oids or [])},
    )
    return rows


def record_svo(reg: Registry, oid: str, dataset: str, *, state: str, action: str, error: str | None = None) -> None:
    reg.execute(
        """
        INSERT INTO fits_svo_submissions (cube_id, oid, dataset, state, action, error, submitted_at)
        SELECT id, %(oid)s, %(ds)s, %(state)s, %(action)s, %(error)s,
               CASE WHEN %(state)s = 'submitted' THEN now() END
        FROM fits_cubes WHERE oid = %(oid)s
        ON CONFLICT (cube_id) DO UPDATE SET dataset = EXCLUDED.dataset, state = EXCLUDED.state,
            action = EXCLUDED.action, error = EXCLUDED.error,
            submitted_at = COALESCE(EXCLUDED.submitted_at, fits_svo_submissions.submitted_at), updated_at = now()
        """,
        {"oid": oid, "ds": dataset, "state": state, "action": action, "error": error},
    )


def svo_state(reg: Registry, oid: str) -> dict[str, Any] | None:
    rows = reg.execute("SELECT * FROM fits_svo_submissions WHERE oid = %s", (oid,))
    return rows[0] if rows else None


def jsonable(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """A row with dates as ISO strings, for summaries and artifacts."""
    if row is None:
        return None
    return json.loads(json.dumps(row, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v)))


if __name__ == "__main__":  # python -m flows.fits.records > the fits_metadata part of migrations/030_fits.sql
    print(metadata_table_sql(), end="")
