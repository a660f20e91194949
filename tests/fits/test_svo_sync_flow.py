"""SVO submission from the ingest flow and the sync_with_svo flow, against the fake SVO (real HTTP on
loopback, Tastypie rules) with the registry on the real PostgreSQL."""
from __future__ import annotations

import datetime as dt

import pytest
from cubes import CubeSpec
from fake_svo import FakeSvo

pytestmark = [pytest.mark.integration, pytest.mark.prefect]

DATA_URL = "https://archive.example.org/data"


@pytest.fixture
def svo_env(fits_env, fake_svo: FakeSvo):
    fits_env.save_blocks(svo_url=fake_svo.api_url, file_url_base=DATA_URL)
    return fits_env


def _states(env) -> dict[str, tuple[str, str]]:
    with env.registry() as r:
        return {row["oid"]: (row["state"], row["action"]) for row in r.execute("SELECT * FROM fits_svo_submissions")}


def test_ingest_with_svo_creates_then_updates_the_record(svo_env, fake_svo: FakeSvo):
    cube = svo_env.cube()
    code, summary = svo_env.run(cube, submit_to_svo=True)
    assert code == 0, summary
    oid = summary["oid"]
    assert summary["svo"] == {"dataset": "CRISP", "action": "created", "oid": oid}
    remote = fake_svo.metadata("CRISP", oid)
    assert remote is not None
    assert remote["date_beg"] == "2019-04-16T08:20:18.967580" and remote["naxis5"] == 6
    assert remote["wavelnth"] == pytest.approx(617.3) and remote["dw3_axis_1"] == 1.0
    assert remote["releasec"].endswith("uses these data") and remote["fits_header"].startswith("SIMPLE  =")
    location = remote["data_location"]
    assert location["file_url"] == f"{DATA_URL}/{svo_env.rel(cube)}"
    assert location["file_path"] == "2019-04-16/CRISP/" + cube.name.replace(":", "%3A")
    assert location["file_size"] == str(cube.stat().st_size)           # the SVO returns it as a string
    assert [t["name"] for t in remote["tags"]] == ["flare", "polar region", "sunspot"]
    assert _states(svo_env) == {oid: ("submitted", "created")}

    code, again = svo_env.run(cube, submit_to_svo=True)          # unchanged cube: skipped, record updated
    assert code == 0 and again["state"] == "skipped" and again["svo"]["action"] == "updated"
    patches = [w for w in fake_svo.writes() if w.method == "PATCH"]
    assert len(patches) == 1 and "oid" not in patches[0].body
    assert "data_location" not in patches[0].body                       # unchanged: not rewritten
    assert _states(svo_env) == {oid: ("submitted", "updated")}
    assert len(fake_svo.state.metadata["CRISP"]) == 1 and len(fake_svo.state.data_locations) == 1


def test_sync_adds_missing_removes_deleted_and_updates_only_when_asked(svo_env, fake_svo: FakeSvo, capsys):
    base = dt.datetime(2021, 5, 3, 10, 0, 0)
    for i in range(3):
        beg = (base + dt.timedelta(minutes=10 * i)).strftime("%Y-%m-%dT%H:%M:%S.25")
        svo_env.cube("sync", spec=CubeSpec(date_beg=beg, nx=8, ny=6, n_wave=3))
    code, summary = svo_env.cli(capsys, "fits-dir", "sync", "--no-previews")
    assert code == 0 and summary["counts"]["ingested"] == 3, summary
    oids = sorted(r["oid"] for r in summary["results"])
    # The SVO already has one of ours (with an outdated value) and one record we no longer hold.
    ours = fake_svo.add_data_location("CRISP", f"{DATA_URL}/old/{oids[0]}.fits", "2021-05-03/CRISP/old-0.fits")
    fake_svo.add_metadata("CRISP", oids[0], data_location=ours, wavelnth=1.0)
    stale = fake_svo.add_data_location("CRISP", f"{DATA_URL}/gone.fits", "2010-01-01/CRISP/gone.fits")
    fake_svo.add_metadata("CRISP", "2010-01-01T00:00:00_6173_0", data_location=stale)

    code, dry = svo_env.cli(capsys, "svo-sync", "--dry-run")
    assert code == 0, dry
    assert dry["plan"] == ["delete CRISP 2010-01-01T00:00:00_6173_0", f"submit CRISP {oids[1]}",
                           f"submit CRISP {oids[2]}"]
    assert dry["submitted"] == dry["deleted"] == [] and fake_svo.writes() == []

    code, done = svo_env.cli(capsys, "svo-sync")
    assert code == 0, done
    assert done["deleted"] == ["2010-01-01T00:00:00_6173_0"] and done["submitted"] == oids[1:]
    assert done["updated"] == [] and done["failed"] == []
    assert sorted(fake_svo.state.metadata["CRISP"]) == oids
    assert fake_svo.metadata("CRISP", oids[0])["wavelnth"] == 1.0          # shared record left alone
    assert fake_svo.metadata("CRISP", oids[1])["wavelnth"] == pytest.approx(617.3)

    code, idle = svo_env.cli(capsys, "svo-sync")
    assert code == 0 and idle["plan"] == []

    fake_svo.fail_next(2, 500, methods={"PATCH"})                       # transient: retried inside the client
    code, updated = svo_env.cli(capsys, "svo-sync", "--update-existing")
    assert code == 0, updated
    assert updated["plan"] == [f"update CRISP {oid}" for oid in oids] and updated["updated"] == oids
    assert fake_svo.metadata("CRISP", oids[0])["wavelnth"] == pytest.approx(617.3)
    path = next(r["path"] for r in summary["results"] if r["oid"] == oids[0])
    assert fake_svo.metadata("CRISP", oids[0])["data_location"]["file_url"] == f"{DATA_URL}/{path}"
    assert sum(1 for r in fake_svo.requests if r.method == "PATCH") == 3 + 2
    assert _states(svo_env) == {oid: ("submitted", "updated") for oid in oids}


def test_bad_credentials_fail_clearly_and_change_nothing(svo_env, fake_svo: FakeSvo, capsys):
    svo_env.save_blocks(svo_url=fake_svo.api_url, svo_key="wrong-key", file_url_base=DATA_URL)
    cube = svo_env.cube()
    code, summary = svo_env.cli(capsys, "fits", svo_env.rel(cube), "--svo")
    assert code == 1, summary
    assert summary["state"] == "failed" and "check the SVO username and API key" in summary["error"]
    assert "HTTP 401" in summary["error"] and summary["work_order"]["state"] == "Failed"
    assert _states(svo_env)[summary["oid"]][0] == "failed"

    code, sync = svo_env.cli(capsys, "svo-sync")
    assert code == 1 and "HTTP 401" in sync["error"]
    assert fake_svo.state.metadata["CRISP"] == {}                       # reads worked, no write got through


def test_sync_pages_past_fifty_records_across_two_syncs(svo_env, fake_svo: FakeSvo, capsys):
    """The SVO caches a list's total_count for a day and computes meta.next from it; objects are live.
    The first sync caches a count of 31; by the second, 60 more records exist that only the SVO has."""
    svo_env.cube("2019-04-16/CRISP")
    svo_env.cube("reduced", spec=CubeSpec(date_beg="2019-04-16T09:00:00.5"))
    svo_env.cube("elsewhere", filename="cube.fits", spec=CubeSpec(date_beg="2019-04-16T10:00:00.5"))
    svo_env.cube("2019-04-16/CRISP", filename="cube.fits", spec=CubeSpec(date_beg="2019-04-16T11:00:00.5"))
    code, summary = svo_env.cli(capsys, "fits-dir", ".", "--no-previews")
    assert code == 0 and summary["counts"]["ingested"] == 4, summary
    oids = sorted(r["oid"] for r in summary["results"])
    for i in range(31):
        fake_svo.add_metadata("CRISP", f"2000-01-01T00:00:{i:02d}_6173_0")

    code, first = svo_env.cli(capsys, "svo-sync")
    assert code == 0, first
    assert len(first["deleted"]) == 31 and first["submitted"] == oids and first["failed"] == []
    # two files called cube.fits in two directories: two locations, no (dataset, file_path) clash
    paths = sorted(dl["file_path"] for dl in fake_svo.state.data_locations.values())
    assert "2019-04-16/CRISP/cube.fits" in paths and "elsewhere/cube.fits" in paths

    late = [f"2001-01-01T00:{i // 60:02d}:{i % 60:02d}_6173_0" for i in range(60)]
    for oid in late:
        fake_svo.add_metadata("CRISP", oid)
    code, second = svo_env.cli(capsys, "svo-sync")
    assert code == 0, second
    assert second["remote"] == 64 and second["deleted"] == late and second["submitted"] == []
    assert sorted(fake_svo.state.metadata["CRISP"]) == oids
    listed = [r for r in fake_svo.requests if r.path.endswith("/metadata_crisp/") and r.method == "GET"]
    assert listed and all("offset" in r.query for r in listed)


def test_without_an_http_file_url_base_nothing_is_sent(fits_env, fake_svo: FakeSvo, capsys):
    """The SVO refuses file:// URLs record by record; we refuse before the first request."""
    fits_env.save_blocks(svo_url=fake_svo.api_url)                     # no file_url_base
    cube = fits_env.cube()
    code, summary = fits_env.cli(capsys, "fits", fits_env.rel(cube), "--svo", "--no-previews")
    assert code == 1 and "needs file_url_base" in summary["error"], summary
    code, sync = fits_env.cli(capsys, "svo-sync", "--dry-run")
    assert code == 1 and "needs file_url_base" in sync["error"], sync
    assert fake_svo.requests == []
