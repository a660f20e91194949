"""botocore's model files, parsed once per process (tasks/botocore_data_reuse.py): what the warm runner
does before forking, so a call on an S3 vault does not parse the S3 model and rule set again.

In a child process, so that the patch of botocore stays out of this one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import botocore.loaders
loads = []
real = botocore.loaders.JSONFileLoader.load_file
botocore.loaders.JSONFileLoader.load_file = lambda self, path: loads.append(os.path.basename(path)) or real(self, path)

def client():
    import boto3
    return boto3.session.Session().client("s3", endpoint_url=sys.argv[2], region_name="us-east-1")

if sys.argv[3] == "prebuilt":
    from tasks import botocore_data_reuse
    assert botocore_data_reuse.prebuild() > 0
    loads.clear()
out = {}
for name in ("first", "second"):
    loads.clear()
    c = client()
    c.put_object(Bucket=sys.argv[4], Key=f"probe/{name}", Body=b"seeded " + name.encode(), ChecksumAlgorithm="CRC32")
    out[name] = {"loads": list(loads), "body": c.get_object(Bucket=sys.argv[4], Key=f"probe/{name}")["Body"].read().decode()}
print(json.dumps(out))
"""


def _probe(mode: str, s3_endpoint: str, bucket: str, **env: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(ROOT), s3_endpoint, mode, bucket],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_a_new_session_after_prebuild_parses_no_model_file_and_works(s3_endpoint: str, s3_bucket: str) -> None:
    plain = _probe("plain", s3_endpoint, s3_bucket)
    # without it, every new session parses the S3 model and its endpoint rule set again
    assert any(name.startswith("endpoint-rule-set-1") for name in plain["second"]["loads"]), plain
    prebuilt = _probe("prebuilt", s3_endpoint, s3_bucket)
    for name in ("first", "second"):
        assert not [f for f in prebuilt[name]["loads"] if f.startswith(("service-2", "endpoint-rule-set-1"))], prebuilt
        assert prebuilt[name]["body"] == f"seeded {name}"  # a seeded client signs, sends and parses as ever


def test_a_session_on_its_own_data_path_is_not_seeded(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    own = _probe("prebuilt", s3_endpoint, s3_bucket, AWS_DATA_PATH=str(tmp_path))
    assert any(f.startswith("service-2") for f in own["first"]["loads"]), own
    assert own["first"]["body"] == "seeded first"
