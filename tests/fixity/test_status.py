"""``status`` against a registry holding completed, failed (user and system), stuck and running ingests."""
from __future__ import annotations

import contextlib
import io

import pytest

from tests.fixity.helpers import cli, sql

pytestmark = [pytest.mark.integration, pytest.mark.prefect]


@pytest.fixture
def status_config(prefect_api, pg_dsn: str, unique: str) -> str:
    from pydantic import SecretStr

    from blocks.broker import BrokerBlock
    from blocks.registry import RegistryBlock

    name = f"status-{unique}"
    RegistryBlock(dsn=SecretStr(pg_dsn)).save(name, overwrite=True)
    BrokerBlock().save(name, overwrite=True)
    return name


def populate(dsn: str) -> None:
    """Rows as each domain's flow leaves them (the same record functions, the same columns)."""
    from flows.fits import records as fits_records
    from tasks.registry import Registry

    with Registry(dsn) as r:
        r.migrate()
        for k in ("a", "b"):
            r.set_state(r.begin_ingest("nrao", f"calibration:{k}").id, "completed")
        r.set_state(r.begin_ingest("nrao", "image:bad").id, "failed", error="no aux metadata",
                    details={"error_kind": "user"})
        r.set_state(r.begin_ingest("nrao", "image:down").id, "failed", error="NgasUnavailable: down",
                    details={"error_kind": "system"})
        stuck = r.begin_ingest("nrao", "image:stuck")
        r.execute("UPDATE ingests SET updated_at = now() - interval '1 day' WHERE id = %s", (stuck.id,))
        r.begin_ingest("nrao", "image:running")

        ega = r.begin_ingest("ega", "EGAF1|jane/x.gpg")
        r.execute("INSERT INTO ega_files (ingest_id, stable_id, user_name, filepath, upload_checksum, "
                  "upload_checksum_type, status, error) VALUES (%s, 'EGAF1', 'jane', 'x.gpg', 'abc', 'md5', "
                  "'error', 'checksum mismatch')", (ega.id,))
        r.set_state(ega.id, "failed", error="checksum mismatch")
        ega2 = r.begin_ingest("ega", "EGAF2|jane/y.gpg")
        r.execute("INSERT INTO ega_files (ingest_id, stable_id, user_name, filepath, upload_checksum, "
                  "upload_checksum_type, status, error) VALUES (%s, 'EGAF2', 'jane', 'y.gpg', 'def', 'md5', "
                  "'failed', 'VaultError: disk full')", (ega2.id,))
        r.set_state(ega2.id, "failed", error="VaultError: disk full")

        apt = r.begin_ingest("apt", "x.edu/bag#etag")
        r.execute("INSERT INTO apt_work_items (institution, bag_name, tar_name, etag, bucket, object_key, "
                  "object_identifier, ingest_id, status, error_kind, note) VALUES ('x.edu', 'bag', 'bag.tar', 'e', "
                  "'b', 'bag.tar', 'x.edu/bag', %s, 'Failed', 'user', 'invalid bag')", (apt.id,))
        r.set_state(apt.id, "failed", error="invalid bag")

        bad = fits_records.start_order(r, "2019/bad.fits", {})
        fits_records.fail_order(r, bad["id"], "SVO down", user_error=False)
        fits_records.queue_orders(r, ["2019/later.fits"], {})
        ok = fits_records.start_order(r, "2019/ok.fits", {})
        fits_records.complete_order(r, ok["id"], oid="oid1", change_key="k", ingest_id=None, skipped=False)


def test_status_counts_match_the_registry(status_config: str, pg_dsn: str) -> None:
    populate(pg_dsn)
    code, status = cli("status", "--json", "--config", status_config)
    assert code == 0
    d = status["domains"]
    assert d["nrao"]["ingests"] == {"ingested": 2, "queued": 0, "in_progress": 1, "stuck": 1, "failed": 2,
                                    "failed_user": 1, "failed_system": 1, "cancelled": 0}
    assert (d["ega"]["ingests"]["failed_user"], d["ega"]["ingests"]["failed_system"]) == (1, 1)
    assert (d["apt"]["ingests"]["failed_user"], d["apt"]["ingests"]["failed_system"]) == (1, 0)
    assert {k: d["fits"]["ingests"][k] for k in ("ingested", "queued", "failed_system", "failed_user")} == {
        "ingested": 1, "queued": 1, "failed_system": 1, "failed_user": 0}
    assert {(r["reason"], r["kind"]) for r in d["ega"]["failed_by_reason"]} == {
        ("checksum mismatch", "user"), ("VaultError: disk full", "system")}

    # The same numbers straight from the registry.
    for domain in ("ega", "apt", "nrao"):
        rows = sql(pg_dsn, "SELECT state, count(*) AS n FROM ingests WHERE domain = %s GROUP BY state", domain)
        by_state = {r["state"]: r["n"] for r in rows}
        got = d[domain]["ingests"]
        assert got["failed"] == by_state.get("failed", 0)
        assert got["ingested"] == by_state.get("completed", 0)
        assert got["in_progress"] + got["stuck"] == by_state.get("in_ingestion", 0)
    stuck = sql(pg_dsn, "SELECT count(*) AS n FROM ingests WHERE state = 'in_ingestion' "
                        "AND updated_at < now() - interval '6 hours'")[0]["n"]
    assert sum(x["ingests"]["stuck"] for x in d.values()) == stuck == 1
    assert all(x["fixity"]["never_checked"] == 0 for x in d.values())

    code, plan = cli("fixity", "--dry-run", "--config", status_config)  # all four archives in one plan
    assert code == 0 and plan["domains"] == ["ega", "apt", "fits", "nrao"] and plan["due"] == 0

    code, tight = cli("status", "--json", "--stuck-after", "0", "--config", status_config)
    assert tight["domains"]["nrao"]["ingests"]["stuck"] == 2  # the running one too, with no deadline left

    from flows.run import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["status", "--config", status_config]) == 0
    table = out.getvalue()
    assert table.splitlines()[0].split()[:2] == ["domain", "ingested"]
    assert "[user] checksum mismatch" in table and "[system] SVO down" in table


def test_archive_status_run_writes_the_report_as_an_artifact(status_config: str, pg_dsn: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from flows.cli_common import local_run
    from flows.status.flow import archive_status

    populate(pg_dsn)
    with local_run():
        status = archive_status(config_block=status_config)
    assert status["domains"]["nrao"]["ingests"]["stuck"] == 1
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["archive-status"])),
                                      sort=ArtifactSort.CREATED_DESC, limit=1)  # this call's, the newest
    assert found and "| nrao | 2 |" in found[0].data and "[user] no aux metadata" in found[0].data
