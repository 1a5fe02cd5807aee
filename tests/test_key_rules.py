"""Keys a backend would alias or lose, and keys XML cannot carry (issue 10, item 3)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest
from botocore.exceptions import ClientError

from s3latent.s3 import xml
from s3latent.s3.errors import S3Error
from s3latent.s3.names import check_new_key
from tests.gateway import GatewayProcess

# Path-mapping stores merge these with another key (or normalise them away).
ALIASING = ["a//b", "/lead", "a/./b", "a/../b", "..", ".", "x/..", "./x", "a/b//"]
XML_UNSAFE = ["nul\x00key", "bell\x07", "esc\x1b[0m", "bom\ufffe"]
# Allowed everywhere: dots inside segments, trailing '/', whitespace XML can carry.
ALLOWED = ["a/b/", "dir/", "a.b", "..a", "a..", ".a/b", "a/.b", "...", "tab\tkey",
           "line\nkey", "ü/日本", "a b/c"]


@pytest.mark.parametrize("key", ALIASING + XML_UNSAFE)
def test_check_new_key_refuses(key: str) -> None:
    with pytest.raises(S3Error) as info:
        check_new_key(key)
    assert (info.value.code, info.value.status) == ("InvalidArgument", 400)


@pytest.mark.parametrize("key", ALLOWED)
def test_check_new_key_allows(key: str) -> None:
    check_new_key(key)


def test_listing_xml_stays_well_formed_with_unsafe_characters() -> None:
    """A key stored before the rule (or behind the gateway's back) cannot break a page."""
    body = xml.render("ListBucketResult", {"Contents": [{"Key": "a\x00b\x1fc"},
                                                         {"Key": "plain"}]})
    root = ET.fromstring(body)
    keys = [e.text for e in root.iter(f"{{{xml.S3_NS}}}Key")]
    assert keys == ["a\ufffdb\ufffdc", "plain"]


def _code(exc: ClientError) -> tuple[int, str]:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"], exc.response["Error"]["Code"]


@pytest.mark.parametrize("key", ALIASING + XML_UNSAFE[:2])
def test_aliasing_keys_are_refused_and_nothing_is_overwritten(s3: Any, bucket: str,
                                                              key: str) -> None:
    s3.put_object(Bucket=bucket, Key="a/b", Body=b"original")
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key=key, Body=b"intruder")
    assert _code(info.value) == (400, "InvalidArgument")
    with pytest.raises(ClientError) as info:
        s3.create_multipart_upload(Bucket=bucket, Key=key)
    assert _code(info.value) == (400, "InvalidArgument")
    with pytest.raises(ClientError) as info:
        s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": "a/b"})
    assert _code(info.value) == (400, "InvalidArgument")
    assert s3.get_object(Bucket=bucket, Key="a/b")["Body"].read() == b"original"
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert listed == ["a/b"]


def test_folder_key_with_body_is_stored_faithfully(s3: Any, bucket: str) -> None:
    """`dir/` with data (SeaweedFS alone would store 0 bytes) stays apart from `dir`, `dir/x`."""
    s3.put_object(Bucket=bucket, Key="dir/x", Body=b"child")
    s3.put_object(Bucket=bucket, Key="dir/", Body=b"folder body")
    s3.put_object(Bucket=bucket, Key="dir", Body=b"file")
    s3.put_object(Bucket=bucket, Key="empty/", Body=b"")
    assert s3.get_object(Bucket=bucket, Key="dir/")["Body"].read() == b"folder body"
    assert s3.head_object(Bucket=bucket, Key="dir/")["ContentLength"] == 11
    assert s3.get_object(Bucket=bucket, Key="dir")["Body"].read() == b"file"
    assert s3.get_object(Bucket=bucket, Key="dir/x")["Body"].read() == b"child"
    assert s3.head_object(Bucket=bucket, Key="empty/")["ContentLength"] == 0
    every = s3.list_objects_v2(Bucket=bucket)
    assert [(o["Key"], o["Size"]) for o in every["Contents"]] == [
        ("dir", 4), ("dir/", 11), ("dir/x", 5), ("empty/", 0)]
    top = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [o["Key"] for o in top["Contents"]] == ["dir"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["dir/", "empty/"]
    inside = s3.list_objects_v2(Bucket=bucket, Prefix="dir/", Delimiter="/")
    assert [o["Key"] for o in inside["Contents"]] == ["dir/", "dir/x"]
    after = s3.list_objects_v2(Bucket=bucket, StartAfter="dir/")
    assert [o["Key"] for o in after["Contents"]] == ["dir/x", "empty/"]
    pages = [[o["Key"] for o in page.get("Contents", [])] for page in
             s3.get_paginator("list_objects").paginate(Bucket=bucket,
                                                       PaginationConfig={"PageSize": 1})]
    assert pages == [["dir"], ["dir/"], ["dir/x"], ["empty/"]]
    # Copy to and from a folder key, and a multipart upload to one.
    s3.copy_object(Bucket=bucket, Key="copy/", CopySource={"Bucket": bucket, "Key": "dir/"})
    assert s3.get_object(Bucket=bucket, Key="copy/")["Body"].read() == b"folder body"
    s3.copy_object(Bucket=bucket, Key="copied", CopySource={"Bucket": bucket, "Key": "dir/"})
    assert s3.get_object(Bucket=bucket, Key="copied")["Body"].read() == b"folder body"
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp/")["UploadId"]
    assert [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"]] == ["mp/"]
    etag = s3.upload_part(Bucket=bucket, Key="mp/", UploadId=upload, PartNumber=1,
                          Body=b"part")["ETag"]
    s3.complete_multipart_upload(Bucket=bucket, Key="mp/", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert s3.get_object(Bucket=bucket, Key="mp/")["Body"].read() == b"part"
    # Deleting the folder key leaves its children alone. (SeaweedFS answers HEAD `dir/`
    # for the directory its children keep: 200 with 0 bytes, see docs/s3-compat.md.)
    s3.delete_object(Bucket=bucket, Key="dir/")
    try:
        assert s3.head_object(Bucket=bucket, Key="dir/")["ContentLength"] == 0
    except ClientError as exc:
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert s3.get_object(Bucket=bucket, Key="dir/x")["Body"].read() == b"child"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["copied", "copy/", "dir", "dir/x", "empty/", "mp/"]


def test_folder_marker_stored_before_the_encoding_stays_readable(
        gateway: GatewayProcess, s3: Any, bucket: str, request: pytest.FixtureRequest) -> None:
    """A plain `dir/` in the S3 store (an older gateway, another client) is still `dir/`."""
    if not gateway.backend.startswith("http"):
        pytest.skip("S3 backends only")
    weed = request.getfixturevalue("seaweedfs")
    weed.client().put_object(Bucket=bucket, Key="old/", Body=b"")
    s3.put_object(Bucket=bucket, Key="old/child", Body=b"c")
    assert s3.head_object(Bucket=bucket, Key="old/")["ContentLength"] == 0
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == [
        "old/", "old/child"]
    s3.put_object(Bucket=bucket, Key="old/", Body=b"new body")  # both forms exist now
    assert s3.get_object(Bucket=bucket, Key="old/")["Body"].read() == b"new body"
    assert [(o["Key"], o["Size"]) for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == [
        ("old/", 8), ("old/child", 1)]
    s3.delete_object(Bucket=bucket, Key="old/")
    assert s3.get_object(Bucket=bucket, Key="old/child")["Body"].read() == b"c"


# Names the local backend gives meaning to (its bucket record, object suffix, escapes).
LOOKALIKES = [".bucket.json", "x.~o", "x", "%", "%2E", "%25", "a.~o/b", "~", ".hidden",
              "%H0123", "a/%", "a/"]


def test_keys_resembling_backend_files_stay_distinct(s3: Any, bucket: str) -> None:
    for i, key in enumerate(LOOKALIKES):
        s3.put_object(Bucket=bucket, Key=key, Body=f"{i}".encode() if key != "a/" else b"")
    for i, key in enumerate(LOOKALIKES):
        want = b"" if key == "a/" else f"{i}".encode()
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == want, key
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert sorted(listed) == sorted(LOOKALIKES)
    s3.delete_object(Bucket=bucket, Key=".bucket.json")
    s3.head_bucket(Bucket=bucket)  # the bucket's own record is untouched
    assert s3.get_object(Bucket=bucket, Key="x")["Body"].read() == b"2"
