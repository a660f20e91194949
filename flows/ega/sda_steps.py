"""The steps of an EGA ingest over the SDA (Federated EGA) protocol, as plain functions.

SDA splits one ingest in two: the trigger's run archives and verifies the upload,
reports ``ingestion-verification`` and asks CEGA for an accession
(``ingestion-accession-request``), and ends with the upload ``awaiting_accession`` in
the registry. The ``ingestion-accession`` message starts a second, short run that
names the upload, records it and sends ``ingestion-completion``. No worker waits
for CEGA in between. The byte work (key, decrypt pass, vault move) is the legacy
flow's, unchanged.

A ``cancel`` trigger can arrive at any time before completion. The ingest checks at
every step boundary whether a cancel received after its own trigger exists, and if
so removes its staged file and vault copy and stops; the cancel run removes the
vault copy of whatever it reached (sda_records explains why neither order loses).
"""
from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from flows.ega import records, sda_records
from flows.ega.config import EgaConfig
from flows.ega.inbox import companion_checksums, resolve_upload
from flows.ega.messages import _checked
from flows.ega.sda_messages import (
    ROUTE_ARCHIVED,
    ROUTE_COMPLETED,
    ROUTE_ERROR,
    ROUTE_VERIFIED,
    InfoError,
    IngestionAccession,
    IngestionAccessionRequest,
    IngestionCompletion,
    IngestionTrigger,
    IngestionUserError,
    IngestionVerification,
    SdaModel,
    checksums,
)
from flows.ega.keyserver import KeyMaterial
from flows.ega.steps import Located, Staged, record_stored_file
from flows.ega.steps import reencrypt_to_staging as _reencrypt_to_staging
from tasks import registry as reg
from tasks.checksum import hash_file
from tasks.claims import claim, sweep_owned_staging
from tasks.errors import UserError
from tasks.notify import Notification, notify

log = logging.getLogger(__name__)

DOMAIN = records.DOMAIN
AGENT = "archive-ingest/ega-sda"
DELETION = "deletion"


class Cancelled(UserError):
    """A cancel reached this ingest: it stops, undoes what it wrote, and ends as cancelled (not failed).

    A UserError only so that no task retries it; the flow catches it before any error handling."""


class AccessionRefused(UserError):
    """An accession we cannot apply. CEGA's doing, not the submitter's: reported as info-error, not retried."""


def ingest_key(user: str, filepath: str) -> str:
    return f"sda|{user}/{filepath}"


def publish(cfg: EgaConfig, routing_key: str, message: SdaModel, correlation_id: str | None) -> None:
    """Every body goes out as its model serialises it, on the node's one exchange."""
    notify(Notification(exchange=cfg.sda_exchange, routing_key=routing_key, body=message.body(),
                        correlation_id=correlation_id), cfg.transport)


def _strongest(listed: list[Any] | None) -> tuple[str, str] | None:
    if not listed:
        return None
    checked = sorted((_checked(c.type, c.value, "encrypted") for c in listed),
                     key=lambda av: av[0] == "sha256", reverse=True)
    return checked[0]


# ---------------------------------------------------------------- ingest run
def register(cfg: EgaConfig, trig: IngestionTrigger, correlation_id: str | None, flow_run_id: str | None) -> int:
    """The ingest of this path starts (SDA has no 'processing' message: nothing is sent).

    One run per path at a time (tasks/claims); holding the claim, what a dead attempt left in staging goes."""
    key = ingest_key(trig.user, trig.filepath)
    claim(cfg.registry, DOMAIN, key)
    ingest = cfg.registry.begin_ingest(DOMAIN, key, flow_run_id=flow_run_id,
                                       details={"correlation_id": correlation_id, "protocol": "sda",
                                                "user": trig.user, "filepath": trig.filepath})
    sweep_owned_staging(cfg.staging, DOMAIN, ingest.id)
    return ingest.id


def locate(cfg: EgaConfig, trig: IngestionTrigger, ingest_id: int, triggered_at: datetime) -> Located:
    """Find the upload and settle its encrypted checksum: the trigger's, a companion file's, or (neither
    given, as SDA allows) a sha256 read from the upload itself."""
    path = resolve_upload(cfg.inbox_root, trig.user, trig.filepath)
    companion_enc, companion_plain = companion_checksums(path)
    enc = _strongest(trig.encrypted_checksums) or companion_enc
    if enc is None:
        enc = ("sha256", hash_file(path, ["sha256"]).checksums["sha256"])
    upload = records.UploadKey(trig.user, trig.filepath, enc[1], enc[0])
    row = sda_records.upsert_upload(cfg.registry, upload, ingest_id, triggered_at)
    for old_id in row.pop("superseded"):  # an earlier upload of this path, replaced before its accession
        cfg.vault.delete(sda_records.vault_key(old_id))
    located = Located(ingest_id, row["id"], str(path), upload, companion_plain, row["status"], row)
    if row["status"] == "cancelled":
        raise Cancelled(f"{trig.user}/{trig.filepath}: cancelled before the ingest started")
    return located


def check_not_cancelled(cfg: EgaConfig, located: Located, triggered_at: datetime, where: str) -> None:
    if sda_records.is_cancelled(cfg.registry, located.file_id, triggered_at):
        raise Cancelled(f"{located.upload.user}/{located.upload.filepath}: cancelled {where}")


def reencrypt_to_staging(cfg: EgaConfig, located: Located, key: KeyMaterial, triggered_at: datetime) -> Staged:
    """Legacy's pass, called off within seconds of a cancel recorded while it runs (its process is killed)."""
    return _reencrypt_to_staging(cfg, located, key, still_wanted=lambda: check_not_cancelled(
        cfg, located, triggered_at, "during the decrypt pass"))


def archive(cfg: EgaConfig, located: Located, staged: Staged, triggered_at: datetime) -> dict[str, Any]:
    """Move into the vault under the node's file id, read back once, and record it awaiting an accession.

    A cancel that got to the row first wins: the copy just written is removed again.
    """
    file_id = located.row["sda_file_id"]
    key = sda_records.vault_key(file_id)
    put = cfg.vault.move_in_verified(key, cfg.staging.path(staged.name), size=staged.size, sha256=staged.sha256,
                                     crc32c=staged.crc32c)
    kept = sda_records.mark_awaiting_accession(
        cfg.registry, located.file_id, triggered_at,
        upload_md5=staged.encrypted.get("md5"), upload_sha256=staged.encrypted.get("sha256"),
        upload_size=staged.encrypted_size,
        decrypted_checksum=staged.plaintext["sha256"], decrypted_checksum_type="sha256",
        decrypted_md5=staged.plaintext.get("md5"), decrypted_sha256=staged.plaintext["sha256"],
        decrypted_size=staged.plaintext_size, archive_checksum=staged.sha256, archive_checksum_type="sha256",
        archive_size=staged.size, archive_uri=put.uri, archive_key=key)
    if not kept:
        cfg.vault.delete(key)
        raise Cancelled(f"{located.upload.user}/{located.upload.filepath}: cancelled while archiving")
    return records.get_by_id(cfg.registry, located.file_id)


def request_accession(cfg: EgaConfig, row: dict[str, Any], correlation_id: str | None) -> None:
    """``ingestion-verification`` for the archive, then ``ingestion-accession-request`` for CEGA."""
    publish(cfg, ROUTE_ARCHIVED, IngestionVerification(
        user=row["user_name"], filepath=row["filepath"], file_id=row["sda_file_id"],
        archive_path=row["archive_key"], encrypted_checksums=checksums({"sha256": row["archive_checksum"]}),
        re_verify=False), correlation_id)
    publish(cfg, ROUTE_VERIFIED, IngestionAccessionRequest(
        user=row["user_name"], filepath=row["filepath"],
        decrypted_checksums=checksums({"sha256": row["decrypted_sha256"], "md5": row["decrypted_md5"]})),
        correlation_id)
    ingest = cfg.registry.ingest_by_id(row["ingest_id"])
    cfg.registry.set_state(row["ingest_id"], "awaiting_accession")
    if ingest is not None:
        cfg.registry.record_event(ingest, reg.FIXITY_CHECK, subject=row["sda_file_id"], agent=AGENT,
                                  detail=f"vault copy sha256 {row['archive_checksum']} size "
                                         f"{row['archive_size']} read back")


def undo_cancelled(cfg: EgaConfig, located: Located | None, staged: Staged | None, reason: str) -> None:
    """What a cancel leaves: no staged file, no vault copy, the row and the ingest marked cancelled."""
    if staged is not None:
        cfg.staging.remove(staged.name)
    if located is None:
        return
    row = records.get_by_id(cfg.registry, located.file_id)
    if row.get("sda_file_id"):
        cfg.vault.delete(sda_records.vault_key(row["sda_file_id"]))
    records.set_status(cfg.registry, located.file_id, "cancelled", reason)
    _record_cancelled(cfg, located.ingest_id, row, reason)


def _record_cancelled(cfg: EgaConfig, ingest_id: int | None, row: dict[str, Any] | None, reason: str) -> None:
    if ingest_id is None:
        return
    ingest = cfg.registry.ingest_by_id(ingest_id)
    if ingest is None:
        return
    subject = (row or {}).get("sda_file_id") or ingest.natural_key
    cfg.registry.record_event(ingest, DELETION, subject=subject, agent=AGENT, outcome="success",
                              discriminator=f"cancel-{(row or {}).get('id')}", detail=reason)
    cfg.registry.set_state(ingest_id, "cancelled", error=reason)


# ---------------------------------------------------------------- cancel run
def cancel(cfg: EgaConfig, trig: IngestionTrigger, correlation_id: str | None,
           received_at: datetime) -> dict[str, Any]:
    """Call off every ingest of this upload triggered before now: rows cancelled, vault copies removed.

    Never starts an ingest. An upload already completed cannot be cancelled: that is said in an
    info-error, since the submitter asked for nothing wrong.
    """
    enc = _strongest(trig.encrypted_checksums)
    ingest = cfg.registry.register_ingest(DOMAIN, ingest_key(trig.user, trig.filepath),
                                          details={"protocol": "sda", "user": trig.user, "filepath": trig.filepath})
    cancelled, completed = sda_records.record_cancel(cfg.registry, trig.user, trig.filepath,
                                                     enc[1] if enc else None, correlation_id, received_at)
    removed, runs = [], []
    for row in cancelled:
        if row["status"] == "cancelled" and row.get("ingest_id"):
            found = cfg.registry.execute("SELECT flow_run_id FROM ingests WHERE id = %s", (row["ingest_id"],))
            if found and found[0]["flow_run_id"]:
                runs.append(str(found[0]["flow_run_id"]))
        if row.get("sda_file_id"):
            key = sda_records.vault_key(row["sda_file_id"])
            if cfg.vault.exists(key):
                removed.append(cfg.vault.uri(key))
            cfg.vault.delete(key)
        reason = "cancelled by CEGA" + (f"; removed {', '.join(removed)}" if removed else "")
        _record_cancelled(cfg, ingest.id, row, reason)
    if not cancelled and completed:
        ids = ", ".join(sorted({r["stable_id"] for r in completed}))
        publish(cfg, ROUTE_ERROR, InfoError(error="cannot cancel", reason=f"{trig.user}/{trig.filepath} is already "
                                            f"archived as {ids}", original_message=json.dumps(trig.body())),
                correlation_id)
        return {"state": "REFUSED", "user": trig.user, "filepath": trig.filepath, "accession_ids": ids.split(", ")}
    if not cancelled:
        # Nothing to undo yet: the cancel is kept and calls off an ingest whose trigger came before it.
        _record_cancelled(cfg, ingest.id, None, "cancelled by CEGA before the ingest started")
    return {"state": "CANCELLED", "user": trig.user, "filepath": trig.filepath, "cancelled_uploads": len(cancelled),
            "removed": removed, "ingest_runs": sorted(set(runs))}


# ---------------------------------------------------------------- accession run
def finalize(cfg: EgaConfig, acc: IngestionAccession, correlation_id: str | None) -> dict[str, Any]:
    """Name the verified upload with CEGA's accession id, record it, and send ``ingestion-completion``."""
    r = cfg.registry
    given = {c.type: c.value.lower() for c in acc.decrypted_checksums}
    rows = [row for row in sda_records.awaiting(r, acc.user, acc.filepath)
            if all(row.get(f"decrypted_{t}") == v for t, v in given.items())]
    if not rows:
        raise AccessionRefused(f"accession {acc.accession_id}: no verified upload {acc.user}/{acc.filepath} "
                               "with these decrypted checksums")
    row = next((x for x in rows if x["status"] != "cancelled"), rows[0])
    if row["status"] == "cancelled":
        return {"state": "CANCELLED", "stable_id": None, "user": acc.user, "filepath": acc.filepath,
                "error": f"accession {acc.accession_id} arrived for a cancelled upload; nothing archived"}
    owner = sda_records.accession_owner(r, acc.accession_id)
    if owner is not None and owner["id"] != row["id"]:
        raise AccessionRefused(f"accession {acc.accession_id} already names {owner['user_name']}/{owner['filepath']}")
    if row["status"] == "completed" and row["stable_id"] != acc.accession_id:
        raise AccessionRefused(f"{acc.user}/{acc.filepath} is already archived as {row['stable_id']}")
    done = sda_records.complete(r, row["id"], acc.accession_id)
    if done is None:
        return {"state": "CANCELLED", "stable_id": None, "user": acc.user, "filepath": acc.filepath,
                "error": f"cancelled before accession {acc.accession_id} arrived"}
    _record_completion(cfg, done)
    report_completed(cfg, done, correlation_id)
    return done


def report_completed(cfg: EgaConfig, row: dict[str, Any], correlation_id: str | None) -> None:
    publish(cfg, ROUTE_COMPLETED, IngestionCompletion(
        user=row["user_name"], filepath=row["filepath"], accession_id=row["stable_id"],
        decrypted_checksums=checksums({"sha256": row["decrypted_sha256"], "md5": row["decrypted_md5"]})),
        correlation_id)


def _record_completion(cfg: EgaConfig, row: dict[str, Any]) -> None:
    r = cfg.registry
    ingest = r.ingest_by_id(row["ingest_id"])
    assert ingest is not None
    subject = row["stable_id"]
    record_stored_file(r, ingest, subject, row, AGENT)
    r.record_event(ingest, reg.IDENTIFIER_ASSIGNMENT, subject=subject, agent=AGENT,
                   detail=f"accession {subject} from CEGA for file id {row['sda_file_id']}")
    r.record_event(ingest, reg.INGESTION, subject=subject, agent=AGENT, detail=row["archive_uri"])
    r.set_state(ingest.id, "completed")


# ---------------------------------------------------------------- failures
def report_failure(cfg: EgaConfig, raw: dict[str, Any], correlation_id: str | None, exc: BaseException,
                   ingest_id: int | None, located: Located | None, *, user_error: bool) -> None:
    """Submitter's fault: ``ingestion-user-error``. Anything else, and every refused accession: ``info-error``."""
    reason = exc.message if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
    if ingest_id is not None and not isinstance(exc, AccessionRefused):
        cfg.registry.set_state(ingest_id, "failed", error=reason)
    if located is not None:
        records.set_status(cfg.registry, located.file_id, "error" if user_error else "failed", reason)
    user, filepath = raw.get("user"), raw.get("filepath")
    if (user_error and not isinstance(exc, AccessionRefused) and isinstance(user, str)
            and isinstance(filepath, str) and len(filepath) >= 2):
        sums = None
        if located is not None:
            sums = checksums({located.upload.checksum_type: located.upload.checksum})
        publish(cfg, ROUTE_ERROR, IngestionUserError(user=user, filepath=filepath, reason=reason,
                                                     encrypted_checksums=sums), correlation_id)
    else:
        publish(cfg, ROUTE_ERROR, InfoError(error="ingestion failed" if not isinstance(exc, AccessionRefused)
                                            else "accession refused", reason=reason or type(exc).__name__,
                                            original_message=json.dumps(raw, sort_keys=True, default=str)),
                correlation_id)


def summary(row: dict[str, Any] | None, state: str, *, user: str | None = None, filepath: str | None = None,
            error: str | None = None) -> dict[str, Any]:
    """The JSON line the CLI prints: the legacy fields plus the node's file id."""
    out: dict[str, Any] = {"stable_id": row.get("stable_id") if row else None, "state": state,
                           "user": row["user_name"] if row else user, "filepath": row["filepath"] if row else filepath,
                           "file_id": row.get("sda_file_id") if row else None,
                           "vault_uri": row.get("archive_uri") if row and state != "CANCELLED" else None,
                           "checksums": {}}
    if row and state != "CANCELLED":
        out["checksums"] = {
            "encrypted": {k: row.get(f"upload_{k}") for k in ("md5", "sha256") if row.get(f"upload_{k}")},
            "decrypted": {k: row.get(f"decrypted_{k}") for k in ("md5", "sha256") if row.get(f"decrypted_{k}")},
            "archived": {"sha256": row.get("archive_checksum")} if row.get("archive_checksum") else {},
        }
    if error:
        out["error"] = error
    return out
