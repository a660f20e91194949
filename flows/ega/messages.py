"""EGA messages: the trigger from CEGA and the status replies we send back.

The trigger model doubles as the flow parameter, so the Prefect UI form is the
message itself. JSON Schema validation (kept as data beside this module) gives
the submitter precise errors before any work starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tasks.checksum import HEX_LENGTHS, normalize_algorithm
from tasks.errors import UserError
from tasks.validation import validate_json

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "ingest-message.json"
EGA_ALGORITHMS = ("md5", "sha256")


class Integrity(BaseModel):
    checksum: str
    algorithm: str | None = None


class TypedChecksum(BaseModel):
    type: str
    value: str


class EgaMessage(BaseModel):
    """A file to ingest, as published by Central EGA on the ``files`` queue."""

    model_config = ConfigDict(extra="allow")

    user: str = Field(description="Submitter account (inbox directory)")
    filepath: str = Field(description="Path of the encrypted file inside the user's inbox")
    stable_id: str = Field(description="Accession id assigned by Central EGA, e.g. EGAF00000000001")
    encrypted_integrity: Integrity | None = None
    unencrypted_integrity: Integrity | None = None
    encrypted_checksums: list[TypedChecksum] | None = None
    decrypted_checksums: list[TypedChecksum] | None = None


def validate_message(raw: dict[str, Any]) -> EgaMessage:
    validate_json(raw, SCHEMA_PATH)
    return EgaMessage.model_validate(raw)


def _checked(algorithm: str | None, value: str, what: str) -> tuple[str, str]:
    algo = normalize_algorithm(algorithm)
    if algo not in EGA_ALGORITHMS:
        raise UserError(f"unsupported hash algorithm {algorithm!r} for the {what} checksum (use md5 or sha256)")
    value = value.strip().lower()
    if len(value) != HEX_LENGTHS[algo]:
        raise UserError(f"{what} {algo} checksum must have {HEX_LENGTHS[algo]} hex digits, got {len(value)}")
    return algo, value


def expected_checksums(msg: EgaMessage) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """(algorithm, hex) for the encrypted and the plaintext content, from either message form.

    The newer form lists several; we keep the strongest we can verify (sha256 over md5).
    """
    def pick(integrity: Integrity | None, listed: list[TypedChecksum] | None, what: str):
        if integrity is not None:
            return _checked(integrity.algorithm, integrity.checksum, what)
        if listed:
            checked = [_checked(c.type, c.value, what) for c in listed]
            checked.sort(key=lambda av: EGA_ALGORITHMS.index(av[0]), reverse=True)
            return checked[0]
        return None

    return (pick(msg.encrypted_integrity, msg.encrypted_checksums, "encrypted"),
            pick(msg.unencrypted_integrity, msg.decrypted_checksums, "decrypted"))


def status_message(msg: EgaMessage, state: str, details: str) -> dict[str, Any]:
    """The body CEGA expects on files.completed / files.error."""
    return {"user": msg.user, "filepath": msg.filepath, "stable_id": msg.stable_id,
            "status": {"state": state, "details": details}}


def completed_message(msg: EgaMessage) -> dict[str, Any]:
    return status_message(msg, "COMPLETED", f"File ingested, refer to it with {msg.stable_id}")


def error_message(msg: EgaMessage, reason: str) -> dict[str, Any]:
    return status_message(msg, "ERROR", reason)


def idempotency_key(raw: dict[str, Any]) -> str:
    """Same message → same key; a new checksum (a re-upload) → a new key and a new run."""
    import hashlib
    import json

    try:
        msg = EgaMessage.model_validate(raw)
        enc, _ = expected_checksums(msg)
        basis = [msg.user, msg.filepath, msg.stable_id, enc[1] if enc else ""]
    except Exception:  # an invalid message still needs a stable key for de-duplication
        basis = [json.dumps(raw, sort_keys=True, default=str)]
    return "ega:" + hashlib.sha256("\x1f".join(basis).encode()).hexdigest()[:32]
