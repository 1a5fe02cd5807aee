"""Objects in versioned buckets (docs/versioning.md).

Latent versions in a versioned bucket are of two kinds: pairs converted *before*
versioning was turned on (their container and stub are the keys' `null` versions), and, on a
backend that rewrites versions in place (the local backend), pairs converted since, each
container and stub standing at the version ID the client uploaded. They read exactly, current
or not:

- a version is read by its backend version ID; a container version is verified from its own
  bytes (not from the key's current version) and rendered; a stub version finds its
  container as the image version it names (`ivid`) or that version's keep copy, and (stubs
  written before versioning) the image key's current version, else its `null` version,
  else the keep copy below;
- nothing is materialised on overwrite (the replaced container stays as a noncurrent
  version and its stub still reads from it);
- before a container version a stub still needs is removed for good (DELETE ?versionId,
  or a Suspended write or delete replacing the `null` version), it is copied to a hidden
  keep copy (physical.keep_key), so the stub stays readable; sweeps remove keep copies no
  stub reads any more.

Renditions of container versions are kept in the image tier of the read cache and served
for a version whose backend object (ETag, Last-Modified, metadata: the same container
bytes) a HEAD just showed; stubs and plain versions are read from the backend.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from ..backends.base import ObjectBody, ObjectInfo, read_body
from ..cache.readpath import Entry
from ..errors import S3Error
from ..latent.container import ContainerError, ContainerHeader
from . import physical
from .context import LatentContext, readable
from .conversion import crash_point
from .reads import BytesBody, LatentReads, _slice
from .standins import StandIns

log = logging.getLogger(__name__)

KEEP_PREFIX = physical.KEEP_PREFIX
KEEPV_PREFIX = physical.KEEPV_PREFIX
keep_key = physical.keep_key
# How long a bucket's versioning status is believed (a fleet's other nodes may change it).
STATUS_TTL_S = 2.0
_MISSING = ("NoSuchKey", "NoSuchVersion", "MethodNotAllowed")


def parse_keep_key(key: str) -> tuple[str, str | None] | None:
    """(image key, ivid or None) of a keep copy's name; None for other keys."""
    if key.startswith(KEEPV_PREFIX):
        vid, sep, image_key = key[len(KEEPV_PREFIX):].partition("/")
        if vid.startswith(physical.NULL_KEEP):
            vid = "null"  # keepv/null-<sidecar etag>/: a container of the null version
        return (image_key, vid) if sep and image_key else None
    if key.startswith(KEEP_PREFIX) and len(key) > len(KEEP_PREFIX):
        return key[len(KEEP_PREFIX):], None
    return None


def stub_names(stub: ObjectInfo, image_key: str, version_id: str) -> bool:
    """Whether a stub reads its latent from `image_key`'s version `version_id`: by its
    `ivid`, or (stubs written before versioning, none) the `null` version."""
    if physical.representation(stub) != physical.REP_STUB or \
            stub.meta.internal.get(physical.L_IMAGE) != image_key:
        return False
    return stub.meta.internal.get(physical.L_IVID, "null") == version_id


class VersioningStatus:
    """Per bucket: whether its versioning was ever enabled (cached for STATUS_TTL_S)."""

    def __init__(self, ctx: LatentContext) -> None:
        self.ctx = ctx
        self._known: dict[str, tuple[str | None, float]] = {}

    async def get(self, bucket: str) -> str | None:
        known = self._known.get(bucket)
        if known is not None and time.monotonic() - known[1] < STATUS_TTL_S:
            return known[0]
        getter = getattr(self.ctx.backend, "get_bucket_versioning", None)
        status = await getter(bucket) if getter is not None else None
        self._known[bucket] = (status, time.monotonic())
        return status

    def set(self, bucket: str, status: str | None) -> None:
        self._known[bucket] = (status, time.monotonic())

    def forget(self, bucket: str) -> None:
        self._known.pop(bucket, None)


class VersionedObjects:
    """Reads of versions, and the keep copies that keep old stubs readable."""

    def __init__(self, ctx: LatentContext, reads: LatentReads) -> None:
        self.ctx = ctx
        self.reads = reads
        self.standins = StandIns(ctx)

    # -- reads -----------------------------------------------------------------
    async def head_object(self, bucket: str, key: str, version_id: str | None) -> ObjectInfo:
        readable(key)
        info = await self._head(bucket, key, version_id)
        if physical.representation(info) == "plain":
            return await self._shown(bucket, key, version_id, _plain(info), info)
        hit = self._cached(bucket, key, info)
        if hit is not None:
            return await self._shown(bucket, key, version_id, hit[0], info)
        logical, _ = await self._latent(bucket, key, info.version_id or version_id, info,
                                        render=False)
        return await self._shown(bucket, key, version_id, logical, info)

    async def get_object(self, bucket: str, key: str, byte_range: tuple[int, int] | None,
                         version_id: str | None) -> tuple[ObjectInfo, ObjectBody]:
        readable(key)
        backend = self.ctx.backend
        asked = time.monotonic()
        info = await self._head(bucket, key, version_id)
        pinned = info.version_id or version_id  # read the version that HEAD described
        hit = self._cached(bucket, key, info)
        if hit is not None:
            shown = await self._shown(bucket, key, version_id, hit[0], info)
            return shown, BytesBody(_slice(hit[1], byte_range))
        if physical.representation(info) == "plain":
            info2, body = await backend.get_object(bucket, key, byte_range, version_id=pinned)
            if physical.representation(info2) == "plain":
                try:
                    return await self._shown(bucket, key, version_id, _plain(info2),
                                             info2), body
                except BaseException:
                    await body.close()
                    raise
            await body.close()  # replaced meanwhile (no version to pin): read it whole
            info = info2
        logical, data = await self._latent(bucket, key, pinned, info, render=True, asked=asked)
        assert data is not None
        logical = await self._shown(bucket, key, version_id, logical, info)
        return logical, BytesBody(_slice(data, byte_range))

    async def _head(self, bucket: str, key: str, version_id: str | None) -> ObjectInfo:
        """HEAD of the backend version serving `version_id` (resolved through stand-ins;
        once more without the cache if the backend no longer has the one resolved)."""
        if version_id is None or not self.standins.supported:
            return await self.ctx.backend.head_object(bucket, key, version_id=version_id)
        target = await self.standins.resolve(bucket, key, version_id)
        try:
            return await self.ctx.backend.head_object(bucket, key, version_id=target)
        except S3Error as exc:
            if exc.code != "NoSuchVersion":
                raise
        target = await self.standins.resolve(bucket, key, version_id, fresh=True)
        return await self.ctx.backend.head_object(bucket, key, version_id=target)

    async def _shown(self, bucket: str, key: str, asked: str | None, logical: ObjectInfo,
                     stored: ObjectInfo) -> ObjectInfo:
        """`logical` with the version ID a client sees (a stand-in's client version);
        NoSuchVersion when a client named the backend's own ID of a stand-in."""
        if not self.standins.supported or physical.L_LVID not in stored.meta.internal:
            return logical
        shown = await self.standins.shown(bucket, key, stored)
        if asked is not None and shown != asked:
            raise S3Error("NoSuchVersion", "The specified version does not exist.", Key=key,
                          VersionId=asked[:100])
        if shown == logical.version_id:
            return logical
        return dataclasses.replace(logical, version_id=shown)

    def _cached(self, bucket: str, key: str, info: ObjectInfo
                ) -> tuple[ObjectInfo, bytes] | None:
        """The rendition of the container version `info` (a HEAD just now) if the image
        tier holds one made from a backend object with the same ETag, Last-Modified and
        metadata: the same container bytes, so the same rendition, whichever version.
        Saves the GET and the decode; stubs and plain versions are not cached here."""
        cache = self.ctx.cache
        if cache is None or physical.representation(info) != physical.REP_LATENT:
            return None
        entry = cache.image(bucket, key)
        if entry is None or not entry.same_source(info):
            return None
        logical = dataclasses.replace(entry.info, version_id=info.version_id, lock=info.lock)
        return logical, bytes(entry.data)

    async def _latent(self, bucket: str, key: str, version_id: str | None,
                      claimed: ObjectInfo, *, render: bool, asked: float | None = None
                      ) -> tuple[ObjectInfo, bytes | None]:
        """The logical info (and bytes) of a version whose metadata claims it is latent.

        The claim is checked against the bytes, as physical.verified does for current
        objects; a false claim is served as the plain object it is.
        """
        backend = self.ctx.backend
        info, body = await backend.get_object(bucket, key, version_id=version_id)
        raw = await read_body(body)
        rep = physical.representation(info)
        data: bytes | None
        if rep == physical.REP_LATENT:
            header = self._header_of(bucket, key, info, raw)
            if header is None:
                return _plain(info), raw
            data = None
            if render:
                data = await self.reads._render(bucket, key, info.etag, raw)
                logical = self.reads._checked(bucket, key, info, data)
                if self.ctx.cache is not None and asked is not None:
                    self.ctx.cache.put_image(bucket, key, Entry.of(logical, data, info, asked))
            else:
                logical = physical.logical_info(info)
        elif rep == physical.REP_STUB:
            found = await self._stub_container(bucket, info)
            if found is None:
                log.error("stub %s/%s (version %s) has no container left", bucket, key,
                          version_id)
                raise S3Error("InternalError", "The sidecar's container is missing.")
            header, payload = found
            data = await asyncio.to_thread(physical.sidecar_file, header, payload)
            logical = self.reads._checked(bucket, key, info, data)
        else:
            return _plain(info), raw
        logical = dataclasses.replace(logical, version_id=info.version_id, lock=info.lock)
        return logical, data

    def _header_of(self, bucket: str, key: str, info: ObjectInfo, raw: bytes
                   ) -> ContainerHeader | None:
        try:
            header, _ = self.ctx.unpack(bucket, key, raw)
        except (S3Error, ContainerError):
            return None
        return header if physical.container_holds(info, header) else None

    async def _stub_container(self, bucket: str, stub: ObjectInfo
                              ) -> tuple[ContainerHeader, bytes] | None:
        """The container a stub version reads from: the image version it names (`ivid`)
        or that version's keep copy; for stubs written before versioning (no `ivid`) the
        image's current version, its `null` version, or the keep copy, whichever holds the
        stub's sidecar."""
        image_key = stub.meta.internal.get(physical.L_IMAGE, "")
        if not image_key or physical.is_hidden(image_key):
            return None
        ivid = stub.meta.internal.get(physical.L_IVID)
        ibvid = stub.meta.internal.get(physical.L_IBVID)  # a stub stand-in's container
        candidates: tuple[tuple[str, str | None], ...]
        kept = tuple((name, None) for name in physical.null_keep_keys(stub, image_key))
        if ivid is not None and ibvid is not None:
            candidates = ((image_key, ibvid), (keep_key(image_key, ivid), None))
        elif ivid == "null":
            candidates = ((image_key, ivid), *kept)
        elif ivid is not None:
            candidates = ((image_key, ivid), (keep_key(image_key, ivid), None))
        else:
            candidates = ((image_key, None), (image_key, "null"), *kept)
        for key, version_id in candidates:
            try:
                info, body = await self.ctx.backend.get_object(bucket, key,
                                                               version_id=version_id)
            except S3Error as exc:
                if exc.code in _MISSING:
                    continue
                raise
            raw = await read_body(body)
            if physical.representation(info) != physical.REP_LATENT:
                continue
            try:
                header, payload = self.ctx.unpack(bucket, key, raw)
            except (S3Error, ContainerError):
                continue
            if physical.container_holds(info, header) and \
                    physical.stub_holds(stub, image_key, header):
                return header, payload
        return None

    # -- keep copies -------------------------------------------------------------
    async def keep_if_needed(self, bucket: str, key: str, version_id: str,
                             backend_vid: str | None = None) -> None:
        """`key`'s version `version_id` is about to go for good: if it is a container that
        a stub version of its sidecar key still reads from, copy it to its keep copy first.

        The caller holds the pair lock of `key` (Converter.pair_lock) from here until its
        delete has landed, so no stub naming this version is written in between. Costs
        one HEAD for any key but a sidecar key (a pair converts whatever its image key is
        called: `photo` with an image content type too); for a container, one version
        listing of the sidecar key and a HEAD per one-part version on it; the copy at most
        once per version.
        """
        if physical.is_hidden(key) or \
                key.endswith(self.ctx.config.bucket(bucket).sidecar_suffix):
            return
        backend = self.ctx.backend
        try:
            info = await backend.head_object(bucket, key, version_id=backend_vid or version_id)
        except S3Error as exc:
            if exc.code in _MISSING:
                return
            raise
        if physical.representation(info) != physical.REP_LATENT:
            return
        vid = info.version_id or backend_vid or version_id
        # `backend_vid`: the stand-in of client version `version_id` (stubs name the latter)
        client = version_id if backend_vid is not None else vid
        stubs = await self.stubs_naming(bucket, key, client)
        if not stubs:
            return
        info, body = await backend.get_object(bucket, key, version_id=vid)
        raw = await read_body(body)
        header = self._header_of(bucket, key, info, raw)
        if header is None or not any(physical.stub_holds(s, key, header) for s in stubs):
            return
        # A server-side copy keeps the one-part multipart ETag and the internal metadata
        # that make it a container (a PUT would make a plain-looking object).
        # The null version's by the sidecar it holds: an older null container kept for
        # other stubs stays where it is.
        target = keep_key(key, client, header.sidecar.etag if client == "null" and
                          header.sidecar is not None else None)
        kept = await backend.copy_object(bucket, key, bucket, target, None,
                                         src_version_id=vid)
        if physical.representation(kept) != physical.REP_LATENT:
            log.error("keep copy of %s/%s is not a container (etag %s)", bucket, key,
                      kept.etag)
        crash_point("after-keep-copy")  # both copies exist: the client's retry deletes
        log.info("kept the container of %s/%s version %s (md5 %s) for its sidecar stub",
                 bucket, key, vid, hashlib.md5(raw).hexdigest())

    async def stubs_naming(self, bucket: str, image_key: str, version_id: str
                           ) -> list[ObjectInfo]:
        """The stub versions of `image_key`'s sidecar key that read from its version
        `version_id` (one version listing of the sidecar key, a HEAD per candidate)."""
        side_key = image_key + self.ctx.config.bucket(bucket).sidecar_suffix
        backend = self.ctx.backend
        found: list[ObjectInfo] = []
        key_marker: str | None = None
        vid_marker: str | None = None
        while True:
            page = await backend.list_object_versions(
                bucket, prefix=side_key, key_marker=key_marker,
                version_id_marker=vid_marker, max_keys=1000)
            for entry in page.entries:
                if entry.key != side_key or entry.delete_marker:
                    continue
                if not physical.may_be_latent(entry.etag) and entry.version_id != "null":
                    continue
                try:
                    stub = await backend.head_object(bucket, side_key,
                                                     version_id=entry.version_id)
                except S3Error as exc:
                    if exc.code in _MISSING:
                        continue
                    raise
                if stub_names(stub, image_key, version_id):
                    found.append(stub)
            done = not page.is_truncated or any(e.key > side_key for e in page.entries)
            if done or page.next_key_marker is None:
                return found
            key_marker, vid_marker = page.next_key_marker, page.next_version_id_marker

    async def sweep_keep_copies(self, bucket: str,
                                lock: Callable[[str, str], AbstractAsyncContextManager[None]]
                                ) -> int:
        """Delete the keep copies no stub version reads from any more (their stubs were
        deleted or replaced); returns how many went. Each is checked and deleted under
        the image key's pair lock (`lock`), which keep_if_needed's callers hold too."""
        removed = 0
        start: str | None = None
        backend = self.ctx.backend
        while True:
            page = await backend.list_objects(bucket, prefix=physical.HIDDEN_PREFIX + "keep",
                                              start_after=start, max_keys=1000)
            for entry in page.entries:
                parsed = parse_keep_key(entry.key)
                if parsed is None:
                    continue
                image_key, ivid = parsed
                async with lock(bucket, image_key):
                    if await self._keep_needed(bucket, image_key, ivid, entry.key):
                        continue
                    try:
                        await self._delete_every_version(bucket, entry.key)
                    except S3Error as exc:
                        if exc.code not in _MISSING:
                            raise
                        continue
                removed += 1
                log.info("removed the keep copy %s/%s: no stub reads from it", bucket,
                         entry.key)
            if not page.is_truncated or page.next_start_after is None:
                return removed
            start = page.next_start_after

    async def _delete_every_version(self, bucket: str, key: str) -> None:
        """Remove a hidden key for good: by each version ID where the backend versions it
        (the S3 backend, a versioned bucket: a plain delete would only add a marker)."""
        backend = self.ctx.backend
        if getattr(backend, "REPLACES_VERSIONS", False):
            await backend.delete_object(bucket, key)
            return
        page = await backend.list_object_versions(bucket, prefix=key, max_keys=1000)
        vids = [e.version_id for e in page.entries if e.key == key]
        for vid in vids or [None]:
            if vid is None:
                await backend.delete_object(bucket, key)
            else:
                await backend.delete_object(bucket, key, version_id=vid)

    async def _keep_needed(self, bucket: str, image_key: str, ivid: str | None,
                           kept_key: str) -> bool:
        """Whether a stub version still reads from the keep copy at `kept_key`."""
        # The old name (no version in it) serves the stubs of the `null` version.
        stubs = await self.stubs_naming(bucket, image_key, ivid or "null")
        if not stubs:
            return False
        try:
            info, body = await self.ctx.backend.get_object(bucket, kept_key)
        except S3Error as exc:
            if exc.code in _MISSING:
                return False
            raise
        header = self._header_of(bucket, kept_key, info, await read_body(body))
        # A copy that does not hold the stubs' sidecar serves none of them: it goes too.
        return header is not None and any(physical.stub_holds(s, image_key, header)
                                          for s in stubs)


def _plain(info: ObjectInfo) -> ObjectInfo:
    """A plain version as clients see it (a false latent claim dropped)."""
    if physical.REP in info.meta.internal:
        return physical.as_plain(info)
    return info
