"""The SeaweedFS fixture: a real S3 server on loopback that enforces its keys."""

from __future__ import annotations

import pytest


def test_s3_server_roundtrip_and_auth(s3_server) -> None:
    bucket = s3_server.create_bucket("fixture-probe")
    c = s3_server.client()
    c.put_object(Bucket=bucket, Key="a/b.txt", Body=b"hello")
    assert c.get_object(Bucket=bucket, Key="a/b.txt")["Body"].read() == b"hello"
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")
    bad = s3_server.client(aws_secret_access_key="wrong-secret")
    with pytest.raises(Exception, match=r"SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        bad.list_objects_v2(Bucket=bucket)
