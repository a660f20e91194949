"""The stages of one APTrust bag ingest, as plain functions (the flow only orders them).

Interim state lives in the registry, not in task results: the work item's ``metadata``
holds what each finished stage learned (scan, validation, reingest decision), and
``apt_ingest_files`` holds one row per file (checksums, UUID, staged, format, stored and
verified copies). Each stage starts by moving the work item to its stage (which is also
where a cancellation is noticed) and skips whatever the registry says is already done, so
a re-run after a crash, or after an admin fixed a system problem, continues where the
last run stopped. A file's bytes are read from the tar twice: once to hash everything
(Receive) and once to copy what must be stored into staging (Copy To Staging).
"""
from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

from flows.apt import records
from flows.apt.bagfiles import FileType
from flows.apt.config import AptConfig
from flows.apt.names import BagName, parse_bag_name
from flows.apt.receiving import ReceivingChanged
from flows.apt.reingest import absent_paths, decide
from flows.apt.storage import StoreJob, StoreOutcome, store_all, sweep_temporaries, verify_copy
from flows.apt.tarscan import ALGORITHMS, BagScan, FileRecord, scan_bag
from flows.apt.validate import validate_bag
from flows.reporting import Progress, ProgressReader
from tasks import registry as reg
from tasks.claims import claim
from tasks.errors import UserError
from tasks.run_logging import rate, step_logger
from tasks.vault import VaultVerifyError

log = logging.getLogger(__name__)

DOMAIN = records.DOMAIN
AGENT = "archive-ingest/apt"
RECEIVE, VALIDATE, REINGEST, STAGING, FORMATS, STORE, STORAGE_VALIDATION, RECORD, CLEANUP = STAGES = (
    "Receive", "Validate", "Reingest Check", "Copy To Staging", "Format Identification", "Store",
    "Storage Validation", "Record", "Cleanup")
META_DIR = "meta"
FLUSH_EVERY = 200  # interim markers written per batch while storing


class WorkItemCancelled(UserError):
    """The scanner cancelled this work item (a newer upload of the bag), or its tar changed.

    A UserError only so that no task retries it; the flow catches it before anything else
    and ends the run Cancelled, never Failed.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, code="cancelled")


@dataclass(frozen=True)
class Item:
    """The work item as the stages need it; small, so it travels between tasks."""
    id: int
    institution: str
    bag_name: str
    tar_name: str
    identifier: str
    bucket: str
    key: str
    etag: str
    size: int
    ingest_id: int

    @property
    def prefix(self) -> str:
        """Staging prefix; the trailing '/' keeps item 12 away from item 123."""
        return f"{self.id}/"

    def staged_name(self, file_uuid: str) -> str:
        return f"{self.id}/{file_uuid}"

    @property
    def bag(self) -> BagName:
        """Name parts; ``bag.is_multipart`` for one part of a multipart bag."""
        return parse_bag_name(self.tar_name, self.institution)


def ingest_key(row: dict[str, Any]) -> str:
    """Natural key of the shared ingests row: one per work item, so retries reuse event UUIDs."""
    return f"{row['object_identifier']}#wi{row['id']}"


def _item(row: dict[str, Any]) -> Item:
    return Item(row["id"], row["institution"], row["bag_name"], row["tar_name"], row["object_identifier"],
                row["bucket"], row["object_key"], row["etag"], row["size"], row["ingest_id"])


def _enter(cfg: AptConfig, item: Item, stage: str, note: str) -> dict[str, Any]:
    row = records.set_stage(cfg.registry, item.id, stage, note)
    if row["status"] == records.CANCELLED:
        raise WorkItemCancelled(row["note"] or f"work item {item.id} was cancelled")
    return row


# ---------------------------------------------------------------- start
def start(cfg: AptConfig, work_item_id: int, flow_run_id: str | None) -> Item:
    """Claim the work item for this run: Started, attempt + 1, this node and pid.

    First the object's lock (held on this run's registry connection until the run closes it):
    a second run of the same work item, or another part of the same multipart object, waits
    here, then reads the registry afresh. Holding it, this run may remove what a dead earlier
    attempt of this work item left in staging (``.part`` temporaries of the atomic writer).
    """
    row = records.get_work_item(cfg.registry, work_item_id)
    if row is None:
        raise UserError(f"no APT work item {work_item_id}")
    waited = records.claim_object(cfg.registry, row["object_identifier"])
    if waited > 0.5:
        log.info("work item %s waited %.1f s for another run of %s", work_item_id, waited, row["object_identifier"])
    # ... and the work item's own ingest key, which is what reconcile asks about ("is a live run on it?")
    claim(cfg.registry, DOMAIN, ingest_key(row))
    row = records.get_work_item(cfg.registry, work_item_id)  # as the run before us left it
    if row["status"] == records.CANCELLED:
        raise WorkItemCancelled(row["note"] or f"work item {work_item_id} was cancelled")
    if row["status"] == records.FAILED and row["error_kind"] == "user":
        raise UserError(row["note"] or "the bag is invalid", code="invalid_bag")
    if row["status"] == records.SUCCESS:
        return _item(row)
    ingest = cfg.registry.begin_ingest(DOMAIN, ingest_key(row), flow_run_id=flow_run_id,
                                       details={"work_item_id": row["id"], "object": row["object_identifier"],
                                                "etag": row["etag"]})
    row = records.update_work_item(
        cfg.registry, work_item_id, status=records.STARTED, attempt=row["attempt"] + 1, node=socket.gethostname(),
        pid=os.getpid(), flow_run_id=flow_run_id, ingest_id=ingest.id, needs_admin_review=False, error_kind=None,
        started_at=datetime.now(UTC), finished_at=None,
        note=f"Ingest started (attempt {row['attempt'] + 1})" + (f", resuming at {row['stage']}"
                                                                  if row["attempt"] else ""))
    item = _item(row)
    if row["attempt"] > 1:
        sweep_staging(cfg, item)
    return item


def sweep_staging(cfg: AptConfig, item: Item) -> list[str]:
    """The atomic writer's ``.part`` files a killed attempt left under this item's staging prefix.

    Finished staged files stay (Copy To Staging resumes from them); the whole prefix goes at Cleanup.
    """
    root = cfg.staging.path(item.prefix.rstrip("/"))
    removed = [str(p) for p in root.rglob(".*.part") if p.is_file()] if root.is_dir() else []
    for name in removed:
        Path(name).unlink(missing_ok=True)
    if removed:
        log.info("work item %s: removed %d staging temporar%s of an earlier attempt", item.id, len(removed),
                 "y" if len(removed) == 1 else "ies")
    return removed


def already_done(cfg: AptConfig, item: Item) -> bool:
    row = records.get_work_item(cfg.registry, item.id)
    return bool(row and row["status"] == records.SUCCESS)


# ---------------------------------------------------------------- 1. receive (metadata gathering)
def _manifest_digests(scan: BagScan, record: FileRecord) -> dict[str, str]:
    sets = scan.manifests if record.file_type is FileType.PAYLOAD else scan.tag_manifests
    return {alg: entries[record.path] for alg, entries in sets.items() if record.path in entries}


def receive(cfg: AptConfig, item: Item) -> BagScan | None:
    """One streaming pass: hash every file with four algorithms, parse the tag files and manifests.

    Returns the scan for validation, or None when an earlier run already did this.
    """
    row = _enter(cfg, item, RECEIVE, "Reading the bag and computing checksums")
    if row["metadata"].get("scan"):
        return None
    if item.size > cfg.max_bag_size:
        raise UserError(f"Bag is {item.size} bytes, which exceeds the maximum bag size of "
                        f"{cfg.max_bag_size} bytes", code="too_large")
    progress = Progress(f"scan {item.tar_name}", item.size)
    started = time.perf_counter()
    try:
        with cfg.receiving.open(item.bucket, item.key, item.etag) as raw:
            scan = scan_bag(ProgressReader(raw, progress), bag_name=item.tar_name, algorithms=ALGORITHMS)
    except ReceivingChanged as exc:
        records.update_work_item(cfg.registry, item.id, status=records.CANCELLED, finished_at=datetime.now(UTC),
                                 note=f"Cancelled: {exc}")
        raise WorkItemCancelled(str(exc)) from exc
    progress.finish()
    if scan.name_errors:
        return scan  # unstorable names: validation reports them; nothing worth keeping
    prefix = f"{item.id}/{META_DIR}/"
    for name, data in scan.metadata.items():
        with cfg.staging.atomic_writer(prefix + name) as out:
            out.write(data)
    records.insert_ingest_files(cfg.registry, item.id, (
        {"path": r.path, "file_type": r.file_type.value, "size": r.size, "checksums": r.checksums,
         "manifest_digests": _manifest_digests(scan, r), "modified_at": r.mtime} for r in scan.files.values()))
    records.merge_metadata(cfg.registry, item.id, {"scan": {
        "top_dir": scan.top_dir, "tar_size": scan.tar_size, "algorithms": list(scan.algorithms),
        "directories": scan.directories, "files": len(scan.files), "metadata_files": sorted(scan.metadata),
        "payload_oxum": "{}.{}".format(*scan.payload_oxum()),
    }})
    step_logger(log).info("%s: read %s, %d files hashed (%s)", item.tar_name,
                          rate(scan.tar_size, time.perf_counter() - started), len(scan.files),
                          ", ".join(scan.algorithms))
    return scan


def load_scan(cfg: AptConfig, item: Item) -> BagScan:
    """Rebuild the scan from the registry and staging, for a run resuming after Receive."""
    from flows.apt.bagfiles import PARSABLE_TAG_FILES, manifest_algorithm, parse_manifest, parse_tag_file

    row = records.get_work_item(cfg.registry, item.id)
    meta = row["metadata"]["scan"]
    files = {}
    for f in records.ingest_files(cfg.registry, item.id):
        files[f["path"]] = FileRecord(f["path"], f["size"], dict(f["checksums"]), f["modified_at"],
                                      FileType(f["file_type"]))
    metadata = {name: cfg.staging.path(f"{item.id}/{META_DIR}/{name}").read_bytes()
                for name in meta["metadata_files"]}
    manifests: dict[str, dict[str, str]] = {}
    tag_manifests: dict[str, dict[str, str]] = {}
    for name, data in metadata.items():
        alg = manifest_algorithm(name)
        if alg:
            (tag_manifests if name.startswith("tagmanifest-") else manifests)[alg] = parse_manifest(data, name)
    return BagScan(top_dir=meta["top_dir"], files=files, directories=meta["directories"], metadata=metadata,
                   tags={n: parse_tag_file(d, n) for n, d in metadata.items() if n in PARSABLE_TAG_FILES},
                   manifests=manifests, tag_manifests=tag_manifests, algorithms=tuple(meta["algorithms"]),
                   tar_size=meta["tar_size"])


# ---------------------------------------------------------------- 2. validate
VALIDATION_FIELDS = ("profile_identifier", "bagit_version", "access", "storage_option", "title", "description",
                     "source_organization", "internal_sender_identifier", "internal_sender_description",
                     "bag_group_identifier")


def validate(cfg: AptConfig, item: Item, scan: BagScan | None) -> dict[str, Any]:
    """The bag against the profile it names; every error (up to 30) in APTrust's words."""
    row = _enter(cfg, item, VALIDATE, "Validating the bag against its BagIt profile")
    if row["metadata"].get("validation"):
        return row["metadata"]["validation"]
    scan = scan if scan is not None else load_scan(cfg, item)
    result = validate_bag(scan, item.tar_name, institution=item.institution)
    if result.errors:
        records.update_work_item(cfg.registry, item.id, errors=result.errors)
        result.raise_for_errors()
    validation = {k: getattr(result, k) for k in VALIDATION_FIELDS}
    validation["profile"] = result.profile.key if result.profile else None
    records.merge_metadata(cfg.registry, item.id, {"validation": validation})
    step_logger(log).info("%s: valid against %s (access %s, storage %s)", item.tar_name, validation["profile"],
                          validation.get("access"), validation.get("storage_option"))
    return validation


# ---------------------------------------------------------------- 3. reingest check
def reingest_check(cfg: AptConfig, item: Item, validation: dict[str, Any]) -> dict[str, Any]:
    """Which files are new or changed since the registry last saw this object, and their UUIDs."""
    row = _enter(cfg, item, REINGEST, "Checking the registry for an earlier version")
    if row["metadata"].get("reingest"):
        return row["metadata"]["reingest"]
    obj = records.get_object(cfg.registry, item.identifier)
    existing = records.object_files(cfg.registry, obj["id"]) if obj else {}
    object_deleted = bool(obj and obj["state"] != "A")
    storage_option = obj["storage_option"] if obj and not object_deleted else validation["storage_option"]
    files = records.ingest_files(cfg.registry, item.id)
    counts = {"new": 0, "changed": 0, "unchanged": 0, "not preserved": 0, "object was deleted": 0}
    updates = []
    for f in files:
        d = decide(f["path"], f["file_type"], f["size"], f["checksums"], f"{item.identifier}/{f['path']}",
                   existing.get(f["path"]), object_deleted=object_deleted)
        counts[d.reason.split(":")[0]] += 1
        updates.append((f["path"], {"uuid": d.uuid, "preserve": d.preserve, "needs_save": d.needs_save,
                                    "existing_file_id": d.existing_file_id}))
    records.update_ingest_files(cfg.registry, item.id, updates)
    # One part of a multipart bag holds only some of the object's files: the others are not absent.
    multipart = item.bag.is_multipart
    absent = absent_paths(existing, (f["path"] for f in files)) if not (object_deleted or multipart) else []
    result = {
        "object_id": obj["id"] if obj else None, "is_reingest": obj is not None, "object_deleted": object_deleted,
        "storage_option": storage_option, "requested_storage_option": validation["storage_option"],
        "counts": counts, "to_store": sum(1 for _, u in updates if u["needs_save"]),
        "absent": absent[:100], "absent_count": len(absent),
    }
    if storage_option != validation["storage_option"]:
        log.warning("%s keeps its original storage option %s (the new version asks for %s)", item.identifier,
                    storage_option, validation["storage_option"])
    records.merge_metadata(cfg.registry, item.id, {"reingest": result})
    return result


# ---------------------------------------------------------------- 4. copy to staging
def copy_to_staging(cfg: AptConfig, item: Item) -> int:
    """Second streaming pass: copy the files to store into staging as ``<work item>/<uuid>``.

    Resumable: files already staged (complete, thanks to the atomic writer) are skipped,
    and when nothing is missing the tar is not read at all. Returns the number staged now.
    """
    _enter(cfg, item, STAGING, "Copying new and changed files to staging")
    wanted = {f["path"]: f for f in records.ingest_files(cfg.registry, item.id, needs_save=True)}
    missing = {p: f for p, f in wanted.items() if not cfg.staging.path(item.staged_name(str(f["uuid"]))).exists()}
    if missing:
        written: list[str] = []

        def sink(path: str, member: Any):
            f = missing.get(path)
            if f is None:
                return None
            written.append(path)
            return cfg.staging.atomic_writer(item.staged_name(str(f["uuid"])))

        progress = Progress(f"stage {item.tar_name}", item.size)
        try:
            with cfg.receiving.open(item.bucket, item.key, item.etag) as raw:
                second = scan_bag(ProgressReader(raw, progress), bag_name=item.tar_name, algorithms=("sha256",),
                                  sink=sink)
        except ReceivingChanged as exc:
            records.update_work_item(cfg.registry, item.id, status=records.CANCELLED,
                                     finished_at=datetime.now(UTC), note=f"Cancelled: {exc}")
            raise WorkItemCancelled(str(exc)) from exc
        progress.finish()
        differ = [p for p in written if second.files.get(p) is None
                  or second.files[p].checksums["sha256"] != missing[p]["checksums"]["sha256"]]
        if differ:
            for p in differ:
                cfg.staging.remove(item.staged_name(str(missing[p]["uuid"])))
            raise RuntimeError(f"the tar read differently on the second pass ({len(differ)} file(s), e.g. "
                               f"{differ[0]}); receiving storage returned inconsistent bytes")
        not_found = sorted(set(missing) - set(written))
        if not_found:
            raise RuntimeError(f"{len(not_found)} file(s) were not found on the second pass, e.g. {not_found[0]}")
    records.update_ingest_files(cfg.registry, item.id, [(p, {"staged": True}) for p in wanted])
    return len(missing)


# ---------------------------------------------------------------- 5. format identification
def identify_formats(cfg: AptConfig, item: Item) -> dict[str, int]:
    """PRONOM via Siegfried (pygfried), one batched call for the files still unidentified."""
    from flows.apt.formats import identify_files

    _enter(cfg, item, FORMATS, "Identifying file formats (PRONOM)")
    todo = [f for f in records.ingest_files(cfg.registry, item.id, needs_save=True) if not f["mime"]]
    counts: dict[str, int] = {}
    for start_at in range(0, len(todo), 2000):
        chunk = todo[start_at:start_at + 2000]
        found = identify_files([cfg.staging.path(item.staged_name(str(f["uuid"]))) for f in chunk],
                               [f["path"] for f in chunk])
        updates = []
        for f, fmt in zip(chunk, found):
            updates.append((f["path"], {"puid": fmt.puid, "mime": fmt.mime, "format_name": fmt.format_name,
                                        "format_basis": fmt.basis, "identified_by": fmt.identified_by}))
            counts[fmt.identified_by.split(" ")[0]] = counts.get(fmt.identified_by.split(" ")[0], 0) + 1
        records.update_ingest_files(cfg.registry, item.id, updates)
    return counts


# ---------------------------------------------------------------- 6. store
def store(cfg: AptConfig, item: Item, storage_option: str) -> dict[str, Any]:
    """Fan out to every target of the storage option; key = file UUID. Skips copies already made."""
    _enter(cfg, item, STORE, f"Copying files to preservation storage ({storage_option})")
    records.update_work_item(cfg.registry, item.id, reached_store=True)
    targets = cfg.target_names(storage_option)
    vaults = {t: cfg.target(t) for t in targets}
    jobs = []
    for f in records.ingest_files(cfg.registry, item.id, needs_save=True):
        stored = f["stored"] or {}
        missing = tuple(t for t in targets if t not in stored or "rejected" in stored[t])
        if missing:
            jobs.append(StoreJob(f["path"], str(f["uuid"]), cfg.staging.path(item.staged_name(str(f["uuid"]))),
                                 f["size"], f["checksums"]["sha256"], f["checksums"]["md5"], missing))
    for target in targets:  # what a killed earlier attempt's puts left (we hold the object's claim)
        sweep_temporaries(vaults[target], [j.uuid for j in jobs if target in j.targets])
    progress = Progress(f"store {item.tar_name}", sum(j.size * len(j.targets) for j in jobs))
    pending: list[tuple[str, dict[str, Any]]] = []
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal last_flush
        records.update_ingest_files(cfg.registry, item.id, pending)
        pending.clear()
        last_flush = time.monotonic()

    def on_done(outcome: StoreOutcome, job: StoreJob) -> None:
        progress.advance(job.size * len(job.targets))
        if outcome.stored:
            pending.append((outcome.path, {"stored": outcome.stored}))
        if len(pending) >= FLUSH_EVERY or time.monotonic() - last_flush > 2:
            flush()

    started = time.perf_counter()
    outcomes = store_all(jobs, vaults, on_done=on_done)
    flush()
    progress.finish()
    failed = [o for o in outcomes if o.error is not None]
    if len(failed) == 1:
        raise failed[0].error
    if failed:
        raise RuntimeError(f"{len(failed)} file(s) could not be stored, e.g. {failed[0].path}: "
                           f"{failed[0].error}") from failed[0].error
    copies = sum(len(j.targets) for j in jobs)
    step_logger(log).info("%s: stored %d cop%s on %s (%s)", item.identifier, copies, "y" if copies == 1 else "ies",
                          ", ".join(targets),
                          rate(sum(j.size * len(j.targets) for j in jobs), time.perf_counter() - started))
    return {"targets": targets, "copies": copies}


# ---------------------------------------------------------------- 7. storage validation
def verify_storage(cfg: AptConfig, item: Item, storage_option: str) -> int:
    """Every copy: size from HEAD/stat, then sha256 and md5 of the bytes read back."""
    _enter(cfg, item, STORAGE_VALIDATION, "Verifying every preservation copy")
    targets = cfg.target_names(storage_option)
    failures: list[str] = []
    verified = 0
    pending: list[tuple[str, dict[str, Any]]] = []
    for f in records.ingest_files(cfg.registry, item.id, needs_save=True):
        done: dict[str, Any] = {}
        for target in targets:
            if target in (f["verified"] or {}):
                continue
            if target not in (f["stored"] or {}):
                failures.append(f"{f['path']} has no copy on {target}")
                continue
            try:  # a copy rejected by an earlier try is checked again: the read may have been the fault
                copy = verify_copy(cfg.target(target), str(f["uuid"]), size=f["size"],
                                   sha256=f["checksums"]["sha256"], md5=f["checksums"]["md5"])
            except VaultVerifyError as exc:
                records.reject_copy(cfg.registry, item.id, f["path"], target, str(exc))
                failures.append(f"{f['path']} on {target}: {exc}")
                continue
            done[target] = {**copy, "at": datetime.now(UTC).isoformat()}
            verified += 1
        if done:
            pending.append((f["path"], {"verified": done}))
        if len(pending) >= FLUSH_EVERY:
            records.update_ingest_files(cfg.registry, item.id, pending)
            pending.clear()
    records.update_ingest_files(cfg.registry, item.id, pending)
    if failures:
        raise VaultVerifyError(f"storage verification failed for {len(failures)} cop"
                               f"{'y' if len(failures) == 1 else 'ies'}: " + "; ".join(failures[:5]),
                               key="", uri="")
    step_logger(log).info("%s: %d cop%s read back, sha256 and md5 match", item.identifier, verified,
                          "y" if verified == 1 else "ies")
    return verified


# ---------------------------------------------------------------- 8. record
def record(cfg: AptConfig, item: Item, validation: dict[str, Any], reingest: dict[str, Any]) -> dict[str, Any]:
    """Object, generic files, checksums, storage records and PREMIS events, in one transaction.

    The transaction also writes ``metadata.recorded`` (this stage's result), so a run resuming after
    it committed (killed during or after Cleanup, with the interim rows gone) returns that result
    instead of recording an empty version, which would mark every stored file missing.
    """
    row = _enter(cfg, item, RECORD, "Recording the object, files and events in the registry")
    if row["metadata"].get("recorded"):
        return row["metadata"]["recorded"]
    r = cfg.registry
    bag = item.bag
    ingest = r.ingest_by_id(item.ingest_id)
    assert ingest is not None
    storage_option = reingest["storage_option"]
    targets = cfg.target_names(storage_option)
    files = records.ingest_files(r, item.id)
    saved = [f for f in files if f["needs_save"]]
    present = [f["path"] for f in files if f["preserve"]]
    with r.transaction() as conn:
        obj = records.upsert_object(conn, identifier=item.identifier, institution=item.institution,
                                    bag_name=item.bag_name, work_item_id=item.id, validation=validation,
                                    storage_option=storage_option)
        first_ingest = obj["created_by_work_item"] == item.id
        ids = records.upsert_files(conn, obj["id"], obj["storage_option"], item.id, [
            {"uuid": f["uuid"], "identifier": f"{item.identifier}/{f['path']}", "path": f["path"],
             "size": f["size"], "mime": f["mime"], "puid": f["puid"], "format_name": f["format_name"],
             "format_basis": f["format_basis"], "modified_at": f["modified_at"]} for f in saved])
        records.insert_checksums(conn, item.id, [(ids[f["path"]], alg, f["checksums"][alg])
                                                 for f in saved for alg in ALGORITHMS if alg in f["checksums"]])
        records.upsert_storage_records(conn, item.id, [
            {"file_id": ids[f["path"]], "target": t, "url": f["verified"][t]["url"], "size": f["verified"][t]["size"],
             "sha256": f["verified"][t]["sha256"], "verified_at": f["verified"][t]["at"]}
            for f in saved for t in targets])
        records.touch_present_files(conn, obj["id"], present)
        if bag.is_multipart:  # the object's other files belong to other parts: never absent
            absent = 0
            records.upsert_part(conn, object_id=obj["id"], part=bag.part, parts=bag.parts, tar_name=item.tar_name,
                                etag=item.etag, work_item_id=item.id, file_count=len(saved))
        else:
            absent = records.mark_absent_files(conn, obj["id"], present, item.id)
        _record_events(r, ingest, item, obj, validation, saved, targets, first_ingest)
        for f in saved:
            primary = f["verified"][targets[0]]
            r.upsert_file(DOMAIN, f"{item.identifier}/{f['path']}", ingest_id=ingest.id, vault_uri=primary["url"],
                          size=f["size"], checksums=dict(f["checksums"]))
        result = {"object_id": obj["id"], "storage_option": obj["storage_option"], "stored_files": len(saved),
                  "absent_files": absent, "first_ingest": first_ingest}
        conn.execute("UPDATE apt_work_items SET metadata = metadata || %s, updated_at = now() WHERE id = %s",
                     (Jsonb({"recorded": result}), item.id))
    return result


def _record_events(r: reg.Registry, ingest: reg.Ingest, item: Item, obj: dict[str, Any],
                   validation: dict[str, Any], saved: list[dict[str, Any]], targets: list[str],
                   first_ingest: bool) -> None:
    ident = item.identifier
    event = r.record_event
    if first_ingest:
        event(ingest, reg.CREATION, subject=ident, agent=AGENT, detail="Object created")
        event(ingest, reg.IDENTIFIER_ASSIGNMENT, subject=ident, agent=AGENT,
              detail=f"Assigned object identifier {ident}")
    event(ingest, reg.INGESTION, subject=ident, agent=AGENT,
          detail=f"{len(saved)} file(s) copied to preservation storage ({obj['storage_option']}) "
                 f"from {item.tar_name} etag {item.etag}")
    event(ingest, reg.ACCESS_ASSIGNMENT, subject=ident, agent=AGENT,
          detail=f"Assigned access {validation['access']}")
    for f in saved:
        fid = f"{ident}/{f['path']}"
        for alg, listed in sorted((f["manifest_digests"] or {}).items()):
            computed = f["checksums"].get(alg)
            event(ingest, reg.FIXITY_CHECK, subject=fid, agent=AGENT, discriminator=alg,
                  detail=f"{alg} manifest digest {listed}",
                  outcome="success" if computed == listed else "failure",
                  outcome_detail=f"{alg}:{computed}")
        for alg in ALGORITHMS:
            if alg in f["checksums"]:
                event(ingest, reg.DIGEST_CALCULATION, subject=fid, agent=AGENT, discriminator=alg,
                      detail=f"Calculated {alg} at ingest", outcome_detail=f"{alg}:{f['checksums'][alg]}")
        primary = f["verified"][targets[0]]
        event(ingest, reg.INGESTION, subject=fid, agent=AGENT,
              detail=f"Copied to preservation storage and verified: {primary['url']}")
        for t in targets[1:]:
            event(ingest, reg.REPLICATION, subject=fid, agent=AGENT, discriminator=t,
                  detail=f"Replicated to {t}: {f['verified'][t]['url']}")
        if f["existing_file_id"] is None:
            event(ingest, reg.IDENTIFIER_ASSIGNMENT, subject=fid, agent=AGENT,
                  detail=f"Assigned identifier {fid} and UUID {f['uuid']}", outcome_detail=str(f["uuid"]))


# ---------------------------------------------------------------- 9. cleanup
def cleanup(cfg: AptConfig, item: Item, *, delete_tar: bool | None = None, after_failure: bool = False
            ) -> dict[str, Any]:
    """Staging and interim rows go; the tar leaves receiving only when marked for deletion.

    After a fatal error the work item keeps the stage it failed in, so its note stays readable.
    """
    if delete_tar is not None:
        records.update_work_item(cfg.registry, item.id, delete_from_receiving=delete_tar)
    if after_failure:
        row = records.get_work_item(cfg.registry, item.id)
    else:
        row = records.set_stage(cfg.registry, item.id, CLEANUP, "Cleaning up staging and interim data")
    cfg.staging.cleanup_prefix(item.prefix)
    records.delete_ingest_files(cfg.registry, item.id)
    deleted = False
    if row["delete_from_receiving"]:
        # Also when an earlier attempt deleted it already: a resumed CLI run put the same upload back.
        current = cfg.receiving.stat(item.bucket, item.key)
        if current is not None and current.etag == item.etag:  # never a newer upload under the same key
            cfg.receiving.delete(item.bucket, item.key)
            deleted = True
        if not row["deleted_from_receiving_at"]:
            records.update_work_item(cfg.registry, item.id, deleted_from_receiving_at=datetime.now(UTC))
    return {"deleted_from_receiving": deleted}


# ---------------------------------------------------------------- terminal states
def finish(cfg: AptConfig, item: Item) -> None:
    note = "Ingest complete"
    parts = multipart_state(cfg, item)
    if parts is not None:
        note += f" (part {parts['part']} of {parts['parts']}" + (
            f"; the object still lacks part(s) {', '.join(map(str, parts['missing']))})" if parts["missing"]
            else "; every part of the object is in)")
    records.update_work_item(cfg.registry, item.id, status=records.SUCCESS, stage=CLEANUP, finished_at=datetime.now(UTC),
                             note=note, node=None, pid=None, needs_admin_review=False, error_kind=None)
    cfg.registry.set_state(item.ingest_id, "completed")


def multipart_state(cfg: AptConfig, item: Item | dict[str, Any]) -> dict[str, Any] | None:
    """For one part of a multipart bag: which parts its object holds and which it still lacks.

    A missing part is never an error (as at APTrust, each part is a complete bag of its own):
    the object holds the files of the parts received, and a later part adds its files.
    """
    tar_name = item.tar_name if isinstance(item, Item) else item["tar_name"]
    institution = item.institution if isinstance(item, Item) else item["institution"]
    bag = parse_bag_name(tar_name, institution)
    if not bag.is_multipart:
        return None
    identifier = item.identifier if isinstance(item, Item) else item["object_identifier"]
    obj = records.get_object(cfg.registry, identifier)
    rows = records.object_parts(cfg.registry, obj["id"]) if obj else []
    received = [r["part"] for r in rows]
    expected = max([bag.parts] + [r["parts"] for r in rows])
    return {"part": bag.part, "parts": bag.parts, "received": received,
            "missing": [n for n in range(1, expected + 1) if n not in received],
            "inconsistent_counts": sorted({bag.parts} | {r["parts"] for r in rows}) if any(
                r["parts"] != bag.parts for r in rows) else []}


def fail(cfg: AptConfig, work_item_id: int, exc: BaseException, *, user_error: bool) -> None:
    """User error: Failed, bag marked for deletion. System error: Failed + admin review, interim data kept."""
    reason = describe_error(exc)
    row = records.get_work_item(cfg.registry, work_item_id)
    if row is None:
        return
    if user_error:
        records.update_work_item(cfg.registry, work_item_id, status=records.FAILED, error_kind="user", note=reason,
                                 delete_from_receiving=True, needs_admin_review=False, node=None, pid=None,
                                 finished_at=datetime.now(UTC))
    else:
        records.update_work_item(cfg.registry, work_item_id, status=records.FAILED, error_kind="system",
                                 note=f"{row['stage']}: {reason}", needs_admin_review=True, node=None, pid=None,
                                 finished_at=datetime.now(UTC))
    if row["ingest_id"]:
        cfg.registry.set_state(row["ingest_id"], "failed", error=reason)


def cancelled(cfg: AptConfig, work_item_id: int, exc: BaseException) -> None:
    """A superseded item leaves nothing behind but its row (and never deletes the newer tar)."""
    row = records.get_work_item(cfg.registry, work_item_id)
    if row is None:
        return
    cfg.staging.cleanup_prefix(f"{work_item_id}/")
    records.delete_ingest_files(cfg.registry, work_item_id)
    records.update_work_item(cfg.registry, work_item_id, status=records.CANCELLED, node=None, pid=None,
                             finished_at=row["finished_at"] or datetime.now(UTC))
    if row["ingest_id"]:
        cfg.registry.set_state(row["ingest_id"], "cancelled", error=str(exc))


def describe_error(exc: BaseException) -> str:
    return exc.message if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- summary
def summary(cfg: AptConfig, work_item_id: int) -> dict[str, Any]:
    """What the flow returns and the CLI prints, read back from the registry."""
    r = cfg.registry
    row = records.get_work_item(r, work_item_id)
    if row is None:
        return {"work_item_id": work_item_id, "status": None, "error": "no such work item"}
    obj = records.get_object(r, row["object_identifier"])
    out: dict[str, Any] = {
        "work_item_id": row["id"], "institution": row["institution"], "bag": row["tar_name"],
        "etag": row["etag"], "stage": row["stage"], "status": row["status"], "note": row["note"],
        "errors": list(row["errors"] or []), "attempt": row["attempt"],
        "needs_admin_review": row["needs_admin_review"], "delete_from_receiving": row["delete_from_receiving"],
        "object": None, "file_count": 0, "events": {},
    }
    if row["status"] == records.FAILED and row["error_kind"] == "user" and not out["errors"]:
        out["errors"] = [row["note"]]
    meta = row["metadata"] or {}
    if meta.get("reingest"):
        out["reingest"] = {k: meta["reingest"][k] for k in ("is_reingest", "counts", "to_store", "absent_count")}
    if obj is not None and (row["status"] == records.SUCCESS or obj["last_work_item_id"] == row["id"]):
        counts = r.execute("SELECT count(*) AS n, coalesce(sum(size), 0) AS bytes FROM apt_files "
                           "WHERE object_id = %s AND state = 'A'", (obj["id"],))[0]
        out["object"] = {"identifier": obj["identifier"], "title": obj["title"], "access": obj["access"],
                         "storage_option": obj["storage_option"], "state": obj["state"],
                         "bytes": int(counts["bytes"])}
        out["file_count"] = counts["n"]
    if meta.get("recorded"):
        out["recorded"] = {k: meta["recorded"][k] for k in ("stored_files", "absent_files", "first_ingest")}
    parts = multipart_state(cfg, row)
    if parts is not None:
        out["multipart"] = parts
    if row["ingest_id"]:
        out["events"] = {e["event_type"]: e["n"] for e in r.execute(
            "SELECT event_type, count(*) AS n FROM events WHERE ingest_id = %s GROUP BY event_type ORDER BY 1",
            (row["ingest_id"],))}
    out["status_sent"] = row["status_sent"]
    return out


STATUS_EXCHANGE = "apt"
STATUS_NAMESPACE = uuid.UUID("5d0c7e0e-6f5b-4c61-9d59-2f3c1a7b8e41")


def status_message_id(work_item_id: int, attempt: int, status: str) -> str:
    """Stable per (work item, attempt, status): a status re-sent after a crash that hid whether the
    first one went out carries the same message_id, so consumers drop the duplicate."""
    return uuid.uuid5(STATUS_NAMESPACE, f"{work_item_id}:{attempt}:{status}").hex


def send_status(cfg: AptConfig, transport: Any, work_item_id: int, status: str) -> bool:
    """The work item's terminal status on exchange ``apt`` (``apt.ingest.<status>``), once per attempt.

    Records what was sent (``apt_work_items.status_sent``); when this attempt's status already went
    out, nothing is sent and False is returned. A run that finds the work done (killed between
    finishing and telling) therefore still sends it, and a second re-run does not repeat it.
    """
    from tasks.notify import Notification, notify

    row = records.get_work_item(cfg.registry, work_item_id)
    if row is None:
        return False
    if row["status_sent"] == status and row["status_sent_attempt"] == row["attempt"]:
        log.info("work item %s: status %s of attempt %s was sent already", work_item_id, status, row["attempt"])
        return False
    body = summary(cfg, work_item_id)
    body["status_sent"] = status
    notify(Notification(exchange=STATUS_EXCHANGE, routing_key=f"apt.ingest.{status}", body=body,
                        id=status_message_id(work_item_id, row["attempt"], status)), transport)
    records.mark_status_sent(cfg.registry, work_item_id, status, row["attempt"])
    return True


def status_never_sent(row: dict[str, Any]) -> bool:
    """A finished item whose terminal status never went out (killed between finish and notify)."""
    return row["status"] == records.SUCCESS and row["status_sent"] is None


def object_events(cfg: AptConfig, item: Item) -> list[dict[str, Any]]:
    """Object-level events of this ingest, for the report (file events would be thousands)."""
    return cfg.registry.execute("SELECT * FROM events WHERE ingest_id = %s AND subject = %s ORDER BY id",
                                (item.ingest_id, item.identifier))


__all__ = [
    "STAGES",
    "STATUS_EXCHANGE",
    "Item",
    "WorkItemCancelled",
    "cleanup",
    "copy_to_staging",
    "fail",
    "finish",
    "identify_formats",
    "receive",
    "record",
    "reingest_check",
    "send_status",
    "start",
    "store",
    "summary",
    "validate",
    "verify_storage",
]
