"""The latent container: what a converted object's physical bytes are.

Layout (little-endian), fixed for every version so any reader can tell "newer" from "corrupt"::

    0   8  magic  b"\\x89S3LAT\\r\\n"  (PNG-style: non-ASCII first byte, CRLF catches text mangling)
    8   2  version
    10  2  flags (0)
    12  4  header length N
    16  4  CRC-32 of bytes 0..15 and the header
    20  N  header: compact UTF-8 JSON, sorted keys
    20+N   payload (codec output); its length and SHA-256 are in the header

Version 1 holds a compressed latent (every container written before representations existed,
and every latent container still: old readers keep reading them). Version 2 adds the header
field `kind`, naming the representation: `"avif"` holds the image itself as AVIF, followed,
for a pair, by the compressed latent its sidecar key is rebuilt from (`extra["latent"]` says
which codec, with which parameters, and how many bytes). A reader of version 1 alone refuses
version 2 as unsupported instead of misreading it; the CRC and SHA-256 rules are the same.

The header length sits in the first 20 bytes, so a 4 KiB ranged read nearly always holds the whole
header (`peek_header`); `header_span` says how much to read otherwise. The JSON carries everything
needed to answer the logical image and the logical sidecar without the payload; the backend's user
metadata mirrors the part HEAD needs (`header_to_metadata`), so HEAD reads neither.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

__all__ = [
    "MAGIC",
    "PREFIX_SIZE",
    "VERSION",
    "ContainerError",
    "ContainerHeader",
    "CorruptContainer",
    "HeadInfo",
    "IncompleteHeader",
    "SidecarInfo",
    "UnsupportedContainer",
    "header_from_metadata",
    "header_span",
    "header_to_metadata",
    "image_part",
    "is_container",
    "latent_part",
    "pack",
    "peek_header",
    "unpack",
]

MAGIC = b"\x89S3LAT\r\n"
VERSION = 1  # of latent containers (unchanged since the first)
KIND_LATENT, KIND_AVIF = "latent", "avif"
KIND_VERSIONS = {KIND_LATENT: 1, KIND_AVIF: 2}  # the version each representation is written as
VERSIONS = frozenset(KIND_VERSIONS.values())
LATENT_PART = "latent"  # in extra of an AVIF container: the sidecar's latent (codec, params, size)
PREFIX_SIZE = 20
MAX_HEADER = 1 << 20
METADATA_LIMIT = 2048  # S3: user metadata, keys + values, at most 2 KB
_PREFIX = struct.Struct("<8sHHI")


class ContainerError(ValueError):
    """Base of everything `unpack` / `peek_header` refuse."""


class CorruptContainer(ContainerError):
    """Bad magic, length, checksum or header: the bytes are damaged (or not a container)."""


class UnsupportedContainer(ContainerError):
    """A well-formed container of a version (or flags) this reader does not know."""


class IncompleteHeader(ContainerError):
    """`peek_header` got too few bytes; read at least `needed` bytes and call again."""

    def __init__(self, needed: int) -> None:
        super().__init__(f"need the first {needed} bytes of the container")
        self.needed = needed


@dataclass
class SidecarInfo:
    """The logical sidecar object answered from the container after conversion."""

    suffix: str  # appended to the image key, e.g. ".latent.safetensors"
    size: int
    etag: str
    content_type: str
    last_modified: str  # ISO 8601 UTC
    header_b64: str  # raw safetensors header (length prefix + JSON + padding), base64
    dtype: str = "bfloat16"  # the uploaded tensor's dtype
    shape: list[int] = field(default_factory=list)  # as uploaded: [C,h,w] or [1,C,h,w]

    @property
    def header_bytes(self) -> bytes:
        return base64.b64decode(self.header_b64)


@dataclass
class ContainerHeader:
    """Everything about a latent object but its payload."""

    model: str
    shape: list[int]  # latent [C, h, w]
    dtype: str  # latent dtype the codec rebuilds ("float32" | "float16" | "bfloat16")
    codec: str
    codec_params: dict[str, Any]
    size: int  # logical image: Content-Length
    etag: str  # logical image: ETag, unquoted
    content_type: str
    last_modified: str  # ISO 8601 UTC, the upload's
    image_format: str  # "png" | "jpeg" | "webp"
    encoder: dict[str, Any] = field(default_factory=dict)  # image encoder settings
    psnr: float | None = None  # fidelity measured at admission (dB; None = exact)
    render_profile: str = ""
    sidecar: SidecarInfo | None = None
    user_metadata: dict[str, str] = field(default_factory=dict)
    payload_size: int = 0  # set by pack
    payload_sha256: str = ""  # set by pack
    extra: dict[str, Any] = field(default_factory=dict)  # room for later additions
    # The representation held: "latent" (version 1, not written in the JSON) or "avif".
    kind: str = KIND_LATENT

    @property
    def version(self) -> int:
        """The container version this header is written as."""
        return KIND_VERSIONS[self.kind]


def is_container(prefix: bytes) -> bool:
    """Whether these first bytes start a container (the magic at offset 0)."""
    return bytes(prefix[: len(MAGIC)]) == MAGIC


def _header_json(header: ContainerHeader) -> bytes:
    d = dataclasses.asdict(header)
    if header.kind == KIND_LATENT:
        del d["kind"]  # latent headers stay byte-for-byte what version 1 always wrote
    return json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def pack(header: ContainerHeader, payload: bytes) -> bytes:
    """The container bytes; payload size and SHA-256 are filled in here."""
    h = dataclasses.replace(
        header, payload_size=len(payload), payload_sha256=hashlib.sha256(payload).hexdigest()
    )
    if h.kind not in KIND_VERSIONS:
        raise ContainerError(f"unknown representation {h.kind!r}")
    body = _header_json(h)
    if len(body) > MAX_HEADER:
        raise ContainerError(f"container header is {len(body)} bytes; limit {MAX_HEADER}")
    head = _PREFIX.pack(MAGIC, h.version, 0, len(body))
    crc = zlib.crc32(body, zlib.crc32(head))
    return head + struct.pack("<I", crc) + body + payload


def header_span(prefix: bytes) -> int:
    """How many leading bytes hold the whole header (needs the first 20)."""
    if len(prefix) < PREFIX_SIZE:
        raise IncompleteHeader(PREFIX_SIZE)
    magic, _version, _flags, n = _PREFIX.unpack_from(prefix, 0)
    if magic != MAGIC:
        raise CorruptContainer("not a latent container (bad magic)")
    if n > MAX_HEADER:
        raise CorruptContainer(f"header length {n} is implausible")
    return PREFIX_SIZE + n


def _parse_header(data: bytes) -> tuple[ContainerHeader, int]:
    end = header_span(data)
    if len(data) < end:
        raise IncompleteHeader(end)
    _magic, version, flags, _n = _PREFIX.unpack_from(data, 0)
    (crc,) = struct.unpack_from("<I", data, 16)
    body = data[PREFIX_SIZE:end]
    if zlib.crc32(body, zlib.crc32(data[:16])) != crc:
        raise CorruptContainer("container header checksum mismatch")
    if version not in VERSIONS or flags != 0:
        raise UnsupportedContainer(
            f"container version {version} (flags {flags}); this reader knows versions "
            f"{sorted(VERSIONS)}"
        )
    try:
        d = json.loads(body.decode("utf-8"))
        sc = d.pop("sidecar")
        header = ContainerHeader(**d, sidecar=SidecarInfo(**sc) if sc is not None else None)
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CorruptContainer(f"container header is not valid ({exc})") from None
    if version == 1 and "kind" in d:
        raise CorruptContainer("a version 1 container names no representation")
    if header.kind not in KIND_VERSIONS:
        raise UnsupportedContainer(f"representation {header.kind!r} is not known here")
    if header.version != version:
        raise CorruptContainer(f"a {header.kind} container cannot be version {version}")
    if header.kind == KIND_AVIF:
        part = header.extra.get(LATENT_PART)
        if part is not None and not (isinstance(part, dict) and isinstance(part.get("size"), int)
                                     and 0 <= part["size"] <= header.payload_size):
            raise CorruptContainer("the AVIF container's latent part is not valid")
    return header, end


def peek_header(prefix: bytes) -> ContainerHeader:
    """The header from the first bytes only (raises `IncompleteHeader` if they are too few)."""
    return _parse_header(bytes(prefix))[0]


def unpack(data: bytes) -> tuple[ContainerHeader, bytes]:
    """Header and payload of a whole container, every checksum verified."""
    data = bytes(data)
    try:
        header, end = _parse_header(data)
    except IncompleteHeader:
        raise CorruptContainer("container truncated inside its header") from None
    payload = data[end:]
    if len(payload) != header.payload_size:
        raise CorruptContainer(
            f"payload is {len(payload)} bytes; header says {header.payload_size} (truncated?)"
        )
    if hashlib.sha256(payload).hexdigest() != header.payload_sha256:
        raise CorruptContainer("payload SHA-256 mismatch")
    return header, payload


def latent_part(header: ContainerHeader, payload: bytes
                ) -> tuple[str, dict[str, Any], bytes] | None:
    """(codec, codec params, compressed latent) the container holds, or None (an image only).

    A latent container's payload is its latent; an AVIF container of a pair ends with the
    latent its sidecar key is rebuilt from.
    """
    if header.kind == KIND_LATENT:
        return header.codec, header.codec_params, payload
    part = header.extra.get(LATENT_PART)
    if part is None:
        return None
    size = int(part["size"])
    return str(part["codec"]), dict(part["codec_params"]), payload[len(payload) - size:]


def image_part(header: ContainerHeader, payload: bytes) -> bytes:
    """The stored image (AVIF) of a container that holds one (ValueError for a latent)."""
    if header.kind == KIND_LATENT:
        raise ValueError("a latent container holds no image")
    part = header.extra.get(LATENT_PART)
    return payload[: len(payload) - int(part["size"])] if part is not None else payload


# --------------------------------------------------------------------------------------------
# Backend user-metadata mirror (HEAD without reading the body)


@dataclass
class HeadInfo:
    """What HEAD of the image key (and of its sidecar key) needs, from backend metadata."""

    size: int
    etag: str
    content_type: str
    last_modified: str
    model: str
    codec: str
    shape: list[int]
    dtype: str
    image_format: str
    psnr: float | None
    render_profile: str | None
    container_version: int
    sidecar: SidecarInfo | None  # header_b64 is "" here (too large for metadata)
    kind: str = KIND_LATENT


def _a(s: str) -> str:
    """ASCII-safe value (percent-encoding anything else)."""
    return quote(s, safe=" !#$&'()*+,-./:;<=>?@[]^_`{|}~")


# Mirror keys: short, since S3 counts keys and values against its 2 KB.
_K = {
    "v": "lcv",
    "size": "lsize",
    "etag": "letag",
    "ct": "lct",
    "mod": "lmod",
    "model": "lmodel",
    "codec": "lcodec",
    "shape": "lshape",
    "dtype": "ldtype",
    "fmt": "lfmt",
    "psnr": "lpsnr",
    "prof": "lprof",
    "sc": "lsc",
    "kind": "lkind",
}


def header_to_metadata(header: ContainerHeader, limit: int = METADATA_LIMIT) -> dict[str, str]:
    """The HEAD mirror as ASCII metadata; drops the render profile first if over `limit`."""
    meta = {
        _K["v"]: str(header.version),
        _K["size"]: str(header.size),
        _K["etag"]: _a(header.etag),
        _K["ct"]: _a(header.content_type),
        _K["mod"]: _a(header.last_modified),
        _K["model"]: _a(header.model),
        _K["codec"]: _a(header.codec),
        _K["shape"]: "x".join(str(int(d)) for d in header.shape),
        _K["dtype"]: header.dtype,
        _K["fmt"]: _a(header.image_format),
    }
    if header.psnr is not None:
        meta[_K["psnr"]] = repr(round(float(header.psnr), 3))
    if header.sidecar is not None:
        s = header.sidecar
        meta[_K["sc"]] = "|".join(
            [
                _a(s.suffix),
                str(s.size),
                _a(s.etag),
                _a(s.content_type),
                _a(s.last_modified),
                s.dtype,
                "x".join(str(int(d)) for d in s.shape),
            ]
        )
    if header.kind != KIND_LATENT:
        meta[_K["kind"]] = header.kind
    if header.render_profile:
        meta[_K["prof"]] = _a(header.render_profile)

    def total(m: dict[str, str]) -> int:
        return sum(len(k) + len(v) for k, v in m.items())

    if total(meta) > limit:
        meta.pop(_K["prof"], None)
    if total(meta) > limit:
        raise ContainerError(f"container mirror needs {total(meta)} bytes of metadata")
    return meta


def header_from_metadata(meta: dict[str, str]) -> HeadInfo | None:
    """Read back `header_to_metadata`'s mirror; None when the keys are absent or damaged."""
    try:
        sc = None
        if _K["sc"] in meta:
            p = meta[_K["sc"]].split("|")
            if len(p) != 7:
                return None
            sc = SidecarInfo(
                suffix=unquote(p[0]),
                size=int(p[1]),
                etag=unquote(p[2]),
                content_type=unquote(p[3]),
                last_modified=unquote(p[4]),
                header_b64="",
                dtype=p[5],
                shape=[int(d) for d in p[6].split("x")] if p[6] else [],
            )
        psnr = meta.get(_K["psnr"])
        prof = meta.get(_K["prof"])
        return HeadInfo(
            size=int(meta[_K["size"]]),
            etag=unquote(meta[_K["etag"]]),
            content_type=unquote(meta[_K["ct"]]),
            last_modified=unquote(meta[_K["mod"]]),
            model=unquote(meta[_K["model"]]),
            codec=unquote(meta[_K["codec"]]),
            shape=[int(d) for d in meta[_K["shape"]].split("x")],
            dtype=meta[_K["dtype"]],
            image_format=unquote(meta[_K["fmt"]]),
            psnr=float(psnr) if psnr is not None else None,
            render_profile=unquote(prof) if prof is not None else None,
            container_version=int(meta[_K["v"]]),
            sidecar=sc,
            kind=meta.get(_K["kind"], KIND_LATENT),
        )
    except (KeyError, ValueError):
        return None
