"""Inbox events in the SDA protocol: ``inbox-upload``, ``inbox-rename`` and ``inbox-remove``.

A scan compares each inbox with what was announced before (``ega_inbox_seen``): a new or
changed file is an upload, an announced file that is gone is a removal, and a gone file
whose size and sha256 reappear under a new name in the same scan is a rename. SDA's inbox
reports every file, companion checksum files included (there is no inbox.checksums).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from flows.ega.sda_messages import (
    ROUTE_INBOX,
    InboxRemove,
    InboxRename,
    InboxUpload,
    SdaModel,
    checksums,
)
from tasks.checksum import hash_file
from tasks.errors import UserError
from tasks.notify import Notification, notify
from tasks.registry import Registry
from tasks.staging import confine

log = logging.getLogger(__name__)


def _files(user_dir: Path) -> dict[str, Path]:
    if not user_dir.is_dir():
        return {}
    return {p.relative_to(user_dir).as_posix(): p for p in sorted(user_dir.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def scan_inbox_sda(registry: Registry, transport: Any, inbox_root: Path, *, user: str | None = None,
                   exchange: str = "sda") -> dict[str, Any]:
    published: list[dict[str, str]] = []

    def send(build: Any, **fields: Any) -> bool:
        """Publish one event; a name SDA cannot carry (shorter than 2 characters) is skipped with a warning."""
        try:
            message = build(**fields)
        except ValidationError as exc:
            log.warning("not announced: %s/%s (%s)", fields.get("user"), fields.get("filepath"), exc.errors()[0]["msg"])
            return False
        _publish(message)
        return True

    def _publish(message: SdaModel) -> None:
        notify(Notification(exchange=exchange, routing_key=ROUTE_INBOX, body=message.body()), transport)
        published.append({"user": message.user, "filepath": message.filepath,  # type: ignore[attr-defined]
                          "operation": message.operation})  # type: ignore[attr-defined]

    if user:
        if not confine(inbox_root, user).is_dir():
            raise UserError(f"no inbox for user {user!r}")
        users = [user]
    else:
        on_disk = {p.name for p in inbox_root.iterdir() if p.is_dir()} if inbox_root.is_dir() else set()
        known = {r["user_name"] for r in registry.execute("SELECT DISTINCT user_name FROM ega_inbox_seen")}
        users = sorted(on_disk | known)
    for name in users:
        current = _files(confine(inbox_root, name))
        seen = {r["filepath"]: r for r in registry.execute(
            "SELECT filepath, size, mtime_ns, checksum FROM ega_inbox_seen WHERE user_name = %s", (name,))}
        gone = {rel: row for rel, row in seen.items() if rel not in current}
        for rel, path in current.items():
            st = path.stat()
            before = seen.get(rel)
            if before and before["size"] == st.st_size and before["mtime_ns"] == st.st_mtime_ns:
                continue
            sha256 = hash_file(path, ["sha256"]).checksums["sha256"]
            old = None if before else next((o for o, row in gone.items()
                                            if row["size"] == st.st_size and row["checksum"] == sha256), None)
            if old is not None:
                del gone[old]
                registry.execute("DELETE FROM ega_inbox_seen WHERE user_name = %s AND filepath = %s", (name, old))
                sent = send(InboxRename, user=name, filepath=rel, oldpath=old, operation="rename")
            else:
                sent = send(InboxUpload, user=name, filepath=rel, operation="upload", filesize=st.st_size,
                            file_last_modified=int(st.st_mtime), encrypted_checksums=checksums({"sha256": sha256}))
            if not sent:
                continue
            registry.execute(
                "INSERT INTO ega_inbox_seen (user_name, filepath, size, mtime_ns, checksum) VALUES (%s,%s,%s,%s,%s) "
                "ON CONFLICT (user_name, filepath) DO UPDATE SET size = EXCLUDED.size, mtime_ns = EXCLUDED.mtime_ns,"
                " checksum = EXCLUDED.checksum, notified_at = now()",
                (name, rel, st.st_size, st.st_mtime_ns, sha256))
        for rel in sorted(gone):
            send(InboxRemove, user=name, filepath=rel, operation="remove")
            registry.execute("DELETE FROM ega_inbox_seen WHERE user_name = %s AND filepath = %s", (name, rel))
    return {"published": published, "count": len(published)}
