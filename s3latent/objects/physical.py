"""How latent objects look in the backend, and how to recognise them cheaply.

A converted pair K / K+suffix is held as:
- K: the container (latent payload + header). Its backend metadata mirrors the
  logical image (size, ETag, Last-Modified, Content-Type, user metadata), so
  HEAD never reads the body.
- K+suffix: a small *stub* whose metadata mirrors the logical sidecar. Keeping a
  stub (instead of deleting the sidecar, as DESIGN.md first said) keeps the
  sidecar key in the backend listing, in order, so listings need no merging of
  synthetic keys, and "the sidecar key exists" stays a fact the backend holds.

Both are written as single-part multipart uploads, whose ETag ends in "-1".
A PutObject ETag never does, so a listing needs a HEAD only for "-1" entries
(and caches what it learns by (key, physical ETag)).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from ..backends.base import Backend, ObjectInfo, ObjectMeta

REP = "rep"
REP_LATENT = "latent"
REP_STUB = "stub"
# Mirror of the logical object in the backend's metadata (values are ASCII).
L_SIZE, L_ETAG, L_MODIFIED, L_IMAGE = "lsize", "letag", "lmod", "image"
REFUSED = "refused"  # on a plain sidecar: "<image etag>:<sidecar etag>:<reason>"


def may_be_latent(physical_etag: str) -> bool:
    """Only single-part multipart uploads can be containers or stubs."""
    return physical_etag.endswith("-1")


def representation(info: ObjectInfo) -> str:
    return info.meta.internal.get(REP, "plain")


@dataclass
class LogicalView:
    """The logical size/ETag/Last-Modified a container or stub mirrors."""

    size: int
    etag: str
    last_modified: datetime


def logical_view(info: ObjectInfo) -> LogicalView | None:
    internal = info.meta.internal
    if internal.get(REP) not in (REP_LATENT, REP_STUB):
        return None
    try:
        return LogicalView(
            int(internal[L_SIZE]),
            internal[L_ETAG],
            datetime.fromisoformat(internal[L_MODIFIED]).astimezone(UTC),
        )
    except (KeyError, ValueError):
        return None


def logical_info(info: ObjectInfo) -> ObjectInfo:
    """The client's view of a backend object (plain ones are unchanged)."""
    view = logical_view(info)
    if view is None:
        return info
    return ObjectInfo(info.key, view.size, view.etag, view.last_modified, info.meta,
                      parts_count=None, tag_count=info.tag_count)


def mirror(rep: str, size: int, etag: str, modified: datetime, **extra: str) -> dict[str, str]:
    return {REP: rep, L_SIZE: str(size), L_ETAG: etag,
            L_MODIFIED: modified.astimezone(UTC).isoformat(), **extra}


def stub_body(image_key: str) -> bytes:
    return json.dumps({"s3latent": "sidecar-stub", "image": image_key}).encode() + b"\n"


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def write_single_part(
    backend: Backend,
    bucket: str,
    key: str,
    data: bytes,
    meta: ObjectMeta,
    *,
    if_match: str | None = None,
) -> ObjectInfo:
    """Write `data` as a one-part multipart upload (ETag "...-1"), optionally guarded.

    The guard is checked just before completing; completing is the commit point,
    so a concurrent newer PUT either lands first (we abort) or after (it wins).
    """
    upload_id = await backend.create_multipart_upload(bucket, key, meta)
    try:
        etag = await backend.upload_part(bucket, key, upload_id, 1, _once(data), size=len(data))
        if if_match is not None:
            current = await backend.head_object(bucket, key)
            if current.etag != if_match:
                from ..s3.errors import S3Error

                raise S3Error("PreconditionFailed", Condition="If-Match")
        return await backend.complete_multipart_upload(
            bucket, key, upload_id, [(1, etag)], if_match=if_match
        )
    except BaseException:
        try:
            await backend.abort_multipart_upload(bucket, key, upload_id)
        except Exception:  # the original failure matters more
            pass
        raise
