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
