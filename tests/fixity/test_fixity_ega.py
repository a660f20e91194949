"""EGA: ingest through the EGA flow, damage the vault (filesystem or S3), audit through the CLI."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.ega.conftest import EgaEnv, save_blocks
from tests.ega.test_ega_flow import submit
from tests.fixity.helpers import cli, flip_byte, sql

pytestmark = [pytest.mark.integration, pytest.mark.prefect]


def ingest(env: EgaEnv, gpg, config: str, n: int) -> list[dict]:
    from flows.ega.cli import run_message

    rows = []
    for i in range(n):
        msg, _ = submit(env, gpg, os.urandom(50_000 + i * 1000), "--compress-algo", "none", name=f"f{i}.bin")
        code, summary = run_message(msg, config_block=config)
        assert code == 0, summary
        rows.append(summary)
    return rows


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


@pytest.mark.parametrize("vault", ["filesystem", "s3"])
def test_flipped_and_deleted_vault_objects_are_found_recorded_marked_and_announced(
        ega_env: EgaEnv, gpg, pg_dsn: str, amqp_url: str, vault: str, request) -> None:
    config = ega_env.name
    if vault == "s3":
        from blocks.vault import VaultBlock

        endpoint, bucket = request.getfixturevalue("s3_endpoint"), request.getfixturevalue("s3_bucket")
        config = ega_env.name + "-s3"
        save_blocks(config, pg_dsn=pg_dsn, amqp_url=amqp_url, cega=ega_env.cega, lega=ega_env.lega,
                    keys=ega_env.keys, vault_block=VaultBlock.for_s3(
                        bucket, endpoint_url=endpoint, access_key_id="testing", secret_access_key="testing",
                        region="us-east-1", prefix="archive"))
    done = ingest(ega_env, gpg, config, 3)
    ega_env.messages("cega"), ega_env.messages("lega")  # drain what the ingests published

    # A clean archive: every object checked, exit 0, nothing for review.
    code, summary = cli("fixity", "--domain", "ega", "--config", config)
    assert code == 0, summary
    assert summary["checked"] == 3 and summary["failed"] == 0 and summary["state"] == "completed"

    if vault == "filesystem":  # the vault block moved since: objects are read where they were recorded
        moved = ega_env.name + "-moved"
        save_blocks(moved, pg_dsn=pg_dsn, amqp_url=amqp_url, cega=ega_env.cega, lega=ega_env.lega,
                    keys=ega_env.keys, vault_root=ega_env.vault_root.parent / "new-vault")
        code, summary = cli("fixity", "--domain", "ega", "--older-than", "0", "--config", moved)
        assert code == 0 and summary["checked"] == 3, summary

    flipped, deleted, intact = done
    if vault == "filesystem":
        flip_byte(Path(flipped["vault_uri"].removeprefix("file://")))
        Path(deleted["vault_uri"].removeprefix("file://")).unlink()
    else:
        s3 = s3_client(endpoint)
        key = flipped["vault_uri"].removeprefix(f"s3://{bucket}/")
        data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        data[len(data) // 2] ^= 0x01
        s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))
        s3.delete_object(Bucket=bucket, Key=deleted["vault_uri"].removeprefix(f"s3://{bucket}/"))

    code, summary = cli("fixity", "--domain", "ega", "--older-than", "0", "--config", config)
    assert code == 1, summary
    assert summary["checked"] == 3 and summary["state"] == "failed"
    found = {f["subject"]: f["problem"] for f in summary["failures"]}
    assert found == {flipped["stable_id"]: "mismatch", deleted["stable_id"]: "missing"}

    # PREMIS events: one per object per run, the failures with what was found.
    events = sql(pg_dsn, "SELECT subject, outcome, outcome_detail FROM events WHERE event_type = 'fixity check' "
                         "AND agent = 'archive-ingest/fixity' ORDER BY id")
    runs = 3 if vault == "filesystem" else 2
    assert len(events) == 3 * runs
    last = {e["subject"]: e for e in events[-3:]}
    assert last[flipped["stable_id"]]["outcome"] == "failure" and "sha256" in last[flipped["stable_id"]]["outcome_detail"]
    assert last[deleted["stable_id"]]["outcome"] == "failure" and "missing" in last[deleted["stable_id"]]["outcome_detail"]
    assert last[intact["stable_id"]]["outcome"] == "success"

    # Marked for review: exactly the two ingests.
    review = sql(pg_dsn, "SELECT f.stable_id, i.review_reason FROM ingests i JOIN ega_files f ON f.ingest_id = i.id "
                         "WHERE i.review_reason IS NOT NULL")
    assert {r["stable_id"] for r in review} == {flipped["stable_id"], deleted["stable_id"]}

    # Announced as a system error on the internal exchange; the submitter's channel hears nothing.
    lega = ega_env.messages("lega")
    assert sorted(b["original-message"]["stable_id"] for k, b, _ in lega if k == "fixity.error") == sorted(
        [flipped["stable_id"], deleted["stable_id"]])
    assert ega_env.messages("cega") == []

    # status shows it.
    code, status = cli("status", "--json", "--config", config)
    fixity = status["domains"]["ega"]["fixity"]
    assert (fixity["mismatches"], fixity["missing"], fixity["never_checked"]) == (1, 1, 0)
    assert status["domains"]["ega"]["review"]["count"] == 2
