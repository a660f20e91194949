"""notify_inbox: tell CEGA about new or changed uploads, as LocalEGA's inbox does.

One task scans every inbox (never one task per file); the registry remembers
(size, mtime) per path so a scheduled scan announces each upload once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.outcome import dated
from tasks.checksum import hash_file
from tasks.errors import UserError
from tasks.home import home_path
from tasks.notify import Notification, notify
from tasks.prefect_support import ingest_task
from tasks.registry import Registry
from tasks.staging import confine

CHECKSUM_SUFFIXES = (".md5", ".sha256")


def scan_inbox(registry: Registry, transport: Any, inbox_root: Path, *, user: str | None = None,
               exchange: str = "cega") -> dict[str, Any]:
    published: list[dict[str, str]] = []
    users = [user] if user else sorted(p.name for p in inbox_root.iterdir() if p.is_dir())
    for name in users:
        user_dir = confine(inbox_root, name)
        if not user_dir.is_dir():
            raise UserError(f"no inbox for user {name!r}")
        for path in sorted(p for p in user_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
            rel = path.relative_to(user_dir).as_posix()
            st = path.stat()
            seen = registry.execute("SELECT size, mtime_ns FROM ega_inbox_seen WHERE user_name = %s AND filepath = %s",
                                    (name, rel))
            if seen and seen[0]["size"] == st.st_size and seen[0]["mtime_ns"] == st.st_mtime_ns:
                continue
            if path.suffix in CHECKSUM_SUFFIXES:
                routing_key = "files.inbox.checksums"
                body: dict[str, Any] = {"user": name, "filepath": rel, "content": path.read_text(errors="replace")}
                checksum = None
            else:
                routing_key = "files.inbox"
                checksum = hash_file(path, ["sha256"]).checksums["sha256"]
                body = {"user": name, "filepath": rel, "filesize": st.st_size,
                        "encrypted_integrity": {"algorithm": "sha256", "checksum": checksum}}
            notify(Notification(exchange=exchange, routing_key=routing_key, body=body), transport)
            registry.execute(
                "INSERT INTO ega_inbox_seen (user_name, filepath, size, mtime_ns, checksum) VALUES (%s,%s,%s,%s,%s) "
                "ON CONFLICT (user_name, filepath) DO UPDATE SET size = EXCLUDED.size, mtime_ns = EXCLUDED.mtime_ns,"
                " checksum = EXCLUDED.checksum, notified_at = now()",
                (name, rel, st.st_size, st.st_mtime_ns, checksum))
            published.append({"user": name, "filepath": rel, "routing_key": routing_key})
    return {"published": published, "count": len(published)}


scan_inbox_task = ingest_task(scan_inbox, name="scan-inbox")


def _scan_sda(*args: Any, **kwargs: Any) -> dict[str, Any]:
    from flows.ega.sda_inbox import scan_inbox_sda

    return scan_inbox_sda(*args, **kwargs)


scan_inbox_sda_task = ingest_task(_scan_sda, name="scan-inbox-sda")


@flow(name="notify-inbox", flow_run_name=dated("ega-inbox"), description="Announce new or changed inbox uploads to CEGA (legacy: files.inbox; "
                                       "sda: inbox-upload, inbox-rename, inbox-remove).")
def notify_inbox(user: str | None = None, inbox_root: str | None = None, config_block: str = "default") -> dict:
    from blocks.broker import BrokerBlock
    from blocks.register import load_block
    from blocks.registry import RegistryBlock

    broker = load_block(BrokerBlock, config_block)
    with load_block(RegistryBlock, config_block).open() as registry:
        if broker.protocol == "sda":  # inbox-upload / inbox-rename / inbox-remove on the node's exchange
            return scan_inbox_sda_task(registry, broker.transport(),
                                       Path(inbox_root) if inbox_root else home_path("inbox"), user=user,
                                       exchange=broker.sda_exchange)
        return scan_inbox_task(registry, broker.transport(), Path(inbox_root) if inbox_root else home_path("inbox"),
                               user=user, exchange=broker.status_exchange)
