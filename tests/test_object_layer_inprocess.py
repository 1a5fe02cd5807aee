"""The latent object layer in-process (tests/inprocess.py), with a tiny decoder model.

The model and the image + sidecar pairs come from tests/test_latent_objects.py (a
seeded TAESD-architecture decoder loaded through the registry from the config). The
tests wait for background conversion with the layer's own drain, never by polling,
and see the read path through /metrics.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.inprocess import InProcessGateway, config_text, serve_gateway
from tests.test_latent_objects import make_pair, tiny_model  # noqa: F401 - fixture

BKT = "lat"
SUFFIX = ".latent.safetensors"
_PAIRS: dict[tuple[str, int], tuple[bytes, bytes]] = {}


async def start(tmp_path: Path, model: dict[str, str], extra: str = "", codec: str = "q8"
                ) -> AsyncIterator[InProcessGateway]:
    """A gateway with the tiny model and `codec` for every bucket, bucket BKT created."""
    async with serve_gateway(tmp_path, config_text(models={"tiny": model}, codec=codec,
                                                   extra=extra)) as gw:
        await gw.run(lambda s3: s3.create_bucket(Bucket=BKT))
        yield gw


@pytest.fixture
async def gw(tmp_path: Path, tiny_model: dict[str, str]  # noqa: F811
             ) -> AsyncIterator[InProcessGateway]:
    async for served in start(tmp_path, tiny_model):
        yield served


async def put_pair(gw: InProcessGateway, model: dict[str, str], key: str = "img.png",
                   seed: int = 1) -> tuple[bytes, bytes]:
    """Upload a pair and wait for its conversion; HEAD must then say latent."""
    if (model["decoder"], seed) not in _PAIRS:  # making one loads the model: 0.4 s
        _PAIRS[model["decoder"], seed] = make_pair(model, seed=seed)[:2]
    image, sidecar = _PAIRS[model["decoder"], seed]
    await gw.run(lambda s3: s3.put_object(Bucket=BKT, Key=key, Body=image,
                                          ContentType="image/png"))
    await gw.run(lambda s3: s3.put_object(Bucket=BKT, Key=key + SUFFIX, Body=sidecar))
    await gw.settle()
    head = await head_of(gw, key)
    headers = head["ResponseMetadata"]["HTTPHeaders"]
    assert headers.get("x-s3latent-representation") == "latent", headers
    return image, sidecar


async def head_of(gw: InProcessGateway, key: str) -> dict[str, Any]:
    return await gw.run(lambda s3: s3.head_object(Bucket=BKT, Key=key))


async def get_of(gw: InProcessGateway, key: str, **kw: Any) -> tuple[dict[str, Any], bytes]:
    def call(s3: Any) -> tuple[dict[str, Any], bytes]:
        got = s3.get_object(Bucket=BKT, Key=key, **kw)
        return got, got["Body"].read()

    return await gw.run(call)


async def listing(gw: InProcessGateway) -> dict[str, dict[str, Any]]:
    page = await gw.run(lambda s3: s3.list_objects_v2(Bucket=BKT))
    return {o["Key"]: o for o in page.get("Contents", [])}


def md5_etag(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


async def decodes(gw: InProcessGateway) -> float:
    """Latents decoded so far (conversion checks included): the batch-size histogram's sum."""
    return await gw.metric("s3latent_decode_batch_size_sum")


async def views(gw: InProcessGateway, key: str
                ) -> tuple[dict[str, Any], dict[str, Any], bytes, dict[str, Any]]:
    """(HEAD, GET, GET's body, listing entry) of `key`."""
    head = await head_of(gw, key)
    got, data = await get_of(gw, key)
    return head, got, data, (await listing(gw))[key]


def assert_views_agree(key: str, head: dict[str, Any], got: dict[str, Any], data: bytes,
                       listed: dict[str, Any]) -> None:
    """The bytes GET sends are described by their own headers, and HEAD, GET and the
    listing say the same size and ETag."""
    assert got["ETag"] == md5_etag(data) and got["ContentLength"] == len(data), key
    assert head["ETag"] == got["ETag"] == listed["ETag"], key
    assert head["ContentLength"] == len(data) == listed["Size"], key


async def test_pair_converts_and_the_image_views_agree(
        gw: InProcessGateway, tiny_model: dict[str, str]) -> None:  # noqa: F811
    image, sidecar = await put_pair(gw, tiny_model)
    assert sorted(await listing(gw)) == ["img.png", "img.png" + SUFFIX]
    head, got, data, listed = await views(gw, "img.png")
    assert_views_agree("img.png", head, got, data, listed)
    assert len(data) == len(image)  # the rendition keeps the upload's length
    assert got["ContentType"] == "image/png"
    assert got["ResponseMetadata"]["HTTPHeaders"]["x-s3latent-representation"] == "latent"
    # The sidecar key: same length as uploaded (dequantised values with a lossy codec).
    head, got, data, listed = await views(gw, "img.png" + SUFFIX)
    assert len(data) == len(sidecar) == head["ContentLength"] == listed["Size"]
    assert got["ContentLength"] == len(data)


async def test_sidecar_key_views_agree_with_a_lossless_codec(
        tmp_path: Path, tiny_model: dict[str, str]) -> None:  # noqa: F811
    async for gw in start(tmp_path, tiny_model, codec="lossless"):
        _, sidecar = await put_pair(gw, tiny_model)
        head, got, data, listed = await views(gw, "img.png" + SUFFIX)
        assert data == sidecar
        assert_views_agree("sidecar", head, got, data, listed)


async def test_sidecar_key_views_agree_with_a_lossy_codec(
        gw: InProcessGateway, tiny_model: dict[str, str]) -> None:  # noqa: F811
    await put_pair(gw, tiny_model)
    head, got, data, listed = await views(gw, "img.png" + SUFFIX)
    assert_views_agree("sidecar", head, got, data, listed)
    # A client revalidating with the ETag HEAD gave gets the bytes it described.
    reply = await gw.call("GET", f"/{BKT}/img.png{SUFFIX}", headers={"If-None-Match":
                                                                     head["ETag"]})
    assert reply.status == 304, reply


async def test_ranged_gets_of_a_latent_object(gw: InProcessGateway,
                                              tiny_model: dict[str, str]  # noqa: F811
                                              ) -> None:
    await put_pair(gw, tiny_model)
    _, whole = await get_of(gw, "img.png")
    size = len(whole)
    for header, start_, end in (("bytes=0-99", 0, 99), ("bytes=100-1099", 100, 1099),
                                ("bytes=-50", size - 50, size - 1),
                                ("bytes=500-", 500, size - 1),
                                ("bytes=0-10000000", 0, size - 1)):
        got, part = await get_of(gw, "img.png", Range=header)
        assert part == whole[start_:end + 1], header
        assert got["ContentRange"] == f"bytes {start_}-{end}/{size}", header
        assert got["ContentLength"] == len(part) and got["ETag"] == md5_etag(whole), header


@pytest.mark.parametrize("cache", ["2GiB", "0"])
async def test_a_cold_ranged_get_of_a_latent_object_is_one_backend_get(
        tmp_path: Path, tiny_model: dict[str, str], cache: str) -> None:  # noqa: F811
    """The handler's HEAD says the object is latent, so the GET fetches the container whole
    at once instead of a range it would throw away (with the read cache and without)."""
    async for gw in start(tmp_path, tiny_model, f'[cache]\nmemory = "{cache}"\n'):
        await put_pair(gw, tiny_model)
        backend = gw.store.backend
        calls: list[tuple[int, int] | None] = []
        real_get = backend.get_object

        async def counting_get(bucket: str, key: str,
                               byte_range: tuple[int, int] | None = None,
                               calls: list[Any] = calls, real_get: Any = real_get) -> Any:
            calls.append(byte_range)
            return await real_get(bucket, key, byte_range)

        backend.get_object = counting_get
        got, part = await get_of(gw, "img.png", Range="bytes=10-109")
        assert len(part) == 100 and got["ContentRange"].startswith("bytes 10-109/")
        assert calls == [None], calls


async def test_range_past_a_latent_objects_end_is_416(gw: InProcessGateway,
                                                      tiny_model: dict[str, str]  # noqa: F811
                                                      ) -> None:
    await put_pair(gw, tiny_model)
    size = (await head_of(gw, "img.png"))["ContentLength"]
    reply = await gw.call("GET", f"/{BKT}/img.png", headers={"Range": f"bytes={size}-"})
    assert reply.status == 416 and reply.error_code() == "InvalidRange"
    assert reply.headers["Content-Range"] == f"bytes */{size}"


async def test_plain_overwrite_of_the_image_makes_it_plain(gw: InProcessGateway,
                                                           tiny_model: dict[str, str]  # noqa: F811
                                                           ) -> None:
    await put_pair(gw, tiny_model)
    _, side_before = await get_of(gw, "img.png" + SUFFIX)
    new = b"not the decode of that latent"
    await gw.run(lambda s3: s3.put_object(Bucket=BKT, Key="img.png", Body=new,
                                          ContentType="image/png"))
    await gw.settle()  # the rewrite queues a conversion; it must not take the new bytes
    head = await head_of(gw, "img.png")
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-s3latent-representation"] == "plain"
    got, data = await get_of(gw, "img.png")
    assert data == new and got["ETag"] == md5_etag(new) == head["ETag"]
    # The sidecar key still reads as it did, now from a real object.
    got, side = await get_of(gw, "img.png" + SUFFIX)
    assert side == side_before and got["ETag"] == md5_etag(side)
    listed = await listing(gw)
    assert listed["img.png"]["Size"] == len(new)
    assert listed["img.png" + SUFFIX]["Size"] == len(side)


async def test_overwriting_the_image_with_a_non_image_keeps_the_sidecar(
        tmp_path: Path, tiny_model: dict[str, str]) -> None:  # noqa: F811
    """A converted key overwritten by something that does not look like an image (no image
    extension, no image content type): its stub still becomes the real sidecar first."""
    async for gw in start(tmp_path, tiny_model, codec="lossless"):
        _, sidecar = await put_pair(gw, tiny_model, key="photo")
        await gw.run(lambda s3: s3.put_object(Bucket=BKT, Key="photo", Body=b"not an image",
                                              ContentType="application/octet-stream"))
        await gw.settle()
        _, data = await get_of(gw, "photo" + SUFFIX)
        assert data == sidecar
        head = await head_of(gw, "photo" + SUFFIX)
        assert head["ResponseMetadata"]["HTTPHeaders"].get(
            "x-s3latent-representation") == "plain"


@pytest.mark.parametrize("deleted", ["image", "sidecar"])
async def test_deleting_one_key_of_a_pair_keeps_the_other(gw: InProcessGateway,
                                                          tiny_model: dict[str, str],  # noqa: F811
                                                          deleted: str) -> None:
    await put_pair(gw, tiny_model)
    keys = {"image": "img.png", "sidecar": "img.png" + SUFFIX}
    gone, kept = keys[deleted], keys["sidecar" if deleted == "image" else "image"]
    _, before = await get_of(gw, kept)
    await gw.run(lambda s3: s3.delete_object(Bucket=BKT, Key=gone))
    await gw.settle()
    missing = await gw.error(lambda s3: s3.head_object(Bucket=BKT, Key=gone))
    assert missing["ResponseMetadata"]["HTTPStatusCode"] == 404
    got, data = await get_of(gw, kept)
    assert data == before and got["ETag"] == md5_etag(data)
    head = await head_of(gw, kept)
    assert head["ContentLength"] == len(data) and head["ETag"] == got["ETag"]
    assert sorted(await listing(gw)) == [kept]


async def test_read_cache_serves_the_second_get(gw: InProcessGateway,
                                                tiny_model: dict[str, str]  # noqa: F811
                                                ) -> None:
    await put_pair(gw, tiny_model)
    _, first = await get_of(gw, "img.png")
    assert await gw.metric("s3latent_read_seconds_count", path="miss") == 1
    _, second = await get_of(gw, "img.png")
    assert second == first
    hits = (await gw.metric("s3latent_read_seconds_count", path="latent_hit")
            + await gw.metric("s3latent_read_seconds_count", path="image_hit"))
    assert hits == 1
    assert await gw.metric("s3latent_read_seconds_count", path="miss") == 1
    # A write drops what the cache held for the key.
    await gw.run(lambda s3: s3.put_object(Bucket=BKT, Key="img.png", Body=b"plain now",
                                          ContentType="image/png"))
    await gw.settle()
    assert (await get_of(gw, "img.png"))[1] == b"plain now"


async def test_concurrent_cold_gets_decode_once(tmp_path: Path,
                                                tiny_model: dict[str, str]  # noqa: F811
                                                ) -> None:
    # The decoder waits up to 300 ms for company, so the second GET surely arrives
    # while the first is still being decoded.
    async for gw in start(tmp_path, tiny_model, "[decode]\nmax_wait_ms = 300\n"):
        await put_pair(gw, tiny_model)
        before = await decodes(gw)
        (got1, one), (got2, two) = await asyncio.gather(get_of(gw, "img.png"),
                                                        get_of(gw, "img.png"))
        assert one == two and got1["ETag"] == got2["ETag"] == md5_etag(one)
        assert await decodes(gw) - before == 1


async def test_delete_bucket_waits_for_a_conversion_in_the_bucket(
        gw: InProcessGateway, tiny_model: dict[str, str],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A conversion that read a pair just before the client deleted both keys writes its
    refusal marker afterwards. DeleteBucket answers only once that conversion is done,
    and no gateway write reaches the bucket after the bucket is deleted: on SeaweedFS
    such a PUT creates the bucket again (the deleted bucket came back in ListBuckets).
    """
    bucket = "going"
    held, release = asyncio.Event(), asyncio.Event()
    refusals = gw.store.converter.refusals
    write_marker = refusals.write

    async def held_write(*args: Any, **kwargs: Any) -> bool:
        held.set()
        await release.wait()
        return await write_marker(*args, **kwargs)

    monkeypatch.setattr(refusals, "write", held_write)
    backend = gw.backend
    real_put, real_delete_bucket = backend.put_object, backend.delete_bucket
    events: list[str] = []

    async def put_object(name: str, key: str, *args: Any, **kwargs: Any) -> Any:
        if name == bucket:
            events.append(f"put {key}")
        return await real_put(name, key, *args, **kwargs)

    async def delete_bucket(name: str) -> None:
        await real_delete_bucket(name)
        if name == bucket:
            events.append("bucket deleted")

    monkeypatch.setattr(backend, "put_object", put_object)
    monkeypatch.setattr(backend, "delete_bucket", delete_bucket)
    sidecar = make_pair(tiny_model, seed=21)[1]
    await gw.run(lambda s3: s3.create_bucket(Bucket=bucket))
    await gw.run(lambda s3: s3.put_object(Bucket=bucket, Key="m.png", Body=b"not an image",
                                          ContentType="text/plain"))
    await gw.run(lambda s3: s3.put_object(Bucket=bucket, Key="m.png" + SUFFIX, Body=sidecar))
    try:
        await asyncio.wait_for(held.wait(), 60)  # judged and refused; marker not yet written
        await gw.run(lambda s3: s3.delete_objects(Bucket=bucket, Delete={"Objects": [
            {"Key": "m.png"}, {"Key": "m.png" + SUFFIX}]}))
        deleting = asyncio.ensure_future(gw.run(lambda s3: s3.delete_bucket(Bucket=bucket)))
        # Only the unfixed gateway can answer here (in milliseconds); the fixed one cannot
        # answer before `release`, however long this waits.
        done, _ = await asyncio.wait({deleting}, timeout=1.0)
        assert not done, "DeleteBucket answered while a conversion in the bucket ran"
    finally:
        release.set()
    await deleting
    await gw.settle()
    assert events[-1] == "bucket deleted", events
    names = await gw.run(lambda s3: [b["Name"] for b in s3.list_buckets()["Buckets"]])
    assert bucket not in names


async def sidecar_now(gw: InProcessGateway, key: str = "img.png" + SUFFIX) -> bytes | str:
    """The sidecar key's bytes, or the error code its GET answers."""
    def call(s3: Any) -> bytes | str:
        try:
            return bytes(s3.get_object(Bucket=BKT, Key=key)["Body"].read())
        except ClientError as exc:
            return str(exc.response["Error"]["Code"])

    return await gw.run(call)


async def test_image_overwritten_between_container_and_stub_keeps_the_sidecar(
        gw: InProcessGateway, tiny_model: dict[str, str],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A PUT of the image lands after the conversion wrote the container and before it
    stubbed the sidecar: the stub must not be written (it would point at an image that
    is no container any more, and the sidecar's bytes would be gone for good)."""
    image, sidecar = make_pair(tiny_model, seed=1)[:2]
    backend = gw.backend
    real_put = backend.put_object
    held, release = asyncio.Event(), asyncio.Event()

    async def put_object(bucket: str, key: str, *args: Any, **kwargs: Any) -> Any:
        # The container's listing-index entry: written between container and stub.
        if key.startswith(".s3latent/v/img.png ") and not held.is_set():
            held.set()
            await release.wait()
        return await real_put(bucket, key, *args, **kwargs)

    monkeypatch.setattr(backend, "put_object", put_object)
    await gw.run(lambda s3: s3.put_object(Bucket=BKT, Key="img.png", Body=image,
                                          ContentType="image/png"))
    await gw.run(lambda s3: s3.put_object(Bucket=BKT, Key="img.png" + SUFFIX, Body=sidecar))
    try:
        await asyncio.wait_for(held.wait(), 60)
        await gw.run(lambda s3: s3.put_object(Bucket=BKT, Key="img.png", Body=b"plain now",
                                              ContentType="text/plain"))
    finally:
        release.set()
    await gw.settle()
    assert (await get_of(gw, "img.png"))[1] == b"plain now"
    assert await sidecar_now(gw) == sidecar


async def test_conversion_during_an_overwrite_does_not_stub_the_sidecar(
        tmp_path: Path, tiny_model: dict[str, str],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A PUT onto a converted image makes the stub a real sidecar again, then writes the
    image. A conversion of the key in between (the sweeper sees a real sidecar beside a
    container) must not stub it again: with a lossless codec the sidecar is byte-identical
    to the one the container holds, and the stub would outlive the container."""
    async for gw in start(tmp_path, tiny_model, codec="lossless"):
        await _conversion_during_overwrite(gw, tiny_model, monkeypatch)


async def _conversion_during_overwrite(gw: InProcessGateway, model: dict[str, str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _, sidecar = await put_pair(gw, model)
    backend = gw.backend
    real_put = backend.put_object
    fired = False

    async def put_object(bucket: str, key: str, *args: Any, **kwargs: Any) -> Any:
        nonlocal fired
        result = await real_put(bucket, key, *args, **kwargs)
        if key == "img.png" + SUFFIX and not fired:
            # The stub is a real sidecar again; the image is not replaced yet. A sweep's
            # conversion now sees a real sidecar beside a container: give it every chance.
            fired = True
            gw.store.converter.schedule(BKT, "img.png")
            await asyncio.sleep(0.3)
        return result

    monkeypatch.setattr(backend, "put_object", put_object)
    await gw.run(lambda s3: s3.put_object(Bucket=BKT, Key="img.png", Body=b"plain now",
                                          ContentType="text/plain"))
    assert fired
    await gw.settle()
    assert (await get_of(gw, "img.png"))[1] == b"plain now"
    assert await sidecar_now(gw) == sidecar
