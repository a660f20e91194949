"""Fixity audit: re-verify stored objects of every archive, oldest check first, within a byte budget."""
from __future__ import annotations

import time
import uuid
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.fixity import plan as planning
from flows.fixity import record, steps
from flows.fixity.config import load_config
from flows.fixity.report import fixity_markdown
from flows.outcome import dated
from tasks.prefect_support import ingest_task

check_batch = ingest_task(steps.check_batch, name="check-batch", retries=2)


class FixityFailed(Exception):
    """Objects failed their check: the run ends Failed so automations can alert; the summary rides along."""

    def __init__(self, summary: dict[str, Any]) -> None:
        n = len(summary.get("failures", []))
        super().__init__(f"{n} object{'s' if n != 1 else ''} failed the fixity check: "
                         + "; ".join(f"{f['domain']} {f['subject']} ({f['problem']})"
                                     for f in summary.get("failures", [])[:10]))
        self.summary = summary


@flow(name="fixity-audit", flow_run_name=dated("fixity"),
      description="Re-verify stored objects (EGA vault, APT copies, FITS cubes, NGAS files) against the "
                  "registry, oldest check first, within a byte budget; a mismatch or missing object is "
                  "recorded, marked for review, announced, and fails the run.")
def fixity_audit(domain: str | None = None, older_than: str = planning.DEFAULT_OLDER_THAN,
                 max_gb: float = planning.DEFAULT_MAX_GB, dry_run: bool = False,
                 config_block: str = "default") -> dict[str, Any]:
    log = get_run_logger()
    domains = planning.domains_of(domain)
    older = planning.parse_older_than(older_than)
    budget = planning.budget_bytes(max_gb)
    run_key = str(flow_run.get_id() or "") or str(uuid.uuid4())
    cfg = load_config(config_block)
    try:  # the registry connection holds the domain locks until the end of the run
        mine, busy = steps.lock_domains(cfg.registry, domains)
        if busy:
            log.warning("another fixity run is checking %s; skipped here", ", ".join(busy))
        plan = (planning.plan_checks(cfg.registry, mine, older_than=older, budget=budget) if mine
                else planning.Plan([], 0, 0, budget))
        summary: dict[str, Any] = {"run": run_key, "domains": mine, "skipped_domains": busy,
                                   "older_than": str(older_than), "dry_run": dry_run, **steps.plan_summary(plan)}
        if dry_run:
            summary["objects"] = [{"domain": i.domain, "subject": i.subject, "bytes": i.bytes,
                                   "last_checked_at": i.last_checked_at} for i in plan.items[:1000]]
            return summary
        record.start_run(cfg.registry, run_key, mine, budget, len(plan.items), plan.remaining)
        checked = bytes_read = 0
        failures: list[dict[str, Any]] = []
        state = "failed"
        started = time.perf_counter()
        try:
            for batch in planning.batches(plan.items):
                result = check_batch(config_block, batch, run_key)
                checked += result.checked
                bytes_read += result.bytes_read
                failures.extend(result.failures)
            state = "failed" if failures else "completed"
        finally:
            record.finish_run(cfg.registry, run_key, checked=checked, failed=len(failures), bytes_read=bytes_read,
                              state=state)
        summary.update(checked=checked, bytes_read=bytes_read, failed=len(failures), failures=failures,
                       state=state, check_seconds=round(time.perf_counter() - started, 3))
        _artifact(summary)
        log.info("fixity: %d checked (%d bytes), %d failed, %d still due", checked, bytes_read, len(failures),
                 plan.remaining)
        if failures:
            raise FixityFailed(summary)
        return summary
    finally:
        cfg.close()


def _artifact(summary: dict[str, Any]) -> None:
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=fixity_markdown(summary), key="fixity-audit",
                                 description="Fixity audit: what was checked and what failed")
    except Exception as exc:  # noqa: BLE001 - a report must not fail the audit
        get_run_logger().warning("fixity artifact not written: %s", exc)
