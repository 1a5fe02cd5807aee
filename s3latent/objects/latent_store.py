"""The latent-aware store: logical objects over containers and stubs.

A thin facade over three parts that share one LatentContext: reads (objects.reads: cache
tiers, shared misses, renditions), listing (objects.listing: logical views at a bounded cost
per page) and writes (objects.writes: pairs, overwrites, copies, deletes). Operations that
latent objects do not change (buckets, tags, multipart parts) are forwarded by
ForwardingStore; so are the write hooks (invalidation before and after, write listeners).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from ..backends.base import (
    Backend,
    ListPage,
    ObjectBody,
    ObjectInfo,
    ObjectMeta,
    UploadChecksum,
)
from ..cache.readpath import ReadCache
from ..config import Config
from .context import LatentContext, writable
from .conversion import Converter
from .listing import LatentListing
from .reads import LatentReads
from .store import ForwardingStore
from .writes import LatentWrites

if TYPE_CHECKING:
    from ..decode.services import DecodeServices


class LatentStore(ForwardingStore):
    """See the module docstring."""

    def __init__(self, backend: Backend, config: Config, decoding: DecodeServices, *,
                 registry: CollectorRegistry, background: bool = True,
                 cache: ReadCache | None = None) -> None:
        super().__init__(backend)
        self.records.ttl = config.cache.revalidate_after
        self._background = background
        self.config = config
        self.decoding = decoding
        self.cache = cache
        self.converter = Converter(backend, config, decoding, registry=registry)
        # A conversion rewrites keys behind the clients' backs: it is a write like theirs.
        self.converter.on_written = self.changed
        self.ctx = LatentContext(backend, config, decoding, cache, self.converter,
                                 registry=registry)
        # ... and so is a stub the layer makes a real sidecar again (looked up at call time,
        # so a wrapped invalidate or changed sees these writes too).
        self.ctx.invalidate = lambda bucket, key: self.invalidate(bucket, key)
        self.ctx.changed = lambda bucket, key: self.changed(bucket, key)
        self.reads = LatentReads(self.ctx, registry=registry)
        self.listing = LatentListing(self.ctx, registry=registry)
        self.writes = LatentWrites(self.ctx)

    async def start(self) -> None:
        await super().start()
        if self._background:
            await self.converter.start()

    async def close(self) -> None:
        await self.listing.close()
        await self.converter.close()
        await self.decoding.close()
        await super().close()

    async def settle(self) -> None:
        """Wait for background listing-index repairs (tests, benchmarks)."""
        await self.listing.settle()

    def state(self, bucket: str, key: str) -> str | None:
        return self.converter.states.get((bucket, key))

    def invalidate(self, bucket: str, key: str) -> None:
        if self.cache is not None:
            self.cache.invalidate(bucket, key)
        # A write of either key of a pair: an old refusal no longer describes it.
        self.reads.forget_state(bucket, key)
        suffix = self.config.bucket(bucket).sidecar_suffix
        image_key = key[: -len(suffix)] if key.endswith(suffix) else key
        self.reads.forget_state(bucket, image_key)
        self.converter.forget_refusal(bucket, image_key)

    # -- reads -----------------------------------------------------------------
    async def head_object(self, bucket: str, key: str) -> ObjectInfo:
        return await self.reads.head_object(bucket, key)

    async def get_object(self, bucket: str, key: str,
                         byte_range: tuple[int, int] | None = None, *,
                         known: ObjectInfo | None = None) -> tuple[ObjectInfo, ObjectBody]:
        return await self.reads.get_object(bucket, key, byte_range, known=known)

    async def latent_safetensors(self, bucket: str, key: str) -> tuple[ObjectInfo, bytes]:
        return await self.reads.latent_safetensors(bucket, key)

    async def list_objects(self, bucket: str, *, prefix: str = "",
                           delimiter: str | None = None, start_after: str | None = None,
                           max_keys: int = 1000) -> ListPage:
        return await self.listing.list_objects(bucket, prefix=prefix, delimiter=delimiter,
                                               start_after=start_after, max_keys=max_keys)

    # -- writes ----------------------------------------------------------------
    async def _put_object(self, bucket: str, key: str, body: AsyncIterable[bytes],
                          meta: ObjectMeta, *, size: int | None, if_match: str | None,
                          if_none_match: str | None) -> ObjectInfo:
        return await self.writes.put_object(bucket, key, body, meta, size=size,
                                            if_match=if_match, if_none_match=if_none_match)

    async def _delete_object(self, bucket: str, key: str) -> None:
        await self.writes.delete_object(bucket, key)

    async def _copy_object(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str,
                           meta: ObjectMeta | None) -> ObjectInfo:
        return await self.writes.copy_object(src_bucket, src_key, dst_bucket, dst_key, meta)

    async def put_tags(self, bucket: str, key: str, tags: dict[str, str]) -> None:
        """Under the key's tag lock: a conversion or restored sidecar committing meanwhile
        carries these tags, not the ones it read before (Converter.tags_lock)."""
        async with self.converter.tags_lock(bucket, key):
            await super().put_tags(bucket, key, tags)

    @asynccontextmanager
    async def _overwriting(self, bucket: str, key: str) -> AsyncIterator[None]:
        async with self.writes.overwriting(bucket, key):
            yield

    async def _before_overwrite(self, bucket: str, key: str) -> ObjectInfo | None:
        return await self.writes.before_overwrite(bucket, key)

    async def _after_overwrite(self, bucket: str, key: str,
                               replaced: ObjectInfo | None) -> None:
        await self.writes.after_overwrite(bucket, key, replaced)

    async def create_multipart_upload(self, bucket: str, key: str, meta: ObjectMeta, *,
                                      checksum: UploadChecksum | None = None) -> str:
        writable(key)  # the gateway's own records are never a client's to write
        return await super().create_multipart_upload(bucket, key, meta, checksum=checksum)

    async def complete_multipart_upload(self, bucket: str, key: str, upload_id: str,
                                        parts: list[tuple[int, str]], *,
                                        if_match: str | None = None,
                                        checksum: str | None = None) -> ObjectInfo:
        writable(key)
        return await super().complete_multipart_upload(
            bucket, key, upload_id, parts, if_match=if_match, checksum=checksum)

    async def delete_bucket(self, bucket: str) -> None:
        try:
            await self.writes.delete_bucket(bucket)
        finally:
            self.records.forget(bucket)
