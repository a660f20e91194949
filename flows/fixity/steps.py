"""The steps of one fixity run, as plain functions (flows/fixity/flow.py orders them)."""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from typing import Any

from flows.fixity import plan as planning
from flows.fixity.checks import CHECKS
from flows.fixity.config import FixityConfig, load_config, open_resources
from flows.fixity.record import record_outcome
from tasks.registry import Ingest, Registry

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    checked: int = 0
    bytes_read: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)


def lock_domains(registry: Registry, domains: list[str]) -> tuple[list[str], list[str]]:
    """Session advisory locks, one per domain, so two runs at once never check the same objects:
    the second run skips a domain the first holds. Released when the connection closes."""
    mine, busy = [], []
    for domain in domains:
        key = (874302 << 32) | zlib.crc32(f"fixity:{domain}".encode())
        if registry.execute("SELECT pg_try_advisory_lock(%s::bigint) AS ok", (key,))[0]["ok"]:
            mine.append(domain)
        else:
            busy.append(domain)
    return mine, busy


def check_batch(config_block: str, items: list[planning.Item], run_key: str) -> BatchResult:
    """Check consecutive objects of one domain and record each as soon as it is checked."""
    if not items:
        return BatchResult()
    domain = items[0].domain
    cfg: FixityConfig = load_config(config_block)
    res = open_resources(domain, config_block)
    out = BatchResult()
    cache: dict[int, Ingest] = {}
    try:
        check = CHECKS[domain]
        for item in items:
            outcome = check(item, res)
            result = record_outcome(cfg, run_key, outcome, cache)
            out.checked += 1
            out.bytes_read += outcome.bytes_read
            if outcome.failed:
                log.error("fixity %s: %s: %s", outcome.problem, item.subject, outcome.outcome_detail)
                out.failures.append(result)
    finally:
        res.close()
        cfg.close()
    return out


def plan_summary(plan: planning.Plan) -> dict[str, Any]:
    by_domain: dict[str, dict[str, int]] = {}
    for item in plan.items:
        d = by_domain.setdefault(item.domain, {"objects": 0, "bytes": 0})
        d["objects"] += 1
        d["bytes"] += item.bytes
    return {"planned": len(plan.items), "planned_bytes": plan.planned_bytes, "due": plan.due,
            "due_bytes": plan.due_bytes, "remaining": plan.remaining, "budget_bytes": plan.budget_bytes,
            "by_domain": by_domain}
