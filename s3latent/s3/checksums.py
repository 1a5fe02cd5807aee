"""Streaming checksums with the encodings S3 uses in x-amz-checksum-* headers.

S3 carries every checksum as base64 of the big-endian digest. The CRCs use the
same fast C implementations botocore uses (zlib, awscrt), so verifying a body
costs about as much as the client spent computing it.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import Protocol

from awscrt import checksums as _crt

ALGORITHMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")

# algorithm -> digest length in bytes, to validate header values before any body byte arrives.
DIGEST_SIZES: dict[str, int] = {
    "crc32": 4,
    "crc32c": 4,
    "crc64nvme": 8,
    "sha1": 20,
    "sha256": 32,
}

Buffer = bytes | bytearray | memoryview


class Checksum(Protocol):
    """An incremental checksum; `b64()` is the x-amz-checksum-* header value."""

    algorithm: str

    def update(self, data: Buffer) -> None: ...

    def digest(self) -> bytes: ...

    def b64(self) -> str: ...


class _Base:
    __slots__ = ()
    algorithm = ""

    def digest(self) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    def b64(self) -> str:
        return base64.b64encode(self.digest()).decode("ascii")


class _Crc32(_Base):
    algorithm = "crc32"
    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: Buffer) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        return (self._value & 0xFFFFFFFF).to_bytes(4, "big")


class _Crc32c(_Base):
    algorithm = "crc32c"
    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: Buffer) -> None:
        self._value = _crt.crc32c(data, self._value)

    def digest(self) -> bytes:
        return (self._value & 0xFFFFFFFF).to_bytes(4, "big")


class _Crc64Nvme(_Base):
    algorithm = "crc64nvme"
    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: Buffer) -> None:
        self._value = _crt.crc64nvme(data, self._value)

    def digest(self) -> bytes:
        return (self._value & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")


class _Hash(_Base):
    __slots__ = ("_hash", "algorithm")

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self._hash = hashlib.new(algorithm)

    def update(self, data: Buffer) -> None:
        self._hash.update(data)

    def digest(self) -> bytes:
        return self._hash.digest()


def new_checksum(algorithm: str) -> Checksum:
    """A fresh checksum for one of `ALGORITHMS` (case-insensitive); ValueError otherwise."""
    name = algorithm.lower()
    if name == "crc32":
        return _Crc32()
    if name == "crc32c":
        return _Crc32c()
    if name == "crc64nvme":
        return _Crc64Nvme()
    if name in ("sha1", "sha256"):
        return _Hash(name)
    raise ValueError(f"unsupported checksum algorithm: {algorithm!r}")


def checksum_b64(algorithm: str, data: Buffer) -> str:
    """One-shot x-amz-checksum-* value of `data`."""
    checksum = new_checksum(algorithm)
    checksum.update(data)
    return checksum.b64()


def is_valid_b64(algorithm: str, value: str) -> bool:
    """Whether `value` is a well-formed base64 digest for `algorithm`."""
    size = DIGEST_SIZES.get(algorithm)
    if size is None:
        return False
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        return False
    return len(raw) == size
