"""What a killed APT run leaves, and how the next run finishes it (issue 13), as plain-function and CLI
tests: the stages run as the flow runs them up to the kill point, the run's registry connection closes
as a dead process's would, then the user's path (``run_bag``, the scanner) takes over."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import AptEnv
from test_apt_flow import ROOT, bag_members, object_rows, preserved, rows

pytestmark = [pytest.mark.integration, pytest.mark.prefect]


def run_until(env: AptEnv, tar: Path, last: str) -> int:
    """Put ``tar`` into receiving and run the stages in the flow's order through ``last``; returns the item id."""
    from flows.apt import steps
    from flows.apt.cli import choose_work_item

    cfg = env.config()
    try:
        _, wi, _ = choose_work_item(cfg, cfg.receiving.put(env.institution, tar))
        item = steps.start(cfg, wi, None)
        validation = steps.validate(cfg, item, steps.receive(cfg, item))
        reingest = steps.reingest_check(cfg, item, validation)
        order = [
            ("copy_to_staging", lambda: steps.copy_to_staging(cfg, item)),
            ("identify_formats", lambda: steps.identify_formats(cfg, item)),
            ("store", lambda: steps.store(cfg, item, reingest["storage_option"])),
            ("verify_storage", lambda: steps.verify_storage(cfg, item, reingest["storage_option"])),
            ("record", lambda: steps.record(cfg, item, validation, reingest)),
            ("cleanup", lambda: steps.cleanup(cfg, item, delete_tar=cfg.block.delete_after_ingest)),
            ("finish", lambda: steps.finish(cfg, item)),
        ]
        names = [n for n, _ in order]
        for name, stage in order[: names.index(last) + 1]:
            stage()
        return wi
    finally:
        cfg.close()  # as a killed process: the claim goes with the connection


def statuses() -> list[tuple[str, str, str]]:
    from tasks.notify import pending

    return [(n.routing_key, n.body["status"], n.id) for n in pending()]


def test_finish_then_die_the_rerun_sends_the_status_once(apt_env: AptEnv, tmp_path: Path) -> None:
    """Killed after finish-work-item, before notify-status: no apt.ingest.* ever went out."""
    from flows.apt.samples import build_bag
    from flows.apt.steps import status_message_id

    tar = build_bag(tmp_path, f"{apt_env.institution}.finish_then_die")
    wi = run_until(apt_env, tar, "finish")
    assert statuses() == []
    code, summary = apt_env.run(tar)  # the depositor (or operator) submits the same tar again
    assert code == 0, summary
    assert summary["work_item_id"] == wi and summary["status"] == "Success" and summary["status_sent"] == "success"
    assert "status message had never been sent" in summary["message"]
    # one message, with the id the dead run would have used (consumers drop a duplicate of it)
    assert statuses() == [("apt.ingest.success", "Success", status_message_id(wi, 1, "success"))]
    code, again = apt_env.run(tar)
    assert code == 0 and again["work_item_id"] == wi
    assert len(statuses()) == 1  # sent once, never again


def test_finish_then_die_the_flows_already_done_path_sends_the_status_once(apt_env: AptEnv, tmp_path: Path) -> None:
    """A recovered (re-run) deployed run takes the flow's "already done" path: it sends the status the dead
    run never sent, and a second re-run sends nothing more."""
    from flows.apt.flow import ingest_apt_bag
    from flows.apt.samples import build_bag

    tar = build_bag(tmp_path, f"{apt_env.institution}.flow_then_die")
    wi = run_until(apt_env, tar, "finish")
    for _ in range(2):
        state = ingest_apt_bag(work_item_id=wi, config_block=apt_env.name, return_state=True)
        assert state.is_completed()
    assert [s[:2] for s in statuses()] == [("apt.ingest.success", "Success")]


def test_finish_then_die_the_scanner_sends_the_status(apt_env: AptEnv, tmp_path: Path) -> None:
    from flows.apt.samples import build_bag
    from flows.apt.scan import scan_receiving_buckets

    name = apt_env.save("-keep", delete_after_ingest=False)  # the tar stays in receiving for the scanner
    tar = build_bag(tmp_path, f"{apt_env.institution}.scan_then_die")
    cfg = apt_env.config(name)
    try:
        from flows.apt import steps
        from flows.apt.cli import choose_work_item

        _, wi, _ = choose_work_item(cfg, cfg.receiving.put(apt_env.institution, tar))
        item = steps.start(cfg, wi, None)
        validation = steps.validate(cfg, item, steps.receive(cfg, item))
        reingest = steps.reingest_check(cfg, item, validation)
        steps.copy_to_staging(cfg, item)
        steps.identify_formats(cfg, item)
        steps.store(cfg, item, reingest["storage_option"])
        steps.verify_storage(cfg, item, reingest["storage_option"])
        steps.record(cfg, item, validation, reingest)
        steps.cleanup(cfg, item, delete_tar=False)
        steps.finish(cfg, item)
    finally:
        cfg.close()
    result = scan_receiving_buckets(config_block=name, institutions=[apt_env.institution])
    assert result["counts"] == {"resend-status": 1}
    assert [s[0] for s in statuses()] == ["apt.ingest.success"]
    assert scan_receiving_buckets(config_block=name, institutions=[apt_env.institution])["counts"] == {"skip": 1}
    assert len(statuses()) == 1


def test_killed_after_cleanup_the_rerun_keeps_the_record_true(apt_env: AptEnv, tmp_path: Path) -> None:
    """Killed right after cleanup deleted the tar and the interim rows: the re-run must not record an empty
    version (which marked every stored file missing_since_work_item) and must report what was stored."""
    from flows.apt.samples import build_bag

    tar = build_bag(tmp_path, f"{apt_env.institution}.after_cleanup")
    keep = preserved(bag_members(tar))
    wi = run_until(apt_env, tar, "cleanup")
    assert not (apt_env.receiving / apt_env.institution / tar.name).exists()  # cleanup deleted the tar
    assert rows(apt_env, "SELECT count(*) AS n FROM apt_ingest_files WHERE work_item_id = %s", wi)[0]["n"] == 0

    code, summary = apt_env.run(tar)  # puts the same upload back (same etag) and resumes the work item
    assert code == 0, summary
    assert summary["work_item_id"] == wi and summary["attempt"] == 2 and summary["status"] == "Success"
    _, files = object_rows(apt_env, f"{apt_env.institution}/{apt_env.institution}.after_cleanup")
    assert set(files) == set(keep)
    assert all(f["missing_since_work_item"] is None and f["state"] == "A" for f in files.values())
    assert summary["file_count"] == len(keep)
    assert summary["recorded"] == {"stored_files": len(keep), "absent_files": 0, "first_ingest": True}
    assert summary["events"]["ingestion"] == 1 + len(keep)  # the first run's events, not a second set
    assert not (apt_env.receiving / apt_env.institution / tar.name).exists()  # the re-put tar is gone too
    assert [s[0] for s in statuses()] == ["apt.ingest.success"]
    assert apt_env.staging_files() == []


KILLED_WRITER = r"""
import sys, time
from tasks.staging import StagingArea
from tasks.vault import FilesystemVault

staging, name, vault_root, key = sys.argv[1:5]
class Endless:
    def __init__(self):
        self.sent = 0
    def read(self, n=-1):
        if self.sent:
            print("ready", flush=True)
            time.sleep(600)
        self.sent += 1
        return b"x" * 65536
with StagingArea(staging).atomic_writer(name) as out:
    out.write(b"half a file")
    FilesystemVault(vault_root).put_stream(key, Endless(), size_hint=1 << 30)
"""


def killed_writer(staging: Path, name: str, vault_root: Path, key: str) -> None:
    """A real staging write and a real vault put, SIGKILLed mid-way: their temporaries stay behind."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(staging), name, str(vault_root), key],
                            cwd=str(ROOT), stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == b"ready"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_a_rerun_removes_what_its_killed_attempt_left_and_nothing_else(apt_env: AptEnv, tmp_path: Path) -> None:
    from flows.apt import records
    from flows.apt.samples import build_bag

    tar = build_bag(tmp_path, f"{apt_env.institution}.leftovers")
    wi = run_until(apt_env, tar, "identify_formats")
    with apt_env.registry() as reg:
        victim = next(f for f in records.ingest_files(reg, wi, needs_save=True) if f["path"].startswith("data/"))
    va = apt_env.target_dir("standard-va")
    # the dead attempt: killed while staging one file and storing another (real temporaries) ...
    killed_writer(apt_env.staging, f"{wi}/{victim['uuid']}-late", va, str(victim["uuid"]))
    # ... while another bag's store, still alive, has its own temporary in the same target
    killed_writer(apt_env.staging, "other/x", va, "0f0f0f0f-0000-4000-8000-000000000000")
    temps = sorted(p.name for p in va.iterdir() if p.name.startswith(".vault-tmp-"))
    assert len(temps) == 2
    assert [p.name for p in (apt_env.staging / str(wi)).iterdir() if p.name.endswith(".part")]

    code, summary = apt_env.run(tar)
    assert code == 0, summary
    left = sorted(p.name for p in va.iterdir() if p.name.startswith(".vault-tmp-"))
    assert left == [t for t in temps if t.endswith("0f0f0f0f-0000-4000-8000-000000000000")]  # not ours: kept
    assert not (apt_env.staging / str(wi)).exists()
    assert (va / str(victim["uuid"])).stat().st_size == victim["size"]
