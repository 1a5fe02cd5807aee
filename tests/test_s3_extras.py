"""Part tables, multipart checksums, chunked PUTs, bucket tagging, versioning answers
and bucket owners, with boto3 through the gateway on both backends."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError
from multidict import CIMultiDict

from s3latent.backends.base import HashedBody, ObjectMeta, UploadChecksum
from s3latent.backends.s3 import S3Backend
from s3latent.errors import S3Error
from s3latent.s3api.auth import AuthContext
from s3latent.s3api.payload import PayloadReader
from tests.gateway import ACCESS_KEY, SECRET_KEY, GatewayProcess, on_backend
from tests.seaweed import SeaweedFS

MiB = 1024 * 1024
PART = 5 * MiB


def _code(exc: ClientError) -> str:
    return exc.response["Error"]["Code"]


def _status(exc: ClientError) -> int:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"]


def _replace_body(request: Any, body: bytes) -> None:
    """Swap a request's XML body before signing, dropping the digests of the old one."""
    request.data = body
    for name in list(request.headers.keys()):
        if name.lower() == "content-md5" or name.lower().startswith(("x-amz-checksum-",
                                                                     "x-amz-sdk-checksum")):
            del request.headers[name]


def _assert_s3_error(exc: ClientError, status: int, code: str) -> None:
    """The code and status AWS sends, with an XML body carrying a request id."""
    assert (_status(exc), _code(exc)) == (status, code), exc.response
    assert exc.response["ResponseMetadata"]["HTTPHeaders"].get("x-amz-request-id")


def _b64(algorithm: str, data: bytes) -> str:
    if algorithm == "crc32":
        return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    return base64.b64encode(hashlib.new(algorithm, data).digest()).decode()


def _upload(s3: Any, bucket: str, key: str, bodies: list[bytes], **create: Any
            ) -> tuple[str, list[dict[str, Any]]]:
    uid = s3.create_multipart_upload(Bucket=bucket, Key=key, **create)["UploadId"]
    parts = []
    for n, body in enumerate(bodies, 1):
        extra = {"ChecksumAlgorithm": create["ChecksumAlgorithm"]} \
            if "ChecksumAlgorithm" in create else {}
        resp = s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=n, Body=body,
                              **extra)
        part = {"PartNumber": n, "ETag": resp["ETag"]}
        for name in ("ChecksumSHA256", "ChecksumCRC32", "ChecksumSHA1"):
            if name in resp and "ChecksumAlgorithm" in create:
                part[name] = resp[name]
        parts.append(part)
    return uid, parts


# -- GetObjectAttributes: the part list --------------------------------------------


def test_object_parts_listed_and_paginated(s3: Any, bucket: str) -> None:
    bodies = [b"a" * PART, b"b" * PART, b"c" * PART, b"tail"]
    uid, parts = _upload(s3, bucket, "mp", bodies)
    done = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid,
                                        MultipartUpload={"Parts": parts})
    attrs = s3.get_object_attributes(Bucket=bucket, Key="mp",
                                     ObjectAttributes=["ETag", "ObjectParts", "ObjectSize"])
    assert attrs["ETag"] == done["ETag"].strip('"')
    assert attrs["ObjectSize"] == 3 * PART + 4
    op = attrs["ObjectParts"]
    assert op["TotalPartsCount"] == 4 and op["IsTruncated"] is False
    assert [(p["PartNumber"], p["Size"]) for p in op["Parts"]] == [
        (1, PART), (2, PART), (3, PART), (4, 4)]
    assert all("ChecksumSHA256" not in p for p in op["Parts"])
    page = s3.get_object_attributes(Bucket=bucket, Key="mp", ObjectAttributes=["ObjectParts"],
                                    MaxParts=1, PartNumberMarker=2)["ObjectParts"]
    assert (page["MaxParts"], page["PartNumberMarker"], page["IsTruncated"],
            page["NextPartNumberMarker"]) == (1, 2, True, 3)
    assert [(p["PartNumber"], p["Size"]) for p in page["Parts"]] == [(3, PART)]
    last = s3.get_object_attributes(Bucket=bucket, Key="mp", ObjectAttributes=["ObjectParts"],
                                    MaxParts=10, PartNumberMarker=3)["ObjectParts"]
    assert last["IsTruncated"] is False and [p["PartNumber"] for p in last["Parts"]] == [4]
    # The table outlives a tag update (the local backend rewrites the object file).
    s3.put_object_tagging(Bucket=bucket, Key="mp", Tagging={"TagSet": [{"Key": "k",
                                                                       "Value": "v"}]})
    again = s3.get_object_attributes(Bucket=bucket, Key="mp", ObjectAttributes=["ObjectParts"])
    assert len(again["ObjectParts"]["Parts"]) == 4


def test_object_parts_single_part_and_stale_table(s3: Any, bucket: str) -> None:
    uid, parts = _upload(s3, bucket, "one", [b"x" * 100])
    s3.complete_multipart_upload(Bucket=bucket, Key="one", UploadId=uid,
                                 MultipartUpload={"Parts": parts})
    op = s3.get_object_attributes(Bucket=bucket, Key="one",
                                  ObjectAttributes=["ObjectParts"])["ObjectParts"]
    assert op["TotalPartsCount"] == 1
    assert [(p["PartNumber"], p["Size"]) for p in op["Parts"]] == [(1, 100)]
    # Replaced by a single PUT: no part list (and no leftover of the old one).
    uid, parts = _upload(s3, bucket, "two", [b"a" * PART, b"b"])
    s3.complete_multipart_upload(Bucket=bucket, Key="two", UploadId=uid,
                                 MultipartUpload={"Parts": parts})
    s3.put_object(Bucket=bucket, Key="two", Body=b"plain")
    attrs = s3.get_object_attributes(Bucket=bucket, Key="two",
                                     ObjectAttributes=["ObjectParts", "ObjectSize"])
    assert "ObjectParts" not in attrs and attrs["ObjectSize"] == 5


def test_copy_keeps_the_part_table(s3: Any, bucket: str) -> None:
    uid, parts = _upload(s3, bucket, "src", [b"a" * PART, b"bc"])
    done = s3.complete_multipart_upload(Bucket=bucket, Key="src", UploadId=uid,
                                        MultipartUpload={"Parts": parts})
    copied = s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket,
                                                                   "Key": "src"})
    # Both backends keep a multipart source's ETag on copy, and so its layout.
    assert copied["CopyObjectResult"]["ETag"] == done["ETag"]
    op = s3.get_object_attributes(Bucket=bucket, Key="dst",
                                  ObjectAttributes=["ObjectParts"])["ObjectParts"]
    assert [(p["PartNumber"], p["Size"]) for p in op["Parts"]] == [(1, PART), (2, 2)]
    s3.delete_object(Bucket=bucket, Key="src")  # the copy's table is its own
    op = s3.get_object_attributes(Bucket=bucket, Key="dst",
                                  ObjectAttributes=["ObjectParts"])["ObjectParts"]
    assert len(op["Parts"]) == 2


def test_object_parts_bad_pagination_headers(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")

    def bad_marker(request: Any, **_: Any) -> None:
        request.headers["x-amz-part-number-marker"] = "-1"

    s3.meta.events.register_first("before-sign.s3.GetObjectAttributes", bad_marker)
    try:
        with pytest.raises(ClientError) as exc:
            s3.get_object_attributes(Bucket=bucket, Key="k", ObjectAttributes=["ObjectParts"])
        _assert_s3_error(exc.value, 400, "InvalidArgument")
    finally:
        s3.meta.events.unregister("before-sign.s3.GetObjectAttributes", bad_marker)


def test_get_part_number(s3: Any, bucket: str) -> None:
    bodies = [b"1" * PART, b"2" * 10]
    uid, parts = _upload(s3, bucket, "gp", bodies)
    done = s3.complete_multipart_upload(Bucket=bucket, Key="gp", UploadId=uid,
                                        MultipartUpload={"Parts": parts})
    for n, body in enumerate(bodies, 1):
        got = s3.get_object(Bucket=bucket, Key="gp", PartNumber=n)
        assert got["Body"].read() == body
        assert got["PartsCount"] == 2 and got["ETag"] == done["ETag"]
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
        head = s3.head_object(Bucket=bucket, Key="gp", PartNumber=n)
        assert head["ContentLength"] == len(body) and head["PartsCount"] == 2
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="gp", PartNumber=3)
    _assert_s3_error(exc.value, 416, "InvalidPartNumber")
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="gp", PartNumber=1, Range="bytes=0-1")
    _assert_s3_error(exc.value, 400, "InvalidRequest")
    s3.put_object(Bucket=bucket, Key="single", Body=b"body")
    assert s3.get_object(Bucket=bucket, Key="single", PartNumber=1)["Body"].read() == b"body"
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="single", PartNumber=2)
    _assert_s3_error(exc.value, 416, "InvalidPartNumber")


# -- multipart checksums -------------------------------------------------------------


def test_composite_sha256_checksum(s3: Any, bucket: str) -> None:
    p1, p2 = b"A" * PART, b"B" * 1000
    uid = s3.create_multipart_upload(Bucket=bucket, Key="c", ChecksumAlgorithm="SHA256")
    assert (uid["ChecksumAlgorithm"], uid["ChecksumType"]) == ("SHA256", "COMPOSITE")
    uid = uid["UploadId"]
    r1 = s3.upload_part(Bucket=bucket, Key="c", UploadId=uid, PartNumber=1, Body=p1,
                        ChecksumAlgorithm="SHA256")
    assert r1["ChecksumSHA256"] == _b64("sha256", p1)
    # No SHA-256 from the client: the gateway computes the upload's algorithm itself.
    r2 = s3.upload_part(Bucket=bucket, Key="c", UploadId=uid, PartNumber=2, Body=p2)
    listed = s3.list_parts(Bucket=bucket, Key="c", UploadId=uid)
    assert listed["ChecksumAlgorithm"] == "SHA256"
    assert [p["ChecksumSHA256"] for p in listed["Parts"]] == [_b64("sha256", p1),
                                                             _b64("sha256", p2)]
    composite = base64.b64encode(hashlib.sha256(
        hashlib.sha256(p1).digest() + hashlib.sha256(p2).digest()).digest()).decode() + "-2"
    parts = [{"PartNumber": 1, "ETag": r1["ETag"], "ChecksumSHA256": r1["ChecksumSHA256"]},
             {"PartNumber": 2, "ETag": r2["ETag"]}]
    wrong = base64.b64encode(b"\0" * 32).decode() + "-2"
    for value, code in ((wrong, "BadDigest"), ("bad", "BadDigest")):
        with pytest.raises(ClientError) as exc:
            s3.complete_multipart_upload(Bucket=bucket, Key="c", UploadId=uid,
                                         ChecksumSHA256=value, MultipartUpload={"Parts": parts})
        _assert_s3_error(exc.value, 400, code)
    bad_part = [dict(parts[0], ChecksumSHA256=_b64("sha256", b"other")), parts[1]]
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(Bucket=bucket, Key="c", UploadId=uid,
                                     MultipartUpload={"Parts": bad_part})
    _assert_s3_error(exc.value, 400, "InvalidPart")
    done = s3.complete_multipart_upload(Bucket=bucket, Key="c", UploadId=uid,
                                        ChecksumSHA256=composite,
                                        MultipartUpload={"Parts": parts})
    assert done["ChecksumSHA256"] == composite and done["ChecksumType"] == "COMPOSITE"
    again = s3.complete_multipart_upload(Bucket=bucket, Key="c", UploadId=uid,
                                         ChecksumSHA256=composite,
                                         MultipartUpload={"Parts": parts})
    assert (again["ETag"], again["ChecksumSHA256"]) == (done["ETag"], composite)
    assert "ChecksumSHA256" not in s3.head_object(Bucket=bucket, Key="c")
    head = s3.head_object(Bucket=bucket, Key="c", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == composite and head["ChecksumType"] == "COMPOSITE"
    got = s3.get_object(Bucket=bucket, Key="c", ChecksumMode="ENABLED")
    assert got["ChecksumSHA256"] == composite
    assert got["Body"].read() == p1 + p2
    attrs = s3.get_object_attributes(Bucket=bucket, Key="c",
                                     ObjectAttributes=["Checksum", "ObjectParts"])
    assert attrs["Checksum"] == {"ChecksumSHA256": composite, "ChecksumType": "COMPOSITE"}
    assert [p["ChecksumSHA256"] for p in attrs["ObjectParts"]["Parts"]] == [
        _b64("sha256", p1), _b64("sha256", p2)]
    part2 = s3.get_object(Bucket=bucket, Key="c", PartNumber=2, ChecksumMode="ENABLED")
    assert part2["ChecksumSHA256"] == _b64("sha256", p2)
    assert part2["ChecksumType"] == "COMPOSITE" and part2["Body"].read() == p2


def test_full_object_crc32_checksum(s3: Any, bucket: str) -> None:
    p1, p2, p3 = b"x" * PART, b"y" * PART, b"z" * 77
    uid, parts = _upload(s3, bucket, "f", [p1, p2, p3], ChecksumAlgorithm="CRC32",
                         ChecksumType="FULL_OBJECT")
    whole = _b64("crc32", p1 + p2 + p3)
    done = s3.complete_multipart_upload(Bucket=bucket, Key="f", UploadId=uid,
                                        ChecksumCRC32=whole, ChecksumType="FULL_OBJECT",
                                        MultipartUpload={"Parts": parts})
    assert done["ChecksumCRC32"] == whole and done["ChecksumType"] == "FULL_OBJECT"
    head = s3.head_object(Bucket=bucket, Key="f", ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"] == whole and head["ChecksumType"] == "FULL_OBJECT"


def test_checksum_argument_errors(s3: Any, bucket: str) -> None:
    for algorithm, kind in (("SHA256", "FULL_OBJECT"), ("CRC64NVME", "COMPOSITE")):
        with pytest.raises(ClientError) as exc:
            s3.create_multipart_upload(Bucket=bucket, Key="e", ChecksumAlgorithm=algorithm,
                                       ChecksumType=kind)
        _assert_s3_error(exc.value, 400, "InvalidRequest")
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    # An object checksum on Complete of an upload that has no algorithm.
    uid, parts = _upload(s3, bucket, "plain", [b"data"])
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(Bucket=bucket, Key="plain", UploadId=uid,
                                     ChecksumSHA256=_b64("sha256", b"data"),
                                     MultipartUpload={"Parts": parts})
    _assert_s3_error(exc.value, 400, "InvalidRequest")
    # The header is the object's checksum, never mistaken for the XML body's.
    done = s3.complete_multipart_upload(Bucket=bucket, Key="plain", UploadId=uid,
                                        MultipartUpload={"Parts": parts})
    assert "ChecksumSHA256" not in done


def test_part_copy_into_checksum_upload(s3: Any, bucket: str) -> None:
    src = b"s" * PART
    s3.put_object(Bucket=bucket, Key="src", Body=src)
    uid = s3.create_multipart_upload(Bucket=bucket, Key="dst",
                                     ChecksumAlgorithm="SHA256")["UploadId"]
    copied = s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=1,
                                 CopySource={"Bucket": bucket, "Key": "src"})["CopyPartResult"]
    assert copied["ChecksumSHA256"] == _b64("sha256", src)
    tail = s3.upload_part(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=2, Body=b"t",
                          ChecksumAlgorithm="SHA256")
    done = s3.complete_multipart_upload(Bucket=bucket, Key="dst", UploadId=uid,
                                        MultipartUpload={"Parts": [
                                            {"PartNumber": 1, "ETag": copied["ETag"]},
                                            {"PartNumber": 2, "ETag": tail["ETag"]}]})
    expected = base64.b64encode(hashlib.sha256(
        hashlib.sha256(src).digest() + hashlib.sha256(b"t").digest()).digest()).decode()
    assert done["ChecksumSHA256"] == expected + "-2"


def test_repeated_part_number_is_invalid_part_order(s3: Any, bucket: str) -> None:
    uid, parts = _upload(s3, bucket, "dup", [b"first"])
    again = s3.upload_part(Bucket=bucket, Key="dup", UploadId=uid, PartNumber=1, Body=b"second")
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(Bucket=bucket, Key="dup", UploadId=uid, MultipartUpload={
            "Parts": [*parts, {"PartNumber": 1, "ETag": again["ETag"]}]})
    _assert_s3_error(exc.value, 400, "InvalidPartOrder")


# -- Transfer-Encoding: chunked without Content-Length --------------------------------


def _chunked(request: Any, **_: Any) -> None:
    request.headers.add_header("Transfer-Encoding", "chunked")


def test_chunked_transfer_encoding_put(gateway: GatewayProcess, bucket: str) -> None:
    s3 = gateway.client()
    s3.meta.events.register_first("before-sign.s3.*", _chunked)
    body = bytes(range(256)) * (3 * 4096) + b"end"  # over 3 MiB: several read blocks
    s3.put_object(Bucket=bucket, Key="te", Body=body)
    s3.put_object(Bucket=bucket, Key="small", Body=b"bar")
    plain = gateway.client()
    assert plain.get_object(Bucket=bucket, Key="te")["Body"].read() == body
    assert plain.get_object(Bucket=bucket, Key="small")["Body"].read() == b"bar"
    head = plain.head_object(Bucket=bucket, Key="te")
    assert head["ContentLength"] == len(body)
    assert head["ETag"].strip('"') == hashlib.md5(body).hexdigest()
    uid = plain.create_multipart_upload(Bucket=bucket, Key="te-mp")["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key="te-mp", UploadId=uid, PartNumber=1,
                          Body=b"part")["ETag"]
    plain.complete_multipart_upload(Bucket=bucket, Key="te-mp", UploadId=uid,
                                    MultipartUpload={"Parts": [{"PartNumber": 1,
                                                                "ETag": etag}]})
    assert plain.get_object(Bucket=bucket, Key="te-mp")["Body"].read() == b"part"


class _Stream:
    def __init__(self, data: bytes) -> None:
        self._data = data

    async def read(self, n: int = -1) -> bytes:
        out, self._data = self._data[:n], self._data[n:]
        return out

    async def readline(self) -> bytes:
        raise AssertionError("not chunked")

    async def readexactly(self, n: int) -> bytes:
        raise AssertionError("not chunked")


async def test_chunked_body_limit_and_missing_length() -> None:
    auth = AuthContext("k", "UNSIGNED-PAYLOAD", b"", "", "20240501T120000Z",
                       "20240501/us-east-1/s3/aws4_request", False)
    chunked = CIMultiDict({"Transfer-Encoding": "chunked"})
    reader = PayloadReader(_Stream(b"x" * 10), chunked, auth, max_size=4, method="PUT")
    assert reader.decoded_length is None
    with pytest.raises(S3Error) as err:
        _ = [c async for c in reader]
    assert err.value.code == "EntityTooLarge"
    reader = PayloadReader(_Stream(b"abc"), chunked, auth, max_size=4, method="PUT")
    assert b"".join([c async for c in reader]) == b"abc"
    with pytest.raises(S3Error) as err:  # neither a length nor chunked framing
        PayloadReader(_Stream(b"abc"), CIMultiDict(), auth, method="PUT")
    assert err.value.code == "MissingContentLength"


# -- bucket tagging ---------------------------------------------------------------------


def test_bucket_tagging(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as exc:
        s3.get_bucket_tagging(Bucket=bucket)
    _assert_s3_error(exc.value, 404, "NoSuchTagSet")
    tags = [{"Key": "team", "Value": "images"}, {"Key": "cost center", "Value": "a+b=c"},
            {"Key": "empty", "Value": ""}]
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tags})
    got = s3.get_bucket_tagging(Bucket=bucket)["TagSet"]
    assert got == sorted(tags, key=lambda t: t["Key"])
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": "only", "Value": "1"}]})
    assert s3.get_bucket_tagging(Bucket=bucket)["TagSet"] == [{"Key": "only", "Value": "1"}]
    assert s3.delete_bucket_tagging(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as exc:
        s3.get_bucket_tagging(Bucket=bucket)
    _assert_s3_error(exc.value, 404, "NoSuchTagSet")
    # Object tags are separate from bucket tags.
    s3.put_object(Bucket=bucket, Key="o", Body=b"1", Tagging="a=b")
    with pytest.raises(ClientError):
        s3.get_bucket_tagging(Bucket=bucket)


@pytest.mark.parametrize(("tag_set", "code"), [
    ([{"Key": "k", "Value": "1"}, {"Key": "k", "Value": "2"}], "InvalidTag"),
    ([{"Key": f"k{i}", "Value": "v"} for i in range(51)], "InvalidTag"),
    ([{"Key": "k" * 129, "Value": "v"}], "InvalidTag"),
    ([{"Key": "k", "Value": "v" * 257}], "InvalidTag"),
    ([{"Key": "aws:reserved", "Value": "v"}], "InvalidTag"),
    ([{"Key": "bad#char", "Value": "v"}], "InvalidTag"),
])
def test_bucket_tagging_limits(s3: Any, bucket: str, tag_set: list[dict[str, str]],
                               code: str) -> None:
    with pytest.raises(ClientError) as exc:
        s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tag_set})
    _assert_s3_error(exc.value, 400, code)
    with pytest.raises(ClientError):
        s3.get_bucket_tagging(Bucket=bucket)  # nothing was stored


def test_bucket_tagging_malformed_and_missing_bucket(s3: Any, bucket: str) -> None:
    def garble(request: Any, **_: Any) -> None:
        _replace_body(request, b"<Tagging><TagSet><Tag><Key>k</Key></TagSet></Tagging>")

    s3.meta.events.register_first("before-sign.s3.PutBucketTagging", garble)
    try:
        with pytest.raises(ClientError) as exc:
            s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": []})
        _assert_s3_error(exc.value, 400, "MalformedXML")
    finally:
        s3.meta.events.unregister("before-sign.s3.PutBucketTagging", garble)
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ClientError) as exc:
        s3.get_bucket_tagging(Bucket=missing)
    _assert_s3_error(exc.value, 404, "NoSuchBucket")
    with pytest.raises(ClientError) as exc:
        s3.put_bucket_tagging(Bucket=missing, Tagging={"TagSet": [{"Key": "a", "Value": "b"}]})
    _assert_s3_error(exc.value, 404, "NoSuchBucket")


# -- versioning: answered, never pretended ----------------------------------------------


def test_put_bucket_versioning_validates_then_keeps_the_status(s3: Any, bucket: str) -> None:
    """A malformed configuration is MalformedXML and changes nothing; a valid one is kept
    (versioning is implemented: docs/versioning.md, tests/test_versioning_api.py)."""
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)

    def garble(request: Any, **_: Any) -> None:
        _replace_body(request, b"<VersioningConfiguration><Status>On</Status>"
                      b"</VersioningConfiguration>")

    s3.meta.events.register_first("before-sign.s3.PutBucketVersioning", garble)
    try:
        with pytest.raises(ClientError) as exc:
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        _assert_s3_error(exc.value, 400, "MalformedXML")
    finally:
        s3.meta.events.unregister("before-sign.s3.PutBucketVersioning", garble)
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)
    for status in ("Enabled", "Suspended"):
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": status})
        assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == status


# -- bucket owners ----------------------------------------------------------------------

ALICE = ("alice-access-key", "alice-secret-key-0123456789")


@pytest.fixture(scope="module", params=["local", "seaweedfs"])
def two_user_gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[GatewayProcess]:
    """A gateway with two users (the test user and alice), on each backend."""
    workdir = tmp_path_factory.mktemp(f"owners-{request.param}")
    config = f'[[users]]\naccess_key = "{ALICE[0]}"\nsecret_key = "{ALICE[1]}"\n'
    proc = on_backend(request, workdir, config=config)
    proc.start()
    yield proc
    proc.stop()


def _client(proc: GatewayProcess, keys: tuple[str, str]) -> Any:
    return boto3.client("s3", endpoint_url=proc.endpoint, aws_access_key_id=keys[0],
                        aws_secret_access_key=keys[1], region_name="us-east-1",
                        config=BotoConfig(retries={"max_attempts": 1}))


def test_bucket_owner(two_user_gateway: GatewayProcess) -> None:
    me = _client(two_user_gateway, (ACCESS_KEY, SECRET_KEY))
    alice = _client(two_user_gateway, ALICE)
    name = f"own-{uuid.uuid4().hex[:10]}"
    me.create_bucket(Bucket=name)
    with pytest.raises(ClientError) as exc:
        alice.create_bucket(Bucket=name)
    _assert_s3_error(exc.value, 409, "BucketAlreadyExists")
    with pytest.raises(ClientError) as exc:
        me.create_bucket(Bucket=name)
    _assert_s3_error(exc.value, 409, "BucketAlreadyOwnedByYou")
    # The bucket is its owner's: alice is refused (this once pinned the shared-bucket hole).
    with pytest.raises(ClientError) as exc:
        alice.put_object(Bucket=name, Key="k", Body=b"shared")
    _assert_s3_error(exc.value, 403, "AccessDenied")
    me.put_object(Bucket=name, Key="k", Body=b"mine")
    with pytest.raises(ClientError) as exc:
        alice.get_object(Bucket=name, Key="k")
    _assert_s3_error(exc.value, 403, "AccessDenied")
    me.delete_object(Bucket=name, Key="k")
    me.delete_bucket(Bucket=name)
    alice.create_bucket(Bucket=name)  # deleted: the name is free again, for anyone
    with pytest.raises(ClientError) as exc:
        me.create_bucket(Bucket=name)
    _assert_s3_error(exc.value, 409, "BucketAlreadyExists")
    alice.delete_bucket(Bucket=name)


# -- the S3 backend's meta bucket ---------------------------------------------------------


@pytest.fixture
def weed_gateway(gateway: GatewayProcess, seaweedfs: SeaweedFS) -> GatewayProcess:
    if gateway.backend != seaweedfs.endpoint:
        pytest.skip("the meta bucket belongs to S3 backends")
    return gateway


def _meta_bucket(weed: SeaweedFS) -> str:
    return S3Backend(weed.endpoint, weed.access_key, weed.secret_key).meta_bucket


def test_meta_bucket_is_hidden_and_refused(weed_gateway: GatewayProcess, s3: Any,
                                           bucket: str, seaweedfs: SeaweedFS) -> None:
    uid, parts = _upload(s3, bucket, "mp", [b"a" * PART, b"b"])
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid,
                                 MultipartUpload={"Parts": parts})
    meta = _meta_bucket(seaweedfs)
    backend_names = [b["Name"] for b in seaweedfs.client().list_buckets()["Buckets"]]
    assert meta in backend_names
    assert meta not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    with pytest.raises(ClientError) as exc:
        s3.create_bucket(Bucket=meta)
    _assert_s3_error(exc.value, 409, "BucketAlreadyExists")
    for call in (lambda: s3.list_objects_v2(Bucket=meta),
                 lambda: s3.put_object(Bucket=meta, Key="x", Body=b"1"),
                 lambda: s3.delete_bucket(Bucket=meta)):
        with pytest.raises(ClientError) as exc:
            call()
        _assert_s3_error(exc.value, 403, "AccessDenied")


class _Hashed(HashedBody):
    """A body as the front end hands it over: MD5 and checksums known at the end."""

    def __init__(self, data: bytes, algorithm: str) -> None:
        self._data, self._algorithm = data, algorithm

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._data

    @property
    def md5_hex(self) -> str:
        return hashlib.md5(self._data).hexdigest()

    @property
    def checksums(self) -> dict[str, str]:
        return {self._algorithm: _b64(self._algorithm, self._data)}


async def test_s3_backend_records_outlive_the_process(seaweedfs: SeaweedFS,
                                                      tmp_path: Path) -> None:
    """Upload checksums and part tables live in the backend, not in gateway memory."""

    def backend() -> S3Backend:
        return S3Backend(seaweedfs.endpoint, seaweedfs.access_key, seaweedfs.secret_key)

    name = f"rec-{uuid.uuid4().hex[:8]}"
    first = backend()
    await first.start()
    try:
        await first.create_bucket(name, owner="someone")
        uid = await first.create_multipart_upload(name, "k", ObjectMeta(),
                                                  checksum=UploadChecksum("sha256",
                                                                          "COMPOSITE"))
        e1 = await first.upload_part(name, "k", uid, 1, _Hashed(b"1" * PART, "sha256"))
    finally:
        await first.close()
    second = backend()  # a restarted gateway: nothing cached
    await second.start()
    try:
        assert await second.upload_checksum(name, "k", uid) == UploadChecksum("sha256",
                                                                              "COMPOSITE")
        e2 = await second.upload_part(name, "k", uid, 2, _Hashed(b"two", "sha256"))
        parts, _ = await second.list_parts(name, "k", uid)
        assert [p.checksums for p in parts] == [{"sha256": _b64("sha256", b"1" * PART)},
                                                {"sha256": _b64("sha256", b"two")}]
        info = await second.complete_multipart_upload(name, "k", uid, [(1, e1), (2, e2)],
                                                      checksum="composite-2")
        with pytest.raises(S3Error) as err:
            await second.create_bucket(name, owner="another")
        assert err.value.code == "BucketAlreadyExists"
    finally:
        await second.close()
    third = backend()
    await third.start()
    try:
        table = await third.get_part_table(name, "k", info.etag)
        assert table is not None and table.checksum == "composite-2"
        assert [(p.part_number, p.size) for p in table.parts] == [(1, PART), (2, 3)]
        assert await third.get_part_table(name, "k", "0" * 32 + "-2") is None
        await third.delete_object(name, "k")
        await third.delete_bucket(name)
    finally:
        await third.close()


async def test_a_listing_answered_before_a_bucket_deletion_does_not_revive_it(
        seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ListBuckets answered before DeleteBucket but read after it (the sweeper and
    bucket checks list concurrently with requests) must not leave the deleted bucket
    cached as existing: a PUT would then pass the bucket check, and SeaweedFS creates
    a bucket on PUT, so the deleted bucket would come back."""
    backend = S3Backend(seaweedfs.endpoint, seaweedfs.access_key, seaweedfs.secret_key)
    await backend.start()
    name = f"gone-{uuid.uuid4().hex[:8]}"
    real_call = backend._call
    answered, deleted = asyncio.Event(), asyncio.Event()

    async def call(op: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        result = await real_call(op, *args, **kwargs)
        if op == "list_buckets" and not answered.is_set():  # the first listing is held
            answered.set()
            await deleted.wait()
        return result

    async def once() -> AsyncIterator[bytes]:
        yield b"x"

    try:
        await backend.create_bucket(name)
        monkeypatch.setattr(backend, "_call", call)
        stale = asyncio.ensure_future(backend.list_buckets())
        await answered.wait()  # the backend answered: `name` exists
        await backend.delete_bucket(name)
        deleted.set()
        assert name in [b.name for b in await stale]
        with pytest.raises(S3Error) as err:
            await backend.put_object(name, "k", once(), ObjectMeta(), size=1)
        assert err.value.code == "NoSuchBucket"
        assert name not in [b.name for b in await backend.list_buckets()]
    finally:
        deleted.set()
        monkeypatch.undo()
        if name in [b.name for b in await backend.list_buckets()]:  # revived: clean up
            await backend.delete_object(name, "k")
            await backend.delete_bucket(name)
        await backend.close()


# -- ACL writes ------------------------------------------------------------------------------


def test_acl_writes_take_effect(s3: Any, bucket: str) -> None:
    """Once answered 501 for anything but owner-only ACLs; now stored and in force
    (tests/test_access_control.py covers who they let in)."""
    s3.put_object(Bucket=bucket, Key="acl.txt", Body=b"x")
    s3.put_object_acl(Bucket=bucket, Key="acl.txt", ACL="private")
    s3.put_bucket_acl(Bucket=bucket, ACL="private")
    grant = s3.get_object_acl(Bucket=bucket, Key="acl.txt")["Grants"]
    assert [g["Permission"] for g in grant] == ["FULL_CONTROL"]
    s3.put_object_acl(Bucket=bucket, Key="acl.txt", ACL="public-read")
    s3.put_bucket_acl(Bucket=bucket, ACL="public-read-write")
    assert sorted(g["Permission"] for g in s3.get_object_acl(Bucket=bucket, Key="acl.txt")
                  ["Grants"]) == ["FULL_CONTROL", "READ"]
    assert sorted(g["Permission"] for g in s3.get_bucket_acl(Bucket=bucket)["Grants"]) == \
        ["FULL_CONTROL", "READ", "WRITE"]
    with pytest.raises(ClientError) as exc:
        s3.put_object_acl(Bucket=bucket, Key="missing.txt", ACL="private")
    assert _code(exc.value) == "NoSuchKey"
    assert s3.get_object(Bucket=bucket, Key="acl.txt")["Body"].read() == b"x"


async def test_requests_for_missing_buckets_share_listings(seaweedfs: SeaweedFS,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Unsigned requests can name any bucket: a miss must not cost a backend ListBuckets
    (a HeadBucket), and creates (here or through another gateway) and deletes are seen at
    once."""
    backend = S3Backend(seaweedfs.endpoint, seaweedfs.access_key, seaweedfs.secret_key)
    await backend.start()
    real_call = backend._call
    listings = 0

    async def call(op: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        nonlocal listings
        listings += op == "list_buckets"
        return await real_call(op, *args, **kwargs)

    monkeypatch.setattr(backend, "_call", call)
    name = f"miss-{uuid.uuid4().hex[:8]}"
    try:
        results = await asyncio.gather(
            *(backend.head_bucket(f"nope-{uuid.uuid4().hex[:10]}") for _ in range(50)),
            return_exceptions=True)
        assert all(isinstance(r, S3Error) and r.code == "NoSuchBucket" for r in results)
        assert listings == 0
        # A bucket another gateway creates is seen at once (a load balancer may send the
        # create to one node and the first PUT to another).
        other = S3Backend(seaweedfs.endpoint, seaweedfs.access_key, seaweedfs.secret_key)
        await other.start()
        try:
            await other.create_bucket(name)
        finally:
            await other.close()
        assert (await backend.head_bucket(name)).name == name
        await backend.delete_bucket(name)
        with pytest.raises(S3Error) as err:
            await backend.head_bucket(name)
        assert err.value.code == "NoSuchBucket"
    finally:
        monkeypatch.undo()
        if name in [b.name for b in await backend.list_buckets()]:
            await backend.delete_bucket(name)
        await backend.close()
