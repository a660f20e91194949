"""Bring the SVO in line with the archive: the local registry is the source of truth.

Records only the SVO has (in the datasets the block names as ours) are deleted,
records only we have are submitted, and records both have are updated only with
``update_existing`` (an update rewrites every field). ``dry_run`` logs and returns
the plan and changes nothing. Meant to run as a scheduled deployment.
"""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows.fits import records, steps
from flows.fits.steps import FitsConfig, load_config
from flows.outcome import dated
from flows.reporting import ingest_report
from tasks.errors import UserError
from tasks.prefect_support import ingest_task


def local_records(cfg: FitsConfig, client: Any, datasets: list[str]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """oid → SvoRecord for every recorded cube in our datasets; cubes whose record cannot be built are listed.

    Keywords a record leaves out (a value the service's keyword type cannot take) are in ``record.skipped``.
    """
    out: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for source in records.svo_sources(cfg.registry):
        if source["svo_dataset"] not in datasets:
            continue
        try:
            record, _missing = steps.svo_record(cfg, source, client.keywords(source["svo_dataset"]))
        except UserError as exc:
            problems.append((source["oid"], exc.message))
            continue
        out[record.oid] = record
    return out, problems


def remote_records(client: Any, datasets: list[str]) -> dict[str, Any]:
    return client.remote_records(datasets)


def make_plan(local: dict[str, Any], remote: dict[str, Any], update_existing: bool):
    from flows.fits.svo import plan_sync

    return plan_sync(local, remote, update_existing=update_existing)


def apply(client: Any, plan: Any, dry_run: bool):
    from flows.fits.svo import apply_plan

    return apply_plan(client, plan, dry_run=dry_run)


def record_outcome(cfg: FitsConfig, plan: Any, report: Any) -> None:
    """What was submitted or updated, and what the SVO refused, per cube."""
    datasets = {r.oid: r.dataset for r in plan.submit + plan.update}
    for oid in report.submitted:
        records.record_svo(cfg.registry, oid, datasets[oid], state="submitted", action="created")
    for oid in report.updated:
        records.record_svo(cfg.registry, oid, datasets[oid], state="submitted", action="updated")
    for oid, action, message in report.failed:
        if oid in datasets:
            records.record_svo(cfg.registry, oid, datasets[oid], state="failed", action=action, error=message)


load_local = ingest_task(local_records, name="build-local-records", retries=1)
load_remote = ingest_task(remote_records, name="read-svo-records", retries=1)
apply_task = ingest_task(apply, name="apply-sync-plan", retries=0)  # a partial plan is finished by the next run
record_task = ingest_task(record_outcome, name="record-svo-state", retries=3)


def plan_lines(plan: Any) -> list[str]:
    """The plan as people read it: one line per change."""
    return ([f"delete {r.dataset} {r.oid}" for r in plan.delete]
            + [f"submit {r.dataset} {r.oid}" for r in plan.submit]
            + [f"update {r.dataset} {r.oid}" for r in plan.update])


@flow(name="sync-with-svo", flow_run_name=dated("svo-sync"),
      description="Make the SVO match the archive: delete remote-only records, submit local-only ones, "
                  "optionally update shared ones; dry_run only reports the plan.")
def sync_with_svo(dry_run: bool = False, update_existing: bool = False, config_block: str = "default",
                  science_root: str | None = None) -> dict[str, Any]:
    from prefect import get_run_logger

    log = get_run_logger()
    cfg = load_config(config_block, science_root=science_root)
    try:
        cfg.svo.require_file_url_base()       # every record needs an http(s) file_url: refuse now, not per record
        datasets = list(cfg.svo.datasets)
        with cfg.svo.client() as client:
            local, problems = load_local(cfg, client, datasets)
            remote = load_remote(client, datasets)
            plan = make_plan(local, remote, update_existing)
            lines = plan_lines(plan)
            for line in lines:
                log.info("%s%s", "[dry-run] " if dry_run else "", line)
            for oid, message in problems:
                log.warning("no SVO record for %s: %s", oid, message)
            warnings = [{"oid": oid, "warning": w} for oid, record in sorted(local.items()) for w in record.skipped]
            for item in warnings:
                log.warning("%s: %s", item["oid"], item["warning"])
            report = apply_task(client, plan, dry_run)
        if not dry_run:
            record_task(cfg, plan, report)
        summary = {
            "state": "failed" if report.failed else "completed", "dry_run": dry_run,
            "update_existing": update_existing, "datasets": datasets, "local": len(local), "remote": len(remote),
            "plan": lines,
            "deleted": report.deleted if not dry_run else [], "submitted": report.submitted if not dry_run else [],
            "updated": report.updated if not dry_run else [],
            "failed": [{"oid": o, "action": a, "error": m} for o, a, m in report.failed],
            "unbuildable": [{"oid": o, "error": m} for o, m in problems],
            "warnings": warnings,
        }
        ingest_report("fits", "svo-sync-dry-run" if dry_run else "svo-sync", {k: v for k, v in summary.items()
                                                                                if k != "plan"})
        return summary
    finally:
        cfg.close()
