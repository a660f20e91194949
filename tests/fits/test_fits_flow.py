"""The FITS cube flows end to end: synthetic SST cubes in, registry rows and previews out, on a real
PostgreSQL and Prefect's test server; bad input through the CLI ends in a clear UserError."""
from __future__ import annotations

import datetime as dt
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from cubes import CubeSpec, ffmpeg_bindir, write_cube, write_mov

from flows.fits.records import metadata_table_sql
from tasks.errors import UserError

FLOW = [pytest.mark.integration, pytest.mark.prefect]
ASTROPY_DATA = Path(fits.__file__).parent / "tests" / "data"
MIGRATION = Path(__file__).resolve().parents[2] / "migrations" / "030_fits.sql"


# ------------------------------------------------------------------ no services


def test_migration_has_one_typed_column_per_keyword():
    from flows.fits.metadata import known_keywords

    text = MIGRATION.read_text()
    assert metadata_table_sql() in text
    body = text.split("CREATE TABLE IF NOT EXISTS fits_metadata (", 1)[1].split("\n);", 1)[0]
    columns = dict(re.findall(r'^\s+"([a-z0-9_]+)" ([a-z ]+?),?$', body, flags=re.MULTILINE))
    keywords = known_keywords()
    assert set(columns) == set(keywords)
    expected = {"text": "text", "integer": "bigint", "real": "double precision", "datetime": "timestamp"}
    assert {c: expected[k.type] for c, k in keywords.items()} == columns
    assert columns["date_beg"] == "timestamp" and columns["naxis5"] == "bigint" and columns["dw3_axis_1"] == \
        "double precision"


def test_paths_must_be_fits_files_inside_the_science_root(tmp_path):
    from flows.fits.steps import find_cubes, resolve_directory, resolve_path

    root = tmp_path / "science"
    (root / "a").mkdir(parents=True)
    cube = root / "a" / "c.fits"
    cube.write_bytes(b"x")
    outside = tmp_path / "secret.fits"
    outside.write_bytes(b"x")
    (root / "a" / "link.fits").symlink_to(outside)
    assert resolve_path(root, "a/c.fits") == ("a/c.fits", cube.resolve())
    assert resolve_path(root, str(cube)) == ("a/c.fits", cube.resolve())
    assert resolve_path(root, "a/./c.fits")[0] == "a/c.fits"
    for bad, message in [("../secret.fits", "outside the science-data root"),
                         (str(outside), "outside the science-data root"),
                         ("a/link.fits", "outside the science-data root"),
                         ("a/c.txt", "must end in one of .fits, .fit, .fts, .fz"), ("a/c.fits.zip", "must end in"),
                         ("a/.fits", "not named as a FITS file"),
                         ("a/missing.fits", "no cube a/missing.fits"), ("", "no cube path")]:
        with pytest.raises(UserError, match=message):
            resolve_path(root, bad)
    assert resolve_directory(root, ".") == (".", root.resolve())
    assert resolve_directory(root, str(root / "a")) == ("a", (root / "a").resolve())
    assert find_cubes(root, root) == ["a/c.fits", "a/link.fits"]
    for bad, message in [("..", "outside the science-data root"), (str(tmp_path), "outside the science-data root"),
                         ("a/c.fits", "is not a directory")]:
        with pytest.raises(UserError, match=message):
            resolve_directory(root, bad)


# ------------------------------------------------------------------ one cube


def _one(registry, sql: str, params=()) -> dict:
    rows = registry.execute(sql, params)
    assert len(rows) == 1, rows
    return rows[0]


@pytest.mark.integration
@pytest.mark.prefect
def test_ingest_a_cube_records_everything(fits_env, capsys):
    from PIL import Image

    from flows.fits.extensions import read_extension_data
    from flows.fits.header import read_headers

    cube = fits_env.cube()
    code, summary = fits_env.cli(capsys, "fits", fits_env.rel(cube), "--owner", "Jane@Example.org", "--swedish")
    assert code == 0, summary
    oid = "2019-04-16T08:20:18.96758_6173_0-3,5,6"
    assert summary["oid"] == oid and summary["state"] == "ingested" and "error" not in summary
    order = summary["work_order"]
    assert order["state"] == "Completed" and order["attempts"] == 1 and order["path"] == fits_env.rel(cube)
    assert order["change_key"].startswith("fits-checksum:") and order["checksums_seen"] == [order["change_key"]]
    assert [h["checksum"] for h in summary["checksums"]["hdus"]] == ["OK"] * 5

    expected_ext = read_extension_data(cube)
    primary = read_headers(cube).primary
    with fits_env.registry() as r:
        row = _one(r, "SELECT * FROM fits_cubes WHERE oid = %s", (oid,))
        assert (row["path"], row["filename"], row["size"]) == (fits_env.rel(cube), cube.name, cube.stat().st_size)
        assert row["instrument"] == "CRISP" and row["grouping"] == "none"
        assert row["features_ingested"] and row["events_ingested"]
        obs = _one(r, "SELECT * FROM fits_observations WHERE id = %s", (row["observation_id"],))
        assert obs["key"] == "2019-04-16T08:19:53" and obs["cube_count"] == 1
        assert obs["date_beg"] == dt.datetime(2019, 4, 16, 8, 20, 18, 967580)
        assert obs["date_end"] == dt.datetime(2019, 4, 16, 8, 39, 8, 566670)
        acc = _one(r, "SELECT * FROM fits_access WHERE cube_id = %s", (row["id"],))
        assert acc["release_date"] == dt.date(2020, 11, 12) and acc["release_provided"]
        assert acc["release_comment"] == primary["RELEASEC"] and acc["release_comment"].endswith("uses these data")
        grants = r.execute("SELECT kind, principal FROM fits_access_grants WHERE cube_id = %s ORDER BY kind",
                           (row["id"],))
        assert [(g["kind"], g["principal"]) for g in grants] == [("group", "Swedish User"),
                                                                 ("user", "Jane@Example.org")]
        head = _one(r, "SELECT * FROM fits_headers WHERE cube_id = %s", (row["id"],))
        assert head["header_text"] == primary.tostring(sep="\n")
        assert "SOMEKEY" in head["unknown_keywords"] and "SOMEKEY =" in head["header_text"]
        assert len(head["extension_headers"]) == 4
        meta = _one(r, "SELECT * FROM fits_metadata WHERE cube_id = %s", (row["id"],))
        assert meta["date_beg"] == dt.datetime(2019, 4, 16, 8, 20, 18, 967580)
        assert meta["naxis5"] == 6 and meta["naxis1"] == 16 and meta["obs_hdu"] == 1
        assert meta["wavelnth"] == pytest.approx(617.3) and meta["instrume"] == "CRISP"
        assert meta["dw3_axis_1"] == 1.0 and meta["dw3_name"] == "Cavity error" and meta["releasec"].startswith("Data")
        assert meta["hglt_obs"] is None                       # known keyword, not in this header
        tags = r.execute("SELECT kind, tag FROM fits_tags WHERE cube_id = %s ORDER BY kind, tag", (row["id"],))
        assert [(t["kind"], t["tag"]) for t in tags] == [("event", "Flare"), ("feature", "Polar Region"),
                                                         ("feature", "Sunspot")]
        ext = {e["kind"]: e["data"] for e in r.execute("SELECT * FROM fits_extension_data WHERE cube_id = %s",
                                                         (row["id"],))}
        assert ext == {"r0": expected_ext.r0, "line_profile": expected_ext.line_profile}
        prev = _one(r, "SELECT * FROM fits_previews WHERE cube_id = %s", (row["id"],))
        events = {e["event_type"]: e["outcome"] for e in r.events(row["ingest_id"])}
        ingest = _one(r, "SELECT * FROM ingests WHERE id = %s", (row["ingest_id"],))
        files = _one(r, "SELECT * FROM files WHERE domain = 'fits' AND file_key = %s", (oid,))
    assert prev["source"] == "cube" and prev["source_key"] == "cube:" + order["change_key"]
    with Image.open(prev["path"]) as full, Image.open(prev["thumbnail_path"]) as thumb:
        assert full.format == "JPEG" and full.size == (16, 12)
        assert thumb.format == "PNG" and thumb.size == (78, round(12 * 78 / 16))
        pixels = np.asarray(full.convert("L"), dtype=float)
    assert pixels[:, -1].mean() > pixels[:, 0].mean() + 100    # the x-gradient frame [0][0][mid] was rendered
    assert Path(prev["path"]).is_relative_to(fits_env.previews)
    assert events == {"fixity check": "success", "format identification": "success", "creation": "success",
                      "identifier assignment": "success", "access assignment": "success", "ingestion": "success"}
    assert ingest["state"] == "completed" and ingest["natural_key"] == oid
    assert files["size"] == cube.stat().st_size and files["vault_uri"] == cube.resolve().as_uri()
    messages = fits_env.outbox()
    assert [m["routing_key"] for m in messages] == ["fits.ingest.ingested"]
    assert messages[0]["body"]["oid"] == oid and messages[0]["body"]["work_order"]["state"] == "Completed"
    report = _artifact(oid)
    assert f"| **oid** | {oid} |" in report and "fixity check" in report and "| describe |" in report
    assert report.count("| describe |") == 1  # timings once
    assert ".thumb.png" in report


def _artifact(name: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from flows.reporting import artifact_key

    # The newest report under the key: other tests of the session ingest cubes with the same OID.
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=[artifact_key("fits", name)])), sort=ArtifactSort.CREATED_DESC, limit=1)
    assert len(found) == 1
    return found[0].data


def _task_run_names(flow_run_id, expect: int, timeout: float = 20.0) -> list[str]:
    """Task runs reach the API through events, so wait until ``expect`` of them are recorded."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        runs = _task_runs(str(flow_run_id))
        if len(runs) >= expect or time.monotonic() > deadline:
            return sorted(r.name.rsplit("-", 1)[0] for r in runs)
        time.sleep(0.2)


@pytest.mark.integration
@pytest.mark.prefect
def test_unchanged_cube_is_skipped_force_reingests_and_a_change_is_noticed(fits_env):
    cube = fits_env.cube()
    code, first = fits_env.run(cube)
    assert code == 0 and first["state"] == "ingested"
    full = Path(first["previews"]["image"])
    mtime = full.stat().st_mtime_ns

    code, second = fits_env.run(cube)
    assert code == 0, second
    assert second["state"] == "skipped" and second["oid"] == first["oid"]
    assert second["work_order"]["attempts"] == 2 and second["work_order"]["state"] == "Completed"
    assert "describe" not in second["timings"] and "checksums" not in second["timings"]
    assert second["previews"]["regenerated"] is False and full.stat().st_mtime_ns == mtime
    with fits_env.registry() as r:
        skip_run = _one(r, "SELECT flow_run_id FROM fits_work_orders WHERE path = %s",
                        (second["path"],))["flow_run_id"]
    # the skip path is two task runs, not the first ingest's seven: they are most of its cost
    assert _task_run_names(skip_run, expect=2) == ["finish-unchanged", "open-order-read-headers"]
    with fits_env.registry() as r:
        ingest = _one(r, "SELECT * FROM ingests WHERE domain = 'fits' AND natural_key = %s", (first["oid"],))
        skipped = [e for e in r.events(ingest["id"]) if e["outcome"] == "skipped"]
        assert ingest["state"] == "skipped" and len(skipped) == 1 and "unchanged" in skipped[0]["detail"]
        before = _one(r, "SELECT m.updated_at FROM fits_metadata m JOIN fits_cubes c ON c.id = m.cube_id "
                         "WHERE c.oid = %s", (first["oid"],))["updated_at"]

    code, forced = fits_env.run(cube, force=True)
    assert code == 0 and forced["state"] == "ingested" and forced["work_order"]["attempts"] == 3

    write_cube(cube.parent, CubeSpec(features="MISSING", events=None), filename=cube.name)  # same name, new bytes
    code, changed = fits_env.run(cube)
    assert code == 0 and changed["state"] == "ingested"
    assert changed["previews"]["regenerated"] is True
    assert len(changed["work_order"]["checksums_seen"]) == 2
    with fits_env.registry() as r:
        row = _one(r, "SELECT c.*, m.updated_at AS meta_updated FROM fits_cubes c JOIN fits_metadata m "
                      "ON m.cube_id = c.id WHERE c.oid = %s", (first["oid"],))
        assert row["meta_updated"] > before
        assert not row["features_ingested"] and not row["events_ingested"]
        assert r.execute("SELECT * FROM fits_tags WHERE cube_id = %s", (row["id"],)) == []
        skips = r.execute("SELECT count(*) AS n FROM events WHERE outcome = 'skipped' AND subject = %s",
                          (first["oid"],))[0]["n"]
    assert skips == 1
    assert [m["routing_key"] for m in fits_env.outbox()] == [
        "fits.ingest.ingested", "fits.ingest.skipped", "fits.ingest.ingested", "fits.ingest.ingested"]


@pytest.mark.integration
@pytest.mark.prefect
def test_without_checksum_the_sha256_is_the_change_key_and_png_previews_follow_their_source(fits_env):
    from PIL import Image

    cube = fits_env.cube(spec=CubeSpec(checksum=False, point_id=None), filename="nb_6173_grouped_mosaic.fits")
    png = cube.with_suffix(".png")
    Image.new("RGB", (40, 20), (200, 10, 10)).save(png)
    code, first = fits_env.run(cube, oid="my-own-oid")
    assert code == 0, first
    assert first["oid"] == "my-own-oid" and first["previews"]["source"] == "png"
    assert first["work_order"]["change_key"].startswith("sha256:") and "sha256" in first["checksums"]
    with Image.open(first["previews"]["image"]) as im:
        assert im.size == (40, 20) and im.getpixel((5, 5))[0] > 150
    with fits_env.registry() as r:
        row = _one(r, "SELECT c.grouping, o.key FROM fits_cubes c JOIN fits_observations o ON o.id = c.observation_id "
                      "WHERE c.oid = 'my-own-oid'")
    assert row["grouping"] == "mosaic" and row["key"] == "2019-04-16T08:20:18.96758"   # DATE-BEG without POINT_ID

    code, again = fits_env.run(cube, oid="my-own-oid")
    assert again["state"] == "skipped" and again["previews"]["regenerated"] is False
    Image.new("RGB", (30, 30), (0, 0, 250)).save(png)      # a new image beside an unchanged cube
    code, third = fits_env.run(cube, oid="my-own-oid")
    assert third["state"] == "skipped" and third["previews"]["regenerated"] is True
    with Image.open(third["previews"]["image"]) as im:
        assert im.size == (30, 30)


# ------------------------------------------------------------------ bad input through the CLI


def _truncate(path: Path) -> None:
    from flows.fits.header import read_headers

    path.write_bytes(path.read_bytes()[: read_headers(path).hdus[0].data_offset + 50])


def _bad_card(path: Path) -> None:
    raw = path.read_bytes()
    at = raw.index(b"OBSERVER")
    path.write_bytes(raw[:at] + b"THIS IS NOT A FITS CARD AT ALL = = =".ljust(80) + raw[at + 80:])


def _flip_data_byte(path: Path) -> None:
    from flows.fits.header import read_headers

    raw = bytearray(path.read_bytes())
    raw[read_headers(path).hdus[0].data_offset + 100] ^= 0x55
    path.write_bytes(bytes(raw))


BAD = {
    "truncated": (_truncate, "is truncated"),
    "non-FITS card": (_bad_card, "is not a valid FITS card"),
    "bad CHECKSUM": (_flip_data_byte, r"DATASUM of HDU 0 \(PRIMARY\) do not match"),
    "unknown instrument": (None, "unknown instrument INSTRUME='HMI'"),
    "empty DATASUM (memtest.fits)": (None, "empty DATASUM"),
    "outside the root": (None, "outside the science-data root"),
    "not .fits": (None, "must end in one of .fits"),
}


@pytest.mark.integration
@pytest.mark.prefect
def test_the_mov_beside_a_cube_becomes_a_webm_preview_and_without_ffmpeg_a_note(fits_env, tmp_path, monkeypatch):
    import os

    bindir = ffmpeg_bindir(tmp_path)
    assert bindir is not None, "the test extra installs imageio-ffmpeg"
    path = os.environ.get("PATH", "")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{path}")
    cube = fits_env.cube()
    write_mov(cube.with_suffix(".mov"))

    code, first = fits_env.run(cube)
    assert code == 0, first
    webm = Path(first["previews"]["video"])
    assert first["previews"]["video_regenerated"] is True and webm.suffix == ".webm"
    assert webm.read_bytes()[:4] == b"\x1a\x45\xdf\xa3" and webm.is_relative_to(fits_env.previews)
    with fits_env.registry() as r:
        video = _one(r, "SELECT p.* FROM fits_previews p JOIN fits_cubes c ON c.id = p.cube_id "
                        "WHERE c.oid = %s AND p.kind = 'video'", (first["oid"],))
    assert video["path"] == str(webm) and video["source"] == "mov"

    code, again = fits_env.run(cube)                       # unchanged: skipped, the WebM is not re-encoded
    assert code == 0 and again["state"] == "skipped" and again["previews"]["video_regenerated"] is False

    without = os.pathsep.join(d for d in path.split(os.pathsep) if d and not (Path(d) / "ffmpeg").exists())
    monkeypatch.setenv("PATH", without)                    # no ffmpeg: the ingest completes with a note
    other = fits_env.cube("2019-04-17/CRISP", CubeSpec(date_beg="2019-04-17T09:00:00.5"))
    other.with_suffix(".mov").write_bytes(cube.with_suffix(".mov").read_bytes())
    code, noted = fits_env.run(other)
    assert code == 0 and noted["state"] == "ingested", noted
    assert noted["previews"]["video"] is None and "ffmpeg is not on PATH" in noted["previews"]["video_note"]


@pytest.mark.integration
@pytest.mark.prefect
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_clear_user_error_and_nothing_is_ingested(fits_env, capsys, tmp_path, case):
    mutate, message = BAD[case]
    cube = fits_env.cube(spec=CubeSpec(instrument="HMI") if case == "unknown instrument" else None)
    target = fits_env.rel(cube)
    if mutate:
        mutate(cube)
    elif case.startswith("empty DATASUM"):
        target = "foreign/memtest.fits"
        (fits_env.science / "foreign").mkdir()
        shutil.copy(ASTROPY_DATA / "memtest.fits", fits_env.science / target)
    elif case == "outside the root":
        target = str(tmp_path / cube.name)
        shutil.copy(cube, target)
    elif case == "not .fits":
        target = fits_env.rel(cube)[:-5] + ".txt"
    code, summary = fits_env.cli(capsys, "fits", target)
    assert code == 1, summary
    assert summary["state"] == "failed" and re.search(message, summary["error"]), summary["error"]
    assert "Traceback" not in summary["error"]
    with fits_env.registry() as r:
        assert r.execute("SELECT * FROM fits_cubes") == []
        orders = r.execute("SELECT * FROM fits_work_orders")
    if case in ("outside the root", "not .fits"):
        assert orders == [] and summary["work_order"] is None
    else:
        assert [(o["state"], o["error_kind"]) for o in orders] == [("Failed", "user")]
        assert summary["work_order"]["state"] == "Failed" and summary["work_order"]["error"] == summary["error"]
    assert [m["routing_key"] for m in fits_env.outbox()] == ["fits.ingest.failed"]


# ------------------------------------------------------------------ directories, batches, reingest_all


def _task_runs(flow_run_id: str) -> list:
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])))


@pytest.mark.integration
@pytest.mark.prefect
def test_directory_ingest_runs_bounded_batches(fits_env, capsys):
    from flows.cli_common import local_run
    from flows.fits.flow import reingest_all

    base = dt.datetime(2020, 6, 1, 9, 0, 0)
    for i in range(20):
        beg = (base + dt.timedelta(minutes=7 * i)).strftime("%Y-%m-%dT%H:%M:%S.5")
        end = (base + dt.timedelta(minutes=7 * i + 5)).strftime("%Y-%m-%dT%H:%M:%S")
        spec = CubeSpec(date_beg=beg, point_id=f"2020-06-01T09:{i // 5:02d}:00", nx=8, ny=6, n_wave=3,
                        extra={"DATE-END": end})
        directory = fits_env.science / "run" / f"day{i % 3}"
        directory.mkdir(parents=True, exist_ok=True)
        write_cube(directory, spec, filename=f"cube{i:02d}_scans=0-3,5,6.fits")
    broken = fits_env.science / "run" / "broken_scans=1.fits"
    broken.write_bytes(b"SIMPLE  =                    T" + b" " * 50 + b"garbage" * 50)
    (fits_env.science / "run" / "notes.txt").write_text("not a cube")

    code, summary = fits_env.cli(capsys, "fits-dir", "run", "--batch-size", "8")
    assert code == 1, summary                                        # one bad file: a user error, others fine
    assert summary["counts"] == {"ingested": 20, "skipped": 0, "failed": 1} and summary["batches"] == 3
    assert not summary["system_errors"]
    failed = [r for r in summary["results"] if r["state"] == "failed"]
    assert [r["path"] for r in failed] == ["run/broken_scans=1.fits"] and failed[0]["error_kind"] == "user"
    runs = _task_runs(summary["flow_run_id"])
    names = sorted(t.name.rsplit("-", 1)[0] for t in runs)
    assert names == ["find-cubes", "ingest-batch", "ingest-batch", "ingest-batch", "queue-work-orders"], names
    with fits_env.registry() as r:
        orders = r.execute("SELECT state, count(*) AS n FROM fits_work_orders GROUP BY state ORDER BY state")
        assert [(o["state"], o["n"]) for o in orders] == [("Completed", 20), ("Failed", 1)]
        obs = r.execute("SELECT key, date_beg, date_end, cube_count FROM fits_observations ORDER BY key")
    assert [o["cube_count"] for o in obs] == [5, 5, 5, 5]
    for g, o in enumerate(obs):                                     # min DATE-BEG, max DATE-END of its 5 cubes
        assert o["date_beg"] == base + dt.timedelta(minutes=7 * 5 * g, microseconds=500000)
        assert o["date_end"] == base + dt.timedelta(minutes=7 * (5 * g + 4) + 5)

    code, again = fits_env.cli(capsys, "fits-dir", str(fits_env.science / "run"), "--batch-size", "50")
    assert again["counts"] == {"ingested": 0, "skipped": 20, "failed": 1} and again["batches"] == 1

    with local_run():
        summary = reingest_all(force=True, previews=False, batch_size=10, config_block=fits_env.name)
    assert summary["counts"] == {"ingested": 20, "skipped": 0, "failed": 0} and summary["batches"] == 2
    with fits_env.registry() as r:
        attempts = r.execute("SELECT attempts FROM fits_work_orders WHERE state = 'Completed'")
    assert {a["attempts"] for a in attempts} == {3}


@pytest.mark.integration
@pytest.mark.prefect
def test_queued_requests_are_processed_together_and_unchanged_ones_skipped(fits_env, capsys):
    cubes = [fits_env.cube(f"q/day{i}", CubeSpec(date_beg=f"2021-05-0{i + 1}T10:00:00.5", nx=8, ny=6, n_wave=3))
             for i in range(5)]
    (fits_env.science / "q" / "bad_scans=1.fits").write_bytes(b"SIMPLE  =" + b"x" * 100)
    code, refused = fits_env.cli(capsys, "fits", "elsewhere/../../x.fits", "--queue")
    assert code == 1 and refused["state"] == "failed" and "outside" in refused["error"]
    code, missing = fits_env.cli(capsys, "fits", "q/none.fits", "--queue")
    assert code == 1 and "no cube q/none.fits" in missing["error"]

    queued = []
    for cube in cubes[:4]:
        code, out = fits_env.cli(capsys, "fits", fits_env.rel(cube), "--queue", "--owner", "pi@example.org")
        assert code == 0 and out["state"] == "queued" and out["work_order"]["state"] == "Queued", out
        queued.append(out["work_order"]["id"])
    code, out = fits_env.cli(capsys, "fits", fits_env.rel(cubes[4]), "--queue", "--oid", "MY-OID", "--no-previews")
    assert code == 0 and out["state"] == "queued"
    code, out = fits_env.cli(capsys, "fits", "q/bad_scans=1.fits", "--queue")
    assert code == 0 and out["state"] == "queued"                 # bytes are read by the processor, not here
    with fits_env.registry() as r:
        assert r.execute("SELECT count(*) AS n FROM fits_cubes")[0]["n"] == 0

    code, summary = fits_env.cli(capsys, "fits-work-orders", "--batch-size", "4")
    assert code == 1, summary                                     # the bad file: a user error, the rest done
    assert summary["counts"] == {"ingested": 5, "skipped": 0, "failed": 1} and summary["batches"] == 2
    assert not summary["system_errors"]
    names = _task_run_names(summary["flow_run_id"], expect=3)
    assert names == ["claim-work-orders", "ingest-batch", "ingest-batch"], names
    with fits_env.registry() as r:
        orders = {o["path"]: o for o in r.execute("SELECT * FROM fits_work_orders")}
        oids = {c["path"]: c["oid"] for c in r.execute("SELECT path, oid FROM fits_cubes")}
        grants = r.execute("SELECT DISTINCT principal FROM fits_access_grants")
        previews = {p["cube_id"] for p in r.execute("SELECT cube_id FROM fits_previews")}
    assert {o["state"] for p, o in orders.items() if p != "q/bad_scans=1.fits"} == {"Completed"}
    assert orders["q/bad_scans=1.fits"]["state"] == "Failed" and orders["q/bad_scans=1.fits"]["error_kind"] == "user"
    assert oids[fits_env.rel(cubes[4])] == "MY-OID"                  # each order keeps its own options
    assert [g["principal"] for g in grants] == ["pi@example.org"] and len(previews) == 4
    assert {orders[fits_env.rel(c)]["attempts"] for c in cubes} == {1}

    code, empty = fits_env.cli(capsys, "fits-work-orders")             # nothing queued: nothing claimed
    assert code == 0 and empty["cubes"] == 0 and empty["batches"] == 0

    for cube in cubes:                                                 # unchanged: queued again, skipped
        fits_env.cli(capsys, "fits", fits_env.rel(cube), "--queue")
    code, again = fits_env.cli(capsys, "fits-work-orders")
    assert code == 0 and again["counts"] == {"ingested": 0, "skipped": 5, "failed": 0}, again


@pytest.mark.integration
@pytest.mark.prefect
def test_processors_never_share_an_order_and_a_dead_ones_orders_are_taken_again(fits_env):
    from concurrent.futures import ThreadPoolExecutor

    from flows.fits.records import claim_orders, queue_orders

    paths = [f"x/c{i:03d}.fits" for i in range(60)]
    with fits_env.registry() as r:
        assert queue_orders(r, paths, {"previews": False}) == 60

    def claim(_: int) -> list[str]:
        with fits_env.registry() as reg:
            return [row["path"] for row in claim_orders(reg, 7, 3600)]

    with ThreadPoolExecutor(6) as pool:
        taken = [p for batch in pool.map(claim, range(12)) for p in batch]
    assert sorted(taken) == paths                                    # every order once, none twice
    with fits_env.registry() as r:
        assert claim_orders(r, 100, 3600) == []                      # all Started by live processors
        r.execute("UPDATE fits_work_orders SET started_at = now() - interval '2 hours' WHERE path = ANY(%s)",
                  (paths[:3],))
        again = claim_orders(r, 100, 3600)                           # older than the lease: processor died
        assert sorted(o["path"] for o in again) == paths[:3]
        assert queue_orders(r, paths[:1], {}) == 0                   # a Started order is not re-queued


@pytest.mark.integration
@pytest.mark.prefect
def test_packaged_fits_files_never_crash_the_flow(fits_env, capsys):
    """Real FITS files from astropy's test data: foreign headers end as clear user errors, never tracebacks."""
    target = fits_env.science / "foreign"
    target.mkdir()
    files = sorted(ASTROPY_DATA.glob("*.fits"))
    assert len(files) > 20
    for path in files:
        shutil.copy(path, target / path.name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, summary = fits_env.cli(capsys, "fits-dir", "foreign", "--no-previews", "--batch-size", "100")
    assert code == 1 and not summary["system_errors"], [r for r in summary["results"] if r.get("error_kind") != "user"]
    assert summary["counts"]["failed"] == len(files)
    errors = {r["path"].split("/")[-1]: r["error"] for r in summary["results"]}
    assert all(r["error_kind"] == "user" for r in summary["results"])
    assert "empty DATASUM" in errors["memtest.fits"]
    assert "checksum_false.fits" in errors and "do not match" in errors["checksum_false.fits"]
    unknown = [e for e in errors.values() if "instrument" in e]
    assert len(unknown) > len(files) // 2, errors


# ------------------------------------------------------------------ access


@pytest.mark.integration
@pytest.mark.prefect
def test_fits_access_before_and_after_release(fits_env, capsys):
    cube = fits_env.cube(spec=CubeSpec(release="2999-01-01"))
    code, summary = fits_env.run(cube, owner_emails=["alice@example.org"])
    assert code == 0, summary
    oid = summary["oid"]

    def ask(*extra: str) -> tuple[int, dict]:
        return fits_env.cli(capsys, "fits-access", oid, *extra)

    code, answer = ask("--user", "ALICE@example.org")
    assert code == 0 and answer["access"] is True and "granted" in answer["reason"]
    code, answer = ask("--user", "bob@example.org")
    assert code == 1 and answer["access"] is False and "embargoed until 2999-01-01" in answer["reason"]
    code, answer = ask("--user", "bob@example.org", "--group", "Swedish User")
    assert code == 1                                       # no group grant: the data is not Swedish
    code, answer = ask("--user", "bob@example.org", "--on", "2999-01-01")
    assert code == 0 and answer["access"] is True and answer["reason"] == "released on 2999-01-01"

    code, summary = fits_env.run(cube, force=True, swedish_data=True)
    assert code == 0
    code, answer = ask("--user", "bob@example.org", "--group", "Swedish User")
    assert code == 0 and answer["access"] is True
    code, answer = ask("--user", "alice@example.org")      # grants accumulate over re-ingests
    assert code == 0
    code, answer = fits_env.cli(capsys, "fits-access", "no-such-oid", "--user", "bob@example.org")
    assert code == 2 and "no cube" in answer["error"]


# ------------------------------------------------------------------ awkward inputs (issues 13 and 14)


@pytest.mark.integration
@pytest.mark.prefect
def test_a_cube_without_a_preview_image_is_ingested_with_a_note(fits_env):
    """Its primary HDU has every keyword but no image: the preview cannot be made after the cube is
    recorded. A preview is a note, not a failure: the ingest completes and nothing is half-written."""
    made = fits_env.cube()
    with fits.open(made) as hdul:
        primary = fits.PrimaryHDU(header=hdul[0].header.copy())
        for key in ("NAXIS1", "NAXIS2", "NAXIS3", "NAXIS4", "NAXIS5"):
            primary.header.remove(key, ignore_missing=True)
        fits.HDUList([primary, *[h.copy() for h in hdul[1:]]]).writeto(made, overwrite=True, checksum=True)
    code, summary = fits_env.run(made)
    assert code == 0 and summary["state"] == "ingested", summary
    assert summary["previews"]["image"] is None and "no image in its primary HDU" in summary["previews"]["note"]
    with fits_env.registry() as r:
        assert len(r.execute("SELECT * FROM fits_cubes")) == 1 and r.execute("SELECT * FROM fits_previews") == []
        order = _one(r, "SELECT * FROM fits_work_orders")
        events = r.execute("SELECT event_type, outcome, detail FROM events WHERE event_type = 'creation'")
    assert order["state"] == "Completed"
    assert [(e["outcome"], "no image" in e["detail"]) for e in events] == [("failure", True)]


@pytest.mark.integration
@pytest.mark.prefect
def test_two_files_with_one_oid_are_a_user_error_naming_both(fits_env):
    first = fits_env.cube("2019-04-16/CRISP")
    (fits_env.science / "copy").mkdir()
    second = fits_env.science / "copy" / first.name
    shutil.copy(first, second)
    code, one = fits_env.run(first)
    assert code == 0, one
    for _ in range(2):                                   # never takes turns: the record stays with the first
        code, other = fits_env.run(second)
        assert code == 1 and other["state"] == "failed", other
        assert fits_env.rel(first) in other["error"] and fits_env.rel(second) in other["error"]
        assert "two files cannot share one OID" in other["error"] and "--oid" in other["error"]
        code, again = fits_env.run(first)
        assert code == 0 and again["state"] == "skipped", again
    with fits_env.registry() as r:
        assert [c["path"] for c in r.execute("SELECT path FROM fits_cubes")] == [fits_env.rel(first)]
    code, own = fits_env.run(second, oid="copy-with-its-own-oid")
    assert code == 0 and own["oid"] == "copy-with-its-own-oid", own
    first.unlink()                                       # a cube that moved: its record follows it
    (fits_env.science / "moved").mkdir()
    moved = shutil.copy(second, fits_env.science / "moved" / first.name)
    code, summary = fits_env.run(Path(moved))
    assert code == 0 and summary["oid"] == one["oid"], summary
    with fits_env.registry() as r:
        assert _one(r, "SELECT path FROM fits_cubes WHERE oid = %s", (one["oid"],))["path"] == fits_env.rel(Path(moved))


@pytest.mark.integration
@pytest.mark.prefect
def test_gzipped_fts_fit_and_fpacked_cubes_are_ingested(fits_env, capsys):
    """The names FITS archives use; a .gz is decompressed in a stream into staging, which is empty after."""
    import gzip

    from tasks.home import home_path

    base = fits_env.cube("wild", spec=CubeSpec(date_beg="2019-04-16T08:00:00.5"))
    with open(base, "rb") as src, gzip.open(base.with_name("zipped.fits.gz"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    base.unlink()
    fits_env.cube("wild", filename="plain.fts", spec=CubeSpec(date_beg="2019-04-16T09:00:00.5"))
    fits_env.cube("wild", filename="short.fit", spec=CubeSpec(date_beg="2019-04-16T10:00:00.5"))
    spec = CubeSpec(date_beg="2019-04-16T11:00:00.5")
    from cubes import cube_data, extension_hdus, primary_header

    data = cube_data(spec)
    packed = fits.HDUList([fits.PrimaryHDU(header=primary_header(spec)),
                           fits.CompImageHDU(data=data[0, 0].astype(np.float32)), *extension_hdus(spec)])
    packed.writeto(fits_env.science / "wild" / "packed.fits.fz", checksum=True)
    code, summary = fits_env.cli(capsys, "fits-dir", "wild")
    assert code == 0 and summary["counts"]["ingested"] == 4, summary
    by_name = {r["path"].split("/")[-1]: r for r in summary["results"]}
    assert sorted(by_name) == ["packed.fits.fz", "plain.fts", "short.fit", "zipped.fits.gz"]
    gz = fits_env.science / "wild" / "zipped.fits.gz"
    with fits_env.registry() as r:
        cube = _one(r, "SELECT * FROM fits_cubes WHERE path = 'wild/zipped.fits.gz'")
        previews = {p["path"] for p in r.execute("SELECT path FROM fits_previews WHERE kind = 'image'")}
    assert cube["size"] == gz.stat().st_size and cube["oid"].startswith("2019-04-16T08:00:00.5_6173_")
    assert str(fits_env.previews / "wild" / "zipped.jpg") in previews
    assert str(fits_env.previews / "wild" / "packed.jpg") in previews          # from the compressed image HDU
    staging = home_path("staging") / "fits"
    assert not staging.exists() or list(staging.iterdir()) == []
    code, again = fits_env.cli(capsys, "fits-dir", "wild")
    assert code == 0 and again["counts"]["skipped"] == 4, again
    assert not staging.exists() or list(staging.iterdir()) == []
    corrupt = fits_env.cube("bad", spec=CubeSpec(date_beg="2019-04-16T12:00:00.5"))
    raw = bytearray(corrupt.read_bytes())
    raw[20000] ^= 0xFF                                                       # a data byte: DATASUM fails
    with gzip.open(corrupt.with_name("corrupt.fits.gz"), "wb") as dst:
        dst.write(bytes(raw))
    corrupt.unlink()
    code, failed = fits_env.cli(capsys, "fits", "bad/corrupt.fits.gz")
    assert code == 1 and "do not match" in failed["error"], failed
    assert failed["error"].startswith("corrupt.fits.gz: CHECKSUM and DATASUM of HDU 0"), failed
    assert list(staging.iterdir()) == []                                     # the failed attempt's copy is gone
