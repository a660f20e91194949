"""APT rows in the registry: work items, the interim per-file state, objects, files,
checksums and storage records. Every write is an upsert on a natural key, so a retried
or resumed stage duplicates nothing."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from psycopg.types.json import Jsonb

from tasks.registry import Registry

DOMAIN = "apt"

PENDING, STARTED, SUCCESS, FAILED, CANCELLED, SUSPENDED = (
    "Pending", "Started", "Success", "Failed", "Cancelled", "Suspended")
UNFINISHED = (PENDING, STARTED, SUSPENDED)


# ------------------------------------------------------------------ work items

def create_work_item(reg: Registry, *, institution: str, bag_name: str, tar_name: str, etag: str, bucket: str,
                     object_key: str, size: int, status: str = PENDING, note: str | None = None,
                     stage: str = "Receive", conn: Any = None) -> dict[str, Any]:
    sql = """
        INSERT INTO apt_work_items (institution, bag_name, tar_name, etag, bucket, object_key, size,
                                    object_identifier, status, note, stage, finished_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                CASE WHEN %s IN ('Failed', 'Success', 'Cancelled') THEN now() END)
        RETURNING *
    """
    params = (institution, bag_name, tar_name, etag, bucket, object_key, size, f"{institution}/{bag_name}",
              status, note, stage, status)
    if conn is not None:
        return conn.execute(sql, params).fetchone()
    return reg.execute(sql, params)[0]


def get_work_item(reg: Registry, work_item_id: int) -> dict[str, Any] | None:
    rows = reg.execute("SELECT * FROM apt_work_items WHERE id = %s", (work_item_id,))
    return rows[0] if rows else None


def latest_work_item(reg: Registry, institution: str, bag_name: str, etag: str | None = None,
                     conn: Any = None, *, tar_name: str | None = None) -> dict[str, Any] | None:
    """Newest item of the bag; with ``tar_name``, of that upload key only (one part of a multipart bag)."""
    sql = "SELECT * FROM apt_work_items WHERE institution = %s AND bag_name = %s"
    params: list[Any] = [institution, bag_name]
    if etag is not None:
        sql += " AND etag = %s"
        params.append(etag)
    if tar_name is not None:
        sql += " AND tar_name = %s"
        params.append(tar_name)
    sql += " ORDER BY id DESC LIMIT 1"
    rows = (conn.execute(sql, params).fetchall() if conn is not None else reg.execute(sql, params))
    return rows[0] if rows else None


def unfinished_items(reg: Registry, institution: str, bag_name: str, conn: Any = None) -> list[dict[str, Any]]:
    sql = ("SELECT * FROM apt_work_items WHERE institution = %s AND bag_name = %s AND status = ANY(%s) "
           "ORDER BY id")
    params = (institution, bag_name, list(UNFINISHED))
    return conn.execute(sql, params).fetchall() if conn is not None else reg.execute(sql, params)


def update_work_item(reg: Registry, work_item_id: int, conn: Any = None, **fields: Any) -> dict[str, Any]:
    """Set the given columns (jsonb values wrapped) and touch updated_at; returns the row."""
    values = {k: Jsonb(v) if k in ("errors", "metadata") else v for k, v in fields.items()}
    cols = ", ".join(f"{k} = %({k})s" for k in values)
    sql = f"UPDATE apt_work_items SET {cols}, updated_at = now() WHERE id = %(id)s RETURNING *"
    params = {**values, "id": work_item_id}
    rows = conn.execute(sql, params).fetchall() if conn is not None else reg.execute(sql, params)
    return rows[0]


def set_stage(reg: Registry, work_item_id: int, stage: str, note: str) -> dict[str, Any]:
    """Move to ``stage`` unless the item was cancelled meanwhile; returns the row either way."""
    rows = reg.execute(
        "UPDATE apt_work_items SET stage = CASE WHEN status = 'Cancelled' THEN stage ELSE %s END, "
        "note = CASE WHEN status = 'Cancelled' THEN note ELSE %s END, updated_at = now() "
        "WHERE id = %s RETURNING *", (stage, note, work_item_id))
    return rows[0]


def merge_metadata(reg: Registry, work_item_id: int, values: dict[str, Any]) -> None:
    reg.execute("UPDATE apt_work_items SET metadata = metadata || %s, updated_at = now() WHERE id = %s",
                (Jsonb(values), work_item_id))


def cancel_items(conn: Any, ids: Sequence[int], note: str) -> None:
    conn.execute("UPDATE apt_work_items SET status = 'Cancelled', note = %s, finished_at = now(), "
                 "updated_at = now() WHERE id = ANY(%s) AND status = ANY(%s)", (note, list(ids), list(UNFINISHED)))


def flag_stale(reg: Registry, hours: float) -> list[int]:
    """Started items silent past the deadline (a crashed run): shown for admin review."""
    rows = reg.execute(
        "UPDATE apt_work_items SET needs_admin_review = true, "
        "note = coalesce(note, '') || ' [no progress for ' || %s || ' h: check the run]', updated_at = now() "
        "WHERE status = 'Started' AND NOT needs_admin_review AND updated_at < now() - make_interval(secs => %s) "
        "RETURNING id", (hours, hours * 3600))
    return [r["id"] for r in rows]


# ------------------------------------------------------------------ one run per object

def claim_object(reg: Registry, identifier: str, *, timeout: float | None = None) -> float:
    """Hold the object's claim (tasks/claims: domain ``apt``, the object identifier) on ``reg``'s
    connection until it closes; returns the seconds spent waiting for another run.

    One run per object at a time: two runs of one work item, or two parts of one multipart
    object, never store or record at once (two parts both carry bag-info.txt, under the same
    UUID). PostgreSQL drops the lock with the connection, so a killed holder never blocks the
    next attempt; re-taking it in the same run (a retried task) is harmless.
    """
    from tasks.claims import claim

    return claim(reg, DOMAIN, identifier, timeout=timeout).waited


# ------------------------------------------------------------------ multipart parts and sent statuses

def upsert_part(conn: Any, *, object_id: int, part: int, parts: int, tar_name: str, etag: str,
                work_item_id: int, file_count: int) -> None:
    conn.execute(
        """
        INSERT INTO apt_object_parts (object_id, part, parts, tar_name, etag, work_item_id, file_count)
        VALUES (%s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (object_id, part) DO UPDATE SET parts = EXCLUDED.parts, tar_name = EXCLUDED.tar_name,
            etag = EXCLUDED.etag, work_item_id = EXCLUDED.work_item_id, file_count = EXCLUDED.file_count,
            recorded_at = now()
        """, (object_id, part, parts, tar_name, etag, work_item_id, file_count))


def object_parts(reg: Registry, object_id: int) -> list[dict[str, Any]]:
    return reg.execute("SELECT * FROM apt_object_parts WHERE object_id = %s ORDER BY part", (object_id,))


def mark_status_sent(reg: Registry, work_item_id: int, status: str, attempt: int) -> None:
    reg.execute("UPDATE apt_work_items SET status_sent = %s, status_sent_attempt = %s, status_sent_at = now() "
                "WHERE id = %s", (status, attempt, work_item_id))


# ------------------------------------------------------------------ interim files

INTERIM_COLUMNS = ("path", "file_type", "size", "checksums", "manifest_digests", "modified_at")


def insert_ingest_files(reg: Registry, work_item_id: int, rows: Iterable[dict[str, Any]]) -> None:
    with reg.transaction() as conn, conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO apt_ingest_files (work_item_id, path, file_type, size, checksums, manifest_digests,
                                          modified_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (work_item_id, path) DO UPDATE SET file_type = EXCLUDED.file_type,
                size = EXCLUDED.size, checksums = EXCLUDED.checksums,
                manifest_digests = EXCLUDED.manifest_digests, modified_at = EXCLUDED.modified_at
            """,
            [(work_item_id, r["path"], r["file_type"], r["size"], Jsonb(r["checksums"]),
              Jsonb(r.get("manifest_digests") or {}), r.get("modified_at")) for r in rows],
        )


def ingest_files(reg: Registry, work_item_id: int, *, needs_save: bool | None = None) -> list[dict[str, Any]]:
    sql = "SELECT * FROM apt_ingest_files WHERE work_item_id = %s"
    params: list[Any] = [work_item_id]
    if needs_save is not None:
        sql += " AND needs_save = %s"
        params.append(needs_save)
    return reg.execute(sql + " ORDER BY path", params)


def update_ingest_files(reg: Registry, work_item_id: int, updates: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Bulk update: [(path, {column: value})], all with the same columns; jsonb merged for stored/verified."""
    if not updates:
        return
    columns = list(updates[0][1])
    sets = []
    for c in columns:
        if c in ("stored", "verified"):
            sets.append(f"{c} = {c} || %({c})s")
        else:
            sets.append(f"{c} = %({c})s")
    sql = (f"UPDATE apt_ingest_files SET {', '.join(sets)} "
           "WHERE work_item_id = %(work_item_id)s AND path = %(path)s")
    params = []
    for path, values in updates:
        p = {c: Jsonb(v) if c in ("stored", "verified", "checksums") else v for c, v in values.items()}
        p.update(work_item_id=work_item_id, path=path)
        params.append(p)
    with reg.transaction() as conn, conn.cursor() as cur:
        cur.executemany(sql, params)


def reject_copy(reg: Registry, work_item_id: int, path: str, target: str, reason: str) -> None:
    """A copy failed verification: keep the marker, flagged, so a re-run's Store writes it again."""
    reg.execute("UPDATE apt_ingest_files SET stored = jsonb_set(stored, ARRAY[%s, 'rejected'], to_jsonb(%s::text)), "
                "verified = verified - %s WHERE work_item_id = %s AND path = %s AND stored ? %s",
                (target, reason, target, work_item_id, path, target))


def delete_ingest_files(reg: Registry, work_item_id: int) -> None:
    reg.execute("DELETE FROM apt_ingest_files WHERE work_item_id = %s", (work_item_id,))


# ------------------------------------------------------------------ objects and files

def get_object(reg: Registry, identifier: str) -> dict[str, Any] | None:
    rows = reg.execute("SELECT * FROM apt_objects WHERE identifier = %s", (identifier,))
    return rows[0] if rows else None


def object_files(reg: Registry, object_id: int) -> dict[str, dict[str, Any]]:
    """{path: file row + ``checksums`` = newest digest per algorithm}."""
    files = {r["path"]: {**r, "checksums": {}} for r in
             reg.execute("SELECT * FROM apt_files WHERE object_id = %s", (object_id,))}
    by_id = {f["id"]: f for f in files.values()}
    for row in reg.execute(
            "SELECT DISTINCT ON (c.file_id, c.algorithm) c.file_id, c.algorithm, c.digest "
            "FROM apt_checksums c JOIN apt_files f ON f.id = c.file_id WHERE f.object_id = %s "
            "ORDER BY c.file_id, c.algorithm, c.created_at DESC, c.id DESC", (object_id,)):
        by_id[row["file_id"]]["checksums"][row["algorithm"]] = row["digest"]
    return files


def upsert_object(conn: Any, *, identifier: str, institution: str, bag_name: str, work_item_id: int,
                  validation: dict[str, Any], storage_option: str) -> dict[str, Any]:
    """Insert, or refresh the descriptive fields; an active object keeps its storage option."""
    return conn.execute(
        """
        INSERT INTO apt_objects (identifier, institution, bag_name, title, description, access, storage_option,
                                 bagit_profile, source_organization, alt_identifier, bag_group_identifier,
                                 state, created_by_work_item, last_work_item_id)
        VALUES (%(identifier)s, %(institution)s, %(bag_name)s, %(title)s, %(description)s, %(access)s,
                %(storage_option)s, %(profile)s, %(source_organization)s, %(alt_identifier)s,
                %(bag_group_identifier)s, 'A', %(wi)s, %(wi)s)
        ON CONFLICT (identifier) DO UPDATE SET
            title = EXCLUDED.title, description = EXCLUDED.description, access = EXCLUDED.access,
            storage_option = CASE WHEN apt_objects.state = 'A' THEN apt_objects.storage_option
                                  ELSE EXCLUDED.storage_option END,
            bagit_profile = EXCLUDED.bagit_profile, source_organization = EXCLUDED.source_organization,
            alt_identifier = EXCLUDED.alt_identifier, bag_group_identifier = EXCLUDED.bag_group_identifier,
            state = 'A', last_work_item_id = EXCLUDED.last_work_item_id, updated_at = now()
        RETURNING *
        """,
        {"identifier": identifier, "institution": institution, "bag_name": bag_name, "wi": work_item_id,
         "title": validation.get("title"), "description": validation.get("description"),
         "access": validation.get("access"), "storage_option": storage_option,
         "profile": validation.get("profile_identifier"),
         "source_organization": validation.get("source_organization"),
         "alt_identifier": validation.get("internal_sender_identifier"),
         "bag_group_identifier": validation.get("bag_group_identifier")},
    ).fetchone()


def upsert_files(conn: Any, object_id: int, storage_option: str, work_item_id: int,
                 files: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Generic files by identifier; the UUID of an existing file is never changed. Returns {path: id}."""
    ids: dict[str, int] = {}
    if not files:
        return ids  # a version with nothing new: executemany would have no result to read
    with conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO apt_files (uuid, object_id, identifier, path, size, file_format, puid, format_name,
                                   format_basis, storage_option, state, file_modified, created_by_work_item,
                                   last_work_item_id)
            VALUES (%(uuid)s, %(object_id)s, %(identifier)s, %(path)s, %(size)s, %(mime)s, %(puid)s,
                    %(format_name)s, %(format_basis)s, %(storage_option)s, 'A', %(modified_at)s, %(wi)s, %(wi)s)
            ON CONFLICT (identifier) DO UPDATE SET size = EXCLUDED.size, file_format = EXCLUDED.file_format,
                puid = EXCLUDED.puid, format_name = EXCLUDED.format_name, format_basis = EXCLUDED.format_basis,
                storage_option = EXCLUDED.storage_option, state = 'A', file_modified = EXCLUDED.file_modified,
                missing_since_work_item = NULL, last_work_item_id = EXCLUDED.last_work_item_id, updated_at = now()
            RETURNING id, path
            """,
            [{**f, "object_id": object_id, "storage_option": storage_option, "wi": work_item_id} for f in files],
            returning=True,
        )
        while True:
            row = cur.fetchone()
            if row:
                ids[row["path"]] = row["id"]
            if not cur.nextset():
                break
    return ids


def insert_checksums(conn: Any, work_item_id: int, rows: Sequence[tuple[int, str, str]]) -> None:
    """(file_id, algorithm, digest) for this work item; a retry rewrites the same rows."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO apt_checksums (file_id, algorithm, digest, work_item_id) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (file_id, algorithm, work_item_id) DO UPDATE SET digest = EXCLUDED.digest",
            [(fid, alg, digest, work_item_id) for fid, alg, digest in rows])


def upsert_storage_records(conn: Any, work_item_id: int, rows: Sequence[dict[str, Any]]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO apt_storage_records (file_id, target, url, size, sha256, work_item_id, verified_at)
            VALUES (%(file_id)s, %(target)s, %(url)s, %(size)s, %(sha256)s, %(wi)s, %(verified_at)s)
            ON CONFLICT (file_id, url) DO UPDATE SET target = EXCLUDED.target, size = EXCLUDED.size,
                sha256 = EXCLUDED.sha256, work_item_id = EXCLUDED.work_item_id, verified_at = EXCLUDED.verified_at
            """, [{**r, "wi": work_item_id} for r in rows])


def touch_present_files(conn: Any, object_id: int, paths: Sequence[str]) -> None:
    """Files that came again unchanged are present: clear any 'missing' mark."""
    conn.execute("UPDATE apt_files SET missing_since_work_item = NULL WHERE object_id = %s AND path = ANY(%s) "
                 "AND missing_since_work_item IS NOT NULL", (object_id, list(paths)))


def mark_absent_files(conn: Any, object_id: int, present: Sequence[str], work_item_id: int) -> int:
    """Files of the object the new version no longer holds: kept (as APTrust does) but marked."""
    rows = conn.execute(
        "UPDATE apt_files SET missing_since_work_item = coalesce(missing_since_work_item, %s), updated_at = now() "
        "WHERE object_id = %s AND state = 'A' AND NOT (path = ANY(%s)) RETURNING id",
        (work_item_id, object_id, list(present))).fetchall()
    return len(rows)
