"""``broker setup``: the cega exchange stays unbound (status messages are refused, never dropped) unless
``--local-cega`` keeps them in local queues. Each test gets its own RabbitMQ vhost (rabbitmqctl)."""
from __future__ import annotations

import json
import shutil
import subprocess

import pika
import pytest

from tests.ega.conftest import EgaEnv, save_blocks
from tests.ega.test_ega_flow import submit

pytestmark = [pytest.mark.integration, pytest.mark.prefect,
              pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl for a vhost")]


@pytest.fixture
def vhost_url(amqp_url: str, unique: str):
    name = f"ega-setup-{unique}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"], check=True,
                   capture_output=True)
    yield amqp_url.rsplit("/", 1)[0] + "/" + name
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True, check=False)


def drain(url: str, queue: str) -> list[tuple[str, dict]]:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    out = []
    try:
        ch = conn.channel()
        while True:
            method, _, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((method.routing_key, json.loads(body)))
    finally:
        conn.close()


def test_local_cega_through_the_cli(ega_env: EgaEnv, gpg, vhost_url: str, pg_dsn: str, prefect_api: str,
                                    monkeypatch, capsys) -> None:
    from flows.run import main
    from tasks.notify import Notification, NotifyError, TransportConfig, notify

    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    save_blocks(ega_env.name, pg_dsn=pg_dsn, amqp_url=vhost_url, cega="cega", lega="lega", keys=ega_env.keys,
                vault_root=ega_env.vault_root)
    assert main(["broker", "setup", "--config", ega_env.name]) == 0
    plain = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "no queue" in plain["note"] and "--local-cega" in plain["note"]
    with pytest.raises(NotifyError, match="unroutable"):  # refused, never silently dropped
        notify(Notification(exchange="cega", routing_key="files.completed", body={"x": 1}),
               TransportConfig(amqp_url=vhost_url))

    assert main(["broker", "setup", "--local-cega", "--config", ega_env.name]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"completed", "errors", "inbox", "inbox.checksums"} <= set(out["queues"])
    msg, _ = submit(ega_env, gpg, b"local cega\n" * 100, "--compress-algo", "none")
    assert ega_env.run(msg)[0] == 0
    assert ega_env.run({**msg, "encrypted_integrity": {"checksum": "0" * 32, "algorithm": "md5"}})[0] == 1
    assert [rk for rk, _ in drain(vhost_url, "completed")] == ["files.completed"]
    assert [rk for rk, _ in drain(vhost_url, "errors")] == ["files.error"]
    assert [rk for rk, _ in drain(vhost_url, "processing")] == ["files.processing", "files.processing"]
    assert [rk for rk, _ in drain(vhost_url, "archived")] == ["archived"]


def test_sda_protocol_through_the_cli_on_a_node_topology(ega_env: EgaEnv, gpg, vhost_url: str, pg_dsn: str,
                                                         prefect_api: str, monkeypatch, capsys) -> None:
    """`broker protocol sda`, `broker setup` (the node's exchange and queues), then a verbatim SDA trigger:
    its messages land in the node's own queues, as on a real node."""
    import hashlib

    from flows.ega.sda_messages import check_emitted
    from flows.run import main

    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    save_blocks(ega_env.name, pg_dsn=pg_dsn, amqp_url=vhost_url, cega="cega", lega="lega", keys=ega_env.keys,
                vault_root=ega_env.vault_root)
    assert main(["broker", "protocol", "sda", "--config", ega_env.name]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["protocol"] == "sda"
    assert main(["broker", "setup", "--config", ega_env.name]) == 0
    assert {"from_cega", "ingest", "accession", "verified"} <= set(
        json.loads(capsys.readouterr().out.strip().splitlines()[-1])["queues"])
    msg, upload = submit(ega_env, gpg, b"node\n" * 100, "--compress-algo", "none")
    trigger = {"type": "ingest", "user": msg["user"], "filepath": msg["filepath"],
               "encrypted_checksums": [{"type": "sha256", "value": hashlib.sha256(upload.read_bytes()).hexdigest()}]}
    code, summary = ega_env.run(trigger)
    assert code == 0 and summary["state"] == "AWAITING_ACCESSION", summary
    archived, verified = drain(vhost_url, "archived"), drain(vhost_url, "verified")
    assert [rk for rk, _ in archived] == ["archived"] and [rk for rk, _ in verified] == ["verified"]
    for rk, body in archived + verified:
        check_emitted(rk, body)
