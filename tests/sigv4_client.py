"""Test-only SigV4 client: crafts raw S3 requests, honest or tampered.

Written from the AWS documentation independently of s3latent.s3api.auth (it shares no
code with it), so a bug in one shows up as a disagreement with the other; the
tests also check it against botocore's own signer. Checksums come from botocore's
checksum classes, not from s3latent.s3api.checksums, for the same reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from unittest import mock

from aiohttp import StreamReader
from botocore import httpchecksum
from multidict import CIMultiDict

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
REGION = "us-east-1"
HOST = "127.0.0.1:9000"
USERS = {ACCESS_KEY: SECRET_KEY}

UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
EMPTY_HASH = hashlib.sha256(b"").hexdigest()

# payload mode -> x-amz-content-sha256 value (None: the body's SHA-256)
MODES = {
    "sha256": None,
    "unsigned": "UNSIGNED-PAYLOAD",
    "streaming": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    "streaming-trailer": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
    "unsigned-trailer": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
}

_CHECKSUM_CLASSES = {
    "crc32": httpchecksum.CrtCrc32Checksum,
    "crc32c": httpchecksum.CrtCrc32cChecksum,
    "crc64nvme": httpchecksum.CrtCrc64NvmeChecksum,
    "sha1": httpchecksum.Sha1Checksum,
    "sha256": httpchecksum.Sha256Checksum,
}


def checksum_value(algorithm: str, data: bytes) -> str:
    """x-amz-checksum-* value of `data`, computed by botocore."""
    checksum = _CHECKSUM_CLASSES[algorithm]()
    checksum.update(data)
    return checksum.b64digest()


def uri_encode(text: str, *, keep_slash: bool) -> str:
    """RFC 3986 percent-encoding of UTF-8 bytes, as the SigV4 docs define UriEncode()."""
    out = []
    for byte in text.encode("utf-8"):
        if byte in UNRESERVED or (keep_slash and byte == 0x2F):
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def key_path(bucket: str, key: str | None = None) -> str:
    """The path botocore sends for a bucket/key (path style, key percent-encoded)."""
    path = "/" + uri_encode(bucket, keep_slash=False)
    if key is not None:
        path += "/" + uri_encode(key, keep_slash=True)
    return path


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def derive_key(secret: str, date: str, region: str = REGION, service: str = "s3") -> bytes:
    k = _hmac(("AWS4" + secret).encode("utf-8"), date)
    k = _hmac(k, region)
    k = _hmac(k, service)
    return _hmac(k, "aws4_request")


def _fmt(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


QueryArg = str | Mapping[str, str] | Sequence[tuple[str, str]]


def encode_query(query: QueryArg) -> tuple[str, list[tuple[str, str]]]:
    """(wire query string, canonical pairs). A str is sent verbatim and must already be
    in canonical (RFC 3986) form; pairs are encoded here and sent in the given order."""
    if isinstance(query, str):
        pairs = []
        for part in query.split("&") if query else []:
            k, _, v = part.partition("=")
            pairs.append((k, v))
        return query, pairs
    items = list(query.items()) if isinstance(query, Mapping) else list(query)
    pairs = [(uri_encode(k, keep_slash=False), uri_encode(v, keep_slash=False)) for k, v in items]
    return "&".join(f"{k}={v}" for k, v in pairs), pairs


def canonical_request(
    method: str,
    canonical_uri: str,
    pairs: Iterable[tuple[str, str]],
    headers: Sequence[tuple[str, str]],
    signed: Sequence[str],
    payload_hash: str,
) -> str:
    query = "&".join(f"{k}={v}" for k, v in sorted(pairs))
    values: dict[str, list[str]] = {}
    for name, value in headers:
        values.setdefault(name.lower(), []).append(" ".join(value.strip().split()))
    block = "".join(f"{n}:{','.join(values.get(n, []))}\n" for n in signed)
    return "\n".join([method, canonical_uri, query, block, ";".join(signed), payload_hash])


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{digest}"


@dataclass
class RawRequest:
    """One request as it travels on the wire."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    signature: str = ""
    signing_key: bytes = b""
    amz_date: str = ""
    scope: str = ""
    canonical: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def header_map(self) -> CIMultiDict[str]:
        return CIMultiDict(self.headers)

    @property
    def target(self) -> str:
        return self.path + ("?" + self.query if self.query else "")

    def replace_header(self, name: str, value: str | None) -> None:
        self.headers = [(n, v) for n, v in self.headers if n.lower() != name.lower()]
        if value is not None:
            self.headers.append((name, value))


def aws_chunked(
    data: bytes,
    *,
    chunk_size: int = 64 * 1024,
    signing_key: bytes | None = None,
    seed_signature: str = "",
    amz_date: str = "",
    scope: str = "",
    trailers: Sequence[tuple[str, str]] = (),
    trailer_mode: bool = False,
    tamper_chunk: int | None = None,
    tamper_trailer_signature: bool = False,
) -> bytes:
    """aws-chunked encoding of `data`; signed when `signing_key` is given.

    `trailer_mode` ends with the trailing headers (and, when signed, the trailer
    signature). `tamper_chunk` flips one hex digit of that chunk's signature.
    """
    out = bytearray()
    previous = seed_signature
    pieces = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] + [b""]
    for index, piece in enumerate(pieces):
        header = f"{len(piece):x}"
        if signing_key is not None:
            sts = (
                f"AWS4-HMAC-SHA256-PAYLOAD\n{amz_date}\n{scope}\n{previous}\n{EMPTY_HASH}\n"
                f"{hashlib.sha256(piece).hexdigest()}"
            )
            previous = hmac.new(signing_key, sts.encode(), hashlib.sha256).hexdigest()
            sent = previous
            if tamper_chunk == index:
                sent = ("0" if previous[0] != "0" else "1") + previous[1:]
            header += f";chunk-signature={sent}"
        out += header.encode() + b"\r\n" + piece
        if piece:
            out += b"\r\n"
    if trailer_mode:
        for name, value in trailers:
            out += f"{name}:{value}\r\n".encode()
        if signing_key is not None:
            canonical = "".join(f"{n}:{v}\n" for n, v in trailers)
            sts = (
                f"AWS4-HMAC-SHA256-TRAILER\n{amz_date}\n{scope}\n{previous}\n"
                f"{hashlib.sha256(canonical.encode()).hexdigest()}"
            )
            signature = hmac.new(signing_key, sts.encode(), hashlib.sha256).hexdigest()
            if tamper_trailer_signature:
                signature = ("0" if signature[0] != "0" else "1") + signature[1:]
            out += f"x-amz-trailer-signature:{signature}\r\n".encode()
    out += b"\r\n"
    return bytes(out)


def sign(
    method: str,
    path: str,
    *,
    query: QueryArg = "",
    headers: Sequence[tuple[str, str]] | Mapping[str, str] = (),
    body: bytes = b"",
    mode: str = "sha256",
    checksum: str | None = None,
    chunk_size: int = 64 * 1024,
    access_key: str = ACCESS_KEY,
    secret: str = SECRET_KEY,
    region: str = REGION,
    host: str = HOST,
    now: datetime | None = None,
    use_date_header: bool = False,
    canonical_uri: str | None = None,
    unsigned_headers: Sequence[str] = (),
    tamper_chunk: int | None = None,
    tamper_checksum: bool = False,
    tamper_trailer_signature: bool = False,
) -> RawRequest:
    """A header-signed request in any payload mode.

    `checksum` adds x-amz-checksum-<alg> (a header, or the trailer in trailer modes);
    `tamper_checksum` sends a wrong value for it. `canonical_uri` signs a different
    spelling of the path than the one sent. `unsigned_headers` are sent but left
    out of SignedHeaders.
    """
    now = now or datetime.now(UTC)
    amz_date = _fmt(now)
    date = amz_date[:8]
    scope = f"{date}/{region}/s3/aws4_request"
    key = derive_key(secret, date, region)
    wire_query, pairs = encode_query(query)
    hdrs: list[tuple[str, str]] = [("Host", host)]
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    hdrs.extend(items)
    if use_date_header:
        hdrs.append(("Date", format_datetime(now.astimezone(UTC), usegmt=True)))
    else:
        hdrs.append(("X-Amz-Date", amz_date))

    content_sha = MODES[mode]
    chunked = content_sha is not None and content_sha.startswith("STREAMING-")
    trailer_mode = mode.endswith("-trailer")
    value = checksum_value(checksum, body) if checksum else None
    if value is not None and tamper_checksum:
        value = checksum_value(checksum, body + b"x")  # type: ignore[arg-type]
    if content_sha is None:
        content_sha = hashlib.sha256(body).hexdigest()
    hdrs.append(("x-amz-content-sha256", content_sha))
    if checksum:
        hdrs.append(("x-amz-sdk-checksum-algorithm", checksum.upper()))
        if trailer_mode:
            hdrs.append(("x-amz-trailer", f"x-amz-checksum-{checksum}"))
        else:
            hdrs.append((f"x-amz-checksum-{checksum}", value or ""))
    if chunked:
        hdrs.append(("Content-Encoding", "aws-chunked"))
        hdrs.append(("x-amz-decoded-content-length", str(len(body))))

    # Content-Length depends on the encoded body, which depends on the seed
    # signature; the encoded length does not depend on signature values, so
    # measure it with a dummy encoding first.
    def encode(seed: str) -> bytes:
        if not chunked:
            return body
        trailers = [(f"x-amz-checksum-{checksum}", value or "")] if checksum else []
        return aws_chunked(
            body,
            chunk_size=chunk_size,
            signing_key=key if mode.startswith("streaming") else None,
            seed_signature=seed,
            amz_date=amz_date,
            scope=scope,
            trailers=trailers,
            trailer_mode=trailer_mode,
            tamper_chunk=tamper_chunk,
            tamper_trailer_signature=tamper_trailer_signature,
        )

    if method not in ("GET", "HEAD") or body:
        hdrs.append(("Content-Length", str(len(encode("0" * 64)))))
    skip = {h.lower() for h in unsigned_headers}
    signed = sorted({n.lower() for n, _ in hdrs} - skip)
    canonical = canonical_request(method, canonical_uri or path, pairs, hdrs, signed, content_sha)
    signature = hmac.new(
        key, string_to_sign(amz_date, scope, canonical).encode(), hashlib.sha256
    ).hexdigest()
    hdrs.append(
        (
            "Authorization",
            f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
            f"SignedHeaders={';'.join(signed)}, Signature={signature}",
        )
    )
    return RawRequest(
        method=method,
        path=path,
        query=wire_query,
        headers=hdrs,
        body=encode(signature),
        signature=signature,
        signing_key=key,
        amz_date=amz_date,
        scope=scope,
        canonical=canonical,
    )


def presign(
    method: str,
    path: str,
    *,
    query: QueryArg = "",
    headers: Sequence[tuple[str, str]] | Mapping[str, str] = (),
    expires: int | str = 3600,
    access_key: str = ACCESS_KEY,
    secret: str = SECRET_KEY,
    region: str = REGION,
    host: str = HOST,
    now: datetime | None = None,
    credential_date: str | None = None,
    algorithm: str = "AWS4-HMAC-SHA256",
) -> RawRequest:
    """A presigned-URL request; `headers` are signed too (SignedHeaders lists them)."""
    now = now or datetime.now(UTC)
    amz_date = _fmt(now)
    date = credential_date or amz_date[:8]
    scope = f"{date}/{region}/s3/aws4_request"
    key = derive_key(secret, date, region)
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    hdrs = [("Host", host), *items]
    signed = sorted({n.lower() for n, _ in hdrs})
    _, op_pairs = encode_query(query)
    auth = [
        ("X-Amz-Algorithm", algorithm),
        ("X-Amz-Credential", f"{access_key}/{scope}"),
        ("X-Amz-Date", amz_date),
        ("X-Amz-Expires", str(expires)),
        ("X-Amz-SignedHeaders", ";".join(signed)),
    ]
    pairs = op_pairs + [(k, uri_encode(v, keep_slash=False)) for k, v in auth]
    canonical = canonical_request(method, path, pairs, hdrs, signed, "UNSIGNED-PAYLOAD")
    signature = hmac.new(
        key, string_to_sign(amz_date, scope, canonical).encode(), hashlib.sha256
    ).hexdigest()
    wire = "&".join(f"{k}={v}" for k, v in [*pairs, ("X-Amz-Signature", signature)])
    return RawRequest(
        method=method,
        path=path,
        query=wire,
        headers=hdrs,
        signature=signature,
        signing_key=key,
        amz_date=amz_date,
        scope=scope,
        canonical=canonical,
    )


def make_stream(
    body: bytes, *, piece: int = 64 * 1024, eof: bool = True, limit: int = 2**16
) -> StreamReader:
    """A real aiohttp StreamReader already holding `body` (call inside a running loop).

    Data is fed in `piece`-sized parts, as the HTTP parser would; `eof=False` leaves
    the stream open, so a reader that wants more would wait forever (use timeouts).
    """
    protocol = mock.Mock(_reading_paused=False)
    stream = StreamReader(protocol, limit, loop=asyncio.get_running_loop())
    for start in range(0, len(body), piece):
        stream.feed_data(body[start : start + piece])
    if eof:
        stream.feed_eof()
    return stream
