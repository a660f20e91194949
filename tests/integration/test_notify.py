"""Notifications against the real RabbitMQ, a real HTTP server on loopback, and the outbox file."""
from __future__ import annotations

import fcntl
import json
import sys
import subprocess
import logging
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pika
import pytest

from tasks.notify import (
    BrokerUnavailable,
    Notification,
    Notifier,
    NotifyError,
    OutboxBusy,
    Publisher,
    TransportConfig,
    Unroutable,
    WebhookRejected,
    append_outbox,
    declare_topology,
    notify,
    outbox_path,
    pending,
    redact_url,
    rejected_path,
    replay_outbox,
)
from tests.conftest import free_port

SECRET = "hunter2-s3cret"


def dead_broker() -> str:
    return f"amqp://guest:{SECRET}@127.0.0.1:{free_port()}/%2F"


def _admin(amqp_url: str):
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    return conn, conn.channel()


def drain(amqp_url: str, queue: str) -> list[tuple[Any, Any, bytes]]:
    """Every message now in the queue, acked, in order."""
    conn, ch = _admin(amqp_url)
    out = []
    try:
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((method, props, body))
    finally:
        conn.close()


def delete(amqp_url: str, *, exchanges: tuple[str, ...] = (), queues: tuple[str, ...] = ()) -> None:
    conn, ch = _admin(amqp_url)
    for q in queues:
        ch.queue_delete(q)
    for x in exchanges:
        ch.exchange_delete(x)
    conn.close()


@pytest.fixture
def bound(amqp_url: str, unique: str) -> Iterator[tuple[str, str]]:
    """A topic exchange with one queue bound to every routing key."""
    exchange, queue = f"test.notify.{unique}", f"test.notify.{unique}.q"
    declare_topology(amqp_url, [(exchange, "topic")], [queue], [(queue, exchange, "#")])
    yield exchange, queue
    delete(amqp_url, exchanges=(exchange,), queues=(queue,))


# --------------------------------------------------------------------------- AMQP


@pytest.mark.integration
def test_published_message_comes_back_with_key_body_persistence_and_correlation(
        amqp_url: str, bound: tuple[str, str], unique: str) -> None:
    exchange, queue = bound
    msg = Notification(exchange, "files.completed", {"user": "alice", "filepath": "a/b.c4gh", "note": "ü→é"},
                       correlation_id=f"corr-{unique}", headers={"attempt": 2, "domain": "ega"})
    delivery = notify(msg, TransportConfig(amqp_url=amqp_url))
    assert delivery.transport == "amqp" and delivery.message_id == msg.id
    assert ":guest@" not in delivery.destination  # the password part is redacted

    [(method, props, body)] = drain(amqp_url, queue)
    assert method.routing_key == "files.completed"
    assert method.exchange == exchange
    assert json.loads(body) == msg.body
    assert props.delivery_mode == 2
    assert props.correlation_id == f"corr-{unique}"
    assert props.message_id == msg.id
    assert props.content_type == "application/json"
    assert props.headers == {"attempt": 2, "domain": "ega"}
    assert not outbox_path().exists()


@pytest.mark.integration
def test_publisher_reuses_one_connection_and_reconnects_once_after_a_drop(
        amqp_url: str, bound: tuple[str, str]) -> None:
    exchange, queue = bound
    msgs = [Notification(exchange, f"files.step{i}", {"i": i}) for i in range(4)]
    with Publisher(amqp_url) as publisher:
        for m in msgs[:3]:
            publisher.publish(m)
        assert publisher.connections_opened == 1
        # Drop the TCP connection under pika, as a broker restart or idle timeout would.
        publisher._connection._impl._transport._sock.shutdown(socket.SHUT_RDWR)
        publisher.publish(msgs[3])
        assert publisher.connections_opened == 2
    assert [json.loads(b)["i"] for _, _, b in drain(amqp_url, queue)] == [0, 1, 2, 3]


@pytest.mark.integration
def test_unreachable_broker_goes_to_outbox_and_replay_delivers_it(
        amqp_url: str, bound: tuple[str, str], unique: str, caplog: pytest.LogCaptureFixture) -> None:
    exchange, queue = bound
    msg = Notification(exchange, "files.error", {"reason": "bad checksum"}, correlation_id=f"c-{unique}",
                       headers={"k": "v"})
    with caplog.at_level(logging.INFO):
        delivery = notify(msg, TransportConfig(amqp_url=dead_broker()))
    assert delivery.transport == "outbox"
    assert delivery.destination == str(outbox_path())
    assert "cannot connect" in delivery.reason and SECRET not in delivery.reason
    assert "kept in outbox" in caplog.text and SECRET not in caplog.text
    assert "pika" not in {r.name.split(".")[0] for r in caplog.records}  # pika kept quiet

    [line] = outbox_path().read_text().splitlines()
    record = json.loads(line)
    assert record["id"] == msg.id and record["exchange"] == exchange and record["routing_key"] == "files.error"
    assert record["body"] == msg.body and record["correlation_id"] == f"c-{unique}"
    assert record["headers"] == {"k": "v"} and record["created_at"] == msg.created_at

    # Still down: replay keeps the line and says why, without the password.
    with Publisher(dead_broker()) as down:
        result = replay_outbox(down)
    assert (result.delivered, result.remaining) == (0, 1)
    assert "cannot connect" in result.error and SECRET not in result.error

    with Publisher(amqp_url) as publisher:
        result = replay_outbox(publisher)
    assert (result.delivered, result.remaining, result.rejected, result.error) == (1, 0, 0, None)
    [(method, props, body)] = drain(amqp_url, queue)
    assert props.message_id == msg.id and props.correlation_id == f"c-{unique}"
    assert method.routing_key == "files.error" and json.loads(body) == msg.body
    assert pending() == [] and outbox_path().read_bytes() == b""


def test_without_fallback_an_unreachable_broker_raises_without_the_password() -> None:
    msg = Notification("lega", "files.completed", {"x": 1})
    with pytest.raises(BrokerUnavailable) as info:
        notify(msg, TransportConfig(amqp_url=dead_broker(), fallback_to_outbox=False))
    assert SECRET not in str(info.value) and "127.0.0.1" in str(info.value)
    assert not outbox_path().exists()


def test_notifier_keeps_a_runs_messages_in_order_once_the_broker_is_down() -> None:
    msgs = [Notification("lega", f"k{i}", {"i": i}) for i in range(3)]
    with Notifier(TransportConfig(amqp_url=dead_broker())) as notifier:
        deliveries = [notifier.notify(m) for m in msgs]
    assert {d.transport for d in deliveries} == {"outbox"}
    assert [m.id for m in pending()] == [m.id for m in msgs]


def test_nothing_configured_means_outbox() -> None:
    msg = Notification("cega", "files.completed", {"ok": True})
    delivery = notify(msg, TransportConfig())
    assert delivery.transport == "outbox"
    assert pending() == [msg]


@pytest.mark.integration
def test_replay_stops_at_a_404_and_keeps_the_failed_line_and_the_rest(
        amqp_url: str, bound: tuple[str, str], unique: str) -> None:
    exchange, queue = bound
    missing = f"test.notify.{unique}.missing"
    msgs = [Notification(exchange, "a", {"n": 0}), Notification(missing, "b", {"n": 1}),
            Notification(exchange, "c", {"n": 2})]
    for m in msgs:
        append_outbox(m)
    try:
        with Publisher(amqp_url) as publisher:
            result = replay_outbox(publisher)
            assert (result.delivered, result.remaining) == (1, 2)
            assert "404" in result.error and missing in result.error
            assert [m.id for m in pending()] == [msgs[1].id, msgs[2].id]
            assert [p.message_id for _, p, _ in drain(amqp_url, queue)] == [msgs[0].id]

            # Once the exchange exists the same publisher (its channel was closed) finishes the job.
            declare_topology(amqp_url, [(missing, "topic")], [], [(queue, missing, "#")])
            result = replay_outbox(publisher)
        assert (result.delivered, result.remaining, result.error) == (2, 0, None)
        assert [p.message_id for _, p, _ in drain(amqp_url, queue)] == [msgs[1].id, msgs[2].id]
    finally:
        delete(amqp_url, exchanges=(missing,))


@pytest.mark.integration
def test_lines_appended_during_a_replay_survive_the_rewrite(amqp_url: str, bound: tuple[str, str]) -> None:
    exchange, queue = bound
    first, second = Notification(exchange, "a", {"n": 1}), Notification(exchange, "b", {"n": 2})
    late = Notification(exchange, "c", {"n": 3})
    append_outbox(first)
    append_outbox(second)

    class AppendsMidway:
        """A flow appending to the outbox while the replay publishes."""

        def __init__(self, inner: Publisher) -> None:
            self.inner, self.calls = inner, 0

        def publish(self, message: Notification) -> None:
            self.calls += 1
            if self.calls == 1:
                append_outbox(late)
            self.inner.publish(message)

    with Publisher(amqp_url) as publisher:
        result = replay_outbox(AppendsMidway(publisher))
    assert (result.delivered, result.remaining) == (2, 1)
    assert pending() == [late]
    assert [p.message_id for _, p, _ in drain(amqp_url, queue)] == [first.id, second.id]


@pytest.mark.integration
def test_a_line_torn_by_a_crash_is_quarantined_and_the_next_append_stays_whole(
        amqp_url: str, bound: tuple[str, str]) -> None:
    exchange, queue = bound
    torn = b'{"id":"deadbeef","exchange":"cega","rout'
    outbox_path().write_bytes(torn)  # a crash mid-write: no newline
    good = Notification(exchange, "files.completed", {"ok": 1})
    append_outbox(good)
    assert pending() == [good]

    with Publisher(amqp_url) as publisher:
        result = replay_outbox(publisher)
    assert (result.delivered, result.remaining, result.rejected) == (1, 0, 1)
    assert rejected_path().read_bytes() == torn + b"\n"
    assert [p.message_id for _, p, _ in drain(amqp_url, queue)] == [good.id]


@pytest.mark.integration
def test_unroutable_mandatory_publish_raises_and_is_not_parked(amqp_url: str, unique: str) -> None:
    """Raise, not warn: the broker is up and would drop the message, so only a
    failing task makes the missing binding visible; after `broker setup` the
    retry delivers it. Parking it would block the outbox behind a config error."""
    exchange = f"test.notify.{unique}.nobody"
    declare_topology(amqp_url, [(exchange, "direct")], [], [])
    try:
        msg = Notification(exchange, "files.completed", {"x": 1})
        with pytest.raises(Unroutable) as info:
            notify(msg, TransportConfig(amqp_url=amqp_url))
        assert exchange in str(info.value) and "files.completed" in str(info.value)
        assert not outbox_path().exists()
    finally:
        delete(amqp_url, exchanges=(exchange,))


@pytest.mark.integration
def test_declare_topology_is_idempotent_and_names_a_conflict(amqp_url: str, unique: str) -> None:
    exchange, queue = f"test.notify.{unique}.topo", f"test.notify.{unique}.topo.q"
    try:
        for _ in range(2):
            declare_topology(amqp_url, [(exchange, "topic")], [queue], [(queue, exchange, "files.*")])
        notify(Notification(exchange, "files.verified", {"v": 1}), TransportConfig(amqp_url=amqp_url))
        assert len(drain(amqp_url, queue)) == 1
        with pytest.raises(NotifyError) as info:
            declare_topology(amqp_url, [(exchange, "fanout")], [], [])
        assert "406" in str(info.value) and exchange in str(info.value)
    finally:
        delete(amqp_url, exchanges=(exchange,), queues=(queue,))


# --------------------------------------------------------------------------- outbox


_APPEND_MANY = (
    "import sys; from pathlib import Path; from tasks.notify import Notification, append_outbox\n"
    "for i in range(int(sys.argv[3])):\n"
    "    append_outbox(Notification('lega', 'k', {'w': int(sys.argv[2]), 'i': i, 'pad': 'x' * 20000}),"
    " Path(sys.argv[1]))\n"
)


def test_concurrent_appends_from_processes_stay_whole_lines(tmp_path: Path) -> None:
    # Separate interpreters, not fork: forking a pytest process that already runs
    # server threads (the Prefect harness) is unsafe and flaky.
    path = tmp_path / "outbox.jsonl"
    root = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", _APPEND_MANY, str(path), str(w), "60"], cwd=root)
             for w in range(4)]
    for p in procs:
        assert p.wait(60) == 0
    lines = path.read_bytes().split(b"\n")
    assert lines.pop() == b""
    bodies = [json.loads(line)["body"] for line in lines]  # every line parses whole
    assert len(bodies) == 240
    for w in range(4):
        assert [b["i"] for b in bodies if b["w"] == w] == list(range(60))
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_second_replay_is_refused_while_one_runs() -> None:
    append_outbox(Notification("lega", "k", {}))

    class MustNotPublish:
        def publish(self, message: Notification) -> None:
            raise AssertionError("published while another replay holds the lock")

    fd = os.open(str(outbox_path()) + ".replay.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(OutboxBusy):
            replay_outbox(MustNotPublish())
    finally:
        os.close(fd)
    assert len(pending()) == 1


# --------------------------------------------------------------------------- webhook


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.path, dict(self.headers), body))
        self.send_response(self.server.status)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"nope!")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    server.received, server.status = [], 200
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _hook_url(server: ThreadingHTTPServer) -> str:
    return f"http://bot:{SECRET}@127.0.0.1:{server.server_address[1]}/status?token={SECRET}&v=1"


def test_webhook_receives_the_json_record(hook: ThreadingHTTPServer, unique: str) -> None:
    msg = Notification("apt", "work_item.update", {"bag": "b1", "stage": "Record"}, correlation_id=unique)
    delivery = notify(msg, TransportConfig(webhook_url=_hook_url(hook)))
    assert delivery.transport == "webhook" and SECRET not in delivery.destination
    [(path, headers, body)] = hook.received
    assert path == f"/status?token={SECRET}&v=1"
    assert headers["Content-Type"] == "application/json"
    assert headers["Idempotency-Key"] == msg.id and headers["X-Correlation-Id"] == unique
    assert json.loads(body) == msg.to_record()


def test_webhook_500_raises_with_the_status_and_no_secret(hook: ThreadingHTTPServer) -> None:
    hook.status = 500
    with pytest.raises(WebhookRejected) as info:
        notify(Notification("apt", "k", {"a": 1}), TransportConfig(webhook_url=_hook_url(hook)))
    assert info.value.status_code == 500 and "500" in str(info.value)
    assert SECRET not in str(info.value)
    assert not outbox_path().exists()


def test_webhook_unreachable_or_503_falls_back_to_outbox(hook: ThreadingHTTPServer) -> None:
    hook.status = 503
    busy = notify(Notification("apt", "k", {"a": 1}), TransportConfig(webhook_url=_hook_url(hook)))
    gone = notify(Notification("apt", "k", {"a": 2}),
                  TransportConfig(webhook_url=f"http://127.0.0.1:{free_port()}/hook"))
    assert (busy.transport, gone.transport) == ("outbox", "outbox")
    assert "503" in busy.reason and SECRET not in busy.reason
    assert [m.body["a"] for m in pending()] == [1, 2]


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(("url", "expected"), [
    ("amqp://guest:hunter2@rabbit.example:5672/%2F", "amqp://guest:***@rabbit.example:5672/%2F"),
    ("amqps://u:p%40ss:w@h/vhost?heartbeat=30", "amqps://u:***@h/vhost?heartbeat=30"),
    ("https://bot:pw@[::1]:8443/hook?api_key=abc&x=1", "https://bot:***@[::1]:8443/hook?api_key=***&x=1"),
    ("amqp://localhost/", "amqp://localhost/"),
    ("amqp://onlyuser@localhost/", "amqp://onlyuser@localhost/"),
    (None, ""),
])
def test_redact_url_hides_the_password(url: str | None, expected: str) -> None:
    assert redact_url(url) == expected


def test_transport_config_repr_hides_the_password() -> None:
    text = repr(TransportConfig(amqp_url=f"amqp://guest:{SECRET}@h/", webhook_url=f"https://h/?token={SECRET}"))
    assert SECRET not in text and "guest:***@h" in text
