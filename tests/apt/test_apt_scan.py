"""The receiving-bucket scanner: which uploads become work items, which are skipped, refused,
cancelled or left waiting; and the scanner flow starting ingests in-process or as deployment runs."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import AptEnv
from corpus import Case

from flows.apt.receiving import LocalReceiving, ReceivedObject, local_etag

pytestmark = [pytest.mark.integration]


def upload(env: AptEnv, src: Path, name: str | None = None, *, mtime_ns: int | None = None) -> Path:
    """Drop a tar into the institution's receiving directory as a depositor would."""
    dest = env.receiving / env.institution / (name or src.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    if mtime_ns is not None:
        os.utime(dest, ns=(mtime_ns, mtime_ns))
    return dest


def decide_all(env: AptEnv, name: str | None = None):
    from flows.apt.scan import plan_scan

    cfg = env.config(name)
    try:
        return {d.key: d for d in plan_scan(cfg, [env.institution])}
    finally:
        cfg.close()


def item(env: AptEnv, work_item_id: int) -> dict:
    with env.registry() as reg:
        return reg.execute("SELECT * FROM apt_work_items WHERE id = %s", (work_item_id,))[0]


def set_item(env: AptEnv, work_item_id: int, **fields) -> None:
    from flows.apt.records import update_work_item

    with env.registry() as reg:
        update_work_item(reg, work_item_id, **fields)


def test_local_etag_is_stable_for_a_copy_and_changes_with_a_new_upload(tmp_path: Path) -> None:
    src = tmp_path / "a.tar"
    src.write_bytes(b"x" * 100)
    os.utime(src, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    receiving = LocalReceiving(tmp_path / "receiving")
    first = receiving.put("test.edu", src)
    assert first.etag == local_etag(100, 1_700_000_000_000_000_000)
    assert receiving.put("test.edu", src) == first  # same file again: same upload
    os.utime(src, ns=(1_700_000_000_000_000_001,) * 2)
    assert receiving.put("test.edu", src).etag != first.etag
    assert [o.key for o in receiving.list("test.edu")] == ["a.tar"]  # hidden temp names never listed


@pytest.mark.prefect
def test_scanner_rules(apt_env: AptEnv, apt_corpus: dict[str, Case]) -> None:
    from flows.apt.scan import INGEST, RESEND, SKIP, WAIT

    good = apt_corpus["good_aptrust"].tar
    bag = f"{apt_env.institution}.scan_rules.tar"
    upload(apt_env, good, bag, mtime_ns=1_700_000_000_000_000_000)
    upload(apt_env, good, "notes.txt")
    upload(apt_env, good, "nested/dir.tar")
    upload(apt_env, good, f"{apt_env.institution}.parts.b01.of02.tar")
    d = decide_all(apt_env)
    assert d["notes.txt"].action == SKIP and d["notes.txt"].reason == "not a .tar file"
    assert d["nested/dir.tar"].action == SKIP and d["nested/dir.tar"].reason == "key contains '/'"
    multipart = d[f"{apt_env.institution}.parts.b01.of02.tar"]  # a part is a bag of its own (issue 14)
    assert multipart.action == INGEST and item(apt_env, multipart.work_item_id)["status"] == "Pending"
    assert item(apt_env, multipart.work_item_id)["bag_name"] == f"{apt_env.institution}.parts"
    first = d[bag]
    assert first.action == INGEST and item(apt_env, first.work_item_id)["status"] == "Pending"

    # unfinished → skip; failed → skip; both for the very same upload (institution, name, etag)
    again = decide_all(apt_env)
    assert again[bag].action == SKIP and "Pending" in again[bag].reason
    assert again[f"{apt_env.institution}.parts.b01.of02.tar"].action == SKIP
    set_item(apt_env, first.work_item_id, status="Failed", note="boom")
    assert decide_all(apt_env)[bag].action == SKIP

    # succeeded with the object active → skip; object deleted since → ingest again (same etag)
    set_item(apt_env, first.work_item_id, status="Success", status_sent="success")
    identifier = f"{apt_env.institution}/{apt_env.institution}.scan_rules"
    with apt_env.registry() as reg:
        reg.execute("INSERT INTO apt_objects (identifier, institution, bag_name) VALUES (%s, %s, %s)",
                    (identifier, apt_env.institution, f"{apt_env.institution}.scan_rules"))
    skipped = decide_all(apt_env)[bag]
    assert skipped.action == SKIP and "object is active" in skipped.reason
    # ... unless its run died between finishing and telling (issue 13): then the status goes out now
    set_item(apt_env, first.work_item_id, status_sent=None)
    resend = decide_all(apt_env)[bag]
    assert resend.action == RESEND and resend.work_item_id == first.work_item_id
    set_item(apt_env, first.work_item_id, status_sent="success")
    with apt_env.registry() as reg:
        reg.execute("UPDATE apt_objects SET state = 'D' WHERE identifier = %s", (identifier,))
    reingest = decide_all(apt_env)[bag]
    assert reingest.action == INGEST and reingest.reason == "object was deleted: ingest again"
    assert reingest.work_item_id != first.work_item_id and reingest.etag == first.etag

    # a newer upload cancels the older in-flight item ...
    set_item(apt_env, reingest.work_item_id, status="Started", stage="Copy To Staging")
    upload(apt_env, good, bag, mtime_ns=1_700_000_000_000_000_999)
    newer = decide_all(apt_env)[bag]
    assert newer.action == INGEST and newer.cancelled == [reingest.work_item_id]
    older = item(apt_env, reingest.work_item_id)
    assert older["status"] == "Cancelled" and newer.etag in older["note"]
    # ... unless the older one has reached Store: then the newest upload waits
    set_item(apt_env, newer.work_item_id, status="Started", stage="Store", reached_store=True)
    upload(apt_env, good, bag, mtime_ns=1_700_000_000_000_000_555)
    waiting = decide_all(apt_env)[bag]
    assert waiting.action == WAIT and waiting.work_item_id is None
    assert item(apt_env, newer.work_item_id)["status"] == "Started"

    # another part of a multipart bag is another upload key, never a newer upload of part 1
    set_item(apt_env, multipart.work_item_id, status="Started", stage="Copy To Staging")
    upload(apt_env, good, f"{apt_env.institution}.parts.b02.of02.tar")
    part2 = decide_all(apt_env)[f"{apt_env.institution}.parts.b02.of02.tar"]
    assert part2.action == INGEST and part2.cancelled == []
    assert item(apt_env, multipart.work_item_id)["status"] == "Started"


@pytest.mark.prefect
def test_oversize_bag_is_refused_with_a_note(apt_env: AptEnv, apt_corpus: dict[str, Case]) -> None:
    from flows.apt.scan import REFUSE, SKIP

    name = apt_env.save("-small", max_bag_size=1000)
    bag = f"{apt_env.institution}.big.tar"
    upload(apt_env, apt_corpus["good_aptrust"].tar, bag)
    size = (apt_env.receiving / apt_env.institution / bag).stat().st_size
    refused = decide_all(apt_env, name)[bag]
    assert refused.action == REFUSE
    assert refused.reason == f"Bag is {size} bytes, which exceeds the maximum bag size of 1000 bytes"
    row = item(apt_env, refused.work_item_id)
    assert row["status"] == "Failed" and row["note"] == refused.reason
    assert decide_all(apt_env, name)[bag].action == SKIP  # refused once, not every scan


@pytest.mark.prefect
def test_scan_flow_ingests_new_uploads_in_process(apt_env: AptEnv, tmp_path: Path) -> None:
    from flows.apt.cli import run_scan
    from flows.apt.samples import build_bag

    good = build_bag(tmp_path, f"{apt_env.institution}.scanned_good")
    bad = build_bag(tmp_path, f"{apt_env.institution}.scanned_bad", access="Hands Off!")
    for tar in (good, bad):
        upload(apt_env, tar)
    upload(apt_env, good, "readme.md")
    result = run_scan(config_block=apt_env.name, institutions=[apt_env.institution])
    assert result["counts"] == {"ingest": 2, "skip": 1}
    decisions = {d["key"]: d for d in result["decisions"]}
    states = {s["work_item_id"]: s["state"] for s in result["started"]}
    ok = item(apt_env, decisions[good.name]["work_item_id"])
    assert (ok["status"], ok["stage"], states[ok["id"]]) == ("Success", "Cleanup", "COMPLETED")
    failed = item(apt_env, decisions[bad.name]["work_item_id"])
    assert (failed["status"], failed["stage"], states[failed["id"]]) == ("Failed", "Validate", "FAILED")
    assert failed["note"] == "In file aptrust-info.txt, tag Access has illegal value 'Hands Off!'"
    assert failed["delete_from_receiving"] and ok["delete_from_receiving"]
    assert sorted(p.name for p in (apt_env.receiving / apt_env.institution).iterdir()) == ["readme.md"]
    again = run_scan(config_block=apt_env.name, institutions=[apt_env.institution])
    assert again["counts"] == {"skip": 1} and again["started"] == []


@pytest.mark.prefect
def test_scan_flow_starts_deployment_runs_with_idempotency_keys(apt_env: AptEnv, apt_corpus: dict[str, Case],
                                                               unique: str) -> None:
    from prefect.client.orchestration import get_client

    from flows.apt.flow import ingest_apt_bag
    from flows.apt.scan import idempotency_key, plan_scan, scan_receiving_buckets, start_deployment_run

    deployment = f"apt-{unique}"
    ingest_apt_bag.to_deployment(name=deployment).apply()
    name = apt_env.save("-deploy", deployment_name=f"ingest-apt-bag/{deployment}")
    case = apt_corpus["good_aptrust"]
    upload(apt_env, case.tar, f"{apt_env.institution}.deployed.tar")
    result = scan_receiving_buckets(config_block=name, institutions=[apt_env.institution])
    assert result["counts"] == {"ingest": 1}
    started = result["started"][0]
    row = item(apt_env, started["work_item_id"])
    assert str(row["flow_run_id"]) == started["flow_run_id"] and row["status"] == "Pending"
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(started["flow_run_id"])
    assert run.parameters == {"work_item_id": row["id"], "config_block": name}
    assert run.idempotency_key == idempotency_key(row["id"], row["etag"])
    # named after its bag from Scheduled on, not a random name then apt-wi<id>
    assert run.name == "apt-" + row["object_identifier"].replace("/", ".")
    # a scanner retried after a crash gets the same run back, not a second ingest
    from flows.apt.scan import ScanDecision

    cfg = apt_env.config(name)
    try:
        again = start_deployment_run(cfg, ScanDecision(row["institution"], row["object_key"], row["etag"],
                                                       row["size"], "ingest", "", row["id"]), name)
        assert again == started["flow_run_id"]
        assert all(d.action == "skip" for d in plan_scan(cfg, [apt_env.institution]))
    finally:
        cfg.close()


@pytest.mark.prefect
def test_a_cancelled_item_stops_at_its_next_stage_and_cleans_up(apt_env: AptEnv, tmp_path: Path) -> None:
    from flows.apt import records, steps
    from flows.apt.flow import ingest_apt_bag
    from flows.apt.samples import build_bag

    tar = upload(apt_env, build_bag(tmp_path, f"{apt_env.institution}.cancel_me"))
    cfg = apt_env.config()
    try:
        obj = ReceivedObject(apt_env.institution, str(tar.parent), tar.name,
                             local_etag(tar.stat().st_size, tar.stat().st_mtime_ns), tar.stat().st_size)
        from flows.apt.scan import consider

        wi = consider(cfg, obj).work_item_id
        it = steps.start(cfg, wi, None)
        steps.validate(cfg, it, steps.receive(cfg, it))  # a run got this far ...
        with cfg.registry.transaction() as conn:  # ... when a newer upload superseded it
            records.cancel_items(conn, [wi], "Cancelled: superseded by a newer upload (etag x)")
    finally:
        cfg.close()
    state = ingest_apt_bag(work_item_id=wi, config_block=apt_env.name, return_state=True)
    assert state.is_cancelled()
    row = item(apt_env, wi)
    assert row["status"] == "Cancelled" and row["stage"] == "Validate"
    assert apt_env.staging_files() == []
    assert tar.exists()  # a cancelled item never deletes the upload
