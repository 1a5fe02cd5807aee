"""The object layer: what clients see (logical objects) over what the backend holds.

Plain objects pass straight through. Latent objects (containers) are answered
with their logical size, ETag and rendition; see `s3latent.objects.latent`.
Every object read and write of the front end goes through here, so the latent
behaviour has one seam.
"""

from __future__ import annotations

from collections.abc import AsyncIterable

from ..backends.base import Backend, ListPage, ObjectBody, ObjectInfo, ObjectMeta


class ObjectLayer:
    """Plain pass-through; subclassed by the latent-aware layer."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def start(self) -> None:
        """Start background work (conversion workers, sweeper)."""

    async def close(self) -> None:
        """Stop background work."""

    async def head(self, bucket: str, key: str) -> ObjectInfo:
        return await self.backend.head_object(bucket, key)

    async def get(
        self, bucket: str, key: str, byte_range: tuple[int, int] | None = None
    ) -> tuple[ObjectInfo, ObjectBody]:
        return await self.backend.get_object(bucket, key, byte_range)

    async def put(
        self,
        bucket: str,
        key: str,
        body: AsyncIterable[bytes],
        meta: ObjectMeta,
        *,
        size: int | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> ObjectInfo:
        return await self.backend.put_object(
            bucket, key, body, meta, size=size, if_match=if_match, if_none_match=if_none_match
        )

    async def delete(self, bucket: str, key: str) -> None:
        await self.backend.delete_object(bucket, key)

    async def copy(
        self,
        src_bucket: str,
        src_key: str,
        dst_bucket: str,
        dst_key: str,
        meta: ObjectMeta | None,
    ) -> ObjectInfo:
        return await self.backend.copy_object(src_bucket, src_key, dst_bucket, dst_key, meta)

    async def list(
        self,
        bucket: str,
        *,
        prefix: str = "",
        delimiter: str | None = None,
        start_after: str | None = None,
        max_keys: int = 1000,
    ) -> ListPage:
        return await self.backend.list_objects(
            bucket, prefix=prefix, delimiter=delimiter, start_after=start_after, max_keys=max_keys
        )

    def invalidate(self, bucket: str, key: str) -> None:
        """A write or delete of `key` happened: drop anything cached for it."""

    async def before_overwrite(self, bucket: str, key: str) -> ObjectInfo | None:
        """A write that bypasses `put` (CompleteMultipartUpload) is about to replace `key`.

        Returns what it replaces, for `after_overwrite`; plain layers need nothing.
        """
        return None

    async def after_overwrite(self, bucket: str, key: str, replaced: ObjectInfo | None) -> None:
        """That write landed: tidy what described the replaced object, schedule conversion."""

    async def delete_bucket(self, bucket: str) -> None:
        """BucketNotEmpty only when a client could still list something in it."""
        await self.backend.delete_bucket(bucket)

    def state(self, bucket: str, key: str) -> str | None:
        """Why an object is not (yet) latent: for x-s3latent-state on HEAD and GET."""
        return None

    async def latent_safetensors(self, bucket: str, key: str) -> tuple[ObjectInfo, bytes]:
        """The latent of a latent object as safetensors; plain objects have none."""
        from ..errors import S3Error

        raise S3Error("InvalidRequest", "This object is not stored as a latent.")
