"""The S3 handlers in-process (tests/inprocess.py): boto3 and raw signed requests.

Each test builds the real gateway in its own event loop over a local backend in a
temp dir; no process starts. tests/test_s3_api.py stays the contract check against
a gateway process; here the cases that want the exact XML, headers and precedence
rules, which are awkward to see through a client library.
"""

from __future__ import annotations

import base64
import hashlib
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.inprocess import InProcessGateway, Reply, serve_gateway
from tests.sigv4_client import ACCESS_KEY, key_path, presign

BKT = "bkt"
MIB = 1024 * 1024
OTHER_KEY, OTHER_SECRET = "other-user", "other-user-secret-0123"


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    # A second user, to see AccessDenied on a bucket it does not own.
    users = f'[[users]]\naccess_key = "{OTHER_KEY}"\nsecret_key = "{OTHER_SECRET}"\n'
    async with serve_gateway(tmp_path, users) as served:
        await served.run(lambda s3: s3.create_bucket(Bucket=BKT))
        yield served


def status(resp: dict[str, Any]) -> int:
    return int(resp["ResponseMetadata"]["HTTPStatusCode"])


def error_fields(reply: Reply) -> dict[str, str]:
    """The children of an <Error> body, checked to be one."""
    assert reply.headers.get("Content-Type", "").startswith("application/xml"), reply
    root = ET.fromstring(reply.body)
    assert root.tag == "Error", reply.body
    return {child.tag: child.text or "" for child in root}


def assert_error(reply: Reply, code: str, http: int,
                 resource: str | tuple[str, ...]) -> dict[str, str]:
    """An S3 error document: code, a message, the resource (one of several spellings
    when a tuple), and the request id the response header carries."""
    assert reply.status == http, reply
    fields = error_fields(reply)
    assert fields["Code"] == code
    assert fields["Message"]
    assert fields["Resource"] in (resource if isinstance(resource, tuple) else (resource,))
    assert fields["RequestId"] == reply.headers["x-amz-request-id"] != ""
    assert fields["HostId"] == reply.headers["x-amz-id-2"]
    return fields


def strip_ns(body: bytes) -> ET.Element:
    """Parse an S3 XML answer with its namespace removed, for short paths."""
    return ET.fromstring(re.sub(rb'\sxmlns="[^"]+"', b"", body, count=1))


async def put(gw: InProcessGateway, key: str, body: bytes, **kw: Any) -> dict[str, Any]:
    return await gw.run(lambda s3: s3.put_object(Bucket=BKT, Key=key, Body=body, **kw))


async def get_body(gw: InProcessGateway, key: str, **kw: Any) -> tuple[dict[str, Any], bytes]:
    def call(s3: Any) -> tuple[dict[str, Any], bytes]:
        got = s3.get_object(Bucket=BKT, Key=key, **kw)
        return got, got["Body"].read()

    return await gw.run(call)


# -- buckets ----------------------------------------------------------------------------------

async def test_bucket_lifecycle_and_not_empty(gw: InProcessGateway) -> None:
    names = await gw.run(lambda s3: [b["Name"] for b in s3.list_buckets()["Buckets"]])
    assert names == [BKT]
    await gw.run(lambda s3: s3.head_bucket(Bucket=BKT))
    again = await gw.error(lambda s3: s3.create_bucket(Bucket=BKT))
    assert again["Error"]["Code"] == "BucketAlreadyOwnedByYou" and status(again) == 409
    await put(gw, "x", b"1")
    reply = await gw.call("DELETE", f"/{BKT}")
    assert_error(reply, "BucketNotEmpty", 409, f"/{BKT}")
    await gw.run(lambda s3: s3.delete_object(Bucket=BKT, Key="x"))
    assert (await gw.call("DELETE", f"/{BKT}")).status == 204
    head = await gw.error(lambda s3: s3.head_bucket(Bucket=BKT))
    assert status(head) == 404
    reply = await gw.call("GET", f"/{BKT}", query="list-type=2")
    # (Resource is "bkt" here but "/bkt" for BucketNotEmpty; S3 itself varies.)
    assert_error(reply, "NoSuchBucket", 404, (f"/{BKT}", BKT))
    assert error_fields(reply)["BucketName"] == BKT


async def test_pending_multipart_upload_alone_does_not_block_delete_bucket(
        gw: InProcessGateway) -> None:
    """S3 deletes a bucket whose only content is an unfinished upload."""
    await gw.run(lambda s3: s3.create_multipart_upload(Bucket=BKT, Key="pending"))
    assert (await gw.call("DELETE", f"/{BKT}")).status == 204


# -- objects ----------------------------------------------------------------------------------

async def test_put_get_head_delete(gw: InProcessGateway) -> None:
    body = b"hello in-process world"
    etag = (await put(gw, "dir/k.txt", body, ContentType="text/plain",
                      Metadata={"Who": "me"}))["ETag"]
    assert etag == f'"{hashlib.md5(body).hexdigest()}"'
    got, data = await get_body(gw, "dir/k.txt")
    assert data == body and got["ETag"] == etag and got["ContentLength"] == len(body)
    assert got["ContentType"] == "text/plain" and got["Metadata"] == {"who": "me"}
    head = await gw.run(lambda s3: s3.head_object(Bucket=BKT, Key="dir/k.txt"))
    assert head["ContentLength"] == len(body) and head["ETag"] == etag
    assert head["LastModified"] == got["LastModified"]
    deleted = await gw.run(lambda s3: s3.delete_object(Bucket=BKT, Key="dir/k.txt"))
    assert status(deleted) == 204
    # Deleting what is not there is a success in S3, too.
    assert status(await gw.run(lambda s3: s3.delete_object(Bucket=BKT, Key="dir/k.txt"))) == 204
    missing = await gw.error(lambda s3: s3.head_object(Bucket=BKT, Key="dir/k.txt"))
    assert status(missing) == 404


async def test_head_errors_have_no_body_but_say_the_code(gw: InProcessGateway) -> None:
    reply = await gw.call("HEAD", f"/{BKT}/missing")
    assert reply.status == 404 and reply.body == b""
    assert reply.headers["x-amz-error-code"] == "NoSuchKey"
    assert reply.headers["x-amz-request-id"]


# -- ranges -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("header", "first", "last"), [
    ("bytes=0-0", 0, 0), ("bytes=10-19", 10, 19), ("bytes=90-", 90, 99),
    ("bytes=-7", 93, 99), ("bytes=95-500", 95, 99), ("bytes=-500", 0, 99),
])
async def test_ranges(gw: InProcessGateway, header: str, first: int, last: int) -> None:
    body = bytes(range(100))
    await put(gw, "r", body)
    reply = await gw.call("GET", f"/{BKT}/r", headers={"Range": header})
    assert reply.status == 206, reply
    assert reply.body == body[first:last + 1]
    assert reply.headers["Content-Range"] == f"bytes {first}-{last}/100"
    assert int(reply.headers["Content-Length"]) == last - first + 1
    assert reply.headers["Accept-Ranges"] == "bytes"


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=-0"])
async def test_unsatisfiable_range_is_416_with_xml(gw: InProcessGateway, header: str) -> None:
    await put(gw, "r", bytes(100))
    reply = await gw.call("GET", f"/{BKT}/r", headers={"Range": header})
    fields = assert_error(reply, "InvalidRange", 416, f"/{BKT}/r")
    assert fields["ActualObjectSize"] == "100"
    assert reply.headers["Content-Range"] == "bytes */100"


async def test_range_on_empty_object(gw: InProcessGateway) -> None:
    await put(gw, "empty", b"")
    reply = await gw.call("GET", f"/{BKT}/empty", headers={"Range": "bytes=0-"})
    assert reply.status == 416 and error_fields(reply)["Code"] == "InvalidRange"


@pytest.mark.parametrize("header", ["bytes=5-1", "bytes=0-1,3-4", "items=0-1", "bytes=x-"])
async def test_range_s3_ignores_is_the_whole_object(gw: InProcessGateway, header: str) -> None:
    body = b"0123456789"
    await put(gw, "r", body)
    reply = await gw.call("GET", f"/{BKT}/r", headers={"Range": header})
    assert reply.status == 200 and reply.body == body
    assert "Content-Range" not in reply.headers


# -- conditionals -----------------------------------------------------------------------------

def http_date(when: datetime) -> str:
    return format_datetime(when.astimezone(UTC), usegmt=True)


async def test_conditional_gets(gw: InProcessGateway) -> None:
    etag = (await put(gw, "c", b"payload"))["ETag"]
    head = await gw.run(lambda s3: s3.head_object(Bucket=BKT, Key="c"))
    lm: datetime = head["LastModified"]
    before, after = http_date(lm - timedelta(days=1)), http_date(lm + timedelta(days=1))
    cases: list[tuple[dict[str, str], int]] = [
        ({"If-Match": etag}, 200),
        ({"If-Match": '"0000"'}, 412),
        ({"If-Match": "*"}, 200),
        ({"If-None-Match": etag}, 304),
        ({"If-None-Match": '"0000"'}, 200),
        ({"If-Modified-Since": after}, 304),
        ({"If-Modified-Since": before}, 200),
        ({"If-Unmodified-Since": before}, 412),
        ({"If-Unmodified-Since": after}, 200),
        # S3's precedence: a true If-Match wins over a false If-Unmodified-Since, and
        # a false If-None-Match over a true If-Modified-Since (RFC 7232, section 6).
        ({"If-Match": etag, "If-Unmodified-Since": before}, 200),
        ({"If-None-Match": etag, "If-Modified-Since": before}, 304),
        ({"If-None-Match": '"0000"', "If-Modified-Since": after}, 200),
        # An unparsable date is ignored.
        ({"If-Modified-Since": "yesterday"}, 200),
    ]
    for headers, want in cases:
        for method in ("GET", "HEAD"):
            reply = await gw.call(method, f"/{BKT}/c", headers=headers)
            assert reply.status == want, (method, headers, reply)
            if want == 304:
                assert reply.body == b"" and reply.headers["ETag"] == etag
                assert "Last-Modified" in reply.headers
            if want == 412 and method == "GET":
                assert_error(reply, "PreconditionFailed", 412, f"/{BKT}/c")


async def test_conditional_put(gw: InProcessGateway) -> None:
    etag = (await put(gw, "c", b"first"))["ETag"]
    refused = await gw.error(lambda s3: s3.put_object(Bucket=BKT, Key="c", Body=b"x",
                                                      IfNoneMatch="*"))
    assert status(refused) == 412
    refused = await gw.error(lambda s3: s3.put_object(Bucket=BKT, Key="c", Body=b"x",
                                                      IfMatch='"0000"'))
    assert status(refused) == 412
    await put(gw, "c", b"second", IfMatch=etag)
    assert (await get_body(gw, "c"))[1] == b"second"
    missing = await gw.error(lambda s3: s3.put_object(Bucket=BKT, Key="new", Body=b"x",
                                                      IfMatch=etag))
    assert missing["Error"]["Code"] == "NoSuchKey" and status(missing) == 404


# -- copy -------------------------------------------------------------------------------------

async def test_copy_metadata_directives(gw: InProcessGateway) -> None:
    src = (await put(gw, "src", b"copy me", ContentType="text/plain",
                     Metadata={"a": "1"}))["ETag"]
    copied = await gw.run(lambda s3: s3.copy_object(
        Bucket=BKT, Key="same", CopySource={"Bucket": BKT, "Key": "src"},
        Metadata={"ignored": "yes"}))
    assert copied["CopyObjectResult"]["ETag"] == src
    got, data = await get_body(gw, "same")
    assert data == b"copy me" and got["Metadata"] == {"a": "1"}
    assert got["ContentType"] == "text/plain"
    await gw.run(lambda s3: s3.copy_object(
        Bucket=BKT, Key="replaced", CopySource={"Bucket": BKT, "Key": "src"},
        MetadataDirective="REPLACE", Metadata={"b": "2"}, ContentType="application/x-new"))
    got, data = await get_body(gw, "replaced")
    assert data == b"copy me" and got["Metadata"] == {"b": "2"}
    assert got["ContentType"] == "application/x-new"


async def test_copy_onto_itself_needs_a_change(gw: InProcessGateway) -> None:
    await put(gw, "self", b"x", Metadata={"v": "1"})
    refused = await gw.error(lambda s3: s3.copy_object(
        Bucket=BKT, Key="self", CopySource={"Bucket": BKT, "Key": "self"}))
    assert refused["Error"]["Code"] == "InvalidRequest" and status(refused) == 400
    await gw.run(lambda s3: s3.copy_object(
        Bucket=BKT, Key="self", CopySource={"Bucket": BKT, "Key": "self"},
        MetadataDirective="REPLACE", Metadata={"v": "2"}))
    assert (await get_body(gw, "self"))[0]["Metadata"] == {"v": "2"}


async def test_copy_source_conditions_and_missing_source(gw: InProcessGateway) -> None:
    await put(gw, "src", b"data")
    refused = await gw.error(lambda s3: s3.copy_object(
        Bucket=BKT, Key="dst", CopySource={"Bucket": BKT, "Key": "src"},
        CopySourceIfMatch='"0000"'))
    assert refused["Error"]["Code"] == "PreconditionFailed" and status(refused) == 412
    missing = await gw.error(lambda s3: s3.copy_object(
        Bucket=BKT, Key="dst", CopySource={"Bucket": BKT, "Key": "nothing"}))
    assert missing["Error"]["Code"] == "NoSuchKey" and status(missing) == 404
    gone = await gw.error(lambda s3: s3.head_object(Bucket=BKT, Key="dst"))
    assert status(gone) == 404


# -- multipart --------------------------------------------------------------------------------

async def test_multipart_lifecycle(gw: InProcessGateway) -> None:
    part1, part2 = b"a" * (5 * MIB), b"tail"
    uid = (await gw.run(lambda s3: s3.create_multipart_upload(
        Bucket=BKT, Key="mp", ContentType="text/x-mp", Metadata={"m": "1"})))["UploadId"]
    e1 = (await gw.run(lambda s3: s3.upload_part(
        Bucket=BKT, Key="mp", UploadId=uid, PartNumber=1, Body=part1)))["ETag"]
    e2 = (await gw.run(lambda s3: s3.upload_part(
        Bucket=BKT, Key="mp", UploadId=uid, PartNumber=2, Body=part2)))["ETag"]
    listed = await gw.run(lambda s3: s3.list_parts(Bucket=BKT, Key="mp", UploadId=uid))
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in listed["Parts"]] == \
        [(1, e1, len(part1)), (2, e2, len(part2))]
    uploads = await gw.run(lambda s3: s3.list_multipart_uploads(Bucket=BKT))
    assert [(u["Key"], u["UploadId"]) for u in uploads["Uploads"]] == [("mp", uid)]
    # The object is not there before it is completed.
    assert status(await gw.error(lambda s3: s3.head_object(Bucket=BKT, Key="mp"))) == 404
    done = await gw.run(lambda s3: s3.complete_multipart_upload(
        Bucket=BKT, Key="mp", UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1},
                                   {"PartNumber": 2, "ETag": e2}]}))
    digests = b"".join(bytes.fromhex(e.strip('"')) for e in (e1, e2))
    assert done["ETag"] == f'"{hashlib.md5(digests).hexdigest()}-2"'
    got, data = await get_body(gw, "mp")
    assert data == part1 + part2 and got["ETag"] == done["ETag"]
    assert got["ContentType"] == "text/x-mp" and got["Metadata"] == {"m": "1"}
    after = await gw.run(lambda s3: s3.list_multipart_uploads(Bucket=BKT))
    assert after.get("Uploads", []) == []


async def test_multipart_too_small_part_and_abort(gw: InProcessGateway) -> None:
    uid = (await gw.run(lambda s3: s3.create_multipart_upload(Bucket=BKT, Key="mp")))["UploadId"]
    etags = []
    for n in (1, 2):
        etags.append((await gw.run(lambda s3, n=n: s3.upload_part(
            Bucket=BKT, Key="mp", UploadId=uid, PartNumber=n, Body=b"small")))["ETag"])
    parts = [{"PartNumber": n, "ETag": e} for n, e in zip((1, 2), etags, strict=True)]
    small = await gw.error(lambda s3: s3.complete_multipart_upload(
        Bucket=BKT, Key="mp", UploadId=uid, MultipartUpload={"Parts": parts}))
    assert small["Error"]["Code"] == "EntityTooSmall" and status(small) == 400
    wrong = await gw.error(lambda s3: s3.complete_multipart_upload(
        Bucket=BKT, Key="mp", UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"0000"'}]}))
    assert wrong["Error"]["Code"] == "InvalidPart"
    await gw.run(lambda s3: s3.abort_multipart_upload(Bucket=BKT, Key="mp", UploadId=uid))
    for call in (lambda s3: s3.list_parts(Bucket=BKT, Key="mp", UploadId=uid),
                 lambda s3: s3.upload_part(Bucket=BKT, Key="mp", UploadId=uid, PartNumber=3,
                                           Body=b"x")):
        gone = await gw.error(call)
        assert gone["Error"]["Code"] == "NoSuchUpload" and status(gone) == 404
    assert status(await gw.error(lambda s3: s3.head_object(Bucket=BKT, Key="mp"))) == 404


# -- tagging ----------------------------------------------------------------------------------

async def test_object_tagging(gw: InProcessGateway) -> None:
    await put(gw, "t", b"x", Tagging="a=1&b=two%20words")
    tags = await gw.run(lambda s3: s3.get_object_tagging(Bucket=BKT, Key="t")["TagSet"])
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("a", "1"), ("b", "two words")]
    head = await gw.call("HEAD", f"/{BKT}/t")
    assert head.headers["x-amz-tagging-count"] == "2"
    await gw.run(lambda s3: s3.put_object_tagging(
        Bucket=BKT, Key="t", Tagging={"TagSet": [{"Key": "only", "Value": "one"}]}))
    tags = await gw.run(lambda s3: s3.get_object_tagging(Bucket=BKT, Key="t")["TagSet"])
    assert tags == [{"Key": "only", "Value": "one"}]
    dup = await gw.error(lambda s3: s3.put_object_tagging(
        Bucket=BKT, Key="t", Tagging={"TagSet": [{"Key": "k", "Value": "1"},
                                                 {"Key": "k", "Value": "2"}]}))
    assert dup["Error"]["Code"] == "InvalidTag" and status(dup) == 400
    await gw.run(lambda s3: s3.delete_object_tagging(Bucket=BKT, Key="t"))
    assert await gw.run(lambda s3: s3.get_object_tagging(Bucket=BKT, Key="t")["TagSet"]) == []
    missing = await gw.error(lambda s3: s3.get_object_tagging(Bucket=BKT, Key="nope"))
    assert missing["Error"]["Code"] == "NoSuchKey"


# -- listings ---------------------------------------------------------------------------------

KEYS = ["a/1", "a/2", "a/b/3", "b/1", "c", "d e", "é/x"]


async def put_keys(gw: InProcessGateway, keys: list[str]) -> None:
    for key in keys:
        await put(gw, key, key.encode())


async def list_v2(gw: InProcessGateway, **kw: Any) -> dict[str, Any]:
    return await gw.run(lambda s3: s3.list_objects_v2(Bucket=BKT, **kw))


async def test_list_v2_prefix_delimiter(gw: InProcessGateway) -> None:
    await put_keys(gw, KEYS)
    page = await list_v2(gw, Delimiter="/")
    assert [o["Key"] for o in page["Contents"]] == ["c", "d e"]
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["a/", "b/", "é/"]
    assert page["KeyCount"] == 5
    page = await list_v2(gw, Prefix="a/", Delimiter="/")
    assert [o["Key"] for o in page["Contents"]] == ["a/1", "a/2"]
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["a/b/"]
    page = await list_v2(gw, Prefix="a/")
    assert [o["Key"] for o in page["Contents"]] == ["a/1", "a/2", "a/b/3"]
    assert [o["Size"] for o in page["Contents"]] == [3, 3, 5]
    assert "CommonPrefixes" not in page
    page = await list_v2(gw, Prefix="zzz")
    assert page["KeyCount"] == 0 and "Contents" not in page


async def test_list_v2_pagination_and_start_after(gw: InProcessGateway) -> None:
    await put_keys(gw, KEYS)
    seen, token, pages = [], None, 0
    while True:
        kw: dict[str, Any] = {"MaxKeys": 2, **({"ContinuationToken": token} if token else {})}
        page = await list_v2(gw, **kw)
        pages += 1
        seen += [o["Key"] for o in page.get("Contents", [])]
        assert page["KeyCount"] == len(page.get("Contents", [])) <= 2
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert seen == sorted(KEYS) and pages == 4
    page = await list_v2(gw, StartAfter="b/1")
    assert [o["Key"] for o in page["Contents"]] == ["c", "d e", "é/x"]
    assert page["StartAfter"] == "b/1"
    # With a delimiter a page counts common prefixes as entries, and one is never split.
    page = await list_v2(gw, Delimiter="/", MaxKeys=2)
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["a/", "b/"]
    assert page["IsTruncated"] and "Contents" not in page
    page = await list_v2(gw, Delimiter="/", MaxKeys=2,
                         ContinuationToken=page["NextContinuationToken"])
    assert [o["Key"] for o in page["Contents"]] == ["c", "d e"]
    bad = await gw.call("GET", f"/{BKT}", query=[("list-type", "2"),
                                                 ("continuation-token", "garbage!")])
    assert bad.status == 400 and error_fields(bad)["Code"] == "InvalidArgument"


async def test_list_v2_encoding_type_url_on_the_wire(gw: InProcessGateway) -> None:
    """boto3 decodes keys itself; the raw XML shows what the gateway encoded."""
    await put_keys(gw, ["d e", "é/x", "plus+key"])
    reply = await gw.call("GET", f"/{BKT}", query=[("list-type", "2"), ("encoding-type", "url"),
                                                   ("delimiter", "/")])
    assert reply.status == 200, reply
    root = strip_ns(reply.body)
    assert root.findtext("EncodingType") == "url"
    assert [k.text for k in root.iter("Key")] == ["d%20e", "plus%2Bkey"]
    assert [p.text for p in root.iter("Prefix") if p.text] == ["%C3%A9/"]
    reply = await gw.call("GET", f"/{BKT}", query=[("list-type", "2")])
    root = strip_ns(reply.body)
    assert root.find("EncodingType") is None
    assert [k.text for k in root.iter("Key")] == ["d e", "plus+key", "é/x"]
    bad = await gw.call("GET", f"/{BKT}", query=[("list-type", "2"), ("encoding-type", "xml")])
    assert bad.status == 400 and error_fields(bad)["Code"] == "InvalidArgument"


# -- DeleteObjects ----------------------------------------------------------------------------

async def test_delete_objects_verbose_and_quiet(gw: InProcessGateway) -> None:
    await put_keys(gw, ["x1", "x2", "x3"])
    done = await gw.run(lambda s3: s3.delete_objects(Bucket=BKT, Delete={
        "Objects": [{"Key": "x1"}, {"Key": "never-was"}]}))
    assert sorted(d["Key"] for d in done["Deleted"]) == ["never-was", "x1"]
    assert done.get("Errors", []) == []
    done = await gw.run(lambda s3: s3.delete_objects(Bucket=BKT, Delete={
        "Objects": [{"Key": "x2"}], "Quiet": True}))
    assert "Deleted" not in done and done.get("Errors", []) == []
    left = await list_v2(gw)
    assert [o["Key"] for o in left["Contents"]] == ["x3"]
    # Malformed XML is the client's error, not a silent no-op.
    body = b"<Delete><Object></Delete>"
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    reply = await gw.call("POST", f"/{BKT}", query="delete", body=body,
                          headers={"Content-MD5": md5})
    assert reply.status == 400 and error_fields(reply)["Code"] == "MalformedXML"


# -- error bodies -----------------------------------------------------------------------------

async def test_error_bodies(gw: InProcessGateway) -> None:
    reply = await gw.call("GET", key_path(BKT, "no/such key"))
    fields = assert_error(reply, "NoSuchKey", 404, f"/{BKT}/no/such key")
    assert fields["Key"] == "no/such key"
    reply = await gw.call("GET", "/no-such-bucket/k")
    fields = assert_error(reply, "NoSuchBucket", 404, ("/no-such-bucket/k", "no-such-bucket"))
    assert fields["BucketName"] == "no-such-bucket"
    reply = await gw.call("GET", f"/{BKT}/k", secret="not-the-secret")
    fields = assert_error(reply, "SignatureDoesNotMatch", 403, f"/{BKT}/k")
    assert fields["AWSAccessKeyId"] == ACCESS_KEY
    reply = await gw.call("GET", f"/{BKT}/k", access_key="AKIAUNKNOWNUSER00000")
    fields = assert_error(reply, "InvalidAccessKeyId", 403, f"/{BKT}/k")
    assert fields["AWSAccessKeyId"] == "AKIAUNKNOWNUSER00000"
    # Unsigned: AccessDenied, never the object.
    await put(gw, "k", b"secret bytes")
    reply = await gw.send("GET", f"/{BKT}/k")
    assert_error(reply, "AccessDenied", 403, f"/{BKT}/k")
    assert b"secret bytes" not in reply.body


async def test_expired_presigned_url_is_access_denied(gw: InProcessGateway) -> None:
    await put(gw, "k", b"bytes")
    signed_at = datetime.now(UTC) - timedelta(minutes=10)
    for expires, want in ((3600, 200), (60, 403)):
        raw = presign("GET", key_path(BKT, "k"), expires=expires, host=gw.host, now=signed_at)
        reply = await gw.send("GET", raw.target)
        assert reply.status == want, reply
    fields = assert_error(reply, "AccessDenied", 403, f"/{BKT}/k")
    assert "expired" in fields["Message"].lower()
    assert reply.body.count(b"bytes") == 0


async def test_second_user_is_refused_the_owners_bucket(gw: InProcessGateway) -> None:
    """docs/access-control.md: another user's bucket answers 403 AccessDenied (this test
    pinned the old shared-bucket behaviour, the hole issue 13 closed)."""
    other = gw.client(access_key=OTHER_KEY, secret_key=OTHER_SECRET)
    taken = await gw.error(lambda s3: s3.create_bucket(Bucket=BKT), client=other)
    assert taken["Error"]["Code"] == "BucketAlreadyExists" and status(taken) == 409
    await put(gw, "mine", b"x")
    for call in (lambda s3: s3.put_object(Bucket=BKT, Key="theirs", Body=b"x"),
                 lambda s3: s3.get_object(Bucket=BKT, Key="mine"),
                 lambda s3: s3.list_objects_v2(Bucket=BKT),
                 lambda s3: s3.delete_object(Bucket=BKT, Key="mine")):
        denied = await gw.error(call, client=other)
        assert denied["Error"]["Code"] == "AccessDenied" and status(denied) == 403
    assert (await get_body(gw, "mine"))[1] == b"x"


# -- POST Object (browser form upload) --------------------------------------------------------

async def test_post_object_form(gw: InProcessGateway) -> None:
    post = await gw.run(lambda s3: s3.generate_presigned_post(
        BKT, "forms/${filename}", Fields={"x-amz-meta-via": "form"},
        Conditions=[["starts-with", "$key", "forms/"], {"x-amz-meta-via": "form"},
                    ["content-length-range", 1, 100]], ExpiresIn=60))

    def form(name: str, data: bytes) -> aiohttp.FormData:
        fd = aiohttp.FormData()
        for k, v in post["fields"].items():
            fd.add_field(k, v)
        fd.add_field("file", data, filename=name, content_type="text/plain")
        return fd

    target = post["url"].removeprefix(gw.endpoint)
    reply = await gw.send("POST", target, body=form("a.txt", b"posted"))
    assert reply.status == 204, reply
    got, data = await get_body(gw, "forms/a.txt")
    assert data == b"posted" and got["Metadata"] == {"via": "form"}
    assert reply.headers["ETag"] == got["ETag"]
    reply = await gw.send("POST", target, body=form("big.txt", b"x" * 101))
    assert_error(reply, "EntityTooLarge", 400, f"/{BKT}")
    assert status(await gw.error(lambda s3: s3.head_object(Bucket=BKT, Key="forms/big.txt"))) \
        == 404
