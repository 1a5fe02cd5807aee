"""`s3latent convert` and `s3latent inspect` on a local backend with a tiny model.

Pairs go straight into the backend (as data that predates the gateway would), the
tools run in-process through their `main`, and the result is checked in the backend
itself and, once, through a gateway process that serves what the tool converted.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import save as save_safetensors

from s3latent.backends.base import ObjectMeta
from s3latent.backends.local import LocalBackend
from s3latent.latent.fidelity import decode_image_bytes, psnr
from s3latent.models.registry import ModelRegistry
from s3latent.models.tae import TAE_ARCHS, build_tae_decoder
from s3latent.objects import physical
from s3latent.objects.conversion import Converter
from s3latent.tools import convert, inspect, parse_s3_url
from tests.gateway import GatewayProcess

BUCKET = "art"
SUFFIX = ".latent.safetensors"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A TAESD-architecture decoder with seeded weights, loaded like real ones."""
    d = tmp_path_factory.mktemp("tools-model")
    torch.manual_seed(7)
    torch.save(build_tae_decoder(TAE_ARCHS["taesd"]).state_dict(), d / "dec.pth")
    return {"kind": "tae", "arch": "taesd", "decoder": str(d / "dec.pth")}


def make_pair(model: dict[str, str], seed: int, fmt: str = "PNG") -> tuple[bytes, bytes]:
    """(image, sidecar): the image is the model's own decode of the latent."""
    registry = ModelRegistry.from_config({"tiny": model})
    latent = torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(seed)).half()
    with torch.no_grad():
        decoded = registry.get("tiny").decode(latent.float()[None])
    pixels = decoded.clamp(0, 1).mul(255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return out.getvalue(), save_safetensors({"latent": latent}, metadata={"model": "tiny"})


def write_config(path: Path, model: dict[str, str], data: Path, extra: str = "") -> Path:
    path.write_text(
        f'[server]\nbackend = "file://{data}"\n'
        f'[models.tiny]\nkind = "tae"\narch = "taesd"\ndecoder = "{model["decoder"]}"\n'
        f'[buckets."*"]\ncodec = "q8"\n{extra}'
    )
    return path


async def _put_all(root: Path, objects: dict[str, tuple[bytes, str]]) -> None:
    backend = LocalBackend(root)
    await backend.start()
    try:
        try:
            await backend.create_bucket(BUCKET)
        except Exception:
            pass
        for key, (body, ctype) in objects.items():

            async def once(data: bytes = body) -> Any:
                yield data

            await backend.put_object(
                BUCKET, key, once(), ObjectMeta(content_type=ctype), size=len(body)
            )
    finally:
        await backend.close()


async def _heads(root: Path, keys: list[str]) -> dict[str, Any]:
    backend = LocalBackend(root)
    await backend.start()
    try:
        return {k: await backend.head_object(BUCKET, k) for k in keys}
    finally:
        await backend.close()


@pytest.fixture(scope="module")
def store(
    tiny_model: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A backend with pairs under set/, a bad pair, lone objects and a pair outside set/."""
    root = tmp_path_factory.mktemp("tools-store")
    data = root / "data"
    cfg = write_config(root / "config.toml", tiny_model, data)
    objects: dict[str, tuple[bytes, str]] = {}
    sizes = {}
    for i, (key, fmt, ctype) in enumerate(
        [
            ("set/a.png", "PNG", "image/png"),
            ("set/b.jpg", "JPEG", "image/jpeg"),
            ("set/deep/c.png", "PNG", "image/png"),
            ("other/o.png", "PNG", "image/png"),
        ]
    ):
        image, sidecar = make_pair(tiny_model, seed=i, fmt=fmt)
        objects[key] = (image, ctype)
        objects[key + SUFFIX] = (sidecar, "application/octet-stream")
        sizes[key] = len(image) + len(sidecar)
    lone, _ = make_pair(tiny_model, seed=9)
    objects["set/bad.png"] = (lone, "image/png")
    objects["set/bad.png" + SUFFIX] = (b"this is not safetensors", "application/octet-stream")
    objects["set/lone.png"] = (lone, "image/png")
    objects["set/notes.txt"] = (b"hello", "text/plain")
    asyncio.run(_put_all(data, objects))
    yield {"root": root, "data": data, "config": cfg, "sizes": sizes, "objects": objects}


def run_convert(store: dict[str, Any], *args: str) -> tuple[int, dict[str, Any]]:
    out = store["root"] / "report.json"
    code = convert.main(
        ["s3://art/set/", "--config", str(store["config"]), "--quiet", "--json", str(out), *args]
    )
    return code, json.loads(out.read_text())


def test_parse_s3_url() -> None:
    assert parse_s3_url("s3://b/p/q", need_key=True) == ("b", "p/q")
    assert parse_s3_url("s3://b", need_key=False) == ("b", "")
    for bad in ("b/k", "s3:///k", "http://b/k"):
        with pytest.raises(ValueError):
            parse_s3_url(bad, need_key=False)
    with pytest.raises(ValueError):
        parse_s3_url("s3://b/", need_key=True)


def test_convert_then_inspect(store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    # Dry run first: lists the pairs, changes nothing.
    code, report = run_convert(store, "--dry-run")
    assert code == 0
    s = report["summary"]
    assert s["pairs_found"] == 4 and s["would_convert"] == 4 and s["admitted"] == 0
    assert sorted(p["image"] for p in report["pairs"]) == [
        "set/a.png",
        "set/b.jpg",
        "set/bad.png",
        "set/deep/c.png",
    ]
    text = capsys.readouterr().out
    assert "would convert  set/a.png" in text and "dry run" in text
    heads = asyncio.run(_heads(store["data"], ["set/a.png"]))
    assert physical.representation(heads["set/a.png"]) == "plain"

    # The real run: three admitted, the bad sidecar refused, nothing outside the prefix.
    code, report = run_convert(store, "--jobs", "3")
    s = report["summary"]
    assert code == 0, report
    assert s["pairs_found"] == 4
    assert s["admitted"] == 3 and sum(s["admitted_by_codec"].values()) == 3
    assert set(s["admitted_by_codec"]) <= {"q8", "lossless"}
    assert s["refused"] == 1 and s["refused_by_reason"] == {"bad sidecar": 1}
    assert s["errors"] == 0 and s["already_latent"] == 0
    expected_before = sum(v for k, v in store["sizes"].items() if k.startswith("set/"))
    assert s["bytes_before"] == expected_before
    keys = ["set/a.png", "set/b.jpg", "set/deep/c.png", "other/o.png", "set/bad.png"]
    heads = asyncio.run(_heads(store["data"], keys + [k + SUFFIX for k in keys]))
    assert s["bytes_after"] == sum(heads[k].size + heads[k + SUFFIX].size for k in keys[:3])
    assert 0 < s["bytes_after"] < s["bytes_before"]
    assert s["reduction_percent"] == pytest.approx(
        100 * (1 - s["bytes_after"] / s["bytes_before"]), abs=0.01
    )
    assert s["psnr_min"] >= 40.0
    for k in keys[:3]:
        assert physical.representation(heads[k]) == physical.REP_LATENT
        assert physical.representation(heads[k + SUFFIX]) == physical.REP_STUB
    for k in keys[3:]:
        assert physical.representation(heads[k]) == "plain"
    bad = next(p for p in report["pairs"] if p["image"] == "set/bad.png")
    assert bad["result"] == "refused" and bad["detail"].startswith("refused: bad sidecar")
    text = capsys.readouterr().out
    assert "refused  set/bad.png: bad sidecar: " in text
    assert "reduction" in text and "q8" in text

    # Again: idempotent.
    code, report = run_convert(store)
    s = report["summary"]
    assert code == 0
    assert (s["pairs_found"], s["admitted"], s["already_latent"], s["refused"], s["errors"]) == (
        4,
        0,
        3,
        1,
        0,
    )
    assert s["bytes_before"] == s["bytes_after"] == 0 and s["reduction_percent"] is None
    capsys.readouterr()

    # inspect: a converted key, as JSON and as a table.
    cfg = str(store["config"])
    assert inspect.main(["s3://art/set/a.png", "--config", cfg, "--json", "--verify"]) == 0
    got = json.loads(capsys.readouterr().out)
    h = got["header"]
    assert got["representation"] == "latent" and got["container_version"] == 1
    assert got["verified"] is True and got["mirror_agrees"] is True
    assert h["model"] == "tiny" and h["shape"] == [4, 16, 16] and h["dtype"] == "float16"
    assert h["codec"] in ("q8", "lossless") and h["image_format"] == "png"
    assert h["content_type"] == "image/png" and h["psnr"] >= 40.0
    assert h["sidecar"]["suffix"] == SUFFIX
    assert h["sidecar"]["size"] == len(store["objects"]["set/a.png" + SUFFIX][0])
    assert (
        h["payload_size"] > 0 and got["header_bytes"] + h["payload_size"] == got["physical"]["size"]
    )
    assert got["logical"]["size"] == h["size"] and got["logical"]["etag"] == h["etag"]
    assert h["render_profile"]
    assert inspect.main(["s3://art/set/b.jpg", "--config", cfg]) == 0
    text = capsys.readouterr().out
    assert "latent container, version 1" in text and "image format" in text
    assert "jpeg" in text and "PSNR" in text and "tiny" in text

    # ... its stub, a plain image with a sidecar waiting, a lone image, a missing key.
    assert inspect.main(["s3://art/set/a.png" + SUFFIX, "--config", cfg, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["representation"] == "stub" and got["image"] == "set/a.png"
    assert got["matches_container"] is True
    assert inspect.main(["s3://art/set/bad.png", "--config", cfg, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["representation"] == "plain" and got["waiting"] is True
    assert inspect.main(["s3://art/set/lone.png", "--config", cfg]) == 0
    text = capsys.readouterr().out
    assert "plain" in text and "none (no sidecar)" in text
    assert inspect.main(["s3://art/set/missing.png", "--config", cfg]) == 1
    assert "NoSuchKey" in capsys.readouterr().err

    # What the tool wrote is what a gateway serves.
    gw = GatewayProcess(
        f"file://{store['data']}",
        store["root"],
        config=store["config"].read_text() + "convert = false\n",
    )
    gw.start()
    try:
        s3 = gw.client()
        obj = s3.get_object(Bucket=BUCKET, Key="set/a.png")
        body = obj["Body"].read()
        assert len(body) == h["size"] and obj["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
        assert obj["ResponseMetadata"]["HTTPHeaders"]["x-s3latent-representation"] == "latent"
        original, _ = decode_image_bytes(store["objects"]["set/a.png"][0])
        assert psnr(decode_image_bytes(body)[0], original) >= 40.0
    finally:
        gw.stop()


def test_errors_make_a_nonzero_exit(
    tiny_model: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    image, sidecar = make_pair(tiny_model, seed=3)
    asyncio.run(
        _put_all(
            data,
            {
                "x.png": (image, "image/png"),
                "x.png" + SUFFIX: (sidecar, "application/octet-stream"),
            },
        )
    )
    cfg = write_config(tmp_path / "c.toml", tiny_model, data)

    async def broken(self: Converter, bucket: str, key: str) -> str:
        raise OSError("disk on fire")

    monkeypatch.setattr(Converter, "convert", broken)
    code = convert.main([f"s3://{BUCKET}", "--config", str(cfg), "--quiet"])
    out = capsys.readouterr().out
    assert code == 1
    assert "error    x.png: OSError: disk on fire" in out
    assert convert.main([f"s3://{BUCKET}/", "--config", str(cfg), "--jobs", "0"]) == 2
    assert convert.main(["s3://nope/", "--config", str(cfg), "--quiet"]) == 1
    assert "NoSuchBucket" in capsys.readouterr().err


def test_convert_respects_convert_false(
    tiny_model: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    image, sidecar = make_pair(tiny_model, seed=4)
    asyncio.run(
        _put_all(
            data,
            {
                "y.png": (image, "image/png"),
                "y.png" + SUFFIX: (sidecar, "application/octet-stream"),
            },
        )
    )
    cfg = write_config(tmp_path / "c.toml", tiny_model, data, "convert = false\n")
    assert convert.main([f"s3://{BUCKET}/", "--config", str(cfg), "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    assert convert.main([f"s3://{BUCKET}/", "--config", str(cfg), "--quiet", "--force"]) == 0
    heads = asyncio.run(_heads(data, ["y.png"]))
    assert physical.representation(heads["y.png"]) == physical.REP_LATENT


def test_inspect_corrupt_container(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An object marked latent whose bytes are not a container: reported, exit 1."""
    data = tmp_path / "data"

    async def put() -> None:
        backend = LocalBackend(data)
        await backend.start()
        await backend.create_bucket(BUCKET)
        internal = physical.mirror(physical.REP_LATENT, 10, "abc", datetime.now(UTC))
        meta = ObjectMeta(content_type="image/png", internal=internal)
        await physical.write_single_part(backend, BUCKET, "z.png", b"garbage" * 10, meta)
        await backend.close()

    asyncio.run(put())
    assert inspect.main([f"s3://{BUCKET}/z.png", "--backend", f"file://{data}"]) == 1
    captured = capsys.readouterr()
    assert "UNREADABLE" in captured.out and "bad magic" in captured.err


async def test_find_pairs_across_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sidecars pair with images listed pages earlier, beyond the window too (via HEAD)."""
    monkeypatch.setattr(convert, "LIST_PAGE", 2)
    monkeypatch.setattr(convert, "PAIR_WINDOW", 1)
    keys = [
        "p/a",
        "p/a-1",
        "p/a-2",
        "p/a-3",
        "p/a" + SUFFIX,
        "p/b",
        "p/b" + SUFFIX,
        "p/orphan" + SUFFIX,
        "q/c",
        "q/c" + SUFFIX,
    ]
    await _put_all(tmp_path, {k: (k.encode(), "application/octet-stream") for k in keys})
    backend = LocalBackend(tmp_path)
    await backend.start()
    try:
        pairs = [p async for p in convert.find_pairs(backend, BUCKET, "p/", SUFFIX)]
        assert [(p.image, p.sidecar) for p in pairs] == [
            ("p/a", "p/a" + SUFFIX),
            ("p/b", "p/b" + SUFFIX),
        ]
        assert pairs[0].image_size == 3 and pairs[0].sidecar_size == len("p/a" + SUFFIX)
        # A prefix that cuts through a pair: the image is not under it, so no pair.
        assert [p async for p in convert.find_pairs(backend, BUCKET, "p/a.", SUFFIX)] == []
    finally:
        await backend.close()


@pytest.mark.seaweedfs
def test_convert_and_inspect_on_s3_backend(
    seaweedfs: Any,
    tiny_model: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Same tools against a real S3 store: internal metadata, ranged header reads."""
    client = seaweedfs.client()
    bucket = f"tools-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    for i in range(2):
        image, sidecar = make_pair(tiny_model, seed=20 + i)
        client.put_object(Bucket=bucket, Key=f"g/{i}.png", Body=image, ContentType="image/png")
        client.put_object(Bucket=bucket, Key=f"g/{i}.png{SUFFIX}", Body=sidecar)
    monkeypatch.setenv("S3LATENT_BACKEND_ACCESS_KEY", seaweedfs.access_key)
    monkeypatch.setenv("S3LATENT_BACKEND_SECRET_KEY", seaweedfs.secret_key)
    cfg = write_config(tmp_path / "c.toml", tiny_model, tmp_path / "unused")
    common = ["--config", str(cfg), "--backend", seaweedfs.endpoint]
    out = tmp_path / "r.json"
    assert convert.main([f"s3://{bucket}/g/", *common, "--quiet", "--json", str(out)]) == 0
    s = json.loads(out.read_text())["summary"]
    assert (s["pairs_found"], s["admitted"], s["errors"]) == (2, 2, 0)
    assert 0 < s["bytes_after"] < s["bytes_before"]
    assert convert.main([f"s3://{bucket}/g/", *common, "--quiet", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["summary"]["already_latent"] == 2
    capsys.readouterr()
    assert inspect.main([f"s3://{bucket}/g/0.png", *common, "--json", "--verify"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["representation"] == "latent" and got["verified"] is True
    assert got["header"]["model"] == "tiny" and got["mirror_agrees"] is True
    assert inspect.main([f"s3://{bucket}/g/0.png{SUFFIX}", *common, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["representation"] == "stub" and got["matches_container"] is True


@pytest.mark.parametrize(
    "reason, category",
    [
        ("bad sidecar: not a safetensors file", "bad sidecar"),
        ("unknown model: 'x' is not configured", "unknown model"),
        (
            "the sidecar names no model (metadata 'model' or x-amz-meta-s3latent-model)",
            "no model named",
        ),
        ("latent 16x16 decodes to 128x128, image is 64x64", "latent/image size mismatch"),
        (
            "admission policy failed (q8: PSNR 31.00 dB < 40.0 dB; lossless: ...)",
            "admission policy failed",
        ),
        (
            "k.png is 99999999 bytes, over the 67108864-byte conversion limit",
            "too large to convert",
        ),
        (
            "image not representable by a VAE: has an alpha channel",
            "image not representable by a VAE",
        ),
    ],
)
def test_reason_category(reason: str, category: str) -> None:
    assert convert.reason_category(reason) == category
