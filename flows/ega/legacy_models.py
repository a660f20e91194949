"""Models of the legacy (LocalEGA) messages we emit, exactly as we emit them.

Legacy mode does not change; these models pin its shape so a test notices when
it does. Extra fields are refused: a legacy peer never saw them.
"""
from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

_EXACT = ConfigDict(strict=True, extra="forbid")


class Status(BaseModel):
    model_config = _EXACT
    state: Literal["PROCESSING", "COMPLETED", "ERROR"]
    details: str


class StatusMessage(BaseModel):
    """``files.processing`` / ``files.completed`` / ``files.error`` to CEGA.

    An unparseable trigger is answered too, with whatever user/filepath/stable_id it had (maybe none).
    """
    model_config = _EXACT
    user: str | None
    filepath: str | None
    stable_id: str | None
    status: Status


class TypedChecksum(BaseModel):
    model_config = _EXACT
    type: Literal["md5", "sha256"]
    value: str | None


class ArchivedMessage(BaseModel):
    """``archived`` and ``qc`` on the internal exchange."""
    model_config = _EXACT
    user: str
    filepath: str
    stable_id: str
    file_id: int
    archive_uri: str
    archive_size: int
    archive_checksum: TypedChecksum
    decrypted_checksums: list[TypedChecksum]


class Integrity(BaseModel):
    model_config = _EXACT
    algorithm: Literal["sha256"]
    checksum: str


class InboxMessage(BaseModel):
    """``files.inbox``: a new or changed upload."""
    model_config = _EXACT
    user: str
    filepath: str
    filesize: int
    encrypted_integrity: Integrity


class InboxChecksumsMessage(BaseModel):
    """``files.inbox.checksums``: a companion .md5/.sha256 file's content."""
    model_config = _EXACT
    user: str
    filepath: str
    content: str


EMITTED: dict[str, type[BaseModel]] = {
    "files.processing": StatusMessage,
    "files.completed": StatusMessage,
    "files.error": StatusMessage,
    "files.inbox": InboxMessage,
    "files.inbox.checksums": InboxChecksumsMessage,
    "archived": ArchivedMessage,
    "qc": ArchivedMessage,
}
STATES = {"files.processing": "PROCESSING", "files.completed": "COMPLETED", "files.error": "ERROR"}


def check_emitted(routing_key: str, body: dict[str, Any]) -> BaseModel:
    model = EMITTED.get(routing_key)
    if model is None:
        raise ValueError(f"legacy mode never emits {routing_key!r}")
    try:
        parsed = model.model_validate_json(json.dumps(body))
    except ValidationError as exc:
        raise ValueError(f"body on {routing_key!r} fits no legacy model: {exc}") from exc
    if routing_key in STATES and parsed.status.state != STATES[routing_key]:  # type: ignore[attr-defined]
        raise ValueError(f"{routing_key} carries state {parsed.status.state}")  # type: ignore[attr-defined]
    return parsed
