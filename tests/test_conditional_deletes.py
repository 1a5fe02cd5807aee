"""Conditional deletes: DeleteObject's `If-Match` (and the size and time conditions), as S3
answers them, and the storage's own If-Match check that makes every judged delete of the
gateway (client conditions, lifecycle expiry, a consumed sidecar) safe against a write
through another gateway node between the check and the delete."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from s3latent.backends.base import ObjectMeta
from s3latent.errors import S3Error
from tests.inprocess import InProcessGateway, serve_gateway


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


# -- the backend protocol ----------------------------------------------------------------

async def test_backend_delete_checks_if_match(backend: Any) -> None:
    bucket = f"cd-{uuid.uuid4().hex[:10]}"
    await backend.create_bucket(bucket)
    info = await backend.put_object(bucket, "k", _body(b"one"), ObjectMeta(), size=3)
    with pytest.raises(S3Error) as err:
        await backend.delete_object(bucket, "k", if_match="0123456789abcdef0123456789abcdef")
    assert err.value.code == "PreconditionFailed"
    assert (await backend.head_object(bucket, "k")).etag == info.etag
    await backend.delete_object(bucket, "k", if_match=f'"{info.etag}"')
    with pytest.raises(S3Error) as err:
        await backend.head_object(bucket, "k")
    assert err.value.code == "NoSuchKey"
    await backend.delete_object(bucket, "k", if_match=info.etag)  # nothing there: no error

    # Suspended: the delete replaces the `null` version; If-Match judges it.
    await backend.put_bucket_versioning(bucket, "Suspended")
    info = await backend.put_object(bucket, "n", _body(b"null"), ObjectMeta(), size=4)
    with pytest.raises(S3Error) as err:
        await backend.delete_object(bucket, "n", if_match="0123456789abcdef0123456789abcdef")
    assert err.value.code == "PreconditionFailed"
    assert (await backend.head_object(bucket, "n")).etag == info.etag
    result = await backend.delete_object(bucket, "n", if_match=info.etag)
    assert result.delete_marker


# -- DeleteObject with conditions, real client -------------------------------------------

# (the session gateways of conftest, local and SeaweedFS, with its `s3` and `bucket`)


def _error(call: Any) -> tuple[int, str, str]:
    with pytest.raises(ClientError) as err:
        call()
    meta = err.value.response["ResponseMetadata"]
    return meta["HTTPStatusCode"], err.value.response["Error"]["Code"], meta.get("RequestId", "")


def _exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError:
        return False


def test_delete_object_if_match(s3: Any, bucket: str) -> None:
    put = s3.put_object(Bucket=bucket, Key="k", Body=b"abc")
    head = s3.head_object(Bucket=bucket, Key="k")
    for wrong in ({"IfMatch": '"0123456789abcdef0123456789abcdef"'}, {"IfMatchSize": 4},
                  {"IfMatchLastModifiedTime": datetime(2015, 1, 1, tzinfo=UTC)}):
        status, code, request_id = _error(
            lambda w=wrong: s3.delete_object(Bucket=bucket, Key="k", **w))
        assert (status, code) == (412, "PreconditionFailed") and request_id, wrong
        assert _exists(s3, bucket, "k")
    s3.delete_object(Bucket=bucket, Key="k", IfMatch=put["ETag"], IfMatchSize=3,
                     IfMatchLastModifiedTime=head["LastModified"])
    assert not _exists(s3, bucket, "k")
    # Nothing there: a successful no-op, whatever the condition (S3's API reference).
    for value in (put["ETag"], "*", '"0123456789abcdef0123456789abcdef"'):
        reply = s3.delete_object(Bucket=bucket, Key="k", IfMatch=value)
        assert reply["ResponseMetadata"]["HTTPStatusCode"] == 204
    s3.put_object(Bucket=bucket, Key="k", Body=b"again")
    s3.delete_object(Bucket=bucket, Key="k", IfMatch="*")
    assert not _exists(s3, bucket, "k")


def test_delete_object_bad_conditions_are_refused(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"abc")

    def send(header: str, value: str) -> Any:
        def add(params: dict[str, Any], **_: Any) -> None:
            params["headers"][header] = value
        s3.meta.events.register("before-call.s3.DeleteObject", add)
        try:
            return s3.delete_object(Bucket=bucket, Key="k")
        finally:
            s3.meta.events.unregister("before-call.s3.DeleteObject", add)

    for header, value in (("x-amz-if-match-size", "three"), ("x-amz-if-match-size", "-1"),
                          ("x-amz-if-match-last-modified-time", "yesterday")):
        assert _error(lambda h=header, v=value: send(h, v))[:2] == (400, "InvalidArgument")
    assert _exists(s3, bucket, "k")


def test_delete_object_if_match_in_a_versioned_bucket(s3: Any, bucket: str) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    first = s3.put_object(Bucket=bucket, Key="k", Body=b"1")
    second = s3.put_object(Bucket=bucket, Key="k", Body=b"22")
    # Without a version: judged on the current version; a match adds a marker.
    assert _error(lambda: s3.delete_object(Bucket=bucket, Key="k", IfMatch=first["ETag"])
                  )[:2] == (412, "PreconditionFailed")
    marker = s3.delete_object(Bucket=bucket, Key="k", IfMatch=second["ETag"])
    assert marker["DeleteMarker"] is True
    # Current is a marker: it matches `*` only (a no-op), never an ETag or a size.
    s3.delete_object(Bucket=bucket, Key="k", IfMatch="*")
    for wrong in ({"IfMatch": second["ETag"]}, {"IfMatchSize": 2}):
        assert _error(lambda w=wrong: s3.delete_object(Bucket=bucket, Key="k", **w)
                      )[:2] == (412, "PreconditionFailed")
    assert len(s3.list_object_versions(Bucket=bucket)["DeleteMarkers"]) == 1
    # With a version: judged on that version, which then goes for good.
    assert _error(lambda: s3.delete_object(Bucket=bucket, Key="k", VersionId=first["VersionId"],
                                           IfMatch=second["ETag"]))[:2] == \
        (412, "PreconditionFailed")
    s3.delete_object(Bucket=bucket, Key="k", VersionId=first["VersionId"], IfMatch=first["ETag"])
    versions = s3.list_object_versions(Bucket=bucket).get("Versions", [])
    assert [v["VersionId"] for v in versions] == [second["VersionId"]]
    # That version gone: a no-op.
    s3.delete_object(Bucket=bucket, Key="k", VersionId=first["VersionId"], IfMatch="x")


# -- another node's write between a judged delete's check and its delete -------------------

@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    async with serve_gateway(tmp_path) as served:
        yield served


@pytest.mark.parametrize("status", [None, "Suspended"])
async def test_a_write_landing_after_the_check_is_never_deleted(
        gw: InProcessGateway, status: str | None) -> None:
    """Another node's PUT lands after this node judged the object and before its delete
    reaches the storage (simulated at the backend call): the storage's If-Match refuses
    the delete, the newer write stays, and the client hears 412."""
    await gw.run(lambda s3: s3.create_bucket(Bucket="race"))
    if status is not None:
        await gw.run(lambda s3: s3.put_bucket_versioning(
            Bucket="race", VersioningConfiguration={"Status": status}))
    put = await gw.run(lambda s3: s3.put_object(Bucket="race", Key="k", Body=b"old"))
    backend = gw.backend
    deleting = backend.delete_object

    async def other_node_writes_first(bucket: str, key: str, **kw: Any) -> Any:
        if key == "k":
            await backend.put_object(bucket, key, _body(b"newer"), ObjectMeta(), size=5)
        return await deleting(bucket, key, **kw)

    backend.delete_object = other_node_writes_first
    try:
        reply = await gw.error(lambda s3: s3.delete_object(Bucket="race", Key="k",
                                                          IfMatch=put["ETag"]))
    finally:
        backend.delete_object = deleting
    assert reply["Error"]["Code"] == "PreconditionFailed"
    body = await gw.run(lambda s3: s3.get_object(Bucket="race", Key="k")["Body"].read())
    assert body == b"newer"
