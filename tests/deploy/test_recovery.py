"""Self-healing on real processes: a Prefect server on PostgreSQL, a process worker, the listener and
RabbitMQ. A SIGKILLed EGA run completes unattended; a resend after a system error starts a new
attempt; a message published twice, and two runs of one upload at once, decrypt once."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tests.conftest import AMQP_URL
from tests.deploy.conftest import Stack, stop
from tests.deploy.test_operations import _channel, _flow_runs, _publish, _wait

pytestmark = [pytest.mark.integration, pytest.mark.deploy]

DECRYPT_TASK = "decrypt-reencrypt-stage"
# An upload whose pass lasts long enough to be caught mid-decrypt (polled every 0.05 s) even on a fast,
# idle machine: 96 MiB passed in ~0.35 s here, which left a kill or cancel little room.
MID_PASS_UPLOAD = 192 << 20


class Ops:
    def __init__(self, stack: Stack, files_q: str, capture_q: str, listener_log: Path, worker) -> None:
        self.stack, self.files_q, self.capture_q, self.listener_log, self.worker = (
            stack, files_q, capture_q, listener_log, worker)
        self.replies: list[tuple[str, dict]] = []

    def drain_replies(self) -> list[tuple[str, dict]]:
        conn, ch = _channel()
        while True:
            method, _, body = ch.basic_get(self.capture_q, auto_ack=True)
            if method is None:
                break
            self.replies.append((method.routing_key, json.loads(body)))
        conn.close()
        return self.replies

    def replies_for(self, stable_id: str, routing_key: str) -> list[dict]:
        return [b for rk, b in self.drain_replies() if rk == routing_key and b.get("stable_id") == stable_id]


@pytest.fixture(scope="module")
def ops(stack: Stack):
    token = uuid.uuid4().hex[:8]
    files_q, capture_q = f"files-heal-{token}", f"cega-heal-{token}"
    stack.run(sys.executable, "flows/run.py", "broker", "setup", "--amqp-url", AMQP_URL)
    conn, ch = _channel()
    for q in (files_q, capture_q):
        ch.queue_declare(q, durable=True)
    ch.queue_bind(capture_q, "cega", "#")
    conn.close()
    worker = stack.start("worker-heal", sys.executable, "flows/run.py", "worker", "--pool", "ingest", "--limit", "4")
    listener = stack.start("listener-heal", sys.executable, "flows/run.py", "listen", "--queue", files_q,
                           "--adapter", "ega", "--deployment", "ingest-ega-file/ega", "--amqp-url", AMQP_URL)
    ops = Ops(stack, files_q, capture_q, stack.logs / f"listener-heal-{len(stack.procs) - 1}.log", worker)
    try:
        yield ops
    finally:
        stop(listener)
        stop(worker)
        stop(ops.worker)  # a test may have replaced a worker it killed: no worker of this module outlives it
        conn, ch = _channel()
        for q in (files_q, capture_q):
            ch.queue_delete(q)
        conn.close()


def _upload(stack: Stack, user: str, name: str, size: int) -> dict:
    """Encrypt ``size`` random bytes as a submitter would; the message CEGA would send."""
    from flows.ega.demo import encrypt_for_archive

    user_dir = stack.ingest_home / "inbox" / user
    user_dir.mkdir(parents=True, exist_ok=True)
    plain = user_dir / name
    with open(plain, "wb") as fh:
        fh.writelines(os.urandom(1 << 20) for _ in range(size // (1 << 20)))
        fh.write(os.urandom(size % (1 << 20)))
    encrypt_for_archive(plain, user_dir / f"{name}.gpg", stack.ingest_home / "keys" / "ega.pub.asc")
    plain.unlink()
    md5 = hashlib.md5()
    with open(user_dir / f"{name}.gpg", "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            md5.update(block)
    stable_id = "EGAF" + uuid.uuid4().hex[:11].upper()
    return {"user": user, "filepath": f"{name}.gpg", "stable_id": stable_id,
            "encrypted_integrity": {"checksum": md5.hexdigest(), "algorithm": "md5"}}


def _runs(stack: Stack, stable_id: str) -> list:
    return _flow_runs(stack, "ega", stable_id)


def _run_done(stack: Stack, stable_id: str, count: int = 1):
    runs = _runs(stack, stable_id)
    return runs if len(runs) >= count and all(r.state.is_final() for r in runs) else None


def _hold_claim(stack: Stack, msg: dict):
    """The object's advisory lock (tasks/claims) on a connection of the test's own."""
    import psycopg

    from flows.ega.messages import EgaMessage
    from flows.ega.records import DOMAIN
    from flows.ega.steps import ingest_key
    from tasks.claims import lock_id

    conn = psycopg.connect(stack.registry_dsn, autocommit=True)
    key = ingest_key(EgaMessage.model_validate(msg))
    assert conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_id(DOMAIN, key),)).fetchone()[0]
    return conn


def _both_running(stack: Stack, flow_run_ids: list) -> bool:
    with stack.client() as client:
        return all(client.read_flow_run(i).state.is_running() for i in flow_run_ids)


def _decrypt_task_runs(stack: Stack, flow_run_ids: list) -> list:
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterName,
    )

    with stack.client() as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)),
                                     task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=DECRYPT_TASK)))


def _vault_and_temporaries(stack: Stack, stable_id: str) -> tuple[list[Path], list[Path], list[Path]]:
    vault_dir = stack.ingest_home / "vault" / "ega" / stable_id
    entries = sorted(vault_dir.iterdir()) if vault_dir.is_dir() else []
    objects = [p for p in entries if not p.name.startswith(".vault-tmp-")]
    temporaries = [p for p in entries if p.name.startswith(".vault-tmp-")]
    staging = [p for p in (stack.ingest_home / "staging" / "ega").glob("*") if p.is_file()]
    return objects, temporaries, staging


def _logged(log: str, *parts: str) -> bool:
    """Whether one line of the listener's log holds every part."""
    return any(all(p in line for p in parts) for line in log.splitlines())


def _flow_run_process(worker, flow_run_id: str) -> psutil.Process | None:
    """The process running a flow run below a worker (``python flows/run.py worker`` or ``prefect worker
    start``): a fork of the warm runner, whose command line names the run (deployments/warm.py), or a
    run started cold, with the run id in its environment (the launcher running it in-process)."""
    cold = None
    for child in psutil.Process(worker.pid).children(recursive=True):
        try:
            if f"prefect flow run {flow_run_id} " in " ".join(child.cmdline()) + " ":
                return child
            if cold is None and child.environ().get("PREFECT__FLOW_RUN_ID") == flow_run_id:
                cold = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return cold


def test_sigkilled_ega_run_completes_unattended(ops: Ops) -> None:
    stack = ops.stack
    msg = _upload(stack, "heal-user", "kill.bin", MID_PASS_UPLOAD)
    _publish([msg], ops.files_q)
    run = _wait(lambda: (_runs(stack, msg["stable_id"]) or [None])[0], 60, "the listener to create the run", 0.2)
    staging = stack.ingest_home / "staging" / "ega"

    def decrypting():
        parts = [p for p in staging.glob(".ega-*.part") if p.stat().st_size > (4 << 20)]
        return _flow_run_process(ops.worker, str(run.id)) if parts else None

    victim = _wait(decrypting, 180, "the run to be mid-decrypt", 0.05)
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    assert [p for p in staging.glob(".ega-*.part")], "the kill came after the decrypt pass"

    runs = _wait(lambda: _run_done(stack, msg["stable_id"]) if _runs(stack, msg["stable_id"])[0].run_count >= 2
                 else None, 300, "the crashed run to be re-run and finish", 1)
    print(f"SIGKILL mid-decrypt → Completed unattended in {time.monotonic() - killed_at:.1f} s")
    assert len(runs) == 1 and runs[0].state.is_completed(), runs[0].state
    assert runs[0].id == run.id and runs[0].run_count == 2
    with stack.client() as client:
        states = [s.name for s in client.read_flow_run_states(run.id)]
    assert "Crashed" in states and "AwaitingRetry" in states
    objects, temporaries, staged = _vault_and_temporaries(stack, msg["stable_id"])
    assert len(objects) == 1 and temporaries == [] and staged == []
    _wait(lambda: ops.replies_for(msg["stable_id"], "files.completed"), 30, "files.completed")
    time.sleep(1)
    assert len(ops.replies_for(msg["stable_id"], "files.completed")) == 1
    assert ops.replies_for(msg["stable_id"], "files.error") == []


def test_resend_after_a_system_error_is_a_new_attempt(ops: Ops) -> None:
    stack = ops.stack
    msg = _upload(stack, "heal-user", "fault.bin", 1 << 20)
    blocker = stack.ingest_home / "vault" / "ega" / msg["stable_id"]
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"the vault cannot make this object's directory: a system fault")
    _publish([msg], ops.files_q)
    first = _wait(lambda: _run_done(stack, msg["stable_id"]), 180, "the faulty run to end")
    assert [r.state.type.value for r in first] == ["FAILED"]
    assert ops.replies_for(msg["stable_id"], "files.error") == []  # a system error is never the submitter's

    blocker.unlink()  # the operator removes the fault and re-sends the same message
    _publish([msg], ops.files_q)
    runs = _wait(lambda: _run_done(stack, msg["stable_id"], 2), 180, "the new attempt to end")
    assert sorted(r.state.type.value for r in runs) == ["COMPLETED", "FAILED"]
    new = next(r for r in runs if r.state.is_completed())
    assert new.idempotency_key.endswith("#attempt-2")
    _wait(lambda: ops.replies_for(msg["stable_id"], "files.completed"), 30, "files.completed")
    objects, temporaries, staged = _vault_and_temporaries(stack, msg["stable_id"])
    assert len(objects) == 1 and temporaries == [] and staged == []
    log = ops.listener_log.read_text()
    assert _logged(log, "correlation c-0 → new flow run ", f"({new.id}), attempt 2")


def test_same_message_twice_at_once_decrypts_once(ops: Ops) -> None:
    stack = ops.stack
    msg = _upload(stack, "heal-user", "twice.bin", 4 << 20)
    _publish([msg, msg], ops.files_q)  # correlation ids c-0 and c-1
    runs = _wait(lambda: _run_done(stack, msg["stable_id"]), 240, "the run to end")
    assert len(runs) == 1 and runs[0].state.is_completed()
    log = ops.listener_log.read_text()
    assert _logged(log, "→ joined flow run ", f"({runs[0].id}), attempt 1")

    # Two runs of the same upload at once (a CLI call beside a deployed run, a recovered run beside a
    # resend): the claim makes the second wait and then report the first one's result. A 64 MiB ingest
    # now ends before the worker starts a second run, so the test holds the object's claim (as a third,
    # live run would) until both racers are Running: they overlap by construction, not by timing.
    second_msg = _upload(stack, "heal-user", "race.bin", 64 << 20)
    holder = _hold_claim(stack, second_msg)
    try:
        with stack.client() as client:
            dep = client.read_deployment_by_name("ingest-ega-file/ega")
            racers = [client.create_flow_run_from_deployment(
                dep.id, parameters={"message": second_msg, "correlation_id": f"race-{i}"},
                idempotency_key=f"race-{second_msg['stable_id']}-{i}") for i in range(2)]
        _wait(lambda: _both_running(stack, [r.id for r in racers]), 180, "both racing runs to start")
        time.sleep(0.5)  # both are now at (or before) the claim; neither can pass it
        assert _vault_and_temporaries(stack, second_msg["stable_id"])[0] == [], "a racer passed the claim"
    finally:
        holder.close()  # the server releases the advisory lock with the session, as for a dead run
    done = _wait(lambda: _run_done(stack, second_msg["stable_id"], 2), 300, "both racing runs to end")
    assert {r.state.type.value for r in done} == {"COMPLETED"}
    first, last = sorted(done, key=lambda r: r.start_time)
    assert last.start_time < first.end_time, "the runs did not overlap; nothing was raced"
    decrypts = _decrypt_task_runs(stack, [r.id for r in racers])
    assert len(decrypts) == 1, [(t.name, t.state.name) for t in decrypts]
    objects, temporaries, staged = _vault_and_temporaries(stack, second_msg["stable_id"])
    assert len(objects) == 1 and temporaries == [] and staged == []

    # A resend of a completed message is answered again, with no new run and no new work.
    before = len(ops.replies_for(msg["stable_id"], "files.completed"))
    _publish([msg], ops.files_q)
    _wait(lambda: len(ops.replies_for(msg["stable_id"], "files.completed")) > before, 60, "the answer again")
    assert len(_runs(stack, msg["stable_id"])) == 1
    assert len(_decrypt_task_runs(stack, [runs[0].id])) == 1
    assert _logged(ops.listener_log.read_text(), "→ already completed flow run ",
                   f"({runs[0].id}), attempt 1; answered files.completed again")


def test_past_the_attempt_limit_the_ingest_is_marked_for_review_and_a_system_error_announced(stack: Stack) -> None:
    """recover() on a crashed run (plain function, the stack's server): below the limit the same run goes
    back to AwaitingRetry; at the limit the registry flags the ingest and `lega`/system.error carries it.
    The run is made outside any deployment and without the `ingest` tag, so no worker or trigger joins in."""
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Crashed

    from flows.reconcile.recovery import recover
    from tasks.notify import TransportConfig
    from tasks.registry import open_registry

    @flow(name="ingest-ega-file")
    def stand_in() -> None: ...

    stable_id = "EGAF" + uuid.uuid4().hex[:11].upper()
    message = {"user": "heal-user", "filepath": "x.gpg", "stable_id": stable_id}
    conn, ch = _channel()
    capture = ch.queue_declare("", exclusive=True).method.queue
    ch.exchange_declare("lega", "topic", durable=True)
    ch.queue_bind(capture, "lega", "system.error")
    ch.queue_bind(capture, "cega", "#")
    registry = open_registry(stack.registry_dsn)
    try:
        with temporary_settings({PREFECT_API_URL: stack.api_url}), stack.client() as client:
            run = client.create_flow_run(stand_in, parameters={"message": message, "correlation_id": "corr-9"},
                                         state=Crashed(message="worker reported exit -9"), tags=["ega"])
            ingest = registry.begin_ingest("ega", f"{stable_id}|heal-user/x.gpg", flow_run_id=str(run.id))

            again = recover(f"prefect.flow-run.{run.id}", limit=3, registry=registry, client=client,
                            transport=TransportConfig(amqp_url=AMQP_URL))
            assert again.action == "rescheduled"
            assert client.read_flow_run(run.id).state.name == "AwaitingRetry"
            assert recover(str(run.id), limit=3, registry=registry, client=client).action == "nothing"

            client.set_flow_run_state(run.id, Crashed(message="worker reported exit -9"), force=True)
            out = recover(str(run.id), limit=1, registry=registry, client=client,
                          transport=TransportConfig(amqp_url=AMQP_URL))
        assert out.action == "review" and out.ingest_id == ingest.id
        flagged = [r for r in registry.for_review("ega") if r["id"] == ingest.id]
        assert len(flagged) == 1 and "limit is 1" in flagged[0]["review_reason"]
        time.sleep(0.5)
        got = []
        while True:
            method, props, body = ch.basic_get(capture, auto_ack=True)
            if method is None:
                break
            got.append((method.exchange, method.routing_key, json.loads(body), props.correlation_id))
        assert [(x, rk) for x, rk, _, _ in got] == [("lega", "system.error")], got  # never files.error
        body = got[0][2]
        assert body["stable_id"] == stable_id and body["state"] == "SYSTEM_ERROR" and body["needs_review"]
        assert got[0][3] == "corr-9"
    finally:
        registry.close()
        conn.close()


def test_a_dead_worker_is_noticed_by_heartbeat_and_its_run_completes(ops: Ops) -> None:
    """SIGKILL the worker and its flow-run process, as a machine dying would (the flow-run process lives in
    a session of its own: a dead worker alone leaves it running to the end). Nobody reports the run, which
    stays Running until the zombie automation sees its heartbeats stop; then it is Crashed, re-run, done."""
    stack = ops.stack
    spare = stack.start("worker-zombie", sys.executable, "flows/run.py", "worker", "--pool", "ingest", "--limit", "4")
    msg = _upload(stack, "heal-user", "zombie.bin", MID_PASS_UPLOAD)
    _publish([msg], ops.files_q)
    run = _wait(lambda: (_runs(stack, msg["stable_id"]) or [None])[0], 60, "the listener to create the run", 0.2)
    staging = stack.ingest_home / "staging" / "ega"

    def running_worker():
        if not [p for p in staging.glob(".ega-*.part") if p.stat().st_size > (4 << 20)]:
            return None
        return next(((w, p) for w in (ops.worker, spare) if (p := _flow_run_process(w, str(run.id)))), None)

    victim, flow_process = _wait(running_worker, 180, "the run to be mid-decrypt", 0.05)
    stop(victim, signal.SIGKILL)
    flow_process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    if victim is ops.worker:
        ops.worker = stack.start("worker-heal", sys.executable, "flows/run.py", "worker", "--pool", "ingest",
                                 "--limit", "4")
    try:
        with stack.client() as client:
            assert client.read_flow_run(run.id).state.type.value == "RUNNING"
        def completed():
            found = _runs(stack, msg["stable_id"])
            return found if found and found[0].state.is_completed() else None

        runs = _wait(completed, 420, "the zombie run to be crashed, re-run, done", 2)
        print(f"worker SIGKILLed mid-decrypt → Completed unattended in {time.monotonic() - killed_at:.1f} s")
        assert len(runs) == 1 and runs[0].state.is_completed() and runs[0].run_count == 2
        with stack.client() as client:
            crashed = [s for s in client.read_flow_run_states(run.id) if s.name == "Crashed"]
        assert crashed and "no heartbeat" in (crashed[0].message or "")
        objects, temporaries, staged = _vault_and_temporaries(stack, msg["stable_id"])
        assert len(objects) == 1 and temporaries == [] and staged == []
        _wait(lambda: ops.replies_for(msg["stable_id"], "files.completed"), 30, "files.completed")
    finally:
        stop(spare)


def test_reconcile_resubmits_a_crashed_cli_run_and_flags_what_it_cannot_rerun(ops: Ops) -> None:
    """A CLI run (no deployment) that crashed is resubmitted to its flow's deployment with the same parameters
    and completes; an ingest with no flow run at all is marked for review. Both are PREMIS events."""
    from prefect import flow
    from prefect.states import Crashed

    from tasks.registry import open_registry

    @flow(name="ingest-ega-file")
    def cli_run() -> None: ...

    stack = ops.stack
    msg = _upload(stack, "heal-user", "cli.bin", 1 << 20)
    key = f"{msg['stable_id']}|heal-user/{msg['filepath']}"
    with stack.client() as client:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: stack.api_url}):
            dead = client.create_flow_run(cli_run, parameters={"message": msg, "correlation_id": "cli-1"},
                                          state=Crashed(message="the CLI call was SIGKILLed"))
    registry = open_registry(stack.registry_dsn)
    try:
        stuck = registry.begin_ingest("ega", key, flow_run_id=str(dead.id))
        orphan = registry.begin_ingest("ega", f"{msg['stable_id']}-lost|heal-user/none.gpg")
        dry = json.loads(stack.run(sys.executable, "flows/run.py", "reconcile", "--dry-run",
                                   "--stuck-after-minutes", "0").stdout.strip().splitlines()[-1])
        mine = {a["subject"]: a for a in dry["actions"] if msg["stable_id"] in a["subject"]}
        assert mine[key]["kind"] == "resubmitted" and not mine[key].get("done")
        out = json.loads(stack.run(sys.executable, "flows/run.py", "reconcile", "--stuck-after-minutes", "0")
                         .stdout.strip().splitlines()[-1])
        mine = {a["subject"]: a for a in out["actions"] if msg["stable_id"] in a["subject"]}
        assert mine[key]["kind"] == "resubmitted" and mine[key]["done"]
        assert mine[orphan.natural_key]["kind"] == "review"
        runs = _wait(lambda: _run_done(stack, msg["stable_id"]), 240, "the resubmitted run to finish", 2)
        assert [r.state.type.value for r in runs] == ["COMPLETED"] and runs[0].parameters["message"] == msg
        assert registry.get_ingest("ega", key).state == "completed"
        assert [r["id"] for r in registry.for_review("ega") if r["id"] == orphan.id] == [orphan.id]
        events = [e for e in registry.events(stuck.id) if e["agent"] == "archive-ingest/reconcile"]
        assert len(events) == 1 and events[0]["event_type"] == "ingestion" and "resubmitted" in events[0]["detail"]
    finally:
        registry.close()
