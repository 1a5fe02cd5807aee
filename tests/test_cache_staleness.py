"""Bounded staleness of the read cache: `[cache] revalidate_after`.

In-process (tests/inprocess.py) for the revalidation logic: writes that bypass the gateway go
straight to its backend object, and the backend's HEAD and GET calls are counted. The
end-to-end check (two gateway processes over one SeaweedFS, no cluster) is at the bottom.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from s3latent.backends.base import ObjectMeta
from s3latent.config import ConfigError, load_config, parse_duration
from s3latent.errors import S3Error
from s3latent.objects import physical
from tests.gateway import GatewayProcess
from tests.inprocess import InProcessGateway, config_text, serve_gateway
from tests.test_latent_objects import make_pair, tiny_model, wait_latent  # noqa: F401
from tests.test_object_layer_inprocess import BKT, put_pair

R = 0.5  # revalidate_after in these tests (seconds)
PLAIN = "plain"  # a bucket that keeps images as sent (no conversion traffic to count)


# -- configuration --------------------------------------------------------------------------
def test_revalidate_after_parses_durations(tmp_path: Path) -> None:
    assert parse_duration("1s") == 1.0 and parse_duration("250ms") == 0.25
    assert parse_duration("0") == 0.0 and parse_duration(2) == 2.0
    assert parse_duration("1.5s") == 1.5 and parse_duration("2m") == 120.0
    for bad in ("-1s", "soon", "1 parsec", "", True, float("nan")):
        with pytest.raises(ConfigError):
            parse_duration(bad)  # type: ignore[arg-type]
    cfg_file = tmp_path / "c.toml"
    assert load_config(None, env={}).cache.revalidate_after == 1.0
    cfg_file.write_text('[cache]\nrevalidate_after = "250ms"\n')
    assert load_config(cfg_file, env={}).cache.revalidate_after == 0.25
    for bad in ('"2h"', '"-1"', '"fast"'):
        cfg_file.write_text(f"[cache]\nrevalidate_after = {bad}\n")
        with pytest.raises(ConfigError, match="revalidate_after"):
            load_config(cfg_file, env={})


# -- in-process: the revalidation logic ------------------------------------------------------
class Calls:
    """Counts the backend's HEAD and GET calls per key (the read path's own calls)."""

    def __init__(self, backend: Any) -> None:
        self.heads: list[str] = []
        self.gets: list[str] = []
        self.head_delay = 0.0
        self.head_error: Exception | None = None
        head, get = backend.head_object, backend.get_object

        async def counted_head(bucket: str, key: str) -> Any:
            self.heads.append(key)
            if self.head_delay:
                await asyncio.sleep(self.head_delay)
            if self.head_error is not None:
                raise self.head_error
            return await head(bucket, key)

        async def counted_get(bucket: str, key: str, *args: Any, **kw: Any) -> Any:
            self.gets.append(key)
            return await get(bucket, key, *args, **kw)

        backend.head_object, backend.get_object = counted_head, counted_get

    def reset(self) -> None:
        self.heads.clear()
        self.gets.clear()


@pytest.fixture
async def gw(tmp_path: Path, tiny_model: dict[str, str]  # noqa: F811
             ) -> AsyncIterator[InProcessGateway]:
    extra = (f'[buckets."{PLAIN}"]\nconvert = false\n'
             f'[cache]\nrevalidate_after = "{int(R * 1000)}ms"\npromote_after = 2\n')
    async with serve_gateway(tmp_path, config_text(models={"tiny": tiny_model}, codec="q8",
                                                   extra=extra)) as served:
        for name in (PLAIN, BKT):
            await served.run(lambda s3, name=name: s3.create_bucket(Bucket=name))
        yield served


async def put(gw: InProcessGateway, key: str, body: bytes, bucket: str = PLAIN) -> None:
    await gw.run(lambda s3: s3.put_object(Bucket=bucket, Key=key, Body=body,
                                          ContentType="image/png", Metadata={"Origin": "t"},
                                          CacheControl="max-age=60"))


async def get(gw: InProcessGateway, key: str, bucket: str = PLAIN) -> bytes:
    return await gw.run(lambda s3: s3.get_object(Bucket=bucket, Key=key)["Body"].read())


async def bypass_put(gw: InProcessGateway, key: str, body: bytes, bucket: str = PLAIN) -> None:
    """A write straight to the backend (another gateway, a tool): this node hears nothing."""
    await physical.put_small(gw.backend, bucket, key, body, ObjectMeta(content_type="image/png"))


async def revalidations(gw: InProcessGateway) -> dict[str, float]:
    return {o: await gw.metric("s3latent_cache_revalidations_total", outcome=o)
            for o in ("fresh", "changed", "gone", "error")}


async def path_count(gw: InProcessGateway, path: str) -> float:
    return await gw.metric("s3latent_read_seconds_count", path=path)


async def test_fresh_entry_is_served_without_a_backend_call(gw: InProcessGateway) -> None:
    await put(gw, "a.png", b"one")
    calls = Calls(gw.backend)
    assert await get(gw, "a.png") == b"one"  # miss: one GET, cached
    assert calls.gets == ["a.png"] and calls.heads == []
    calls.reset()
    assert await get(gw, "a.png") == b"one"
    assert calls.gets == [] and calls.heads == []
    assert await path_count(gw, "image_hit") == 1
    assert await revalidations(gw) == {"fresh": 0, "changed": 0, "gone": 0, "error": 0}


async def test_old_entry_costs_one_head_then_is_fresh_again(gw: InProcessGateway) -> None:
    await put(gw, "a.png", b"one")
    calls = Calls(gw.backend)
    await get(gw, "a.png")
    await asyncio.sleep(R + 0.05)
    calls.reset()
    assert await get(gw, "a.png") == b"one"
    assert calls.heads == ["a.png"] and calls.gets == []  # still served from the cache
    assert (await revalidations(gw))["fresh"] == 1
    calls.reset()
    assert await get(gw, "a.png") == b"one"  # confirmed just now: no call
    assert calls.heads == [] and calls.gets == []


async def test_write_behind_the_gateways_back_is_seen_within_the_bound(
        gw: InProcessGateway) -> None:
    await put(gw, "a.png", b"one")
    await get(gw, "a.png")
    await bypass_put(gw, "a.png", b"two, longer")
    written = time.monotonic()
    while (data := await get(gw, "a.png")) == b"one":
        assert time.monotonic() - written < R + 0.2, "stale entry served beyond the bound"
        await asyncio.sleep(0.05)
    assert data == b"two, longer"
    assert (await revalidations(gw))["changed"] == 1
    await gw.backend.delete_object(PLAIN, "a.png")
    deleted = time.monotonic()
    while True:
        try:
            await get(gw, "a.png")
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "NoSuchKey"
            break
        assert time.monotonic() - deleted < R + 0.2, "deleted object served beyond the bound"
        await asyncio.sleep(0.05)
    assert (await revalidations(gw))["gone"] == 1


async def test_metadata_only_replacement_is_a_change(gw: InProcessGateway) -> None:
    """Same bytes (same ETag), new Content-Type: a GET must not keep sending the old one."""
    await put(gw, "a.png", b"one")
    await get(gw, "a.png")
    # Within the same second (Last-Modified's resolution): the metadata tells it apart.
    await physical.put_small(gw.backend, PLAIN, "a.png", b"one",
                             ObjectMeta(content_type="image/webp"))
    await asyncio.sleep(R + 0.05)
    got = await gw.run(lambda s3: s3.get_object(Bucket=PLAIN, Key="a.png"))
    assert got["ContentType"] == "image/webp"
    assert (await revalidations(gw))["changed"] == 1


async def test_concurrent_old_hits_share_one_head(gw: InProcessGateway) -> None:
    await put(gw, "a.png", b"one")
    calls = Calls(gw.backend)
    await get(gw, "a.png")
    await asyncio.sleep(R + 0.05)
    calls.reset()
    calls.head_delay = 0.2
    # Raw requests on the loop (boto3 would need a worker thread each, from the pool the
    # local backend's file IO also runs on).
    replies = await asyncio.gather(*[gw.call("GET", f"/{PLAIN}/a.png") for _ in range(8)])
    assert [(r.status, r.body) for r in replies] == [(200, b"one")] * 8
    assert calls.heads == ["a.png"] and calls.gets == []
    assert (await revalidations(gw))["fresh"] == 1


async def test_backend_failure_during_revalidation_is_the_backends_answer(
        gw: InProcessGateway) -> None:
    """An entry that cannot be checked is not served past the bound: 503, as for a miss."""
    await put(gw, "a.png", b"one")
    calls = Calls(gw.backend)
    await get(gw, "a.png")
    await asyncio.sleep(R + 0.05)
    calls.head_error = S3Error("ServiceUnavailable", "backend timed out")
    reply = await gw.call("GET", f"/{PLAIN}/a.png")
    assert reply.status == 503 and reply.error_code() == "ServiceUnavailable", reply
    assert reply.headers.get("x-amz-request-id")
    assert (await revalidations(gw))["error"] == 1
    calls.head_error = None  # the backend is back: the entry is checked and served
    calls.reset()
    assert await get(gw, "a.png") == b"one"
    assert calls.heads == ["a.png"] and calls.gets == []


async def test_head_and_get_of_a_key_agree_at_once(gw: InProcessGateway) -> None:
    """A HEAD that sees another object than the cached one drops it: the next GET agrees."""
    await put(gw, "a.png", b"one")
    await get(gw, "a.png")
    await bypass_put(gw, "a.png", b"two, longer")
    head = await gw.run(lambda s3: s3.head_object(Bucket=PLAIN, Key="a.png"))
    assert head["ContentLength"] == len(b"two, longer")
    assert await get(gw, "a.png") == b"two, longer"  # well within revalidate_after
    await gw.backend.delete_object(PLAIN, "a.png")
    err = await gw.error(lambda s3: s3.head_object(Bucket=PLAIN, Key="a.png"))
    assert err["Error"]["Code"] in ("404", "NoSuchKey")
    err = await gw.error(lambda s3: s3.get_object(Bucket=PLAIN, Key="a.png"))
    assert err["Error"]["Code"] == "NoSuchKey"


async def test_latent_entries_of_both_tiers_revalidate(gw: InProcessGateway,
                                                       tiny_model: dict[str, str]  # noqa: F811
                                                       ) -> None:
    """Containers (latent tier) and promoted renditions (image tier) know their backend
    object: an old one is fresh while the container stays, and goes with it."""
    image, _ = await put_pair(gw, tiny_model)
    for _ in range(4):  # miss, two latent hits (promoted), image hit
        await get(gw, "img.png", BKT)
    assert await path_count(gw, "image_hit") == 1
    await asyncio.sleep(R + 0.05)
    before = await revalidations(gw)  # the reads above may have taken longer than R
    assert before["changed"] == 0
    calls = Calls(gw.backend)
    assert len(await get(gw, "img.png", BKT)) == len(image)
    assert calls.heads == ["img.png"] and calls.gets == []
    assert await path_count(gw, "image_hit") == 2
    assert await revalidations(gw) == {**before, "fresh": before["fresh"] + 1}
    # Replaced behind the gateway's back by a plain image: both tiers' entries go.
    await bypass_put(gw, "img.png", b"not a rendition", BKT)
    await asyncio.sleep(R + 0.05)
    assert await get(gw, "img.png", BKT) == b"not a rendition"
    assert (await revalidations(gw))["changed"] == 1
    cache = gw.store.cache
    assert cache.dual.peek_latent((BKT, "img.png")) is None
    assert cache.image(BKT, "img.png").data == b"not a rendition"


# -- two gateway processes over one SeaweedFS, no cluster ------------------------------------
@pytest.fixture(scope="module")
def pair_of_gateways(seaweedfs: Any, tiny_model: dict[str, str],  # noqa: F811
                     tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    config = (f'[models.tiny]\nkind = "tae"\narch = "taesd"\ndecoder = "{tiny_model["decoder"]}"\n'
              f'[buckets."*"]\ncodec = "q8"\n[server]\nsweep_interval_s = 1.0\n'
              f'[cache]\nrevalidate_after = "{int(R * 1000)}ms"\n')
    procs = []
    try:
        for name in ("a", "b"):
            proc = GatewayProcess(seaweedfs.endpoint, tmp_path_factory.mktemp(f"stale-{name}"),
                                  config=config,
                                  backend_keys=(seaweedfs.access_key, seaweedfs.secret_key))
            procs.append(proc.start())
        yield procs[0], procs[1]
    finally:
        for proc in procs:
            proc.stop()


def _read(s3: Any, bucket: str, key: str) -> tuple[str | None, bytes | None]:
    """(HEAD's ETag, GET's body) of `key`; None where it answered 404."""
    try:
        etag = s3.head_object(Bucket=bucket, Key=key)["ETag"]
    except ClientError as exc:
        assert exc.response["Error"]["Code"] in ("404", "NoSuchKey"), exc.response
        etag = None
    try:
        got = s3.get_object(Bucket=bucket, Key=key)
        body, get_etag = got["Body"].read(), got["ETag"]
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "NoSuchKey", exc.response
        body, get_etag = None, None
    assert etag == get_etag, f"HEAD said {etag}, GET sent {get_etag}"
    return etag, body


def _until(s3: Any, bucket: str, key: str, done: Callable[[bytes | None], bool],
           since: float, what: str) -> float:
    """Poll B until a GET answers `done(body)`; HEAD and GET agree at every poll (a HEAD then
    a GET); seconds it took."""
    while True:
        try:
            body: bytes | None = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "NoSuchKey", exc.response
            body = None
        waited = time.monotonic() - since
        _read(s3, bucket, key)
        if done(body):
            return waited
        assert waited < R + 0.5, f"{what}: B still served the old object after {waited:.2f}s"
        time.sleep(0.05)


def test_two_gateways_without_cluster_stay_within_the_bound(
        pair_of_gateways: tuple[GatewayProcess, GatewayProcess], seaweedfs: Any,
        tiny_model: dict[str, str]) -> None:  # noqa: F811
    a, b = (g.client() for g in pair_of_gateways)
    bucket = f"st-{uuid.uuid4().hex[:10]}"
    a.create_bucket(Bucket=bucket)
    image, sidecar, _ = make_pair(tiny_model, seed=3)
    other, _, _ = make_pair(tiny_model, seed=4)
    a.put_object(Bucket=bucket, Key="img.png", Body=image, ContentType="image/png")
    a.put_object(Bucket=bucket, Key="img.png.latent.safetensors", Body=sidecar)
    wait_latent(a, bucket, "img.png")
    for _ in range(4):  # B caches it: container, then the promoted rendition
        assert len(_read(b, bucket, "img.png")[1] or b"") == len(image)
    # A converted image overwritten through A (with a plain image), then deleted.
    a.put_object(Bucket=bucket, Key="img.png", Body=other, ContentType="image/png")
    _until(b, bucket, "img.png", lambda body: body == other, time.monotonic(), "overwrite")
    for _ in range(2):
        _read(b, bucket, "img.png")  # a plain image in B's image tier now
    a.delete_object(Bucket=bucket, Key="img.png")
    _until(b, bucket, "img.png", lambda body: body is None, time.monotonic(), "delete")
    # A plain image cached by B, replaced and deleted straight on SeaweedFS (no gateway).
    direct = seaweedfs.client()
    a.put_object(Bucket=bucket, Key="plain.png", Body=b"plain one", ContentType="image/png")
    assert _read(b, bucket, "plain.png")[1] == b"plain one"
    direct.put_object(Bucket=bucket, Key="plain.png", Body=b"plain two", ContentType="image/png")
    _until(b, bucket, "plain.png", lambda body: body == b"plain two", time.monotonic(),
           "direct overwrite")
    direct.delete_object(Bucket=bucket, Key="plain.png")
    _until(b, bucket, "plain.png", lambda body: body is None, time.monotonic(), "direct delete")
    # B revalidated what it had cached and found it unchanged at least once, with SeaweedFS's
    # own HEAD and GET answers (a mismatch of their Last-Modified would make every check fail).
    time.sleep(R + 0.05)
    a.put_object(Bucket=bucket, Key="keep.png", Body=b"kept", ContentType="image/png",
                 Metadata={"Origin": "test"}, CacheControl="max-age=60")
    _read(b, bucket, "keep.png")
    time.sleep(R + 0.05)
    before = _metric(pair_of_gateways[1], "fresh")
    b.get_object(Bucket=bucket, Key="keep.png")["Body"].read()
    assert _metric(pair_of_gateways[1], "fresh") == before + 1


def _metric(proc: GatewayProcess, outcome: str) -> float:
    import requests

    text = requests.get(proc.endpoint + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(f's3latent_cache_revalidations_total{{outcome="{outcome}"}}'):
            return float(line.split()[-1])
    return 0.0
