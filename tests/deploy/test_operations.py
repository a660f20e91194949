"""The three operator entry points, end to end on real processes: deployments from prefect.yaml
on a PostgreSQL-backed server, a process worker, the queue→run listener, and schedules."""
from __future__ import annotations

import hashlib
import json
import signal
import sys
import time
import uuid
from datetime import timedelta

import pika
import pytest

from tests.conftest import AMQP_URL
from tests.deploy.conftest import Stack, stop

pytestmark = [pytest.mark.integration, pytest.mark.deploy]


def _channel():
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    return conn, conn.channel()


@pytest.fixture
def queues(stack: Stack):
    """A private trigger queue, and a capture queue bound to cega (as CEGA's shovel would be)."""
    token = uuid.uuid4().hex[:8]
    files_q, capture_q = f"files-{token}", f"cega-capture-{token}"
    stack.run(sys.executable, "flows/run.py", "broker", "setup", "--amqp-url", AMQP_URL)
    conn, ch = _channel()
    ch.queue_declare(files_q, durable=True)
    ch.queue_declare(capture_q, durable=True)
    ch.queue_bind(capture_q, "cega", "#")
    conn.close()
    yield files_q, capture_q
    conn, ch = _channel()
    for q in (files_q, capture_q):
        ch.queue_delete(q)
    for q in ("archived", "qc"):
        ch.queue_purge(q)
    conn.close()


def _flow_runs(stack: Stack, deployment: str, stable_prefix: str) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with stack.client() as client:
        runs, offset = [], 0
        while True:
            page = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])),
                                         limit=200, offset=offset)
            runs += page
            if len(page) < 200:
                break
            offset += 200
    return [r for r in runs if str(r.parameters.get("message", {}).get("stable_id", "")).startswith(stable_prefix)]


def _publish(messages: list[dict], queue: str) -> None:
    conn, ch = _channel()
    ch.confirm_delivery()
    for i, m in enumerate(messages):
        ch.basic_publish("", queue, json.dumps(m).encode(),
                         pika.BasicProperties(delivery_mode=2, correlation_id=f"c-{i}"))
    conn.close()


def _queue_depth(queue: str) -> int:
    conn, ch = _channel()
    try:
        return ch.queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


def _wait(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _listener(stack: Stack, queue: str, name: str = "listener"):
    return stack.start(name, sys.executable, "flows/run.py", "listen", "--queue", queue, "--adapter", "ega",
                       "--deployment", "ingest-ega-file/ega", "--amqp-url", AMQP_URL, "--concurrency", "16")


MESSAGES = 20  # with ten delivered twice: enough to overlap four runs at a time, and the suite's time


def test_queue_messages_become_completed_runs_without_duplicates(stack: Stack, queues) -> None:
    from flows.ega.demo import encrypt_for_archive

    files_q, capture_q = queues
    prefix = "EGAF" + uuid.uuid4().hex[:6].upper()
    user_dir = stack.ingest_home / "inbox" / "ops-user"
    user_dir.mkdir(parents=True, exist_ok=True)
    messages = []
    for i in range(MESSAGES):
        plain = user_dir / f"f{i}.txt"
        plain.write_bytes(f"file {i}\n".encode() * 200)
        encrypt_for_archive(plain, user_dir / f"f{i}.txt.gpg", stack.ingest_home / "keys" / "ega.pub.asc")
        plain.unlink()
        enc = (user_dir / f"f{i}.txt.gpg").read_bytes()
        messages.append({"user": "ops-user", "filepath": f"f{i}.txt.gpg", "stable_id": f"{prefix}{i:04d}",
                         "encrypted_integrity": {"checksum": hashlib.md5(enc).hexdigest(), "algorithm": "md5"}})
    messages.append({"user": "ops-user"})  # invalid: answered with files.error, never a run
    worker = stack.start("worker", sys.executable, "flows/run.py", "worker", "--pool", "ingest", "--limit", "4")
    listener = _listener(stack, files_q)
    try:
        _publish(messages + messages[:10], files_q)  # ten are delivered twice
        _wait(lambda: _queue_depth(files_q) == 0 and len(_flow_runs(stack, "ega", prefix)) >= MESSAGES, 120,
              "the listener to drain the queue")
        runs = _wait(lambda: (lambda rs: rs if all(r.state.is_final() for r in rs) else None)(
            _flow_runs(stack, "ega", prefix)), 600, "every run to finish", interval=3)
        assert len(runs) == MESSAGES
        assert sorted(r.parameters["message"]["stable_id"] for r in runs) == sorted(m["stable_id"] for m in messages[:MESSAGES])
        assert {r.state.type.value for r in runs} == {"COMPLETED"}, [r.state.message for r in runs if not r.state.is_completed()][:3]
        vault = sorted((stack.ingest_home / "vault" / "ega").glob(f"{prefix}*/*.c4gh"))
        assert len(vault) == MESSAGES
    finally:
        assert stop(listener) == 0  # graceful on SIGTERM
        stop(worker)
    conn, ch = _channel()
    replies = []
    while True:
        method, props, body = ch.basic_get(capture_q, auto_ack=True)
        if method is None:
            break
        replies.append((method.routing_key, json.loads(body)))
    conn.close()
    assert sum(1 for rk, b in replies if rk == "files.completed" and b["stable_id"].startswith(prefix)) >= MESSAGES
    errors = [b for rk, b in replies if rk == "files.error"]
    assert len(errors) == 1 and "filepath" in errors[0]["status"]["details"]


def test_killed_listener_loses_and_duplicates_nothing(stack: Stack, queues) -> None:
    """SIGKILL the listener mid-drain of 200 messages, restart it: exactly 200 runs.

    No worker runs here: the runs stay Scheduled, which is all this test needs to count."""
    files_q, _ = queues
    prefix = "EGAK" + uuid.uuid4().hex[:6].upper()
    messages = [{"user": "kill-user", "filepath": f"k{i}.gpg", "stable_id": f"{prefix}{i:04d}",
                 "encrypted_integrity": {"checksum": "0" * 32, "algorithm": "md5"}} for i in range(200)]
    _publish(messages, files_q)
    listener = _listener(stack, files_q, "listener-killed")
    _wait(lambda: len(_flow_runs(stack, "ega", prefix)) >= 40, 120, "some runs to be created", interval=0.2)
    stop(listener, signal.SIGKILL)
    created_before_kill = len(_flow_runs(stack, "ega", prefix))
    assert created_before_kill < 200, "the drain finished before the kill; nothing was tested"
    t0 = time.monotonic()
    listener = _listener(stack, files_q, "listener-restarted")
    try:
        _wait(lambda: _queue_depth(files_q) == 0 and len(_flow_runs(stack, "ega", prefix)) >= 200, 180,
              "the restarted listener to drain the queue", interval=0.5)
        rate = (200 - created_before_kill) / (time.monotonic() - t0)
        print(f"restarted listener created {200 - created_before_kill} runs at {rate:.1f} runs/s")
    finally:
        assert stop(listener) == 0
    runs = _flow_runs(stack, "ega", prefix)
    assert len(runs) == 200
    assert len({r.parameters["message"]["stable_id"] for r in runs}) == 200
    with stack.client() as client:  # tidy: these runs were never meant to execute
        for r in runs:
            client.delete_flow_run(r.id)


def test_shortened_schedule_creates_runs_on_its_own(stack: Stack) -> None:
    from datetime import datetime, timezone

    from prefect.client.schemas.schedules import IntervalSchedule

    changed_at = datetime.now(timezone.utc)
    with stack.client() as client:
        dep = client.read_deployment_by_name("scan-apt-receiving-buckets/apt-scan")
        assert [s.schedule.cron for s in client.read_deployment_schedules(dep.id)] == ["*/10 * * * *"]
        for s in client.read_deployment_schedules(dep.id):
            client.delete_deployment_schedule(dep.id, s.id)
        client.create_deployment_schedules(dep.id, [(IntervalSchedule(interval=timedelta(seconds=5)), True)])

    def scheduled_runs():
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        with stack.client() as client:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))
        new = [r for r in runs if r.auto_scheduled and r.created and r.created >= changed_at]
        return new if len(new) >= 2 else None  # earlier cron runs do not count

    runs = _wait(scheduled_runs, 90, "the scheduler to create runs")
    assert len(runs) >= 2
    stack.run(sys.executable, "flows/run.py", "schedule", "apt-scan", "--cron", "*/10 * * * *")
