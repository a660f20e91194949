"""``init`` with an S3 vault, as an operator runs it: credentials stored, bucket created, vault proven."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest

from tests.integration.test_local_api import ROOT, cli, last_json

pytestmark = pytest.mark.localapi


def _s3(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


LOAD_AND_PUT = """
import io, json, sys
from blocks.register import load_block
from blocks.vault import VaultBlock
block = load_block(VaultBlock)
vault = block.vault()
vault.put_stream("stored-credentials-check", io.BytesIO(b"x" * 1000), size_hint=1000)
print(json.dumps({"stat": vault.stat("stored-credentials-check"),
                  "key": block.s3_bucket.credentials.aws_access_key_id,
                  "secret_is_secret": type(block.s3_bucket.credentials.aws_secret_access_key).__name__}))
"""


def test_init_creates_the_bucket_stores_credentials_and_proves_the_vault(ingest_home: Path, s3_endpoint: str,
                                                                         tmp_path: Path) -> None:
    bucket = f"absent-{uuid.uuid4().hex[:10]}"
    proc = cli(ingest_home, "init", "--s3-bucket", bucket, "--s3-endpoint", s3_endpoint,
               AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    assert proc.returncode == 0, proc.stderr[-3000:]
    vault = last_json(proc)["vault"]
    assert vault["kind"] == "s3" and vault["bucket_state"] == "created"
    assert vault["probe"] == "put, read back and deleted"
    assert vault["credentials"].startswith("environment, saved as aws-credentials/")
    listed = _s3(s3_endpoint).list_objects_v2(Bucket=bucket)
    assert listed.get("KeyCount", 0) == 0, "the probe object was left behind"

    # An ingest on another machine has no AWS environment: the stored block must carry the credentials.
    api = json.loads((ingest_home / "prefect" / "api.json").read_text())["url"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_"))}
    env.update(PREFECT_API_URL=api, INGEST_HOME=str(ingest_home), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    loaded = subprocess.run([sys.executable, "-c", LOAD_AND_PUT], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    out = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert out == {"stat": 1000, "key": "testing", "secret_is_secret": "SecretStr"}

    # A second init keeps the block, and proves it again; --force with a named profile replaces it.
    (tmp_path / "credentials").write_text("[archive]\naws_access_key_id = fromprofile\n"
                                          "aws_secret_access_key = profilesecret\n")
    again = cli(ingest_home, "init", "--force", "--s3-bucket", bucket, "--s3-endpoint", s3_endpoint,
                "--s3-profile", "archive", AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"))
    assert again.returncode == 0, again.stderr[-3000:]
    report = last_json(again)["vault"]
    assert report["bucket_state"] == "exists" and report["credentials"].startswith("profile archive")


def test_init_refuses_half_credentials_in_one_line(ingest_home: Path, s3_endpoint: str) -> None:
    proc = cli(ingest_home, "init", "--s3-bucket", "b", "--s3-endpoint", s3_endpoint, "--s3-access-key-id", "AK")
    assert proc.returncode == 1
    assert "init: S3 credentials need both --s3-access-key-id and --s3-secret-access-key" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert last_json(proc)["state"] == "ERROR"
