"""Registry rows of SDA-protocol ingests: uploads awaiting an accession, and cancels.

A cancel is decided by time, not by order of processing: it calls off every ingest of
its upload whose trigger was received before the cancel was, whichever of the two runs
gets to the registry first. Both times are the Prefect flow runs' creation times
(the moment the listener created the run), so one clock decides.
"""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from flows.ega.records import UploadKey
from tasks.registry import Registry

SDA_NAMESPACE = uuid.UUID("0b6f3c55-3e07-4f0e-9b8a-5c1d2e7f4a90")
# A row in one of these is past the point a cancel can undo.
FINAL = ("completed", "disabled", "cancelled")


def sda_file_id(key: UploadKey) -> str:
    """The node's id for one upload (user, path, encrypted checksum): deterministic, so a retry reuses it."""
    return str(uuid.uuid5(SDA_NAMESPACE, key.natural_key))


def vault_key(file_id: str) -> str:
    """Where the archived copy lives; the accession id arrives later and does not move it."""
    return f"ega/sda/{file_id}.c4gh"


def _cancelled_after(conn: Any, user: str, filepath: str, checksum: str, since: datetime) -> dict | None:
    return conn.execute(
        "SELECT * FROM ega_sda_cancels WHERE user_name = %s AND filepath = %s AND received_at > %s "
        "AND (encrypted_checksum IS NULL OR lower(encrypted_checksum) = lower(%s)) ORDER BY received_at LIMIT 1",
        (user, filepath, since, checksum)).fetchone()


def upsert_upload(reg: Registry, key: UploadKey, ingest_id: int, triggered_at: datetime) -> dict[str, Any]:
    """Create or fetch this upload's row; a cancel received after ``triggered_at`` leaves it cancelled."""
    file_id = sda_file_id(key)
    with reg.transaction() as conn:
        # A new upload at the path replaces one not yet completed; its archived copy goes (see superseded).
        replaced = conn.execute(
            "UPDATE ega_files SET status = 'disabled', updated_at = now() WHERE user_name = %s AND filepath = %s "
            "AND upload_checksum <> %s AND status NOT IN ('disabled', 'completed') RETURNING sda_file_id",
            (key.user, key.filepath, key.checksum)).fetchall()
        row = conn.execute(
            """
            INSERT INTO ega_files (ingest_id, stable_id, user_name, filepath, upload_checksum, upload_checksum_type,
                                   status, protocol, sda_file_id, triggered_at)
            VALUES (%s, NULL, %s, %s, %s, %s, 'in_ingestion', 'sda', %s, %s)
            ON CONFLICT (user_name, filepath, upload_checksum) DO UPDATE SET
                ingest_id = EXCLUDED.ingest_id, updated_at = now(), protocol = 'sda',
                sda_file_id = COALESCE(ega_files.sda_file_id, EXCLUDED.sda_file_id),
                triggered_at = GREATEST(ega_files.triggered_at, EXCLUDED.triggered_at),
                status = CASE WHEN ega_files.status IN ('completed', 'awaiting_accession') THEN ega_files.status
                              ELSE 'in_ingestion' END,
                error = CASE WHEN ega_files.status IN ('completed', 'awaiting_accession') THEN ega_files.error
                             ELSE NULL END
            RETURNING *
            """,
            (ingest_id, key.user, key.filepath, key.checksum, key.checksum_type, file_id, triggered_at),
        ).fetchone()
        if row["status"] != "completed" and _cancelled_after(conn, key.user, key.filepath, key.checksum,
                                                             triggered_at):
            row = conn.execute("UPDATE ega_files SET status = 'cancelled', updated_at = now() WHERE id = %s "
                               "RETURNING *", (row["id"],)).fetchone()
    return {**row, "superseded": [r["sda_file_id"] for r in replaced if r["sda_file_id"]]}


def is_cancelled(reg: Registry, file_id: int, triggered_at: datetime) -> bool:
    row = reg.execute("SELECT * FROM ega_files WHERE id = %s", (file_id,))[0]
    if row["status"] == "cancelled":
        return True
    return _cancelled_after(reg.conn, row["user_name"], row["filepath"], row["upload_checksum"],
                            triggered_at) is not None


def mark_awaiting_accession(reg: Registry, file_id: int, triggered_at: datetime, **fields: Any) -> bool:
    """Record the verified archive copy, unless a cancel got there first (then False; the caller undoes)."""
    cols = ", ".join(f"{k} = %({k})s" for k in fields)
    with reg.transaction() as conn:
        row = conn.execute("SELECT * FROM ega_files WHERE id = %s FOR UPDATE", (file_id,)).fetchone()
        if row["status"] == "cancelled" or _cancelled_after(conn, row["user_name"], row["filepath"],
                                                            row["upload_checksum"], triggered_at):
            conn.execute("UPDATE ega_files SET status = 'cancelled', updated_at = now() WHERE id = %s", (file_id,))
            return False
        conn.execute(f"UPDATE ega_files SET {cols}, status = 'awaiting_accession', accession_requested_at = now(), "
                     "updated_at = now() WHERE id = %(id)s", {**fields, "id": file_id})
    return True


def record_cancel(reg: Registry, user: str, filepath: str, checksum: str | None, correlation_id: str | None,
                  received_at: datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Keep the cancel and cancel the rows it reaches: (rows now cancelled, completed rows it cannot undo)."""
    with reg.transaction() as conn:
        conn.execute(
            "INSERT INTO ega_sda_cancels (user_name, filepath, encrypted_checksum, correlation_id, received_at) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (user_name, filepath, received_at) DO NOTHING",
            (user, filepath, checksum, correlation_id, received_at))
        match = ("user_name = %(u)s AND filepath = %(f)s AND protocol = 'sda' "
                 "AND (%(c)s::text IS NULL OR lower(upload_checksum) = lower(%(c)s))")
        args = {"u": user, "f": filepath, "c": checksum, "t": received_at}
        cancelled = conn.execute(
            f"UPDATE ega_files SET status = 'cancelled', updated_at = now() WHERE {match} "
            "AND status NOT IN ('completed', 'disabled') AND (triggered_at IS NULL OR triggered_at < %(t)s) "
            "RETURNING *", args).fetchall()
        completed = conn.execute(f"SELECT * FROM ega_files WHERE {match} AND status = 'completed'", args).fetchall()
    return cancelled, completed


def awaiting(reg: Registry, user: str, filepath: str) -> list[dict[str, Any]]:
    """The SDA rows of this path an accession could be for, newest first."""
    return reg.execute(
        "SELECT * FROM ega_files WHERE user_name = %s AND filepath = %s AND protocol = 'sda' "
        "AND status IN ('awaiting_accession', 'completed', 'cancelled') ORDER BY updated_at DESC",
        (user, filepath))


def complete(reg: Registry, file_id: int, accession_id: str) -> dict[str, Any] | None:
    """Name the upload and mark it completed, if it is still awaiting (None: cancelled meanwhile)."""
    with reg.transaction() as conn:
        row = conn.execute("SELECT * FROM ega_files WHERE id = %s FOR UPDATE", (file_id,)).fetchone()
        if row["status"] == "completed" and row["stable_id"] == accession_id:
            return row
        if row["status"] != "awaiting_accession":
            return None
        return conn.execute("UPDATE ega_files SET stable_id = %s, status = 'completed', error = NULL, "
                            "updated_at = now() WHERE id = %s RETURNING *", (accession_id, file_id)).fetchone()


def accession_owner(reg: Registry, accession_id: str) -> dict[str, Any] | None:
    rows = reg.execute("SELECT * FROM ega_files WHERE stable_id = %s AND protocol = 'sda' AND status <> 'disabled'",
                       (accession_id,))
    return rows[0] if rows else None
