"""The listener creates each run under the name its flow will give it (``ega-<stable id>``,
``ega-<file>``, ``ega-cancel-<file>``), so the UI shows that name from Scheduled on and the
listener's "message id → run name and id" line names the run an operator will find.

A real listener on RabbitMQ and Prefect's test server; the deployments have no work pool, so every
run stays Scheduled and what is checked is the name it was created with."""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid

import pika
import pytest

from tests.conftest import AMQP_URL

pytestmark = [pytest.mark.integration, pytest.mark.prefect]

SHA = "c" * 64


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _deploy(client, flow, name: str, entrypoint: str):
    flow_id = client.create_flow(flow)
    return client.create_deployment(flow_id=flow_id, name=name, entrypoint=entrypoint)


def _listen(deployment: str, adapter, messages: list[tuple[str, dict]]) -> tuple[list[str], list]:
    """Publish ``(message id, body)`` pairs, run a listener until it made a run for each; its lines and runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    from deployments.listen import Listener

    queue = f"names-{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    ch = conn.channel()
    ch.queue_declare(queue, durable=True)
    for message_id, body in messages:
        ch.basic_publish("", queue, json.dumps(body).encode(), pika.BasicProperties(message_id=message_id))
    logger = logging.getLogger("archive-ingest.listen")
    lines, level = Lines(), logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    listener = Listener(AMQP_URL, queue, deployment, adapter, concurrency=2, emit_events=False)
    thread = threading.Thread(target=listener.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while listener.stats.accepted < len(messages) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert listener.stats.accepted == len(messages), listener.stats
    finally:
        listener.stop()
        thread.join(30)
        logger.removeHandler(lines)
        logger.setLevel(level)
        ch.queue_delete(queue)
        conn.close()
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
            name=DeploymentFilterName(any_=[deployment.split("/", 1)[1]])))
    return lines.lines, runs


def _line_for(lines: list[str], message_id: str) -> str:
    found = [line for line in lines if line.startswith(f"message {message_id} → ")]
    assert len(found) == 1, lines
    return found[0]


def test_legacy_runs_are_created_under_their_final_name(prefect_api, unique: str) -> None:
    from prefect.client.orchestration import get_client

    from deployments.adapters import EgaAdapter
    from flows.ega.flow import ingest_ega_file
    from tasks.notify import TransportConfig

    with get_client(sync_client=True) as client:
        _deploy(client, ingest_ega_file, f"names-{unique}", "flows/ega/flow.py:ingest_ega_file")
    stable_id = "EGAF" + uuid.uuid4().hex[:11].upper()
    body = {"user": "jane", "filepath": "dir/a.gpg", "stable_id": stable_id,
            "encrypted_integrity": {"checksum": "0" * 32, "algorithm": "md5"}}
    lines, runs = _listen(f"ingest-ega-file/names-{unique}",
                          EgaAdapter(TransportConfig(amqp_url=AMQP_URL)), [("m-1", body)])
    assert [(r.name, r.state.name) for r in runs] == [(f"ega-{stable_id}", "Scheduled")]
    assert _line_for(lines, "m-1") == f"message m-1 → new flow run ega-{stable_id} ({runs[0].id}), attempt 1"


def test_sda_runs_are_created_under_their_final_name(prefect_api, unique: str) -> None:
    from prefect.client.orchestration import get_client

    from deployments.sda_adapter import SdaAdapter
    from flows.ega.sda_flow import handle_sda_message
    from tasks.notify import TransportConfig

    with get_client(sync_client=True) as client:
        _deploy(client, handle_sda_message, f"names-{unique}", "flows/ega/sda_flow.py:handle_sda_message")
    trigger = {"type": "ingest", "user": "jane", "filepath": "dir/b.c4gh",
               "encrypted_checksums": [{"type": "sha256", "value": SHA}]}
    accession = {"type": "accession", "user": "jane", "filepath": "dir/b.c4gh", "accession_id": "EGAF00000000042",
                 "decrypted_checksums": [{"type": "sha256", "value": SHA}]}
    messages = [("t-1", trigger), ("a-1", accession), ("c-1", {**trigger, "type": "cancel"})]
    lines, runs = _listen(f"ega-sda-message/names-{unique}",
                          SdaAdapter(TransportConfig(amqp_url=AMQP_URL)), messages)
    by_name = {r.name: r for r in runs}
    assert sorted(by_name) == ["ega-EGAF00000000042", "ega-b.c4gh", "ega-cancel-b.c4gh"]
    assert {r.state.name for r in runs} == {"Scheduled"}
    for message_id, name in (("t-1", "ega-b.c4gh"), ("a-1", "ega-EGAF00000000042"), ("c-1", "ega-cancel-b.c4gh")):
        assert _line_for(lines, message_id) == (f"message {message_id} → new flow run {name} "
                                                f"({by_name[name].id}), attempt 1")


def test_a_flow_that_names_runs_from_more_than_its_parameters_keeps_prefects_name() -> None:
    """The ahead-of-time name is only ever the flow's own: a flow without one, or whose naming needs
    more than the parameters, gets none here (Prefect's slug until the flow names the run)."""
    from prefect import flow

    from deployments.listen import deployment_flow, final_run_name
    from flows.ega.flow import ingest_ega_file
    from flows.outcome import dated

    @flow(name="no-name")
    def plain() -> None: ...

    @flow(name="needs-run-id", flow_run_name=lambda: __import__("prefect").runtime.flow_run.get_id()[:8])
    def needs_more() -> None: ...

    @flow(name="templated", flow_run_name="t-{key}")
    def templated(key: str) -> None: ...

    assert deployment_flow("flows/ega/flow.py:ingest_ega_file") is ingest_ega_file
    assert deployment_flow("flows/nowhere.py:nothing") is None
    assert final_run_name(plain, {}) is None
    assert final_run_name(needs_more, {}) is None
    assert final_run_name(templated, {"key": "x"}) == "t-x"
    assert final_run_name(flow(name="d", flow_run_name=dated("fixity"))(lambda: None), {}).startswith("fixity-")
    assert final_run_name(ingest_ega_file, {"message": {"stable_id": "EGAF1", "filepath": "a"}}) == "ega-EGAF1"
