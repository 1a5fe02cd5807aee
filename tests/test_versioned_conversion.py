"""Conversion in versioned buckets on the local backend (docs/versioning.md): a version is
converted in place, keeping its version ID, place in the stack, Last-Modified and lock; the
client sees the same version ID, size and ETag an unversioned bucket's conversion gives, no
extra version, and the bucket stores what an unversioned one does.

In-process (the real wiring over the local backend); races are staged by patching backend
calls the converter makes. Crash rows run a gateway process that dies at a step.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from s3latent.backends.local import LocalBackend
from tests.gateway import GatewayProcess
from tests.inprocess import InProcessGateway
from tests.test_latent_objects import _config, make_pair, tiny_model, wait_latent  # noqa: F401
from tests.test_object_layer_inprocess import gw, md5_etag, start  # noqa: F401 - fixture

SIDE = ".latent.safetensors"
VB = "vers"


async def _bucket(gw: InProcessGateway, name: str, status: str | None = "Enabled",  # noqa: F811
                  lock: bool = False) -> None:
    if lock:
        await gw.run(lambda s3: s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True))
    else:
        await gw.run(lambda s3: s3.create_bucket(Bucket=name))
    if status is not None and not lock:
        await gw.run(lambda s3: s3.put_bucket_versioning(
            Bucket=name, VersioningConfiguration={"Status": status}))


async def _put(gw: InProcessGateway, bucket: str, key: str, body: bytes,  # noqa: F811
               **kw: Any) -> dict[str, Any]:
    return await gw.run(lambda s3: s3.put_object(Bucket=bucket, Key=key, Body=body, **kw))


async def _put_pair(gw: InProcessGateway, bucket: str, model: dict[str, str],  # noqa: F811
                    seed: int, key: str = "img.png") -> tuple[str, str, bytes, bytes]:
    image, sidecar = make_pair(model, seed=seed)[:2]
    vi = (await _put(gw, bucket, key, image, ContentType="image/png")).get("VersionId")
    vs = (await _put(gw, bucket, key + SIDE, sidecar)).get("VersionId")
    return vi, vs, image, sidecar


async def _head(gw: InProcessGateway, bucket: str, key: str, **kw: Any  # noqa: F811
                ) -> dict[str, Any]:
    return await gw.run(lambda s3: s3.head_object(Bucket=bucket, Key=key, **kw))


async def _get(gw: InProcessGateway, bucket: str, key: str, **kw: Any  # noqa: F811
               ) -> tuple[dict[str, Any], bytes]:
    def call(s3: Any) -> tuple[dict[str, Any], bytes]:
        got = s3.get_object(Bucket=bucket, Key=key, **kw)
        return got, got["Body"].read()
    return await gw.run(call)


def _rep(head: dict[str, Any]) -> str:
    return str(head["ResponseMetadata"]["HTTPHeaders"]["x-s3latent-representation"])


async def _versions(gw: InProcessGateway, bucket: str, key: str  # noqa: F811
                    ) -> list[tuple[str, int, str]]:
    resp = await gw.run(lambda s3: s3.list_object_versions(Bucket=bucket, Prefix=key))
    return [(v["VersionId"], v["Size"], v["ETag"]) for v in resp.get("Versions", [])
            if v["Key"] == key] + [(m["VersionId"], -1, "marker")
                                   for m in resp.get("DeleteMarkers", []) if m["Key"] == key]


def _noncurrent_files(data_dir: Path, bucket: str) -> list[Path]:
    """Version files the local backend keeps for noncurrent versions (walk, not the API)."""
    return [p for p in (data_dir / "buckets" / bucket).rglob("*")
            if p.is_file() and any(part.endswith(".~v") for part in p.parts)]


async def _physical_bytes(data_dir: Path, bucket: str, versioned: bool) -> int:
    """Bytes of every stored version outside the gateway's range, from a second backend
    over the same directory (never through the gateway)."""
    backend = LocalBackend(data_dir)
    if versioned:
        page = await backend.list_object_versions(bucket, max_keys=1000)
        assert not page.is_truncated
        return sum(e.size for e in page.entries if not e.key.startswith(".s3latent/"))
    listed = await backend.list_objects(bucket, max_keys=1000)
    return sum(e.size for e in listed.entries if not e.key.startswith(".s3latent/"))


# -- what a client sees ------------------------------------------------------------

@pytest.mark.parametrize("status", ["Enabled", "Suspended"])
async def test_a_converted_version_keeps_its_id_size_and_etag(
        gw: InProcessGateway, tiny_model: dict[str, str], status: str) -> None:  # noqa: F811
    """Failed before: versioned buckets were never converted (the image stayed plain)."""
    await _bucket(gw, "plain", status=None)
    await _bucket(gw, VB, status=status)
    await _put_pair(gw, "plain", tiny_model, seed=11)
    vi, vs, image, sidecar = await _put_pair(gw, VB, tiny_model, seed=11)
    if status == "Suspended":
        assert vi is None and vs is None  # the PUT names no version: it is `null`
        vi = vs = "null"
    await gw.settle()
    for key in ("img.png", "img.png" + SIDE):
        want = await _head(gw, "plain", key)
        head = await _head(gw, VB, key)
        assert _rep(want) == _rep(head) == "latent"
        assert head["VersionId"] == (vi if key == "img.png" else vs)
        assert (head["ContentLength"], head["ETag"]) == (want["ContentLength"], want["ETag"])
        got, data = await _get(gw, VB, key, VersionId=head["VersionId"])
        assert data == (await _get(gw, "plain", key))[1]
        assert got["ETag"] == md5_etag(data) == head["ETag"]
        assert await _versions(gw, VB, key) == \
            [(head["VersionId"], head["ContentLength"], head["ETag"])]
    # The upload's size and Last-Modified, as an unversioned conversion keeps them.
    assert (await _head(gw, VB, "img.png"))["ContentLength"] == len(image)
    # The storage saving holds: nothing but the container and the stub is stored.
    assert _noncurrent_files(gw.data_dir, VB) == []
    assert await _physical_bytes(gw.data_dir, VB, True) == \
        await _physical_bytes(gw.data_dir, "plain", False) < len(image) + len(sidecar)


async def test_overwrite_restore_and_permanent_delete_of_a_converted_version(
        gw: InProcessGateway, tiny_model: dict[str, str]) -> None:  # noqa: F811
    await _bucket(gw, VB)
    vi, vs, _, sidecar = await _put_pair(gw, VB, tiny_model, seed=12)
    await gw.settle()
    rendition = (await _get(gw, VB, "img.png"))[1]
    served_side = (await _get(gw, VB, "img.png" + SIDE))[1]
    assert len(served_side) == len(sidecar)
    # Overwrite: a new version on top; the converted one and the stub reading it stay.
    other = make_pair(tiny_model, seed=13)[0]
    new = (await _put(gw, VB, "img.png", other, ContentType="image/png"))["VersionId"]
    await gw.settle()
    assert [v[0] for v in await _versions(gw, VB, "img.png")] == [new, vi]
    assert (await _get(gw, VB, "img.png", VersionId=vi))[1] == rendition
    assert (await _get(gw, VB, "img.png" + SIDE))[1] == served_side
    assert [v[0] for v in await _versions(gw, VB, "img.png" + SIDE)] == [vs]
    # Restore by copy of the version: the rendition is current again.
    restored = await gw.run(lambda s3: s3.copy_object(
        Bucket=VB, Key="img.png", CopySource={"Bucket": VB, "Key": "img.png",
                                              "VersionId": vi}))
    assert restored["CopySourceVersionId"] == vi
    got, data = await _get(gw, VB, "img.png")
    assert data == rendition and got["ETag"] == md5_etag(rendition)
    # The converted version deleted for good: its stub still reads, from a keep copy.
    await gw.run(lambda s3: s3.delete_object(Bucket=VB, Key="img.png", VersionId=vi))
    assert (await _get(gw, VB, "img.png" + SIDE, VersionId=vs))[1] == served_side
    kept = [p for p in (gw.data_dir / "buckets" / VB).rglob("*") if "keepv" in str(p)
            and p.is_file()]
    assert kept, "no keep copy was made"
    converter = gw.store.converter
    await converter.sweep()
    assert (await _get(gw, VB, "img.png" + SIDE))[1] == served_side  # still needed: kept
    assert [p for p in kept if p.exists()] == kept
    # Once the stub version is gone, the sweeper removes the keep copy.
    await gw.run(lambda s3: s3.delete_object(Bucket=VB, Key="img.png" + SIDE, VersionId=vs))
    await converter.sweep()
    assert [p for p in kept if p.exists()] == []


# -- races ------------------------------------------------------------------------

Hook = Callable[[], Awaitable[None]]


def _before_commit_of(gw: InProcessGateway, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                      key: str, action: Hook, *, after: bool = False) -> list[bool]:
    """Run `action` once, right before (or after) the converter's commit of `key`."""
    real = gw.backend.complete_multipart_upload
    done: list[bool] = []

    async def complete(bucket: str, name: str, *args: Any, **kwargs: Any) -> Any:
        if name == key and not done and not after:
            done.append(True)
            await action()
        result = await real(bucket, name, *args, **kwargs)
        if name == key and not done and after:
            done.append(True)
            await action()
        return result

    monkeypatch.setattr(gw.backend, "complete_multipart_upload", complete)
    return done


async def test_r1_a_put_during_conversion_wins_and_both_versions_stay_exact(
        gw: InProcessGateway, tiny_model: dict[str, str],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    await _bucket(gw, VB)
    other = make_pair(tiny_model, seed=15)[0]
    newer: list[str] = []

    async def put() -> None:
        newer.append((await _put(gw, VB, "img.png", other, ContentType="image/png"))
                     ["VersionId"])

    done = _before_commit_of(gw, monkeypatch, "img.png", put)
    vi, _, image, _ = await _put_pair(gw, VB, tiny_model, seed=14)
    await gw.settle()
    assert done
    versions = await _versions(gw, VB, "img.png")
    assert [v[0] for v in versions] == [newer[0], vi]
    assert (await _get(gw, VB, "img.png", VersionId=vi))[1] == image
    assert versions[1] == (vi, len(image), md5_etag(image))
    # The newer version may convert too (with the tiny model the old sidecar's latent can
    # pass for it); either way it is its own version, with its own size.
    got, data = await _get(gw, VB, "img.png")
    assert got["VersionId"] == newer[0] and len(data) == len(other)


async def test_r3_a_permanent_delete_during_conversion_brings_nothing_back(
        gw: InProcessGateway, tiny_model: dict[str, str],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    await _bucket(gw, VB)
    vid: list[str] = []

    async def delete() -> None:
        await gw.run(lambda s3: s3.delete_object(Bucket=VB, Key="img.png", VersionId=vid[0]))

    done = _before_commit_of(gw, monkeypatch, "img.png", delete)
    image, sidecar = make_pair(tiny_model, seed=16)[:2]
    vid.append((await _put(gw, VB, "img.png", image, ContentType="image/png"))["VersionId"])
    await _put(gw, VB, "img.png" + SIDE, sidecar)
    await gw.settle()
    assert done
    assert await _versions(gw, VB, "img.png") == []
    assert (await _get(gw, VB, "img.png" + SIDE))[1] == sidecar  # plain, untouched


async def test_a_permanent_delete_between_container_and_stub_keeps_the_sidecar_plain(
        gw: InProcessGateway, tiny_model: dict[str, str],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The stub must never name a container version that is gone: the converter checks the
    version under the pair lock, which the delete holds too."""
    await _bucket(gw, VB)
    vid: list[str] = []

    async def delete() -> None:
        await gw.run(lambda s3: s3.delete_object(Bucket=VB, Key="img.png", VersionId=vid[0]))

    done = _before_commit_of(gw, monkeypatch, "img.png", delete, after=True)
    image, sidecar = make_pair(tiny_model, seed=17)[:2]
    vid.append((await _put(gw, VB, "img.png", image, ContentType="image/png"))["VersionId"])
    await _put(gw, VB, "img.png" + SIDE, sidecar)
    await gw.settle()
    assert done
    head = await _head(gw, VB, "img.png" + SIDE)
    assert _rep(head) == "plain"
    assert (await _get(gw, VB, "img.png" + SIDE))[1] == sidecar


async def test_r4_a_lock_set_during_conversion_leaves_the_version_plain_until_it_lifts(
        gw: InProcessGateway, tiny_model: dict[str, str],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    await _bucket(gw, VB, lock=True)
    vid: list[str] = []

    async def hold() -> None:
        await gw.run(lambda s3: s3.put_object_legal_hold(
            Bucket=VB, Key="img.png", VersionId=vid[0], LegalHold={"Status": "ON"}))

    done = _before_commit_of(gw, monkeypatch, "img.png", hold)
    image, sidecar = make_pair(tiny_model, seed=18)[:2]
    vid.append((await _put(gw, VB, "img.png", image, ContentType="image/png"))["VersionId"])
    await _put(gw, VB, "img.png" + SIDE, sidecar)
    await gw.settle()
    assert done
    head = await _head(gw, VB, "img.png", VersionId=vid[0])
    assert _rep(head) == "plain" and head["ObjectLockLegalHoldStatus"] == "ON"
    assert "object lock" in head["ResponseMetadata"]["HTTPHeaders"].get("x-s3latent-state", "")
    assert (await _get(gw, VB, "img.png"))[1] == image
    # The hold lifted, the next sweep converts it in place, keeping its ID.
    await gw.run(lambda s3: s3.put_object_legal_hold(
        Bucket=VB, Key="img.png", VersionId=vid[0], LegalHold={"Status": "OFF"}))
    await gw.store.converter.sweep()
    await gw.settle()
    head = await _head(gw, VB, "img.png")
    assert _rep(head) == "latent" and head["VersionId"] == vid[0]
    assert [v[0] for v in await _versions(gw, VB, "img.png")] == [vid[0]]


async def test_a_retained_pair_is_not_decoded_while_its_lock_holds(
        gw: InProcessGateway, tiny_model: dict[str, str]) -> None:  # noqa: F811
    await _bucket(gw, VB, lock=True)
    image, sidecar = make_pair(tiny_model, seed=19)[:2]
    until = datetime.now(UTC) + timedelta(days=1)
    vid = (await _put(gw, VB, "img.png", image, ContentType="image/png",
                      ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=until))["VersionId"]
    await _put(gw, VB, "img.png" + SIDE, sidecar)
    await gw.settle()
    attempts = gw.store.converter.attempts._value.get()
    await gw.store.converter.sweep()
    await gw.settle()
    assert gw.store.converter.attempts._value.get() == attempts  # not judged again
    head = await _head(gw, VB, "img.png")
    assert _rep(head) == "plain" and head["VersionId"] == vid
    assert "object lock" in head["ResponseMetadata"]["HTTPHeaders"]["x-s3latent-state"]


# -- crash rows (a gateway process that dies at the step) -------------------------

@pytest.mark.parametrize("step", ["before-container", "after-container", "after-stub"])
def test_a_crash_during_conversion_in_a_versioned_bucket_heals(
        tiny_model: dict[str, str], tmp_path: Path, step: str) -> None:  # noqa: F811
    data_dir = tmp_path / "data"
    crashing = GatewayProcess(f"file://{data_dir}", tmp_path, config=_config(tiny_model))
    os.environ["S3LATENT_CRASH_AT"] = step
    try:
        crashing.start()
    finally:
        del os.environ["S3LATENT_CRASH_AT"]
    s3 = crashing.client()
    s3.create_bucket(Bucket="crash")
    s3.put_bucket_versioning(Bucket="crash", VersioningConfiguration={"Status": "Enabled"})
    image, sidecar, _ = make_pair(tiny_model, seed=20)
    vi = s3.put_object(Bucket="crash", Key="x.png", Body=image,
                       ContentType="image/png")["VersionId"]
    vs = s3.put_object(Bucket="crash", Key="x.png" + SIDE, Body=sidecar)["VersionId"]
    assert crashing.proc is not None
    crashing.proc.wait(90)  # it dies at the step
    crashing.proc = None
    survivor = GatewayProcess(f"file://{data_dir}", tmp_path, config=_config(tiny_model))
    survivor.start()
    try:
        s3 = survivor.client()
        # Right after the crash: each key has its one version, readable.
        for key, vid, size in (("x.png", vi, len(image)), ("x.png" + SIDE, vs, len(sidecar))):
            got = s3.get_object(Bucket="crash", Key=key, VersionId=vid)
            assert len(got["Body"].read()) == size and got["VersionId"] == vid
        # The sweeper finishes the job: both latent, same IDs, one version each.
        wait_latent(s3, "crash", "x.png")
        wait_latent(s3, "crash", "x.png" + SIDE)
        for key, vid in (("x.png", vi), ("x.png" + SIDE, vs)):
            listed = s3.list_object_versions(Bucket="crash", Prefix=key)
            mine = [v for v in listed.get("Versions", []) if v["Key"] == key]
            assert [v["VersionId"] for v in mine] == [vid]
            head = s3.head_object(Bucket="crash", Key=key, VersionId=vid)
            assert (head["ContentLength"], head["ETag"]) == (mine[0]["Size"], mine[0]["ETag"])
        assert len(s3.get_object(Bucket="crash", Key="x.png" + SIDE)["Body"].read()) == \
            len(sidecar)
        assert _noncurrent_files(data_dir, "crash") == []
    finally:
        survivor.stop()
    time.sleep(0)


# -- the backend primitive and the Suspended replacement ----------------------------

async def test_local_backend_replaces_only_the_current_unlocked_version(tmp_path: Path) -> None:
    from s3latent.backends.base import ObjectLock, ObjectMeta
    from s3latent.errors import S3Error
    from s3latent.objects.physical import write_single_part

    backend = LocalBackend(tmp_path)
    await backend.start()
    await backend.create_bucket("b", object_lock=True)

    async def put(data: bytes, lock: ObjectLock | None = None) -> Any:
        async def once() -> Any:
            yield data
        return await backend.put_object("b", "k", once(), ObjectMeta(), lock=lock)

    async def replace(vid: str, etag: str) -> Any:
        return await write_single_part(backend, "b", "k", b"new", ObjectMeta(),
                                       if_match=etag, replace_version=vid)

    async def code(coro: Any) -> str:
        with pytest.raises(S3Error) as err:
            await coro
        return err.value.code

    first = await put(b"one")
    until = datetime.now(UTC) + timedelta(seconds=1.5)
    second = await put(b"two", ObjectLock("GOVERNANCE", until))
    assert await code(replace(first.version_id, first.etag)) == "PreconditionFailed"
    assert await code(replace(second.version_id, first.etag)) == "PreconditionFailed"
    assert await code(replace(second.version_id, second.etag)) == "AccessDenied"  # retained
    await backend.put_object_legal_hold("b", "k", version_id=second.version_id, on=True)
    await asyncio.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 0.1)
    assert await code(replace(second.version_id, second.etag)) == "AccessDenied"  # held
    await backend.put_object_legal_hold("b", "k", version_id=second.version_id, on=False)
    written = await replace(second.version_id, second.etag)
    assert written.version_id == second.version_id
    info = await backend.head_object("b", "k", version_id=second.version_id)
    assert info.etag == written.etag and info.last_modified == second.last_modified
    assert info.lock is not None and info.lock.mode == "GOVERNANCE"  # kept, expired
    assert info.lock.retain_until == until
    page = await backend.list_object_versions("b")
    assert [(e.version_id, e.is_latest) for e in page.entries] == \
        [(second.version_id, True), (first.version_id, False)]
    assert _noncurrent_files(tmp_path, "b") and len(_noncurrent_files(tmp_path, "b")) == 1
    await backend.close()


async def test_a_suspended_overwrite_of_a_converted_null_version_keeps_its_stub_readable(
        gw: InProcessGateway, tiny_model: dict[str, str]) -> None:  # noqa: F811
    await _bucket(gw, VB, status="Suspended")
    await _put_pair(gw, VB, tiny_model, seed=21)
    await gw.settle()
    served_side = (await _get(gw, VB, "img.png" + SIDE))[1]
    assert _rep(await _head(gw, VB, "img.png" + SIDE)) == "latent"
    other = make_pair(tiny_model, seed=22)[0]
    await _put(gw, VB, "img.png", other, ContentType="image/png")  # replaces `null`
    await gw.settle()
    assert (await _get(gw, VB, "img.png" + SIDE))[1] == served_side
    listed = (await gw.run(lambda s3: s3.list_objects_v2(Bucket=VB)))["Contents"]
    sizes = {c["Key"]: c["Size"] for c in listed}
    assert sizes["img.png" + SIDE] == len(served_side)


async def test_reads_of_a_converted_version_decode_once(
        gw: InProcessGateway, tiny_model: dict[str, str]) -> None:  # noqa: F811
    """Failed before the read cache was used for versions: every GET decoded again."""
    from tests.test_object_layer_inprocess import decodes

    await _bucket(gw, VB)
    vi = (await _put_pair(gw, VB, tiny_model, seed=23))[0]
    await gw.settle()
    first = (await _get(gw, VB, "img.png"))[1]
    before = await decodes(gw)
    for kw in ({}, {"VersionId": vi}, {}):
        got, data = await _get(gw, VB, "img.png", **kw)
        assert data == first and got["VersionId"] == vi and got["ETag"] == md5_etag(first)
    ranged = (await _get(gw, VB, "img.png", Range="bytes=0-9"))[1]
    assert ranged == first[:10]
    head = await _head(gw, VB, "img.png", VersionId=vi)
    assert head["ETag"] == md5_etag(first) and head["ContentLength"] == len(first)
    assert await decodes(gw) == before
    # A new version of the key is not served from the old one's entry.
    other = make_pair(tiny_model, seed=24)[0]
    new = (await _put(gw, VB, "img.png", other, ContentType="image/png"))["VersionId"]
    got, data = await _get(gw, VB, "img.png")
    assert got["VersionId"] == new and len(data) == len(other)
    assert (await _get(gw, VB, "img.png", VersionId=vi))[1] == first


async def test_listing_versions_of_converted_pairs_needs_no_head(
        gw: InProcessGateway, tiny_model: dict[str, str],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Failed before: every converted version on a page cost a HEAD and a whole-container
    GET; the listing index already holds each (key, physical ETag)'s view."""
    await _bucket(gw, VB)
    for i in range(3):
        await _put_pair(gw, VB, tiny_model, seed=30 + i, key=f"k{i}.png")
    await gw.settle()
    want = {}
    for i in range(3):
        for key in (f"k{i}.png", f"k{i}.png" + SIDE):
            head = await _head(gw, VB, key)
            assert _rep(head) == "latent"
            want[key] = (head["VersionId"], head["ContentLength"], head["ETag"])
    calls: list[str] = []
    real_head, real_get = gw.backend.head_object, gw.backend.get_object

    async def head(bucket: str, key: str, **kw: Any) -> Any:
        calls.append(key)
        return await real_head(bucket, key, **kw)

    async def get(bucket: str, key: str, *a: Any, **kw: Any) -> Any:
        calls.append(key)
        return await real_get(bucket, key, *a, **kw)

    monkeypatch.setattr(gw.backend, "head_object", head)
    monkeypatch.setattr(gw.backend, "get_object", get)
    resp = await gw.run(lambda s3: s3.list_object_versions(Bucket=VB))
    got = {v["Key"]: (v["VersionId"], v["Size"], v["ETag"]) for v in resp["Versions"]}
    assert got == want and len(resp["Versions"]) == 6
    # (the local backend's own listing of the index range reads its hidden files)
    assert [c for c in calls if not c.startswith(".s3latent/")] == []


def test_c8_a_crash_between_keep_copy_and_delete_loses_nothing(
        tiny_model: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    """The keep copy is made, the gateway dies before deleting the container version: both
    exist, the sidecar reads; the client's retry deletes; the sweeper removes the keep copy
    once no stub reads it."""
    data_dir = tmp_path / "data"
    crashing = GatewayProcess(f"file://{data_dir}", tmp_path, config=_config(tiny_model),
                              env={"S3LATENT_CRASH_AT": "after-keep-copy"})
    crashing.start()
    s3 = crashing.client()
    s3.create_bucket(Bucket="crash")
    s3.put_bucket_versioning(Bucket="crash", VersioningConfiguration={"Status": "Enabled"})
    image, sidecar, _ = make_pair(tiny_model, seed=25)
    vi = s3.put_object(Bucket="crash", Key="x.png", Body=image,
                       ContentType="image/png")["VersionId"]
    vs = s3.put_object(Bucket="crash", Key="x.png" + SIDE, Body=sidecar)["VersionId"]
    wait_latent(s3, "crash", "x.png")
    wait_latent(s3, "crash", "x.png" + SIDE)
    served = s3.get_object(Bucket="crash", Key="x.png" + SIDE)["Body"].read()
    with pytest.raises((BotoCoreError, ClientError)):  # the gateway dies mid-request
        s3.delete_object(Bucket="crash", Key="x.png", VersionId=vi)
    assert crashing.proc is not None
    crashing.proc.wait(30)
    crashing.proc = None
    keep = data_dir / "buckets" / "crash"
    assert [p for p in keep.rglob("*") if "keepv" in str(p) and p.is_file()]
    survivor = GatewayProcess(f"file://{data_dir}", tmp_path, config=_config(tiny_model))
    survivor.start()
    try:
        s3 = survivor.client()
        assert s3.head_object(Bucket="crash", Key="x.png", VersionId=vi)["VersionId"] == vi
        assert s3.get_object(Bucket="crash", Key="x.png" + SIDE)["Body"].read() == served
        s3.delete_object(Bucket="crash", Key="x.png", VersionId=vi)  # the retry
        assert s3.get_object(Bucket="crash", Key="x.png" + SIDE,
                             VersionId=vs)["Body"].read() == served
        s3.delete_object(Bucket="crash", Key="x.png" + SIDE, VersionId=vs)
        deadline = time.monotonic() + 30  # sweeps run every second
        while time.monotonic() < deadline and \
                [p for p in keep.rglob("*") if "keepv" in str(p) and p.is_file()]:
            time.sleep(0.3)
        assert [p for p in keep.rglob("*") if "keepv" in str(p) and p.is_file()] == []
    finally:
        survivor.stop()


async def test_a_converted_image_named_without_an_image_suffix_keeps_its_stub_readable(
        gw: InProcessGateway, tiny_model: dict[str, str]) -> None:  # noqa: F811
    """A pair converts whatever the image key is called (its content type says image);
    the keep copy was made only for keys that end like an image file (`.png`), so deleting
    the converted version of `photo` for good left its sidecar's stub reading nothing: the
    sidecar's bytes were lost."""
    await _bucket(gw, VB)
    vi, vs, _, sidecar = await _put_pair(gw, VB, tiny_model, seed=21, key="photo")
    await gw.settle()
    assert _rep(await _head(gw, VB, "photo")) == "latent"
    served_side = (await _get(gw, VB, "photo" + SIDE))[1]
    assert len(served_side) == len(sidecar)
    await gw.run(lambda s3: s3.delete_object(Bucket=VB, Key="photo", VersionId=vi))
    assert (await _get(gw, VB, "photo" + SIDE, VersionId=vs))[1] == served_side
    await gw.store.converter.sweep()
    assert (await _get(gw, VB, "photo" + SIDE))[1] == served_side


async def test_two_null_containers_kept_in_turn_keep_both_stubs_readable(
        gw: InProcessGateway, tiny_model: dict[str, str]) -> None:  # noqa: F811
    """Suspended and Enabled in turn: the image's `null` version is converted twice, each
    time with a sidecar version uploaded while Enabled (stubs Va and Vb, both naming the
    image's `null` version). Each Suspended overwrite keeps the null container at the same
    name: the second copy replaced the first while Va still read it, and Va's sidecar
    bytes were lost (500 "The sidecar's container is missing"). Each is now kept by the
    sidecar it holds."""
    bucket = "keep-null"

    async def status(value: str) -> None:
        await gw.run(lambda s3: s3.put_bucket_versioning(
            Bucket=bucket, VersioningConfiguration={"Status": value}))

    await _bucket(gw, bucket, status="Suspended")
    images = [make_pair(tiny_model, seed=seed)[:2] for seed in (31, 32, 33)]
    served: list[tuple[str, bytes]] = []
    for image, sidecar in images[:2]:
        await status("Suspended")
        await _put(gw, bucket, "img.png", image, ContentType="image/png")
        await status("Enabled")
        vid = (await _put(gw, bucket, "img.png" + SIDE, sidecar))["VersionId"]
        await gw.settle()
        assert _rep(await _head(gw, bucket, "img.png" + SIDE)) == "latent"
        served.append((vid, (await _get(gw, bucket, "img.png" + SIDE, VersionId=vid))[1]))
    await status("Suspended")
    await _put(gw, bucket, "img.png", images[2][0], ContentType="image/png")
    await gw.settle()
    for vid, data in served:
        assert (await _get(gw, bucket, "img.png" + SIDE, VersionId=vid))[1] == data


async def test_a_consume_bucket_turned_versioned_keeps_the_sidecar_readable(
        tmp_path: Path, tiny_model: dict[str, str]) -> None:  # noqa: F811
    """`sidecar = "consume"` in a versioned bucket converts as `keep`: the sidecar version
    becomes a stub that reads back the uploaded latent, and no delete marker hides it.
    Failed before the merge's rule: the container was built without the latent (consume)
    while the versioned path wrote a stub pointing into it, so the sidecar key broke."""
    extra = f'[buckets.{VB}]\nsidecar = "consume"\n'
    async for served in start(tmp_path, tiny_model, extra=extra):
        await _bucket(served, VB)
        vi, vs, _, sidecar = await _put_pair(served, VB, tiny_model, seed=17)
        await served.settle()
        head = await _head(served, VB, "img.png")
        assert _rep(head) == "latent" and head["VersionId"] == vi
        side_head = await _head(served, VB, "img.png" + SIDE)
        assert side_head["VersionId"] == vs and side_head["ContentLength"] == len(sidecar)
        _, data = await _get(served, VB, "img.png" + SIDE, VersionId=vs)
        assert len(data) == len(sidecar)
        assert await _versions(served, VB, "img.png" + SIDE) == \
            [(vs, len(sidecar), side_head["ETag"])]
