import json
import struct

import pytest
import torch
from safetensors.torch import save

from s3latent.latent.sidecar import (
    SidecarError,
    build_sidecar_bytes,
    check_channels,
    parse_sidecar,
)


def _latent(dtype=torch.bfloat16, shape=(32, 8, 8)):
    g = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=g).to(dtype)


def _raw(header: dict, body: bytes, pad_to: int = 8) -> bytes:
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % pad_to)
    return struct.pack("<Q", len(h)) + h + body


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batched", [False, True])
def test_parse_valid(dtype, batched):
    lat = _latent(dtype)
    t = lat[None] if batched else lat
    blob = save({"latent": t.contiguous()}, metadata={"model": "taef2", "x": "y"})
    sc = parse_sidecar(blob)
    assert sc.latent.dtype == dtype and tuple(sc.latent.shape) == (32, 8, 8)
    assert torch.equal(sc.latent, lat)
    assert sc.model == "taef2" and sc.metadata == {"model": "taef2", "x": "y"}
    assert sc.raw_dtype == {torch.float32: "float32", torch.float16: "float16"}.get(
        dtype, "bfloat16"
    )
    assert sc.raw_shape == tuple(t.shape)
    assert sc.size == len(blob)
    assert blob.startswith(sc.header_bytes)
    # Same-length rebuild, byte-identical with the original tensor.
    assert build_sidecar_bytes(sc.header_bytes, sc.latent) == blob
    # A dequantised tensor (other dtype, perturbed) still gives the same length.
    other = (sc.latent.float() + 0.01).to(torch.float32)
    rebuilt = build_sidecar_bytes(sc.header_bytes, other)
    assert len(rebuilt) == len(blob) and rebuilt != blob
    again = parse_sidecar(rebuilt)
    assert torch.equal(again.latent, other.to(dtype))


def test_no_model_metadata():
    sc = parse_sidecar(save({"latent": _latent()}))
    assert sc.model is None and sc.metadata == {}


def test_check_channels():
    sc = parse_sidecar(save({"latent": _latent(shape=(3, 4, 4))}, metadata={"model": "taef2"}))
    check_channels(sc, 3)
    with pytest.raises(SidecarError, match="has 3 channels; model taef2 expects 32"):
        check_channels(sc, 32)


def _bad(blob: bytes, match: str, **kw) -> None:
    with pytest.raises(SidecarError, match=match):
        parse_sidecar(blob, **kw)


def test_hostile_sidecars():
    lat = _latent(torch.float16, (4, 4, 4))
    good = save({"latent": lat})
    _bad(b"", "shorter than")
    _bad(b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "header length")
    _bad(struct.pack("<Q", 10**12) + b"{}", "header length")
    _bad(struct.pack("<Q", 1000) + b"{}", "truncated")
    _bad(struct.pack("<Q", 4) + b"[1] ", "not a JSON object")
    _bad(struct.pack("<Q", 4) + b"{xx}", "not valid JSON")
    _bad(save({"latent": lat, "other": lat.clone()}), "exactly one tensor")
    _bad(save({"z": lat}), "exactly one tensor named 'latent'")
    _bad(save({"latent": lat[0]}), "rank 2")
    _bad(save({"latent": lat[None, None]}), "rank 5")
    _bad(save({"latent": torch.stack([lat, lat])}), "batch size 1")
    _bad(save({"latent": lat.to(torch.float64)}), "dtype 'F64'")
    _bad(save({"latent": lat.to(torch.int8)}), "dtype 'I8'")
    nan = lat.clone()
    nan[0, 0, 0] = float("nan")
    _bad(save({"latent": nan}), "NaN or infinite")
    inf = lat.float()
    inf[1, 2, 3] = float("inf")
    _bad(save({"latent": inf}), "NaN or infinite")
    _bad(save({"latent": _latent(torch.float16, (4, 600, 2))}), "limit is 512")
    _bad(save({"latent": _latent(torch.float16, (4, 40, 40))}), "limit is 8", max_hw=8)
    _bad(good, "the limit is 100", max_bytes=100)
    _bad(good[:-1], "truncated upload")
    _bad(good + b"\0\0", "trailing bytes")
    _bad(save({"latent": torch.zeros(4, 0, 4, dtype=torch.float16)}), "empty shape")
    # Offsets that lie about the data.
    nb = lat.numel() * 2
    body = lat.contiguous().view(torch.uint8).numpy().tobytes()
    hdr = {"latent": {"dtype": "F16", "shape": [4, 4, 4], "data_offsets": [0, nb - 2]}}
    _bad(_raw(hdr, body), "data_offsets")
    hdr = {"latent": {"dtype": "F16", "shape": [4, 4, 4], "data_offsets": [2, nb + 2]}}
    _bad(_raw(hdr, body + b"\0\0"), "data_offsets")
    # Duplicate keys, non-string metadata, NaN literal in the JSON.
    dup = b'{"latent":{"dtype":"F16","shape":[4,4,4],"data_offsets":[0,128]},"latent":{}}'
    _bad(struct.pack("<Q", len(dup)) + dup + body, "twice")
    hdr = {
        "__metadata__": {"model": 3},
        "latent": {"dtype": "F16", "shape": [4, 4, 4], "data_offsets": [0, nb]},
    }
    _bad(_raw(hdr, body), "strings to strings")
    nanj = b'{"latent":{"dtype":"F16","shape":[4,4,4],"data_offsets":[0,NaN]}}'
    _bad(struct.pack("<Q", len(nanj)) + nanj + body, "not JSON")
    # Invalid UTF-8 in the header.
    junk = b'{"\xff":1}'
    _bad(struct.pack("<Q", len(junk)) + junk, "not valid JSON")
    # The parser's own output is accepted.
    assert torch.equal(
        parse_sidecar(
            _raw({"latent": {"dtype": "F16", "shape": [4, 4, 4], "data_offsets": [0, nb]}}, body)
        ).latent,
        lat,
    )


def test_build_rejects_mismatch():
    sc = parse_sidecar(save({"latent": _latent(shape=(2, 4, 4))}))
    with pytest.raises(SidecarError):
        build_sidecar_bytes(sc.header_bytes, torch.zeros(2, 4, 5))
    with pytest.raises(SidecarError):
        build_sidecar_bytes(sc.header_bytes[:-1], sc.latent)
