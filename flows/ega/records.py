"""EGA rows in the registry: uploads, their checksums, the archive copy and session keys."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks.errors import UserError
from tasks.registry import Registry

DOMAIN = "ega"


@dataclass(frozen=True)
class UploadKey:
    user: str
    filepath: str
    checksum: str
    checksum_type: str

    @property
    def natural_key(self) -> str:
        return f"{self.user}/{self.filepath}#{self.checksum_type}:{self.checksum}"


def upsert_upload(reg: Registry, key: UploadKey, stable_id: str, ingest_id: int) -> dict[str, Any]:
    """Create or fetch the row for this exact upload; older uploads of the same path are disabled."""
    with reg.transaction() as conn:
        conn.execute(
            "UPDATE ega_files SET status = 'disabled', updated_at = now() "
            "WHERE user_name = %s AND filepath = %s AND upload_checksum <> %s AND status <> 'disabled'",
            (key.user, key.filepath, key.checksum),
        )
        row = conn.execute(
            """
            INSERT INTO ega_files (ingest_id, stable_id, user_name, filepath, upload_checksum,
                                   upload_checksum_type, status)
            VALUES (%s, %s, %s, %s, %s, %s, 'in_ingestion')
            ON CONFLICT (user_name, filepath, upload_checksum) DO UPDATE SET
                ingest_id = EXCLUDED.ingest_id, stable_id = EXCLUDED.stable_id, updated_at = now(),
                status = CASE WHEN ega_files.status IN ('completed', 'archived') THEN ega_files.status
                              ELSE 'in_ingestion' END,
                error = NULL
            RETURNING *
            """,
            (ingest_id, stable_id, key.user, key.filepath, key.checksum, key.checksum_type),
        ).fetchone()
    return row


def get_upload(reg: Registry, key: UploadKey) -> dict[str, Any] | None:
    rows = reg.execute("SELECT * FROM ega_files WHERE user_name = %s AND filepath = %s AND upload_checksum = %s",
                       (key.user, key.filepath, key.checksum))
    return rows[0] if rows else None


def claim_session_key(reg: Registry, key_sha256: str, key: UploadKey, file_id: int) -> None:
    """Refuse a session key already used for a different (user, filepath), as LocalEGA 1.0 did."""
    reg.execute(
        "INSERT INTO ega_session_keys (key_sha256, user_name, filepath, file_id) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (key_sha256) DO NOTHING",
        (key_sha256, key.user, key.filepath, file_id),
    )
    owner = reg.execute("SELECT user_name, filepath FROM ega_session_keys WHERE key_sha256 = %s", (key_sha256,))[0]
    if (owner["user_name"], owner["filepath"]) != (key.user, key.filepath):
        raise UserError("session key already used for another file; re-encrypt the file before uploading")


def mark_archived(reg: Registry, file_id: int, **fields: Any) -> None:
    """Record everything the archive step learned, so a resumed run needs no second decryption."""
    cols = ", ".join(f"{k} = %({k})s" for k in fields)
    reg.execute(f"UPDATE ega_files SET {cols}, status = 'archived', updated_at = now() WHERE id = %(id)s",
                {**fields, "id": file_id})


def set_status(reg: Registry, file_id: int, status: str, error: str | None = None) -> None:
    reg.execute("UPDATE ega_files SET status = %s, error = %s, updated_at = now() WHERE id = %s",
                (status, error, file_id))


def get_by_id(reg: Registry, file_id: int) -> dict[str, Any]:
    return reg.execute("SELECT * FROM ega_files WHERE id = %s", (file_id,))[0]
