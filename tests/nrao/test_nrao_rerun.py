"""Issue #13, "NRAO: orphans in NGAS": an observation fails on its 8th file after 7 were archived;
the re-run, through ``python flows/run.py nrao``, keeps the execution block's locator (so the 7
keep their NGAS file ids), does not push them again, records them, and cleans what its earlier
attempt left in staging. NGAS cannot delete, so a version the product no longer uses is listed
in ``orphans``."""
from __future__ import annotations

from pathlib import Path

import pytest
from test_nrao_flow import LateFaults, NraoEnv, calibration, nrao_env, observation  # noqa: F401 - nrao_env: a fixture

from flows.nrao.products import IngestionType
from flows.nrao.steps import NraoRequest, request_id

pytestmark = [pytest.mark.integration, pytest.mark.prefect]

REFUSAL = "NGAMS_ER_DAPI_BAD_FILE:4003:ERROR: Error occurred handling file: x in DAPI: ngamsGenDapi, Error: disk"


def group(source: str) -> str:
    return f"observation:{source}"


def fail_on_the_8th_file(env: NraoEnv, fake: LateFaults, argv: list[str], source: str) -> list[dict]:
    fake.fail_next(REFUSAL)
    code, summary = env.run(*argv)
    assert code == 1 and REFUSAL in summary["error"], summary
    assert len(fake.pushes()) == 8 and len(fake.files) == 7
    rows = env.sql("SELECT * FROM nrao_attempt_files WHERE product_group = %s ORDER BY created_at", group(source))
    assert sorted(r["ngas_file_id"] for r in rows) == sorted(fake.files)  # the 7 are on the books
    assert env.sql("SELECT count(*) AS n FROM nrao_products WHERE product_group = %s", group(source))[0]["n"] == 0
    return rows


def leave_staging_like_a_killed_run(env: NraoEnv, source: str) -> Path:
    staged = env.staging_root / request_id(NraoRequest(kind=IngestionType.OBSERVATION, source=source), source)
    (staged / "sdm").mkdir(parents=True, exist_ok=True)
    (staged / "sdm" / ".Main.xml.1234.part").write_bytes(b"half a copy")
    (staged / "stale-from-attempt-1.tar").write_bytes(b"x" * 1000)
    return staged


def test_rerun_after_the_8th_file_failed_reuses_the_eb_locator_and_the_7_files(nrao_env, tmp_path) -> None:  # noqa: F811
    with LateFaults(tmp_path / "ngas", after=7) as fake:
        env = nrao_env(fake)
        argv, source = observation(env)
        first = fail_on_the_8th_file(env, fake, argv, source)
        eb_locator = first[0]["locator"]
        staged = leave_staging_like_a_killed_run(env, source)

        code, summary = env.run(*argv)
        assert code == 0, summary

    assert [p["locator"] for p in summary["products"]] == [eb_locator]
    ids = {f["ngas_file_id"] for f in summary["files"]}
    assert {r["ngas_file_id"] for r in first} <= ids
    # the 7 were not pushed again: 8 pushes in the first run, only the remaining files in the second
    assert len(fake.pushes()) == 8 + len(ids) - 7
    assert all(f["version"] == 1 for f in summary["files"])
    assert all(fake.versions(i) == [1] for i in ids)
    # everything NGAS holds is recorded; the attempt's own rows are gone; no orphan
    recorded = env.sql("SELECT ngas_file_id, file_version FROM nrao_product_files WHERE product_group = %s",
                       group(source))
    assert {(r["ngas_file_id"], r["file_version"]) for r in recorded} == {(i, 1) for i in fake.files}
    assert env.sql("SELECT count(*) AS n FROM nrao_attempt_files WHERE product_group = %s", group(source)) == [{"n": 0}]
    assert env.sql("SELECT count(*) AS n FROM nrao_attempt_locators WHERE product_group = %s",
                   group(source)) == [{"n": 0}]
    ingest = env.sql("SELECT id, state FROM ingests WHERE domain = 'nrao' AND natural_key = %s", group(source))
    assert [i["state"] for i in ingest] == ["completed"]
    assert env.sql("SELECT count(*) AS n FROM orphans WHERE ingest_id = %s", ingest[0]["id"]) == [{"n": 0}]
    assert not staged.exists()  # what the earlier attempt left in staging is gone


def test_a_file_changed_between_attempts_gets_a_new_version_and_the_old_one_is_listed_as_orphan(
        nrao_env, tmp_path: Path) -> None:  # noqa: F811
    with LateFaults(tmp_path / "ngas", after=7) as fake:
        env = nrao_env(fake)
        argv, source = observation(env)
        first = fail_on_the_8th_file(env, fake, argv, source)
        changed = next(r for r in first if r["role"] == "sdm_table")
        table = env.source_root / source / Path(changed["filename"]).name
        table.write_text(table.read_text() + "<!-- corrected -->\n")

        code, summary = env.run(*argv)
        assert code == 0, summary

    versions = {f["ngas_file_id"]: f["version"] for f in summary["files"]}
    assert versions[changed["ngas_file_id"]] == 2 and fake.versions(changed["ngas_file_id"]) == [1, 2]
    assert sum(1 for v in versions.values() if v == 1) == len(versions) - 1
    assert len(fake.pushes()) == 8 + len(versions) - 6  # the 6 unchanged files were not pushed again
    ingest_id = env.sql("SELECT id FROM ingests WHERE domain = 'nrao' AND natural_key = %s", group(source))[0]["id"]
    orphans = env.sql("SELECT location, size, detail FROM orphans WHERE ingest_id = %s", ingest_id)
    host = fake.url.removeprefix("http://")
    assert [o["location"] for o in orphans] == [f"ngas://{host}/{changed['ngas_file_id']}?version=1"]
    assert orphans[0]["size"] == changed["size"] and changed["filename"] in orphans[0]["detail"]
    events = env.sql("SELECT subject, outcome FROM events WHERE ingest_id = %s AND outcome = 'orphaned'", ingest_id)
    assert events == [{"subject": f"{changed['ngas_file_id']}@1", "outcome": "orphaned"}]


def test_a_calibration_that_failed_on_its_last_file_pushes_only_that_file_again(nrao_env, tmp_path) -> None:  # noqa: F811
    """The re-run restages with the first attempt's time: the weblog and calibration tars and their
    timestamped names come out identical, so only the file that failed goes to NGAS."""
    with LateFaults(tmp_path / "ngas", after=2) as fake:
        env = nrao_env(fake)
        argv, source = calibration(env)
        fake.fail_next(REFUSAL)
        code, summary = env.run(*argv)
        assert code == 1, summary
        first = env.sql("SELECT filename, ngas_file_id FROM nrao_attempt_files WHERE product_group = %s",
                        f"calibration:{source}")
        assert len(first) == 2 and len(fake.pushes()) == 3

        code, summary = env.run(*argv)
        assert code == 0, summary

    assert len(fake.pushes()) == 4  # the third file only
    assert all(f["version"] == 1 for f in summary["files"]) and len(summary["files"]) == 3
    assert {(r["filename"], r["ngas_file_id"]) for r in first} <= {(f["name"], f["ngas_file_id"])
                                                                  for f in summary["files"]}
    assert set(fake.files) == {f["ngas_file_id"] for f in summary["files"]}


def test_files_of_an_attempt_never_rerun_are_found_for_reconcile(pg_dsn: str, unique: str) -> None:
    """A plain-function test: what reconcile lists as NGAS orphans when a failed request is not re-run."""
    from datetime import timedelta

    from flows.nrao import records
    from tasks.registry import open_registry

    r = open_registry(pg_dsn)
    try:
        key = f"observation:sdms/eb-{unique}"
        ingest = r.begin_ingest("nrao", key)
        f = records.ArchivedFile(name="sdm/ASDM.xml", product="sdm", locator=f"uid://evla/execblock/{unique}",
                                 role="sdm_table", ngas_file_id=f"uid___evla_execblock_{unique}_ASDM.xml",
                                 file_version=1, size=10, mime_type="text/xml", checksums={"sha256": "0" * 64},
                                 ngas_checksum="123", ngas_checksum_plugin="crc32c", ngas_disk_id=None,
                                 uri="http://ngas:7777/RETRIEVE?file_id=x")
        records.save_attempt_file(r, key, ingest.id, f, "http://ngas:7777")
        mine = lambda: [row for row in records.abandoned_attempt_files(r, timedelta(0))  # noqa: E731
                        if row["product_group"] == key]
        assert mine() == []  # in progress: a live run may still record it
        r.set_state(ingest.id, "failed", error="NGAS refused the 8th file")
        (row,) = mine()
        assert (row["ngas_file_id"], row["file_version"], row["ingest_state"]) == (f.ngas_file_id, 1, "failed")
        assert records.ngas_location(row["ngas_url"], row["ngas_file_id"], 1) == \
            f"ngas://ngas:7777/{f.ngas_file_id}?version=1"
        assert records.abandoned_attempt_files(r, timedelta(hours=1)) == [] or all(
            x["product_group"] != key for x in records.abandoned_attempt_files(r, timedelta(hours=1)))
    finally:
        r.close()


def test_a_second_run_of_the_same_request_waits_for_the_first(pg_dsn: str, unique: str, tmp_path: Path) -> None:
    """register holds the request's claim: a second run at once neither stages nor pushes beside the first."""
    import threading

    from flows.nrao.steps import NraoConfig, register
    from tasks.claims import claim, release
    from tasks.registry import open_registry

    (tmp_path / "runs" / f"cal-{unique}").mkdir(parents=True)
    first, second = open_registry(pg_dsn), open_registry(pg_dsn)
    cfg = NraoConfig(ngas_block=None, registry_block=None, transport=None, exchange="nrao",
                     source_root=tmp_path / "runs", staging_root=tmp_path / "staging", _registry=second)
    req = NraoRequest(kind=IngestionType.CALIBRATION, source=f"cal-{unique}")
    try:
        held = claim(first, "nrao", f"calibration:cal-{unique}")  # the first run, alive
        got: list[int] = []
        waiter = threading.Thread(target=lambda: got.append(register(cfg, req, None)), daemon=True)
        waiter.start()
        waiter.join(1.5)
        assert waiter.is_alive() and got == []  # waiting, not registered
        release(first, held)
        waiter.join(30)
        assert not waiter.is_alive() and len(got) == 1
    finally:
        first.close()
        second.close()
