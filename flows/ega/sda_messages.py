"""Our own models of the SDA (Federated EGA) messages we consume and emit.

Written from the JSON schemas in neicnordic/sensitive-data-archive
``sda/schemas/federated/`` (draft-07): the same required fields, types, constants
and patterns. Every model validates JSON text in strict mode, so an integer where
the schema wants a string (``file_id``) or a string where it wants a boolean is
refused, as a schema validator refuses it. Unknown fields are allowed where the
schemas allow them (``additionalProperties: true``) and refused inside checksum
objects, where they do not.
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.errors import UserError

# Routing keys on the node's exchange (``sda`` in vhost ``sda`` on a real node).
ROUTE_ARCHIVED = "archived"      # ingestion-verification: the file is in the archive
ROUTE_VERIFIED = "verified"      # ingestion-accession-request: shovelled to CEGA as files.verified
ROUTE_COMPLETED = "completed"    # ingestion-completion: shovelled to CEGA as files.completed
ROUTE_ERROR = "error"            # ingestion-user-error and info-error: shovelled to CEGA as files.error
ROUTE_INBOX = "inbox"            # inbox-upload / inbox-rename / inbox-remove: shovelled as files.inbox

_STRICT = ConfigDict(strict=True, extra="allow", populate_by_name=True)


class Sha256(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    type: Literal["sha256"]
    value: Annotated[str, Field(pattern=r"^[a-fA-F0-9]{64}$")]


class Md5(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    type: Literal["md5"]
    value: Annotated[str, Field(pattern=r"^[a-fA-F0-9]{32}$")]


Checksum = Annotated[Sha256 | Md5, Field(discriminator="type")]


def _has_sha256(checksums: list[Any]) -> list[Any]:
    if not any(c.type == "sha256" for c in checksums):
        raise ValueError("must contain a sha256 checksum")
    return checksums


class SdaModel(BaseModel):
    model_config = _STRICT

    def body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# ---------------------------------------------------------------- consumed (from CEGA)
class IngestionTrigger(SdaModel):
    """``ingestion-trigger``: start (``ingest``) or call off (``cancel``) one upload. No accession id yet."""
    type: Literal["ingest", "cancel"]
    user: Annotated[str, Field(min_length=2)]
    filepath: Annotated[str, Field(min_length=2)]
    encrypted_checksums: list[Checksum] | None = None


class IngestionAccession(SdaModel):
    """``ingestion-accession``: CEGA's accession id for a verified upload."""
    type: Literal["accession"]
    user: str
    filepath: str
    accession_id: Annotated[str, Field(pattern=r"^EGAF[0-9]{11}$")]
    decrypted_checksums: list[Checksum]


# ---------------------------------------------------------------- emitted
class IngestionVerification(SdaModel):
    """``ingestion-verification`` (routing key ``archived``): the archived copy, before verification."""
    user: str
    filepath: str
    file_id: str
    archive_path: str
    encrypted_checksums: list[Checksum]
    re_verify: bool


class IngestionAccessionRequest(SdaModel):
    """``ingestion-accession-request`` (routing key ``verified``): verified; CEGA, please name it."""
    user: str
    filepath: str
    decrypted_checksums: list[Checksum]

    @field_validator("decrypted_checksums")
    @classmethod
    def _needs_sha256(cls, v: list[Any]) -> list[Any]:
        return _has_sha256(v)


class IngestionCompletion(SdaModel):
    """``ingestion-completion`` (routing key ``completed``): archived under the accession id."""
    user: str
    filepath: str
    accession_id: Annotated[str, Field(pattern=r"^EGAF[0-9]{11}$")]
    decrypted_checksums: list[Checksum]

    @field_validator("decrypted_checksums")
    @classmethod
    def _needs_sha256(cls, v: list[Any]) -> list[Any]:
        return _has_sha256(v)


class IngestionUserError(SdaModel):
    """``ingestion-user-error`` (routing key ``error``): the submitter's upload is at fault."""
    user: str
    filepath: Annotated[str, Field(min_length=2)]
    reason: str
    encrypted_checksums: list[Checksum] | None = None


class InfoError(SdaModel):
    """``info-error`` (routing key ``error``): a system error; never blames the submitter."""
    error: str
    reason: Annotated[str, Field(min_length=1)]
    original_message: str = Field(alias="original-message")


class InboxUpload(SdaModel):
    user: str
    filepath: Annotated[str, Field(min_length=2)]
    operation: Literal["upload"]
    filesize: int | None = None
    file_last_modified: int | None = None
    encrypted_checksums: list[Checksum] | None = None


class InboxRename(SdaModel):
    user: str
    filepath: Annotated[str, Field(min_length=2)]
    oldpath: Annotated[str, Field(min_length=2)]
    operation: Literal["rename"]


class InboxRemove(SdaModel):
    user: str
    filepath: Annotated[str, Field(min_length=2)]
    operation: Literal["remove"]


# What each routing key we publish may carry (tests validate every emitted body against these).
EMITTED: dict[str, tuple[type[SdaModel], ...]] = {
    ROUTE_ARCHIVED: (IngestionVerification,),
    ROUTE_VERIFIED: (IngestionAccessionRequest,),
    ROUTE_COMPLETED: (IngestionCompletion,),
    ROUTE_ERROR: (IngestionUserError, InfoError),
    ROUTE_INBOX: (InboxUpload, InboxRename, InboxRemove),
}


def describe_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:10]:
        where = "/".join(str(p) for p in err["loc"]) or "(message)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def parse(model: type[SdaModel], raw: dict[str, Any] | bytes | str) -> SdaModel:
    """Validate as JSON (strict: what a schema validator would say), refusing with the submitter's words."""
    text = raw if isinstance(raw, (bytes, str)) else json.dumps(raw)
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        raise UserError(f"invalid {model.__name__} message: {describe_errors(exc)}") from exc


def parse_inbound(raw: dict[str, Any]) -> IngestionTrigger | IngestionAccession:
    """A message from CEGA, by its ``type``: ingest/cancel triggers or an accession."""
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "accession":
        return parse(IngestionAccession, raw)  # type: ignore[return-value]
    if kind in ("ingest", "cancel"):
        return parse(IngestionTrigger, raw)  # type: ignore[return-value]
    raise UserError(f"invalid message: type must be one of ingest, cancel, accession (got {kind!r})")


def check_emitted(routing_key: str, body: dict[str, Any]) -> SdaModel:
    """The model an emitted body satisfies; ValueError when none does (a bug on our side)."""
    text = json.dumps(body)
    errors = []
    for model in EMITTED.get(routing_key, ()):
        try:
            return model.model_validate_json(text)
        except ValidationError as exc:
            errors.append(f"{model.__name__}: {describe_errors(exc)}")
    raise ValueError(f"body on {routing_key!r} fits no SDA model: {'; '.join(errors) or 'unknown routing key'}")


def checksums(pairs: dict[str, str | None]) -> list[dict[str, str]]:
    """``{"sha256": …, "md5": …}`` → SDA's ``[{"type", "value"}]``, sha256 first, empty values dropped."""
    order = ("sha256", "md5")
    return [{"type": t, "value": pairs[t]} for t in order if pairs.get(t)]  # type: ignore[misc]
