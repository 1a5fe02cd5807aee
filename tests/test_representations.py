"""Issue 15: objects stored as AVIF instead of latents, end to end with boto3.

A real gateway process over the local backend, the tiny seeded model of
test_latent_objects.py. Buckets named av-* store pairs as AVIF (`representation =
"avif"`), pl-* store images uploaded without a sidecar as AVIF (`convert_plain`),
strict-* do the same under a policy no AVIF can meet.
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
from botocore.exceptions import ClientError
from PIL import Image
from safetensors.torch import load as load_safetensors

from s3latent.latent import avif
from s3latent.latent.container import peek_header
from s3latent.latent.fidelity import decode_image_bytes, psnr
from tests.gateway import GatewayProcess
from tests.test_latent_objects import _similar, make_pair, tiny_model  # noqa: F401

pytestmark = pytest.mark.skipif(not avif.available(), reason="Pillow without AVIF/dav1d")

MIN_PSNR = 30.0


def _config(model: dict[str, str]) -> str:
    return (f'[models.tiny]\nkind = "tae"\narch = "taesd"\ndecoder = "{model["decoder"]}"\n'
            f'[buckets."*"]\ncodec = "q8"\nmin_psnr = {MIN_PSNR}\n'
            f'[buckets."av-*"]\nrepresentation = "avif"\n'
            f'[buckets."pl-*"]\nconvert_plain = true\nconvert_plain_after = "0s"\n'
            f'[buckets."strict-*"]\nconvert_plain = true\nconvert_plain_after = 0\n'
            f'min_psnr = 99.0\n'
            f'[server]\nsweep_interval_s = 1.0\n')


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("avif-gw")


@pytest.fixture(scope="module")
def gw(workdir: Path, tiny_model: dict[str, str]) -> Iterator[GatewayProcess]:  # noqa: F811
    proc = GatewayProcess(f"file://{workdir / 'data'}", workdir, config=_config(tiny_model))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def s3(gw: GatewayProcess) -> Any:
    return gw.client()


def _bucket(s3: Any, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    return name


def _state(head: dict[str, Any]) -> tuple[str, str]:
    h = head["ResponseMetadata"]["HTTPHeaders"]
    return h.get("x-s3latent-stored-as", ""), h.get("x-s3latent-state", "")


def _wait(s3: Any, bucket: str, key: str, *, stored_as: str | None = None,
          refused: bool = False, timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        head = s3.head_object(Bucket=bucket, Key=key)
        got, state = _state(head)
        if stored_as is not None and got == stored_as:
            return head
        if state.startswith("refused"):
            if refused:
                return head
            raise AssertionError(f"refused: {state}")
        time.sleep(0.2)
    raise AssertionError(f"{bucket}/{key} did not reach {stored_as or 'a refusal'}")


def _smooth_png(size: int = 128) -> tuple[bytes, np.ndarray]:
    """A soft gradient with a blurred disc: what AVIF stores far below PNG."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    disc = np.exp(-((x - size / 2) ** 2 + (y - size / 3) ** 2) / (2 * (size / 6) ** 2))
    px = np.stack([x / size * 200 + 30, y / size * 180 + 40, 120 + 100 * disc], -1)
    pixels = px.clip(0, 255).round().astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", compress_level=0)  # a bulky upload
    return out.getvalue(), pixels


def _want_latent(s3: Any) -> None:
    s3.meta.events.register_first(
        "before-sign.s3.GetObject",
        lambda request, **_: request.headers.__setitem__("x-s3latent-want", "latent"))


def _physical(workdir: Path, bucket: str, key: str) -> bytes:
    """The backend object's data (the local backend keeps `buckets/<bucket>/<key>.~o`, the
    data first; a container's header says how long the rest is)."""
    raw = (workdir / "data" / "buckets" / bucket / f"{key}.~o").read_bytes()
    assert raw[:8] == b"\x89S3LAT\r\n", f"{bucket}/{key} is no container"
    return raw


def test_pair_admitted_as_avif_reads_back_like_a_latent_object(s3: Any, workdir: Path,
                                                               tiny_model: dict[str, str],  # noqa: F811
                                                               ) -> None:
    bucket = _bucket(s3, "av")
    image, sidecar, pixels = make_pair(tiny_model, seed=3)
    s3.put_object(Bucket=bucket, Key="a.png", Body=image, ContentType="image/png",
                  Metadata={"origin": "test"})
    s3.put_object(Bucket=bucket, Key="a.png.latent.safetensors", Body=sidecar)
    head = _wait(s3, bucket, "a.png", stored_as="avif")
    got = s3.get_object(Bucket=bucket, Key="a.png")
    data = got["Body"].read()
    # Same length as the upload; HEAD, GET and the listing agree on ETag and size.
    assert len(data) == len(image) == head["ContentLength"] == got["ContentLength"]
    assert got["ETag"] == head["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    assert got["Metadata"] == {"origin": "test"} and got["ContentType"] == "image/png"
    listing = {o["Key"]: o for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert listing["a.png"]["Size"] == len(data) and listing["a.png"]["ETag"] == got["ETag"]
    versions = {v["Key"]: v for v in s3.list_object_versions(Bucket=bucket)["Versions"]}
    assert versions["a.png"]["ETag"] == got["ETag"] and versions["a.png"]["Size"] == len(data)
    # Within the policy.
    rendered, info = decode_image_bytes(data)
    assert info.format == "PNG" and psnr(rendered, pixels) >= MIN_PSNR
    # Ranges and conditionals as for latent objects.
    part = s3.get_object(Bucket=bucket, Key="a.png", Range="bytes=5-60")
    assert part["Body"].read() == data[5:61]
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="a.png", IfNoneMatch=got["ETag"])
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    # The physical object is a version 2 AVIF container holding the sidecar's latent too.
    header = peek_header(_physical(workdir, bucket, "a.png"))
    assert header.kind == "avif" and header.render_profile.startswith("avif/dav1d-")
    assert header.extra["latent"]["codec"] == "q8"
    # The sidecar key keeps its contract: same length, dequantised values.
    side = s3.get_object(Bucket=bucket, Key="a.png.latent.safetensors")["Body"].read()
    assert len(side) == len(sidecar) == listing["a.png.latent.safetensors"]["Size"]
    original = load_safetensors(sidecar)["latent"].float()
    assert _similar(load_safetensors(side)["latent"].float(), original)
    _want_latent(s3)
    as_latent = s3.get_object(Bucket=bucket, Key="a.png")["Body"].read()
    assert _similar(load_safetensors(as_latent)["latent"].float(), original)


def test_avif_rendition_is_byte_identical_in_another_process(tmp_path: Path,
                                                             tiny_model: dict[str, str],  # noqa: F811
                                                             ) -> None:
    data_dir = f"file://{tmp_path / 'data'}"
    first = GatewayProcess(data_dir, tmp_path / "one", config=_config(tiny_model)).start()
    try:
        s3 = first.client()
        bucket = _bucket(s3, "pl")
        image, _ = _smooth_png()
        s3.put_object(Bucket=bucket, Key="p.png", Body=image, ContentType="image/png")
        _wait(s3, bucket, "p.png", stored_as="avif")
        one = s3.get_object(Bucket=bucket, Key="p.png")
        one_bytes = one["Body"].read()
    finally:
        first.stop()
    second = GatewayProcess(data_dir, tmp_path / "two", config=_config(tiny_model)).start()
    try:
        two = second.client().get_object(Bucket=bucket, Key="p.png")
        assert two["Body"].read() == one_bytes and two["ETag"] == one["ETag"]
    finally:
        second.stop()


def test_plain_image_stored_as_avif_when_the_bucket_asks(s3: Any) -> None:
    bucket = _bucket(s3, "pl")
    image, pixels = _smooth_png()
    s3.put_object(Bucket=bucket, Key="g.png", Body=image, ContentType="image/png")
    head = _wait(s3, bucket, "g.png", stored_as="avif")
    got = s3.get_object(Bucket=bucket, Key="g.png")
    data = got["Body"].read()
    assert len(data) == len(image) == head["ContentLength"]
    assert got["ETag"] == head["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    listing = {o["Key"]: o for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert listing["g.png"]["ETag"] == got["ETag"] and listing["g.png"]["Size"] == len(data)
    assert psnr(decode_image_bytes(data)[0], pixels) >= MIN_PSNR
    # No latent to give: the request is refused as for any plain object.
    _want_latent(s3)
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="g.png")
    assert exc.value.response["Error"]["Code"] == "InvalidRequest"


def test_plain_image_failing_the_policy_is_left_untouched_with_the_reason(
        s3: Any, workdir: Path) -> None:
    bucket = _bucket(s3, "strict")
    image, _ = _smooth_png()
    put = s3.put_object(Bucket=bucket, Key="s.png", Body=image, ContentType="image/png")
    head = _wait(s3, bucket, "s.png", refused=True)
    _, state = _state(head)
    assert "admission policy failed (avif:" in state and "99.0 dB" in state
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-s3latent-representation"] == "plain"
    got = s3.get_object(Bucket=bucket, Key="s.png")
    assert got["Body"].read() == image and got["ETag"] == put["ETag"] == head["ETag"]
    # Recorded durably, as refused pairs are.
    markers = [p for p in (workdir / "data").rglob("*") if bucket in str(p) and
               "refused" in str(p) and p.is_file()]
    assert markers, "no refusal record written"


def test_plain_images_stay_plain_by_default(s3: Any) -> None:
    bucket = _bucket(s3, "default")
    image, _ = _smooth_png()
    s3.put_object(Bucket=bucket, Key="d.png", Body=image, ContentType="image/png")
    time.sleep(2.5)  # two sweeps
    head = s3.head_object(Bucket=bucket, Key="d.png")
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-s3latent-representation"] == "plain"
    assert s3.get_object(Bucket=bucket, Key="d.png")["Body"].read() == image


def test_pair_in_a_default_bucket_stays_a_latent(s3: Any, workdir: Path,
                                                 tiny_model: dict[str, str],  # noqa: F811
                                                 ) -> None:
    """`smallest` (the default): a pair keeps its latent, which also serves its sidecar key."""
    bucket = _bucket(s3, "default")
    image, sidecar, _ = make_pair(tiny_model, seed=5)
    s3.put_object(Bucket=bucket, Key="l.png", Body=image, ContentType="image/png")
    s3.put_object(Bucket=bucket, Key="l.png.latent.safetensors", Body=sidecar)
    _wait(s3, bucket, "l.png", stored_as="latent")
    header = peek_header(_physical(workdir, bucket, "l.png"))
    assert header.kind == "latent" and header.codec == "q8"


def test_a_plain_image_keeps_its_acl_when_stored_as_avif(gw: GatewayProcess, s3: Any) -> None:
    """The AVIF container replaces the upload in the backend: the object's owner and ACL
    must come with it, or a public-read image turns private (and another user's, the bucket
    owner's)."""
    import urllib.request

    bucket = _bucket(s3, "pl-acl")
    image, _ = _smooth_png()
    s3.put_object(Bucket=bucket, Key="pub.png", Body=image, ContentType="image/png",
                  ACL="public-read")
    _wait(s3, bucket, "pub.png", stored_as="avif")
    signed = s3.get_object(Bucket=bucket, Key="pub.png")["Body"].read()
    with urllib.request.urlopen(f"{gw.endpoint}/{bucket}/pub.png", timeout=30) as resp:
        assert resp.read() == signed
    grants = s3.get_object_acl(Bucket=bucket, Key="pub.png")["Grants"]
    assert any(g["Grantee"].get("URI", "").endswith("/AllUsers") and g["Permission"] == "READ"
               for g in grants)
