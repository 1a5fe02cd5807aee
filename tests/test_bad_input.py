"""Bad input gets the error real S3 sends (code, XML body, request id) and leaves no trace."""

from __future__ import annotations

import socket
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from tests import sigv4_client as sv
from tests.gateway import ACCESS_KEY, SECRET_KEY, GatewayProcess


def send(gateway: GatewayProcess, req: sv.RawRequest, *, body: bytes | None = None,
         close_after: bool = False) -> tuple[int, dict[str, str], bytes]:
    """Send a request byte-exactly over a raw socket (no client fixes anything up)."""
    payload = req.body if body is None else body
    lines = [f"{req.method} {req.target} HTTP/1.1"]
    names = {n.lower() for n, _ in req.headers}
    lines += [f"{n}: {v}" for n, v in req.headers]
    if "content-length" not in names and req.method in ("PUT", "POST"):
        lines.append(f"Content-Length: {len(payload)}")
    lines.append("Connection: close")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + payload
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(raw)
        if close_after:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    response = b"".join(chunks)
    if not response:
        return 0, {}, b""  # the server closed without answering
    head, _, rest = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, rest


def signed(gateway: GatewayProcess, method: str, path: str, **kwargs: Any) -> sv.RawRequest:
    kwargs.setdefault("access_key", ACCESS_KEY)
    kwargs.setdefault("secret", SECRET_KEY)
    return sv.sign(method, path, host=f"127.0.0.1:{gateway.port}", **kwargs)


def assert_s3_error(status: int, headers: dict[str, str], body: bytes, code: str,
                    expected_status: int) -> None:
    assert status == expected_status, body
    assert headers.get("x-amz-request-id"), headers
    assert f"<Code>{code}</Code>".encode() in body, body
    assert b"<RequestId>" in body and b"<Message>" in body


def assert_absent(s3: Any, bucket: str, key: str) -> None:
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key=key)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert key not in keys


def test_wrong_signature(gateway: GatewayProcess, s3: Any, bucket: str) -> None:
    req = signed(gateway, "PUT", f"/{bucket}/k", body=b"data", secret="not-the-secret")
    assert_s3_error(*send(gateway, req), "SignatureDoesNotMatch", 403)
    assert_absent(s3, bucket, "k")


def test_unknown_access_key(gateway: GatewayProcess, s3: Any, bucket: str) -> None:
    req = signed(gateway, "PUT", f"/{bucket}/k", body=b"data", access_key="AKIDUNKNOWN00000")
    assert_s3_error(*send(gateway, req), "InvalidAccessKeyId", 403)
    assert_absent(s3, bucket, "k")


def test_no_credentials(gateway: GatewayProcess, bucket: str) -> None:
    r = requests.get(f"{gateway.endpoint}/{bucket}?list-type=2", timeout=10)
    assert_s3_error(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content,
                    "AccessDenied", 403)


def test_clock_skew(gateway: GatewayProcess, s3: Any, bucket: str) -> None:
    req = signed(gateway, "PUT", f"/{bucket}/k", body=b"data",
                 now=datetime.now(UTC) - timedelta(hours=1))
    assert_s3_error(*send(gateway, req), "RequestTimeTooSkewed", 403)
    assert_absent(s3, bucket, "k")


def test_expired_presigned_url(gateway: GatewayProcess, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"data")
    req = sv.presign("GET", f"/{bucket}/k", expires=1, access_key=ACCESS_KEY, secret=SECRET_KEY,
                     host=f"127.0.0.1:{gateway.port}",
                     now=datetime.now(UTC) - timedelta(seconds=30))
    assert_s3_error(*send(gateway, req), "AccessDenied", 403)
    req = sv.presign("PUT", f"/{bucket}/new", expires=1, access_key=ACCESS_KEY,
                     secret=SECRET_KEY, host=f"127.0.0.1:{gateway.port}",
                     now=datetime.now(UTC) - timedelta(seconds=30))
    assert_s3_error(*send(gateway, req, body=b"payload"), "AccessDenied", 403)
    assert_absent(s3, bucket, "new")


def test_body_sha256_mismatch(gateway: GatewayProcess, s3: Any, bucket: str) -> None:
    req = signed(gateway, "PUT", f"/{bucket}/k", body=b"the signed body")
    assert_s3_error(*send(gateway, req, body=b"another body!!!"), "XAmzContentSHA256Mismatch",
                    400)
    assert_absent(s3, bucket, "k")


@pytest.mark.parametrize("chunk", [0, 2])
def test_tampered_chunk_signature(gateway: GatewayProcess, s3: Any, bucket: str,
                                  chunk: int) -> None:
    body = bytes(range(256)) * 1024  # 256 KiB in 64 KiB chunks
    req = signed(gateway, "PUT", f"/{bucket}/k", body=body, mode="streaming",
                 chunk_size=64 * 1024, tamper_chunk=chunk)
    assert_s3_error(*send(gateway, req), "SignatureDoesNotMatch", 403)
    assert_absent(s3, bucket, "k")
    good = signed(gateway, "PUT", f"/{bucket}/k", body=body, mode="streaming",
                  chunk_size=64 * 1024)
    status, _, _ = send(gateway, good)
    assert status == 200
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == body


@pytest.mark.parametrize("mode", ["unsigned-trailer", "streaming-trailer"])
@pytest.mark.parametrize("algorithm", ["crc32", "crc32c", "crc64nvme", "sha256"])
def test_wrong_trailer_checksum(gateway: GatewayProcess, s3: Any, bucket: str, mode: str,
                                algorithm: str) -> None:
    body = b"trailer checked " * 5000
    req = signed(gateway, "PUT", f"/{bucket}/k", body=body, mode=mode, checksum=algorithm,
                 tamper_checksum=True)
    assert_s3_error(*send(gateway, req), "BadDigest", 400)
    assert_absent(s3, bucket, "k")


def test_wrong_content_md5(gateway: GatewayProcess, s3: Any, bucket: str) -> None:
    req = signed(gateway, "PUT", f"/{bucket}/k", body=b"abc", mode="unsigned",
                 headers={"Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg=="})
    assert_s3_error(*send(gateway, req), "BadDigest", 400)
    assert_absent(s3, bucket, "k")


def test_content_length_longer_than_body(gateway: GatewayProcess, s3: Any,
                                         bucket: str) -> None:
    # Signed for 5000 bytes; only 1000 arrive before the client stops sending.
    req = signed(gateway, "PUT", f"/{bucket}/short", body=b"x" * 5000, mode="unsigned")
    status, headers, resp = send(gateway, req, body=b"x" * 1000, close_after=True)
    # The client stopped sending: S3 answers IncompleteBody (or just closes).
    if status:
        assert_s3_error(status, headers, resp, "IncompleteBody", 400)
    assert_absent(s3, bucket, "short")


def test_client_disconnect_mid_upload(gateway: GatewayProcess, s3: Any, bucket: str) -> None:
    req = signed(gateway, "PUT", f"/{bucket}/gone", body=b"", mode="unsigned")
    req.replace_header("Content-Length", str(50 * 1024 * 1024))
    lines = [f"{req.method} {req.target} HTTP/1.1", *[f"{n}: {v}" for n, v in req.headers]]
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        for _ in range(8):
            sock.sendall(b"y" * (1024 * 1024))
    time.sleep(1.0)
    assert_absent(s3, bucket, "gone")


def test_key_too_long(gateway: GatewayProcess, s3: Any, bucket: str) -> None:
    key = "k" * 1025
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    assert exc.value.response["Error"]["Code"] == "KeyTooLongError"
    assert not s3.list_objects_v2(Bucket=bucket).get("Contents")
    # Exactly 1024 bytes is allowed (segments short enough for file-system-like stores).
    ok_key = ("é" * 100 + "/") * 5 + "a" * 19
    assert len(ok_key.encode()) == 1024
    s3.put_object(Bucket=bucket, Key=ok_key, Body=b"x")
    assert s3.get_object(Bucket=bucket, Key=ok_key)["Body"].read() == b"x"


def test_malformed_xml(gateway: GatewayProcess, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="keep", Body=b"x")
    for body in (b"<Delete><Object><Key>keep</Key></Object>", b"not xml at all",
                 b"<Wrong><Object><Key>keep</Key></Object></Wrong>",
                 b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY e "keep">]>'
                 b"<Delete><Object><Key>&e;</Key></Object></Delete>"):
        req = signed(gateway, "POST", f"/{bucket}", query="delete=", body=body)
        assert_s3_error(*send(gateway, req), "MalformedXML", 400)
    assert s3.get_object(Bucket=bucket, Key="keep")["Body"].read() == b"x"
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    req = signed(gateway, "POST", f"/{bucket}/mp", query=f"uploadId={uid}",
                 body=b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber>")
    assert_s3_error(*send(gateway, req), "MalformedXML", 400)
    assert_absent(s3, bucket, "mp")


def test_invalid_bucket_name_raw(gateway: GatewayProcess) -> None:
    name = f"Bad_{uuid.uuid4().hex[:6]}"
    req = signed(gateway, "PUT", f"/{name}")
    assert_s3_error(*send(gateway, req), "InvalidBucketName", 400)
    req = signed(gateway, "GET", "/")
    status, _, body = send(gateway, req)
    assert status == 200 and name.encode() not in body
