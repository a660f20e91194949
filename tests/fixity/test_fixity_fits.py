"""FITS: a data byte flipped in place under an unchanged CHECKSUM card (which re-ingest skips as unchanged)
is found by DATASUM; a deleted cube is missing; a cube without CHECKSUM is held to its recorded sha256."""
from __future__ import annotations

import pytest

from tests.fits.conftest import FitsEnv
from tests.fixity.helpers import cli, flip_byte, sql

pytestmark = [pytest.mark.integration, pytest.mark.prefect]


@pytest.fixture
def fits_env(prefect_api, pg_dsn: str, unique: str, ingest_home) -> FitsEnv:
    env = FitsEnv(f"fits-{unique}", ingest_home, pg_dsn)
    env.save_blocks()
    return env


def data_offset(path) -> int:
    from astropy.io import fits

    with fits.open(path) as hdul:
        return hdul[0]._data_offset


def test_flipped_data_byte_and_deleted_cube(fits_env: FitsEnv, pg_dsn: str) -> None:
    from cubes import CubeSpec

    from tasks.notify import pending

    cubes = [fits_env.cube("2019-04-16/CRISP"),
             fits_env.cube("2019-04-17/CRISP", CubeSpec(date_beg="2019-04-17T09:00:00.5", point_id=None)),
             fits_env.cube("2019-04-18/CRISP", CubeSpec(date_beg="2019-04-18T10:00:00.5", point_id=None,
                                                         checksum=False))]
    oids = []
    for cube in cubes:
        code, summary = fits_env.run(cube)
        assert code == 0, summary
        oids.append(summary["oid"])
    assert len(set(oids)) == 3

    code, clean = cli("fixity", "--domain", "fits", "--config", fits_env.name)
    assert code == 0, clean
    assert clean["checked"] == 3

    flip_byte(cubes[0], data_offset(cubes[0]) + 7)
    code, again = fits_env.run(cubes[0])  # the gap: a header-keyed re-ingest does not notice
    assert code == 0 and again["state"] in ("skipped", "SKIPPED"), again
    cubes[1].unlink()

    before = len(pending())
    code, summary = cli("fixity", "--domain", "fits", "--older-than", "0", "--config", fits_env.name)
    assert code == 1, summary
    found = {f["subject"]: f for f in summary["failures"]}
    assert set(found) == {oids[0], oids[1]}
    assert found[oids[0]]["problem"] == "mismatch" and "DATASUM" in found[oids[0]]["detail"]
    assert found[oids[1]]["problem"] == "missing"

    marked = sql(pg_dsn, "SELECT natural_key FROM ingests WHERE domain = 'fits' AND review_reason IS NOT NULL")
    assert sorted(r["natural_key"] for r in marked) == sorted(oids[:2])
    events = sql(pg_dsn, "SELECT subject, outcome FROM events WHERE agent = 'archive-ingest/fixity' "
                         "AND event_type = 'fixity check' ORDER BY id")
    assert len(events) == 6 and sorted(e["subject"] for e in events if e["outcome"] == "failure") == sorted(oids[:2])
    assert sorted((n.exchange, n.routing_key, n.body["subject"]) for n in pending()[before:]) == sorted(
        ("fits", "fits.fixity.failed", oid) for oid in oids[:2])

    # The cube without CHECKSUM cards is held to its recorded sha256.
    flip_byte(cubes[2], data_offset(cubes[2]) + 3)
    code, summary = cli("fixity", "--domain", "fits", "--older-than", "0", "--config", fits_env.name)
    assert code == 1
    third = next(f for f in summary["failures"] if f["subject"] == oids[2])
    assert third["problem"] == "mismatch" and "sha256" in third["detail"]
