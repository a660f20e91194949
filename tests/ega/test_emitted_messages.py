"""Every message we emit, in either protocol, fits our model of it: legacy bodies the legacy models
(unchanged shape), SDA bodies the SDA models. Inbox events of both protocols are driven here too."""
from __future__ import annotations

import hashlib
import json
import os

import pytest

from tests.ega.conftest import EgaEnv
from tests.ega.test_ega_flow import submit
from tests.ega.test_sda_protocol import sda_messages

pytestmark = [pytest.mark.integration, pytest.mark.prefect]


def test_every_legacy_message_fits_the_legacy_models(ega_env: EgaEnv, gpg, amqp_url: str) -> None:
    from deployments.adapters import EgaAdapter
    from flows.ega import legacy_models
    from flows.ega.inbox_notify import notify_inbox
    from tasks.notify import TransportConfig

    msg, upload = submit(ega_env, gpg, b"legacy\n" * 300, "--compress-algo", "none")
    (upload.parent / "notes.txt.md5").write_text(hashlib.md5(b"x").hexdigest() + "\n")
    assert notify_inbox(user=ega_env.user, config_block=ega_env.name)["count"] == 2
    assert ega_env.run(msg, correlation_id="c1")[0] == 0
    assert ega_env.run({**msg, "stable_id": msg["stable_id"] + "X",
                        "encrypted_integrity": {"checksum": "0" * 32, "algorithm": "md5"}})[0] == 1
    EgaAdapter(TransportConfig(amqp_url=amqp_url), ega_env.cega).reject(b"{oops", "c2", "message is not valid JSON")
    cega = ega_env.messages("cega")
    lega = ega_env.messages("lega")
    assert sorted({rk for rk, _, _ in cega}) == ["files.completed", "files.error", "files.inbox",
                                                  "files.inbox.checksums", "files.processing"]
    assert [rk for rk, _, _ in lega] == ["archived", "qc"]
    for rk, body, _ in cega + lega:
        legacy_models.check_emitted(rk, body)
    # and the exact legacy body, unchanged
    completed = next(b for rk, b, _ in cega if rk == "files.completed")
    assert completed == {"user": msg["user"], "filepath": msg["filepath"], "stable_id": msg["stable_id"],
                         "status": {"state": "COMPLETED", "details": f"File ingested, refer to it with {msg['stable_id']}"}}


def test_sda_inbox_upload_rename_remove(sda_env: EgaEnv) -> None:
    from flows.ega.inbox_notify import notify_inbox

    inbox = sda_env.inbox / sda_env.user
    (inbox / "dir").mkdir(parents=True)
    data = os.urandom(4096)
    (inbox / "dir" / "a.c4gh").write_bytes(data)
    (inbox / "b.c4gh").write_bytes(b"bbb")
    (inbox / "b.c4gh.sha256").write_text("0" * 64)
    first = notify_inbox(user=sda_env.user, config_block=sda_env.name)
    assert first["count"] == 3
    sent = sda_messages(sda_env)  # each checked against our SDA models
    assert {b["filepath"]: b["operation"] for _, b in sent} == {"dir/a.c4gh": "upload", "b.c4gh": "upload",
                                                                 "b.c4gh.sha256": "upload"}
    a = next(b for _, b in sent if b["filepath"] == "dir/a.c4gh")
    assert a["filesize"] == 4096 and a["encrypted_checksums"] == [{"type": "sha256",
                                                                   "value": hashlib.sha256(data).hexdigest()}]
    assert notify_inbox(user=sda_env.user, config_block=sda_env.name)["count"] == 0

    (inbox / "dir" / "a.c4gh").rename(inbox / "dir" / "renamed.c4gh")
    (inbox / "b.c4gh.sha256").unlink()
    notify_inbox(user=sda_env.user, config_block=sda_env.name)
    sent = sda_messages(sda_env)
    assert sorted(json.dumps(b, sort_keys=True) for _, b in sent) == sorted(json.dumps(b, sort_keys=True) for b in [
        {"user": sda_env.user, "filepath": "dir/renamed.c4gh", "oldpath": "dir/a.c4gh", "operation": "rename"},
        {"user": sda_env.user, "filepath": "b.c4gh.sha256", "operation": "remove"}])
    assert all(rk == "inbox" for rk, _ in sent)
