"""The S3 API through the gateway with boto3, on both backends."""

from __future__ import annotations

import hashlib
import io
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from tests.gateway import GatewayProcess


def _code(exc: ClientError) -> str:
    return exc.response["Error"]["Code"]


def _status(exc: ClientError) -> int:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"]


# -- buckets ----------------------------------------------------------------


def test_bucket_lifecycle(s3: Any) -> None:
    name = f"b-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    assert name in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.head_bucket(Bucket=name)
    assert s3.get_bucket_location(Bucket=name).get("LocationConstraint") in (None, "")
    with pytest.raises(ClientError) as exc:
        s3.create_bucket(Bucket=name)
    assert _code(exc.value) == "BucketAlreadyOwnedByYou"
    s3.put_object(Bucket=name, Key="x", Body=b"1")
    with pytest.raises(ClientError) as exc:
        s3.delete_bucket(Bucket=name)
    assert _code(exc.value) == "BucketNotEmpty"
    s3.delete_object(Bucket=name, Key="x")
    s3.delete_bucket(Bucket=name)
    with pytest.raises(ClientError) as exc:
        s3.head_bucket(Bucket=name)
    assert _status(exc.value) == 404
    with pytest.raises(ClientError) as exc:
        s3.list_objects_v2(Bucket=name)
    assert _code(exc.value) == "NoSuchBucket"


@pytest.mark.parametrize("name", ["ab", "UPPER", "has_underscore", "-lead", "a" * 64,
                                  "192.168.1.1", "dots..dots"])
def test_invalid_bucket_names(s3: Any, name: str) -> None:
    with pytest.raises(ClientError) as exc:
        s3.create_bucket(Bucket=name)
    assert _code(exc.value) == "InvalidBucketName"
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


# -- objects ----------------------------------------------------------------


def test_put_get_head_roundtrip(s3: Any, bucket: str) -> None:
    body = os.urandom(300_000)
    put = s3.put_object(Bucket=bucket, Key="dir/ob j+é.bin", Body=body, ContentType="image/x-test",
                        Metadata={"color": "blue", "Mixed-Case": "v"},
                        CacheControl="max-age=60", ContentDisposition="inline")
    assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    got = s3.get_object(Bucket=bucket, Key="dir/ob j+é.bin")
    assert got["Body"].read() == body
    assert got["ContentType"] == "image/x-test"
    assert got["Metadata"] == {"color": "blue", "mixed-case": "v"}
    assert got["CacheControl"] == "max-age=60"
    assert got["ContentDisposition"] == "inline"
    assert got["ETag"] == put["ETag"]
    head = s3.head_object(Bucket=bucket, Key="dir/ob j+é.bin")
    assert head["ContentLength"] == len(body)
    assert head["ETag"] == put["ETag"]
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]


def test_empty_object(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    assert s3.get_object(Bucket=bucket, Key="empty")["Body"].read() == b""
    assert s3.head_object(Bucket=bucket, Key="empty")["ContentLength"] == 0


def test_overwrite_replaces(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"first version")
    s3.put_object(Bucket=bucket, Key="k", Body=b"second")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"second"


def test_missing_key_and_bucket(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="nope")
    assert _code(exc.value) == "NoSuchKey"
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="nope")
    assert _status(exc.value) == 404
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=f"nob-{uuid.uuid4().hex[:8]}", Key="x")
    assert _code(exc.value) == "NoSuchBucket"
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=f"nob-{uuid.uuid4().hex[:8]}", Key="x", Body=b"1")
    assert _code(exc.value) == "NoSuchBucket"


def test_ranges(s3: Any, bucket: str) -> None:
    body = bytes(range(256)) * 40
    s3.put_object(Bucket=bucket, Key="r", Body=body)
    cases = {"bytes=0-9": body[0:10], "bytes=100-": body[100:], "bytes=-7": body[-7:],
             "bytes=10000-20000": body[10000:]}
    for header, expected in cases.items():
        got = s3.get_object(Bucket=bucket, Key="r", Range=header)
        assert got["Body"].read() == expected, header
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
        first = len(body) - len(expected)
        assert got["ContentRange"] == f"bytes {first}-{len(body) - 1}/{len(body)}" or \
            header == "bytes=0-9"
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="r", Range=f"bytes={len(body)}-")
    assert _code(exc.value) == "InvalidRange"
    assert _status(exc.value) == 416
    # Not a single range S3 understands: the whole object.
    assert s3.get_object(Bucket=bucket, Key="r", Range="bytes=5-1")["Body"].read() == body


def test_conditionals(s3: Any, bucket: str) -> None:
    etag = s3.put_object(Bucket=bucket, Key="c", Body=b"payload")["ETag"]
    lm = s3.head_object(Bucket=bucket, Key="c")["LastModified"]
    assert s3.get_object(Bucket=bucket, Key="c", IfMatch=etag)["Body"].read() == b"payload"
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="c", IfMatch='"0000"')
    assert _status(exc.value) == 412
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="c", IfNoneMatch=etag)
    assert _status(exc.value) == 304
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="c", IfModifiedSince=lm + timedelta(seconds=5))
    assert _status(exc.value) == 304
    assert s3.get_object(Bucket=bucket, Key="c", IfModifiedSince=lm - timedelta(days=1))
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="c", IfUnmodifiedSince=lm - timedelta(days=1))
    assert _status(exc.value) == 412
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="c", IfMatch='"bad"')
    assert _status(exc.value) == 412
    # Conditional write.
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="c", Body=b"new", IfNoneMatch="*")
    assert _status(exc.value) == 412
    assert s3.get_object(Bucket=bucket, Key="c")["Body"].read() == b"payload"


def test_response_overrides(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="o", Body=b"x", ContentType="text/plain")
    got = s3.get_object(Bucket=bucket, Key="o", ResponseContentType="image/png",
                        ResponseContentDisposition="attachment; filename=a.png",
                        ResponseCacheControl="no-cache")
    assert got["ContentType"] == "image/png"
    assert got["ContentDisposition"] == "attachment; filename=a.png"
    assert got["CacheControl"] == "no-cache"


def test_delete_object_and_objects(s3: Any, bucket: str) -> None:
    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"d/{i}", Body=b"x")
    s3.delete_object(Bucket=bucket, Key="d/0")
    s3.delete_object(Bucket=bucket, Key="d/never-existed")  # idempotent
    resp = s3.delete_objects(Bucket=bucket, Delete={
        "Objects": [{"Key": "d/1"}, {"Key": "d/2"}, {"Key": "d/missing"}]})
    assert sorted(d["Key"] for d in resp["Deleted"]) == ["d/1", "d/2", "d/missing"]
    resp = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "d/3"}], "Quiet": True})
    assert not resp.get("Deleted")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == ["d/4"]


def test_copy_object(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="src", Body=b"copy me", ContentType="text/plain",
                  Metadata={"a": "1"}, Tagging="t=1")
    etag = s3.head_object(Bucket=bucket, Key="src")["ETag"]
    r = s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    assert r["CopyObjectResult"]["ETag"] == etag
    head = s3.head_object(Bucket=bucket, Key="dst")
    assert head["Metadata"] == {"a": "1"} and head["ContentType"] == "text/plain"
    s3.copy_object(Bucket=bucket, Key="dst2", CopySource=f"{bucket}/src",
                   MetadataDirective="REPLACE", Metadata={"b": "2"}, ContentType="x/y")
    head = s3.head_object(Bucket=bucket, Key="dst2")
    assert head["Metadata"] == {"b": "2"} and head["ContentType"] == "x/y"
    assert s3.get_object(Bucket=bucket, Key="dst2")["Body"].read() == b"copy me"
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="dst3", CopySource=f"{bucket}/src",
                       CopySourceIfMatch='"nope"')
    assert _status(exc.value) == 412
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="src", CopySource=f"{bucket}/src")
    assert _code(exc.value) == "InvalidRequest"
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="dst4", CopySource=f"{bucket}/missing")
    assert _code(exc.value) == "NoSuchKey"


def test_tagging(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="t", Body=b"x", Tagging="a=1&b=two%20words")
    tags = s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"]
    assert {t["Key"]: t["Value"] for t in tags} == {"a": "1", "b": "two words"}
    s3.put_object_tagging(Bucket=bucket, Key="t", Tagging={"TagSet": [{"Key": "z", "Value": "9"}]})
    assert s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == [{"Key": "z", "Value": "9"}]
    s3.delete_object_tagging(Bucket=bucket, Key="t")
    assert s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == []
    with pytest.raises(ClientError) as exc:
        s3.put_object_tagging(Bucket=bucket, Key="t", Tagging={"TagSet": [
            {"Key": f"k{i}", "Value": "v"} for i in range(11)]})
    assert _code(exc.value) == "InvalidTag"
    with pytest.raises(ClientError) as exc:
        s3.get_object_tagging(Bucket=bucket, Key="missing")
    assert _code(exc.value) == "NoSuchKey"


# -- listing ----------------------------------------------------------------


def test_list_v2_delimiter_pagination(s3: Any, bucket: str) -> None:
    keys = ["a", "a/b", "a/c/d", "b/1", "b/2", "c", "c/x", "é/u", "z z"]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=b"v")
    resp = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [o["Key"] for o in resp["Contents"]] == ["a", "c", "z z"]
    assert [p["Prefix"] for p in resp["CommonPrefixes"]] == ["a/", "b/", "c/", "é/"]
    # Walk one key or prefix at a time.
    seen: list[str] = []
    token = None
    while True:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Delimiter": "/", "MaxKeys": 1}
        if token:
            kwargs["ContinuationToken"] = token
        page = s3.list_objects_v2(**kwargs)
        seen += [o["Key"] for o in page.get("Contents", [])]
        seen += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        assert page["KeyCount"] <= 1
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert seen == ["a", "a/", "b/", "c", "c/", "z z", "é/"]
    resp = s3.list_objects_v2(Bucket=bucket, Prefix="a/", Delimiter="/")
    assert [o["Key"] for o in resp["Contents"]] == ["a/b"]
    assert [p["Prefix"] for p in resp["CommonPrefixes"]] == ["a/c/"]
    resp = s3.list_objects_v2(Bucket=bucket, StartAfter="b/1")
    assert resp["Contents"][0]["Key"] == "b/2"
    resp = s3.list_objects_v2(Bucket=bucket, FetchOwner=True, MaxKeys=2)
    assert "Owner" in resp["Contents"][0] and resp["IsTruncated"]
    resp = s3.list_objects_v2(Bucket=bucket, MaxKeys=0)
    assert resp["KeyCount"] == 0 and "Contents" not in resp


def test_list_v1_markers_and_url_encoding(s3: Any, bucket: str) -> None:
    for k in ["k1", "k2", "k3", "sp ace", "pl+us"]:
        s3.put_object(Bucket=bucket, Key=k, Body=b"v")
    page = s3.list_objects(Bucket=bucket, MaxKeys=2)
    assert [o["Key"] for o in page["Contents"]] == ["k1", "k2"] and page["IsTruncated"]
    page = s3.list_objects(Bucket=bucket, Marker="k2")
    assert [o["Key"] for o in page["Contents"]] == ["k3", "pl+us", "sp ace"]
    # boto3 asks for encoding-type=url and decodes it back.
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == [
        "k1", "k2", "k3", "pl+us", "sp ace"]


def test_paginator_many_keys(s3: Any, bucket: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    keys = [f"p/{i:05d}" for i in range(2503)]  # three default pages of 1000
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=b""), keys))
    listed = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, PaginationConfig={"PageSize": 500}) for o in page.get("Contents", [])]
    assert listed == keys
    pages = list(s3.get_paginator("list_objects").paginate(Bucket=bucket))
    assert len(pages) == 3
    assert [o["Key"] for page in pages for o in page.get("Contents", [])] == keys


# -- multipart --------------------------------------------------------------


def test_multipart_upload(s3: Any, bucket: str) -> None:
    part1, part2 = os.urandom(5 * 1024 * 1024), os.urandom(1234)
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp", ContentType="video/x",
                                    Metadata={"m": "1"})
    uid = up["UploadId"]
    assert any(u["UploadId"] == uid for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"])
    e1 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=1, Body=part1)["ETag"]
    e2 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=2, Body=part2)["ETag"]
    parts = s3.list_parts(Bucket=bucket, Key="mp", UploadId=uid)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, len(part1)), (2, len(part2))]
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid, MultipartUpload={
            "Parts": [{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}]})
    assert _code(exc.value) == "InvalidPartOrder"
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": e1},
                      {"PartNumber": 2, "ETag": '"' + "0" * 32 + '"'}]})
    assert _code(exc.value) == "InvalidPart"
    done = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    md5s = b"".join(bytes.fromhex(e.strip('"')) for e in (e1, e2))
    assert done["ETag"] == f'"{hashlib.md5(md5s).hexdigest()}-2"'
    got = s3.get_object(Bucket=bucket, Key="mp")
    assert got["Body"].read() == part1 + part2
    assert got["ContentType"] == "video/x" and got["Metadata"] == {"m": "1"}
    with pytest.raises(ClientError) as exc:
        s3.list_parts(Bucket=bucket, Key="mp", UploadId=uid)
    assert _code(exc.value) == "NoSuchUpload"


def test_multipart_too_small_and_abort(s3: Any, bucket: str) -> None:
    uid = s3.create_multipart_upload(Bucket=bucket, Key="small")["UploadId"]
    e1 = s3.upload_part(Bucket=bucket, Key="small", UploadId=uid, PartNumber=1, Body=b"a")["ETag"]
    e2 = s3.upload_part(Bucket=bucket, Key="small", UploadId=uid, PartNumber=2, Body=b"b")["ETag"]
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(Bucket=bucket, Key="small", UploadId=uid, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    assert _code(exc.value) == "EntityTooSmall"
    s3.abort_multipart_upload(Bucket=bucket, Key="small", UploadId=uid)
    with pytest.raises(ClientError) as exc:
        s3.abort_multipart_upload(Bucket=bucket, Key="small", UploadId=uid)
    assert _code(exc.value) == "NoSuchUpload"
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="small")
    assert _status(exc.value) == 404
    with pytest.raises(ClientError) as exc:
        s3.upload_part(Bucket=bucket, Key="small", UploadId="bogus", PartNumber=1, Body=b"x")
    assert _code(exc.value) == "NoSuchUpload"


def test_upload_part_copy(s3: Any, bucket: str) -> None:
    src = os.urandom(6 * 1024 * 1024)
    s3.put_object(Bucket=bucket, Key="big-src", Body=src)
    uid = s3.create_multipart_upload(Bucket=bucket, Key="assembled")["UploadId"]
    p1 = s3.upload_part_copy(Bucket=bucket, Key="assembled", UploadId=uid, PartNumber=1,
                             CopySource={"Bucket": bucket, "Key": "big-src"},
                             CopySourceRange="bytes=0-5242879")["CopyPartResult"]["ETag"]
    p2 = s3.upload_part_copy(Bucket=bucket, Key="assembled", UploadId=uid, PartNumber=2,
                             CopySource={"Bucket": bucket, "Key": "big-src"},
                             CopySourceRange=f"bytes=5242880-{len(src) - 1}")
    p2 = p2["CopyPartResult"]["ETag"]
    s3.complete_multipart_upload(Bucket=bucket, Key="assembled", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": p1}, {"PartNumber": 2, "ETag": p2}]})
    assert s3.get_object(Bucket=bucket, Key="assembled")["Body"].read() == src


def test_transfer_manager_upload_download(s3: Any, bucket: str, tmp_path: Any) -> None:
    from boto3.s3.transfer import TransferConfig

    data = os.urandom(12 * 1024 * 1024 + 17)
    src = tmp_path / "up.bin"
    src.write_bytes(data)
    cfg = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    s3.upload_file(str(src), bucket, "tm/file.bin", Config=cfg)
    dst = tmp_path / "down.bin"
    s3.download_file(bucket, "tm/file.bin", str(dst), Config=cfg)
    assert dst.read_bytes() == data
    buf = io.BytesIO()
    s3.download_fileobj(bucket, "tm/file.bin", buf)
    assert buf.getvalue() == data


def test_when_required_checksum_client(gateway: GatewayProcess, bucket: str) -> None:
    s3 = gateway.client(request_checksum_calculation="when_required",
                        response_checksum_validation="when_required")
    body = os.urandom(70_000)
    s3.put_object(Bucket=bucket, Key="wr", Body=body)
    assert s3.get_object(Bucket=bucket, Key="wr")["Body"].read() == body
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "wr"}]})


def test_checksum_returned_when_asked(s3: Any, bucket: str) -> None:
    body = b"checksummed body"
    put = s3.put_object(Bucket=bucket, Key="ck", Body=body, ChecksumAlgorithm="SHA256")
    assert put["ChecksumSHA256"]
    got = s3.get_object(Bucket=bucket, Key="ck", ChecksumMode="ENABLED")
    assert got["ChecksumSHA256"] == put["ChecksumSHA256"]
    assert got["Body"].read() == body


# -- presigned and misc -----------------------------------------------------


def test_presigned_urls(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="pre sign/é", Body=b"presigned body")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "pre sign/é"},
                                    ExpiresIn=60)
    r = requests.get(url, timeout=10)
    assert r.status_code == 200 and r.content == b"presigned body"
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "up"},
                                        ExpiresIn=60)
    assert requests.put(put_url, data=b"via presigned put", timeout=10).status_code == 200
    assert s3.get_object(Bucket=bucket, Key="up")["Body"].read() == b"via presigned put"
    expired = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "up"},
                                        ExpiresIn=1)
    # Expired from X-Amz-Date (whole seconds, <= now) + 1 s on: 1.2 s of sleep is past it,
    # and a loaded machine only sleeps longer.
    time.sleep(1.2)
    r = requests.get(expired, timeout=10)
    assert r.status_code == 403 and b"<Code>AccessDenied</Code>" in r.content
    assert b"<RequestId>" in r.content and r.headers["x-amz-request-id"]


def test_virtual_hosted_style(tmp_path: Any) -> None:
    proc = GatewayProcess(f"file://{tmp_path / 'data'}", tmp_path,
                          extra_args=["--domain", "localhost"])
    proc.start()
    try:
        s3 = proc.client(addressing_style="virtual")
        s3.create_bucket(Bucket="vhost-bucket")
        s3.put_object(Bucket="vhost-bucket", Key="k/v", Body=b"virtual")
        assert s3.get_object(Bucket="vhost-bucket", Key="k/v")["Body"].read() == b"virtual"
        path_style = proc.client()
        assert path_style.get_object(Bucket="vhost-bucket", Key="k/v")["Body"].read() == b"virtual"
    finally:
        proc.stop()


def test_unsupported_operation_is_501(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as exc:
        s3.put_bucket_replication(Bucket=bucket, ReplicationConfiguration={
            "Role": "arn:aws:iam::1:role/r", "Rules": [{
                "Status": "Enabled", "Prefix": "", "Destination": {
                    "Bucket": "arn:aws:s3:::elsewhere"}}]})
    assert _status(exc.value) == 501 and _code(exc.value) == "NotImplemented"
    with pytest.raises(ClientError) as exc:
        s3.get_bucket_policy(Bucket=bucket)
    assert _code(exc.value) == "NoSuchBucketPolicy"


def test_health_and_metrics(gateway: GatewayProcess, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="m", Body=b"x")
    assert requests.get(gateway.endpoint + "/health", timeout=5).json()["status"] == "ok"
    text = requests.get(gateway.endpoint + "/metrics", timeout=5).text
    assert 's3latent_requests_total{operation="PutObject",status="200"}' in text


def test_last_modified_is_recent(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="lm", Body=b"x")
    lm = s3.head_object(Bucket=bucket, Key="lm")["LastModified"]
    assert abs(datetime.now(UTC) - lm) < timedelta(minutes=2)


def test_list_object_versions_of_unversioned_bucket(s3: Any, bucket: str) -> None:
    for k in ("a", "b/c", "b/d", "e"):
        s3.put_object(Bucket=bucket, Key=k, Body=b"v")
    resp = s3.list_object_versions(Bucket=bucket, Delimiter="/")
    assert [(v["Key"], v["VersionId"], v["IsLatest"]) for v in resp["Versions"]] == [
        ("a", "null", True), ("e", "null", True)]
    assert [p["Prefix"] for p in resp["CommonPrefixes"]] == ["b/"]
    keys = [v["Key"] for page in s3.get_paginator("list_object_versions").paginate(
        Bucket=bucket, PaginationConfig={"PageSize": 1}) for v in page.get("Versions", [])]
    assert keys == ["a", "b/c", "b/d", "e"]
    s3.delete_object(Bucket=bucket, Key="a", VersionId="null")
    with pytest.raises(ClientError) as exc:
        s3.delete_object(Bucket=bucket, Key="e", VersionId="3HL4kqtJlcpXroDTDmjVBH40Nrjfkd")
    assert _code(exc.value) == "InvalidArgument"


def test_get_object_attributes(s3: Any, bucket: str) -> None:
    put = s3.put_object(Bucket=bucket, Key="attr", Body=b"12345", ChecksumAlgorithm="CRC32")
    resp = s3.get_object_attributes(Bucket=bucket, Key="attr",
                                    ObjectAttributes=["ETag", "ObjectSize", "StorageClass",
                                                      "Checksum"])
    assert resp["ETag"] == put["ETag"].strip('"') and resp["ObjectSize"] == 5
    assert resp["StorageClass"] == "STANDARD"
    assert resp["Checksum"]["ChecksumCRC32"] == put["ChecksumCRC32"]


def test_not_modified_carries_validators(s3: Any, bucket: str) -> None:
    etag = s3.put_object(Bucket=bucket, Key="v", Body=b"validators")["ETag"]
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="v", IfNoneMatch=etag)
    headers = exc.value.response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["etag"] == etag and headers["last-modified"]


def test_retried_complete_answers_again(s3: Any, bucket: str) -> None:
    uid = s3.create_multipart_upload(Bucket=bucket, Key="rc")["UploadId"]
    e1 = s3.upload_part(Bucket=bucket, Key="rc", UploadId=uid, PartNumber=1, Body=b"x")["ETag"]
    parts = {"Parts": [{"PartNumber": 1, "ETag": e1}]}
    first = s3.complete_multipart_upload(Bucket=bucket, Key="rc", UploadId=uid,
                                         MultipartUpload=parts)
    again = s3.complete_multipart_upload(Bucket=bucket, Key="rc", UploadId=uid,
                                         MultipartUpload=parts)
    assert again["ETag"] == first["ETag"]


def test_keys_with_spaces_in_xml_are_verbatim(s3: Any, bucket: str) -> None:
    for key in ("_", "_ ", " "):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    resp = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "_ "}, {"Key": " "}]})
    assert sorted(d["Key"] for d in resp["Deleted"]) == [" ", "_ "]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["_"]
    s3.put_object_tagging(Bucket=bucket, Key="_", Tagging={"TagSet": [
        {"Key": " b ", "Value": " v "}, {"Key": "a", "Value": "1"}]})
    tags = s3.get_object_tagging(Bucket=bucket, Key="_")["TagSet"]
    assert tags == [{"Key": " b ", "Value": " v "}, {"Key": "a", "Value": "1"}]
    head = s3.head_object(Bucket=bucket, Key="_")
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-amz-tagging-count"] == "2"


@pytest.mark.parametrize("version", ["s3v4", "default"])
def test_post_object_form_upload(gateway: GatewayProcess, bucket: str, version: str) -> None:
    s3 = gateway.client(signature_version="s3v4") if version == "s3v4" else gateway.client()
    post = s3.generate_presigned_post(
        bucket, "uploads/${filename}",
        Fields={"x-amz-meta-who": "form", "Content-Type": "image/png"},
        Conditions=[["starts-with", "$key", "uploads/"], {"x-amz-meta-who": "form"},
                    {"Content-Type": "image/png"}, ["content-length-range", 1, 1000]],
        ExpiresIn=60)
    r = requests.post(post["url"], data=post["fields"],
                      files={"file": ("pic.png", b"form body", "image/png")}, timeout=10)
    assert r.status_code == 204, r.text
    got = s3.get_object(Bucket=bucket, Key="uploads/pic.png")
    assert got["Body"].read() == b"form body" and got["Metadata"] == {"who": "form"}
    assert r.headers["ETag"] == got["ETag"]
    # Too large for the policy: refused, nothing stored.
    r = requests.post(post["url"], data=post["fields"],
                      files={"file": ("big.png", b"x" * 2000, "image/png")}, timeout=10)
    assert r.status_code == 400 and b"EntityTooLarge" in r.content
    # A field the policy does not allow.
    r = requests.post(post["url"], data={**post["fields"], "x-amz-meta-extra": "1"},
                      files={"file": ("e.png", b"x", "image/png")}, timeout=10)
    assert r.status_code == 403 and b"Extra input fields" in r.content
    # Tampered policy signature.
    fields = dict(post["fields"])
    sig = "x-amz-signature" if "x-amz-signature" in fields else "signature"
    fields[sig] = ("0" * 64) if sig == "x-amz-signature" else "AAAA" + fields[sig][4:]
    r = requests.post(post["url"], data=fields, files={"file": ("t.png", b"x", "image/png")},
                      timeout=10)
    assert r.status_code == 403 and b"SignatureDoesNotMatch" in r.content
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["uploads/pic.png"]


def test_pending_upload_does_not_keep_bucket(s3: Any) -> None:
    name = f"mpu-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    s3.create_multipart_upload(Bucket=name, Key="never-completed")
    s3.delete_bucket(Bucket=name)  # as on S3: uploads are not objects
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_listing_and_attribute_details_clients_rely_on(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k\nnl", Body=b"x")
    assert s3.list_objects_v2(Bucket=bucket, ContinuationToken="")["KeyCount"] == 1
    assert s3.list_objects(Bucket=bucket, Prefix="k\n")["Prefix"] == "k\n"
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp3")["UploadId"]
    etags = [s3.upload_part(Bucket=bucket, Key="mp3", UploadId=uid, PartNumber=n,
                            Body=b"p" * (5 * 1024 * 1024 if n < 3 else 10))["ETag"]
             for n in (1, 2, 3)]
    s3.complete_multipart_upload(Bucket=bucket, Key="mp3", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": e} for n, e in zip((1, 2, 3), etags, strict=True)]})
    attrs = s3.get_object_attributes(Bucket=bucket, Key="mp3", ObjectAttributes=["ObjectParts"])
    assert attrs["ObjectParts"]["TotalPartsCount"] == 3
    uid = s3.create_multipart_upload(Bucket=bucket, Key="cp")["UploadId"]
    with pytest.raises(ClientError) as exc:
        s3.upload_part_copy(Bucket=bucket, Key="cp", UploadId=uid, PartNumber=1,
                            CopySource={"Bucket": bucket, "Key": "k\nnl"},
                            CopySourceRange="bytes=0-21")
    assert _code(exc.value) == "InvalidRange"
