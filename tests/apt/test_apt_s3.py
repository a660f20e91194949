"""The scan reads an S3 object body directly: non-seekable, over HTTP, never on disk."""
from __future__ import annotations

import pytest
from corpus import Case

from flows.apt.tarscan import scan_bag, scan_bag_file
from flows.apt.validate import validate_bag


@pytest.mark.integration
def test_scan_and_validate_straight_from_s3(apt_corpus: dict[str, Case], s3_endpoint: str, s3_bucket: str) -> None:
    import boto3

    case = apt_corpus["good_aptrust"]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.upload_file(str(case.tar), s3_bucket, f"receiving/{case.bag_name}")
    body = s3.get_object(Bucket=s3_bucket, Key=f"receiving/{case.bag_name}")["Body"]
    scan = scan_bag(body, bag_name=case.bag_name, block_size=64 << 10)
    assert scan.files == scan_bag_file(case.tar).files
    assert validate_bag(scan, f"receiving/{case.bag_name}", institution="example.edu").valid


@pytest.mark.integration
def test_a_rerun_aborts_only_its_own_incomplete_s3_uploads(s3_endpoint: str, s3_bucket: str) -> None:
    """What a killed multipart put to a target left: aborted for the keys being stored again, kept for others."""
    import boto3

    from blocks.vault import VaultBlock
    from flows.apt.storage import sweep_temporaries

    vault = VaultBlock.for_s3(s3_bucket, endpoint_url=s3_endpoint, access_key_id="testing",
                              secret_access_key="testing", region="us-east-1", prefix="sweep").vault()
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    ours, theirs = "6a1c3c1e-0000-4000-8000-000000000001", "6a1c3c1e-0000-4000-8000-000000000002"
    for key in (ours, theirs):
        s3.create_multipart_upload(Bucket=s3_bucket, Key=f"sweep/{key}")
    assert len(sweep_temporaries(vault, [ours])) == 1
    left = [u["Key"] for u in s3.list_multipart_uploads(Bucket=s3_bucket, Prefix="sweep/").get("Uploads", [])]
    assert left == [f"sweep/{theirs}"]
