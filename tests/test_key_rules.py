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


def test_folder_key_with_body(gateway: GatewayProcess, s3: Any, bucket: str) -> None:
    """`dir/` with data: stored faithfully where the backend can, else refused (never lost)."""
    s3.put_object(Bucket=bucket, Key="dir/x", Body=b"child")
    s3.put_object(Bucket=bucket, Key="empty/", Body=b"")  # a folder marker: fine everywhere
    on_s3_store = gateway.backend.startswith("http")
    if on_s3_store:
        with pytest.raises(ClientError) as info:
            s3.put_object(Bucket=bucket, Key="dir/", Body=b"folder body")
        assert _code(info.value) == (400, "InvalidArgument")
        with pytest.raises(ClientError) as info:
            s3.copy_object(Bucket=bucket, Key="dir/", CopySource={"Bucket": bucket,
                                                                  "Key": "dir/x"})
        assert _code(info.value) == (400, "InvalidArgument")
        with pytest.raises(ClientError) as info:
            s3.create_multipart_upload(Bucket=bucket, Key="dir/")
        assert _code(info.value) == (400, "InvalidArgument")
    else:
        s3.put_object(Bucket=bucket, Key="dir/", Body=b"folder body")
        assert s3.get_object(Bucket=bucket, Key="dir/")["Body"].read() == b"folder body"
        s3.put_object(Bucket=bucket, Key="dir", Body=b"file")
        assert s3.get_object(Bucket=bucket, Key="dir")["Body"].read() == b"file"
        assert s3.get_object(Bucket=bucket, Key="dir/")["Body"].read() == b"folder body"
    assert s3.get_object(Bucket=bucket, Key="dir/x")["Body"].read() == b"child"
    assert s3.head_object(Bucket=bucket, Key="empty/")["ContentLength"] == 0


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
