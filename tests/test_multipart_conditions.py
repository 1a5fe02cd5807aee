"""If-Match / If-None-Match on CompleteMultipartUpload, as on PUT: judged on the current
object as clients see it (an SSE-S3 object's plaintext ETag), 404 for If-Match when there is
none, and the stored ETag guarded by the backend at the commit."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError


def _complete(s3: Any, bucket: str, body: bytes, **conditions: str) -> dict[str, Any]:
    upload = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    part = s3.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=1, Body=body)
    return s3.complete_multipart_upload(
        Bucket=bucket, Key="k", UploadId=upload,
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]}, **conditions)


def _fails(s3: Any, bucket: str, **conditions: str) -> tuple[int, str]:
    with pytest.raises(ClientError) as err:
        _complete(s3, bucket, b"refused", **conditions)
    return (err.value.response["ResponseMetadata"]["HTTPStatusCode"],
            err.value.response["Error"]["Code"])


@pytest.mark.parametrize("versioned", [False, True])
def test_complete_if_match(s3: Any, versioned: bool) -> None:
    bucket = f"mpc-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    if versioned:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    assert _fails(s3, bucket, IfMatch="*") == (404, "NoSuchKey")
    assert _fails(s3, bucket, IfMatch='"0123456789abcdef0123456789abcdef"') == \
        (404, "NoSuchKey")
    first = _complete(s3, bucket, b"one", IfNoneMatch="*")["ETag"]
    assert _fails(s3, bucket, IfNoneMatch="*") == (412, "PreconditionFailed")
    assert _fails(s3, bucket, IfNoneMatch=first) == (412, "PreconditionFailed")
    assert _fails(s3, bucket, IfMatch='"0123456789abcdef0123456789abcdef"') == \
        (412, "PreconditionFailed")
    second = _complete(s3, bucket, b"two", IfMatch=first)["ETag"]
    assert _fails(s3, bucket, IfMatch=first) == (412, "PreconditionFailed")
    _complete(s3, bucket, b"three", IfMatch="*")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"three"
    assert second != first


def test_complete_if_match_judges_an_sse_s3_object_by_its_plaintext_etag(s3: Any) -> None:
    bucket = f"mpc-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    put = s3.put_object(Bucket=bucket, Key="k", Body=b"secret", ServerSideEncryption="AES256")
    assert _fails(s3, bucket, IfNoneMatch=put["ETag"]) == (412, "PreconditionFailed")
    _complete(s3, bucket, b"after", IfMatch=put["ETag"])
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"after"
