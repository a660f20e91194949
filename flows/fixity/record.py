"""What a check leaves behind: the object's last check, a PREMIS event, a review mark and an announcement.

Recorded per object as soon as it is checked, so a run that dies keeps what it learned and the next
run continues behind it. The event's id is derived from the run, so a retried batch updates its events
instead of adding a second set.
"""
from __future__ import annotations

import logging
from typing import Any

from flows.fixity.checks import Outcome
from flows.fixity.config import FixityConfig
from tasks import registry as reg

log = logging.getLogger(__name__)

AGENT = "archive-ingest/fixity"


def start_run(registry: reg.Registry, run_key: str, domains: list[str], budget: int, planned: int,
              remaining: int) -> None:
    registry.execute(
        """
        INSERT INTO fixity_runs (run_key, domains, budget_bytes, planned, remaining)
        VALUES (%s, %s, %s, %s, %s)
        ON CONFLICT (run_key) DO UPDATE SET planned = EXCLUDED.planned, remaining = EXCLUDED.remaining,
            state = 'running', finished_at = NULL
        """, (run_key, domains, budget, planned, remaining))


def finish_run(registry: reg.Registry, run_key: str, *, checked: int, failed: int, bytes_read: int,
               state: str) -> None:
    registry.execute(
        "UPDATE fixity_runs SET checked = %s, failed = %s, bytes = %s, state = %s, finished_at = now()"
        " WHERE run_key = %s", (checked, failed, bytes_read, state, run_key))


def _ingest(registry: reg.Registry, outcome: Outcome, cache: dict[int, reg.Ingest]) -> reg.Ingest:
    item = outcome.item
    if item.ingest_id is not None:
        if item.ingest_id not in cache:
            found = registry.ingest_by_id(item.ingest_id)
            if found is not None:
                cache[item.ingest_id] = found
        if item.ingest_id in cache:
            return cache[item.ingest_id]
    # The ingest row is gone (ON DELETE SET NULL): the event still needs a stable id and a home.
    return reg.Ingest(None, item.domain, f"fixity:{item.item_key}", "unknown", 0, {})  # type: ignore[arg-type]


def record_outcome(cfg: FixityConfig, run_key: str, outcome: Outcome, cache: dict[int, reg.Ingest]) -> dict[str, Any]:
    """Last check, event, and on failure the review mark and the domain's announcement."""
    item = outcome.item
    r = cfg.registry
    r.execute(
        """
        INSERT INTO fixity_checks (domain, item_key, subject, ingest_id, size, last_checked_at, last_outcome,
                                   last_problem, last_detail, last_run, checks, failures)
        VALUES (%(domain)s, %(key)s, %(subject)s, %(ingest)s, %(size)s, now(), %(outcome)s, %(problem)s,
                %(detail)s, %(run)s, 1, %(fail)s)
        ON CONFLICT (domain, item_key) DO UPDATE SET subject = EXCLUDED.subject, ingest_id = EXCLUDED.ingest_id,
            size = EXCLUDED.size, last_checked_at = now(), last_outcome = EXCLUDED.last_outcome,
            last_problem = EXCLUDED.last_problem, last_detail = EXCLUDED.last_detail,
            checks = fixity_checks.checks + CASE WHEN fixity_checks.last_run = EXCLUDED.last_run THEN 0 ELSE 1 END,
            failures = fixity_checks.failures
                       + CASE WHEN fixity_checks.last_run = EXCLUDED.last_run THEN 0 ELSE EXCLUDED.failures END,
            last_run = EXCLUDED.last_run
        """,
        {"domain": item.domain, "key": item.item_key, "subject": item.subject, "ingest": item.ingest_id,
         "size": item.bytes, "outcome": outcome.outcome, "problem": outcome.problem,
         "detail": outcome.outcome_detail, "run": run_key, "fail": 1 if outcome.failed else 0})
    ingest = _ingest(r, outcome, cache)
    r.record_event(ingest, reg.FIXITY_CHECK, subject=item.subject, outcome=outcome.outcome, agent=AGENT,
                   detail=f"fixity audit: {outcome.detail}",
                   outcome_detail=(f"{outcome.problem}: " if outcome.problem else "") + (outcome.outcome_detail or ""),
                   discriminator=f"audit:{run_key}:{item.item_key}")
    result: dict[str, Any] = {"domain": item.domain, "subject": item.subject, "item": item.item_key,
                              "outcome": outcome.outcome}
    if outcome.failed:
        reason = f"fixity {outcome.problem}: {item.subject}: {outcome.outcome_detail}"
        result.update(problem=outcome.problem, detail=outcome.outcome_detail, ingest_id=item.ingest_id)
        if ingest.id is not None:
            r.mark_for_review(ingest.id, reason[:2000])
        result["announced"] = announce(cfg, outcome, run_key)
    return result


def announcement(outcome: Outcome, run_key: str, *, sda: bool = False) -> dict[str, Any]:
    """The body of a failed check's message. EGA's is SDA's info-error (error, reason, original-message):
    a system error about the archive's copy, not about the submitter's upload."""
    import json

    item = outcome.item
    p = item.payload
    if item.domain == "ega":
        original = {"user": p.get("user"), "filepath": p.get("filepath"), "stable_id": p.get("stable_id"),
                    "archive_uri": p.get("uri"), "fixity_run": run_key}
        body = {"error": f"fixity {outcome.problem}", "reason": outcome.outcome_detail or str(outcome.problem),
                "original-message": json.dumps(original, sort_keys=True) if sda else original}
        return body if sda else {**body, "fixity_run": run_key}
    return {"domain": item.domain, "subject": item.subject, "item": item.item_key, "problem": outcome.problem,
            "detail": outcome.outcome_detail, "ingest_id": item.ingest_id, "fixity_run": run_key}


def announce(cfg: FixityConfig, outcome: Outcome, run_key: str) -> str:
    """Publish on the domain's channel (or keep it in the outbox); a refused message is logged, not raised:
    the run already ends Failed over this object, and re-checking the batch would not help the broker."""
    from tasks.notify import Notification, notify

    channel = cfg.channel(outcome.item.domain)
    message = Notification(exchange=channel.exchange, routing_key=channel.routing_key,
                           body=announcement(outcome, run_key, sda=cfg.ega_sda), correlation_id=f"fixity:{run_key}")
    try:
        return notify(message, cfg.transport).transport
    except Exception as exc:  # noqa: BLE001 - see above
        log.error("fixity failure of %s not announced on %s/%s: %s", outcome.item.subject, channel.exchange,
                  channel.routing_key, exc)
        return f"not delivered: {exc}"
