"""PayloadReader: every payload mode, every way a body can be wrong, and real clients.

The second half runs a tiny S3 on 127.0.0.1 (plain HTTP and TLS, so botocore uses
both its checksum-header and its aws-chunked-trailer uploads) whose handler is
authenticate() + PayloadReader, and drives it with boto3, presigned URLs through
three HTTP clients, s3fs and the AWS CLI.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import os
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote
from xml.sax.saxutils import escape

import pytest
from aiohttp import web
from multidict import CIMultiDict

from s3latent.errors import S3Error
from s3latent.executables import require_executable
from s3latent.s3api.auth import AuthContext, authenticate
from s3latent.s3api.payload import READ_SIZE, PayloadReader, stored_content_encoding
from tests import sigv4_client as client
from tests.gateway import self_signed
from tests.sigv4_client import ACCESS_KEY, SECRET_KEY, USERS, make_stream

NOW = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
BODY = os.urandom(200_000)


def _b64md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _ctx(req: client.RawRequest) -> AuthContext:
    return authenticate(req.method, req.path, req.query, req.header_map(), USERS, now=NOW)


async def _read(
    req: client.RawRequest,
    *,
    body: bytes | None = None,
    piece: int = 64 * 1024,
    headers: CIMultiDict[str] | None = None,
    **kwargs: Any,
) -> tuple[bytes, PayloadReader]:
    hdrs = headers if headers is not None else req.header_map()
    reader = PayloadReader(
        make_stream(req.body if body is None else body, piece=piece), hdrs, _ctx(req), **kwargs
    )
    chunks = [c async for c in reader]
    assert all(0 < len(c) <= READ_SIZE for c in chunks)
    return b"".join(chunks), reader


async def _fails(
    req: client.RawRequest,
    code: str,
    *,
    body: bytes | None = None,
    headers: CIMultiDict[str] | None = None,
    **kwargs: Any,
) -> tuple[S3Error, int]:
    """The error iteration raises, and how many decoded bytes came out before it."""
    reader = PayloadReader(
        make_stream(req.body if body is None else body),
        headers if headers is not None else req.header_map(),
        _ctx(req),
        **kwargs,
    )
    seen = 0
    with pytest.raises(S3Error) as info:
        async for chunk in reader:
            seen += len(chunk)
    assert info.value.code == code, info.value
    with pytest.raises(RuntimeError):
        _ = reader.checksums
    return info.value, seen


def _put(mode: str, body: bytes = BODY, **kwargs: Any) -> client.RawRequest:
    return client.sign("PUT", "/bucket/key", body=body, mode=mode, now=NOW, **kwargs)


# -- every mode reads back the body -----------------------------------------------------


@pytest.mark.parametrize("mode", list(client.MODES))
@pytest.mark.parametrize("checksum", [None, "crc32", "crc32c", "crc64nvme", "sha1", "sha256"])
async def test_modes_and_checksums(mode: str, checksum: str | None) -> None:
    req = _put(mode, checksum=checksum, chunk_size=70_000)
    data, reader = await _read(req)
    assert data == BODY
    assert reader.decoded_length == len(BODY)
    assert reader.md5_hex == hashlib.md5(BODY).hexdigest()
    expected = {checksum: client.checksum_value(checksum, BODY)} if checksum else {}
    assert reader.checksums == expected


@pytest.mark.parametrize("mode", list(client.MODES))
@pytest.mark.parametrize("piece", [1, 3, 17])
async def test_tiny_network_reads(mode: str, piece: int) -> None:
    body = b"0123456789" * 30
    req = _put(mode, body=body, checksum="crc32c", chunk_size=64)
    data, reader = await _read(req, piece=piece)
    assert data == body
    assert reader.checksums == {"crc32c": client.checksum_value("crc32c", body)}


@pytest.mark.parametrize("mode", list(client.MODES))
async def test_empty_body(mode: str) -> None:
    req = _put(mode, body=b"", checksum="crc64nvme")
    data, reader = await _read(req)
    assert data == b""
    assert reader.decoded_length == 0
    assert reader.md5_hex == hashlib.md5(b"").hexdigest()
    assert reader.checksums == {"crc64nvme": client.checksum_value("crc64nvme", b"")}


async def test_large_reads_are_bounded() -> None:
    body = os.urandom(3 * READ_SIZE + 5)
    req = _put("unsigned", body=body)
    reader = PayloadReader(make_stream(body, piece=4 * READ_SIZE), req.header_map(), _ctx(req))
    sizes = [len(c) async for c in reader]
    assert max(sizes) == READ_SIZE and sum(sizes) == len(body)


async def test_asked_for_checksums_are_computed() -> None:
    body = b"hello"
    req = _put(
        "unsigned",
        body=body,
        headers={"x-amz-checksum-algorithm": "SHA256", "x-amz-sdk-checksum-algorithm": "crc32c"},
    )
    _, reader = await _read(req)
    assert reader.checksums == {
        "crc32c": client.checksum_value("crc32c", body),
        "sha256": client.checksum_value("sha256", body),
    }


async def test_content_md5() -> None:
    req = _put("sha256", headers={"Content-MD5": _b64md5(BODY)})
    assert (await _read(req))[0] == BODY
    req = _put("sha256", headers={"Content-MD5": _b64md5(b"other")})
    err, seen = await _fails(req, "BadDigest")
    assert seen < len(BODY)
    assert err.status == 400


@pytest.mark.parametrize("value", ["nope", "", "AAAA", base64.b64encode(b"x" * 15).decode()])
async def test_malformed_content_md5(value: str) -> None:
    req = _put("unsigned", headers={"Content-MD5": value})
    with pytest.raises(S3Error) as info:
        PayloadReader(make_stream(req.body), req.header_map(), _ctx(req))
    assert info.value.code == "InvalidDigest"


async def test_reads_once_and_results_wait_for_the_end() -> None:
    req = _put("unsigned", body=b"abc")
    reader = PayloadReader(make_stream(req.body), req.header_map(), _ctx(req))
    with pytest.raises(RuntimeError):
        _ = reader.md5_hex
    assert [c async for c in reader] == [b"abc"]
    with pytest.raises(RuntimeError):
        reader.__aiter__()


# -- verification failures: raised, never a clean end ------------------------------------


async def test_sha256_mismatch() -> None:
    req = _put("sha256")
    body = bytearray(req.body)
    body[1000] ^= 1
    err, seen = await _fails(req, "XAmzContentSHA256Mismatch", body=bytes(body))
    assert err.extra["ClientComputedContentSHA256"] == hashlib.sha256(BODY).hexdigest()
    assert seen < len(BODY)


@pytest.mark.parametrize("mode", ["sha256", "unsigned", "streaming"])
@pytest.mark.parametrize("algorithm", ["crc32", "crc32c", "crc64nvme", "sha1", "sha256"])
async def test_checksum_header_mismatch(mode: str, algorithm: str) -> None:
    req = _put(mode, checksum=algorithm, tamper_checksum=True)
    err, seen = await _fails(req, "BadDigest")
    assert err.message == (
        f"The {algorithm.upper()} you specified did not match the calculated checksum."
    )
    assert seen < len(BODY)


@pytest.mark.parametrize("mode", ["streaming-trailer", "unsigned-trailer"])
@pytest.mark.parametrize("algorithm", ["crc32", "crc32c", "crc64nvme", "sha1", "sha256"])
async def test_trailer_checksum_mismatch(mode: str, algorithm: str) -> None:
    req = _put(mode, checksum=algorithm, tamper_checksum=True)
    err, seen = await _fails(req, "BadDigest")
    assert err.message.startswith(f"The {algorithm.upper()} you specified did not match")
    assert seen < len(BODY)


@pytest.mark.parametrize("chunk", [0, 1, 3])  # 200000 / 64KiB -> 4 data chunks + the final one
@pytest.mark.parametrize("mode", ["streaming", "streaming-trailer"])
async def test_chunk_signature_tampered(mode: str, chunk: int) -> None:
    req = _put(mode, checksum="crc32", tamper_chunk=chunk)
    _, seen = await _fails(req, "SignatureDoesNotMatch")
    assert seen < len(BODY)


@pytest.mark.parametrize("mode", ["streaming", "streaming-trailer"])
async def test_final_chunk_signature_tampered(mode: str) -> None:
    req = _put(mode, checksum="sha1", tamper_chunk=4)
    _, seen = await _fails(req, "SignatureDoesNotMatch")
    assert seen < len(BODY)


async def test_chunk_data_tampered() -> None:
    req = _put("streaming")
    body = bytearray(req.body)
    body[len(body) // 2] ^= 0x40
    await _fails(req, "SignatureDoesNotMatch", body=bytes(body))


async def test_chunks_reordered_or_spliced() -> None:
    # a valid chunk from another request (other seed) breaks the chain
    one = _put("streaming", body=b"a" * 100, chunk_size=50)
    two = _put("streaming", body=b"a" * 100, chunk_size=50, headers={"x-amz-meta-x": "1"})
    spliced = (
        two.body[: two.body.index(b"\r\n", 100) + 2] + one.body[one.body.index(b"\r\n", 100) + 2 :]
    )
    await _fails(one, "SignatureDoesNotMatch", body=spliced)


async def test_trailer_signature_tampered() -> None:
    req = _put("streaming-trailer", checksum="crc32c", tamper_trailer_signature=True)
    _, seen = await _fails(req, "SignatureDoesNotMatch")
    assert seen < len(BODY)


async def test_signed_trailer_without_signature() -> None:
    req = _put("streaming-trailer", checksum="crc32")
    body = req.body[: req.body.index(b"x-amz-trailer-signature")] + b"\r\n"
    await _fails(req, "SignatureDoesNotMatch", body=body)


async def test_wrong_secret_chunks() -> None:
    # header signed with the right key, chunks with another: the seed chain breaks
    good = _put("streaming")
    bad = _put("streaming", secret="other-secret")
    body = bad.body.replace(bad.signature.encode(), good.signature.encode())
    await _fails(good, "SignatureDoesNotMatch", body=body)


async def test_trailer_missing_or_undeclared() -> None:
    req = _put("unsigned-trailer", checksum="crc32")
    missing = req.body[: req.body.index(b"x-amz-checksum-crc32:")] + b"\r\n"
    await _fails(req, "MalformedTrailerError", body=missing)
    undeclared = req.body.replace(b"x-amz-checksum-crc32:", b"x-amz-checksum-sha1:")
    err, _ = await _fails(req, "MalformedTrailerError", body=undeclared)
    assert err.status == 400
    garbage = req.body.replace(b"x-amz-checksum-crc32:", b"no colon here ")
    await _fails(req, "MalformedTrailerError", body=garbage)
    bad_value = req.body.replace(b"x-amz-checksum-crc32:", b"x-amz-checksum-crc32:Zm9v")
    await _fails(req, "BadDigest", body=bad_value)


async def test_trailer_without_final_blank_line_is_accepted() -> None:
    req = _put("unsigned-trailer", checksum="crc32")
    assert req.body.endswith(b"\r\n\r\n")
    data, reader = await _read(req, body=req.body[:-2])
    assert data == BODY and reader.checksums["crc32"] == client.checksum_value("crc32", BODY)


async def test_aws_documentation_chunked_example() -> None:
    """The worked STREAMING-AWS4-HMAC-SHA256-PAYLOAD example of the AWS documentation."""
    signatures = [
        "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
        "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
        "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
    ]
    data = b"a" * 66560
    body = (
        f"10000;chunk-signature={signatures[0]}\r\n".encode()
        + data[:65536]
        + b"\r\n"
        + f"400;chunk-signature={signatures[1]}\r\n".encode()
        + data[65536:]
        + b"\r\n"
        + f"0;chunk-signature={signatures[2]}\r\n\r\n".encode()
    )
    seed = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    headers = CIMultiDict(
        {
            "Host": "s3.amazonaws.com",
            "x-amz-date": "20130524T000000Z",
            "x-amz-storage-class": "REDUCED_REDUNDANCY",
            "Authorization": "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/"
            "us-east-1/s3/aws4_request,SignedHeaders=content-encoding;content-length;host;"
            "x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,"
            f"Signature={seed}",
            "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
            "Content-Encoding": "aws-chunked",
            "x-amz-decoded-content-length": "66560",
            "Content-Length": "66824",
        }
    )
    assert len(body) == 66824
    now = dt.datetime(2013, 5, 24, 0, 1, tzinfo=dt.UTC)
    ctx = authenticate("PUT", "/examplebucket/chunkObject.txt", "", headers, USERS, now=now)
    assert ctx.seed_signature == seed
    reader = PayloadReader(make_stream(body, piece=1000), headers, ctx)
    assert b"".join([c async for c in reader]) == data
    # the test client produces the same bytes from the same key and seed
    assert (
        client.aws_chunked(
            data,
            chunk_size=65536,
            signing_key=ctx.signing_key,
            seed_signature=seed,
            amz_date=ctx.amz_date,
            scope=ctx.credential_scope,
        )
        == body
    )
    tampered = body.replace(signatures[1].encode(), signatures[1][::-1].encode())
    reader = PayloadReader(make_stream(tampered), headers, ctx)
    with pytest.raises(S3Error) as info:
        _ = [c async for c in reader]
    assert info.value.code == "SignatureDoesNotMatch"


# -- lengths and framing -------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(client.MODES))
async def test_truncated_body(mode: str) -> None:
    req = _put(mode, checksum="crc32")
    for cut in (0, 1, len(req.body) // 2, len(req.body) - 3):
        await _fails(req, "IncompleteBody", body=req.body[:cut])


async def test_truncated_streaming_cuts_everywhere() -> None:
    body = b"x" * 40
    for mode in ("streaming", "streaming-trailer", "unsigned-trailer"):
        req = _put(mode, body=body, checksum="crc32", chunk_size=16)
        trailer_start = req.body.rindex(b"0;" if mode != "unsigned-trailer" else b"\r\n0\r\n")
        for cut in range(len(req.body) - 2):
            reader = PayloadReader(make_stream(req.body[:cut]), req.header_map(), _ctx(req))
            with pytest.raises(S3Error) as info:
                _ = [c async for c in reader]
            if cut < trailer_start:
                assert info.value.code == "IncompleteBody", (mode, cut, info.value)
            else:
                assert info.value.code in {
                    "IncompleteBody",
                    "MalformedTrailerError",
                    "SignatureDoesNotMatch",
                    "InvalidRequest",
                }, (mode, cut, info.value)


@pytest.mark.parametrize("mode", ["streaming", "unsigned-trailer"])
async def test_decoded_length_mismatch(mode: str) -> None:
    req = _put(mode, checksum="crc32")
    ctx = _ctx(req)
    # the reader takes the declared length from the headers it is given
    for declared in (len(BODY) + 1, len(BODY) - 1):
        headers = req.header_map()
        headers["x-amz-decoded-content-length"] = str(declared)
        reader = PayloadReader(make_stream(req.body), headers, ctx)
        seen = 0
        with pytest.raises(S3Error) as info:
            async for chunk in reader:
                seen += len(chunk)
        assert info.value.code == "IncompleteBody"
        assert seen < len(BODY)


@pytest.mark.parametrize(
    ("old", "new", "code"),
    [
        (b"10000\r\n", b"1000g\r\n", "InvalidRequest"),
        (b"10000\r\n", b"\r\n", "InvalidRequest"),
        (b"10000\r\n", b"10001\r\n", "InvalidRequest"),  # data no longer followed by CRLF
    ],
)
async def test_malformed_chunk_framing(old: bytes, new: bytes, code: str) -> None:
    req = _put("unsigned-trailer", checksum="crc32")
    assert req.body.startswith(old)
    await _fails(req, code, body=new + req.body[len(old) :])


async def test_signed_chunk_without_signature() -> None:
    req = _put("streaming")
    first = req.body.index(b"\r\n")
    body = req.body[: req.body.index(b";")] + req.body[first:]
    await _fails(req, "InvalidRequest", body=body)


async def test_overlong_chunk_header() -> None:
    req = _put("unsigned-trailer", checksum="crc32")
    await _fails(req, "InvalidRequest", body=b"1" + b" " * 200_000 + b"\r\n")


async def test_data_after_the_end() -> None:
    for mode in client.MODES:
        req = _put(mode, body=b"abc", checksum="crc32")
        if mode in ("sha256", "unsigned"):
            # a bounded HTTP stream never holds more than Content-Length; a fake one may
            headers = req.header_map()
            headers["Content-Length"] = "2"
            _, seen = await _fails(req, "InvalidRequest", headers=headers)
        else:
            _, seen = await _fails(req, "InvalidRequest", body=req.body + b"junk")
        assert seen == 0


async def test_final_crlf_optional_without_trailer() -> None:
    req = _put("streaming", body=b"abc")
    assert req.body.endswith(b"\r\n\r\n")
    assert (await _read(req, body=req.body[:-2]))[0] == b"abc"


# -- header validation (constructor, before any byte is read) ----------------------------


def _construct(req: client.RawRequest, headers: CIMultiDict[str] | None = None, **kw: Any) -> None:
    PayloadReader(make_stream_unused(), headers or req.header_map(), _ctx(req), **kw)


class _NoRead:
    async def read(self, n: int = -1) -> bytes:
        raise AssertionError("read before the headers were validated")

    readline = readexactly = readany = read


def make_stream_unused() -> Any:
    return _NoRead()


def _construct_error(req: client.RawRequest, headers: CIMultiDict[str], **kw: Any) -> S3Error:
    with pytest.raises(S3Error) as info:
        _construct(req, headers, **kw)
    return info.value


def test_header_errors() -> None:
    req = _put("unsigned", body=b"abc")

    def variant(**changes: str | None) -> CIMultiDict[str]:
        headers = req.header_map()
        for name, value in changes.items():
            name = name.replace("_", "-")
            headers.popall(name, None)
            if value is not None:
                headers[name] = value
        return headers

    cases = [
        (variant(**{"x-amz-checksum-md5": "1B2M2Y8AsgTpgAmY7PhCfg=="}), "InvalidArgument"),
        (variant(**{"x-amz-checksum-crc32": "not-base64"}), "BadDigest"),
        (variant(**{"x-amz-checksum-crc32": "AAAAAAAAAAA="}), "BadDigest"),
        (
            variant(**{"x-amz-checksum-crc32": "AAAAAA==", "x-amz-checksum-sha1": "A" * 27 + "="}),
            "InvalidRequest",
        ),
        (variant(**{"x-amz-sdk-checksum-algorithm": "MD5"}), "InvalidArgument"),
        (variant(**{"x-amz-checksum-algorithm": "xxhash64"}), "InvalidArgument"),
        (variant(**{"x-amz-trailer": "x-amz-checksum-crc32"}), "InvalidRequest"),
        (variant(**{"Content-Length": None}), None),  # HTTP: no length, no chunking = empty
        # HTTP chunked framing without a length: streamed to its end (see test_s3_extras)
        (variant(**{"Content-Length": None, "Transfer-Encoding": "chunked"}), None),
    ]
    for headers, code in cases:
        if code is None:
            _construct(req, headers)
        else:
            assert _construct_error(req, headers).code == code, headers
    assert _construct_error(req, variant(**{"Content-Length": None}), method="PUT").code == (
        "MissingContentLength"
    )
    err = _construct_error(req, req.header_map(), max_size=2)
    assert (err.code, err.extra["ProposedSize"], err.extra["MaxSizeAllowed"]) == (
        "EntityTooLarge",
        "3",
        "2",
    )
    _construct(req, req.header_map(), max_size=3)


def test_streaming_header_errors() -> None:
    req = _put("unsigned-trailer", checksum="crc32")
    headers = req.header_map()
    del headers["x-amz-decoded-content-length"]
    assert _construct_error(req, headers).code == "MissingContentLength"
    headers = req.header_map()
    headers["x-amz-decoded-content-length"] = "12abc"
    assert _construct_error(req, headers).code == "InvalidArgument"
    headers = req.header_map()
    headers["x-amz-trailer"] = "x-amz-checksum-md5"
    assert _construct_error(req, headers).code == "InvalidArgument"
    headers = req.header_map()
    headers["x-amz-decoded-content-length"] = str(6 * 1024**4)
    assert _construct_error(req, headers).code == "EntityTooLarge"


def test_bad_content_sha256_in_context() -> None:
    req = _put("unsigned", body=b"abc")
    ctx = _ctx(req)
    bad = AuthContext(**{**ctx.__dict__, "content_sha256": "sha256-of-something"})
    with pytest.raises(S3Error) as info:
        PayloadReader(make_stream_unused(), req.header_map(), bad)
    assert info.value.code == "InvalidArgument"


def test_stored_content_encoding() -> None:
    assert stored_content_encoding(None) is None
    assert stored_content_encoding("aws-chunked") is None
    assert stored_content_encoding("gzip,aws-chunked") == "gzip"  # botocore appends it
    assert stored_content_encoding("aws-chunked, gzip") == "gzip"
    assert stored_content_encoding("gzip") == "gzip"


async def test_aws_chunked_over_http_chunked_transfer() -> None:
    # botocore's trailer upload: Transfer-Encoding: chunked, no Content-Length
    req = _put("unsigned-trailer", checksum="crc32")
    headers = req.header_map()
    del headers["Content-Length"]
    headers["Transfer-Encoding"] = "chunked"
    data, reader = await _read(req, headers=headers)
    assert data == BODY and reader.decoded_length == len(BODY)


# -- a tiny S3 on 127.0.0.1, driven by real clients ----------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    raw_body: bytearray = field(default_factory=bytearray)
    body: bytes = b""
    error: str | None = None
    checksums: dict[str, str] = field(default_factory=dict)
    content_sha256: str = ""


class Tee:
    """Passes a StreamReader through, keeping a copy of what was read (the wire body)."""

    def __init__(self, stream: Any, sink: bytearray) -> None:
        self._stream, self._sink = stream, sink

    async def read(self, n: int = -1) -> bytes:
        data = await self._stream.read(n)
        self._sink += data
        return data

    async def readline(self) -> bytes:
        data = await self._stream.readline()
        self._sink += data
        return data

    async def readexactly(self, n: int) -> bytes:
        data = await self._stream.readexactly(n)
        self._sink += data
        return data


def _error_response(err: S3Error) -> web.Response:
    body = f"<Error><Code>{err.code}</Code><Message>{escape(err.message)}</Message></Error>"
    return web.Response(status=err.status, body=body, content_type="application/xml")


class MiniS3:
    """Just enough S3 for the clients under test; every request is authenticated and
    every body read through PayloadReader straight from aiohttp's stream."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.parts: dict[int, bytes] = {}
        self.seen: list[Seen] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path, _, query = request.raw_path.partition("?")
        seen = Seen(request.method, path, query, list(request.headers.items()))
        self.seen.append(seen)
        try:
            ctx = authenticate(request.method, path, query, request.headers, USERS)
            seen.content_sha256 = ctx.content_sha256
            reader = PayloadReader(
                Tee(request.content, seen.raw_body), request.headers, ctx, method=request.method
            )
            seen.body = b"".join([chunk async for chunk in reader])
            seen.checksums = reader.checksums
        except S3Error as err:
            seen.error = err.code
            return _error_response(err)
        return self._respond(
            request.method, unquote(path), dict(parse_qsl(query, True)), seen, reader
        )

    def _respond(
        self, method: str, path: str, query: dict[str, str], seen: Seen, reader: PayloadReader
    ) -> web.Response:
        etag = f'"{reader.md5_hex}"'
        sums = {f"x-amz-checksum-{a}": v for a, v in reader.checksums.items()}
        if method == "PUT" and "partNumber" in query:
            self.parts[int(query["partNumber"])] = seen.body
            return web.Response(headers={"ETag": etag, **sums})
        if method == "PUT":
            self.objects[path] = seen.body
            return web.Response(headers={"ETag": etag, **sums})
        if method == "POST" and "uploads" in query:
            bucket, _, key = path[1:].partition("/")
            xml = (
                "<InitiateMultipartUploadResult><Bucket>"
                f"{escape(bucket)}</Bucket><Key>{escape(key)}</Key><UploadId>up1</UploadId>"
                "</InitiateMultipartUploadResult>"
            )
            return web.Response(body=xml, content_type="application/xml")
        if method == "POST" and "uploadId" in query:
            self.objects[path] = b"".join(self.parts[n] for n in sorted(self.parts))
            self.parts.clear()
            bucket, _, key = path[1:].partition("/")
            xml = (
                f"<CompleteMultipartUploadResult><Bucket>{escape(bucket)}</Bucket>"
                f"<Key>{escape(key)}</Key><ETag>&quot;x-2&quot;</ETag>"
                "</CompleteMultipartUploadResult>"
            )
            return web.Response(body=xml, content_type="application/xml")
        if method == "POST" and "delete" in query:
            return web.Response(body="<DeleteResult/>", content_type="application/xml")
        if method in ("GET", "HEAD") and path.count("/") == 1:  # bucket listing
            prefix = path + "/" + query.get("prefix", "")
            contents = "".join(
                f"<Contents><Key>{escape(k[len(path) + 1 :])}"
                f"</Key><Size>{len(v)}</Size><ETag>&quot;{hashlib.md5(v).hexdigest()}&quot;"
                "</ETag><LastModified>2024-05-01T12:00:00.000Z</LastModified></Contents>"
                for k, v in sorted(self.objects.items())
                if k.startswith(prefix)
            )
            xml = (
                f"<ListBucketResult><Name>{escape(path[1:])}</Name><KeyCount>"
                f"{contents.count('<Contents>')}</KeyCount><IsTruncated>false</IsTruncated>"
                f"{contents}</ListBucketResult>"
            )
            return web.Response(body=xml, content_type="application/xml")
        if method in ("GET", "HEAD"):
            if path not in self.objects:
                return _error_response(S3Error("NoSuchKey"))
            data = self.objects[path]
            headers = {
                "ETag": f'"{hashlib.md5(data).hexdigest()}"',
                "Last-Modified": "Wed, 01 May 2024 12:00:00 GMT",
            }
            if method == "HEAD":
                headers["Content-Length"] = str(len(data))
                return web.Response(headers=headers)
            return web.Response(body=data, headers=headers, content_type="application/octet-stream")
        if method == "DELETE":
            self.objects.pop(path, None)
            return web.Response(status=204)
        return _error_response(S3Error("NotImplemented"))


class ServerThread:
    """The MiniS3 app on its own event loop thread, so blocking clients can call it."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.s3 = MiniS3()
        self._ssl = ssl_context
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self.s3.handle)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())

    def __enter__(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def endpoint(self) -> str:
        return f"{'https' if self._ssl else 'http'}://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def http_server() -> Iterator[ServerThread]:
    with ServerThread() as server:
        yield server


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def https_server(tls: tuple[Path, Path]) -> Iterator[ServerThread]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls)
    with ServerThread(context) as server:
        yield server


def _boto3(endpoint: str, *, verify: Any = None, secret: str = SECRET_KEY, **config: Any) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        verify=verify,
        config=Config(
            retries={"total_max_attempts": 1},
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            **config,
        ),
    )


KEYS = ["plain", "with space/ünï 日本.bin", "a+b=c&d", "100%", "~x!*'()", "dir//x"]


def test_boto3_http_roundtrip(http_server: ServerThread) -> None:
    s3 = _boto3(http_server.endpoint)
    for key in KEYS:
        data = os.urandom(1000) + key.encode()
        s3.put_object(Bucket="bkt", Key=key, Body=data)
        seen = http_server.s3.seen[-1]
        assert seen.error is None
        # over plain HTTP botocore signs the payload and sends a CRC32 header
        assert seen.content_sha256 == hashlib.sha256(data).hexdigest()
        assert seen.checksums == {"crc32": client.checksum_value("crc32", data)}
        assert s3.get_object(Bucket="bkt", Key=key)["Body"].read() == data
    listing = s3.list_objects_v2(Bucket="bkt", Prefix="with space/")
    assert [o["Key"] for o in listing["Contents"]] == ["with space/ünï 日本.bin"]
    s3.delete_objects(Bucket="bkt", Delete={"Objects": [{"Key": k} for k in KEYS]})
    assert http_server.s3.seen[-1].error is None
    s3.delete_object(Bucket="bkt", Key="plain")


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"])
def test_boto3_https_aws_chunked_trailer(
    https_server: ServerThread, tls: tuple[Path, Path], algorithm: str
) -> None:
    s3 = _boto3(https_server.endpoint, verify=str(tls[0]))
    data = os.urandom(2 * 1024 * 1024 + 123)  # several 1 MiB aws-chunks
    s3.put_object(Bucket="bkt", Key=f"t/{algorithm}", Body=data, ChecksumAlgorithm=algorithm)
    seen = https_server.s3.seen[-1]
    assert seen.error is None
    assert seen.content_sha256 == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    wire = CIMultiDict(seen.headers)
    assert wire["x-amz-trailer"] == f"x-amz-checksum-{algorithm.lower()}"
    assert "Content-Length" not in wire  # HTTP chunked transfer around aws-chunked
    assert seen.body == data
    assert seen.checksums == {algorithm.lower(): client.checksum_value(algorithm.lower(), data)}


def test_boto3_trailer_body_replayed_with_tampering(
    https_server: ServerThread, tls: tuple[Path, Path]
) -> None:
    s3 = _boto3(https_server.endpoint, verify=str(tls[0]))
    data = os.urandom(300_000)
    s3.put_object(Bucket="bkt", Key="replay", Body=data)  # default CRC32 trailer
    seen = https_server.s3.seen[-1]
    assert seen.error is None
    raw = bytes(seen.raw_body)
    assert raw.endswith(b"\r\n\r\n") and b"x-amz-checksum-crc32:" in raw
    headers = CIMultiDict(seen.headers)
    path, query = seen.path, seen.query
    ctx = authenticate("PUT", path, query, headers, USERS)

    async def replay(body: bytes) -> bytes:
        reader = PayloadReader(make_stream(body, piece=8192), headers, ctx)
        return b"".join([c async for c in reader])

    assert asyncio.run(replay(raw)) == data
    value = raw[raw.index(b"x-amz-checksum-crc32:") + 21 :].split(b"\r\n")[0]
    wrong = client.checksum_value("crc32", data + b"!").encode()
    with pytest.raises(S3Error) as info:
        asyncio.run(replay(raw.replace(value, wrong)))
    assert info.value.code == "BadDigest"
    assert info.value.message == "The CRC32 you specified did not match the calculated checksum."
    flipped = bytearray(raw)
    flipped[100] ^= 1
    with pytest.raises(S3Error) as info:
        asyncio.run(replay(bytes(flipped)))
    assert info.value.code == "BadDigest"


def test_boto3_multipart_upload(https_server: ServerThread, tls: tuple[Path, Path]) -> None:
    from boto3.s3.transfer import TransferConfig

    s3 = _boto3(https_server.endpoint, verify=str(tls[0]))
    data = os.urandom(6 * 1024 * 1024)
    config = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024**2)
    import io

    s3.upload_fileobj(io.BytesIO(data), "bkt", "multi part", Config=config)
    parts = [s for s in https_server.s3.seen if "partNumber=" in s.query]
    assert len(parts) >= 2 and all(p.error is None for p in parts)
    assert https_server.s3.objects["/bkt/multi part"] == data


def test_boto3_errors_surface(http_server: ServerThread) -> None:
    from botocore.exceptions import ClientError

    s3 = _boto3(http_server.endpoint, secret="not-the-secret")
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket="bkt", Key="k", Body=b"x")
    assert info.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    s3 = _boto3(http_server.endpoint)
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket="bkt", Key="k", Body=b"x", ContentMD5=_b64md5(b"y"))
    assert info.value.response["Error"]["Code"] == "BadDigest"
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket="bkt", Key="k", Body=b"x", ChecksumCRC32C="AAAAAA==")
    assert info.value.response["Error"]["Code"] == "BadDigest"


def test_presigned_urls_through_http_clients(http_server: ServerThread) -> None:
    import requests

    s3 = _boto3(http_server.endpoint)
    for key in KEYS:
        data = key.encode() * 3
        put = s3.generate_presigned_url(
            "put_object", Params={"Bucket": "pre", "Key": key}, ExpiresIn=60
        )
        response = requests.put(put, data=data, timeout=10)
        assert response.status_code == 200, response.text
        get = s3.generate_presigned_url(
            "get_object", Params={"Bucket": "pre", "Key": key}, ExpiresIn=60
        )
        with urllib.request.urlopen(get, timeout=10) as answer:
            assert answer.read() == data
        assert requests.get(get, timeout=10).content == data

        async def fetch(url: str) -> tuple[int, bytes]:
            import aiohttp

            async with aiohttp.ClientSession() as session, session.get(url) as answer:
                return answer.status, await answer.read()

        assert asyncio.run(fetch(get)) == (200, data)  # yarl re-quotes the URL


def test_presigned_expired_over_http(http_server: ServerThread) -> None:
    import requests

    req = client.presign(
        "GET",
        "/pre/plain",
        expires=5,
        host=f"127.0.0.1:{http_server.port}",
        now=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=60),
    )
    answer = requests.get(f"{http_server.endpoint}{req.target}", timeout=10)
    assert answer.status_code == 403 and b"Request has expired" in answer.content


def test_raw_streaming_requests_over_http(http_server: ServerThread) -> None:
    """Signed aws-chunked bodies from the test client, through a real socket."""
    import requests

    host = f"127.0.0.1:{http_server.port}"
    data = os.urandom(150_000)
    for mode in client.MODES:
        req = client.sign("PUT", f"/raw/{mode}", body=data, mode=mode, checksum="sha256", host=host)
        answer = requests.put(
            f"{http_server.endpoint}{req.target}",
            data=req.body,
            headers=dict(req.headers),
            timeout=10,
        )
        assert answer.status_code == 200, (mode, answer.text)
        assert http_server.s3.objects[f"/raw/{mode}"] == data
        bad = client.sign(
            "PUT",
            f"/raw/bad-{mode}",
            body=data,
            mode=mode,
            checksum="sha256",
            host=host,
            tamper_checksum=True,
        )
        answer = requests.put(
            f"{http_server.endpoint}{bad.target}",
            data=bad.body,
            headers=dict(bad.headers),
            timeout=10,
        )
        assert answer.status_code == 400 and b"BadDigest" in answer.content
        assert f"/raw/bad-{mode}" not in http_server.s3.objects


def test_s3fs(http_server: ServerThread) -> None:
    s3fs = pytest.importorskip("s3fs")
    fs = s3fs.S3FileSystem(
        key=ACCESS_KEY,
        secret=SECRET_KEY,
        client_kwargs={"endpoint_url": http_server.endpoint, "region_name": "us-east-1"},
        skip_instance_cache=True,
    )
    data = os.urandom(50_000)
    fs.pipe("fsb/dir/ü file.bin", data)
    assert http_server.s3.objects["/fsb/dir/ü file.bin"] == data
    assert fs.cat("fsb/dir/ü file.bin") == data


def test_aws_cli(http_server: ServerThread, tmp_path: Path) -> None:
    source = tmp_path / "in file.bin"
    data = os.urandom(70_000)
    source.write_bytes(data)
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }
    base = [require_executable("aws", "awscli"), "--endpoint-url", http_server.endpoint]
    started = time.monotonic()
    done = subprocess.run(
        [*base, "s3", "cp", str(source), "s3://cli/up+load ü.bin"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert http_server.s3.objects["/cli/up+load ü.bin"] == data
    target = tmp_path / "out.bin"
    done = subprocess.run(
        [*base, "s3api", "get-object", "--bucket", "cli", "--key", "up+load ü.bin", str(target)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == data
    assert time.monotonic() - started < 30
