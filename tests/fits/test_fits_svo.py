"""The SVO client and the sync plan against the fake SVO (real HTTP on loopback)."""
from __future__ import annotations

import httpx
import pytest
from cubes import CubeSpec, write_cube
from fake_svo import DEFAULT_KEY as SVO_KEY
from fake_svo import DEFAULT_USER as SVO_USER
from fake_svo import FakeSvo

from flows.fits.header import read_headers
from flows.fits.svo import (
    RemoteRecord,
    SvoAuthError,
    SvoClient,
    SvoError,
    SvoRecord,
    SvoRejected,
    apply_plan,
    build_record,
    plan_sync,
    record_fields,
    svo_file_path,
)
from tasks.errors import UserError

BASE_URL = "https://archive.example.org/data"


@pytest.fixture
def header(cube):
    return read_headers(cube).primary


def make_record(svo: SvoClient, header, oid: str, name: str | None = None, dataset: str = "CRISP",
                size: int = 1000, base: str = BASE_URL, tags: tuple[str, ...] = ()) -> SvoRecord:
    """A record as the flow builds it: file_url and file_path both from the cube's relative path."""
    name = name or f"{oid}.fits"
    record, missing = build_record(oid=oid, dataset=dataset, header=header, keywords=svo.keywords(dataset),
                                   file_url=f"{base}/{name}", file_path=svo_file_path(name), file_size=size,
                                   tags=tags)
    assert missing == []
    return record


def test_record_fields_follow_the_svo_keyword_types(svo, header):
    fields, missing, skipped = record_fields(header, svo.keywords("CRISP"))
    assert missing == [] and skipped == []
    assert fields["date_beg"] == "2019-04-16T08:20:18.967580"
    assert fields["naxis5"] == 6 and fields["cdelt1"] == 1 and isinstance(fields["cdelt1"], int)
    assert fields["dw3_axis_1"] == 1.0 and fields["filter1"] == "6173"
    assert fields["releasec"].endswith("uses these data")
    extra, missing, skipped = record_fields(header, [{"name": "nope", "verbose_name": "NOT-THERE", "type": "real"}])
    assert (extra, missing, skipped) == ({}, ["NOT-THERE"], [])


def test_a_keyword_the_service_types_differently_is_skipped_not_the_record(svo, fake_svo, tmp_path):
    """The real CRISP schema has CDELT3 and CRVAL3 as integers; the sample cube has 0.0035 and 617.293."""
    header = read_headers(write_cube(tmp_path, CubeSpec(wcs_tab=False))).primary
    record, missing = build_record(oid="oid-1", dataset="CRISP", header=header, keywords=svo.keywords("CRISP"),
                                   file_url=f"{BASE_URL}/a.fits", file_path="a.fits", file_size=1)
    assert missing == [] and "cdelt3" not in record.fields and "crval3" not in record.fields
    assert len(record.skipped) == 2 and "CDELT3 = 0.0035 not sent" in record.skipped[0]
    assert "integer" in record.skipped[0] and "CRVAL3 = 617.293" in record.skipped[1]
    svo.create(record)                                        # the rest of the record is accepted
    assert fake_svo.metadata("CRISP", "oid-1")["naxis1"] == 16
    header["CDELT3"] = 2.0                                    # a whole number converts: the rule is clear
    fields, _, skipped = record_fields(header, svo.keywords("CRISP"))
    assert fields["cdelt3"] == 2 and isinstance(fields["cdelt3"], int) and len(skipped) == 1
    header["WAVEUNIT"], header["OBS_HDU"] = "angstrom", True
    waveunit = [{"name": "waveunit", "verbose_name": "WAVEUNIT", "type": "integer"},
                {"name": "obs_hdu", "verbose_name": "OBS_HDU", "type": "integer"}]
    fields, _, skipped = record_fields(header, waveunit)
    assert fields == {"waveunit": -10} and "OBS_HDU = True not sent" in skipped[0]


def test_file_path_for_the_svo_is_safe_and_never_merges_two_paths():
    path = svo_file_path("2019-04-16/CRISP/nb_6173_2019-04-16T08:20:18_scans=0-4.fits")
    assert path == "2019-04-16/CRISP/nb_6173_2019-04-16T08%3A20%3A18_scans=0-4.fits"
    assert svo_file_path("a:b.fits") != svo_file_path("ab.fits") != svo_file_path("a%3Ab.fits")
    assert svo_file_path("a:b.fits") != svo_file_path("a%3Ab.fits")


def test_create_reuses_an_existing_data_location(svo, fake_svo, header):
    created = svo.create(make_record(svo, header, "oid-1", name="cube.fits"))
    assert created["oid"] == "oid-1" and created["date_beg"] == "2019-04-16T08:20:18.967580"
    assert created["data_location"]["file_url"] == f"{BASE_URL}/cube.fits"
    assert created["fits_header"].startswith("SIMPLE  =")
    svo.create(make_record(svo, header, "oid-2", name="cube.fits"))   # same file: no second location
    assert len(fake_svo.state.data_locations) == 1
    assert fake_svo.data_location_users(1) == ["oid-1", "oid-2"]


def test_duplicate_oid_and_invalid_values_are_rejected(svo, header):
    record = make_record(svo, header, "oid-1")
    svo.create(record)
    with pytest.raises(SvoRejected, match="already exists") as info:
        svo.create(make_record(svo, header, "oid-1", name="other.fits"))
    assert info.value.status == 400 and isinstance(info.value, UserError)
    bad = make_record(svo, header, "oid-2")
    bad.fields["wavelnth"] = "six hundred"
    with pytest.raises(SvoRejected, match="Enter a number"):
        svo.create(bad)


def test_update_edits_an_unshared_location_in_place(svo, fake_svo, header):
    svo.create(make_record(svo, header, "oid-1", name="a.fits"))
    moved = make_record(svo, header, "oid-1", name="b.fits", size=2000)
    moved.fields["observer"] = "Someone Else"
    updated = svo.update(moved)
    assert updated["observer"] == "Someone Else"
    assert updated["data_location"]["id"] == 1 and updated["data_location"]["file_url"] == f"{BASE_URL}/b.fits"
    assert updated["data_location"]["file_size"] == "2000"                 # the SVO sends it as a string
    assert len(fake_svo.state.data_locations) == 1
    patch = [r for r in fake_svo.writes() if r.method == "PATCH"][-1]
    assert "oid" not in patch.body                                     # the SVO refuses to change the oid


def test_update_splits_a_shared_location(svo, fake_svo, header):
    svo.create(make_record(svo, header, "oid-1", name="shared.fits"))
    svo.create(make_record(svo, header, "oid-2", name="shared.fits"))
    assert fake_svo.data_location_users(1) == ["oid-1", "oid-2"]
    fresh = SvoClient(fake_svo.api_url, SVO_USER, SVO_KEY, backoff_base=0.001)   # no cached sharing index
    try:
        updated = fresh.update(make_record(fresh, header, "oid-2", name="own.fits"))
    finally:
        fresh.close()
    assert updated["data_location"]["id"] == 2
    assert fake_svo.data_location_users(1) == ["oid-1"] and fake_svo.data_location_users(2) == ["oid-2"]
    assert fake_svo.state.data_locations[1]["file_url"] == f"{BASE_URL}/shared.fits"   # untouched


def test_a_shared_location_of_the_same_file_is_corrected_for_everyone(svo, fake_svo, header):
    """A location describes the file: its new size is true for every record that shares it."""
    svo.create(make_record(svo, header, "oid-1", name="shared.fits"))
    svo.create(make_record(svo, header, "oid-2", name="shared.fits"))
    svo.update(make_record(svo, header, "oid-2", name="shared.fits", size=999))
    assert fake_svo.state.data_locations[1]["file_size"] == 999 and len(fake_svo.state.data_locations) == 1
    assert fake_svo.data_location_users(1) == ["oid-1", "oid-2"]


def test_an_unchanged_location_is_not_rewritten(svo, fake_svo, header):
    """file_size comes back as "1000": compared normalised, an unchanged location is left alone."""
    svo.create(make_record(svo, header, "oid-1", name="a.fits"))
    stamp = fake_svo.state.data_locations[1]["update_time"]
    svo.update(make_record(svo, header, "oid-1", name="a.fits"))
    patch = [r for r in fake_svo.writes() if r.method == "PATCH"][-1]
    assert "data_location" not in patch.body
    assert fake_svo.state.data_locations[1]["update_time"] == stamp


def test_split_of_a_shared_location_cannot_collide(svo, fake_svo, header):
    """Two records share one file; one cube moves to another directory under the same file name. Its new
    location gets the new path (paths come from the relative path), so neither uniqueness rule refuses it."""
    svo.create(make_record(svo, header, "oid-1", name="2019-04-16/CRISP/cube.fits"))
    svo.create(make_record(svo, header, "oid-2", name="2019-04-16/CRISP/cube.fits"))
    fresh = SvoClient(fake_svo.api_url, SVO_USER, SVO_KEY, backoff_base=0.001)   # no cached sharing index
    try:
        updated = fresh.update(make_record(fresh, header, "oid-2", name="reduced/CRISP/cube.fits"))
    finally:
        fresh.close()
    assert updated["data_location"]["file_path"] == "reduced/CRISP/cube.fits"
    assert fake_svo.data_location_users(1) == ["oid-1"] and fake_svo.data_location_users(2) == ["oid-2"]
    assert fake_svo.state.data_locations[1]["file_path"] == "2019-04-16/CRISP/cube.fits"


def test_a_new_base_url_moves_a_shared_location_with_its_file(svo, fake_svo, header):
    """Same path, new URL: the same file. Its location is edited in place, shared or not, never duplicated."""
    svo.create(make_record(svo, header, "oid-1", name="d/cube.fits"))
    svo.create(make_record(svo, header, "oid-2", name="d/cube.fits"))
    new_base = "https://mirror.example.org/sst"
    svo.update(make_record(svo, header, "oid-2", name="d/cube.fits", base=new_base))
    assert len(fake_svo.state.data_locations) == 1
    assert fake_svo.state.data_locations[1]["file_url"] == f"{new_base}/d/cube.fits"
    svo.create(make_record(svo, header, "oid-3", name="d/cube.fits", base=new_base))
    assert fake_svo.data_location_users(1) == ["oid-1", "oid-2", "oid-3"]


def test_tags_are_sent_and_replaced_on_update(svo, fake_svo, header):
    record = make_record(svo, header, "oid-1", tags=("Sunspot", "Polar Region", "x" * 31))
    assert record.tags == ["sunspot", "polar region"] and "at most 30 characters" in record.skipped[0]
    created = svo.create(record)
    assert [t["name"] for t in created["tags"]] == ["polar region", "sunspot"]
    assert created["tags"][0]["resource_uri"] == "/service/api/svo/tag/polar%20region/"
    svo.update(make_record(svo, header, "oid-1", tags=("Flare",)))
    assert [t["name"] for t in fake_svo.metadata("CRISP", "oid-1")["tags"]] == ["flare"]
    svo.update(make_record(svo, header, "oid-1"))
    assert fake_svo.metadata("CRISP", "oid-1")["tags"] == []


def test_a_refused_retry_is_no_proof_that_the_key_can_write(fake_svo, header):
    """Someone else's record has our OID and our key is wrong. The first POST is lost (502); the retry is
    refused as a duplicate (400, validation before authorisation). That is not our commit."""
    fake_svo.add_metadata("CRISP", "oid-1", fits_header="SIMPLE  =                    T / someone else's")
    with SvoClient(fake_svo.api_url, SVO_USER, "wrong-key", backoff_base=0.001) as client:
        record = make_record(client, header, "oid-1")
        fake_svo.fail_next(1, status=502, methods={"POST"})
        with pytest.raises(SvoRejected, match="already exists"):
            client.create(record)
    with SvoClient(fake_svo.api_url, SVO_USER, SVO_KEY, backoff_base=0.001) as client:
        mine = make_record(client, header, "oid-2")
        fake_svo.fail_next(1, status=502, after_commit=True, methods={"POST"})
        assert client.create(mine)["oid"] == "oid-2"              # our own lost reply: it holds what we sent


def test_records_need_an_http_file_url(svo, header):
    with pytest.raises(UserError, match="not an http, https or ftp URL"):
        build_record(oid="x", dataset="CRISP", header=header, keywords=[], file_url="file:///data/a.fits",
                     file_path="a.fits", file_size=1)


def test_the_svo_block_refuses_submission_without_an_http_base():
    from pathlib import Path

    from blocks.svo import SvoBlock

    with pytest.raises(UserError, match="needs file_url_base"):
        SvoBlock().file_url(Path("/data"), "a.fits")
    with pytest.raises(UserError, match="not an http, https or ftp URL"):
        SvoBlock(file_url_base="file:///data").require_file_url_base()
    assert SvoBlock(file_url_base="https://x.org/d/").file_url(Path("/data"), "a b:c.fits") == \
        "https://x.org/d/a%20b:c.fits"


def test_paging_goes_by_offset_not_by_the_stale_count(svo, fake_svo):
    """The metadata list caches total_count for a day; next is computed from it, objects are live."""
    for i in range(30):
        fake_svo.add_metadata("CRISP", f"a-{i:03d}")
    assert len(svo.remote_records(["CRISP"])) == 30              # the count 30 is now cached
    for i in range(45):
        fake_svo.add_metadata("CRISP", f"b-{i:03d}")
    first = httpx.get(f"{fake_svo.api_url}/metadata_crisp/", params={"limit": 50}).json()
    assert first["meta"]["total_count"] == 30 and first["meta"]["next"] is None and len(first["objects"]) == 50
    assert len(svo.remote_records(["CRISP"])) == 75
    for oid in [f"a-{i:03d}" for i in range(30)]:
        del fake_svo.state.metadata["CRISP"][oid]
    fake_svo.expire_count_cache()
    assert len(svo.remote_records(["CRISP"])) == 45              # count 45 cached
    for oid in [f"b-{i:03d}" for i in range(40)]:
        del fake_svo.state.metadata["CRISP"][oid]
    page = httpx.get(f"{fake_svo.api_url}/metadata_crisp/", params={"limit": 2, "offset": 6}).json()
    assert page["objects"] == [] and page["meta"]["next"] is not None   # stale: next points past the end
    fake_svo.requests.clear()
    assert sorted(svo.remote_records(["CRISP"])) == [f"b-{i:03d}" for i in range(40, 45)]
    assert [r.query["offset"] for r in fake_svo.requests if r.path.endswith("/metadata_crisp/")] == ["0"]



def test_update_points_at_an_existing_location_of_the_new_file(svo, fake_svo, header):
    svo.create(make_record(svo, header, "oid-1", name="one.fits"))
    svo.create(make_record(svo, header, "oid-2", name="two.fits"))
    updated = svo.update(make_record(svo, header, "oid-2", name="one.fits"))
    assert updated["data_location"]["id"] == 1
    assert fake_svo.state.data_locations[2]["file_url"] == f"{BASE_URL}/two.fits"


def test_sync_submits_missing_removes_deleted_and_updates_on_request(svo, fake_svo, header):
    svo.create(make_record(svo, header, "keep"))
    svo.create(make_record(svo, header, "gone"))
    fake_svo.add_metadata("CHROMIS", "stale-chromis")
    local = {oid: make_record(svo, header, oid) for oid in ("keep", "new-1", "new-2")}
    local["keep"].fields["observer"] = "Updated Observer"

    remote = svo.remote_records(["CRISP", "CHROMIS"])
    assert sorted(remote) == ["gone", "keep", "stale-chromis"]
    plan = plan_sync(local, remote, update_existing=False)
    assert [r.oid for r in plan.delete] == ["gone", "stale-chromis"]
    assert [r.oid for r in plan.submit] == ["new-1", "new-2"] and plan.update == []

    report = apply_plan(svo, plan)
    assert (report.deleted, report.submitted, report.updated, report.failed) == (
        ["gone", "stale-chromis"], ["new-1", "new-2"], [], [])
    assert sorted(fake_svo.state.metadata["CRISP"]) == ["keep", "new-1", "new-2"]
    assert fake_svo.state.metadata["CHROMIS"] == {}
    assert fake_svo.metadata("CRISP", "keep")["observer"] != "Updated Observer"

    plan = plan_sync(local, svo.remote_records(["CRISP", "CHROMIS"]), update_existing=True)
    assert (plan.delete, plan.submit, [r.oid for r in plan.update]) == ([], [], ["keep", "new-1", "new-2"])
    report = apply_plan(svo, plan)
    assert report.updated == ["keep", "new-1", "new-2"]
    assert fake_svo.metadata("CRISP", "keep")["observer"] == "Updated Observer"


def test_plan_moves_a_record_that_changed_dataset():
    record = SvoRecord("oid", "CHROMIS", "", {}, "https://x/a", "a", 1)
    remote = {"oid": RemoteRecord("oid", "CRISP", "/r/oid/")}
    plan = plan_sync({"oid": record}, remote, update_existing=True)
    assert [r.dataset for r in plan.delete] == ["CRISP"] and plan.submit == [record] and plan.update == []
    assert plan_sync({}, {}, True).is_empty()


def test_dry_run_writes_nothing(svo, fake_svo, header):
    svo.create(make_record(svo, header, "gone"))
    local = {"new": make_record(svo, header, "new")}
    plan = plan_sync(local, svo.remote_records(["CRISP"]), update_existing=True)
    writes_before = len(fake_svo.writes())
    report = apply_plan(svo, plan, dry_run=True)
    assert report.dry_run and report.deleted == ["gone"] and report.submitted == ["new"]
    assert len(fake_svo.writes()) == writes_before
    assert sorted(fake_svo.state.metadata["CRISP"]) == ["gone"]


def test_pagination_follows_meta_next(svo, fake_svo):
    for i in range(123):
        fake_svo.add_metadata("CRISP", f"oid-{i:03d}")
    remote = svo.remote_records(["CRISP"])
    assert len(remote) == 123
    pages = [r for r in fake_svo.requests if r.path.endswith("/metadata_crisp/")]
    assert [r.query.get("offset", "0") for r in pages] == ["0", "50", "100"]
    assert all(r.query["limit"] == "50" for r in pages)


def test_oids_with_special_characters_round_trip(svo, fake_svo, header):
    oid = "2019-04-16T08:20:18.96758_6173_0-36,38,39"
    svo.create(make_record(svo, header, oid, name="special.fits"))
    remote = svo.remote_records(["CRISP"])
    assert remote[oid].resource_uri.endswith("/metadata_crisp/2019-04-16T08:20:18.96758_6173_0-36,38,39/")
    assert svo.get_metadata("CRISP", oid)["oid"] == oid
    svo.delete(remote[oid])
    assert fake_svo.state.metadata["CRISP"] == {}


def test_bad_credentials_read_as_anonymous_but_cannot_write(fake_svo, header):
    with SvoClient(fake_svo.api_url, SVO_USER, "wrong-key", backoff_base=0.001) as client:
        assert client.dataset("CRISP")["name"] == "CRISP"               # reads work
        record = make_record(client, header, "oid-1")
        with pytest.raises(SvoAuthError, match="HTTP 401") as info:
            apply_plan(client, plan_sync({"oid-1": record}, {}, False))
        assert "wrong-key" not in str(info.value) and isinstance(info.value, UserError)
    posts = [r for r in fake_svo.requests if r.method == "POST"]
    assert len(posts) == 1                                              # a 401 is not retried


def test_server_errors_are_retried_then_succeed(svo, fake_svo, header):
    record = make_record(svo, header, "oid-1")
    svo.keywords("CRISP")
    fake_svo.fail_next(2, status=500)
    assert svo.submit(record) == "created"
    assert fake_svo.metadata("CRISP", "oid-1") is not None
    fake_svo.fail_next(1, status=503)
    record.fields["observer"] = "Changed"
    assert svo.submit(record) == "updated"
    assert fake_svo.metadata("CRISP", "oid-1")["observer"] == "Changed"


def test_a_post_committed_before_a_lost_reply_counts_as_created(svo, fake_svo, header):
    record = make_record(svo, header, "oid-1")
    fake_svo.fail_next(1, status=502, after_commit=True, methods={"POST"})
    created = svo.create(record)
    assert created["oid"] == "oid-1"
    assert len([r for r in fake_svo.requests if r.method == "POST"]) == 2   # retried, refused as duplicate, checked


def test_an_unavailable_service_raises_a_transient_error(svo, fake_svo):
    fake_svo.fail_next(10, status=500)
    with pytest.raises(SvoError, match="failed 4 times, last: HTTP 500") as info:
        svo.dataset("CRISP")
    assert not isinstance(info.value, UserError)


def test_connection_refused_is_retried_then_transient(fake_svo):
    url = fake_svo.api_url
    fake_svo.stop()
    with SvoClient(url, SVO_USER, SVO_KEY, retries=2, backoff_base=0.001, timeout=2) as client:
        with pytest.raises(SvoError, match="ConnectError"):
            client.dataset("CRISP")


def test_rejected_records_are_reported_and_the_rest_goes_on(svo, fake_svo, header):
    good = make_record(svo, header, "good", name="good.fits")
    bad = make_record(svo, header, "bad", name="bad.fits")
    bad.file_path = "2019-04-16/CRISP/bad:name.fits"
    report = apply_plan(svo, plan_sync({"good": good, "bad": bad}, {}, False))
    assert report.submitted == ["good"]
    assert [(oid, action) for oid, action, _ in report.failed] == [("bad", "submit")]
    assert "colon is a discouraged character" in report.failed[0][2]


def test_build_record_refuses_unsafe_file_paths(svo, header):
    with pytest.raises(UserError, match="must be relative"):
        build_record(oid="x", dataset="CRISP", header=header, keywords=[], file_url="https://x/y",
                     file_path="a|b.fits", file_size=1)


def test_fake_svo_rules(fake_svo):
    """The fake's own contract, checked over plain HTTP, so client tests rest on the real rules."""
    auth = {"Authorization": f"ApiKey {SVO_USER}:{SVO_KEY}"}
    base = fake_svo.api_url
    with httpx.Client() as http:
        dataset = http.get(f"{base}/dataset/CRISP/").json()
        meta_uri = dataset["metadata"]["resource_uri"]
        assert meta_uri == "/service/api/svo/metadata_crisp/" and dataset["resource_uri"].startswith("/")
        origin = base.split("/service")[0]
        assert http.post(origin + meta_uri, json={"oid": "x"}).status_code == 401
        loc = {"dataset": dataset["resource_uri"], "file_url": "https://x/a.fits", "file_size": 1,
               "file_path": "a.fits"}
        r = http.post(origin + meta_uri, json={"oid": "x", "data_location": loc}, headers=auth)
        assert r.status_code == 201 and r.headers["Location"].endswith("/metadata_crisp/x/")
        assert http.post(origin + meta_uri, json={"oid": "x"}, headers=auth).status_code == 400
        r = http.patch(origin + meta_uri + "x/", json={"oid": "y"}, headers=auth)
        assert r.status_code == 400 and "cannot be modified" in r.text
        same_path = {**loc, "file_url": "https://x/b.fits"}
        r = http.post(origin + meta_uri, json={"oid": "z", "data_location": same_path}, headers=auth)
        assert r.status_code == 400 and "File path already exists" in r.text
        assert fake_svo.state.metadata["CRISP"].keys() == {"x"}        # nothing half-created
        assert http.get(origin + meta_uri + "nope/").status_code == 404
        r = http.delete(origin + meta_uri + "x/", headers=auth)
        assert r.status_code == 204 and r.content == b""
        page = http.get(f"{base}/keyword/", params={"dataset__name": "CRISP", "limit": 5}).json()
        assert page["meta"]["total_count"] == 26 and len(page["objects"]) == 5
        assert page["meta"]["next"] == "/service/api/svo/keyword/?dataset__name=CRISP&limit=5&offset=5"
        assert page["meta"]["previous"] is None
        page = http.get(f"{base}/keyword/", params={"dataset__name": "CRISP", "limit": 5, "offset": 3}).json()
        assert page["meta"]["previous"] is None                          # tastypie: offset - limit < 0


def test_fake_svo_validates_before_it_authorises(fake_svo):
    """Anonymous (or wrong-key) writes: invalid ones get 400, valid ones 401, unknown objects 404."""
    base = fake_svo.api_url
    origin = base.split("/service")[0]
    wrong = {"Authorization": f"ApiKey {SVO_USER}:wrong"}
    with httpx.Client() as http:
        dataset = http.get(f"{base}/dataset/CRISP/").json()
        meta_uri = origin + dataset["metadata"]["resource_uri"]
        loc = {"dataset": dataset["resource_uri"], "file_url": "https://x/a.fits", "file_size": "12",
               "file_path": "a.fits"}
        r = http.post(meta_uri, json={"oid": "x", "wavelnth": "six"}, headers=wrong)
        assert r.status_code == 400 and "Enter a number" in r.text
        r = http.post(meta_uri, json={"oid": "x", "data_location": loc, "tags": [{"name": "t" * 31}]}, headers=wrong)
        assert r.status_code == 400 and "at most 30 characters" in r.text
        r = http.post(meta_uri, json={"oid": "x", "data_location": loc}, headers=wrong)
        assert r.status_code == 401 and r.content == b""
        assert http.delete(meta_uri + "nope/", headers=wrong).status_code == 404
        r = http.post(f"{base}/data_location/", json={**loc, "file_url": "file:///a.fits"}, headers=wrong)
        assert r.status_code == 400 and "Enter a valid URL" in r.text
        assert http.post(f"{base}/data_location/", json=loc, headers=wrong).status_code == 401
        assert fake_svo.state.data_locations == {} and fake_svo.state.metadata["CRISP"] == {}
        fake_svo.add_metadata("CRISP", "y")
        assert http.delete(meta_uri + "y/", headers=wrong).status_code == 401
        assert http.patch(meta_uri + "y/", json={"naxis1": 1.5}, headers=wrong).status_code == 400
        assert http.patch(meta_uri + "y/", json={"naxis1": 2}, headers=wrong).status_code == 401


def test_fake_svo_metadata_counts_are_cached_and_file_sizes_are_strings(fake_svo):
    base = fake_svo.api_url
    dl = fake_svo.add_data_location("CRISP", "https://x/a.fits", "a.fits", file_size=757440)
    assert dl["file_size"] == "757440"
    for i in range(3):
        fake_svo.add_metadata("CRISP", f"m{i}", data_location=dl)
    with httpx.Client() as http:
        assert http.get(f"{base}/metadata_crisp/", params={"limit": 2}).json()["meta"]["next"] is not None
        fake_svo.add_metadata("CRISP", "m3")
        page = http.get(f"{base}/metadata_crisp/", params={"limit": 2, "offset": 2}).json()
        assert page["meta"]["total_count"] == 3 and page["meta"]["next"] is None and len(page["objects"]) == 2
        assert page["objects"][0]["data_location"]["file_size"] == "757440"
        filtered = http.get(f"{base}/metadata_crisp/", params={"oid": "m3"}).json()
        assert filtered["meta"]["total_count"] == 1                       # its own cache key
        assert http.get(f"{base}/data_location/", params={"limit": 1}).json()["meta"]["total_count"] == 1
        fake_svo.expire_count_cache()
        assert http.get(f"{base}/metadata_crisp/").json()["meta"]["total_count"] == 4


def test_chromis_records_go_to_the_chromis_dataset(svo, fake_svo, tmp_path):
    path = write_cube(tmp_path, CubeSpec(instrument="CHROMIS", n_stokes=1, filter1="3950"))
    header = read_headers(path).primary
    record = make_record(svo, header, "chromis-1", dataset="CHROMIS")
    assert svo.submit(record) == "created"
    assert fake_svo.metadata("CHROMIS", "chromis-1")["instrume"] == "CHROMIS"
    assert fake_svo.state.metadata["CRISP"] == {}


def test_fault_switch_counts(fake_svo):
    fake_svo.fail_next(1, status=500)
    with httpx.Client() as http:
        assert http.get(f"{fake_svo.api_url}/dataset/").status_code == 500
        assert http.get(f"{fake_svo.api_url}/dataset/").status_code == 200


def test_fake_uses_isolated_state():
    with FakeSvo() as one, FakeSvo() as two:
        one.add_metadata("CRISP", "a")
        assert two.metadata("CRISP", "a") is None
