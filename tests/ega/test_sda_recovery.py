"""Past the attempt limit, a crashed EGA run is announced in its own protocol: an SDA run with SDA's
``info-error`` on the node's exchange (routing key ``error``), a legacy run with ``system.error`` on
``lega``. The protocol is read from the crashed run (its flow), not from the broker configuration.

recover() as a plain function against Prefect's test server, the real PostgreSQL and RabbitMQ. The
runs are created Crashed and never executed (no deployment, no worker)."""
from __future__ import annotations

import json
import time
import uuid

import pika
import pytest

from tests.conftest import AMQP_URL

pytestmark = [pytest.mark.integration, pytest.mark.prefect]


def _drain(ch, queue: str, wait: float = 5.0) -> list[tuple[str, str, dict, str | None]]:
    """What the queue holds, waiting up to ``wait`` seconds for the first message."""
    got = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            if got:
                break
            time.sleep(0.1)
            continue
        got.append((method.exchange, method.routing_key, json.loads(body), props.correlation_id))
    return got


@pytest.fixture
def broker(unique: str):
    """A node's exchange and the legacy internal exchange, each with a queue that keeps everything."""
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    ch = conn.channel()
    names = {"sda": f"sda-{unique}", "lega": f"lega-{unique}"}
    queues = {}
    for kind, exchange in names.items():
        ch.exchange_declare(exchange, "topic", durable=False, auto_delete=True)
        queues[kind] = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(queues[kind], exchange, "#")
    yield ch, names, queues
    for exchange in names.values():
        ch.exchange_delete(exchange)
    conn.close()


def test_an_sda_run_past_the_limit_is_announced_as_info_error_and_a_legacy_run_as_system_error(
        prefect_api, pg_dsn: str, broker) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    from flows.ega.flow import ingest_ega_file
    from flows.ega.sda_flow import handle_sda_message
    from flows.ega.sda_messages import ROUTE_ERROR, InfoError, check_emitted
    from flows.reconcile.recovery import recover
    from tasks.notify import TransportConfig
    from tasks.registry import open_registry

    ch, exchanges, queues = broker
    transport = TransportConfig(amqp_url=AMQP_URL)
    sda_message = {"type": "ingest", "user": "sda-user", "filepath": f"up/{uuid.uuid4().hex[:8]}.c4gh"}
    stable_id = "EGAF" + uuid.uuid4().hex[:11].upper()
    legacy_message = {"user": "legacy-user", "filepath": "x.gpg", "stable_id": stable_id,
                      "encrypted_integrity": {"checksum": "0" * 32, "algorithm": "md5"}}
    registry = open_registry(pg_dsn)
    try:
        with get_client(sync_client=True) as client:
            sda_run = client.create_flow_run(handle_sda_message, tags=["ega", "ingest", "sda"],
                                             parameters={"message": sda_message, "correlation_id": "corr-sda"},
                                             state=Crashed(message="worker reported exit -9"))
            legacy_run = client.create_flow_run(ingest_ega_file, tags=["ega", "ingest"],
                                                parameters={"message": legacy_message, "correlation_id": "corr-l"},
                                                state=Crashed(message="worker reported exit -9"))
            sda_ingest = registry.begin_ingest("ega", f"sda|{sda_message['filepath']}", flow_run_id=str(sda_run.id))
            kw = {"limit": 1, "registry": registry, "client": client, "transport": transport,
                  "internal_exchange": exchanges["lega"], "sda_exchange": exchanges["sda"]}
            out = recover(f"prefect.flow-run.{sda_run.id}", **kw)
            legacy = recover(str(legacy_run.id), **kw)
        assert out.action == "review" and out.ingest_id == sda_ingest.id
        assert out.announced == f"{exchanges['sda']}/error info-error"
        assert [r["id"] for r in registry.for_review("ega") if r["id"] == sda_ingest.id] == [sda_ingest.id]

        sda_got = _drain(ch, queues["sda"])
        assert [(x, rk, cid) for x, rk, _, cid in sda_got] == [(exchanges["sda"], ROUTE_ERROR, "corr-sda")]
        body = sda_got[0][2]
        assert isinstance(check_emitted(ROUTE_ERROR, body), InfoError)  # not ingestion-user-error
        assert set(body) == {"error", "reason", "original-message"}
        assert json.loads(body["original-message"]) == sda_message
        assert "not in the upload" in body["reason"] and "nothing is needed from the submitter" in body["reason"]
        assert str(sda_run.id) in body["reason"]

        legacy_got = _drain(ch, queues["lega"])
        assert legacy.action == "review"
        assert [(x, rk, cid) for x, rk, _, cid in legacy_got] == [(exchanges["lega"], "system.error", "corr-l")]
        assert legacy_got[0][2]["stable_id"] == stable_id and legacy_got[0][2]["state"] == "SYSTEM_ERROR"
        assert _drain(ch, queues["sda"], wait=1.0) == []  # the legacy run said nothing on the node's exchange
    finally:
        registry.close()
