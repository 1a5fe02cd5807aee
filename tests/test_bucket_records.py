"""Gateway records of a bucket (ACL, policy, CORS, ...) on both backends.

What they must guarantee: a record belongs to one life of its bucket. A bucket
deleted and created again (by anyone) must not inherit the records of the old
one, or a public-read policy would outlive the bucket it was written for.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from s3latent.backends.local import LocalBackend
from s3latent.backends.s3 import S3Backend
from s3latent.errors import S3Error
from tests.seaweed import SeaweedFS


async def test_records_are_kept_replaced_and_removed(backend: Any) -> None:
    name = f"rec-{uuid.uuid4().hex[:8]}"
    await backend.create_bucket(name, owner="alice")
    try:
        assert await backend.get_bucket_owner(name) == "alice"
        assert await backend.get_bucket_config(name, "policy") is None
        await backend.put_bucket_config(name, "policy", {"Statement": [1]})
        await backend.put_bucket_config(name, "cors", [{"AllowedOrigin": "*"}])
        assert await backend.get_bucket_config(name, "policy") == {"Statement": [1]}
        await backend.put_bucket_config(name, "policy", {"Statement": [2]})
        assert await backend.get_bucket_config(name, "policy") == {"Statement": [2]}
        await backend.put_bucket_config(name, "policy", None)
        assert await backend.get_bucket_config(name, "policy") is None
        assert await backend.get_bucket_config(name, "cors") == [{"AllowedOrigin": "*"}]
        await backend.put_bucket_config(name, "policy", None)  # removing twice is fine
    finally:
        await backend.delete_bucket(name)


async def test_a_bucket_created_again_starts_without_records(backend: Any) -> None:
    name = f"rec-{uuid.uuid4().hex[:8]}"
    await backend.create_bucket(name, owner="alice")
    await backend.put_bucket_config(name, "policy", {"public": True})
    await backend.delete_bucket(name)
    with pytest.raises(S3Error) as err:
        await backend.get_bucket_config(name, "policy")
    assert err.value.code == "NoSuchBucket"
    await backend.create_bucket(name, owner="bob")
    try:
        assert await backend.get_bucket_owner(name) == "bob"
        assert await backend.get_bucket_config(name, "policy") is None
    finally:
        await backend.delete_bucket(name)


async def test_leftover_records_of_an_earlier_life_are_never_read(
        seaweedfs: SeaweedFS) -> None:
    """A best-effort cleanup that failed leaves records behind: the next life ignores them."""
    backend = S3Backend(seaweedfs.endpoint, seaweedfs.access_key, seaweedfs.secret_key)
    await backend.start()
    name = f"rec-{uuid.uuid4().hex[:8]}"
    try:
        await backend.create_bucket(name, owner="alice")
        await backend.put_bucket_config(name, "policy", {"public": True})
        old = await backend.meta.list(f"buckets/{name}/")
        assert old
        saved = {k: await backend.meta.get(k) for k in old}
        await backend.delete_bucket(name)
        for k, v in saved.items():  # as if the cleanup had crashed
            await backend.meta.put(k, v)
        await backend.create_bucket(name, owner="bob")
        assert await backend.get_bucket_config(name, "policy") is None
        await backend.meta.delete(f"buckets/{name}.json")  # a create that crashed before it
        assert await backend.get_bucket_config(name, "policy") is None
        await backend.put_bucket_config(name, "cors", ["x"])
        assert await backend.get_bucket_config(name, "cors") == ["x"]
        assert await backend.get_bucket_config(name, "policy") is None
    finally:
        await backend.delete_bucket(name)
        await backend.close()


async def test_a_record_written_while_the_bucket_is_deleted_is_not_an_internal_error(
        tmp_path: Path) -> None:
    """PutBucketPolicy/Cors racing DeleteBucket (local backend): one wins, cleanly.

    The record write reads .bucket.json, then replaces it; a delete that removed the
    directory in between made the write fail with FileNotFoundError (a 500 to the
    client), or made the delete fail on a directory that was not empty any more.
    """
    backend = LocalBackend(tmp_path / "data")
    await backend.start()
    await backend.create_bucket("racy", owner="alice")
    entered, release = threading.Event(), threading.Event()
    write = backend._write_bucket_record

    def slow_write(bucket: str, record: dict[str, Any]) -> None:
        entered.set()
        release.wait(10)
        write(bucket, record)

    backend._write_bucket_record = slow_write  # type: ignore[method-assign]
    put = asyncio.create_task(backend.put_bucket_config("racy", "policy", "{}"))
    assert await asyncio.to_thread(entered.wait, 10)
    delete = asyncio.create_task(backend.delete_bucket("racy"))
    await asyncio.sleep(0.3)  # the delete runs now, if nothing holds it back
    release.set()
    outcomes = await asyncio.gather(put, delete, return_exceptions=True)
    for outcome in outcomes:
        assert outcome is None or (isinstance(outcome, S3Error)
                                   and outcome.code == "NoSuchBucket"), outcomes
    with pytest.raises(S3Error) as err:
        await backend.get_bucket_config("racy", "policy")
    assert err.value.code == "NoSuchBucket"
    assert not (tmp_path / "data" / "buckets" / "racy").exists() or not any(
        (tmp_path / "data" / "buckets" / "racy").iterdir())
