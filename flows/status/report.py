"""One view of all four archives, read from the registry: what is stored, what is moving, what is stuck,
what failed and why, and how fixity stands. Plain SQL, so ``status`` needs no flow run and the
scheduled ``archive-status`` run shows the same numbers in the UI.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from flows.fixity.plan import CANDIDATES, DOMAINS
from tasks.registry import Registry

DEFAULT_STUCK_AFTER = "6h"
TOP_REASONS = 10

# Bytes of one stored copy per domain, from the domain's own records.
STORED = {
    "ega": "SELECT count(*) AS files, COALESCE(sum(archive_size), 0) AS bytes FROM ega_files WHERE status = 'completed'",
    "apt": "SELECT count(*) AS files, COALESCE(sum(size), 0) AS bytes FROM apt_files WHERE state = 'A'",
    "fits": "SELECT count(*) AS files, COALESCE(sum(size), 0) AS bytes FROM fits_cubes",
    "nrao": "SELECT count(*) AS files, COALESCE(sum(size), 0) AS bytes FROM nrao_product_files",
}

# Whether a failed ingest was the submitter's input (user) or ours (system). A flow may say so in
# ingests.details.error_kind; otherwise the domain's own record tells.
ERROR_KIND = """
COALESCE(i.details->>'error_kind',
    CASE i.domain
        WHEN 'ega' THEN (SELECT CASE WHEN bool_or(f.status = 'error') THEN 'user'
                                     WHEN bool_or(f.status = 'failed') THEN 'system' END
                           FROM ega_files f WHERE f.ingest_id = i.id)
        WHEN 'apt' THEN (SELECT w.error_kind FROM apt_work_items w WHERE w.ingest_id = i.id
                          ORDER BY w.id DESC LIMIT 1)
    END, 'system')"""

# One row per unit of work, in the shared states. FITS work orders are the unit there: a cube
# refused before it was recorded has a failed order but no ingest row.
WORK = f"""
SELECT i.domain, i.state, i.updated_at, i.last_error AS error,
       CASE WHEN i.state = 'failed' THEN {ERROR_KIND} END AS error_kind
  FROM ingests i WHERE i.domain = ANY(%(domains)s) AND i.domain <> 'fits'
UNION ALL
SELECT 'fits', CASE o.state WHEN 'Queued' THEN 'received' WHEN 'Started' THEN 'in_ingestion'
                            WHEN 'Completed' THEN 'completed' ELSE 'failed' END,
       o.updated_at, o.error, CASE WHEN o.state = 'Failed' THEN COALESCE(o.error_kind, 'system') END
  FROM fits_work_orders o WHERE 'fits' = ANY(%(domains)s)
"""


def build_status(registry: Registry, *, stuck_after: timedelta, domains: list[str] | None = None) -> dict[str, Any]:
    domains = list(domains or DOMAINS)
    out: dict[str, Any] = {"stuck_after_seconds": int(stuck_after.total_seconds()), "domains": {}}
    for d in domains:
        out["domains"][d] = _empty()
    params = {"domains": domains, "stuck": stuck_after}
    for row in registry.execute(f"""
            SELECT domain,
                   count(*) FILTER (WHERE state IN ('completed', 'skipped')) AS ingested,
                   count(*) FILTER (WHERE state = 'received') AS queued,
                   count(*) FILTER (WHERE state = 'in_ingestion' AND updated_at >= now() - %(stuck)s) AS in_progress,
                   count(*) FILTER (WHERE state = 'in_ingestion' AND updated_at < now() - %(stuck)s) AS stuck,
                   count(*) FILTER (WHERE state = 'failed') AS failed,
                   count(*) FILTER (WHERE state = 'failed' AND error_kind = 'user') AS failed_user,
                   count(*) FILTER (WHERE state = 'failed' AND error_kind <> 'user') AS failed_system,
                   count(*) FILTER (WHERE state = 'cancelled') AS cancelled
              FROM ({WORK}) w GROUP BY domain""", params):
        out["domains"][row["domain"]]["ingests"] = {k: int(v) for k, v in row.items() if k != "domain"}
    for row in registry.execute(f"""
            SELECT domain, left(COALESCE(error, '(no reason recorded)'), 300) AS reason,
                   CASE WHEN error_kind = 'user' THEN 'user' ELSE 'system' END AS kind, count(*) AS count
              FROM ({WORK}) w WHERE state = 'failed'
             GROUP BY 1, 2, 3 ORDER BY count(*) DESC, 2""", params):
        reasons = out["domains"][row["domain"]]["failed_by_reason"]
        if len(reasons) < TOP_REASONS:
            reasons.append({"reason": row["reason"], "kind": row["kind"], "count": int(row["count"])})
    for d in domains:
        stored = registry.execute(STORED[d])[0]
        out["domains"][d]["stored"] = {"files": int(stored["files"]), "bytes": int(stored["bytes"])}
        out["domains"][d]["fixity"] = _fixity(registry, d)
        review = registry.execute(
            "SELECT id, natural_key, review_reason, review_at FROM ingests"
            " WHERE domain = %s AND review_reason IS NOT NULL ORDER BY review_at, id", (d,))
        out["domains"][d]["review"] = {"count": len(review), "ingests": [
            {"ingest_id": r["id"], "key": r["natural_key"], "reason": r["review_reason"], "since": r["review_at"]}
            for r in review[:20]]}
    return out


def _empty() -> dict[str, Any]:
    return {"ingests": {k: 0 for k in ("ingested", "queued", "in_progress", "stuck", "failed", "failed_user",
                                       "failed_system", "cancelled")},
            "failed_by_reason": [], "stored": {"files": 0, "bytes": 0}, "fixity": {}, "review": {"count": 0}}


def _fixity(registry: Registry, domain: str) -> dict[str, Any]:
    row = registry.execute(f"""
        SELECT count(*) FILTER (WHERE s.item_key IS NULL) AS never_checked,
               count(*) FILTER (WHERE s.last_outcome = 'failure') AS failing,
               count(*) FILTER (WHERE s.last_problem = 'mismatch') AS mismatches,
               count(*) FILTER (WHERE s.last_problem = 'missing') AS missing,
               max(s.last_checked_at) AS last_checked_at, min(s.last_checked_at) AS oldest_check_at
          FROM ({CANDIDATES[domain]}) c
          LEFT JOIN fixity_checks s ON s.domain = c.domain AND s.item_key = c.item_key""")[0]
    last_run = registry.execute(
        "SELECT run_key, started_at, finished_at, state, checked, failed, remaining FROM fixity_runs"
        " WHERE %s = ANY(domains) AND finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT 1", (domain,))
    return {"never_checked": int(row["never_checked"]), "failing": int(row["failing"]),
            "mismatches": int(row["mismatches"]), "missing": int(row["missing"]),
            "last_checked_at": row["last_checked_at"], "oldest_check_at": row["oldest_check_at"],
            "last_run": last_run[0] if last_run else None}


# ---------------------------------------------------------------- rendering

COLUMNS = [
    ("domain", lambda d, s: d),
    ("ingested", lambda d, s: s["ingests"]["ingested"]),
    ("files", lambda d, s: s["stored"]["files"]),
    ("bytes", lambda d, s: _size(s["stored"]["bytes"])),
    ("queued", lambda d, s: s["ingests"]["queued"]),
    ("running", lambda d, s: s["ingests"]["in_progress"]),
    ("stuck", lambda d, s: s["ingests"]["stuck"]),
    ("failed user", lambda d, s: s["ingests"]["failed_user"]),
    ("failed system", lambda d, s: s["ingests"]["failed_system"]),
    ("last fixity", lambda d, s: _when(s["fixity"].get("last_checked_at"))),
    ("never checked", lambda d, s: s["fixity"].get("never_checked", 0)),
    ("mismatch", lambda d, s: s["fixity"].get("mismatches", 0)),
    ("missing", lambda d, s: s["fixity"].get("missing", 0)),
    ("review", lambda d, s: s["review"]["count"]),
]


def _size(n: int) -> str:
    value, unit = float(n), "B"
    for next_unit in ("KB", "MB", "GB", "TB", "PB"):
        if value < 1000:
            break
        value, unit = value / 1000, next_unit
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"


def _when(value: Any) -> str:
    if value is None:
        return "never"
    return value.strftime("%Y-%m-%d %H:%M UTC") if hasattr(value, "strftime") else str(value)


def _rows(status: dict[str, Any]) -> list[list[str]]:
    return [[str(fn(d, s)) for _, fn in COLUMNS] for d, s in status["domains"].items()]


def render_table(status: dict[str, Any]) -> str:
    """A fixed-width table for a terminal, then the failure reasons and the review list."""
    header = [name for name, _ in COLUMNS]
    rows = _rows(status)
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines += _details(status, bullet="  ")
    return "\n".join(lines)


def render_markdown(status: dict[str, Any]) -> str:
    header = [name for name, _ in COLUMNS]
    lines = ["# Archive status", "",
             f"Stuck means in ingestion with no progress for {status['stuck_after_seconds'] // 3600} h or more.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(status)]
    lines.append("")
    lines += _details(status, bullet="- ")
    return "\n".join(lines)


def _details(status: dict[str, Any], *, bullet: str) -> list[str]:
    lines: list[str] = []
    for d, s in status["domains"].items():
        if s["failed_by_reason"]:
            lines += ["", f"{d}: failed by reason"]
            lines += [f"{bullet}{r['count']} × [{r['kind']}] {r['reason']}" for r in s["failed_by_reason"]]
        if s["review"]["count"]:
            lines += ["", f"{d}: marked for review ({s['review']['count']})"]
            lines += [f"{bullet}ingest {r['ingest_id']} {r['key']}: {r['reason']}" for r in s["review"]["ingests"]]
    return lines
