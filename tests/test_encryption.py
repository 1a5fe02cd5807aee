"""Server-side encryption (docs/encryption.md): SSE-S3, SSE-C, bucket default encryption.

boto3 against real gateway processes on both backends (the `gateway` fixture), with the
stored bytes read (and damaged) on the backend itself; the stored format's own properties
(sizes, ranges, tampering) as unit tests of objects/encryption.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import random
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from s3latent.objects import encryption as enc
from tests.gateway import GatewayProcess, https_on_backend

KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(1, 33))).decode()


# In-process gateways are served over plain HTTP: SSE-C is allowed there by configuration.
PLAIN_HTTP_SSE_C = "[encryption]\nsse_c_require_tls = false\n"

@pytest.fixture(scope="module", params=["local", "seaweedfs"])
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[GatewayProcess]:
    """The gateway on both backends, over HTTPS: customer keys never travel in cleartext
    (SSE-C over plain HTTP answers 400, as on S3; tests/test_transport.py)."""
    proc = https_on_backend(request, tmp_path_factory.mktemp(f"sse-{request.param}"))
    proc.start()
    yield proc
    proc.stop()


def _md5(key_b64: str) -> str:
    return base64.b64encode(hashlib.md5(base64.b64decode(key_b64)).digest()).decode()


def ssec(key: str = KEY_A, copy: bool = False) -> dict[str, str]:
    prefix = "CopySource" if copy else ""
    return {f"{prefix}SSECustomerAlgorithm": "AES256", f"{prefix}SSECustomerKey": key,
            f"{prefix}SSECustomerKeyMD5": _md5(key)}


def _code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    r = exc.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"]


# -- the backend itself -------------------------------------------------------------------

def _backend_client(gateway: GatewayProcess) -> Any:
    assert gateway.backend_keys is not None
    return boto3.client("s3", endpoint_url=gateway.backend, region_name="us-east-1",
                        aws_access_key_id=gateway.backend_keys[0],
                        aws_secret_access_key=gateway.backend_keys[1])


def _local_file(gateway: GatewayProcess, bucket: str, key: str) -> Path:
    return Path(gateway.backend.removeprefix("file://")) / "buckets" / bucket / f"{key}.~o"


def stored_bytes(gateway: GatewayProcess, bucket: str, key: str, size: int) -> bytes:
    """The first `size` bytes the backend holds for `key` (its data, not the gateway's view)."""
    if gateway.backend.startswith("file://"):
        return _local_file(gateway, bucket, key).read_bytes()[:size]
    return _backend_client(gateway).get_object(Bucket=bucket, Key=key)["Body"].read()[:size]


def damage(gateway: GatewayProcess, bucket: str, key: str, offset: int) -> None:
    """Flip one stored bit, leaving the metadata as it was (a disk or an intruder)."""
    if gateway.backend.startswith("file://"):
        path = _local_file(gateway, bucket, key)
        data = bytearray(path.read_bytes())
        data[offset] ^= 1
        path.write_bytes(bytes(data))
        return
    raw = _backend_client(gateway)
    obj = raw.get_object(Bucket=bucket, Key=key)
    data = bytearray(obj["Body"].read())
    data[offset] ^= 1
    raw.put_object(Bucket=bucket, Key=key, Body=bytes(data), Metadata=obj["Metadata"],
                   ContentType=obj["ContentType"])


# -- SSE-S3 ---------------------------------------------------------------------------------

def test_sse_s3_round_trip_ranges_and_stored_ciphertext(
        gateway: GatewayProcess, s3: Any, bucket: str) -> None:
    data = os.urandom(200_000)
    put = s3.put_object(Bucket=bucket, Key="s3.bin", Body=data, ServerSideEncryption="AES256")
    assert put["ServerSideEncryption"] == "AES256"
    got = s3.get_object(Bucket=bucket, Key="s3.bin")
    assert got["ServerSideEncryption"] == "AES256"
    assert got["ContentLength"] == len(data)
    assert got["Body"].read() == data
    head = s3.head_object(Bucket=bucket, Key="s3.bin")
    assert head["ContentLength"] == len(data) and head["ServerSideEncryption"] == "AES256"
    for first, last in [(0, 0), (65535, 65536), (1000, 140_000), (199_999, 199_999)]:
        part = s3.get_object(Bucket=bucket, Key="s3.bin", Range=f"bytes={first}-{last}")
        assert part["Body"].read() == data[first:last + 1]
        assert part["ContentRange"] == f"bytes {first}-{last}/{len(data)}"
    tail = s3.get_object(Bucket=bucket, Key="s3.bin", Range="bytes=-10")["Body"].read()
    assert tail == data[-10:]
    assert _listed(s3, bucket) == {"s3.bin": len(data)}, "before the copy"
    # The ETag of an SSE-S3 PUT is the plaintext's MD5, everywhere, as S3 sends it (clients
    # such as rclone compare it with the MD5 of what they downloaded).
    md5 = f'"{hashlib.md5(data).hexdigest()}"'
    assert put["ETag"] == got["ETag"] == head["ETag"] == md5
    assert s3.list_objects_v2(Bucket=bucket)["Contents"][0]["ETag"] == md5
    assert s3.get_object(Bucket=bucket, Key="s3.bin", IfMatch=md5, Range="bytes=0-0")[
        "ContentLength"] == 1
    copied = s3.copy_object(Bucket=bucket, Key="s3-copy", ServerSideEncryption="AES256",
                            CopySource={"Bucket": bucket, "Key": "s3.bin"}, CopySourceIfMatch=md5)
    assert copied["CopyObjectResult"]["ETag"] == md5
    assert s3.head_object(Bucket=bucket, Key="s3-copy")["ETag"] == md5
    stored = stored_bytes(gateway, bucket, "s3.bin", enc.ciphertext_size(len(data)))
    assert len(stored) == enc.ciphertext_size(len(data))
    assert data[:64] not in stored and data[100_000:100_064] not in stored
    # SSE headers on a read are refused, as S3 does.
    asking = gateway.client()
    asking.meta.events.register("before-call.s3.HeadObject", lambda params, **_: params[
        "headers"].update({"x-amz-server-side-encryption": "AES256"}))
    with pytest.raises(ClientError) as err:
        asking.head_object(Bucket=bucket, Key="s3.bin")
    assert _code(err)[0] == 400


def test_empty_and_small_objects(s3: Any, bucket: str) -> None:
    for size in (0, 1, 13, 65536):
        data = os.urandom(size)
        s3.put_object(Bucket=bucket, Key=f"k{size}", Body=data, **ssec())
        got = s3.get_object(Bucket=bucket, Key=f"k{size}", **ssec())
        assert got["Body"].read() == data and got["ContentLength"] == size


def _listed(s3: Any, bucket: str) -> dict[str, int]:
    return {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


def test_listings_show_plaintext_sizes(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="a", Body=b"a" * 1000, **ssec())
    s3.put_object(Bucket=bucket, Key="dir/b", Body=b"b" * 70_000,
                  ServerSideEncryption="AES256")
    s3.put_object(Bucket=bucket, Key="c", Body=b"c" * 10)
    s3.copy_object(Bucket=bucket, Key="d", CopySource={"Bucket": bucket, "Key": "a"},
                   ServerSideEncryption="AES256", **ssec(copy=True))
    assert _listed(s3, bucket) == {"a": 1000, "dir/b": 70_000, "c": 10, "d": 1000}
    rolled = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert {o["Key"]: o["Size"] for o in rolled["Contents"]} == {"a": 1000, "c": 10, "d": 1000}
    assert [p["Prefix"] for p in rolled["CommonPrefixes"]] == ["dir/"]
    s3.put_object(Bucket=bucket, Key="a", Body=b"plain now")  # replaced: its record goes
    s3.put_object(Bucket=bucket, Key="d", Body=b"x" * 5, **ssec())
    assert _listed(s3, bucket) == {"a": 9, "dir/b": 70_000, "c": 10, "d": 5}



def test_version_listings_show_what_head_shows(s3: Any, bucket: str) -> None:
    """ListObjectVersions agrees with HEAD ?versionId= on every version's size and ETag:
    the plaintext size, and an SSE-S3 version's plaintext MD5 (it showed stored ones)."""
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=bucket, Key="k", Body=b"a" * 100, ServerSideEncryption="AES256")
    s3.put_object(Bucket=bucket, Key="k", Body=b"b" * 70_000, ServerSideEncryption="AES256")
    s3.put_object(Bucket=bucket, Key="k", Body=b"c" * 300, **ssec())
    s3.put_object(Bucket=bucket, Key="k", Body=b"plain")
    listed = s3.list_object_versions(Bucket=bucket, Prefix="k")["Versions"]
    assert [v["Size"] for v in listed] == [5, 300, 70_000, 100]
    for version in listed:
        extra = ssec() if version["Size"] == 300 else {}
        head = s3.head_object(Bucket=bucket, Key="k", VersionId=version["VersionId"], **extra)
        assert (version["Size"], version["ETag"]) == (head["ContentLength"], head["ETag"])
    assert listed[3]["ETag"] == f'"{hashlib.md5(b"a" * 100).hexdigest()}"'


# -- SSE-C ----------------------------------------------------------------------------------

def test_sse_c_needs_the_right_key(s3: Any, bucket: str) -> None:
    data = b"customer secret " * 1000
    put = s3.put_object(Bucket=bucket, Key="c.bin", Body=data, **ssec())
    assert put["SSECustomerAlgorithm"] == "AES256" and put["SSECustomerKeyMD5"] == _md5(KEY_A)
    assert put["ETag"] != f'"{hashlib.md5(data).hexdigest()}"'  # as S3: not the MD5
    assert "ServerSideEncryption" not in put
    got = s3.get_object(Bucket=bucket, Key="c.bin", **ssec())
    assert got["Body"].read() == data
    assert got["SSECustomerKeyMD5"] == _md5(KEY_A)
    assert s3.head_object(Bucket=bucket, Key="c.bin", **ssec())["ContentLength"] == len(data)
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="c.bin")
    assert _code(err) == (400, "InvalidRequest")
    with pytest.raises(ClientError) as err:
        s3.head_object(Bucket=bucket, Key="c.bin")
    assert _code(err)[0] == 400
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="c.bin", **ssec(KEY_B))
    assert _code(err) == (403, "AccessDenied")
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="c.bin", Range="bytes=5-9", **ssec(KEY_B))
    assert _code(err) == (403, "AccessDenied")
    # A plain object read with a key: the parameters do not apply.
    s3.put_object(Bucket=bucket, Key="plain", Body=b"x")
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="plain", **ssec())
    assert _code(err) == (400, "InvalidRequest")


def test_sse_c_bad_headers_store_nothing(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"before")
    bad_md5 = {**ssec(), "SSECustomerKeyMD5": base64.b64encode(b"0" * 16).decode()}
    short_key = base64.b64encode(b"k" * 16).decode()
    cases: list[tuple[dict[str, str], str]] = [
        (bad_md5, "InvalidArgument"),
        ({**ssec(short_key), "SSECustomerKeyMD5": _md5(short_key)}, "InvalidArgument"),
        ({"SSECustomerAlgorithm": "AES192", "SSECustomerKey": KEY_A,
          "SSECustomerKeyMD5": _md5(KEY_A)}, "InvalidEncryptionAlgorithmError"),
        ({**ssec(), "ServerSideEncryption": "AES256"}, "InvalidArgument"),
        ({"ServerSideEncryption": "AES512"}, "InvalidArgument"),
        ({"ServerSideEncryption": "aws:kms"}, "KMS.NotFoundException"),
    ]
    for kwargs, code in cases:
        with pytest.raises(ClientError) as err:
            s3.put_object(Bucket=bucket, Key="k", Body=b"after", **kwargs)
        assert _code(err) == (400, code), kwargs
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"before"


def test_encryption_metadata_cannot_be_forged(s3: Any, bucket: str) -> None:
    """The key record lives in the reserved namespace: a client cannot claim one."""
    for name in ("s3lx-sse", "s3lx-ssek"):
        with pytest.raises(ClientError) as err:
            s3.put_object(Bucket=bucket, Key="forged", Body=b"garbage",
                          Metadata={name: "AES256"})
        assert _code(err) == (400, "InvalidArgument")
    s3.put_object(Bucket=bucket, Key="enc", Body=b"data", ServerSideEncryption="AES256")
    meta = s3.head_object(Bucket=bucket, Key="enc")["Metadata"]
    assert not any(k.startswith("s3lx") for k in meta)


# -- multipart -----------------------------------------------------------------------------

def test_sse_c_multipart_with_ranges_across_parts(s3: Any, bucket: str) -> None:
    part = 5 * 1024 * 1024 + 1  # not a multiple of the segment size
    data = os.urandom(2 * part + 1000)
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp", Metadata={"a": "b"}, **ssec())
    assert up["SSECustomerKeyMD5"] == _md5(KEY_A)
    uid = up["UploadId"]
    with pytest.raises(ClientError) as err:  # a part without the key
        s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=1, Body=data[:part])
    assert _code(err)[0] == 400
    with pytest.raises(ClientError) as err:  # a part with another key
        s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=1, Body=data[:part],
                       **ssec(KEY_B))
    assert _code(err)[0] == 400
    etags = []
    for n, start in enumerate(range(0, len(data), part), start=1):
        r = s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=n,
                           Body=data[start:start + part], **ssec())
        etags.append({"ETag": r["ETag"], "PartNumber": n})
    with pytest.raises(ClientError) as err:  # a Complete naming another key commits nothing
        s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid,
                                     MultipartUpload={"Parts": etags}, **ssec(KEY_B))
    assert _code(err) == (400, "InvalidRequest")
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid,
                                 MultipartUpload={"Parts": etags}, **ssec())
    got = s3.get_object(Bucket=bucket, Key="mp", **ssec())
    assert got["ContentLength"] == len(data) and got["Metadata"] == {"a": "b"}
    assert got["Body"].read() == data
    for first, last in [(part - 10, part + 10), (0, 3 * 65536), (len(data) - 1, len(data) - 1),
                        (part - 1, 2 * part)]:
        r = s3.get_object(Bucket=bucket, Key="mp", Range=f"bytes={first}-{last}", **ssec())
        assert r["Body"].read() == data[first:last + 1]
    assert _listed(s3, bucket)["mp"] == len(data)
    p2 = s3.get_object(Bucket=bucket, Key="mp", PartNumber=2, **ssec())
    assert p2["Body"].read() == data[part:2 * part]
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="mp")
    assert _code(err)[0] == 400


def test_bucket_default_encryption(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as err:
        s3.get_bucket_encryption(Bucket=bucket)
    assert _code(err) == (404, "ServerSideEncryptionConfigurationNotFoundError")
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert s3.put_object(Bucket=bucket, Key="d", Body=b"x")["ServerSideEncryption"] == "AES256"
    assert s3.head_object(Bucket=bucket, Key="d")["ServerSideEncryption"] == "AES256"
    # Multipart under the default, with SSE-S3 parts.
    data = os.urandom(5 * 1024 * 1024 + 7)
    up = s3.create_multipart_upload(Bucket=bucket, Key="m")
    assert up["ServerSideEncryption"] == "AES256"
    r1 = s3.upload_part(Bucket=bucket, Key="m", UploadId=up["UploadId"], PartNumber=1,
                        Body=data[:5 * 1024 * 1024])
    r2 = s3.upload_part(Bucket=bucket, Key="m", UploadId=up["UploadId"], PartNumber=2,
                        Body=data[5 * 1024 * 1024:])
    done = s3.complete_multipart_upload(
        Bucket=bucket, Key="m", UploadId=up["UploadId"],
        MultipartUpload={"Parts": [{"ETag": r1["ETag"], "PartNumber": 1},
                                   {"ETag": r2["ETag"], "PartNumber": 2}]})
    assert done["ServerSideEncryption"] == "AES256"
    assert s3.get_object(Bucket=bucket, Key="m")["Body"].read() == data
    # An explicit SSE-C request wins over the default.
    assert "ServerSideEncryption" not in s3.put_object(Bucket=bucket, Key="c", Body=b"y",
                                                       **ssec())
    # A KMS default cannot be honoured: writes say so (S3's answer to an unusable KMS key).
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms",
                                                          "KMSMasterKeyID": "k-1"}}]})
    kms = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
    assert kms["Rules"][0]["ApplyServerSideEncryptionByDefault"]["KMSMasterKeyID"] == "k-1"
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket=bucket, Key="kms", Body=b"z")
    assert _code(err) == (400, "KMS.NotFoundException")
    assert s3.delete_bucket_encryption(Bucket=bucket)["ResponseMetadata"][
        "HTTPStatusCode"] == 204
    assert "ServerSideEncryption" not in s3.put_object(Bucket=bucket, Key="p", Body=b"p")


# -- copies ---------------------------------------------------------------------------------

def test_copies_between_encryptions(s3: Any, bucket: str) -> None:
    data = os.urandom(150_000)
    s3.put_object(Bucket=bucket, Key="src-c", Body=data, **ssec())
    with pytest.raises(ClientError) as err:  # the source's key is needed
        s3.copy_object(Bucket=bucket, Key="x", CopySource={"Bucket": bucket, "Key": "src-c"})
    assert _code(err)[0] == 400
    s3.copy_object(Bucket=bucket, Key="plain", CopySource={"Bucket": bucket, "Key": "src-c"},
                   **ssec(copy=True))
    assert s3.get_object(Bucket=bucket, Key="plain")["Body"].read() == data
    r = s3.copy_object(Bucket=bucket, Key="s3", CopySource={"Bucket": bucket, "Key": "plain"},
                       ServerSideEncryption="AES256")
    assert r["ServerSideEncryption"] == "AES256"
    assert s3.get_object(Bucket=bucket, Key="s3")["Body"].read() == data
    r = s3.copy_object(Bucket=bucket, Key="c2", CopySource={"Bucket": bucket, "Key": "s3"},
                       **ssec(KEY_B))
    assert r["SSECustomerKeyMD5"] == _md5(KEY_B)
    assert s3.get_object(Bucket=bucket, Key="c2", **ssec(KEY_B))["Body"].read() == data
    # Re-encrypting an object onto itself (a key rotation) is a legal self-copy.
    s3.copy_object(Bucket=bucket, Key="c2", CopySource={"Bucket": bucket, "Key": "c2"},
                   **ssec(KEY_B, copy=True), **ssec(KEY_A))
    assert s3.get_object(Bucket=bucket, Key="c2", **ssec(KEY_A))["Body"].read() == data
    # UploadPartCopy: a range of an SSE-C source into an SSE-S3 upload.
    up = s3.create_multipart_upload(Bucket=bucket, Key="mpc", ServerSideEncryption="AES256")
    r = s3.upload_part_copy(Bucket=bucket, Key="mpc", UploadId=up["UploadId"], PartNumber=1,
                            CopySource={"Bucket": bucket, "Key": "src-c"},
                            CopySourceRange="bytes=1000-99999", **ssec(copy=True))
    s3.complete_multipart_upload(
        Bucket=bucket, Key="mpc", UploadId=up["UploadId"],
        MultipartUpload={"Parts": [{"ETag": r["CopyPartResult"]["ETag"], "PartNumber": 1}]})
    assert s3.get_object(Bucket=bucket, Key="mpc")["Body"].read() == data[1000:100_000]


# -- damage ---------------------------------------------------------------------------------

def test_damaged_ciphertext_is_an_error_never_wrong_bytes(
        gateway: GatewayProcess, s3: Any, bucket: str) -> None:
    data = os.urandom(3 * 65536)
    s3.put_object(Bucket=bucket, Key="d.bin", Body=data, ServerSideEncryption="AES256")
    damage(gateway, bucket, "d.bin", enc.SALT + 100)  # inside the first segment
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="d.bin")
    assert _code(err) == (500, "InternalError")
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="d.bin", Range="bytes=10-20")
    assert _code(err) == (500, "InternalError")
    # Segments the damage does not touch still read (random access).
    tail = s3.get_object(Bucket=bucket, Key="d.bin", Range="bytes=140000-140010")
    assert tail["Body"].read() == data[140000:140011]


def test_bucket_policy_can_require_encryption(s3: Any, bucket: str) -> None:
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
        "Resource": f"arn:aws:s3:::{bucket}/*",
        "Condition": {"Null": {"s3:x-amz-server-side-encryption": "true"}}}]}
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    try:
        with pytest.raises(ClientError) as err:
            s3.put_object(Bucket=bucket, Key="k", Body=b"plain")
        assert _code(err) == (403, "AccessDenied")
        r = s3.put_object(Bucket=bucket, Key="k", Body=b"x", ServerSideEncryption="AES256")
        assert r["ServerSideEncryption"] == "AES256"
    finally:
        s3.delete_bucket_policy(Bucket=bucket)


# -- the stored format (unit) -----------------------------------------------------------------

class _Body:
    def __init__(self, data: bytes, step: int = 70_000) -> None:
        self.data, self.step = data, step

    async def __aiter__(self) -> Any:
        for i in range(0, len(self.data), self.step):
            yield self.data[i:i + self.step]

    async def close(self) -> None:
        return None


async def _seal(data: bytes, key: bytes, part: int = 0) -> bytes:
    return b"".join([c async for c in enc.EncryptingBody(_Body(data, 33_333), key, part)])


async def _open(stored: bytes, chunks: list[enc.Chunk], key: bytes, first: int,
                last: int) -> bytes:
    plan = enc.plan(chunks, first, last)
    salt = stored[plan.salt_at:plan.salt_at + enc.SALT] if plan.salt_at is not None else None
    span = stored[plan.span[0]:plan.span[1] + 1]
    return b"".join([c async for c in enc.DecryptingBody(_Body(span), plan, key, salt)])


def test_sizes_round_trip() -> None:
    for n in (0, 1, enc.SEGMENT - 1, enc.SEGMENT, enc.SEGMENT + 1, 10 * enc.SEGMENT + 5):
        assert enc.plaintext_size(enc.ciphertext_size(n)) == n
    for bad in (0, enc.SALT, enc.SALT + enc.TAG - 1):
        with pytest.raises(enc.EncryptionError):
            enc.plaintext_size(bad)


def test_ranges_over_parts_and_every_kind_of_damage() -> None:
    async def main() -> None:
        key = os.urandom(32)
        parts = [(1, os.urandom(200_000)), (2, os.urandom(enc.SEGMENT)), (4, os.urandom(5))]
        sealed = [(n, await _seal(d, key, n)) for n, d in parts]
        stored = b"".join(s for _, s in sealed)
        plain = b"".join(d for _, d in parts)
        chunks = enc.layout([(n, len(s)) for n, s in sealed])
        rng = random.Random(7)
        for _ in range(200):
            a = rng.randrange(len(plain))
            b = rng.randrange(a, len(plain))
            assert await _open(stored, chunks, key, a, b) == plain[a:b + 1]
        whole = (0, len(plain) - 1)
        flipped = bytearray(stored)
        flipped[150_000] ^= 1
        swapped = enc.layout([(2, len(sealed[0][1])), (1, len(sealed[1][1])),
                              (4, len(sealed[2][1]))])
        for bad_stored, bad_chunks, bad_key in [
            (bytes(flipped), chunks, key),  # a flipped bit
            (stored, swapped, key),  # parts in the wrong places
            (stored, chunks, os.urandom(32)),  # another key
        ]:
            with pytest.raises(enc.EncryptionError):
                await _open(bad_stored, bad_chunks, bad_key, *whole)
        # Truncated at a segment boundary: the last segment is missing its "last" mark.
        one = await _seal(os.urandom(3 * enc.SEGMENT), key)
        cut = one[:enc.SALT + 2 * (enc.SEGMENT + enc.TAG)]
        with pytest.raises(enc.EncryptionError):
            await _open(cut, enc.layout([(0, len(cut))]), key, 0, 2 * enc.SEGMENT - 1)

    asyncio.run(main())


def test_sse_c_key_record_reveals_and_accepts_only_the_key() -> None:
    sealing = enc.new_sse_c(b"k" * 32)
    assert b"k" * 32 not in json.dumps(sealing.fields).encode()
    assert enc.data_key(sealing.fields, enc.Keyring(), b"k" * 32) == sealing.data_key
    with pytest.raises(enc.WrongKey):
        enc.data_key(sealing.fields, enc.Keyring(), b"j" * 32)


def test_keyring_rotation_and_the_local_auto_key(tmp_path: Path) -> None:
    auto = tmp_path / "state" / "sse-master.key"
    ring = enc.Keyring(auto_path=auto)
    sealed = enc.new_sse_s3(ring)
    assert stat.S_IMODE(auto.stat().st_mode) == 0o600
    assert enc.data_key(sealed.fields, enc.Keyring(auto_path=auto), None) == sealed.data_key
    # Rotation: a new current key; the old one, listed as old, still opens old objects.
    new = tmp_path / "new.key"
    new.write_text(base64.b64encode(os.urandom(32)).decode())
    rotated = enc.Keyring.from_files(str(new), [str(auto)])
    assert enc.data_key(sealed.fields, rotated, None) == sealed.data_key
    assert enc.new_sse_s3(rotated).fields[enc.F_KEY].split(":")[0] != \
        sealed.fields[enc.F_KEY].split(":")[0]
    with pytest.raises(enc.KeyUnavailable):
        enc.data_key(sealed.fields, enc.Keyring.from_files(str(new), []), None)
    with pytest.raises(enc.KeyUnavailable):
        enc.new_sse_s3(enc.Keyring())
    # Old keys only unwrap: with no current key, nothing new is wrapped under one.
    with pytest.raises(enc.KeyUnavailable):
        enc.new_sse_s3(enc.Keyring.from_files(None, [str(auto)]))


def test_sse_s3_refused_without_a_key_on_an_s3_backend(tmp_path: Path) -> None:
    """An S3 backend never makes its own master key: SSE-S3 is refused, with the reason."""
    from s3latent.cli import build_keyring
    from s3latent.config import load_config

    cfg = load_config(env={}, backend="s3://127.0.0.1:1")
    ring = build_keyring(cfg, object())
    assert not ring.available and "key_file" in ring.why_not
    key = tmp_path / "k"
    key.write_text(base64.b64encode(os.urandom(32)).decode())
    cfg = load_config(env={"S3LATENT_SSE_KEY_FILE": str(key)}, backend="s3://127.0.0.1:1")
    assert build_keyring(cfg, object()).available


async def test_encrypted_images_are_never_converted(tmp_path: Path) -> None:
    """An encrypted pair stays as stored (the converter would need the key); a read with the
    key gives back the exact bytes."""
    from tests.inprocess import serve_gateway

    body = b"\x89PNG\r\n\x1a\n" + os.urandom(500)
    async with serve_gateway(tmp_path, PLAIN_HTTP_SSE_C) as gw:
        await gw.run(lambda s3: s3.create_bucket(Bucket="enc-bucket"))
        await gw.run(lambda s3: s3.put_object(Bucket="enc-bucket", Key="cat.png", Body=body,
                                              ContentType="image/png", **ssec()))
        await gw.settle()
        head = await gw.run(lambda s3: s3.head_object(Bucket="enc-bucket", Key="cat.png", **ssec()))
        headers = head["ResponseMetadata"]["HTTPHeaders"]
        assert headers["x-s3latent-representation"] == "plain"
        assert headers["x-s3latent-state"] == "not converted: encrypted"
        got = await gw.run(lambda s3: s3.get_object(Bucket="enc-bucket", Key="cat.png", **ssec()))
        assert got["Body"].read() == body


def test_versions_keep_their_own_encryption(s3: Any, bucket: str) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket=bucket, Key="v", Body=b"one" * 30_000, **ssec())["VersionId"]
    v2 = s3.put_object(Bucket=bucket, Key="v", Body=b"two", ServerSideEncryption="AES256")[
        "VersionId"]
    old = s3.get_object(Bucket=bucket, Key="v", VersionId=v1, Range="bytes=70000-70005",
                        **ssec())
    assert old["Body"].read() == (b"one" * 30_000)[70000:70006]
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="v", VersionId=v1)
    assert _code(err) == (400, "InvalidRequest")
    assert s3.get_object(Bucket=bucket, Key="v")["Body"].read() == b"two"
    assert s3.head_object(Bucket=bucket, Key="v", VersionId=v2)["ServerSideEncryption"] == \
        "AES256"
    for version in (v1, v2):
        s3.delete_object(Bucket=bucket, Key="v", VersionId=version)


def test_tagging_an_encrypted_object_keeps_it_encrypted(s3: Any, bucket: str) -> None:
    """Metadata rewrites (tags) keep the key record: the bytes stay readable, and only so."""
    data = os.urandom(70_000)
    s3.put_object(Bucket=bucket, Key="t", Body=data, **ssec())
    s3.put_object_tagging(Bucket=bucket, Key="t",
                          Tagging={"TagSet": [{"Key": "k", "Value": "v"}]})
    assert s3.get_object(Bucket=bucket, Key="t", **ssec())["Body"].read() == data
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="t")
    assert _code(err) == (400, "InvalidRequest")
    s3.delete_object_tagging(Bucket=bucket, Key="t")
    assert s3.get_object(Bucket=bucket, Key="t", **ssec())["Body"].read() == data


@pytest.mark.parametrize("versioned", [False, True])
@pytest.mark.parametrize("directive", ["COPY", "REPLACE"])
async def test_copy_of_a_source_replaced_by_an_encrypted_one_copies_no_ciphertext(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, versioned: bool,
        directive: str) -> None:
    """A CopyObject judges its source plain (HEAD), then the source is overwritten with an
    SSE-C object before the copy is made: the copy must not become the new ciphertext
    without its key record (served to anyone as if it were plaintext). The copy fails
    (412, retry) as a changed source does on every other copy path."""
    from tests.inprocess import serve_gateway

    secret = b"secret image bytes " * 5000
    replaced: list[bool] = []
    async with serve_gateway(tmp_path, PLAIN_HTTP_SSE_C) as gw:
        original = gw.store.copy_object

        async def replace_then_copy(*args: Any, **kwargs: Any) -> Any:
            # After the handler's HEAD judged the source plain, before the copy is made.
            replaced.append(True)
            await gw.run(lambda s3: s3.put_object(Bucket="copy-race", Key="src", Body=secret,
                                                  **ssec()))
            return await original(*args, **kwargs)

        await gw.run(lambda s3: s3.create_bucket(Bucket="copy-race"))
        if versioned:
            await gw.run(lambda s3: s3.put_bucket_versioning(
                Bucket="copy-race", VersioningConfiguration={"Status": "Enabled"}))
        await gw.run(lambda s3: s3.put_object(Bucket="copy-race", Key="src", Body=b"plain text"))
        monkeypatch.setattr(gw.store, "copy_object", replace_then_copy)
        extra = {"ContentType": "text/plain"} if directive == "REPLACE" else {}
        try:
            await gw.run(lambda s3: s3.copy_object(
                Bucket="copy-race", Key="dst", CopySource={"Bucket": "copy-race", "Key": "src"},
                MetadataDirective=directive, **extra))
        except ClientError as exc:
            assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 412
            assert exc.response["Error"]["Code"] == "PreconditionFailed"
        monkeypatch.setattr(gw.store, "copy_object", original)
        assert replaced
        try:
            copied = await gw.run(lambda s3: s3.get_object(Bucket="copy-race",
                                                           Key="dst")["Body"].read())
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "NoSuchKey"  # the copy was refused
        else:  # a copy made: of the plaintext it judged, never of stored ciphertext
            assert copied == b"plain text"
        assert await gw.run(lambda s3: s3.get_object(Bucket="copy-race", Key="src", **ssec())
                            ["Body"].read()) == secret


def test_a_configured_key_still_opens_objects_wrapped_by_the_local_auto_key(
        tmp_path: Path) -> None:
    """A lone local gateway made its own key (<directory>/.s3latent/sse-master.key); once
    the operator configures a key_file (or a [cluster]), that key was no longer loaded and
    every SSE-S3 object written before answered 500. It stays an unwrap-only key."""
    from s3latent.backends.local import LocalBackend
    from s3latent.cli import build_keyring
    from s3latent.config import load_config

    backend = LocalBackend(tmp_path / "data")
    auto = build_keyring(load_config(env={}, backend=f"file://{tmp_path / 'data'}"), backend)
    sealed = enc.new_sse_s3(auto)
    key = tmp_path / "k"
    key.write_text(base64.b64encode(os.urandom(32)).decode())
    cfg = load_config(env={"S3LATENT_SSE_KEY_FILE": str(key)},
                      backend=f"file://{tmp_path / 'data'}")
    configured = build_keyring(cfg, backend)
    assert enc.data_key(sealed.fields, configured, None) == sealed.data_key
    # New objects are wrapped under the configured key, never the auto one.
    assert enc.new_sse_s3(configured).fields[enc.F_KEY].split(":")[0] != \
        sealed.fields[enc.F_KEY].split(":")[0]


@pytest.mark.parametrize("versioned", [False, True])
async def test_conditional_writes_judge_an_sse_s3_object_by_the_etag_clients_see(
        tmp_path: Path, versioned: bool) -> None:
    """An SSE-S3 object's ETag is its plaintext's MD5 (what PUT, HEAD and listings say);
    conditional writes compared the header with the stored ciphertext's: If-Match with that
    ETag always failed (412), and If-None-Match with it let the write replace the very
    object the client meant to keep."""
    from tests.inprocess import serve_gateway

    async with serve_gateway(tmp_path, PLAIN_HTTP_SSE_C) as gw:
        await gw.run(lambda s3: s3.create_bucket(Bucket="cond-sse"))
        if versioned:
            await gw.run(lambda s3: s3.put_bucket_versioning(
                Bucket="cond-sse", VersioningConfiguration={"Status": "Enabled"}))
        await gw.run(lambda s3: s3.put_object(Bucket="cond-sse", Key="k", Body=b"first",
                                              ServerSideEncryption="AES256"))
        etag = (await gw.run(lambda s3: s3.head_object(Bucket="cond-sse", Key="k")))["ETag"]
        assert etag == '"' + hashlib.md5(b"first").hexdigest() + '"'
        with pytest.raises(ClientError) as exc:
            await gw.run(lambda s3: s3.put_object(Bucket="cond-sse", Key="k", Body=b"other",
                                                  IfNoneMatch=etag))
        assert _code(exc) == (412, "PreconditionFailed")
        await gw.run(lambda s3: s3.put_object(Bucket="cond-sse", Key="k", Body=b"second",
                                              IfMatch=etag))
        got = await gw.run(lambda s3: s3.get_object(Bucket="cond-sse", Key="k")["Body"].read())
        assert got == b"second"


async def test_a_source_encrypted_while_the_backend_copies_it_leaves_no_ciphertext_copy(
        tmp_path: Path) -> None:
    """The store's copy HEADs its source (plain), then the backend reads it again to copy
    it. An SSE-C object written between those two reads was copied with the metadata the
    gateway had chosen (no key record): ciphertext served as plaintext. The copy is
    refused (412) and removed instead."""
    from tests.inprocess import serve_gateway

    secret = b"secret image bytes " * 5000
    async with serve_gateway(tmp_path, PLAIN_HTTP_SSE_C) as gw:
        await gw.run(lambda s3: s3.create_bucket(Bucket="copy-race2"))
        await gw.run(lambda s3: s3.put_object(Bucket="copy-race2", Key="src", Body=b"plain"))
        real_get = gw.backend.get_object
        fired: list[bool] = []

        async def get_object(bucket: str, key: str, *args: Any, **kw: Any) -> Any:
            if key == "src" and not args and not kw.get("byte_range") and not fired:
                fired.append(True)  # the backend's copy reads its source
                await gw.run(lambda s3: s3.put_object(Bucket="copy-race2", Key="src",
                                                      Body=secret, **ssec()))
            return await real_get(bucket, key, *args, **kw)

        gw.backend.get_object = get_object
        try:
            with pytest.raises(ClientError) as exc:
                await gw.run(lambda s3: s3.copy_object(
                    Bucket="copy-race2", Key="dst",
                    CopySource={"Bucket": "copy-race2", "Key": "src"},
                    MetadataDirective="REPLACE", ContentType="text/plain"))
        finally:
            gw.backend.get_object = real_get
        assert fired
        assert _code(exc) == (412, "PreconditionFailed")
        with pytest.raises(ClientError) as exc:
            await gw.run(lambda s3: s3.get_object(Bucket="copy-race2", Key="dst"))
        assert _code(exc) == (404, "NoSuchKey")
