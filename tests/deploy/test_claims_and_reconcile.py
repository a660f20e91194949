"""The self-healing building blocks as plain functions against the real PostgreSQL and moto S3:
the per-object claim, the sweeps of a dead attempt's leftovers, and reconcile's temporaries."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.reconcile import steps
from tasks.claims import (
    claim,
    is_claimed,
    lock_id,
    owned_name,
    release,
    sweep_owned_staging,
    sweep_vault_temporaries,
)
from tasks.registry import Registry, open_registry
from tasks.staging import StagingArea
from tasks.vault import TEMP_PREFIX, FilesystemVault, S3Vault

pytestmark = [pytest.mark.integration]


@pytest.fixture
def registry(pg_dsn: str):
    r = open_registry(pg_dsn)
    yield r
    r.close()


def test_lock_ids_are_stable_and_distinct() -> None:
    assert lock_id("ega", "EGAF1|u/f") == lock_id("ega", "EGAF1|u/f")
    assert lock_id("ega", "EGAF1|u/f") != lock_id("apt", "EGAF1|u/f")
    assert -(2**63) <= lock_id("nrao", "x") < 2**63


def test_a_second_run_waits_for_the_first_and_a_dead_holder_blocks_nobody(pg_dsn: str, unique: str) -> None:
    first, second = Registry(pg_dsn), Registry(pg_dsn)
    try:
        held = claim(first, "ega", unique)
        assert is_claimed(second, "ega", unique)
        with pytest.raises(TimeoutError, match="held by another run"):
            claim(second, "ega", unique, timeout=0.5)
        claim(first, "ega", unique)  # a retried task of the same run takes it again at once
        first.close()  # the run ends: its connection, and with it the lock, goes
        t0 = time.monotonic()
        claim(second, "ega", unique, timeout=5)
        assert time.monotonic() - t0 < 1
        release(second, held)
        assert not is_claimed(first, "ega", unique)
    finally:
        first.close()
        second.close()
    # A SIGKILLed holder cannot release anything: the server drops its lock with its connection.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from tasks.registry import Registry; from tasks.claims import claim\n"
        f"r = Registry({pg_dsn!r}); claim(r, 'ega', {unique!r} + '-k'); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout.readline().strip() == "held"
        waiter = Registry(pg_dsn)
        with pytest.raises(TimeoutError):
            claim(waiter, "ega", unique + "-k", timeout=0.3)
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        claim(waiter, "ega", unique + "-k", timeout=10)
        waiter.close()
    finally:
        holder.kill()
        holder.wait()


def test_sweeps_remove_only_this_objects_leftovers(tmp_path: Path) -> None:
    staging = StagingArea(tmp_path / "staging")
    mine = owned_name("ega", 5, "a.c4gh")
    for name in (mine, f".{mine}.1234abcd.part", owned_name("ega", 55, "b.c4gh"), owned_name("ega", 6, "c.c4gh"),
                 "unrelated.c4gh"):
        (staging.root / name).write_bytes(b"x")
    assert sorted(sweep_owned_staging(staging, "ega", 5)) == sorted([mine, f".{mine}.1234abcd.part"])
    assert sorted(p.name for p in staging.root.iterdir()) == sorted(
        [owned_name("ega", 55, "b.c4gh"), owned_name("ega", 6, "c.c4gh"), "unrelated.c4gh"])

    vault = FilesystemVault(tmp_path / "vault")
    (vault.root / "ega" / "EGAF1").mkdir(parents=True)
    (vault.root / "ega" / "EGAF10").mkdir(parents=True)
    (vault.root / "ega" / "EGAF1" / f"{TEMP_PREFIX}dead").write_bytes(b"half")
    (vault.root / "ega" / "EGAF1" / "sha256-x.c4gh").write_bytes(b"object")
    (vault.root / "ega" / "EGAF10" / f"{TEMP_PREFIX}other").write_bytes(b"another object's")
    assert sweep_vault_temporaries(vault, "ega/EGAF1") == [f"ega/EGAF1/{TEMP_PREFIX}dead"]
    assert (vault.root / "ega" / "EGAF1" / "sha256-x.c4gh").exists()
    assert (vault.root / "ega" / "EGAF10" / f"{TEMP_PREFIX}other").exists()


def test_s3_sweep_aborts_only_the_objects_incomplete_uploads(s3_endpoint: str, s3_bucket: str,
                                                             registry: Registry, unique: str) -> None:
    vault = S3Vault(s3_bucket, endpoint_url=s3_endpoint, prefix="archive")
    c = vault.client
    mine = c.create_multipart_upload(Bucket=s3_bucket, Key="archive/ega/EGAF1/x.c4gh")["UploadId"]
    other = c.create_multipart_upload(Bucket=s3_bucket, Key="archive/ega/EGAF10/y.c4gh")["UploadId"]
    removed = sweep_vault_temporaries(vault, "ega/EGAF1")
    assert len(removed) == 1 and "EGAF1/x.c4gh" in removed[0]
    left = {u["UploadId"] for u in vault.incomplete_uploads()}
    assert mine not in left and other in left
    # reconcile takes the rest once it is old enough (moto reports every upload as initiated in 2010,
    # so only "old" can be shown here; the age cut itself is the filesystem test's)
    own = steps.reconcile_ingest(registry, f"reconcile-s3-{unique}")
    report = steps.Report(dry_run=False)
    steps.sweep_vault(registry, vault, older_than=3600, dry_run=False, report=report, own=own)
    assert [a.subject.split("?")[0] for a in report.actions] == [f"s3://{s3_bucket}/archive/ega/EGAF10/y.c4gh"]
    assert vault.incomplete_uploads() == []
    assert [e["event_type"] for e in registry.events(own.id)] == ["deletion"]


def _old(path: Path, hours: float = 10) -> None:
    t = time.time() - hours * 3600
    os.utime(path, (t, t))


def test_reconcile_removes_old_unowned_temporaries_and_records_events(registry: Registry, tmp_path: Path,
                                                                      unique: str) -> None:
    ega = tmp_path / "staging" / "ega"
    ega.mkdir(parents=True)
    live = registry.begin_ingest("ega", f"{unique}|live")
    dead = registry.begin_ingest("ega", f"{unique}|dead")
    files = {
        "part": ega / f".{owned_name('ega', dead.id, 'a.c4gh')}.00ff00ff.part",
        "staged": ega / owned_name("ega", dead.id, "b.c4gh"),
        "legacy": ega / "0b5e5a8c-uuid.c4gh",
        "young": ega / owned_name("ega", dead.id, "c.c4gh"),
        "claimed": ega / owned_name("ega", live.id, "d.c4gh"),
    }
    for name, path in files.items():
        path.write_bytes(b"x" * 10)
        if name != "young":
            _old(path)
    vault = FilesystemVault(tmp_path / "vault")
    (vault.root / "apt").mkdir()
    tmp_old, tmp_new = vault.root / "apt" / f"{TEMP_PREFIX}old", vault.root / "apt" / f"{TEMP_PREFIX}new"
    tmp_old.write_bytes(b"x")
    tmp_new.write_bytes(b"x")
    _old(tmp_old)
    holder = Registry(registry.dsn)
    claim(holder, "ega", f"{unique}|live")
    try:
        dry = steps.Report(dry_run=True)
        steps.sweep_staging_files(registry, ega, "ega", older_than=3600, dry_run=True, report=dry, own=None)
        steps.sweep_vault(registry, vault, older_than=3600, dry_run=True, report=dry, own=None)
        assert dry.counts() == {"removed": 4} and all(p.exists() for p in files.values()) and tmp_old.exists()

        own = steps.reconcile_ingest(registry, f"reconcile-{unique}")
        report = steps.Report(dry_run=False)
        steps.sweep_staging_files(registry, ega, "ega", older_than=3600, dry_run=False, report=report, own=own)
        steps.sweep_vault(registry, vault, older_than=3600, dry_run=False, report=report, own=own)
    finally:
        holder.close()
    assert {Path(a.subject).name for a in report.actions} == {
        files["part"].name, files["staged"].name, files["legacy"].name, tmp_old.name}
    assert all(a.done for a in report.actions)
    assert not files["part"].exists() and not files["staged"].exists() and not files["legacy"].exists()
    assert files["young"].exists() and files["claimed"].exists() and tmp_new.exists() and not tmp_old.exists()
    events = registry.events(own.id)
    assert len(events) == 4 and {e["event_type"] for e in events} == {"deletion"}
    assert all(e["agent"] == steps.AGENT and e["outcome"] == "success" for e in events)


def test_reconcile_removes_interim_apt_data_of_finished_work_items_only(registry: Registry, tmp_path: Path,
                                                                        unique: str) -> None:
    root = tmp_path / "staging" / "apt"
    ids = {}
    for status, kind in (("Success", None), ("Failed", "system"), ("Failed", "user"), ("Started", None)):
        row = registry.execute(
            "INSERT INTO apt_work_items (institution, bag_name, tar_name, etag, bucket, object_key, object_identifier,"
            " status, error_kind) VALUES ('test.edu', %s, 'b.tar', 'e', 'r', 'b.tar', 'test.edu/b', %s, %s)"
            " RETURNING id", (f"bag-{unique}-{status}-{kind}", status, kind))[0]
        ids[(status, kind)] = row["id"]
        d = root / str(row["id"])
        d.mkdir(parents=True)
        (d / "f").write_bytes(b"x")
        _old(d / "f")
        _old(d)
        registry.execute("INSERT INTO apt_ingest_files (work_item_id, path, file_type, size, checksums)"
                         " VALUES (%s, 'data/f', 'payload_file', 1, '{}')", (row["id"],))
    own = steps.reconcile_ingest(registry, f"reconcile-apt-{unique}")
    report = steps.Report(dry_run=False)
    steps.sweep_apt_interim(registry, root, older_than=3600, dry_run=False, report=report, own=own)
    gone = {ids[("Success", None)], ids[("Failed", "user")]}
    assert {int(Path(a.subject).name) for a in report.actions} == gone
    for key, item in ids.items():
        rows = registry.execute("SELECT count(*) AS n FROM apt_ingest_files WHERE work_item_id = %s", (item,))
        assert (root / str(item)).exists() == (item not in gone), key
        assert rows[0]["n"] == (0 if item in gone else 1), key


def test_orphans_are_recorded_once_and_reported_until_resolved(registry: Registry, unique: str) -> None:
    location = f"ngas://ngas.example/{unique}.fits?version=1"
    steps.record_orphan(registry, "nrao", location, "archived by a failed attempt; product never recorded", size=7)
    steps.record_orphan(registry, "nrao", location, "archived by a failed attempt; product never recorded")
    own = steps.reconcile_ingest(registry, f"reconcile-orphans-{unique}")
    report = steps.Report(dry_run=False)
    steps.report_orphans(registry, report, own, dry_run=False)
    mine = [a for a in report.actions if a.subject == location]
    assert len(mine) == 1 and mine[0].kind == "orphan" and mine[0].size == 7
    registry.execute("UPDATE orphans SET resolved_at = now(), resolution = 'kept' WHERE location = %s", (location,))
    report = steps.Report(dry_run=False)
    steps.report_orphans(registry, report, own, dry_run=False)
    assert not [a for a in report.actions if a.subject == location]
