"""What reconcile does, as plain functions: find what no live run will finish or remove, and act.

* **Stuck ingests**: ``in_ingestion`` past a deadline whose flow run is not live. A deployed run
  is put back to AwaitingRetry (the same run, as the crash automation does), a CLI run is
  resubmitted to the deployment of its flow with the same parameters, and one past the attempt
  limit (or with nothing to re-run) is marked for review.
* **Temporaries** older than a deadline: staging ``.part`` files and staged files no claimed
  ingest owns (tasks/claims), APT interim data (staging directory and interim rows) of work
  items that are finished, vault ``.vault-tmp-*`` files and S3 incomplete multipart uploads.
* **Orphans** that cannot be deleted (NGAS): ``record_orphan`` keeps them in the registry and
  every reconcile reports the open ones.

Every action is a PREMIS-style event on the reconcile run's own ingest row (domain
``reconcile``), and a stuck ingest's action also on that ingest. ``dry_run`` only reports.
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tasks import registry as reg
from tasks.claims import is_claimed

log = logging.getLogger(__name__)

AGENT = "archive-ingest/reconcile"
DELETION = "deletion"  # PREMIS eventType for removed temporaries
OWNED = re.compile(r"^\.?(?P<domain>[a-z]+)-(?P<ingest>\d+)-")
APT_FINISHED = ("Success", "Cancelled")
# Domains whose runs hold their object's claim (tasks/claims) for the whole run: for them an
# unclaimed ingest whose run Prefect still calls Running is a zombie (its process is gone).
CLAIMING_DOMAINS = {"ega", "apt", "nrao"}  # each claims its ingest key in register/start


@dataclass
class Action:
    kind: str  # resubmitted | rescheduled | crashed | review | removed | orphan | skipped
    domain: str
    subject: str
    detail: str
    done: bool = False
    size: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Report:
    dry_run: bool
    actions: list[Action] = field(default_factory=list)

    def add(self, action: Action) -> Action:
        self.actions.append(action)
        log.info("%s%s %s %s: %s", "(dry run) " if self.dry_run else "", action.kind, action.domain,
                 action.subject, action.detail)
        return action

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.actions:
            out[a.kind] = out.get(a.kind, 0) + 1
        return out


def reconcile_ingest(registry: Any, name: str) -> Any:
    """The reconcile run's own ingest row: the events of what it did hang off it."""
    return registry.begin_ingest("reconcile", name, details={"kind": "reconcile"})


def record(registry: Any, own: Any, action: Action, event_type: str, ingest: Any = None) -> None:
    outcome = "success" if action.kind not in ("review", "orphan") else "failure"
    detail = f"{action.kind}: {action.detail}"
    registry.record_event(own, event_type, subject=action.subject, outcome=outcome, detail=detail, agent=AGENT,
                          discriminator=f"{action.kind}:{action.subject}")
    if ingest is not None:
        registry.record_event(ingest, event_type, subject=action.subject, outcome=outcome, detail=detail,
                              agent=AGENT, discriminator=f"reconcile:{own.natural_key}")


# ---------------------------------------------------------------- stuck ingests

def stuck_rows(registry: Any, older_than: timedelta) -> list[dict[str, Any]]:
    return registry.execute(
        "SELECT * FROM ingests WHERE state = 'in_ingestion' AND domain <> 'reconcile'"
        " AND review_reason IS NULL"  # flagged for a person: not re-run again and again
        " AND updated_at < now() - %s ORDER BY id", (older_than,))


def _deployment_for_flow(client: Any, flow_id: Any) -> Any:
    from prefect.client.schemas.filters import FlowFilter, FlowFilterId

    deployments = client.read_deployments(flow_filter=FlowFilter(id=FlowFilterId(any_=[flow_id])), limit=1)
    return deployments[0] if deployments else None


def _review(registry: Any, own: Any, report: Any, ingest: Any, why: str, dry_run: bool) -> None:
    """Hand a stuck ingest to a person: the review mark and its event (nothing in a dry run)."""
    action = report.add(Action("review", ingest.domain, ingest.natural_key, why))
    if not dry_run:
        registry.mark_for_review(ingest.id, f"reconcile: {why}")
        action.done = True
        record(registry, own, action, reg.INGESTION, ingest)


def resume_stuck(registry: Any, client: Any, row: dict[str, Any], *, limit: int, dry_run: bool,
                 report: Report, own: Any, stuck_after: timedelta = timedelta(hours=2)) -> None:
    """One stuck ingest: leave a live run alone, re-run a dead one, or hand it to a person."""
    from flows.reconcile.recovery import LIVE, reschedule

    domain, key = row["domain"], row["natural_key"]
    ingest = reg._ingest(row)
    if is_claimed(registry, domain, key):
        report.add(Action("skipped", domain, key, "a live run holds its claim"))
        return
    run = None
    if row.get("flow_run_id"):
        try:
            run = client.read_flow_run(row["flow_run_id"])
        except Exception:  # noqa: BLE001 - deleted from Prefect, or another server
            run = None
    state = run.state.type.value if run is not None and run.state else None
    if state in LIVE:
        since = run.state.timestamp
        if state in ("RUNNING", "PENDING") and domain in CLAIMING_DOMAINS and since is not None \
                and since < datetime.now(UTC) - stuck_after:
            # No process holds the claim, so nothing runs it: a worker or machine died and no heartbeat
            # automation caught it. Crashed is what it is; the recover automation takes it from there.
            action = report.add(Action("crashed", domain, key, f"flow run {run.name} is {run.state.name} but no "
                                       "process holds its claim: marked Crashed for the recover automation"))
            if not dry_run:
                from prefect.states import Crashed

                client.set_flow_run_state(run.id, Crashed(message="reconcile: no live process holds the "
                                                          "ingest's claim"), force=True)
                action.done = True
                record(registry, own, action, reg.INGESTION, ingest)
            return
        report.add(Action("skipped", domain, key, f"flow run {run.name} is {run.state.name}"))
        return
    if run is None or state == "COMPLETED":
        why = "no flow run to re-run" if run is None else f"flow run {run.name} Completed but the ingest did not"
        _review(registry, own, report, ingest, why, dry_run)
        return
    attempts = max(1, run.run_count)
    if attempts >= limit:
        why = f"flow run {run.name} ended {run.state.name} after {attempts} attempt(s), the limit is {limit}"
        _review(registry, own, report, ingest, why, dry_run)
        return
    if run.deployment_id is not None:
        action = report.add(Action("rescheduled", domain, key,
                                   f"flow run {run.name} ({run.id}) {run.state.name}; run again"))
        if not dry_run:
            reschedule(client, run.id, f"reconcile: left {row['state']} since {row['updated_at']:%Y-%m-%d %H:%M}")
            action.done = True
            record(registry, own, action, reg.INGESTION, ingest)
        return
    deployment = _deployment_for_flow(client, run.flow_id)
    if deployment is None:
        why = f"flow run {run.name} ran outside a deployment and its flow has none to resubmit to"
        _review(registry, own, report, ingest, why, dry_run)
        return
    action = report.add(Action("resubmitted", domain, key,
                               f"CLI run {run.name} {run.state.name}; same parameters to deployment "
                               f"{deployment.name}"))
    if not dry_run:
        new = client.create_flow_run_from_deployment(
            deployment.id, parameters=run.parameters, name=run.name,  # the name the CLI run had earned
            idempotency_key=f"reconcile:{domain}:{key}:{ingest.attempts}")
        action.detail += f" as flow run {new.name} ({new.id})"
        action.done = True
        record(registry, own, action, reg.INGESTION, ingest)


# ---------------------------------------------------------------- temporaries

def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _tree_age(path: Path) -> float:
    """Seconds since anything under ``path`` last changed (a live writer keeps it young)."""
    newest = path.stat().st_mtime
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                newest = max(newest, os.stat(os.path.join(dirpath, name)).st_mtime)
            except FileNotFoundError:
                pass
    return time.time() - newest


def _owner_claimed(registry: Any, name: str) -> bool:
    m = OWNED.match(name)
    if not m:
        return False
    rows = registry.execute("SELECT domain, natural_key FROM ingests WHERE id = %s", (int(m["ingest"]),))
    return bool(rows) and is_claimed(registry, rows[0]["domain"], rows[0]["natural_key"])


def sweep_staging_files(registry: Any, root: Path, domain: str, *, older_than: float, dry_run: bool,
                        report: Report, own: Any) -> None:
    """Files directly under a domain's staging directory: ``.part`` and staged files nobody owns."""
    if not root.is_dir():
        return
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.is_file(follow_symlinks=False):
            continue
        path = Path(entry.path)
        age = _age(path)
        if age < older_than or _owner_claimed(registry, entry.name):
            continue
        what = "partial file of a killed writer" if entry.name.endswith(".part") else "staged file no run owns"
        _remove(registry, own, report, domain, path, f"{what}, untouched for {age / 3600:.1f} h", dry_run)


def sweep_apt_interim(registry: Any, root: Path, *, older_than: float, dry_run: bool, report: Report,
                      own: Any) -> None:
    """``<staging>/apt/<work item>/`` and its interim rows, once the work item is finished.

    A work item that failed with a system error keeps its interim data for the admin review
    (flows/apt/steps.py); one still unfinished is left to its run (or to stuck-ingest handling).
    """
    if not root.is_dir():
        return
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.is_dir(follow_symlinks=False) or not entry.name.isdigit():
            continue
        item_id = int(entry.name)
        rows = registry.execute("SELECT status, error_kind FROM apt_work_items WHERE id = %s", (item_id,))
        finished = not rows or rows[0]["status"] in APT_FINISHED or (
            rows[0]["status"] == "Failed" and rows[0]["error_kind"] == "user")
        path = Path(entry.path)
        if not finished or _tree_age(path) < older_than:
            continue
        status = rows[0]["status"] if rows else "unknown"
        action = report.add(Action("removed", "apt", str(path),
                                   f"interim data of work item {item_id} ({status}): staging directory and "
                                   "interim rows"))
        if not dry_run:
            import shutil

            shutil.rmtree(path, ignore_errors=True)
            registry.execute("DELETE FROM apt_ingest_files WHERE work_item_id = %s", (item_id,))
            action.done = True
            record(registry, own, action, DELETION)


def sweep_apt_orphan_rows(registry: Any, *, older_than: float, dry_run: bool, report: Report, own: Any) -> None:
    """Interim rows of finished work items whose staging directory is already gone."""
    rows = registry.execute(
        "SELECT w.id, w.status, count(*) AS n FROM apt_ingest_files f JOIN apt_work_items w ON w.id = f.work_item_id"
        " WHERE (w.status = ANY(%s) OR (w.status = 'Failed' AND w.error_kind = 'user'))"
        " AND w.updated_at < now() - make_interval(secs => %s) GROUP BY w.id, w.status",
        (list(APT_FINISHED), older_than))
    for r in rows:
        action = report.add(Action("removed", "apt", f"apt_ingest_files work_item_id={r['id']}",
                                   f"{r['n']} interim row(s) of finished work item {r['id']} ({r['status']})"))
        if not dry_run:
            registry.execute("DELETE FROM apt_ingest_files WHERE work_item_id = %s", (r["id"],))
            action.done = True
            record(registry, own, action, DELETION)


def sweep_vault(registry: Any, vault: Any, *, older_than: float, dry_run: bool, report: Report, own: Any,
                domain: str = "vault") -> None:
    """``.vault-tmp-*`` files and incomplete multipart uploads: never visible objects, only waste."""
    from tasks.vault import TEMP_PREFIX, FilesystemVault, S3Vault

    if isinstance(vault, FilesystemVault):
        for dirpath, _, filenames in os.walk(vault.root):
            for name in filenames:
                if name.startswith(TEMP_PREFIX):
                    path = Path(dirpath, name)
                    age = _age(path)
                    if age >= older_than:
                        _remove(registry, own, report, domain, path,
                                f"vault temporary of a killed put, untouched for {age / 3600:.1f} h", dry_run)
    elif isinstance(vault, S3Vault):
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than)
        for upload in vault.incomplete_uploads():
            if upload["Initiated"] > cutoff:
                continue
            subject = f"s3://{vault.bucket}/{upload['Key']}?uploadId={upload['UploadId']}"
            action = report.add(Action("removed", domain, subject,
                                       f"incomplete multipart upload initiated {upload['Initiated']:%Y-%m-%d %H:%M}"))
            if not dry_run:
                vault.client.abort_multipart_upload(Bucket=vault.bucket, Key=upload["Key"],
                                                    UploadId=upload["UploadId"])
                action.done = True
                record(registry, own, action, DELETION)


def _remove(registry: Any, own: Any, report: Report, domain: str, path: Path, why: str, dry_run: bool) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    action = report.add(Action("removed", domain, str(path), why, size=size))
    if not dry_run:
        path.unlink(missing_ok=True)
        action.done = True
        record(registry, own, action, DELETION)


# ---------------------------------------------------------------- orphans that cannot be deleted

def record_orphan(registry: Any, domain: str, location: str, detail: str, *, size: int | None = None,
                  ingest_id: int | None = None) -> None:
    """For the domains (NRAO: NGAS) whose stored files cannot be deleted: keep them on the books."""
    registry.execute(
        "INSERT INTO orphans (domain, location, size, detail, ingest_id) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (domain, location) DO UPDATE SET detail = EXCLUDED.detail,"
        " size = COALESCE(EXCLUDED.size, orphans.size), ingest_id = COALESCE(EXCLUDED.ingest_id, orphans.ingest_id)",
        (domain, location, size, detail, ingest_id))


def report_orphans(registry: Any, report: Report, own: Any, dry_run: bool) -> None:
    for r in registry.execute("SELECT * FROM orphans WHERE resolved_at IS NULL ORDER BY id"):
        action = report.add(Action("orphan", r["domain"], r["location"],
                                   f"{r['detail'] or 'belongs to no recorded object'} (since {r['found_at']:%Y-%m-%d}); "
                                   "cannot be deleted here: resolve by hand", size=r["size"]))
        if not dry_run:
            record(registry, own, action, "validation")
