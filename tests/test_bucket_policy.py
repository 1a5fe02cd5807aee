"""Put/Get/DeleteBucketPolicy and GetBucketPolicyStatus.

boto3 against a real gateway process on both backends (the `gateway` fixture: local
directory and SeaweedFS), and in-process for the raw bytes and XML a client library
hides. Who may call these operations is the access decision point's (tests there).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.inprocess import InProcessGateway, serve_gateway


def public_read(bucket: str, **extra: Any) -> str:
    statement = {"Sid": "PublicRead", "Effect": "Allow", "Principal": "*",
                 "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*", **extra}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


def _error(exc: ClientError) -> tuple[int, str]:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"], exc.response["Error"]["Code"]


# -- a gateway process, both backends ----------------------------------------------------

def test_put_get_delete_round_trip_byte_for_byte(s3: Any, bucket: str) -> None:
    # Odd spacing, key order, a non-ASCII Sid and escapes: returned exactly as sent.
    text = ('{ "Statement":[ {"Resource":"arn:aws:s3:::BUCKET/*",  "Action" : ["s3:GetObject"],\n'
            '"Effect":"Allow","Principal":{"AWS":"*"},"Sid":"lecture publique \u00e9\\u00e8"}],'
            '\t"Version":"2012-10-17"}').replace("BUCKET", bucket)
    assert s3.put_bucket_policy(Bucket=bucket, Policy=text)[
        "ResponseMetadata"]["HTTPStatusCode"] == 204
    assert s3.get_bucket_policy(Bucket=bucket)["Policy"] == text
    # Replaced by the next PUT.
    s3.put_bucket_policy(Bucket=bucket, Policy=public_read(bucket))
    assert s3.get_bucket_policy(Bucket=bucket)["Policy"] == public_read(bucket)
    assert s3.delete_bucket_policy(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as err:
        s3.get_bucket_policy(Bucket=bucket)
    assert _error(err.value) == (404, "NoSuchBucketPolicy")
    # Deleting again is fine, as on S3.
    assert s3.delete_bucket_policy(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204


@pytest.mark.parametrize("make_policy", [
    lambda b: "{not json",
    lambda b: json.dumps({"Version": "2012-10-17"}),
    lambda b: public_read(b).replace('"Allow"', '"Permit"'),
    lambda b: public_read(b).replace(f":::{b}/*", ":::some-other-bucket/*"),
    lambda b: public_read(b).replace("s3:GetObject", "s3:Teleport"),
    lambda b: public_read(b).replace('"2012-10-17"', '"2024-01-01"'),
    lambda b: public_read(b, Condition={"StringEqualsMaybe": {"s3:prefix": "a"}}),
    lambda b: public_read(b, Sid="x" * 21000),
], ids=["json", "no-statement", "effect", "resource", "action", "version", "operator", "size"])
def test_malformed_policies_are_refused_and_nothing_changes(s3: Any, bucket: str,
                                                            make_policy: Any) -> None:
    s3.put_bucket_policy(Bucket=bucket, Policy=public_read(bucket))
    with pytest.raises(ClientError) as err:
        s3.put_bucket_policy(Bucket=bucket, Policy=make_policy(bucket))
    assert _error(err.value) == (400, "MalformedPolicy")
    assert err.value.response["Error"]["Message"]
    assert s3.get_bucket_policy(Bucket=bucket)["Policy"] == public_read(bucket)


def test_no_policy_is_no_such_bucket_policy(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as err:
        s3.get_bucket_policy(Bucket=bucket)
    assert _error(err.value) == (404, "NoSuchBucketPolicy")


def test_a_missing_bucket_is_no_such_bucket(s3: Any) -> None:
    name = f"missing-{uuid.uuid4().hex[:8]}"
    for call in (lambda: s3.put_bucket_policy(Bucket=name, Policy=public_read(name)),
                 lambda: s3.get_bucket_policy(Bucket=name),
                 lambda: s3.delete_bucket_policy(Bucket=name),
                 lambda: s3.get_bucket_policy_status(Bucket=name)):
        with pytest.raises(ClientError) as err:
            call()
        assert _error(err.value) == (404, "NoSuchBucket")


def test_policy_status_public_and_not(s3: Any, bucket: str) -> None:
    def is_public() -> bool:
        return bool(s3.get_bucket_policy_status(Bucket=bucket)["PolicyStatus"]["IsPublic"])

    assert not is_public()
    s3.put_bucket_policy(Bucket=bucket, Policy=public_read(bucket))
    assert is_public()
    narrowed = public_read(bucket, Condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/32"}})
    s3.put_bucket_policy(Bucket=bucket, Policy=narrowed)
    assert not is_public()
    named = public_read(bucket).replace('"Principal": "*"',
                                        '"Principal": {"AWS": "arn:aws:iam::s3tenant1:root"}')
    s3.put_bucket_policy(Bucket=bucket, Policy=named)
    assert not is_public()
    s3.put_bucket_policy(Bucket=bucket, Policy=public_read(bucket))
    s3.delete_bucket_policy(Bucket=bucket)
    assert not is_public()


def test_a_bucket_created_again_has_no_policy(s3: Any) -> None:
    name = f"again-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    s3.put_bucket_policy(Bucket=name, Policy=public_read(name))
    s3.delete_bucket(Bucket=name)
    s3.create_bucket(Bucket=name)
    try:
        with pytest.raises(ClientError) as err:
            s3.get_bucket_policy(Bucket=name)
        assert _error(err.value) == (404, "NoSuchBucketPolicy")
    finally:
        s3.delete_bucket(Bucket=name)


# -- in-process: bytes, XML and precedence ------------------------------------------------

BKT = "pol"


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    async with serve_gateway(tmp_path) as served:
        await served.run(lambda s3: s3.create_bucket(Bucket=BKT))
        yield served


async def test_raw_bytes_come_back_exactly(gw: InProcessGateway) -> None:
    body = public_read(BKT).encode()[:-1] + b' , "Id": "\xe2\x98\x83 snow"}'
    reply = await gw.call("PUT", f"/{BKT}", query="policy", body=body)
    assert reply.status == 204, reply
    reply = await gw.call("GET", f"/{BKT}", query="policy")
    assert reply.status == 200 and reply.body == body


async def test_invalid_utf8_and_oversize_bodies_are_malformed_policy(
        gw: InProcessGateway) -> None:
    for body in (b'{"Version": "2012-10-17", "Id": "\xff"}',
                 b"{" + b" " * (3 * 1024 * 1024) + b"}"):
        reply = await gw.call("PUT", f"/{BKT}", query="policy", body=body)
        assert reply.status == 400 and reply.error_code() == "MalformedPolicy", reply
        assert reply.headers["x-amz-request-id"] in reply.body.decode()


async def test_policy_status_xml(gw: InProcessGateway) -> None:
    reply = await gw.call("GET", f"/{BKT}", query="policyStatus")
    assert reply.status == 200
    assert b"<PolicyStatus xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">" in reply.body
    assert b"<IsPublic>false</IsPublic>" in reply.body
    await gw.call("PUT", f"/{BKT}", query="policy", body=public_read(BKT).encode())
    reply = await gw.call("GET", f"/{BKT}", query="policyStatus")
    assert b"<IsPublic>true</IsPublic>" in reply.body


@pytest.mark.parametrize("record", [
    {"Grants": [{"Grantee": {"URI": "http://acs.amazonaws.com/groups/global/AllUsers"},
                 "Permission": "READ"}]},
    {"canned": "authenticated-read"},
])
async def test_a_public_acl_makes_the_status_public(gw: InProcessGateway,
                                                    record: Any) -> None:
    await gw.store.put_bucket_config(BKT, "acl", record)
    reply = await gw.call("GET", f"/{BKT}", query="policyStatus")
    assert b"<IsPublic>true</IsPublic>" in reply.body


async def test_block_public_policy_refuses_public_policies_only(gw: InProcessGateway) -> None:
    await gw.store.put_bucket_config(BKT, "public-access-block",
                                     {"BlockPublicPolicy": True, "BlockPublicAcls": False,
                                      "IgnorePublicAcls": False,
                                      "RestrictPublicBuckets": False})
    reply = await gw.call("PUT", f"/{BKT}", query="policy", body=public_read(BKT).encode())
    assert reply.status == 403 and reply.error_code() == "AccessDenied", reply
    assert (await gw.call("GET", f"/{BKT}", query="policy")).status == 404
    named = public_read(BKT).replace('"Principal": "*"',
                                     '"Principal": {"AWS": "arn:aws:iam::s3tenant1:root"}')
    reply = await gw.call("PUT", f"/{BKT}", query="policy", body=named.encode())
    assert reply.status == 204, reply


async def test_bad_bucket_names_answer_400_first(gw: InProcessGateway) -> None:
    for method, query, body in (("PUT", "policy", b"{not json"), ("GET", "policy", b""),
                                ("DELETE", "policy", b""), ("GET", "policyStatus", b"")):
        reply = await gw.call(method, "/Bad_Bucket", query=query, body=body)
        assert reply.status == 400 and reply.error_code() == "InvalidBucketName", reply


async def test_a_missing_bucket_is_no_such_bucket_whatever_the_body(
        gw: InProcessGateway) -> None:
    # As on S3, the bucket is looked up first: a bad policy for a bucket that does not
    # exist is NoSuchBucket, not MalformedPolicy (which would hint the bucket exists).
    for body in (b"{not json", b'{"Statement": []}', public_read("other").encode()):
        reply = await gw.call("PUT", "/no-such-bucket-here", query="policy", body=body)
        assert reply.status == 404 and reply.error_code() == "NoSuchBucket", reply
    reply = await gw.call("PUT", f"/{BKT}", query="policy", body=b"{not json")
    assert reply.status == 400 and reply.error_code() == "MalformedPolicy", reply
