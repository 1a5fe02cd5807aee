"""Latent objects end to end through the gateway, with a tiny model the test builds.

The model is a TAESD-architecture autoencoder with seeded random weights, saved
as a state dict and loaded through the same registry code as real weights. Its
decode of a latent is the "generated image" uploaded beside the latent.
"""

from __future__ import annotations

import hashlib
import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch
from botocore.exceptions import ClientError
from PIL import Image
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from s3latent.latent.fidelity import decode_image_bytes, psnr
from s3latent.models.registry import ModelRegistry
from s3latent.models.tae import TAE_ARCHS, build_tae_decoder, build_tae_encoder
from tests.gateway import GatewayProcess

LATENT_TYPE = "application/vnd.s3latent.latent+safetensors"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(7)
    dec, enc = build_tae_decoder(TAE_ARCHS["taesd"]), build_tae_encoder(TAE_ARCHS["taesd"])
    torch.save(dec.state_dict(), d / "dec.pth")
    torch.save(enc.state_dict(), d / "enc.pth")
    return {"kind": "tae", "arch": "taesd", "decoder": str(d / "dec.pth")}


def _config(model: dict[str, str], codec: str = "q8", extra: str = "") -> str:
    return (f'[models.tiny]\nkind = "tae"\narch = "taesd"\ndecoder = "{model["decoder"]}"\n'
            f'[buckets."*"]\ncodec = "{codec}"\n[server]\nsweep_interval_s = 1.0\n{extra}')


@pytest.fixture(scope="module", params=["local", "seaweedfs"])
def latent_gateway(request: pytest.FixtureRequest, tiny_model: dict[str, str],
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp(f"lgw-{request.param}")
    if request.param == "local":
        # The default codec ("auto": predictive, step searched against the policy) here,
        # the affine q8 codec on SeaweedFS.
        proc = GatewayProcess(f"file://{workdir / 'data'}", workdir,
                              config=_config(tiny_model, codec="auto"))
    else:
        weed = request.getfixturevalue("seaweedfs")
        proc = GatewayProcess(weed.endpoint, workdir, config=_config(tiny_model),
                              backend_keys=(weed.access_key, weed.secret_key))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def s3l(latent_gateway: GatewayProcess) -> Any:
    return latent_gateway.client()


@pytest.fixture
def lbucket(s3l: Any) -> str:
    name = f"l-{uuid.uuid4().hex[:12]}"
    s3l.create_bucket(Bucket=name)
    return name


def make_pair(tiny_model: dict[str, str], seed: int = 0, fmt: str = "PNG",
              h: int = 16, w: int = 16) -> tuple[bytes, bytes, np.ndarray]:
    """(image bytes, sidecar bytes, pixels): the image is the model's decode of the latent."""
    registry = ModelRegistry.from_config({"tiny": tiny_model})
    latent = torch.randn(4, h, w, generator=torch.Generator().manual_seed(seed)).half()
    with torch.no_grad():
        decoded = registry.get("tiny").decode(latent.float()[None])
    pixels = decoded.clamp(0, 1).mul(255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    sidecar = save_safetensors({"latent": latent}, metadata={"model": "tiny"})
    return out.getvalue(), sidecar, pixels


def _similar(restored: torch.Tensor, original: torch.Tensor) -> bool:
    """Dequantised values: same shape, close to the original (coarse codecs included)."""
    corr = torch.corrcoef(torch.stack([restored.flatten(), original.flatten()]))[0, 1]
    return restored.shape == original.shape and float(corr) > 0.9


def wait_latent(s3: Any, bucket: str, key: str, timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        head = s3.head_object(Bucket=bucket, Key=key)
        headers = head["ResponseMetadata"]["HTTPHeaders"]
        if headers.get("x-s3latent-representation") == "latent":
            return head
        if "refused" in headers.get("x-s3latent-state", ""):
            raise AssertionError(f"conversion refused: {headers['x-s3latent-state']}")
        time.sleep(0.2)
    raise AssertionError(f"{key} was not converted within {timeout}s")


@pytest.mark.parametrize("order", ["image-first", "sidecar-first"])
def test_pair_converts_and_reads_back(s3l: Any, lbucket: str, tiny_model: dict[str, str],
                                      order: str) -> None:
    image, sidecar, pixels = make_pair(tiny_model, seed=1)
    uploads = [("img.png", image, "image/png"),
               ("img.png.latent.safetensors", sidecar, "application/octet-stream")]
    if order == "sidecar-first":
        uploads.reverse()
    for key, body, ctype in uploads:
        s3l.put_object(Bucket=lbucket, Key=key, Body=body, ContentType=ctype,
                       Metadata={"origin": "test"} if key == "img.png" else {})
    head = wait_latent(s3l, lbucket, "img.png")
    got = s3l.get_object(Bucket=lbucket, Key="img.png")
    data = got["Body"].read()
    # Same length as the upload, ETag and length agree with the bytes, metadata kept.
    assert len(data) == len(image) == head["ContentLength"] == got["ContentLength"]
    assert got["ETag"] == head["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    assert got["ContentType"] == "image/png" and got["Metadata"] == {"origin": "test"}
    rendered, info = decode_image_bytes(data)
    assert info.format == "PNG" and psnr(rendered, pixels) >= 40.0
    # Listing sizes are the sizes GET sends; the sidecar key stays listed and readable.
    listing = {o["Key"]: o for o in s3l.list_objects_v2(Bucket=lbucket)["Contents"]}
    assert listing["img.png"]["Size"] == len(data)
    assert listing["img.png"]["ETag"] == got["ETag"]
    side = s3l.get_object(Bucket=lbucket, Key="img.png.latent.safetensors")["Body"].read()
    assert len(side) == len(sidecar) == listing["img.png.latent.safetensors"]["Size"]
    original = load_safetensors(sidecar)["latent"].float()
    restored = load_safetensors(side)["latent"].float()
    assert _similar(restored, original)
    # Range and conditional reads agree with the full read.
    part = s3l.get_object(Bucket=lbucket, Key="img.png", Range="bytes=10-99")
    assert part["Body"].read() == data[10:100]
    assert part["ContentRange"] == f"bytes 10-99/{len(data)}"
    with pytest.raises(ClientError) as exc:
        s3l.get_object(Bucket=lbucket, Key="img.png", IfNoneMatch=got["ETag"])
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    # The latent itself, as safetensors.
    latent_url = s3l.generate_presigned_url(
        "get_object", Params={"Bucket": lbucket, "Key": "img.png"}, ExpiresIn=60)
    del latent_url  # presigned GETs are covered elsewhere; ask with the header here
    s3l.meta.events.register_first(
        "before-sign.s3.GetObject",
        lambda request, **_: request.headers.__setitem__("x-s3latent-want", "latent"))
    as_latent = s3l.get_object(Bucket=lbucket, Key="img.png")["Body"].read()
    assert _similar(load_safetensors(as_latent)["latent"].float(), original)


def test_physical_storage_is_the_container(s3l: Any, lbucket: str, tiny_model: dict[str, str],
                                           latent_gateway: GatewayProcess) -> None:
    image, sidecar, _ = make_pair(tiny_model, seed=2, h=32, w=32)
    s3l.put_object(Bucket=lbucket, Key="p.png", Body=image, ContentType="image/png")
    s3l.put_object(Bucket=lbucket, Key="p.png.latent.safetensors", Body=sidecar)
    wait_latent(s3l, lbucket, "p.png")
    metrics = requests.get(latent_gateway.endpoint + "/metrics", timeout=5).text
    assert 'result="admitted"' in metrics and 's3latent_conversions_total' in metrics


def test_multipart_overwrite_of_a_converted_image_then_delete_bucket(
        s3l: Any, tiny_model: dict[str, str]) -> None:
    """CompleteMultipartUpload bypasses PUT: the pair still ends consistent, and a bucket
    emptied by the client deletes although the gateway kept records in it."""
    bucket = f"mpo-{uuid.uuid4().hex[:8]}"
    s3l.create_bucket(Bucket=bucket)
    image, sidecar, _ = make_pair(tiny_model, seed=21)
    s3l.put_object(Bucket=bucket, Key="m.png", Body=image, ContentType="image/png")
    s3l.put_object(Bucket=bucket, Key="m.png.latent.safetensors", Body=sidecar)
    wait_latent(s3l, bucket, "m.png")
    wait_latent(s3l, bucket, "m.png.latent.safetensors")  # its stub is written after the image
    side = s3l.get_object(Bucket=bucket, Key="m.png.latent.safetensors")["Body"].read()
    upload = s3l.create_multipart_upload(Bucket=bucket, Key="m.png", ContentType="text/plain")
    part = s3l.upload_part(Bucket=bucket, Key="m.png", UploadId=upload["UploadId"],
                           PartNumber=1, Body=b"new bytes")
    s3l.complete_multipart_upload(
        Bucket=bucket, Key="m.png", UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    assert s3l.get_object(Bucket=bucket, Key="m.png")["Body"].read() == b"new bytes"
    assert s3l.get_object(Bucket=bucket,
                          Key="m.png.latent.safetensors")["Body"].read() == side
    listed = {o["Key"]: o["Size"] for o in s3l.list_objects_v2(Bucket=bucket)["Contents"]}
    assert listed == {"m.png": 9, "m.png.latent.safetensors": len(side)}
    with pytest.raises(ClientError) as exc:
        s3l.delete_bucket(Bucket=bucket)
    assert exc.value.response["Error"]["Code"] == "BucketNotEmpty"
    s3l.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "m.png"},
                                                          {"Key": "m.png.latent.safetensors"}]})
    s3l.delete_bucket(Bucket=bucket)
    assert bucket not in [b["Name"] for b in s3l.list_buckets()["Buckets"]]


def test_copy_stays_latent_and_delete_keeps_the_other_key(s3l: Any, lbucket: str,
                                                          tiny_model: dict[str, str]) -> None:
    image, sidecar, _ = make_pair(tiny_model, seed=3)
    s3l.put_object(Bucket=lbucket, Key="c.png", Body=image, ContentType="image/png")
    s3l.put_object(Bucket=lbucket, Key="c.png.latent.safetensors", Body=sidecar)
    wait_latent(s3l, lbucket, "c.png")
    data = s3l.get_object(Bucket=lbucket, Key="c.png")["Body"].read()
    s3l.copy_object(Bucket=lbucket, Key="copy.png", CopySource={"Bucket": lbucket,
                                                                "Key": "c.png"})
    head = s3l.head_object(Bucket=lbucket, Key="copy.png")
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-s3latent-representation"] == "latent"
    assert s3l.get_object(Bucket=lbucket, Key="copy.png")["Body"].read() == data
    side_before = s3l.get_object(Bucket=lbucket, Key="c.png.latent.safetensors")["Body"].read()
    s3l.delete_object(Bucket=lbucket, Key="c.png")
    side_after = s3l.get_object(Bucket=lbucket, Key="c.png.latent.safetensors")["Body"].read()
    assert side_after == side_before
    with pytest.raises(ClientError):
        s3l.head_object(Bucket=lbucket, Key="c.png")
    # And the other way round: deleting the sidecar key leaves the image.
    s3l.put_object(Bucket=lbucket, Key="d.png", Body=image, ContentType="image/png")
    s3l.put_object(Bucket=lbucket, Key="d.png.latent.safetensors", Body=sidecar)
    wait_latent(s3l, lbucket, "d.png")
    s3l.delete_object(Bucket=lbucket, Key="d.png.latent.safetensors")
    assert s3l.get_object(Bucket=lbucket, Key="d.png")["Body"].read() == data
    keys = [o["Key"] for o in s3l.list_objects_v2(Bucket=lbucket)["Contents"]]
    assert "d.png.latent.safetensors" not in keys


def test_overwrite_after_conversion_keeps_sidecar(s3l: Any, lbucket: str,
                                                  tiny_model: dict[str, str]) -> None:
    image, sidecar, _ = make_pair(tiny_model, seed=4)
    s3l.put_object(Bucket=lbucket, Key="o.png", Body=image, ContentType="image/png")
    s3l.put_object(Bucket=lbucket, Key="o.png.latent.safetensors", Body=sidecar)
    wait_latent(s3l, lbucket, "o.png")
    wait_latent(s3l, lbucket, "o.png.latent.safetensors")  # its stub is written after the image
    side = s3l.get_object(Bucket=lbucket, Key="o.png.latent.safetensors")["Body"].read()
    s3l.put_object(Bucket=lbucket, Key="o.png", Body=b"not an image any more",
                   ContentType="text/plain")
    assert s3l.get_object(Bucket=lbucket, Key="o.png")["Body"].read() == b"not an image any more"
    assert s3l.get_object(Bucket=lbucket, Key="o.png.latent.safetensors")["Body"].read() == side


def test_latent_only_upload(s3l: Any, lbucket: str, tiny_model: dict[str, str]) -> None:
    _, sidecar, pixels = make_pair(tiny_model, seed=5)
    put = s3l.put_object(Bucket=lbucket, Key="gen.webp", Body=sidecar, ContentType=LATENT_TYPE,
                         Metadata={"s3latent-format": "webp"})
    got = s3l.get_object(Bucket=lbucket, Key="gen.webp")
    data = got["Body"].read()
    assert got["ContentType"] == "image/webp" and put["ETag"] == got["ETag"]
    assert got["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    rendered, info = decode_image_bytes(data)
    assert info.format == "WEBP" and rendered.shape == pixels.shape
    head = s3l.head_object(Bucket=lbucket, Key="gen.webp")
    assert head["ContentLength"] == len(data)


@pytest.mark.parametrize("body,why", [
    (b"not safetensors", "safetensors"),
    (save_safetensors({"wrong_name": torch.zeros(4, 8, 8)}, metadata={"model": "tiny"}),
     "latent"),
    (save_safetensors({"latent": torch.zeros(3, 8, 8)}, metadata={"model": "tiny"}),
     "channel"),
    (save_safetensors({"latent": torch.full((4, 8, 8), float("nan"))},
                      metadata={"model": "tiny"}), "NaN"),
    (save_safetensors({"latent": torch.zeros(4, 8, 8)}, metadata={"model": "nope"}),
     "nope"),
])
def test_bad_latent_only_upload_is_400(s3l: Any, lbucket: str, body: bytes, why: str) -> None:
    with pytest.raises(ClientError) as exc:
        s3l.put_object(Bucket=lbucket, Key="bad.png", Body=body, ContentType=LATENT_TYPE)
    err = exc.value.response["Error"]
    assert err["Code"] == "InvalidArgument" and why.lower() in err["Message"].lower()
    with pytest.raises(ClientError):
        s3l.head_object(Bucket=lbucket, Key="bad.png")


def test_bad_sidecar_leaves_image_plain(s3l: Any, lbucket: str,
                                        tiny_model: dict[str, str]) -> None:
    image, _, _ = make_pair(tiny_model, seed=6)
    s3l.put_object(Bucket=lbucket, Key="b.png", Body=image, ContentType="image/png")
    bad = save_safetensors({"latent": torch.zeros(3, 16, 16)}, metadata={"model": "tiny"})
    s3l.put_object(Bucket=lbucket, Key="b.png.latent.safetensors", Body=bad)
    deadline = time.monotonic() + 60
    state = ""
    while time.monotonic() < deadline and "refused" not in state:
        head = s3l.head_object(Bucket=lbucket, Key="b.png")
        state = head["ResponseMetadata"]["HTTPHeaders"].get("x-s3latent-state", "")
        time.sleep(0.2)
    assert "refused" in state and "channel" in state
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-s3latent-representation"] == "plain"
    assert s3l.get_object(Bucket=lbucket, Key="b.png")["Body"].read() == image
    assert s3l.get_object(Bucket=lbucket, Key="b.png.latent.safetensors")["Body"].read() == bad


@pytest.mark.parametrize("step", ["before-container", "after-container", "after-stub"])
def test_crash_during_conversion_loses_nothing(step: str, tiny_model: dict[str, str],
                                              tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    crashing = GatewayProcess(f"file://{data_dir}", tmp_path, config=_config(tiny_model))
    import os

    os.environ["S3LATENT_CRASH_AT"] = step
    try:
        crashing.start()
    finally:
        del os.environ["S3LATENT_CRASH_AT"]
    s3 = crashing.client()
    s3.create_bucket(Bucket="crash")
    image, sidecar, pixels = make_pair(tiny_model, seed=8)
    s3.put_object(Bucket="crash", Key="x.png", Body=image, ContentType="image/png")
    s3.put_object(Bucket="crash", Key="x.png.latent.safetensors", Body=sidecar)
    assert crashing.proc is not None
    crashing.proc.wait(90)  # it dies at the step
    crashing.proc = None
    survivor = GatewayProcess(f"file://{data_dir}", tmp_path, config=_config(tiny_model))
    survivor.start()
    try:
        s3 = survivor.client()
        # Right after the crash, both keys read back fine, whatever the state.
        first = s3.get_object(Bucket="crash", Key="x.png")["Body"].read()
        assert len(first) == len(image)
        assert psnr(decode_image_bytes(first)[0], pixels) >= 40.0
        side = s3.get_object(Bucket="crash", Key="x.png.latent.safetensors")["Body"].read()
        assert len(side) == len(sidecar)
        # The sweeper finishes the job.
        wait_latent(s3, "crash", "x.png")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if survivor.log().count("sidecar stubbed") or step == "after-stub":
                break
            time.sleep(0.3)
        assert len(s3.get_object(Bucket="crash", Key="x.png")["Body"].read()) == len(image)
        side = s3.get_object(Bucket="crash", Key="x.png.latent.safetensors")["Body"].read()
        assert len(side) == len(sidecar)
    finally:
        survivor.stop()


def test_concurrent_cold_misses_share_one_fetch_and_decode(
        s3l: Any, lbucket: str, tiny_model: dict[str, str],
        latent_gateway: GatewayProcess) -> None:
    from concurrent.futures import ThreadPoolExecutor

    image, sidecar, _ = make_pair(tiny_model, seed=11)
    s3l.put_object(Bucket=lbucket, Key="cold.png", Body=image, ContentType="image/png")
    s3l.put_object(Bucket=lbucket, Key="cold.png.latent.safetensors", Body=sidecar)
    wait_latent(s3l, lbucket, "cold.png")

    def metric(prefix: str) -> float:
        text = requests.get(latent_gateway.endpoint + "/metrics", timeout=5).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(prefix))

    misses = 's3latent_read_seconds_count{path="miss"}'
    before = metric(misses), metric("s3latent_read_shared_misses_total")
    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda _: s3l.get_object(Bucket=lbucket,
                                                        Key="cold.png")["Body"].read(), range(8)))
    assert len(set(bodies)) == 1 and len(bodies[0]) == len(image)
    assert metric(misses) - before[0] == 1  # one backend fetch and one decode
    assert metric("s3latent_read_shared_misses_total") - before[1] >= 1


def test_read_path_tiers_and_concurrent_reads(s3l: Any, lbucket: str,
                                              tiny_model: dict[str, str],
                                              latent_gateway: GatewayProcess) -> None:
    from concurrent.futures import ThreadPoolExecutor

    image, sidecar, _ = make_pair(tiny_model, seed=9)
    s3l.put_object(Bucket=lbucket, Key="hot.png", Body=image, ContentType="image/png")
    s3l.put_object(Bucket=lbucket, Key="hot.png.latent.safetensors", Body=sidecar)
    wait_latent(s3l, lbucket, "hot.png")

    def paths() -> dict[str, float]:
        text = requests.get(latent_gateway.endpoint + "/metrics", timeout=5).text
        out = {}
        for line in text.splitlines():
            if line.startswith("s3latent_read_seconds_count{"):
                name = line.split('path="')[1].split('"')[0]
                out[name] = float(line.rsplit(" ", 1)[1])
        return out

    before = paths()
    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda _: s3l.get_object(Bucket=lbucket,
                                                        Key="hot.png")["Body"].read(), range(8)))
    assert len(set(bodies)) == 1 and len(bodies[0]) == len(image)
    for _ in range(4):
        assert s3l.get_object(Bucket=lbucket, Key="hot.png")["Body"].read() == bodies[0]
    after = paths()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    # Served from the latent tier, then (promoted) from the image tier.
    assert delta.get("latent_hit", 0) >= 1 and delta.get("image_hit", 0) >= 1
    metrics = requests.get(latent_gateway.endpoint + "/metrics", timeout=5).text
    for name in ("s3latent_decode_batch_size_count", "s3latent_decode_queue_depth",
                 's3latent_render_stage_seconds{stage="decode"}', "s3latent_cache_alpha",
                 's3latent_cache_bytes{tier="latent"}', 's3latent_cache_hit_ratio{tier="image"}'):
        assert name in metrics, name
    # An overwrite drops the cached copies at once.
    s3l.put_object(Bucket=lbucket, Key="hot.png", Body=b"replaced", ContentType="text/plain")
    assert s3l.get_object(Bucket=lbucket, Key="hot.png")["Body"].read() == b"replaced"


def test_pixel_ceiling_refuses_large_latents_up_front(tiny_model: dict[str, str],
                                                      tmp_path: Path) -> None:
    """decode.max_image_pixels: a latent-only PUT over it is a 400 before any decode; a pair
    over it stays plain with the reason recorded."""
    gw = GatewayProcess(f"file://{tmp_path / 'data'}", tmp_path,
                        config=_config(tiny_model, extra="[decode]\nmax_image_pixels = 16384\n"))
    gw.start()
    try:
        s3 = gw.client()
        s3.create_bucket(Bucket="ceiling")
        image, sidecar, _ = make_pair(tiny_model, seed=8, h=16, w=24)  # 192x128 = 24576 px
        with pytest.raises(ClientError) as exc:
            s3.put_object(Bucket="ceiling", Key="big.png", Body=sidecar, ContentType=LATENT_TYPE)
        err = exc.value.response
        assert err["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert err["Error"]["Code"] == "InvalidArgument"
        assert "192x128" in err["Error"]["Message"] and "16384" in err["Error"]["Message"]
        assert err["ResponseMetadata"]["RequestId"]
        with pytest.raises(ClientError):
            s3.head_object(Bucket="ceiling", Key="big.png")
        _, small, _ = make_pair(tiny_model, seed=9)  # 128x128: at the ceiling, accepted
        s3.put_object(Bucket="ceiling", Key="ok.png", Body=small, ContentType=LATENT_TYPE)
        assert s3.head_object(Bucket="ceiling", Key="ok.png")["ContentLength"] > 0

        s3.put_object(Bucket="ceiling", Key="p.png", Body=image, ContentType="image/png")
        s3.put_object(Bucket="ceiling", Key="p.png.latent.safetensors", Body=sidecar)
        deadline, state = time.monotonic() + 60, ""
        while time.monotonic() < deadline and "refused" not in state:
            head = s3.head_object(Bucket="ceiling", Key="p.png")
            state = head["ResponseMetadata"]["HTTPHeaders"].get("x-s3latent-state", "")
            time.sleep(0.2)
        assert "refused" in state and "max_image_pixels" in state
        assert head["ResponseMetadata"]["HTTPHeaders"]["x-s3latent-representation"] == "plain"
        assert s3.get_object(Bucket="ceiling", Key="p.png")["Body"].read() == image
    finally:
        gw.stop()
