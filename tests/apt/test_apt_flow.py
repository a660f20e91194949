"""APT ingest end to end through the CLI handler and the flow: tarred bags in, verified copies
on every target out, rows and PREMIS events in a real PostgreSQL."""
from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
from conftest import AptEnv
from corpus import Case

pytestmark = [pytest.mark.integration, pytest.mark.prefect]

ROOT = Path(__file__).resolve().parents[2]
NOT_PRESERVED_PREFIXES = ("manifest-", "tagmanifest-")


def bag_members(tar: Path) -> dict[str, bytes]:
    """{path in bag: bytes} read with tarfile: the oracle for what the flow must preserve."""
    out = {}
    with tarfile.open(tar) as tf:
        for m in tf.getmembers():
            if m.isfile():
                out[m.name.split("/", 1)[1]] = tf.extractfile(m).read()
    return out


def preserved(members: dict[str, bytes]) -> dict[str, bytes]:
    return {p: d for p, d in members.items()
            if p not in ("bagit.txt", "fetch.txt") and not p.startswith(NOT_PRESERVED_PREFIXES)}


def manifest_listings(members: dict[str, bytes]) -> dict[str, int]:
    """How many (tag) manifests list each path: one fixity check event each."""
    counts: dict[str, int] = {}
    for name, data in members.items():
        if name.startswith(NOT_PRESERVED_PREFIXES):
            for line in data.decode().splitlines():
                if line.strip():
                    path = line.split(None, 1)[1].strip()
                    counts[path] = counts.get(path, 0) + 1
    return counts


def rows(env: AptEnv, sql: str, *params) -> list[dict]:
    with env.registry() as reg:
        return reg.execute(sql, params)


def object_rows(env: AptEnv, identifier: str) -> tuple[dict, dict[str, dict]]:
    obj = rows(env, "SELECT * FROM apt_objects WHERE identifier = %s", identifier)[0]
    files = {f["path"]: f for f in rows(env, "SELECT * FROM apt_files WHERE object_id = %s", obj["id"])}
    return obj, files


def events_of(env: AptEnv, work_item_id: int) -> list[dict]:
    return rows(env, "SELECT e.* FROM events e JOIN apt_work_items w ON w.ingest_id = e.ingest_id "
                     "WHERE w.id = %s", work_item_id)


def expected_event_counts(members: dict[str, bytes], *, targets: int, first_ingest: bool,
                          stored: set[str] | None = None) -> dict[str, int]:
    keep = preserved(members)
    stored = set(keep) if stored is None else stored
    listings = manifest_listings(members)
    new_files = len(stored) if first_ingest else 0
    counts = {
        "ingestion": 1 + len(stored),
        "access assignment": 1,
        "message digest calculation": 4 * len(stored),
        "fixity check": sum(listings.get(p, 0) for p in stored),
        "identifier assignment": (1 if first_ingest else 0) + new_files,
        "creation": 1 if first_ingest else 0,
        "replication": (targets - 1) * len(stored),
    }
    return {k: v for k, v in counts.items() if v}


# ------------------------------------------------------------------ the good path


@pytest.mark.parametrize("case_key", ["good_aptrust", "good_btr_sha512"])
def test_good_bag_end_to_end(apt_env: AptEnv, apt_corpus: dict[str, Case], case_key: str) -> None:
    case = apt_corpus[case_key]
    members = bag_members(case.tar)
    keep = preserved(members)
    code, summary = apt_env.run(case.tar)
    assert code == 0, summary
    assert summary["status"] == "Success" and summary["stage"] == "Cleanup" and summary["errors"] == []
    identifier = f"{apt_env.institution}/{case.bag_name[:-4]}"
    assert summary["object"]["identifier"] == identifier
    assert summary["file_count"] == len(keep)

    obj, files = object_rows(apt_env, identifier)
    assert obj["storage_option"] == "Standard" and obj["state"] == "A"
    from tasks.notify import pending

    statuses = [(n.exchange, n.routing_key, n.body["status"]) for n in pending()]
    assert statuses == [("apt", "apt.ingest.success", "Success")]  # the terminal status, exactly once
    if case_key == "good_aptrust":
        assert (obj["title"], obj["access"], obj["description"]) == (
            "Sample Good Bag", "institution", "A bag APTrust accepts.")
    assert set(files) == set(keep)  # bag-info.txt and aptrust-info.txt kept; bagit.txt, manifests not
    for path, f in files.items():
        data = keep[path]
        assert f["size"] == len(data)
        digests = {r["algorithm"]: r["digest"] for r in rows(
            apt_env, "SELECT algorithm, digest FROM apt_checksums WHERE file_id = %s", f["id"])}
        assert digests == {a: hashlib.new(a, data).hexdigest() for a in ("md5", "sha1", "sha256", "sha512")}
        records = rows(apt_env, "SELECT * FROM apt_storage_records WHERE file_id = %s ORDER BY target", f["id"])
        assert [r["target"] for r in records] == ["standard-or", "standard-va"]
        for r in records:  # the copy on each target holds exactly the file's bytes, under its UUID
            copy = Path(r["url"].removeprefix("file://"))
            assert copy.name == str(f["uuid"]) and copy.read_bytes() == data
            assert r["sha256"] == hashlib.sha256(data).hexdigest() and r["verified_at"] is not None
        assert f["puid"] or f["format_basis"]  # identified by Siegfried or the extension fallback
    for target in ("standard-va", "standard-or"):
        assert len(apt_env.target_files(target)) == len(keep)

    events = events_of(apt_env, summary["work_item_id"])
    counts: dict[str, int] = {}
    for e in events:
        counts[e["event_type"]] = counts.get(e["event_type"], 0) + 1
    assert counts == expected_event_counts(members, targets=2, first_ingest=True)
    assert summary["events"] == counts
    assert all(e["outcome"] == "success" for e in events)

    item = rows(apt_env, "SELECT * FROM apt_work_items WHERE id = %s", summary["work_item_id"])[0]
    assert item["attempt"] == 1 and item["node"] is None and not item["needs_admin_review"]
    assert rows(apt_env, "SELECT count(*) AS n FROM apt_ingest_files WHERE work_item_id = %s", item["id"])[0]["n"] == 0
    assert apt_env.staging_files() == []
    assert not (apt_env.receiving / apt_env.institution / case.bag_name).exists()
    assert case.tar.exists()  # the depositor's own file is never touched

    # the same file again is recognised as the same upload: reported, not ingested twice
    code, again = apt_env.run(case.tar)
    assert code == 0 and again["work_item_id"] == summary["work_item_id"]
    assert len(apt_env.target_files("standard-va")) == len(keep)


# ------------------------------------------------------------------ invalid bags

INVALID = ["fetch_txt", "bad_access", "bad_checksums", "no_md5_manifest", "wrong_folder", "illegal_control",
           "bad_oxum", "dotdot", "symlink", "no_top_dir"]


@pytest.mark.parametrize("case_key", INVALID)
def test_invalid_bag_fails_with_exact_errors_and_is_marked_for_deletion(
        apt_env: AptEnv, apt_corpus: dict[str, Case], case_key: str) -> None:
    case = apt_corpus[case_key]
    code, summary = apt_env.run(case.tar, institution=case.institution)
    assert code == 1, summary
    assert summary["status"] == "Failed"
    if case.errors is not None:
        assert (summary["errors"] if case.ordered else sorted(summary["errors"])) == (
            case.errors if case.ordered else sorted(case.errors))
    elif case.scan_error_exact:
        assert summary["errors"] == [case.scan_error]
    else:
        assert len(summary["errors"]) == 1 and case.scan_error in summary["errors"][0]
    item = rows(apt_env, "SELECT * FROM apt_work_items WHERE id = %s", summary["work_item_id"])[0]
    assert item["error_kind"] == "user" and item["delete_from_receiving"] and not item["needs_admin_review"]
    assert item["deleted_from_receiving_at"] is not None
    assert item["stage"] in ("Receive", "Validate")
    assert not (apt_env.receiving / case.institution / case.bag_name).exists()
    assert apt_env.staging_files() == []
    assert rows(apt_env, "SELECT count(*) AS n FROM apt_ingest_files WHERE work_item_id = %s", item["id"])[0]["n"] == 0
    assert apt_env.target_files("standard-va") == [] and apt_env.target_files("standard-or") == []
    assert case.tar.exists()


# ------------------------------------------------------------------ reingest


def test_reingest_stores_only_changed_and_new_files(apt_env: AptEnv, tmp_path: Path) -> None:
    from flows.apt.samples import build_bag

    bag = f"{apt_env.institution}.versions"
    v1 = {f"data/file{i:02d}.txt": f"version one of file {i}\n".encode() * (i + 1) for i in range(10)}
    tar1 = build_bag(tmp_path / "v1", bag, v1, title="Versions", storage_option="Standard")
    code, first = apt_env.run(tar1)
    assert code == 0, first
    obj1, files1 = object_rows(apt_env, f"{apt_env.institution}/{bag}")
    copies1 = {p.name: p.stat().st_mtime_ns for p in apt_env.target_files("standard-va")}

    v2 = dict(v1)
    del v2["data/file00.txt"], v2["data/file01.txt"]  # 2 deleted
    v2["data/file02.txt"] = v1["data/file02.txt"].replace(b"one", b"two")  # same size, new digests
    v2["data/file03.txt"] = v1["data/file03.txt"] + b"appended\n"  # size changes
    v2["data/file04.txt"] = b"completely different\n"
    v2["data/new-a.txt"] = b"added a\n"  # 2 added
    v2["data/new-b.txt"] = b"added b\n"
    # the new version asks for another storage option: the object keeps its original one
    tar2 = build_bag(tmp_path / "v2", bag, v2, title="Versions", storage_option="Glacier-OR")
    time.sleep(0.01)
    code, second = apt_env.run(tar2)
    assert code == 0, second
    assert second["reingest"]["is_reingest"] and second["reingest"]["absent_count"] == 2

    m1, m2 = preserved(bag_members(tar1)), preserved(bag_members(tar2))
    expected_stored = {p for p, d in m2.items() if m1.get(p) != d}
    assert {p for p in expected_stored if p.startswith("data/")} == {
        "data/file02.txt", "data/file03.txt", "data/file04.txt", "data/new-a.txt", "data/new-b.txt"}
    obj2, files2 = object_rows(apt_env, f"{apt_env.institution}/{bag}")
    wi2 = second["work_item_id"]
    assert {p for p, f in files2.items() if f["last_work_item_id"] == wi2} == expected_stored
    # UUIDs persist; the storage option stays
    assert all(files2[p]["uuid"] == f["uuid"] for p, f in files1.items())
    assert obj2["id"] == obj1["id"] and obj2["storage_option"] == "Standard"
    assert {f["storage_option"] for f in files2.values()} == {"Standard"}
    # deleted files are kept, marked as missing from the new version
    for p in ("data/file00.txt", "data/file01.txt"):
        assert files2[p]["state"] == "A" and files2[p]["missing_since_work_item"] == wi2
    assert all(files2[p]["missing_since_work_item"] is None for p in m2)
    # only the changed and new files were written again, on both targets
    for target in ("standard-va", "standard-or"):
        assert len(apt_env.target_files(target)) == len(set(m1) | set(m2))
    rewritten = {p.name for p in apt_env.target_files("standard-va") if copies1.get(p.name) != p.stat().st_mtime_ns}
    assert rewritten == {str(files2[p]["uuid"]) for p in expected_stored}
    for p in expected_stored:  # the newest checksum is the new version's
        newest = rows(apt_env, "SELECT digest FROM apt_checksums WHERE file_id = %s AND algorithm = 'sha256' "
                               "ORDER BY id DESC LIMIT 1", files2[p]["id"])[0]["digest"]
        assert newest == hashlib.sha256(m2[p]).hexdigest()
    counts: dict[str, int] = {}
    for e in events_of(apt_env, wi2):
        counts[e["event_type"]] = counts.get(e["event_type"], 0) + 1
    expected = expected_event_counts(bag_members(tar2), targets=2, first_ingest=False, stored=expected_stored)
    expected["identifier assignment"] = 2  # the two new files only
    assert counts == expected

    # the same content uploaded again (a new upload, new etag): nothing to store, still a success
    os.utime(tar2, ns=(time.time_ns(), time.time_ns()))
    code, third = apt_env.run(tar2)
    assert code == 0, third
    assert third["work_item_id"] != wi2 and third["reingest"]["to_store"] == 0
    assert len(apt_env.target_files("standard-va")) == len(set(m1) | set(m2))


# ------------------------------------------------------------------ S3 targets


def s3_target(name: str, bucket: str, endpoint: str) -> str:
    """Save an Ingest Vault document for an S3 target; the APT block names it."""
    from blocks.vault import VaultBlock

    VaultBlock.for_s3(bucket, endpoint_url=endpoint, access_key_id="testing", secret_access_key="testing",
                      region="us-east-1", prefix="preservation").save(name, overwrite=True)
    return name


def test_standard_storage_on_two_s3_buckets_and_a_corrupt_copy_fails_verification(
        apt_env: AptEnv, apt_corpus: dict[str, Case], s3_endpoint: str, s3_bucket: str, unique: str) -> None:
    import boto3
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    from flows.apt import steps
    from flows.apt.cli import choose_work_item

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    oregon = f"or-{unique}"
    s3.create_bucket(Bucket=oregon)
    receiving = f"recv-{unique}.{apt_env.institution}"
    s3.create_bucket(Bucket=receiving)
    AwsCredentials(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1",
                   aws_client_parameters=AwsClientParameters(endpoint_url=s3_endpoint)).save(
        f"{apt_env.name}-recv", overwrite=True)
    name = apt_env.save("-s3", receiving_kind="s3", receiving_bucket_template=f"recv-{unique}.{{institution}}",
                        receiving_credentials_block=f"{apt_env.name}-recv", institutions=[apt_env.institution],
                        target_vault_blocks={"standard-va": s3_target(f"{apt_env.name}-va", s3_bucket, s3_endpoint),
                                             "standard-or": s3_target(f"{apt_env.name}-or", oregon, s3_endpoint)})
    case = apt_corpus["good_aptrust"]
    keep = preserved(bag_members(case.tar))
    code, summary = apt_env.run(case.tar, config=name)
    assert code == 0, summary
    _, files = object_rows(apt_env, summary["object"]["identifier"])
    for bucket in (s3_bucket, oregon):
        listed = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
        assert listed == {f"preservation/{f['uuid']}": f["size"] for f in files.values()}
        for f in files.values():
            body = s3.get_object(Bucket=bucket, Key=f"preservation/{f['uuid']}")["Body"].read()
            assert body == keep[f["path"]]
    assert s3.list_objects_v2(Bucket=receiving).get("KeyCount", 0) == 0  # deleted from receiving

    # a second bag: stop after Store (as a crash would), corrupt one Oregon copy, then resume
    other = apt_corpus["good_default_storage"]
    cfg = apt_env.config(name)
    try:
        obj = cfg.receiving.put(apt_env.institution, other.tar)
        _, wi, _ = choose_work_item(cfg, obj)
        item = steps.start(cfg, wi, None)
        validation = steps.validate(cfg, item, steps.receive(cfg, item))
        reingest = steps.reingest_check(cfg, item, validation)
        steps.copy_to_staging(cfg, item)
        steps.identify_formats(cfg, item)
        steps.store(cfg, item, reingest["storage_option"])
        victim = next(f for f in steps.records.ingest_files(cfg.registry, wi, needs_save=True)
                      if f["path"].startswith("data/"))
    finally:
        cfg.close()
    key = f"preservation/{victim['uuid']}"
    good = s3.get_object(Bucket=oregon, Key=key)["Body"].read()
    s3.put_object(Bucket=oregon, Key=key, Body=bytes([good[0] ^ 0xFF]) + good[1:])  # same size, bad bytes
    code, failed = apt_env.run(other.tar, config=name)
    assert code == 2, failed
    assert failed["status"] == "Failed" and failed["stage"] == "Storage Validation"
    assert failed["needs_admin_review"] and "checksum mismatch" in failed["note"]
    assert victim["path"] in failed["note"] and "standard-or" in failed["note"]
    assert apt_env.staging_files() != []  # interim data kept for the resume
    assert rows(apt_env, "SELECT count(*) AS n FROM apt_objects WHERE identifier = %s",
                f"{apt_env.institution}/{other.bag_name[:-4]}")[0]["n"] == 0
    # the admin re-runs it: the rejected copy is stored again, verified, recorded
    code, resumed = apt_env.run(other.tar, config=name)
    assert code == 0, resumed
    assert resumed["work_item_id"] == wi and resumed["attempt"] == 3
    assert s3.get_object(Bucket=oregon, Key=key)["Body"].read() == good
    assert apt_env.staging_files() == []


# ------------------------------------------------------------------ a killed run resumes


class ThrottledProxy:
    """A TCP proxy to the S3 endpoint that slows uploads, so a test can kill a run mid-Store."""

    def __init__(self, target_port: int, bytes_per_second: int) -> None:
        self.target_port = target_port
        self.rate = bytes_per_second
        self.uploaded = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, upload: bool) -> None:
        try:
            while data := src.recv(16384):
                if upload:
                    self.uploaded += len(data)
                    if self.rate:
                        time.sleep(len(data) / self.rate)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def test_run_killed_during_store_resumes_without_duplicates(
        apt_env: AptEnv, s3_endpoint: str, s3_bucket: str, unique: str, tmp_path: Path) -> None:
    import boto3
    from prefect.settings import PREFECT_API_URL

    from flows.apt.samples import build_bag

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    oregon = f"or-{unique}"
    s3.create_bucket(Bucket=oregon)
    proxy = ThrottledProxy(int(s3_endpoint.rsplit(":", 1)[1]), bytes_per_second=1 << 20)
    via_proxy = f"http://127.0.0.1:{proxy.port}"
    name = apt_env.save("-slow", target_vault_blocks={
        "standard-va": s3_target(f"{apt_env.name}-slow-va", s3_bucket, via_proxy),
        "standard-or": s3_target(f"{apt_env.name}-slow-or", oregon, via_proxy)})
    payload = {"data/big.bin": os.urandom(4 << 20), "data/small.txt": b"small\n", "data/other.txt": b"other\n"}
    tar = build_bag(tmp_path, f"{apt_env.institution}.killed", payload, title="Killed")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "INGEST_HOME": str(apt_env.home)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "flows" / "run.py"), "apt", str(tar), "--institution",
                             apt_env.institution, "--config", name], env=env, cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        item = None
        while time.monotonic() < deadline and proc.poll() is None:
            found = rows(apt_env, "SELECT * FROM apt_work_items WHERE institution = %s", apt_env.institution)
            if found and found[0]["stage"] == "Store" and proxy.uploaded > (1 << 20):
                item = found[0]
                break
            time.sleep(0.1)
        assert item is not None, proc.communicate(timeout=5) if proc.poll() is not None else "never reached Store"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    # what the crash left: the registry shows where and who
    item = rows(apt_env, "SELECT * FROM apt_work_items WHERE id = %s", item["id"])[0]
    assert (item["status"], item["stage"], item["pid"], item["node"]) == ("Started", "Store", proc.pid,
                                                                          socket.gethostname())
    proxy.rate = 0  # the outage is over
    try:
        code, summary = apt_env.run(tar, config=name)
    finally:
        proxy.close()
    assert code == 0, summary
    assert summary["work_item_id"] == item["id"] and summary["attempt"] == 2

    members = bag_members(tar)
    keep = preserved(members)
    identifier = f"{apt_env.institution}/{apt_env.institution}.killed"
    _, files = object_rows(apt_env, identifier)
    assert set(files) == set(keep)
    assert rows(apt_env, "SELECT count(*) AS n FROM apt_objects WHERE identifier = %s", identifier)[0]["n"] == 1
    ids = [f["id"] for f in files.values()]
    assert rows(apt_env, "SELECT count(*) AS n FROM apt_checksums WHERE file_id = ANY(%s)", ids)[0]["n"] == 4 * len(keep)
    assert rows(apt_env, "SELECT count(*) AS n FROM apt_storage_records WHERE file_id = ANY(%s)",
                ids)[0]["n"] == 2 * len(keep)
    assert rows(apt_env, "SELECT count(*) AS n FROM ingests WHERE natural_key LIKE %s",
                identifier + "#%")[0]["n"] == 1
    events = events_of(apt_env, item["id"])
    counts: dict[str, int] = {}
    for e in events:
        counts[e["event_type"]] = counts.get(e["event_type"], 0) + 1
    assert counts == expected_event_counts(members, targets=2, first_ingest=True)
    for bucket in (s3_bucket, oregon):
        listed = s3.list_objects_v2(Bucket=bucket, Prefix="preservation/")
        assert sorted(o["Key"] for o in listed["Contents"]) == sorted(
            f"preservation/{f['uuid']}" for f in files.values())
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert apt_env.staging_files() == []


# ------------------------------------------------------------------ O(stages) task runs


def test_task_runs_grow_with_stages_not_files(apt_env: AptEnv, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.apt.samples import build_bag

    payload = {f"data/d{i // 100:02d}/f{i:04d}.txt": f"file {i}\n".encode() for i in range(500)}
    tar = build_bag(tmp_path, f"{apt_env.institution}.many", payload, storage_option="Glacier-OH")
    started = time.monotonic()
    code, summary = apt_env.run(tar)
    elapsed = time.monotonic() - started
    assert code == 0, summary
    assert summary["file_count"] == 502
    flow_run_id = rows(apt_env, "SELECT flow_run_id FROM apt_work_items WHERE id = %s",
                       summary["work_item_id"])[0]["flow_run_id"]
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    names = sorted(t.name.rsplit("-", 1)[0] for t in task_runs)
    assert len(task_runs) == 12, names  # one per stage, plus start, finish and the status message
    print(f"502 files ingested in {elapsed:.1f} s with {len(task_runs)} task runs")


# ------------------------------------------------------------------ resume after Receive


@pytest.mark.parametrize("case_key", ["good_aptrust", "bad_checksums"])
def test_resume_after_receive_validates_the_scan_rebuilt_from_the_registry(
        apt_env: AptEnv, apt_corpus: dict[str, Case], case_key: str) -> None:
    """A run that died after Receive: the next one validates without reading the tar again."""
    from flows.apt import steps
    from flows.apt.cli import choose_work_item
    from flows.apt.tarscan import scan_bag_file
    from flows.apt.validate import validate_bag
    from tasks.errors import UserError

    case = apt_corpus[case_key]
    expected = validate_bag(scan_bag_file(case.tar), case.bag_name, institution=case.institution)
    cfg = apt_env.config()
    try:
        obj = cfg.receiving.put(case.institution, case.tar)
        _, wi, _ = choose_work_item(cfg, obj)
        item = steps.start(cfg, wi, None)
        assert steps.receive(cfg, item) is not None
        (apt_env.receiving / case.institution / case.bag_name).unlink()  # the tar is not needed again
        assert steps.receive(cfg, item) is None  # already done: skipped
        if expected.errors:
            with pytest.raises(UserError) as err:
                steps.validate(cfg, item, None)
            assert err.value.message == "; ".join(expected.errors)
        else:
            validation = steps.validate(cfg, item, None)
            assert validation["title"] == expected.title and validation["access"] == expected.access
            assert validation["storage_option"] == expected.storage_option
    finally:
        cfg.close()
