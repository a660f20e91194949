"""NRAO: products archived in a fake NGAS over HTTP; one stored file damaged behind NGAS's back, one gone
from NGAS. CHECKFILE finds the first, the second is unavailable; both are recorded, marked and announced."""
from __future__ import annotations

import pytest

from tests.fixity.helpers import cli, sql
from tests.nrao.test_nrao_flow import calibration, image

pytestmark = [pytest.mark.integration, pytest.mark.prefect]


def test_checkfile_finds_damaged_and_lost_files(nrao_env, pg_dsn: str) -> None:
    env = nrao_env()
    files = []
    for product in (calibration, image):
        argv, _ = product(env)
        code, summary = env.run(*argv)
        assert code == 0, summary
        files += summary["files"]
    assert len(files) >= 3
    env.messages()  # drain the ingests' status messages

    code, clean = cli("fixity", "--domain", "nrao", "--config", env.name)
    assert code == 0, clean
    assert clean["checked"] == len(files)
    assert sum(1 for r in env.fake.requests if r.command == "CHECKFILE") == len(files)

    damaged, lost = files[0], files[1]
    env.fake.damage(damaged["ngas_file_id"], damaged["version"])
    with env.fake._lock:  # gone from NGAS: its STATUS and CHECKFILE answer NGAMS_ER_UNAVAIL_FILE
        del env.fake.files[lost["ngas_file_id"]][lost["version"]]

    code, summary = cli("fixity", "--domain", "nrao", "--older-than", "0", "--config", env.name)
    assert code == 1, summary
    key = lambda f: f"{f['ngas_file_id']}#{f['version']}"
    found = {f["item"]: f["problem"] for f in summary["failures"]}
    assert found == {key(damaged): "mismatch", key(lost): "missing"}

    assert len(sql(pg_dsn, "SELECT 1 FROM events WHERE agent = 'archive-ingest/fixity' AND outcome = 'failure'")) == 2
    marked = sql(pg_dsn, "SELECT count(*) AS n FROM ingests WHERE domain = 'nrao' AND review_reason IS NOT NULL")
    assert marked[0]["n"] >= 1
    announced = [(k, b["item"]) for k, b in env.messages() if k == "nrao.fixity.failed"]
    assert sorted(item for _, item in announced) == sorted([key(damaged), key(lost)])
