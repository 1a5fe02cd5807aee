"""Verifying reader for S3 request bodies: payload hash, aws-chunked signatures, checksums.

The backend commits an object only when the body iterator ends cleanly, so every
check that can fail runs *before* the last chunk is handed out: a consumer that
has received all the bytes has received verified bytes, and any failure surfaces
as an S3Error raised from the iterator, never as a normal end. Memory stays
bounded (one chunk of at most 1 MiB is held back), and all hashing runs in C on
whole blocks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

from ..errors import S3Error
from ..sigv4 import sign_hex, signatures_equal
from .auth import (
    EMPTY_SHA256,
    STREAMING_PAYLOAD,
    STREAMING_PAYLOAD_TRAILER,
    STREAMING_UNSIGNED_TRAILER,
    UNSIGNED_PAYLOAD,
    AuthContext,
    is_valid_content_sha256,
)
from .checksums import ALGORITHMS, Checksum, is_valid_b64, new_checksum

try:  # aiohttp raises this from readline() on an over-long line
    from aiohttp.http_exceptions import LineTooLong as _LineTooLong
except ImportError:  # pragma: no cover - aiohttp is a dependency
    _LineTooLong = ValueError  # type: ignore[assignment,misc]

READ_SIZE = 1024 * 1024
MAX_CHUNK_LINE = 4096
_CHECKSUM_PREFIX = "x-amz-checksum-"
_NON_ALGORITHM_SUFFIXES = frozenset({"algorithm", "type", "mode"})
_HEX_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")
_HEX64 = re.compile(rb"[0-9a-fA-F]{64}")
_DIGITS = re.compile(r"\d{1,19}")


class BodyStream(Protocol):
    """The part of aiohttp's StreamReader the reader uses (EOF => b"")."""

    async def read(self, n: int = -1) -> bytes: ...

    async def readline(self) -> bytes: ...

    async def readexactly(self, n: int) -> bytes: ...


def _invalid(message: str) -> S3Error:
    return S3Error("InvalidRequest", message)


def _incomplete(message: str | None = None) -> S3Error:
    return S3Error("IncompleteBody", message)


def _malformed_trailer(message: str) -> S3Error:
    # Not (yet) in the shared error table, hence the explicit status.
    return S3Error("MalformedTrailerError", message, status=400)


def _parse_length(value: str, name: str) -> int:
    value = value.strip()
    if not _DIGITS.fullmatch(value):
        raise S3Error(
            "InvalidArgument", f"Invalid {name}", ArgumentName=name, ArgumentValue=value[:100]
        )
    return int(value)


def stored_content_encoding(value: str | None) -> str | None:
    """The Content-Encoding to keep with an object: S3 drops the aws-chunked coding,
    which only describes how this request's body travelled (None if nothing is left)."""
    if value is None:
        return None
    codings = [c.strip() for c in value.split(",")]
    kept = [c for c in codings if c and c.lower() != "aws-chunked"]
    return ",".join(kept) if kept else None


class PayloadReader:
    """Decoded, verified request body as an async iterator of chunks (each <= 1 MiB).

    Header problems raise from the constructor, before any body byte is read.
    `md5_hex` and `checksums` become available once iteration ends cleanly.
    `method`, when given, lets a body-carrying PUT without a length be refused
    (HTTP reads a request without Content-Length or chunking as an empty body).
    A body sent with `Transfer-Encoding: chunked` and no length is read to its end
    (`decoded_length` None), never past `max_size`.
    `body_checksum_headers=False` leaves x-amz-checksum-<algorithm> headers alone:
    on CompleteMultipartUpload they describe the object, not the request body.
    """

    decoded_length: int | None

    def __init__(
        self,
        stream: BodyStream,
        headers: Mapping[str, str],
        auth: AuthContext,
        *,
        max_size: int = 5 * 1024**4,
        method: str | None = None,
        body_checksum_headers: bool = True,
    ) -> None:
        self._stream = stream
        self._max_size = max_size
        self._auth = auth
        self._started = False
        self._done = False
        self._md5_hex = ""
        self._checksums: dict[str, str] = {}

        mode = auth.content_sha256
        if not is_valid_content_sha256(mode):
            raise S3Error(
                "InvalidArgument",
                "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, "
                "STREAMING-UNSIGNED-PAYLOAD-TRAILER, STREAMING-AWS4-HMAC-SHA256-PAYLOAD, "
                "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER or a valid sha256 value.",
                ArgumentName="x-amz-content-sha256",
                ArgumentValue=mode[:100],
            )
        self._mode = mode
        self._chunked = mode.startswith("STREAMING-")
        self._signed_chunks = mode in (STREAMING_PAYLOAD, STREAMING_PAYLOAD_TRAILER)
        self._trailer_mode = mode in (STREAMING_PAYLOAD_TRAILER, STREAMING_UNSIGNED_TRAILER)
        self._expected_sha256 = (
            mode.lower() if not self._chunked and mode != UNSIGNED_PAYLOAD else None
        )

        self._content_md5 = self._parse_content_md5(headers.get("Content-MD5"))
        self._expected: dict[str, list[str]] = {}
        wanted = self._parse_checksum_headers(headers) if body_checksum_headers else set()
        self._trailer_algorithms = self._parse_trailer_header(headers.get("x-amz-trailer"))
        wanted.update(self._trailer_algorithms)

        self.decoded_length = self._parse_lengths(headers, method)
        if self.decoded_length is not None and self.decoded_length > max_size:
            raise S3Error(
                "EntityTooLarge",
                ProposedSize=str(self.decoded_length),
                MaxSizeAllowed=str(max_size),
            )

        self._md5 = hashlib.md5()
        self._sums: dict[str, Checksum] = {a: new_checksum(a) for a in ALGORITHMS if a in wanted}
        self._sha256 = hashlib.sha256() if self._expected_sha256 else None
        self._updaters: list[Callable[[Any], None]] = []
        self._set_updaters()

    def _set_updaters(self) -> None:
        updaters: list[Callable[[Any], None]] = [self._md5.update]
        if self._sha256 is not None:
            updaters.append(self._sha256.update)
        updaters.extend(c.update for c in self._sums.values())
        self._updaters = updaters

    def compute(self, algorithm: str) -> None:
        """Also compute `algorithm` over the body (e.g. a multipart upload's own)."""
        if self._started:
            raise RuntimeError("checksums must be chosen before the body is read")
        if algorithm not in self._sums:
            self._sums[algorithm] = new_checksum(algorithm)
            self._set_updaters()

    # -- header validation ---------------------------------------------------------------

    @staticmethod
    def _parse_content_md5(value: str | None) -> bytes | None:
        if value is None:
            return None
        try:
            raw = base64.b64decode(value.strip().encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError, binascii.Error):
            raw = b""
        if len(raw) != 16:
            raise S3Error("InvalidDigest")
        return raw

    def _parse_checksum_headers(self, headers: Mapping[str, str]) -> set[str]:
        wanted: set[str] = set()
        seen: list[str] = []
        for name in {n.lower() for n in headers.keys()}:
            if not name.startswith(_CHECKSUM_PREFIX):
                continue
            suffix = name[len(_CHECKSUM_PREFIX) :]
            if suffix in _NON_ALGORITHM_SUFFIXES:
                continue
            if suffix not in ALGORITHMS:
                raise S3Error(
                    "InvalidArgument",
                    "Checksum algorithm provided is unsupported. Please try again with any of "
                    "the valid types: [CRC32, CRC32C, CRC64NVME, SHA1, SHA256]",
                    ArgumentName=name,
                )
            value = (headers.get(name) or "").strip()
            if not is_valid_b64(suffix, value):
                # A value that cannot be the digest cannot match it: BadDigest, as
                # SeaweedFS and Ceph answer (and the ceph/s3-tests suite expects).
                raise S3Error("BadDigest", f"Value for {name} header is invalid.")
            seen.append(suffix)
            self._expected.setdefault(suffix, []).append(value)
            wanted.add(suffix)
        if len(seen) > 1:
            raise _invalid(
                "Expecting a single x-amz-checksum- header. "
                "Multiple checksum Types are not allowed."
            )
        for name in ("x-amz-sdk-checksum-algorithm", "x-amz-checksum-algorithm"):
            value = headers.get(name)
            if value is None:
                continue
            algorithm = value.strip().lower()
            if algorithm not in ALGORITHMS:
                raise S3Error(
                    "InvalidArgument",
                    f"Value for {name} header is invalid.",
                    ArgumentName=name,
                    ArgumentValue=value[:100],
                )
            wanted.add(algorithm)
        return wanted

    def _parse_trailer_header(self, value: str | None) -> list[str]:
        if value is None:
            return []
        if not self._trailer_mode:
            raise _invalid(
                "x-amz-trailer requires x-amz-content-sha256 "
                f"{STREAMING_UNSIGNED_TRAILER} or {STREAMING_PAYLOAD_TRAILER}."
            )
        algorithms = []
        for name in value.split(","):
            name = name.strip().lower()
            if not name.startswith(_CHECKSUM_PREFIX):
                continue  # other trailers are allowed; only the signature covers them
            algorithm = name[len(_CHECKSUM_PREFIX) :]
            if algorithm not in ALGORITHMS:
                raise S3Error(
                    "InvalidArgument",
                    "The value specified in the x-amz-trailer header is not supported",
                    ArgumentName="x-amz-trailer",
                    ArgumentValue=value[:100],
                )
            algorithms.append(algorithm)
        return algorithms

    def _parse_lengths(self, headers: Mapping[str, str], method: str | None) -> int | None:
        raw_length = headers.get("Content-Length")
        content_length = (
            _parse_length(raw_length, "Content-Length") if raw_length is not None else None
        )
        if self._chunked:
            decoded = headers.get("x-amz-decoded-content-length")
            if decoded is None:
                raise S3Error(
                    "MissingContentLength",
                    "You must provide the x-amz-decoded-content-length header "
                    "with an aws-chunked body.",
                )
            return _parse_length(decoded, "x-amz-decoded-content-length")
        if content_length is not None:
            return content_length
        if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
            return None  # HTTP chunked framing: the length is known at the end
        if (method or "").upper() == "PUT":
            raise S3Error("MissingContentLength")
        return 0  # HTTP: no Content-Length and no chunking means no body

    # -- results -------------------------------------------------------------------------

    @property
    def md5_hex(self) -> str:
        """Hex MD5 of the decoded body (the ETag of a single PUT)."""
        if not self._done:
            raise RuntimeError("md5_hex is known only after the payload was read to the end")
        return self._md5_hex

    @property
    def checksums(self) -> dict[str, str]:
        """algorithm -> base64 for every algorithm the client sent or asked for."""
        if not self._done:
            raise RuntimeError("checksums are known only after the payload was read to the end")
        return dict(self._checksums)

    # -- iteration -----------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._started:
            raise RuntimeError("a payload can be read only once")
        self._started = True
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        source = self._read_chunked() if self._chunked else self._read_plain()
        pending: bytes | None = None
        try:
            async for piece in source:
                if pending is not None:
                    yield pending
                pending = piece
        finally:
            await source.aclose()
        self._finish()
        if pending is not None:
            yield pending

    async def _ensure_eof(self) -> None:
        if await self._stream.read(1):
            raise _invalid("The request body is longer than its declared length.")

    async def _read_plain(self) -> AsyncIterator[bytes]:
        if self.decoded_length is None:
            async for data in self._read_to_eof():
                yield data
            return
        remaining = self.decoded_length
        read = self._stream.read
        updaters = self._updaters
        while remaining > 0:
            data = await read(min(remaining, READ_SIZE))
            if not data:
                raise _incomplete()
            remaining -= len(data)
            for update in updaters:
                update(data)
            yield data
        await self._ensure_eof()

    async def _read_to_eof(self) -> AsyncIterator[bytes]:
        """A body of unknown length (HTTP chunked framing, already decoded by aiohttp)."""
        read = self._stream.read
        updaters = self._updaters
        size = 0
        while True:
            data = await read(READ_SIZE)
            if not data:
                return
            size += len(data)
            if size > self._max_size:
                raise S3Error("EntityTooLarge", ProposedSize=str(size),
                              MaxSizeAllowed=str(self._max_size))
            for update in updaters:
                update(data)
            yield data

    async def _line(self, *, eof_ok: bool = False) -> bytes:
        try:
            line = await self._stream.readline()
        except (ValueError, _LineTooLong) as exc:
            raise _invalid("Malformed aws-chunked encoding: line too long.") from exc
        if not line.endswith(b"\n"):
            if not line and eof_ok:
                return b""
            raise _incomplete("The aws-chunked body ended before its final chunk.")
        if len(line) > MAX_CHUNK_LINE:
            raise _invalid("Malformed aws-chunked encoding: line too long.")
        return line

    def _parse_chunk_header(self, line: bytes) -> tuple[int, bytes]:
        text = line.rstrip(b"\r\n")
        size_part, _, extensions = text.partition(b";")
        size_part = size_part.strip()
        if not _HEX_SIZE.fullmatch(size_part):
            raise _invalid("Malformed aws-chunked encoding: invalid chunk size.")
        signature = b""
        if self._signed_chunks:
            for extension in extensions.split(b";"):
                name, _, value = extension.partition(b"=")
                if name.strip() == b"chunk-signature":
                    signature = value.strip()
            if not _HEX64.fullmatch(signature):
                raise _invalid(
                    "Malformed aws-chunked encoding: missing or invalid chunk-signature."
                )
        return int(size_part, 16), signature

    async def _read_chunked(self) -> AsyncIterator[bytes]:
        stream = self._stream
        auth = self._auth
        updaters = self._updaters
        remaining = self.decoded_length or 0
        signed = self._signed_chunks
        previous = auth.seed_signature
        prefix = f"AWS4-HMAC-SHA256-PAYLOAD\n{auth.amz_date}\n{auth.credential_scope}\n"
        while True:
            size, signature = self._parse_chunk_header(await self._line())
            if size > remaining:
                raise _incomplete(
                    "The aws-chunked body carries more data than x-amz-decoded-content-length."
                )
            chunk_hash = hashlib.sha256() if signed else None
            left = size
            while left:
                data = await stream.read(min(left, READ_SIZE))
                if not data:
                    raise _incomplete()
                left -= len(data)
                for update in updaters:
                    update(data)
                if chunk_hash is not None:
                    chunk_hash.update(data)
                yield data
            remaining -= size
            if chunk_hash is not None:
                expected = sign_hex(
                    auth.signing_key,
                    f"{prefix}{previous}\n{EMPTY_SHA256}\n{chunk_hash.hexdigest()}",
                )
                if not signatures_equal(expected, signature.decode("ascii")):
                    raise S3Error(
                        "SignatureDoesNotMatch",
                        "The chunk signature we calculated does not match the signature "
                        "you provided.",
                    )
                previous = expected
            if size == 0:
                break
            try:
                crlf = await stream.readexactly(2)
            except EOFError as exc:  # asyncio.IncompleteReadError
                raise _incomplete() from exc
            if crlf != b"\r\n":
                raise _invalid("Malformed aws-chunked encoding: chunk data not followed by CRLF.")
        if remaining:
            raise _incomplete(
                "The aws-chunked body carries less data than x-amz-decoded-content-length."
            )
        if self._trailer_mode:
            await self._read_trailers(previous)
        else:
            line = await self._line(eof_ok=True)
            if line not in (b"", b"\r\n", b"\n"):
                raise _invalid("Malformed aws-chunked encoding: data after the final chunk.")
        await self._ensure_eof()

    async def _read_trailers(self, previous: str) -> None:
        trailers: list[tuple[str, str]] = []
        signature: str | None = None
        while True:
            line = await self._line(eof_ok=True)
            if line in (b"", b"\r\n", b"\n"):
                break
            try:
                text = line.rstrip(b"\r\n").decode("ascii")
            except UnicodeDecodeError:
                raise _malformed_trailer("The trailing headers are not valid ASCII.") from None
            name, sep, value = text.partition(":")
            if not sep:
                raise _malformed_trailer(f"Malformed trailing header: {text[:100]!r}")
            name, value = name.strip().lower(), value.strip()
            if name == "x-amz-trailer-signature":
                if signature is not None:
                    raise _malformed_trailer("More than one x-amz-trailer-signature.")
                signature = value
            else:
                trailers.append((name, value))
        if self._signed_chunks:
            if signature is None or not _HEX64.fullmatch(signature.encode("ascii")):
                raise S3Error(
                    "SignatureDoesNotMatch",
                    "The trailing headers carry no x-amz-trailer-signature.",
                )
            canonical = "".join(f"{n}:{v}\n" for n, v in trailers).encode("utf-8")
            auth = self._auth
            expected = sign_hex(
                auth.signing_key,
                f"AWS4-HMAC-SHA256-TRAILER\n{auth.amz_date}\n{auth.credential_scope}\n"
                f"{previous}\n{hashlib.sha256(canonical).hexdigest()}",
            )
            if not signatures_equal(expected, signature):
                raise S3Error(
                    "SignatureDoesNotMatch",
                    "The trailer signature we calculated does not match the signature "
                    "you provided.",
                )
        received = set()
        for name, value in trailers:
            if not name.startswith(_CHECKSUM_PREFIX):
                continue
            algorithm = name[len(_CHECKSUM_PREFIX) :]
            if algorithm not in self._trailer_algorithms:
                raise _malformed_trailer(f"The trailing header {name} was not declared.")
            if algorithm in received:
                raise _malformed_trailer(f"The trailing header {name} was sent twice.")
            if not is_valid_b64(algorithm, value):
                raise S3Error("BadDigest", f"Value for {name} trailing header is invalid.")
            received.add(algorithm)
            self._expected.setdefault(algorithm, []).append(value)
        for algorithm in self._trailer_algorithms:
            if algorithm not in received:
                raise _malformed_trailer(
                    f"The trailing header x-amz-checksum-{algorithm} was declared but not sent."
                )

    def _finish(self) -> None:
        if self._sha256 is not None:
            computed = self._sha256.hexdigest()
            if computed != self._expected_sha256:
                raise S3Error(
                    "XAmzContentSHA256Mismatch",
                    ClientComputedContentSHA256=self._expected_sha256 or "",
                    S3ComputedContentSHA256=computed,
                )
        md5 = self._md5.digest()
        if self._content_md5 is not None and md5 != self._content_md5:
            raise S3Error(
                "BadDigest",
                ExpectedDigest=base64.b64encode(self._content_md5).decode("ascii"),
                CalculatedDigest=base64.b64encode(md5).decode("ascii"),
            )
        results = {}
        for algorithm, checksum in self._sums.items():
            value = checksum.b64()
            for expected in self._expected.get(algorithm, ()):
                if expected != value:
                    raise S3Error(
                        "BadDigest",
                        f"The {algorithm.upper()} you specified did not match the "
                        "calculated checksum.",
                    )
            results[algorithm] = value
        self._md5_hex = md5.hex()
        self._checksums = results
        self._done = True
