"""Races and aliasing found by a hostile review of the object store (each failed before its fix).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from s3latent.backends.base import ObjectMeta
from tests.inprocess import InProcessGateway
from tests.test_latent_objects import make_pair, tiny_model  # noqa: F401 - fixture
from tests.test_object_layer_inprocess import (  # noqa: F401 - fixture
    BKT,
    SUFFIX,
    assert_views_agree,
    get_of,
    gw,
    head_of,
    listing,
    md5_etag,
    put_pair,
    views,
)


async def _put_pair_seed(served: InProcessGateway, model: dict[str, str], key: str,
                         seed: int) -> tuple[bytes, bytes]:
    image, sidecar = make_pair(model, seed=seed)[:2]
    await served.run(lambda s3: s3.put_object(Bucket=BKT, Key=key, Body=image,
                                              ContentType="image/png"))
    await served.run(lambda s3: s3.put_object(Bucket=BKT, Key=key + SUFFIX, Body=sidecar))
    await served.settle()
    return image, sidecar


async def test_second_stub_of_a_key_is_listed_with_its_own_view(
        gw: InProcessGateway, tiny_model: dict[str, str]) -> None:  # noqa: F811
    """Every stub of image K has the same bytes (physical.stub_body(K)), hence the same
    physical "-1" ETag; ctx.views is keyed by that ETag, so the listing reuses the first
    stub's logical size/ETag for a later, different sidecar."""
    await put_pair(gw, tiny_model, seed=1)
    await listing(gw)  # the listing learns the first stub's view
    await _put_pair_seed(gw, tiny_model, "img.png", seed=2)
    # Converted again, either as this pair or (when the image's conversion ran before the
    # new sidecar arrived, with the restored old sidecar, within the policy) with the old
    # latent, leaving the new sidecar plain: either way HEAD, GET and the listing agree.
    head = await head_of(gw, "img.png" + SUFFIX)
    got, data = await get_of(gw, "img.png" + SUFFIX)
    listed = (await listing(gw))["img.png" + SUFFIX]
    assert got["ETag"] == md5_etag(data) == head["ETag"]
    assert listed["ETag"] == head["ETag"], (listed["ETag"], head["ETag"])


async def test_a_stub_judged_during_an_overwrite_does_not_poison_later_stubs(
        gw: InProcessGateway, tiny_model: dict[str, str]) -> None:  # noqa: F811
    """A GET of the sidecar key on one gateway races a PUT of the image on another (or on
    the same one after its verdict LRU dropped the stub): the GET's backend read returned
    the stub, the PUT then made the stub a real sidecar and replaced the container, and
    only then does the GET check the stub's claim (LatentReads._miss -> ctx.trusted).

    That GET serves the stub's own JSON as the sidecar (wrong bytes), and the verdict
    "plain" stays cached for the stub's physical ETag, which every later stub of the key
    shares (physical.stub_body(key) is the same bytes: same "-1" ETag). Once the pair is
    converted again, that node serves the new stub as its 49-byte JSON, and a PUT of the
    image through it no longer makes the stub a real sidecar: the sidecar is lost.
    """
    store = gw.store
    image1, sidecar1 = await put_pair(gw, tiny_model, seed=1)
    side_key = "img.png" + SUFFIX
    stale = await store.backend.head_object(BKT, side_key)  # the GET's read of the stub
    async with store.converter.gate.closed(BKT):  # (holds the re-conversion back a moment)
        await gw.run(lambda s3: s3.put_object(Bucket=BKT, Key="img.png", Body=image1,
                                              ContentType="image/png"))
        # The PUT's materialize_sidecar cached this node's verdict on the stub; the other
        # node has none.
        store.ctx.views.clear()
        await store.ctx.trusted(BKT, stale)  # the GET goes on with what it read
    await gw.settle()  # the pair converts again: a new stub, same physical ETag
    _, data = await get_of(gw, side_key)
    assert len(data) == len(sidecar1), f"wrong bytes served for the sidecar: {data[:80]!r}"
    image2 = make_pair(tiny_model, seed=2)[0]
    await gw.run(lambda s3: s3.put_object(Bucket=BKT, Key="img.png", Body=image2,
                                          ContentType="image/png"))
    _, data = await get_of(gw, side_key)
    assert len(data) == len(sidecar1), f"sidecar lost: {data[:80]!r}"


async def test_multipart_upload_to_a_hidden_key_is_refused(
        gw: InProcessGateway) -> None:  # noqa: F811
    """PUT and COPY refuse keys under .s3latent/ (InvalidArgument); multipart does not:
    the upload completes (200) and the object is then invisible (GET NoSuchKey, not
    listed) and deleted with the bucket's hidden records: an accepted upload is lost.
    It can also forge the gateway's records (view index entries, refusal markers)."""
    key = ".s3latent/v/forged"
    err = await gw.error(lambda s3: s3.create_multipart_upload(Bucket=BKT, Key=key))
    assert err["Error"]["Code"] == "InvalidArgument", err


async def test_a_stalled_upload_does_not_hold_other_writes_of_the_key(
        gw: InProcessGateway, tiny_model: dict[str, str]) -> None:  # noqa: F811
    """LatentWrites.put_object streams the client's body to the backend inside
    pair_lock(bucket, key), so a slow or stalled upload (no body timeout exists) holds
    the key's lock for as long as it lasts: a DELETE of the key, another PUT of it, and
    the converter's _finish_stub for it (a conversion worker, which also holds the
    bucket's gate, so DeleteBucket waits too) all wait behind the upload's body."""
    await put_pair(gw, tiny_model)
    release = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield b"\x89PNG"
        await release.wait()  # the client stops sending
        yield b"rest"

    upload = asyncio.create_task(gw.store.put_object(
        BKT, "img.png", stalled(), ObjectMeta(content_type="image/png")))
    await asyncio.sleep(0.2)
    try:
        await asyncio.wait_for(gw.store.delete_object(BKT, "img.png"), timeout=3)
    finally:
        release.set()
        await asyncio.gather(upload, return_exceptions=True)


@pytest.mark.parametrize("alias", ["a//b", "a/./b", "a/x/../b", "/a/b"])
def test_deleting_an_aliasing_key_deletes_nothing_else(s3: Any, bucket: str,
                                                       alias: str) -> None:
    """Writes refuse keys a path-mapping store would merge with another (names.py), but
    DELETE accepts any key and hands it to the backend as is: on SeaweedFS, deleting
    `a//b` (a key that cannot exist) deletes the client's `a/b`. S3 answers 204 and
    deletes nothing; so must the gateway, on every backend."""
    s3.put_object(Bucket=bucket, Key="a/b", Body=b"keep me")
    s3.delete_object(Bucket=bucket, Key=alias)
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": alias}]})
    assert s3.get_object(Bucket=bucket, Key="a/b")["Body"].read() == b"keep me"



# -- the integrity tail of the same review: each test failed before its fix ----------------

SIDE = "img.png" + SUFFIX


def _tag_set(value: str) -> dict[str, Any]:
    return {"TagSet": [{"Key": "k", "Value": value}]}


async def _tags_of(served: InProcessGateway, key: str) -> dict[str, str]:
    got = await served.run(lambda s3: s3.get_object_tagging(Bucket=BKT, Key=key))
    return {t["Key"]: t["Value"] for t in got["TagSet"]}


async def _tag(served: InProcessGateway, key: str, value: str) -> None:
    await served.run(lambda s3: s3.put_object_tagging(Bucket=BKT, Key=key,
                                                      Tagging=_tag_set(value)))


async def test_restoring_a_sidecar_runs_the_stores_write_hooks(
        gw: InProcessGateway, tiny_model: dict[str, str],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An overwrite of a converted image first makes the sidecar's stub a real sidecar
    again (LatentWrites.materialize_sidecar). That wrote the sidecar key on the backend
    directly: its cached reads were not dropped and no write listener heard of it, so the
    cluster's owner of the sidecar key was never told (nor anything else plugged in there)."""
    await put_pair(gw, tiny_model)
    store = gw.store
    events: list[tuple[str, str]] = []
    store.add_write_listener(lambda bucket, key: events.append(("changed", key)))
    real_invalidate, real_put = store.cache.invalidate, gw.backend.put_object

    def invalidate(bucket: str, key: str) -> None:
        events.append(("invalidated", key))
        real_invalidate(bucket, key)

    async def put_object(bucket: str, key: str, *args: Any, **kwargs: Any) -> Any:
        result = await real_put(bucket, key, *args, **kwargs)
        events.append(("written", key))
        return result

    monkeypatch.setattr(store.cache, "invalidate", invalidate)
    monkeypatch.setattr(gw.backend, "put_object", put_object)
    await gw.run(lambda s3: s3.put_object(Bucket=BKT, Key="img.png", Body=b"plain now",
                                          ContentType="text/plain"))
    side = [event for event, key in events if key == SIDE]
    assert "written" in side, events  # the stub was made a real sidecar again
    written = side.index("written")
    assert "invalidated" in side[:written], events
    assert "changed" in side[written:], events


@pytest.mark.parametrize("key", ["img.png", SIDE])
async def test_a_tagging_landing_during_a_conversion_is_kept(
        gw: InProcessGateway, tiny_model: dict[str, str],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    """The converter rewrites the image (container) and the sidecar (stub) carrying over
    the tags it read just before. A PutObjectTagging answered 200 between that read and
    the commit (here: by another gateway, so no lock of this one can order it) was undone:
    the tags reverted silently. The later tagging must win."""
    image, sidecar = make_pair(tiny_model, seed=1)[:2]
    real_get_tags = gw.backend.get_tags
    tagged: list[bool] = []

    async def get_tags(bucket: str, name: str) -> dict[str, str]:
        tags = await real_get_tags(bucket, name)
        if name == key and not tagged:  # the conversion has just read the key's tags
            tagged.append(True)
            await _tag(gw, key, "new")
        return tags

    monkeypatch.setattr(gw.backend, "get_tags", get_tags)
    await gw.run(lambda s3: s3.put_object(Bucket=BKT, Key="img.png", Body=image,
                                          ContentType="image/png", Tagging="k=old"))
    await gw.run(lambda s3: s3.put_object(Bucket=BKT, Key=SIDE, Body=sidecar,
                                          Tagging="k=old"))
    await gw.settle()
    assert tagged
    stored = await gw.backend.head_object(BKT, key)
    assert stored.meta.internal.get("rep") in ("latent", "stub"), "not converted"
    assert await _tags_of(gw, key) == {"k": "new"}


async def _tagging_inside(served: InProcessGateway, key: str) -> asyncio.Task[None]:
    """A tagging of `key` to "new", started now; waited for until it is done, or for at most
    2 s (it cannot finish while a lock it needs is held: the point of the fix)."""
    task = asyncio.create_task(_tag(served, key, "new"))
    await asyncio.wait({task}, timeout=2)
    return task


async def test_a_tagging_landing_inside_a_conversions_commit_is_kept(
        gw: InProcessGateway, tiny_model: dict[str, str],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The converter checks the tags again right before its commit; a tagging through this
    gateway landing after that check and before the commit must still win (tags_lock)."""
    image, sidecar = make_pair(tiny_model, seed=1)[:2]
    real_complete = gw.backend.complete_multipart_upload
    tagging: list[asyncio.Task[None]] = []

    async def complete(bucket: str, key: str, *args: Any, **kwargs: Any) -> Any:
        if key == "img.png" and not tagging:  # the container's commit
            tagging.append(await _tagging_inside(gw, key))
        return await real_complete(bucket, key, *args, **kwargs)

    monkeypatch.setattr(gw.backend, "complete_multipart_upload", complete)
    await gw.run(lambda s3: s3.put_object(Bucket=BKT, Key="img.png", Body=image,
                                          ContentType="image/png", Tagging="k=old"))
    await gw.run(lambda s3: s3.put_object(Bucket=BKT, Key=SIDE, Body=sidecar))
    await gw.settle()
    assert tagging
    await tagging[0]
    assert (await gw.backend.head_object(BKT, "img.png")).meta.internal.get("rep") == "latent"
    assert await _tags_of(gw, "img.png") == {"k": "new"}


async def test_a_tagging_landing_while_a_sidecar_is_restored_is_kept(
        gw: InProcessGateway, tiny_model: dict[str, str],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An overwrite of a converted image writes its stub back as the real sidecar with the
    stub's tags; a tagging of the sidecar key landing in between was undone."""
    await put_pair(gw, tiny_model)
    await _tag(gw, SIDE, "old")
    real_put = gw.backend.put_object
    tagging: list[asyncio.Task[None]] = []

    async def put_object(bucket: str, key: str, *args: Any, **kwargs: Any) -> Any:
        if key == SIDE and not tagging:  # the stub becomes the real sidecar now
            tagging.append(await _tagging_inside(gw, key))
        return await real_put(bucket, key, *args, **kwargs)

    monkeypatch.setattr(gw.backend, "put_object", put_object)
    await gw.run(lambda s3: s3.put_object(Bucket=BKT, Key="img.png", Body=b"plain now",
                                          ContentType="text/plain"))
    assert tagging
    await tagging[0]
    assert (await gw.backend.head_object(BKT, SIDE)).meta.internal.get("rep") is None
    assert await _tags_of(gw, SIDE) == {"k": "new"}


@pytest.mark.parametrize("source", ["img.png", SIDE])
async def test_a_copy_whose_source_changes_under_it_copies_what_is_there(
        gw: InProcessGateway, tiny_model: dict[str, str],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    """CopyObject HEADs its source, then reads it. The image is overwritten in between
    (its stub made the real sidecar again first): a container's copy hit
    `assert view is not None` (500, a traceback in the log), a stub's copy answered 500
    "The sidecar's container is missing". The copy is decided again from what the source
    is now."""
    _, sidecar = await put_pair(gw, tiny_model)
    _, served_sidecar = await get_of(gw, SIDE)
    real_get = gw.backend.get_object
    fired: list[bool] = []

    async def get_object(bucket: str, key: str, byte_range: Any = None, **kw: Any) -> Any:
        if key == "img.png" and byte_range is None and not fired:  # the copy reads it
            fired.append(True)
            await gw.run(lambda s3: s3.put_object(Bucket=BKT, Key="img.png",
                                                  Body=b"plain now", ContentType="text/plain"))
        return await real_get(bucket, key, byte_range, **kw)

    monkeypatch.setattr(gw.backend, "get_object", get_object)
    once = gw.client(max_attempts=0)  # (legacy retry mode: 0 retries) a 500 is its own
    await gw.run(lambda s3: s3.copy_object(Bucket=BKT, Key="copy",
                                           CopySource={"Bucket": BKT, "Key": source}), once)
    assert fired
    want = b"plain now" if source == "img.png" else served_sidecar
    assert (await get_of(gw, "copy"))[1] == want
    assert len(served_sidecar) == len(sidecar)


async def test_a_self_copy_replacing_metadata_keeps_the_latent_object(
        gw: InProcessGateway, tiny_model: dict[str, str]) -> None:  # noqa: F811
    """CopyObject of a converted image onto itself with MetadataDirective REPLACE wrote
    the container back without `scetag` (the sidecar it was converted with) and first
    made the stub a real sidecar again: the sidecar was never stubbed again ("the sidecar
    key is not its sidecar"). The bytes do not change, so neither may the ETags (S3: a
    non-multipart object's ETag is the MD5 of its bytes), and the pair stays latent."""
    await put_pair(gw, tiny_model)
    before = {key: await head_of(gw, key) for key in ("img.png", SIDE)}
    image_before = (await get_of(gw, "img.png"))[1]
    await gw.run(lambda s3: s3.copy_object(
        Bucket=BKT, Key="img.png", CopySource={"Bucket": BKT, "Key": "img.png"},
        MetadataDirective="REPLACE", ContentType="image/png", Metadata={"who": "me"}))
    await gw.store.converter.sweep()
    await gw.settle()
    head, got, data, listed = await views(gw, "img.png")
    assert_views_agree("img.png", head, got, data, listed)
    assert head["ETag"] == before["img.png"]["ETag"] and data == image_before
    assert head["Metadata"] == {"who": "me"}
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-s3latent-representation"] == "latent"
    side_head, side_got, side_data, side_listed = await views(gw, SIDE)
    assert_views_agree(SIDE, side_head, side_got, side_data, side_listed)
    assert side_head["ETag"] == before[SIDE]["ETag"]
    assert side_head["LastModified"] == before[SIDE]["LastModified"]
    stub = await gw.backend.head_object(BKT, SIDE)
    assert stub.meta.internal.get("rep") == "stub", "the sidecar is no longer stubbed"
