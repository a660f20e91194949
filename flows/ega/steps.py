"""The steps of one EGA file ingest, as plain functions (the flow only orders them).

Each step leaves the registry in a state a re-run can continue from: an upload
row marked ``archived`` already holds every checksum and the vault URI, so a run
that died after the vault write resumes at the registry step without decrypting.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.ega import records
from flows.ega.config import EgaConfig
from flows.ega.inbox import companion_checksums, resolve_upload
from flows.ega.keyserver import UNRELATED_KEY, KeyMaterial
from flows.reporting import Progress
from flows.ega.messages import EgaMessage, completed_message, error_message, expected_checksums
from tasks import registry as reg
from tasks.checksum import hash_file
from tasks.claims import claim, owned_name, sweep_owned_staging, sweep_vault_temporaries
from tasks.errors import UserError
from tasks.notify import Notification, notify
from tasks.run_logging import rate, step_logger

log = logging.getLogger(__name__)

DOMAIN = records.DOMAIN
AGENT = "archive-ingest/ega"


@dataclass
class Located:
    ingest_id: int
    file_id: int
    path: str
    upload: records.UploadKey
    expected_plain: tuple[str, str] | None
    status: str
    row: dict[str, Any] = field(default_factory=dict)


@dataclass
class Staged:
    name: str
    size: int
    sha256: str  # of the staged Crypt4GH file, computed by the decrypt pass
    encrypted: dict[str, str]
    encrypted_size: int
    plaintext: dict[str, str]
    plaintext_size: int
    crc32c: str | None = None  # of the staged file, from the pass: what the vault's read-back compares


def ingest_key(msg: EgaMessage) -> str:
    return f"{msg.stable_id}|{msg.user}/{msg.filepath}"


def publish(cfg: EgaConfig, exchange: str, routing_key: str, body: dict[str, Any], correlation_id: str | None) -> str:
    delivery = notify(Notification(exchange=exchange, routing_key=routing_key, body=body,
                                   correlation_id=correlation_id), cfg.transport)
    return delivery.transport


# ---------------------------------------------------------------- 1. register
def register(cfg: EgaConfig, msg: EgaMessage, correlation_id: str | None, flow_run_id: str | None) -> int:
    """Register the ingest (received → in_ingestion) and tell CEGA work has started.

    First the object's claim (tasks/claims): a second run of the same upload waits here and then
    finds the work done; holding it, we sweep what a dead earlier attempt left in staging and vault."""
    claim(cfg.registry, DOMAIN, ingest_key(msg))
    ingest = cfg.registry.register_ingest(DOMAIN, ingest_key(msg), details={"user": msg.user,
                                                                             "filepath": msg.filepath})
    ingest = cfg.registry.begin_ingest(DOMAIN, ingest_key(msg), flow_run_id=flow_run_id,
                                       details={"correlation_id": correlation_id})
    sweep_owned_staging(cfg.staging, DOMAIN, ingest.id)
    sweep_vault_temporaries(cfg.vault, f"ega/{msg.stable_id}")
    publish(cfg, cfg.status_exchange, "files.processing",
            {"user": msg.user, "filepath": msg.filepath, "stable_id": msg.stable_id,
             "status": {"state": "PROCESSING", "details": "File ingestion started"}}, correlation_id)
    return ingest.id


# ---------------------------------------------------------------- 2-3. locate
def locate(cfg: EgaConfig, msg: EgaMessage, ingest_id: int) -> Located:
    """Find the upload in the inbox and settle which checksums it must match.

    An upload already ingested under the expected checksum is reported as it is,
    even when the inbox copy has since been cleaned up; one whose inbox copy no
    longer matches that checksum is not.
    """
    enc, plain = expected_checksums(msg)
    try:
        path = resolve_upload(cfg.inbox_root, msg.user, msg.filepath)
    except UserError:
        done = _completed(cfg, msg, enc)
        if done is None:
            raise
        return Located(ingest_id, done["id"], "", _upload_key(msg, enc), plain, "completed", done)
    companion_enc, companion_plain = companion_checksums(path)
    enc = enc or companion_enc
    plain = plain or companion_plain
    if enc is None:
        raise UserError("no checksum for the encrypted file: none in the message and no .md5/.sha256 companion file")
    upload = _upload_key(msg, enc)
    done = _completed(cfg, msg, enc)
    if done is not None:
        actual = hash_file(path, [enc[0]]).checksums[enc[0]]
        if actual != enc[1]:
            raise UserError(f"encrypted checksum mismatch: expected {enc[0]} {enc[1]}, got {actual}")
        return Located(ingest_id, done["id"], str(path), upload, plain, "completed", done)
    row = records.upsert_upload(cfg.registry, upload, msg.stable_id, ingest_id)
    return Located(ingest_id, row["id"], str(path), upload, plain, row["status"], row)


def _upload_key(msg: EgaMessage, enc: tuple[str, str]) -> records.UploadKey:
    return records.UploadKey(msg.user, msg.filepath, enc[1], enc[0])


def _completed(cfg: EgaConfig, msg: EgaMessage, enc: tuple[str, str] | None) -> dict[str, Any] | None:
    if enc is None:
        return None
    row = records.get_upload(cfg.registry, _upload_key(msg, enc))
    return row if row is not None and row["status"] == "completed" else None


# ---------------------------------------------------------------- 4. key
def fetch_key(cfg: EgaConfig, located: Located) -> KeyMaterial:
    """Ask only for the key the file was encrypted to (read from its PKESK packets)."""
    from tasks.openpgp import recipient_key_ids

    with open(located.path, "rb") as fh:
        key_ids = recipient_key_ids(fh)
    for key_id in key_ids:
        try:
            return cfg.keys.private_key(key_id)
        except UserError:
            continue
    raise UserError(UNRELATED_KEY)


# ---------------------------------------------------------------- 5-6. decrypt, re-encrypt, compare
def reencrypt_to_staging(cfg: EgaConfig, located: Located, key: KeyMaterial,
                         still_wanted: Callable[[], None] | None = None) -> Staged:
    """One pass: hash ciphertext, decrypt OpenPGP, hash plaintext, Crypt4GH-encrypt into staging.

    From 1 GiB on the bytes go through a child process (tasks.reencrypt_process): its peak memory is
    the pass's own, and a cancel kills it at once; this process keeps the private key and the registry.
    ``still_wanted`` is asked every few seconds during such a pass and raises to stop it (SDA's cancel)."""
    from tasks.keys import load_pgp_private_key
    from tasks.reencrypt_process import open_byte_pass
    from tasks.staging import write_behind

    name = owned_name(DOMAIN, located.ingest_id, cfg.staging.new_name(".c4gh"))  # swept by the next attempt
    progress = Progress(f"decrypt + re-encrypt {Path(located.path).name}", Path(located.path).stat().st_size)
    started = time.perf_counter()
    # Leaving the with kills a child still running before the writer removes its partial file.
    # (not fsynced here: the vault makes what it stores durable; written out as it goes, that fsync is short)
    with open(located.path, "rb") as raw, cfg.staging.atomic_writer(name, durable=False) as out, \
            write_behind(out), open_byte_pass(raw, out) as byte_pass:
        private_key = load_pgp_private_key(key.armored, key.passphrase)  # while the child imports
        # Refuse a reused session key before a single byte is decrypted.
        outcome = byte_pass.run(private_key, cfg.vault_public_key,
                                on_session_key=lambda sk: records.claim_session_key(
                                    cfg.registry, sk.sha256, located.upload, located.file_id),
                                # only the ciphertext digest we must compare, and the output's sha256:
                                # the vault move and its one verifying read check against it
                                encrypted_algorithms=(located.upload.checksum_type,), hash_output=True,
                                on_progress=progress.advance, still_wanted=still_wanted)
    result = outcome.result
    progress.finish()
    staged = Staged(name, result.output_size, result.output_sha256, dict(result.encrypted.checksums),
                    result.encrypted.size, dict(result.plaintext.checksums), result.plaintext.size,
                    result.output_crc32c)
    try:
        algo, expected = located.upload.checksum_type, located.upload.checksum
        if staged.encrypted.get(algo) != expected:
            raise UserError(f"encrypted checksum mismatch: expected {algo} {expected}, "
                            f"got {staged.encrypted.get(algo)}")
        if located.expected_plain is not None:
            palgo, pexpected = located.expected_plain
            if staged.plaintext.get(palgo) != pexpected:
                raise UserError(f"decrypted checksum mismatch: expected {palgo} {pexpected}, "
                                f"got {staged.plaintext.get(palgo)}")
    except BaseException:
        cfg.staging.remove(name)
        raise
    where = ("in this process" if outcome.peak_rss_mib is None
             else f"in a process of its own, byte pass peak RSS {outcome.peak_rss_mib:.1f} MiB")
    step_logger(log).info("%s decrypted %s, re-encrypted to Crypt4GH in staging (%s %s matches; %s)",
                          Path(located.path).name, rate(staged.plaintext_size, time.perf_counter() - started),
                          located.upload.checksum_type, located.upload.checksum, where)
    return staged


# ---------------------------------------------------------------- 7. vault
def vault_key(msg: EgaMessage, located: Located) -> str:
    """Deterministic per upload: a retried put overwrites, never adds a copy."""
    return f"ega/{msg.stable_id}/{located.upload.checksum_type}-{located.upload.checksum}.c4gh"


def archive(cfg: EgaConfig, msg: EgaMessage, located: Located, staged: Staged,
            correlation_id: str | None) -> dict[str, Any]:
    """Move the staged file into the vault (a rename on the vault's filesystem), read it back once against
    the CRC32C the decrypt pass computed of the bytes it wrote, then record what we know (its sha256)."""
    key = vault_key(msg, located)
    put = cfg.vault.move_in_verified(key, cfg.staging.path(staged.name), size=staged.size, sha256=staged.sha256,
                                     crc32c=staged.crc32c)
    archived_sha256 = staged.sha256
    records.mark_archived(
        cfg.registry, located.file_id,
        upload_md5=staged.encrypted.get("md5"), upload_sha256=staged.encrypted.get("sha256"),
        upload_size=staged.encrypted_size,
        decrypted_checksum=staged.plaintext["sha256"], decrypted_checksum_type="sha256",
        decrypted_md5=staged.plaintext.get("md5"), decrypted_sha256=staged.plaintext["sha256"],
        decrypted_size=staged.plaintext_size, archive_checksum=archived_sha256, archive_checksum_type="sha256",
        archive_size=staged.size, archive_uri=put.uri, archive_key=key,
    )
    row = records.get_by_id(cfg.registry, located.file_id)
    publish(cfg, cfg.internal_exchange, "archived", archived_body(msg, row), correlation_id)
    step_logger(log).info("%s stored at %s (sha256 %s), read back and verified", msg.stable_id or msg.filepath,
                          put.uri, archived_sha256)
    return row


def archived_body(msg: EgaMessage, row: dict[str, Any]) -> dict[str, Any]:
    return {"user": msg.user, "filepath": msg.filepath, "stable_id": msg.stable_id,
            "file_id": row["id"], "archive_uri": row["archive_uri"], "archive_size": row["archive_size"],
            "archive_checksum": {"type": "sha256", "value": row["archive_checksum"]},
            "decrypted_checksums": [{"type": "sha256", "value": row["decrypted_sha256"]},
                                    {"type": "md5", "value": row["decrypted_md5"]}]}


def verify_archived(cfg: EgaConfig, row: dict[str, Any]) -> None:
    """On resume: the vault copy a dead run left must still be whole before we record it."""
    cfg.vault.verify(row["archive_key"], size=row["archive_size"], sha256=row["archive_checksum"])


# ---------------------------------------------------------------- 8. registry
def record(cfg: EgaConfig, msg: EgaMessage, located: Located, correlation_id: str | None) -> dict[str, Any]:
    """Files row, PREMIS events, completed state; then tell quality control."""
    r = cfg.registry
    row = records.get_by_id(r, located.file_id)
    ingest = r.ingest_by_id(located.ingest_id)
    assert ingest is not None
    subject = msg.stable_id
    record_stored_file(r, ingest, subject, row, AGENT)
    r.record_event(ingest, reg.FIXITY_CHECK, subject=subject, agent=AGENT,
                   detail=f"vault copy sha256 {row['archive_checksum']} size {row['archive_size']} read back")
    r.record_event(ingest, reg.INGESTION, subject=subject, agent=AGENT, detail=row["archive_uri"])
    records.set_status(r, located.file_id, "completed")
    r.set_state(ingest.id, "completed")
    publish(cfg, cfg.internal_exchange, "qc", archived_body(msg, row), correlation_id)
    return records.get_by_id(r, located.file_id)


def record_stored_file(r: reg.Registry, ingest: reg.Ingest, subject: str, row: dict[str, Any], agent: str) -> None:
    """The files row and the provenance every EGA ingest has (digests, decryption, encryption), in either
    protocol; the caller adds what is its own (fixity check, identifier assignment) and the ingestion."""
    checksums = {"sha256": row["archive_checksum"], "decrypted_sha256": row["decrypted_sha256"],
                 "decrypted_md5": row["decrypted_md5"], "upload_" + row["upload_checksum_type"]: row["upload_checksum"]}
    r.upsert_file(DOMAIN, subject, ingest_id=ingest.id, vault_uri=row["archive_uri"],
                  size=row["archive_size"], checksums={k: v for k, v in checksums.items() if v})
    for algo in ("md5", "sha256"):
        if row.get(f"upload_{algo}"):
            r.record_event(ingest, reg.DIGEST_CALCULATION, subject=subject, agent=agent,
                           discriminator=f"encrypted-{algo}", detail=f"encrypted {algo} {row[f'upload_{algo}']}")
        r.record_event(ingest, reg.DIGEST_CALCULATION, subject=subject, agent=agent,
                       discriminator=f"decrypted-{algo}", detail=f"decrypted {algo} {row[f'decrypted_{algo}']}")
    r.record_event(ingest, reg.DECRYPTION, subject=subject, agent=agent, detail="OpenPGP (streamed)")
    r.record_event(ingest, reg.ENCRYPTION, subject=subject, agent=agent, detail="Crypt4GH to the vault key")


# ---------------------------------------------------------------- 9. status
def report_completed(cfg: EgaConfig, msg: EgaMessage, correlation_id: str | None) -> None:
    publish(cfg, cfg.status_exchange, "files.completed", completed_message(msg), correlation_id)


def report_failure(cfg: EgaConfig, msg: EgaMessage, correlation_id: str | None, exc: BaseException,
                   ingest_id: int | None, located: Located | None, *, user_error: bool) -> None:
    """User errors go to CEGA as files.error; system errors are only recorded, never blamed on the user."""
    reason = exc.message if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
    if ingest_id is not None:
        cfg.registry.set_state(ingest_id, "failed", error=reason)
    if located is not None:
        records.set_status(cfg.registry, located.file_id, "error" if user_error else "failed", reason)
    if user_error:
        publish(cfg, cfg.status_exchange, "files.error", error_message(msg, reason), correlation_id)


def result_summary(msg: EgaMessage, row: dict[str, Any] | None, state: str, error: str | None = None) -> dict[str, Any]:
    """The JSON line the CLI prints and the flow returns."""
    out: dict[str, Any] = {"stable_id": msg.stable_id, "state": state,
                           "vault_uri": row.get("archive_uri") if row else None, "checksums": {}}
    if row:
        out["checksums"] = {
            "encrypted": {k: row.get(f"upload_{k}") for k in ("md5", "sha256") if row.get(f"upload_{k}")},
            "decrypted": {k: row.get(f"decrypted_{k}") for k in ("md5", "sha256") if row.get(f"decrypted_{k}")},
            "archived": {"sha256": row.get("archive_checksum")} if row.get("archive_checksum") else {},
        }
    if error:
        out["error"] = error
    return out

