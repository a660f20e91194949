"""The receiving-bucket scanner: one work item per (institution, key, etag), then one ingest each.

Rules, applied per key under a per-bag advisory lock so two scanners never both queue a bag:

* only ``*.tar`` keys at the top of the bucket (a key containing ``/`` is skipped);
* bags over the size cap (5 TiB by default) are refused: a Failed work item carries the
  note, and that failure makes later scans skip them;
* each part of a multipart bag (``x.b01.of02.tar``) is a bag of its own and gets its own
  work item, in whatever order the parts arrive; all parts are one object ``<inst>/x``
  (the ingest runs of one object take turns: steps.start claims the object);
* the latest work item for the same institution, upload key and etag decides: unfinished,
  failed, or succeeded with its object still active → skip; succeeded but its terminal
  status never went out (the run died between finishing and telling) → send it now;
  succeeded but the object was deleted since → ingest again (a new work item, same etag);
* a different etag under the same key while an older work item of it is unfinished means a
  newer upload: the older item is cancelled (its run notices at its next stage and cleans
  up) unless it already reached Store — then the new upload waits for a later scan, so two
  versions never write preservation storage at the same time. Other parts of a multipart
  bag are other keys, never "newer uploads" of each other.

Starting an ingest: with ``deployment_name`` set in the APT block, a deployment run per work
item (``run_deployment(timeout=0)`` with an idempotency key made from the work item id and
etag, so a scanner retried after a crash returns the same run); without it, the ingest flow
runs in-process as a sub-flow, one bag after the other.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import flow, get_run_logger

from flows.apt import records
from flows.apt.config import AptConfig, load_config
from flows.apt.names import parse_bag_name
from flows.apt.receiving import ReceivedObject
from flows.outcome import dated, run_name
from tasks.errors import UserError
from tasks.prefect_support import ingest_task

log = logging.getLogger(__name__)

INGEST, SKIP, REFUSE, WAIT, RESEND = "ingest", "skip", "refuse", "wait", "resend-status"


@dataclass
class ScanDecision:
    institution: str
    key: str
    etag: str
    size: int
    action: str
    reason: str
    work_item_id: int | None = None
    cancelled: list[int] = field(default_factory=list)


def idempotency_key(work_item_id: int, etag: str, attempt: int = 0) -> str:
    """One deployment run per attempt of a work item: a Failed or Crashed run's key is never reused."""
    return f"apt-work-item-{work_item_id}-{etag}-a{attempt}"


def consider(cfg: AptConfig, obj: ReceivedObject) -> ScanDecision:
    """Apply the rules to one key in a receiving bucket; creates/cancels work items as decided."""
    def decision(action: str, reason: str, **kw: Any) -> ScanDecision:
        return ScanDecision(obj.institution, obj.key, obj.etag, obj.size, action, reason, **kw)

    if "/" in obj.key:
        return decision(SKIP, "key contains '/'")
    if not obj.key.endswith(".tar"):
        return decision(SKIP, "not a .tar file")
    try:
        bag = parse_bag_name(obj.key, obj.institution)
    except UserError as exc:
        return decision(SKIP, exc.message)
    r = cfg.registry
    new_item = {"institution": obj.institution, "bag_name": bag.name, "tar_name": obj.key, "etag": obj.etag,
                "bucket": obj.bucket, "object_key": obj.key, "size": obj.size}
    with r.transaction() as conn:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"apt:{obj.institution}/{bag.name}",))
        latest = records.latest_work_item(r, obj.institution, bag.name, obj.etag, tar_name=obj.key)
        if latest is not None:
            status = latest["status"]
            if status in records.UNFINISHED:
                return decision(SKIP, f"work item {latest['id']} for this upload is {status}")
            if status == records.FAILED:
                return decision(SKIP, f"work item {latest['id']} for this upload failed: {latest['note']}")
            if status == records.SUCCESS:
                found = records.get_object(r, latest["object_identifier"])
                if found is not None and found["state"] == "A":
                    if latest["status_sent"] is None:
                        return decision(RESEND, f"work item {latest['id']} succeeded but its status was never "
                                                "sent", work_item_id=latest["id"])
                    return decision(SKIP, f"already ingested by work item {latest['id']}; object is active")
        if obj.size > cfg.max_bag_size:
            row = records.create_work_item(r, **new_item, status=records.FAILED, conn=conn,
                                           note=f"Bag is {obj.size} bytes, which exceeds the maximum bag size "
                                                f"of {cfg.max_bag_size} bytes")
            return decision(REFUSE, row["note"], work_item_id=row["id"])
        older = [w for w in records.unfinished_items(r, obj.institution, bag.name)
                 if w["etag"] != obj.etag and w["tar_name"] == obj.key]
        past_store = [w for w in older if w["reached_store"]]
        if past_store:
            return decision(WAIT, f"work item {past_store[0]['id']} for an older upload has reached Store; "
                                  f"this upload waits for a later scan")
        cancelled = [w["id"] for w in older]
        if cancelled:
            records.cancel_items(conn, cancelled, f"Cancelled: superseded by a newer upload (etag {obj.etag})")
        reason = "new upload" if latest is None else (
            "object was deleted: ingest again" if latest["status"] == records.SUCCESS else "new attempt")
        row = records.create_work_item(r, **new_item, conn=conn, note=f"Queued: {reason}")
        return decision(INGEST, reason, work_item_id=row["id"], cancelled=cancelled)


def plan_scan(cfg: AptConfig, institutions: list[str] | None = None) -> list[ScanDecision]:
    """List every institution's receiving bucket and decide each key."""
    stale = records.flag_stale(cfg.registry, cfg.block.stale_after_hours)
    if stale:
        log.warning("work items with no progress for %s h, flagged for admin review: %s",
                    cfg.block.stale_after_hours, stale)
    decisions = []
    for institution in institutions or cfg.receiving.institutions():
        for obj in cfg.receiving.list(institution):
            decisions.append(consider(cfg, obj))
    return decisions


def start_deployment_run(cfg: AptConfig, d: ScanDecision, config_block: str) -> str:
    from prefect.deployments import run_deployment

    row = records.get_work_item(cfg.registry, d.work_item_id)
    run = run_deployment(cfg.block.deployment_name, parameters={"work_item_id": d.work_item_id,
                                                                  "config_block": config_block},
                         flow_run_name=run_name("apt", row["object_identifier"]), timeout=0, idempotency_key=idempotency_key(d.work_item_id, d.etag, row["attempt"]))
    records.update_work_item(cfg.registry, d.work_item_id, flow_run_id=str(run.id))
    return str(run.id)


def resend_status(cfg: AptConfig, d: ScanDecision, config_block: str) -> bool:
    """The success status of a finished item that never told anyone (no ingest run needed)."""
    from blocks.broker import BrokerBlock
    from blocks.register import load_block
    from flows.apt.steps import send_status

    return send_status(cfg, load_block(BrokerBlock, config_block).transport(), d.work_item_id, "success")


plan = ingest_task(plan_scan, name="scan-receiving-buckets")
start_run = ingest_task(start_deployment_run, name="start-ingest-run")
resend = ingest_task(resend_status, name="resend-terminal-status")


@flow(name="scan-apt-receiving-buckets", flow_run_name=dated("apt-scan"),
      description="List the receiving buckets, create one work item per new upload, start one ingest each.")
def scan_receiving_buckets(config_block: str = "default", institutions: list[str] | None = None) -> dict[str, Any]:
    from flows.apt.flow import ingest_apt_bag

    logger = get_run_logger()
    cfg = load_config(config_block)
    try:
        decisions = plan(cfg, institutions)
        started: list[dict[str, Any]] = []
        for d in decisions:
            if d.action == RESEND:
                resend(cfg, d, config_block)
                continue
            if d.action != INGEST:
                continue
            if cfg.block.deployment_name:
                started.append({"work_item_id": d.work_item_id, "flow_run_id": start_run(cfg, d, config_block)})
            else:
                state = ingest_apt_bag(work_item_id=d.work_item_id, config_block=config_block, return_state=True)
                started.append({"work_item_id": d.work_item_id, "state": state.type.value})
        counts: dict[str, int] = {}
        for d in decisions:
            counts[d.action] = counts.get(d.action, 0) + 1
        logger.info("scan: %s", ", ".join(f"{n} {a}" for a, n in sorted(counts.items())) or "nothing in receiving")
        return {"counts": counts, "decisions": [asdict(d) for d in decisions], "started": started}
    finally:
        cfg.close()
