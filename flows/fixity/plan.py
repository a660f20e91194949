"""Which stored objects a fixity run checks: due ones, oldest check first, within a byte budget.

The plan is computed in one SQL statement so a large archive never comes into memory:
a running sum over the due objects (never checked first, then by last check) stops at the
budget. Because a checked object moves to the back of that order, the next run resumes
where this one stopped, and no object is checked twice before every due one was checked once.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from tasks.errors import UserError
from tasks.registry import Registry

DOMAINS = ("ega", "apt", "fits", "nrao")
DEFAULT_OLDER_THAN = "90d"
DEFAULT_MAX_GB = 1000.0  # ~1 h at 300 MB/s: fits a nightly window even on slow disks or S3 (~3 h at 100 MB/s)
GB = 1_000_000_000

# One SELECT per domain, each giving the same columns: what locates the bytes (item_key), the event's
# subject, the ingest to mark for review, the bytes one check reads, and what the check compares with.
CANDIDATES = {
    "ega": """
        SELECT 'ega'::text AS domain, f.archive_key AS item_key, COALESCE(f.stable_id, f.archive_key) AS subject, f.ingest_id,
               COALESCE(f.archive_size, 0)::bigint AS bytes, f.updated_at AS since,
               jsonb_build_object('key', f.archive_key, 'uri', f.archive_uri, 'size', f.archive_size,
                                  'sha256', f.archive_checksum, 'user', f.user_name, 'filepath', f.filepath,
                                  'stable_id', f.stable_id) AS payload
          FROM ega_files f
         WHERE f.status = 'completed' AND f.archive_key IS NOT NULL""",
    "apt": """
        SELECT 'apt'::text AS domain, af.uuid::text AS item_key, af.identifier AS subject, w.ingest_id,
               (af.size * GREATEST(1, (SELECT count(*) FROM apt_storage_records s WHERE s.file_id = af.id)))::bigint
                   AS bytes, af.created_at AS since,
               jsonb_build_object(
                   'uuid', af.uuid::text, 'size', af.size, 'identifier', af.identifier,
                   'sha256', (SELECT c.digest FROM apt_checksums c WHERE c.file_id = af.id AND c.algorithm = 'sha256'
                               ORDER BY c.id DESC LIMIT 1),
                   'md5', (SELECT c.digest FROM apt_checksums c WHERE c.file_id = af.id AND c.algorithm = 'md5'
                            ORDER BY c.id DESC LIMIT 1),
                   'copies', COALESCE((SELECT jsonb_agg(jsonb_build_object('target', s.target, 'url', s.url,
                                                                            'size', s.size, 'sha256', s.sha256)
                                                        ORDER BY s.target)
                                         FROM apt_storage_records s WHERE s.file_id = af.id), '[]'::jsonb)) AS payload
          FROM apt_files af
          LEFT JOIN apt_work_items w ON w.id = af.last_work_item_id
         WHERE af.state = 'A'""",
    "fits": """
        SELECT 'fits'::text AS domain, c.oid AS item_key, c.oid AS subject, c.ingest_id,
               c.size::bigint AS bytes, c.created_at AS since,
               jsonb_build_object('oid', c.oid, 'path', c.path, 'size', c.size, 'uri', f.vault_uri,
                                  'checksums', COALESCE(f.checksums, '{}'::jsonb)) AS payload
          FROM fits_cubes c
          LEFT JOIN files f ON f.domain = 'fits' AND f.file_key = c.oid""",
    "nrao": """
        SELECT 'nrao'::text AS domain, pf.ngas_file_id || '#' || pf.file_version AS item_key,
               pf.locator || '/' || pf.filename AS subject, pf.ingest_id, pf.size::bigint AS bytes,
               pf.created_at AS since,
               jsonb_build_object('file_id', pf.ngas_file_id, 'version', pf.file_version, 'size', pf.size,
                                  'ngas_checksum', pf.ngas_checksum, 'plugin', pf.ngas_checksum_plugin,
                                  'checksums', pf.checksums, 'disk_id', pf.ngas_disk_id,
                                  'locator', pf.locator, 'filename', pf.filename) AS payload
          FROM nrao_product_files pf""",
}


@dataclass(frozen=True)
class Item:
    """One stored object to re-verify (all its copies, for APT)."""

    domain: str
    item_key: str
    subject: str
    ingest_id: int | None
    bytes: int
    payload: dict[str, Any] = field(default_factory=dict)
    last_checked_at: Any = None


@dataclass
class Plan:
    items: list[Item]
    due: int  # objects due now, in the plan or not
    due_bytes: int
    budget_bytes: int

    @property
    def planned_bytes(self) -> int:
        return sum(i.bytes for i in self.items)

    @property
    def remaining(self) -> int:
        return self.due - len(self.items)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 86400, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_older_than(text: str | float | None) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``2w``, ``0``; a bare number is days."""
    if text is None:
        text = DEFAULT_OLDER_THAN
    match = _DURATION.match(str(text))
    if not match:
        raise UserError(f"--older-than {text!r}: expected a number with s, m, h, d or w (e.g. 90d)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def budget_bytes(max_gb: float | None) -> int:
    if max_gb is None:
        max_gb = DEFAULT_MAX_GB
    if max_gb <= 0:
        raise UserError("--max-gb must be positive")
    return int(max_gb * GB)


def domains_of(domain: str | None) -> list[str]:
    if domain in (None, "", "all"):
        return list(DOMAINS)
    if domain not in DOMAINS:
        raise UserError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    return [domain]


def plan_checks(registry: Registry, domains: list[str], *, older_than: timedelta, budget: int) -> Plan:
    """The due objects of ``domains`` in check order, cut at ``budget`` bytes (at least one object,
    so one larger than the budget is still checked some night rather than never)."""
    union = "\nUNION ALL\n".join(CANDIDATES[d] for d in domains)
    rows = registry.execute(
        f"""
        WITH candidates AS ({union}),
        due AS (
            SELECT c.*, s.last_checked_at
              FROM candidates c
              LEFT JOIN fixity_checks s ON s.domain = c.domain AND s.item_key = c.item_key
             WHERE s.last_checked_at IS NULL OR s.last_checked_at < now() - %(older)s::interval
        ),
        ordered AS (
            SELECT due.*,
                   sum(bytes) OVER w AS running, row_number() OVER w AS n,
                   count(*) OVER () AS due_count, sum(bytes) OVER () AS due_bytes
              FROM due
            WINDOW w AS (ORDER BY last_checked_at NULLS FIRST, since, domain, item_key
                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
        )
        SELECT * FROM ordered WHERE running <= %(budget)s OR n = 1 ORDER BY n
        """,
        {"older": older_than, "budget": budget},
    )
    items = [Item(r["domain"], r["item_key"], r["subject"], r["ingest_id"], int(r["bytes"] or 0),
                  dict(r["payload"] or {}), r["last_checked_at"]) for r in rows]
    due = int(rows[0]["due_count"]) if rows else 0
    due_bytes = int(rows[0]["due_bytes"] or 0) if rows else 0
    return Plan(items, due, due_bytes, budget)


def batches(items: list[Item], *, max_items: int = 200, max_bytes: int = 8 << 30) -> list[list[Item]]:
    """Coarse tasks: consecutive objects of one domain, up to ``max_items`` or ``max_bytes`` a batch."""
    out: list[list[Item]] = []
    current: list[Item] = []
    size = 0
    for item in items:
        if current and (item.domain != current[0].domain or len(current) >= max_items
                        or size + item.bytes > max_bytes):
            out.append(current)
            current, size = [], 0
        current.append(item)
        size += item.bytes
    if current:
        out.append(current)
    return out
