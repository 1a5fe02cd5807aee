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


# -- multipart object checksums ------------------------------------------------------

# Reflected polynomial and width of the CRCs a FULL_OBJECT multipart checksum can use.
_CRC_PARAMS: dict[str, tuple[int, int]] = {
    "crc32": (0xEDB88320, 32),
    "crc32c": (0x82F63B78, 32),
    "crc64nvme": (0x9A6C9329AC4BC9B5, 64),
}
FULL_OBJECT_ALGORITHMS = frozenset(_CRC_PARAMS)
COMPOSITE_ALGORITHMS = frozenset({"crc32", "crc32c", "sha1", "sha256"})
_X2N: dict[str, list[int]] = {}


def _multmodp(a: int, b: int, poly: int, width: int) -> int:
    """a(x) * b(x) modulo the CRC polynomial (reflected bit order), as zlib does."""
    m = 1 << (width - 1)
    p = 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                break
        m >>= 1
        b = (b >> 1) ^ poly if b & 1 else b >> 1
    return p


def _x2nmodp(algorithm: str, n: int, k: int) -> int:
    """x^(n * 2^k) modulo the polynomial of `algorithm`."""
    poly, width = _CRC_PARAMS[algorithm]
    table = _X2N.get(algorithm)
    if table is None:
        table = [1 << (width - 2)]  # x^1
        for _ in range(1, 72):
            table.append(_multmodp(table[-1], table[-1], poly, width))
        _X2N[algorithm] = table
    p = 1 << (width - 1)  # x^0
    while n:
        if n & 1:
            p = _multmodp(table[k], p, poly, width)
        n >>= 1
        k += 1
    return p


def crc_combine(algorithm: str, crc1: int, crc2: int, len2: int) -> int:
    """The CRC of A+B from crc(A), crc(B) and len(B) (zlib's crc32_combine, any width)."""
    poly, width = _CRC_PARAMS[algorithm]
    return _multmodp(_x2nmodp(algorithm, len2, 3), crc1, poly, width) ^ crc2


def multipart_checksum(algorithm: str, checksum_type: str,
                       parts: list[tuple[str, int]]) -> str:
    """The object checksum of a multipart upload from its parts' (base64 value, size).

    COMPOSITE: the checksum of the concatenated binary part checksums, then "-N".
    FULL_OBJECT: the CRC of the whole object, combined from the part CRCs.
    """
    if checksum_type == "COMPOSITE":
        combined = new_checksum(algorithm)
        for value, _ in parts:
            combined.update(base64.b64decode(value))
        return f"{combined.b64()}-{len(parts)}"
    _, width = _CRC_PARAMS[algorithm]
    crc: int | None = None
    for value, size in parts:
        part_crc = int.from_bytes(base64.b64decode(value), "big")
        crc = part_crc if crc is None else crc_combine(algorithm, crc, part_crc, size)
    return base64.b64encode((crc or 0).to_bytes(width // 8, "big")).decode("ascii")


def checksum_type_of(value: str) -> str:
    """COMPOSITE for a multipart composite value ("b64-N"), else FULL_OBJECT."""
    head, sep, count = value.rpartition("-")
    return "COMPOSITE" if sep and head and count.isdigit() else "FULL_OBJECT"
