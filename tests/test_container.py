import dataclasses
import struct
import zlib

import pytest

from s3latent.latent.container import (
    MAGIC,
    ContainerHeader,
    CorruptContainer,
    IncompleteHeader,
    SidecarInfo,
    UnsupportedContainer,
    header_from_metadata,
    header_span,
    header_to_metadata,
    is_container,
    pack,
    peek_header,
    unpack,
)


def _header(**kw) -> ContainerHeader:
    base = dict(
        model="taef2",
        shape=[32, 64, 64],
        dtype="bfloat16",
        codec="q4p",
        codec_params={"step": 0.3, "alpha": [0.0, 0.5]},
        size=123456,
        etag="0123456789abcdef0123456789abcdef",
        content_type="image/png",
        last_modified="2026-01-02T03:04:05+00:00",
        image_format="png",
        encoder={"compress_level": 6},
        psnr=43.21,
        render_profile="taef2/fp32/cpu/torch-2.13/pillow-11",
        sidecar=SidecarInfo(
            suffix=".latent.safetensors",
            size=262264,
            etag="fedcba9876543210fedcba9876543210",
            content_type="application/octet-stream",
            last_modified="2026-01-02T03:04:06+00:00",
            header_b64="eAAAAAAAAAB7fQ==",
            dtype="bfloat16",
            shape=[1, 32, 64, 64],
        ),
        user_metadata={"prompt": "a cat", "seed": "7"},
    )
    base.update(kw)
    return ContainerHeader(**base)


PAYLOAD = bytes(range(256)) * 3


def test_round_trip_and_peek():
    h = _header()
    blob = pack(h, PAYLOAD)
    assert is_container(blob) and blob.startswith(MAGIC)
    got, payload = unpack(blob)
    assert payload == PAYLOAD
    assert got.payload_size == len(PAYLOAD) and len(got.payload_sha256) == 64
    assert dataclasses.replace(got, payload_size=0, payload_sha256="") == h
    assert got.sidecar.header_bytes == b"x" + b"\0" * 7 + b"{}"
    span = header_span(blob[:20])
    assert peek_header(blob[:span]) == got
    with pytest.raises(IncompleteHeader) as ei:
        peek_header(blob[: span - 1])
    assert ei.value.needed == span
    with pytest.raises(IncompleteHeader):
        peek_header(blob[:5])
    assert pack(h, PAYLOAD) == blob  # deterministic


def test_no_sidecar_no_psnr():
    h = _header(sidecar=None, psnr=None)
    got, _ = unpack(pack(h, b""))
    assert got.sidecar is None and got.psnr is None


def test_every_flipped_byte_is_detected():
    blob = pack(_header(), PAYLOAD[:40])
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(CorruptContainer):
            unpack(bytes(bad))


def test_truncated_and_extended():
    blob = pack(_header(), PAYLOAD)
    for n in (0, 5, 19, 20, 100, len(blob) - 1):
        with pytest.raises(CorruptContainer):
            unpack(blob[:n])
    with pytest.raises(CorruptContainer):
        unpack(blob + b"\0")


def _with_version(blob: bytes, version: int, flags: int = 0) -> bytes:
    n = struct.unpack_from("<I", blob, 12)[0]
    head = MAGIC + struct.pack("<HHI", version, flags, n)
    body = blob[20 : 20 + n]
    crc = zlib.crc32(body, zlib.crc32(head))
    return head + struct.pack("<I", crc) + blob[20:]


def test_newer_version_is_unsupported():
    blob = pack(_header(), PAYLOAD)
    with pytest.raises(UnsupportedContainer, match="version 3"):
        unpack(_with_version(blob, 3))  # version 2 exists since representations (issue 15)
    with pytest.raises(UnsupportedContainer):
        peek_header(_with_version(blob, 1, flags=1))


def test_not_a_container():
    assert not is_container(b"\x89PNG\r\n\x1a\n....")
    assert not is_container(b"")
    with pytest.raises(CorruptContainer, match="magic"):
        unpack(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)


def test_bad_json_with_good_crc():
    body = b'{"model": 1}'
    head = MAGIC + struct.pack("<HHI", 1, 0, len(body))
    blob = head + struct.pack("<I", zlib.crc32(body, zlib.crc32(head))) + body
    with pytest.raises(CorruptContainer, match="not valid"):
        unpack(blob)


def test_metadata_mirror():
    h = _header(content_type='image/png; name="é"')
    meta = header_to_metadata(h)
    assert all(v.isascii() and k.isascii() for k, v in meta.items())
    assert sum(len(k) + len(v) for k, v in meta.items()) < 2048
    info = header_from_metadata(meta)
    assert info is not None
    assert (info.size, info.etag, info.content_type, info.last_modified) == (
        h.size,
        h.etag,
        h.content_type,
        h.last_modified,
    )
    assert (info.model, info.codec, info.shape, info.dtype, info.image_format) == (
        "taef2",
        "q4p",
        [32, 64, 64],
        "bfloat16",
        "png",
    )
    assert info.psnr == pytest.approx(43.21) and info.render_profile == h.render_profile
    sc = info.sidecar
    assert (sc.suffix, sc.size, sc.etag, sc.content_type, sc.last_modified, sc.shape) == (
        h.sidecar.suffix,
        h.sidecar.size,
        h.sidecar.etag,
        h.sidecar.content_type,
        h.sidecar.last_modified,
        h.sidecar.shape,
    )
    # A long render profile is dropped before the limit is exceeded.
    long = header_to_metadata(_header(render_profile="p" * 3000))
    assert "lprof" not in long and header_from_metadata(long).render_profile is None
    assert header_from_metadata({}) is None
    assert header_from_metadata({**meta, "lsize": "x"}) is None


# -- representations (issue 15): version 2 holds `kind`, version 1 stays as it was -----------

def _raw_container(version: int, header_json: bytes, payload: bytes = b"") -> bytes:
    head = struct.pack("<8sHHI", MAGIC, version, 0, len(header_json))
    crc = zlib.crc32(header_json, zlib.crc32(head))
    return head + struct.pack("<I", crc) + header_json + payload


def test_latent_containers_stay_version_1_without_a_kind_field():
    blob = pack(_header(), PAYLOAD)
    assert struct.unpack_from("<H", blob, 8)[0] == 1
    assert b'"kind"' not in blob[: header_span(blob)]
    assert unpack(blob)[0].kind == "latent"


def test_avif_container_round_trip_with_the_sidecars_latent():
    from s3latent.latent.container import image_part, latent_part

    image, latent = b"AVIF" * 50, b"LAT" * 30
    h = _header(kind="avif", codec="avif", codec_params={"quality": 40},
                extra={"latent": {"codec": "q4p", "codec_params": {"step": 0.3},
                                  "size": len(latent)}})
    blob = pack(h, image + latent)
    assert struct.unpack_from("<H", blob, 8)[0] == 2
    back, payload = unpack(blob)
    assert back.kind == "avif" and back.version == 2
    assert image_part(back, payload) == image
    assert latent_part(back, payload) == ("q4p", {"step": 0.3}, latent)
    meta = header_to_metadata(back)
    assert meta["lcv"] == "2" and meta["lkind"] == "avif"
    assert header_from_metadata(meta).kind == "avif"
    # A plain image stored as AVIF holds no latent.
    alone = unpack(pack(dataclasses.replace(h, extra={}, sidecar=None), image))
    assert latent_part(*alone) is None and image_part(*alone) == image
    # A latent container's payload is its latent.
    lat = unpack(pack(_header(), PAYLOAD))
    assert latent_part(*lat) == ("q4p", {"step": 0.3, "alpha": [0.0, 0.5]}, PAYLOAD)
    with pytest.raises(ValueError):
        image_part(*lat)


def test_version_and_kind_must_agree():
    good = pack(_header(kind="avif", codec="avif"), PAYLOAD)
    span = header_span(good)
    body = good[20:span]
    # version 1 naming a kind, version 2 without one (a latent), unknown kinds, bad latent part
    with pytest.raises(CorruptContainer):
        peek_header(_raw_container(1, body))
    latent_body = pack(_header(), PAYLOAD)[20: header_span(pack(_header(), PAYLOAD))]
    with pytest.raises(CorruptContainer):
        peek_header(_raw_container(2, latent_body))
    with pytest.raises(UnsupportedContainer):
        peek_header(_raw_container(2, body.replace(b'"kind":"avif"', b'"kind":"jxl1"')))
    with pytest.raises(UnsupportedContainer):
        peek_header(_raw_container(3, body))
    bad_part = pack(_header(kind="avif", codec="avif", extra={"latent": {"size": 10**9}}),
                    PAYLOAD)
    with pytest.raises(CorruptContainer):
        unpack(bad_part)
