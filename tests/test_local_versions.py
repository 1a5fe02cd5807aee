"""Versions and object lock at the backend protocol, as S3 defines them.

The rules of docs/versioning-design.md §2, row by row: the local backend implements them
itself, the S3 backend passes them to the store (SeaweedFS). The same tests run on both, so
the object layer above can rely on one behaviour.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from s3latent.backends.base import ObjectLock, ObjectMeta, read_body
from s3latent.backends.local import LocalBackend
from s3latent.errors import S3Error


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def put(b: Any, bucket: str, key: str, data: bytes, **kw: Any) -> Any:
    return await b.put_object(bucket, key, _body(data), ObjectMeta(), size=len(data), **kw)


async def read(b: Any, bucket: str, key: str, version_id: str | None = None) -> bytes:
    _, body = await b.get_object(bucket, key, version_id=version_id)
    return await read_body(body)


async def versions(b: Any, bucket: str, **kw: Any) -> list[tuple[str, str, bool, bool]]:
    """(key, version id, is latest, is marker) of every version, listing order."""
    page = await b.list_object_versions(bucket, **kw)
    return [(e.key, e.version_id, e.is_latest, e.delete_marker) for e in page.entries]


async def code(coro: Any) -> S3Error:
    with pytest.raises(S3Error) as err:
        await coro
    return err.value


@pytest.fixture
async def bucket(backend: Any) -> AsyncIterator[str]:
    name = f"ver-{uuid.uuid4().hex[:10]}"
    await backend.create_bucket(name)
    yield name
    await _empty(backend, name)


async def _empty(b: Any, name: str) -> None:
    """Remove every version (bypassing GOVERNANCE; COMPLIANCE tests use short dates)."""
    try:
        page = await b.list_object_versions(name)
        for e in page.entries:
            try:
                await b.put_object_legal_hold(name, e.key, version_id=e.version_id, on=False)
            except S3Error:
                pass
            await b.delete_object(name, e.key, version_id=e.version_id, bypass_governance=True)
        await b.delete_bucket(name)
    except S3Error:
        pass


async def test_a_never_versioned_bucket_has_no_version_ids(backend: Any, bucket: str) -> None:
    assert await backend.get_bucket_versioning(bucket) is None
    info = await put(backend, bucket, "k", b"one")
    assert info.version_id is None
    assert (await backend.head_object(bucket, "k")).version_id is None
    assert await read(backend, bucket, "k", "null") == b"one"


async def test_enabled_puts_add_versions_and_keep_the_older_ones(
        backend: Any, bucket: str) -> None:
    await put(backend, bucket, "k", b"before")  # written before versioning: "null"
    await backend.put_bucket_versioning(bucket, "Enabled")
    assert await backend.get_bucket_versioning(bucket) == "Enabled"
    v1 = (await put(backend, bucket, "k", b"one")).version_id
    v2 = (await put(backend, bucket, "k", b"two")).version_id
    assert v1 and v2 and len({v1, v2, "null"}) == 3
    assert await read(backend, bucket, "k") == b"two"
    assert await read(backend, bucket, "k", v1) == b"one"
    assert await read(backend, bucket, "k", "null") == b"before"
    assert (await backend.head_object(bucket, "k")).version_id == v2
    assert (await backend.head_object(bucket, "k", version_id=v1)).version_id == v1
    assert await versions(backend, bucket) == [
        ("k", v2, True, False), ("k", v1, False, False), ("k", "null", False, False)]
    # ListObjects still shows the key once.
    page = await backend.list_objects(bucket)
    assert [e.key for e in page.entries] == ["k"]


async def test_suspended_puts_replace_the_null_version_wherever_it_is(
        backend: Any, bucket: str) -> None:
    await put(backend, bucket, "k", b"null-1")
    await backend.put_bucket_versioning(bucket, "Enabled")
    v1 = (await put(backend, bucket, "k", b"one")).version_id
    await backend.put_bucket_versioning(bucket, "Suspended")
    info = await put(backend, bucket, "k", b"null-2")
    assert info.version_id in ("null", None)  # SeaweedFS does not say (§12.4)
    assert await versions(backend, bucket) == [
        ("k", "null", True, False), ("k", v1, False, False)]
    await put(backend, bucket, "k", b"null-3")
    assert await versions(backend, bucket) == [
        ("k", "null", True, False), ("k", v1, False, False)]
    assert await read(backend, bucket, "k", "null") == b"null-3"
    assert await read(backend, bucket, "k", v1) == b"one"


async def test_delete_without_version_adds_a_marker(backend: Any, bucket: str) -> None:
    await backend.put_bucket_versioning(bucket, "Enabled")
    v1 = (await put(backend, bucket, "k", b"one")).version_id
    result = await backend.delete_object(bucket, "k")
    assert result.delete_marker and result.version_id not in (None, v1)
    marker = result.version_id
    err = await code(backend.head_object(bucket, "k"))
    assert err.code == "NoSuchKey"
    assert err.headers.get("x-amz-delete-marker") == "true"
    assert err.headers.get("x-amz-version-id") == marker
    err = await code(backend.get_object(bucket, "k", version_id=marker))
    assert (err.code, err.status) == ("MethodNotAllowed", 405)
    assert err.headers.get("x-amz-delete-marker") == "true"
    assert "Last-Modified" in err.headers
    assert await read(backend, bucket, "k", v1) == b"one"
    assert await versions(backend, bucket) == [("k", marker, True, True), ("k", v1, False, False)]
    assert (await backend.list_objects(bucket)).entries == []
    # Removing the marker brings the object back.
    removed = await backend.delete_object(bucket, "k", version_id=marker)
    assert removed.delete_marker and removed.version_id == marker
    assert await read(backend, bucket, "k") == b"one"
    assert [e.key for e in (await backend.list_objects(bucket)).entries] == ["k"]


async def test_suspended_delete_replaces_the_null_version_with_a_null_marker(
        backend: Any, bucket: str) -> None:
    await put(backend, bucket, "k", b"null")
    await backend.put_bucket_versioning(bucket, "Enabled")
    v1 = (await put(backend, bucket, "k", b"one")).version_id
    await backend.put_bucket_versioning(bucket, "Suspended")
    result = await backend.delete_object(bucket, "k")
    assert result.delete_marker
    assert await versions(backend, bucket) == [("k", "null", True, True), ("k", v1, False, False)]


async def test_delete_by_version_promotes_the_next_and_is_idempotent(
        backend: Any, bucket: str) -> None:
    await backend.put_bucket_versioning(bucket, "Enabled")
    v1 = (await put(backend, bucket, "k", b"one")).version_id
    v2 = (await put(backend, bucket, "k", b"two")).version_id
    v3 = (await put(backend, bucket, "k", b"three")).version_id
    await backend.delete_object(bucket, "k", version_id=v2)  # noncurrent
    assert await versions(backend, bucket) == [("k", v3, True, False), ("k", v1, False, False)]
    await backend.delete_object(bucket, "k", version_id=v3)  # current: v1 comes back
    assert await read(backend, bucket, "k") == b"one"
    assert (await backend.head_object(bucket, "k")).version_id == v1
    await backend.delete_object(bucket, "k", version_id=v3)  # gone already: fine
    err = await code(backend.get_object(bucket, "k", version_id=v3))
    assert err.code == "NoSuchVersion"
    await backend.delete_object(bucket, "k", version_id=v1)
    assert await versions(backend, bucket) == []
    assert (await code(backend.head_object(bucket, "k"))).code == "NoSuchKey"
    await backend.delete_bucket(bucket)  # nothing left: the bucket can go


async def test_a_bucket_with_only_old_versions_or_markers_is_not_empty(
        backend: Any, bucket: str) -> None:
    await backend.put_bucket_versioning(bucket, "Enabled")
    await put(backend, bucket, "k", b"one")
    await backend.delete_object(bucket, "k")
    assert (await code(backend.delete_bucket(bucket))).code == "BucketNotEmpty"


async def test_listing_pages_by_key_and_version_marker(backend: Any, bucket: str) -> None:
    await backend.put_bucket_versioning(bucket, "Enabled")
    ids: dict[str, list[str]] = {}
    for key in ("a", "b/x", "b/y", "c"):
        for n in range(3):
            ids.setdefault(key, []).insert(0, (await put(backend, bucket, key,
                                                         f"{key}{n}".encode())).version_id)
    everything = await versions(backend, bucket)
    assert [(k, v) for k, v, _, _ in everything] == [(k, v) for k in ("a", "b/x", "b/y", "c")
                                                    for v in ids[k]]
    seen: list[tuple[str, str]] = []
    key_marker = vid_marker = None
    while True:
        page = await backend.list_object_versions(bucket, max_keys=2, key_marker=key_marker,
                                                  version_id_marker=vid_marker)
        seen += [(e.key, e.version_id) for e in page.entries]
        if not page.is_truncated:
            break
        key_marker, vid_marker = page.next_key_marker, page.next_version_id_marker
    assert seen == [(k, v) for k, v, _, _ in everything]
    rolled = await backend.list_object_versions(bucket, delimiter="/")
    assert rolled.common_prefixes == ["b/"]
    assert {e.key for e in rolled.entries} == {"a", "c"}
    only_b = await versions(backend, bucket, prefix="b/")
    assert len(only_b) == 6


async def test_concurrent_puts_keep_every_version(backend: Any, bucket: str) -> None:
    await backend.put_bucket_versioning(bucket, "Enabled")
    infos = await asyncio.gather(*(put(backend, bucket, "k", f"v{n}".encode())
                                   for n in range(8)))
    listed = await versions(backend, bucket)
    assert sorted(v for _, v, _, _ in listed) == sorted(i.version_id for i in infos)
    bodies = {await read(backend, bucket, "k", i.version_id) for i in infos}
    assert bodies == {f"v{n}".encode() for n in range(8)}


async def test_versioned_tags_and_copy_source(backend: Any, bucket: str) -> None:
    await backend.put_bucket_versioning(bucket, "Enabled")
    v1 = (await put(backend, bucket, "k", b"one")).version_id
    v2 = (await put(backend, bucket, "k", b"two")).version_id
    await backend.put_tags(bucket, "k", {"t": "1"}, version_id=v1)
    assert await backend.get_tags(bucket, "k", version_id=v1) == {"t": "1"}
    assert await backend.get_tags(bucket, "k", version_id=v2) == {}
    copied = await backend.copy_object(bucket, "k", bucket, "k", None, src_version_id=v1)
    assert copied.version_id not in (None, v1, v2)
    assert await read(backend, bucket, "k") == b"one"
    assert len(await versions(backend, bucket)) == 3


# -- object lock ---------------------------------------------------------------

@pytest.fixture
async def lock_bucket(backend: Any) -> AsyncIterator[str]:
    name = f"lock-{uuid.uuid4().hex[:10]}"
    await backend.create_bucket(name, object_lock=True)
    yield name
    await _empty(backend, name)


def _soon(seconds: float) -> datetime:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0)


async def test_lock_bucket_is_versioned_and_cannot_be_suspended(
        backend: Any, lock_bucket: str) -> None:
    assert await backend.get_bucket_versioning(lock_bucket) == "Enabled"
    assert (await backend.get_object_lock_configuration(lock_bucket) or {}).get("enabled")
    err = await code(backend.put_bucket_versioning(lock_bucket, "Suspended"))
    assert (err.code, err.status) == ("InvalidBucketState", 409)


async def test_retention_and_legal_hold_stop_deletes_by_version(
        backend: Any, lock_bucket: str) -> None:
    b = lock_bucket
    gov = (await put(backend, b, "gov", b"g", lock=ObjectLock("GOVERNANCE", _soon(3600))))
    comp = (await put(backend, b, "comp", b"c", lock=ObjectLock("COMPLIANCE", _soon(2))))
    held = (await put(backend, b, "held", b"h", lock=ObjectLock(legal_hold=True)))
    info = await backend.head_object(b, "gov")
    assert info.lock is not None and info.lock.mode == "GOVERNANCE"
    for key, vid in (("gov", gov.version_id), ("comp", comp.version_id),
                     ("held", held.version_id)):
        err = await code(backend.delete_object(b, key, version_id=vid))
        assert (err.code, err.status) == ("AccessDenied", 403)
        assert await read(backend, b, key, vid)  # still there
    # A delete without a version only adds a marker, locked or not.
    assert (await backend.delete_object(b, "gov")).delete_marker
    # COMPLIANCE: no bypass; GOVERNANCE: bypass works.
    err = await code(backend.delete_object(b, "comp", version_id=comp.version_id,
                                           bypass_governance=True))
    assert err.code == "AccessDenied"
    # Changing GOVERNANCE to COMPLIANCE is a change of mode: it needs the bypass too.
    err = await code(backend.put_object_retention(
        b, "gov", version_id=gov.version_id, mode="COMPLIANCE",
        until=gov.lock.retain_until))
    assert err.code == "AccessDenied"
    await backend.delete_object(b, "gov", version_id=gov.version_id, bypass_governance=True)
    # A COMPLIANCE retention cannot be shortened, even with bypass; it can be extended.
    # (Its own object: `comp`'s two seconds may be over by now on a loaded machine. This one
    # outlives the test by a minute; its bucket is then left behind, empty of anything else.)
    long = (await put(backend, b, "comp-long", b"c",
                      lock=ObjectLock("COMPLIANCE", _soon(60))))
    err = await code(backend.put_object_retention(
        b, "comp-long", version_id=long.version_id, mode="COMPLIANCE", until=_soon(30),
        bypass_governance=True))
    assert err.code == "AccessDenied"
    await backend.put_object_legal_hold(b, "held", version_id=held.version_id, on=False)
    await backend.delete_object(b, "held", version_id=held.version_id)
    await asyncio.sleep(2.5)
    await backend.delete_object(b, "comp", version_id=comp.version_id)  # expired


async def test_default_retention_applies_to_new_versions(
        backend: Any, lock_bucket: str) -> None:
    b = lock_bucket
    await backend.put_object_lock_configuration(
        b, {"enabled": True, "rule": {"mode": "GOVERNANCE", "days": 1}})
    config = await backend.get_object_lock_configuration(b)
    assert config is not None and config["rule"] == {"mode": "GOVERNANCE", "days": 1}
    v = (await put(backend, b, "k", b"x")).version_id
    info = await backend.head_object(b, "k", version_id=v)
    assert info.lock is not None and info.lock.mode == "GOVERNANCE"
    assert info.lock.retain_until is not None and \
        info.lock.retain_until > datetime.now(UTC) + timedelta(hours=23)
    assert (await code(backend.delete_object(b, "k", version_id=v))).code == "AccessDenied"


async def test_lock_headers_need_a_lock_bucket(backend: Any, bucket: str) -> None:
    err = await code(put(backend, bucket, "k", b"x",
                         lock=ObjectLock("GOVERNANCE", _soon(60))))
    assert err.status == 400


# -- local backend only ------------------------------------------------------

async def test_local_crash_between_link_and_rename_leaves_one_version(
        tmp_path: Path) -> None:
    """C9: the current file linked into the versions directory, the new one never renamed
    over it: the version is listed once and a later write is not confused by it."""
    b = LocalBackend(tmp_path / "data")
    await b.start()
    await b.create_bucket("bk")
    await b.put_bucket_versioning("bk", "Enabled")
    v1 = (await put(b, "bk", "k", b"one")).version_id
    path = b._object_path("bk", "k")
    vdir = path.with_name(path.name[:-3] + ".~v")
    vdir.mkdir()
    os.link(path, vdir / f"{1:016x}-{v1}.~o")  # what the crash left
    assert await versions(b, "bk") == [("k", v1, True, False)]
    v2 = (await put(b, "bk", "k", b"two")).version_id
    assert await versions(b, "bk") == [("k", v2, True, False), ("k", v1, False, False)]
    assert await read(b, "bk", "k", v1) == b"one"


async def test_local_malformed_version_id_is_invalid_argument(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path / "data")
    await b.start()
    await b.create_bucket("bk")
    await b.put_bucket_versioning("bk", "Enabled")
    await put(b, "bk", "k", b"one")
    for call in (b.head_object("bk", "k", version_id="nope"),
                 b.delete_object("bk", "k", version_id="../../x")):
        err = await code(call)
        assert (err.code, err.status) == ("InvalidArgument", 400)


async def test_local_versions_survive_a_restart(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path / "data")
    await b.start()
    await b.create_bucket("bk")
    await b.put_bucket_versioning("bk", "Enabled")
    v1 = (await put(b, "bk", "k", b"one")).version_id
    await b.delete_object("bk", "k")
    again = LocalBackend(tmp_path / "data")
    await again.start()
    assert await again.get_bucket_versioning("bk") == "Enabled"
    assert [v for _, v, _, m in await versions(again, "bk") if not m] == [v1]
    assert (await again.list_objects("bk")).entries == []
    assert await read(again, "bk", "k", v1) == b"one"


async def test_s3_backend_asks_the_versioning_status_over_the_data_path(
        backend: Any, bucket: str) -> None:
    """The status is asked again every few seconds per bucket: never through aiobotocore,
    whose per-call CPU showed in the gateway's profile (docs/bench-gateway.md)."""
    if isinstance(backend, LocalBackend):
        pytest.skip("the S3 backend's data path")

    async def refused(**_: Any) -> Any:
        raise AssertionError("GetBucketVersioning went through aiobotocore")

    backend._client.get_bucket_versioning = refused
    assert await backend.get_bucket_versioning(bucket) is None
    backend._status.clear()
    assert await backend._cached_status(bucket) is None
    await backend.put_bucket_versioning(bucket, "Enabled")
    backend._status.clear()
    assert await backend.get_bucket_versioning(bucket) == "Enabled"
    await backend.put_bucket_versioning(bucket, "Suspended")
    backend._status.clear()
    assert await backend._cached_status(bucket) == "Suspended"
    with pytest.raises(S3Error) as exc:
        await backend._versioning_status(f"missing-{uuid.uuid4().hex[:8]}")
    assert exc.value.code == "NoSuchBucket"
