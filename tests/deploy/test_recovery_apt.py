"""A deployed APT bag ingest SIGKILLed in its store step completes unattended: the worker reports the
run Crashed, the recover automation puts the same run back to AwaitingRetry, a worker runs it again,
and the re-run sweeps the dead put's vault temporaries, resumes from the registry and finishes. One
stored copy per file on every preservation target, one terminal ``apt.ingest.*`` status, nothing
left in staging, the targets' temporaries or the interim rows.

The run is started as in production: the scanner (``apt-scan``) finds the tar in receiving and
starts a run of the ``apt-bag`` deployment from prefect.yaml. Nothing is throttled: the bag holds
one 64 MiB file, and the kill comes when a ``.vault-tmp-*`` file of it appears on a target."""
from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.apt.corpus import make_bag, tar_bag
from tests.conftest import AMQP_URL
from tests.deploy.conftest import Stack, stop
from tests.deploy.test_operations import _channel, _wait
from tests.deploy.test_recovery import _flow_run_process

pytestmark = [pytest.mark.integration, pytest.mark.deploy]

BIG = 64 << 20
TARGETS = ("standard-va", "standard-or")  # the Standard storage option's two copies
TEMP_PREFIX = ".vault-tmp-"


class AptHeal:
    """Block documents of one APT configuration on the stack, and where its bytes go."""

    def __init__(self, stack: Stack, token: str) -> None:
        self.stack = stack
        self.name = f"apt-heal-{token}"
        self.institution = f"heal{token}.edu"
        base = stack.ingest_home / "apt-heal" / token
        self.receiving = base / "receiving"
        self.staging = base / "staging"
        self.targets = {t: base / "vault" / t for t in TARGETS}

    def save(self) -> None:
        from prefect.settings import PREFECT_API_URL, temporary_settings
        from pydantic import SecretStr

        from blocks.apt import AptBlock
        from blocks.broker import BrokerBlock
        from blocks.registry import RegistryBlock

        (self.receiving / self.institution).mkdir(parents=True)
        with temporary_settings({PREFECT_API_URL: self.stack.api_url}):
            AptBlock(receiving_root=str(self.receiving), institutions=[self.institution],
                     staging_root=str(self.staging), target_roots={t: str(p) for t, p in self.targets.items()},
                     deployment_name="ingest-apt-bag/apt-bag").save(self.name, overwrite=True)
            RegistryBlock(dsn=SecretStr(self.stack.registry_dsn)).save(self.name, overwrite=True)
            BrokerBlock(amqp_url=SecretStr(AMQP_URL)).save(self.name, overwrite=True)

    def temporaries(self) -> list[Path]:
        return [p for d in self.targets.values() if d.is_dir() for p in d.rglob(f"{TEMP_PREFIX}*")]

    def stored(self, target: str) -> list[str]:
        d = self.targets[target]
        return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()
                      and not p.name.startswith(TEMP_PREFIX)) if d.is_dir() else []


@pytest.fixture(scope="module")
def apt_heal(stack: Stack):
    token = uuid.uuid4().hex[:8]
    heal = AptHeal(stack, token)
    heal.save()
    conn, ch = _channel()
    ch.exchange_declare("apt", "topic", durable=True)  # the status exchange a subscriber binds to
    heal.capture = f"apt-status-{token}"
    ch.queue_declare(heal.capture, durable=True)
    ch.queue_bind(heal.capture, "apt", "apt.ingest.#")
    conn.close()
    assert not stack.live_workers(), [w.args for w in stack.live_workers()]
    heal.worker = stack.start("worker-apt-heal", sys.executable, "flows/run.py", "worker", "--pool", "ingest", "--limit", "2")
    try:
        yield heal
    finally:
        stop(heal.worker)
        conn, ch = _channel()
        ch.queue_delete(heal.capture)
        conn.close()


def _statuses(queue: str) -> list[tuple[str, dict]]:
    conn, ch = _channel()
    got = []
    while True:
        method, _, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            break
        got.append((method.routing_key, json.loads(body)))
    conn.close()
    return got


def _bag(heal: AptHeal, scratch: Path) -> Path:
    """A valid APTrust bag: one big file (the one caught mid-store) and a small one, tarred into receiving."""
    bag_name = f"{heal.institution}.killed_in_store"
    big = scratch / "big.bin"
    with open(big, "wb") as fh:
        fh.writelines(os.urandom(1 << 20) for _ in range(BIG >> 20))
    payload = {"big.bin": big.read_bytes(), "notes.txt": b"a small file beside it\n"}
    bag_dir = make_bag(scratch / "bags", bag_name, payload=payload)
    big.unlink()
    return tar_bag(bag_dir, heal.receiving / heal.institution / f"{bag_name}.tar")


def test_sigkilled_apt_run_in_store_completes_unattended(apt_heal: AptHeal, tmp_path: Path) -> None:
    stack, heal = apt_heal.stack, apt_heal
    _bag(heal, tmp_path)
    scan = stack.run(sys.executable, "flows/run.py", "apt-scan", "--config", heal.name)
    started = json.loads(scan.stdout.strip().splitlines()[-1])["started"]
    assert len(started) == 1, scan.stdout
    run_id, work_item_id = started[0]["flow_run_id"], started[0]["work_item_id"]

    def storing():
        return _flow_run_process(heal.worker, run_id) if heal.temporaries() else None

    victim = _wait(storing, 300, "the run to be mid-store", 0.01)
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    assert heal.temporaries(), "the kill came after the store step's puts"

    def rerun_done():
        with stack.client() as client:
            run = client.read_flow_run(run_id)
        return run if run.run_count >= 2 and run.state.is_final() else None

    run = _wait(rerun_done, 300, "the crashed run to be re-run and finish", 1)
    print(f"SIGKILL mid-store → Completed unattended in {time.monotonic() - killed_at:.1f} s")
    assert run.state.is_completed(), run.state
    assert run.run_count == 2
    with stack.client() as client:
        states = [s.name for s in client.read_flow_run_states(run.id)]
    assert "Crashed" in states and "AwaitingRetry" in states

    from flows.outcome import run_name
    from tasks.registry import open_registry

    registry = open_registry(stack.registry_dsn)
    try:
        item = registry.execute("SELECT * FROM apt_work_items WHERE id = %s", (work_item_id,))[0]
        files = registry.execute(
            "SELECT f.id, f.uuid::text AS uuid, f.path FROM apt_files f JOIN apt_objects o ON o.id = f.object_id"
            " WHERE o.identifier = %s AND f.state = 'A'", (item["object_identifier"],))
        copies = registry.execute(
            "SELECT target, count(*) AS n FROM apt_storage_records WHERE file_id = ANY(%s) GROUP BY target",
            ([f["id"] for f in files],))
        interim = registry.execute("SELECT count(*) AS n FROM apt_ingest_files WHERE work_item_id = %s",
                                   (work_item_id,))[0]["n"]
    finally:
        registry.close()
    assert item["status"] == "Success" and item["attempt"] == 2, item
    assert run.name == run_name("apt", item["object_identifier"])  # one run, its name kept across attempts
    assert "data/big.bin" in {f["path"] for f in files}
    for target in TARGETS:  # one copy of every file on every target, named by the file's UUID
        assert heal.stored(target) == sorted(f["uuid"] for f in files), target
    assert {c["target"]: c["n"] for c in copies} == {t: len(files) for t in TARGETS}
    assert heal.temporaries() == []
    staged = [p for p in heal.staging.rglob("*") if p.is_file()] if heal.staging.exists() else []
    assert staged == [] and interim == 0
    assert not (heal.receiving / heal.institution / f"{heal.institution}.killed_in_store.tar").exists()
    sent = _wait(lambda: _statuses(heal.capture), 30, "the terminal status", 0.2)
    time.sleep(1)
    sent += _statuses(heal.capture)
    assert [rk for rk, _ in sent] == ["apt.ingest.success"], sent
    assert sent[0][1]["work_item_id"] == work_item_id and sent[0][1]["status"] == "Success"
