"""One worker per object: a PostgreSQL advisory lock per (domain, natural key), held for the run.

Two runs of the same object at once (a message published twice, a CLI call beside a deployed
run, a recovered run racing a resend) must not both decrypt or upload. The lock lives on the
registry connection of the run that holds it, so it is released when that run closes its
registry, and by the server when the process dies (SIGKILL, OOM): a crashed holder never
blocks the next attempt. The second run waits, then finds the work done in the registry and
reports the recorded result instead of repeating it.

Because the lock proves that no other run of the object is alive, whoever holds it may remove
what an earlier, dead attempt of the same object left behind (``sweep_*`` below): temporaries
whose names carry the object (``owned_name``), and vault temporaries in the object's own key
directory.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WAIT_LOG_SECONDS = 30.0


def lock_id(domain: str, natural_key: str) -> int:
    """A signed 64-bit id, stable across processes and machines (Python's hash() is salted)."""
    digest = hashlib.sha256(f"ingest-claim\x1f{domain}\x1f{natural_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(frozen=True)
class Claim:
    domain: str
    natural_key: str
    lock: int
    waited: float  # seconds spent waiting for another run of the same object


def claim(registry: Any, domain: str, natural_key: str, *, timeout: float | None = None) -> Claim:
    """Hold the object's lock on ``registry``'s connection until it closes (or ``release``).

    Waits for a live holder, logging who it waits for; ``timeout`` (seconds) turns a wait past
    it into ``TimeoutError``, which is transient: the task retries, the run stays correct.
    Taking it again in the same run (a retried task) is harmless.
    """
    lock = lock_id(domain, natural_key)
    started = time.monotonic()
    next_log = 0.0
    while True:
        if registry.execute("SELECT pg_try_advisory_lock(%s) AS ok", (lock,))[0]["ok"]:
            waited = time.monotonic() - started
            if waited > 0.5:
                log.info("claimed %s %s after waiting %.1f s for another run", domain, natural_key, waited)
            return Claim(domain, natural_key, lock, waited)
        elapsed = time.monotonic() - started
        if timeout is not None and elapsed >= timeout:
            raise TimeoutError(f"{domain} {natural_key} is held by another run ({holder(registry, lock)}) "
                               f"for more than {timeout:.0f} s")
        if elapsed >= next_log:
            log.info("%s %s is being ingested by another run (%s); waiting", domain, natural_key,
                     holder(registry, lock))
            next_log = elapsed + WAIT_LOG_SECONDS
        time.sleep(min(0.2 + elapsed / 20, 2.0))


def release(registry: Any, held: Claim) -> None:
    registry.execute("SELECT pg_advisory_unlock(%s)", (held.lock,))


def is_claimed(registry: Any, domain: str, natural_key: str) -> bool:
    """Whether a live run holds the object now (reconcile's test for 'no live run')."""
    lock = lock_id(domain, natural_key)
    rows = registry.execute(
        "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = %s", (lock,))
    return bool(rows)


def holder(registry: Any, lock: int) -> str:
    rows = registry.execute(
        "SELECT a.pid, a.application_name, a.client_addr::text AS addr, a.backend_start FROM pg_locks l"
        " JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
        " AND l.objsubid = 1 AND ((l.classid::bigint << 32) | l.objid::bigint) = %s", (lock,))
    if not rows:
        return "holder gone"
    r = rows[0]
    return f"backend pid {r['pid']} from {r['addr'] or 'local socket'} since {r['backend_start']:%H:%M:%S}"


# ---------------------------------------------------------------- what a dead attempt left

def owned_name(domain: str, ingest_id: int, name: str) -> str:
    """A staging name that says which ingest it belongs to, so the next attempt can sweep it."""
    return f"{domain}-{ingest_id}-{name}"


def sweep_owned_staging(staging: Any, domain: str, ingest_id: int) -> list[str]:
    """Remove staged files and ``.part`` temporaries named for this ingest (call only while claimed)."""
    prefix = f"{domain}-{ingest_id}-"
    removed = []
    root = Path(staging.root)
    if not root.is_dir():
        return removed
    for entry in os.scandir(root):
        name = entry.name
        if name.startswith(prefix) or (name.startswith("." + prefix) and name.endswith(".part")):
            staging.remove(name)
            removed.append(name)
    if removed:
        log.info("removed %d leftover staging file(s) of an earlier attempt of %s ingest %d: %s",
                 len(removed), domain, ingest_id, ", ".join(removed))
    return removed


def sweep_vault_temporaries(vault: Any, key_dir: str) -> list[str]:
    """Remove a dead attempt's half-written vault objects under ``key_dir`` (call only while claimed).

    Filesystem: ``.vault-tmp-*`` files in that directory; S3: incomplete multipart uploads of
    keys under it. Other objects' temporaries are never touched, whatever their age.
    """
    from tasks.vault import TEMP_PREFIX, FilesystemVault, S3Vault

    key_dir = key_dir.strip("/")
    removed: list[str] = []
    if isinstance(vault, FilesystemVault):
        directory = vault.root / key_dir
        if directory.is_dir():
            for entry in os.scandir(directory):
                if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                    Path(entry.path).unlink(missing_ok=True)
                    removed.append(f"{key_dir}/{entry.name}")
    elif isinstance(vault, S3Vault):
        prefix = vault.object_key(key_dir) + "/"
        for upload in vault.incomplete_uploads():
            if upload["Key"].startswith(prefix):
                vault.client.abort_multipart_upload(Bucket=vault.bucket, Key=upload["Key"],
                                                    UploadId=upload["UploadId"])
                removed.append(f"s3://{vault.bucket}/{upload['Key']} (upload {upload['UploadId'][:12]}…)")
    if removed:
        log.info("removed %d vault temporar%s of an earlier attempt under %s", len(removed),
                 "y" if len(removed) == 1 else "ies", key_dir)
    return removed
