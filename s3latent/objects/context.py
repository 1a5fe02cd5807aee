"""What the latent store's parts (reads, listing, writes) share.

The backend and settings, the decode services, the read cache, the converter, and what this
process has learnt about backend objects: for each (bucket, key, physical ETag) whether its
latent claim held up (physical.verified) and, if it did, its logical view. A backend object's
internal metadata is only a claim (anything can write to the backend); nothing here treats an
object as a container or stub before `trusted` has checked it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from cachetools import LRUCache
from prometheus_client import CollectorRegistry, Counter

from ..backends.base import Backend, ObjectInfo, read_body
from ..cache.readpath import ReadCache
from ..config import Config
from ..errors import S3Error
from ..latent.container import ContainerError, ContainerHeader, unpack
from . import physical
from .conversion import Converter

if TYPE_CHECKING:
    from ..decode.services import DecodeServices

log = logging.getLogger(__name__)

RESERVED = "Keys under .s3latent/ are reserved for the gateway's own records."

# (bucket, key, physical etag, container bytes) -> the rendition from elsewhere, or None to
# render here. The cluster installs one (decode spillover); objects/ never imports it.
Offload = Callable[[str, str, str, bytes], Awaitable[bytes | None]]


class LatentContext:
    """See the module docstring."""

    def __init__(self, backend: Backend, config: Config, decoding: DecodeServices,
                 cache: ReadCache | None, converter: Converter, *,
                 registry: CollectorRegistry) -> None:
        self.backend = backend
        self.config = config
        self.decoding = decoding
        self.cache = cache
        self.converter = converter
        self.offload: Offload | None = None  # decode spillover, when in a cluster
        # The store's write hooks (objects.store), for keys the layer rewrites on its own
        # (a stub made a real sidecar again): cached reads of the key are dropped before the
        # write, and after it the store's `changed` tells the write listeners (the cluster's
        # owner invalidation). LatentStore sets both.
        self.invalidate: Callable[[str, str], None] = _nothing
        self.changed: Callable[[str, str], None] = _nothing
        # (bucket, key, physical etag) -> logical (size, etag, last_modified); None: plain
        self.views: LRUCache[tuple[str, str, str], physical.LogicalView | None] = \
            LRUCache(maxsize=200_000)
        self.corrupt = Counter("s3latent_corrupt_containers", "Containers that failed to read",
                               registry=registry)

    async def trusted(self, bucket: str, info: ObjectInfo) -> ObjectInfo:
        """`info` with its latent claim only if the bytes back it (physical.verified).

        The verdict is remembered per physical ETag with the logical view (listings
        share it), so a container or stub is checked once, not on every request.
        """
        ident = (bucket, info.key, info.etag)
        if physical.representation(info) == "plain":
            if physical.may_be_latent(info.etag):
                self.views[ident] = None  # listings need not HEAD it again
            return physical.as_plain(info) if info.meta.internal.get(physical.REP) else info
        if ident in self.views:
            return info if self.views[ident] is not None else physical.as_plain(info)
        trusted = await physical.verified(self.backend, bucket, info)
        if physical.representation(trusted) == "plain" and \
                physical.representation(info) == physical.REP_STUB:
            # A stub's truth depends on another key (its image), which may be changing right
            # now (an overwrite restoring the sidecar): judge it again next time.
            return trusted
        self.views[ident] = physical.logical_view(trusted)
        return trusted

    async def head_or_none(self, bucket: str, key: str) -> ObjectInfo | None:
        """The object at `key` as trusted, or None."""
        try:
            return await self.trusted(bucket, await self.backend.head_object(bucket, key))
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                return None
            raise

    def unpack(self, bucket: str, key: str, raw: bytes) -> tuple[ContainerHeader, bytes]:
        """Header and payload of a stored container; a corrupt one is counted and logged."""
        try:
            return unpack(raw)
        except ContainerError as exc:
            raise self.corrupted(bucket, key, exc) from exc

    def corrupted(self, bucket: str, key: str, exc: ContainerError) -> S3Error:
        """The client's answer for a container that cannot be read (counted, logged)."""
        self.corrupt.inc()
        log.error("container %s/%s is unreadable: %s", bucket, key, exc)
        return S3Error("InternalError", "The stored object is corrupt.")

    async def container(self, bucket: str, key: str
                        ) -> tuple[ObjectInfo, ContainerHeader, bytes]:
        """The (trusted) container at `key`: its info, header and payload."""
        info, body = await self.backend.get_object(bucket, key)
        raw = await read_body(body)
        if physical.representation(await self.trusted(bucket, info)) != physical.REP_LATENT:
            raise S3Error("NoSuchKey", Key=key)
        header, payload = self.unpack(bucket, key, raw)
        if not physical.container_holds(info, header):
            log.error("container %s/%s does not match its own metadata", bucket, key)
            raise S3Error("InternalError", "The stored object is corrupt.")
        return info, header, payload

    async def sidecar_bytes(self, bucket: str, stub: ObjectInfo) -> bytes:
        """The sidecar a (trusted) stub stands for, rebuilt from its image's container."""
        image_key = stub.meta.internal.get(physical.L_IMAGE, "")
        view = physical.logical_view(stub)
        try:
            _, header, payload = await self.container(bucket, image_key)
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                log.error("stub %s/%s points at %s, which is no container", bucket, stub.key,
                          image_key)
                raise S3Error("InternalError", "The sidecar's container is missing.") from exc
            raise
        if view is None or not physical.stub_holds(stub, image_key, header):
            raise S3Error("InternalError", "The sidecar's container does not match it.")
        return await asyncio.to_thread(physical.sidecar_file, header, payload)


def _nothing(bucket: str, key: str) -> None:
    """No store attached (a context built on its own, in tests)."""


def readable(key: str) -> None:
    """Hidden keys do not exist for clients."""
    if physical.is_hidden(key):
        raise S3Error("NoSuchKey", Key=key)


def writable(key: str) -> None:
    """Clients cannot write the gateway's own records."""
    if physical.is_hidden(key):
        raise S3Error("InvalidArgument", RESERVED, ArgumentName="key", ArgumentValue=key)
