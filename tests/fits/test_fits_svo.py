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
                size: int = 1000) -> SvoRecord:
    name = name or f"{oid}.fits"
    record, missing = build_record(oid=oid, dataset=dataset, header=header, keywords=svo.keywords(dataset),
                                   file_url=f"{BASE_URL}/{name}", file_path=f"2019-04-16/{dataset}/{name}",
                                   file_size=size)
    assert missing == []
    return record


def test_record_fields_follow_the_svo_keyword_types(svo, header):
    fields, missing = record_fields(header, svo.keywords("CRISP"))
    assert missing == []
    assert fields["date_beg"] == "2019-04-16T08:20:18.967580"
    assert fields["naxis5"] == 6 and fields["cdelt1"] == 1 and isinstance(fields["cdelt1"], int)
    assert fields["dw3_axis_1"] == 1.0 and fields["filter1"] == "6173"
    assert fields["releasec"].endswith("uses these data")
    extra, missing = record_fields(header, [{"name": "nope", "verbose_name": "NOT-THERE", "type": "real"}])
    assert (extra, missing) == ({}, ["NOT-THERE"])


def test_file_path_for_the_svo_is_safe():
    import datetime as dt

    path = svo_file_path(dt.datetime(2019, 4, 16, 8, 20), "CRISP", "nb_6173_2019-04-16T08:20:18_scans=0-4.fits")
    assert path == "2019-04-16/CRISP/nb_6173_2019-04-16T082018_scans=0-4.fits"


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
    assert updated["data_location"]["file_size"] == 2000
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


def test_update_of_a_shared_location_to_the_same_file_leaves_it_alone(svo, fake_svo, header):
    svo.create(make_record(svo, header, "oid-1", name="shared.fits"))
    svo.create(make_record(svo, header, "oid-2", name="shared.fits"))
    svo.update(make_record(svo, header, "oid-2", name="shared.fits", size=999))
    assert fake_svo.state.data_locations[1]["file_size"] == 1000
    assert fake_svo.data_location_users(1) == ["oid-1", "oid-2"]


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
    pages = [r for r in fake_svo.requests if r.path.endswith("/metadata/crisp/")]
    assert [r.query.get("offset", "0") for r in pages] == ["0", "50", "100"]
    assert all(r.query["limit"] == "50" for r in pages)


def test_oids_with_special_characters_round_trip(svo, fake_svo, header):
    oid = "2019-04-16T08:20:18.96758_6173_0-36,38,39"
    svo.create(make_record(svo, header, oid, name="special.fits"))
    remote = svo.remote_records(["CRISP"])
    assert remote[oid].resource_uri.endswith("/metadata/crisp/2019-04-16T08:20:18.96758_6173_0-36,38,39/")
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
        assert meta_uri == "/service/api/svo/metadata/crisp/" and dataset["resource_uri"].startswith("/")
        origin = base.split("/service")[0]
        assert http.post(origin + meta_uri, json={"oid": "x"}).status_code == 401
        loc = {"dataset": dataset["resource_uri"], "file_url": "https://x/a.fits", "file_size": 1,
               "file_path": "a.fits"}
        r = http.post(origin + meta_uri, json={"oid": "x", "data_location": loc}, headers=auth)
        assert r.status_code == 201 and r.headers["Location"].endswith("/metadata/crisp/x/")
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
        assert page["meta"]["total_count"] == 24 and len(page["objects"]) == 5
        assert page["meta"]["next"] == "/service/api/svo/keyword/?dataset__name=CRISP&limit=5&offset=5"
        assert page["meta"]["previous"] is None


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
