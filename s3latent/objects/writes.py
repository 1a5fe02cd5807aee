"""Writes of latent objects: pairs, overwrites, copies, deletes, latent-only uploads.

Both keys of a converted pair stay readable whatever a client writes: before a container is
overwritten or deleted, its stub is written back as the real sidecar (materialize_sidecar).
A write schedules the conversion of the pair it completes; a delete of one key of a refused
pair drops the refusal. A replaced container or stub loses its listing index entry (best
effort: a stale entry names a physical ETag that no longer exists, so it is never used).
Cache invalidation and write notifications are the store's (objects.store), not done here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from ..backends.base import HashedBody, ObjectInfo, ObjectMeta, read_body
from ..errors import S3Error
from . import encryption, physical
from .context import LatentContext, readable, writable
from .conversion import PAIR_FIELDS, SIDECAR_ETAG, looks_like_image

log = logging.getLogger(__name__)

LATENT_CONTENT_TYPE = "application/vnd.s3latent.latent+safetensors"
FORMAT_META = "s3latent-format"
_FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"),
            "jpg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}
MAX_LATENT_UPLOAD = 64 * 1024 * 1024
# Copies decided again because the source changed between its HEAD and its read.
COPY_ATTEMPTS = 3


class _SourceChanged(Exception):
    """A copy's source changed after its HEAD: the copy is decided again."""


def refuse_encrypted_source(stored: ObjectInfo) -> None:
    """The store copies only unencrypted sources: the front end copies an encrypted one
    through itself (decrypt, re-encrypt), having judged it by its HEAD. An encrypted source
    here was written after that HEAD; copied as it is (its key record dropped, or a metadata
    REPLACE) the copy would be ciphertext served as plaintext. Refused: a retry decides
    again."""
    if encryption.mode_of(stored.meta.internal) is not None:
        raise S3Error("PreconditionFailed", "The copy source changed while it was copied; "
                      "retry.", Condition="ETag")


class LatentWrites:
    """See the module docstring."""

    def __init__(self, ctx: LatentContext) -> None:
        self.ctx = ctx

    async def put_object(self, bucket: str, key: str, body: AsyncIterable[bytes],
                         meta: ObjectMeta, *, size: int | None = None,
                         if_match: str | None = None,
                         if_none_match: str | None = None) -> ObjectInfo:
        """Store `key`; a converted image's stub becomes its sidecar again first."""
        writable(key)
        settings = self.ctx.config.bucket(bucket)
        if meta.content_type.split(";")[0].strip().lower() == LATENT_CONTENT_TYPE:
            return await self._put_latent_only(bucket, key, body, meta, size=size,
                                               if_match=if_match, if_none_match=if_none_match)
        image_like = looks_like_image(key, meta.content_type)
        found: list[ObjectInfo | None] = []

        async def before_commit() -> None:
            # Always look: whatever the new object looks like, the one it replaces may be a
            # container whose stub must become a real sidecar again (else the sidecar is
            # lost), and conditions are judged against what the client sees now.
            current = await self.ctx.head_or_none(bucket, key)
            if current is not None:
                _check_write_conditions(physical.logical_info(current), if_match,
                                        if_none_match)
                if physical.representation(current) == physical.REP_LATENT:
                    await self.materialize_sidecar(bucket, key, settings.sidecar_suffix)
            elif if_match is not None:
                raise S3Error("NoSuchKey", Key=key)
            found.append(current)

        # The pair's lock (no stub written meanwhile) is taken only once the whole body has
        # arrived, and held until the backend has committed: a slow client holds nothing.
        async with contextlib.AsyncExitStack() as held:

            async def locked_then_checked() -> None:
                await held.enter_async_context(self.ctx.converter.pair_lock(bucket, key))
                await before_commit()

            info = await self.ctx.backend.put_object(
                bucket, key, _then_before_end(body, locked_then_checked), meta, size=size)
        current = found[0] if found else None
        if current is not None:
            await self._unindex(bucket, current)
        if settings.convert:
            if key.endswith(settings.sidecar_suffix):
                self.ctx.converter.schedule(bucket, key[: -len(settings.sidecar_suffix)])
            elif image_like:
                self.ctx.converter.schedule(bucket, key)
        return info

    async def materialize_sidecar(self, bucket: str, image_key: str, suffix: str) -> None:
        """The container at image_key is going away: make its stub a real sidecar again."""
        side_key = image_key + suffix
        stub = await self.ctx.head_or_none(bucket, side_key)
        if stub is None or physical.representation(stub) != physical.REP_STUB or \
                stub.meta.internal.get(physical.L_IMAGE) != image_key:
            return
        data = await self.ctx.sidecar_bytes(bucket, stub)

        async def once() -> AsyncIterator[bytes]:
            yield data

        # A write of the sidecar key like a client's: its cached reads go before and after,
        # and the write listeners (owner invalidation) hear of it. Its tags are read and
        # carried over inside the key's tag lock, so a tagging cannot land in between.
        self.ctx.invalidate(bucket, side_key)
        try:
            async with self.ctx.converter.tags_lock(bucket, side_key):
                meta = ObjectMeta(content_type=stub.meta.content_type,
                                  metadata=dict(stub.meta.metadata),
                                  headers=dict(stub.meta.headers),
                                  tags=await self.ctx.backend.get_tags(bucket, side_key),
                                  internal=physical.access_of(stub.meta.internal))
                await self.ctx.backend.put_object(bucket, side_key, once(), meta,
                                                  size=len(data), if_match=stub.etag)
        except S3Error as exc:
            if exc.code not in ("PreconditionFailed", "NoSuchKey"):
                raise
            return
        self.ctx.changed(bucket, side_key)
        await self._unindex(bucket, stub)

    async def _unindex(self, bucket: str, replaced: ObjectInfo) -> None:
        """`replaced` (a container, stub or plain "-1" object) was overwritten or deleted:
        drop its listing index entry (best effort; a stale entry is never used)."""
        try:
            await physical.drop_view_index(self.ctx.backend, bucket, replaced)
            if encryption.mode_of(replaced.meta.internal):
                await physical.drop_sse_index(self.ctx.backend, bucket, replaced.key,
                                              replaced.etag)
        except S3Error as exc:
            log.info("stale listing index entry of %s/%s left: %s", bucket, replaced.key, exc)

    async def _index(self, bucket: str, key: str, physical_etag: str,
                     view: physical.LogicalView) -> None:
        """A container was written at `key`: record its view for listings (best effort)."""
        self.ctx.views[(bucket, key, physical_etag)] = view
        try:
            await physical.write_view_index(self.ctx.backend, bucket, key, physical_etag, view)
        except S3Error as exc:
            log.info("listing index of %s/%s not written: %s", bucket, key, exc)

    async def delete_object(self, bucket: str, key: str, *,
                            check: Callable[[ObjectInfo | None], None] | None = None) -> None:
        """Delete `key`, keeping the other key of a converted pair readable.

        `check` (conditional deletes, lifecycle expiry) sees the object as clients see it
        (None: there is none) under the pair lock right before the delete, and raises to
        leave it alone.
        """
        if physical.is_hidden(key):
            if check is not None:
                check(None)
            return  # not a client's object: deleting it "succeeds" like any missing key
        settings = self.ctx.config.bucket(bucket)
        async with self.ctx.converter.pair_lock(bucket, key):  # no stub written meanwhile
            current = await self.ctx.head_or_none(bucket, key)
            if check is not None:
                check(physical.logical_info(current) if current is not None else None)
            if current is not None and physical.representation(current) == physical.REP_LATENT:
                await self.materialize_sidecar(bucket, key, settings.sidecar_suffix)
            # A judged delete names what it judged: the pair lock orders this node's writes,
            # the storage's If-Match every other node's.
            guard = current.etag if check is not None and current is not None else None
            await self.ctx.backend.delete_object(bucket, key, if_match=guard)
        if current is not None:
            await self._unindex(bucket, current)
        if settings.convert:
            await self._drop_refusal(bucket, key, settings.sidecar_suffix, current)

    async def _drop_refusal(self, bucket: str, key: str, suffix: str,
                            current: ObjectInfo | None) -> None:
        """One key of a refused pair was deleted: its refusal marker goes too."""
        if key.endswith(suffix):
            image_key = key[: -len(suffix)]
        elif looks_like_image(key, current.meta.content_type if current else None):
            image_key = key
        else:
            return
        self.ctx.converter.forget_refusal(bucket, image_key)
        try:
            if await self.ctx.converter.refusals.drop(bucket, image_key):
                self.ctx.converter.marker_ops.labels("delete").inc()
        except S3Error as exc:
            log.warning("refusal marker of %s/%s not deleted: %s", bucket, image_key, exc)

    async def copy_object(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str,
                          meta: ObjectMeta | None) -> ObjectInfo:
        """Copy as a client sees it: a container's copy is a container, a stub's a sidecar."""
        readable(src_key)
        writable(dst_key)
        async with self.ctx.converter.pair_lock(dst_bucket, dst_key):  # no stub meanwhile
            for _ in range(COPY_ATTEMPTS):
                try:
                    return await self._copy_object(src_bucket, src_key, dst_bucket, dst_key,
                                                   meta)
                except _SourceChanged:
                    continue  # decide again from what the source is now
        raise S3Error("ServiceUnavailable", "The copy source kept changing during the copy; "
                      "please retry.")

    async def _copy_object(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str,
                           meta: ObjectMeta | None) -> ObjectInfo:
        """One attempt; _SourceChanged when the source is no longer what its HEAD said (a
        client's write or a conversion landed in between), before anything is written."""
        stored = await self.ctx.backend.head_object(src_bucket, src_key)
        refuse_encrypted_source(stored)
        source = await self.ctx.trusted(src_bucket, stored)
        rep = physical.representation(source)
        current = await self.ctx.head_or_none(dst_bucket, dst_key)
        # A self-copy of a container (metadata REPLACE, or a storage class) writes back the
        # same container: its stub stays valid, so the sidecar stays a stub.
        same_container = (src_bucket, src_key) == (dst_bucket, dst_key) and \
            rep == physical.REP_LATENT and current is not None and current.etag == stored.etag
        if rep == physical.REP_LATENT:
            # Read before the destination changes (a self-copy reads what it replaces).
            info, body = await self.ctx.backend.get_object(src_bucket, src_key)
            raw = await read_body(body)
            info = await self.ctx.trusted(src_bucket, info)
            view = physical.logical_view(info)
            if info.etag != stored.etag or view is None or \
                    physical.representation(info) != physical.REP_LATENT:
                raise _SourceChanged
        elif rep == physical.REP_STUB:
            try:
                data = await self.ctx.sidecar_bytes(src_bucket, source)
            except S3Error:
                # Its image was overwritten meanwhile (the stub became the real sidecar)?
                now = await self.ctx.head_or_none(src_bucket, src_key)
                if now is None or now.etag != stored.etag:
                    raise _SourceChanged from None
                raise
        if current is not None and physical.representation(current) == physical.REP_LATENT \
                and not same_container:
            await self.materialize_sidecar(dst_bucket, dst_key,
                                            self.ctx.config.bucket(dst_bucket).sidecar_suffix)
        if rep == "plain":
            if meta is None and stored.meta.internal:
                # The backend would copy the source's internal metadata (unverified
                # claims, written around the gateway): the copy gets the client's part only.
                meta = ObjectMeta(content_type=stored.meta.content_type,
                                  metadata=dict(stored.meta.metadata),
                                  headers=dict(stored.meta.headers),
                                  tags=await self.ctx.backend.get_tags(src_bucket, src_key),
                                  checksums=dict(source.meta.checksums))
            copied = await self.ctx.backend.copy_object(src_bucket, src_key, dst_bucket, dst_key,
                                                    meta)
            if current is not None:
                await self._unindex(dst_bucket, current)
            if meta is not None and copied.etag != stored.etag:
                await self._undo_ciphertext_copy(src_bucket, src_key, dst_bucket, dst_key,
                                                 copied)
            return copied
        if rep == physical.REP_STUB:
            new_meta = meta or ObjectMeta(
                content_type=source.meta.content_type, metadata=dict(source.meta.metadata),
                headers=dict(source.meta.headers),
                tags=await self.ctx.backend.get_tags(src_bucket, src_key))

            async def once() -> AsyncIterator[bytes]:
                yield data

            copied = await self.ctx.backend.put_object(dst_bucket, dst_key, once(), new_meta,
                                                   size=len(data))
            if current is not None:
                await self._unindex(dst_bucket, current)
            return copied
        # A container stays a container: the copy is latent too.
        now = datetime.now(UTC)
        kept = physical.storage_of(info.meta.internal)
        if same_container and SIDECAR_ETAG in info.meta.internal:
            # Still the container of the sidecar beside it (whose stub points here, or which
            # it consumes: a sidecar left by a crash is still recognised as the admitted one).
            kept.update({k: info.meta.internal[k] for k in PAIR_FIELDS
                         if k in info.meta.internal})
        # The copy's access fields are the copy request's (none: the default ones).
        internal = physical.mirror(physical.REP_LATENT, view.size, view.etag, now, **kept,
                                   **physical.access_of(meta.internal if meta else {}))
        if meta is None:
            new_meta = ObjectMeta(content_type=info.meta.content_type,
                                  metadata=dict(info.meta.metadata),
                                  headers=dict(info.meta.headers),
                                  tags=await self.ctx.backend.get_tags(src_bucket, src_key),
                                  internal=internal)
        else:
            new_meta = ObjectMeta(content_type=meta.content_type, metadata=meta.metadata,
                                  headers=meta.headers, tags=meta.tags, internal=internal)
        try:
            written = await physical.write_single_part(
                self.ctx.backend, dst_bucket, dst_key, raw, new_meta,
                if_match=current.etag if same_container and current is not None else None)
        except S3Error as exc:
            # A self-copy keeps the stub only over the very container it read; another
            # gateway replaced it meanwhile: decide again.
            if same_container and exc.code in ("PreconditionFailed", "NoSuchKey"):
                raise _SourceChanged from exc
            raise
        if current is not None:
            await self._unindex(dst_bucket, current)
        await self._index(dst_bucket, dst_key, written.etag,
                          physical.LogicalView(view.size, view.etag, now))
        return ObjectInfo(dst_key, view.size, view.etag, now, new_meta)

    async def _undo_ciphertext_copy(self, src_bucket: str, src_key: str, dst_bucket: str,
                                    dst_key: str, copied: ObjectInfo) -> None:
        """The backend copied another source than the one judged (written between the HEAD
        and the backend's read). If that was an encrypted object, the metadata chosen here
        dropped its key record: ciphertext would be served as plaintext. Then our copy goes
        (the destination's pair lock is held; only while it is still ours) and the copy is
        refused. (A backend whose copies get other ETags than their sources is not judged:
        the comparison below never matches there.)"""
        now = await self.ctx.head_or_none(src_bucket, src_key)
        if now is None or encryption.mode_of(now.meta.internal) is None or \
                now.etag != copied.etag:
            return
        dst = await self.ctx.head_or_none(dst_bucket, dst_key)
        if dst is not None and dst.etag == copied.etag and \
                encryption.mode_of(dst.meta.internal) is None:
            await self.ctx.backend.delete_object(dst_bucket, dst_key, if_match=copied.etag)
        raise S3Error("PreconditionFailed", "The copy source changed while it was copied; "
                      "retry.", Condition="ETag")

    async def _put_latent_only(self, bucket: str, key: str, body: AsyncIterable[bytes],
                               meta: ObjectMeta, *, size: int | None, if_match: str | None,
                               if_none_match: str | None) -> ObjectInfo:
        limit = MAX_LATENT_UPLOAD
        if size is not None and size > limit:
            raise S3Error("EntityTooLarge", "A latent upload may be at most 64 MiB.")
        chunks, total = [], 0
        async for chunk in body:
            total += len(chunk)
            if total > limit:
                raise S3Error("EntityTooLarge", "A latent upload may be at most 64 MiB.")
            chunks.append(chunk)
        data = b"".join(chunks)
        await self.ctx.decoding.ready()
        from ..latent.sidecar import SidecarError, check_channels, parse_sidecar
        from ..models.registry import ModelUnavailable, UnknownModel

        try:
            sidecar = await asyncio.to_thread(parse_sidecar, data)
        except SidecarError as exc:
            raise S3Error("InvalidArgument", f"Invalid latent upload: {exc}") from exc
        model_id = sidecar.model or meta.metadata.get(physical.MODEL_META)
        if not model_id:
            raise S3Error("InvalidArgument", "Invalid latent upload: name the model in the "
                          "safetensors metadata 'model' or in x-amz-meta-s3latent-model.")
        wanted = meta.metadata.get(FORMAT_META, "png").lower()
        if wanted not in _FORMATS:
            raise S3Error("InvalidArgument", f"Invalid latent upload: x-amz-meta-{FORMAT_META} "
                          f"must be one of png, jpeg, webp (got {wanted!r}).")
        fmt, content_type = _FORMATS[wanted]
        try:
            spec = self.ctx.decoding.models.spec(model_id)
            check_channels(sidecar, spec.latent_channels)
        except UnknownModel as exc:
            raise S3Error("InvalidArgument", f"Invalid latent upload: {exc}") from exc
        except SidecarError as exc:
            raise S3Error("InvalidArgument", f"Invalid latent upload: {exc}") from exc
        too_large = self.ctx.decoding.over_pixel_ceiling(model_id, sidecar.latent.shape)
        if too_large:  # refused before any decode: its memory and time are what is bounded
            raise S3Error("InvalidArgument", f"Invalid latent upload: {too_large}.")
        settings = self.ctx.config.bucket(bucket)
        try:
            admission = await self.ctx.converter.admitter().admit_latent_only(
                settings, sidecar, model_id, fmt, content_type, meta)
        except ModelUnavailable as exc:
            raise S3Error("ServiceUnavailable", f"The model {model_id} is unavailable: "
                          f"{exc}") from exc
        # The body is read and admitted; no stub is written for the key from here on.
        async with self.ctx.converter.pair_lock(bucket, key):
            current = await self.ctx.head_or_none(bucket, key)
            if current is not None:
                _check_write_conditions(physical.logical_info(current), if_match, if_none_match)
                if physical.representation(current) == physical.REP_LATENT:
                    await self.materialize_sidecar(bucket, key, settings.sidecar_suffix)
            elif if_match is not None:
                raise S3Error("NoSuchKey", Key=key)
            now = datetime.now(UTC)
            user_meta = {k: v for k, v in meta.metadata.items() if k not in (FORMAT_META,)}
            header = admission.header
            new_meta = ObjectMeta(content_type=content_type, metadata=user_meta,
                                  headers=meta.headers, tags=meta.tags,
                                  internal=physical.mirror(
                                      physical.REP_LATENT, header.size, header.etag, now,
                                      **physical.storage_mirror(header.codec, header.model,
                                                                header.psnr),
                                      **physical.access_of(meta.internal)))
            written = await physical.write_single_part(self.ctx.backend, bucket, key,
                                                       admission.container, new_meta)
            if current is not None:
                await self._unindex(bucket, current)
            await self._index(bucket, key, written.etag,
                              physical.LogicalView(header.size, header.etag, now))
            return ObjectInfo(key, admission.header.size, admission.header.etag,
                              now, new_meta)

    @asynccontextmanager
    async def overwriting(self, bucket: str, key: str) -> AsyncIterator[None]:
        """Around before_overwrite .. after_overwrite: no stub is written for `key` meanwhile
        (Converter.pair_lock)."""
        async with self.ctx.converter.pair_lock(bucket, key):
            yield

    async def before_overwrite(self, bucket: str, key: str) -> ObjectInfo | None:
        """A converted image's stub becomes its sidecar again, as for a PUT."""
        current = await self.ctx.head_or_none(bucket, key)
        if current is not None and physical.representation(current) == physical.REP_LATENT:
            await self.materialize_sidecar(bucket, key,
                                            self.ctx.config.bucket(bucket).sidecar_suffix)
        return current

    async def after_overwrite(self, bucket: str, key: str, replaced: ObjectInfo | None) -> None:
        """That write landed: its replaced object's index entry goes, conversion is queued."""
        if replaced is not None:
            await self._unindex(bucket, replaced)
        settings = self.ctx.config.bucket(bucket)
        if settings.convert and not physical.is_hidden(key):
            if key.endswith(settings.sidecar_suffix):
                self.ctx.converter.schedule(bucket, key[: -len(settings.sidecar_suffix)])
            elif looks_like_image(key, None):
                self.ctx.converter.schedule(bucket, key)

    async def delete_bucket(self, bucket: str) -> None:
        """The gateway's hidden records go with the bucket once no client key is left.

        Background work on the bucket (a conversion of a pair the client just deleted,
        a sweep, an index repair) is waited for and held back meanwhile: a hidden record
        it wrote after the clean-up would make the deletion fail, or, written after it,
        bring the bucket back on SeaweedFS (bucket_gate.py).
        """
        await self._no_client_keys(bucket)
        async with self.ctx.converter.gate.closed(bucket):
            await self._no_client_keys(bucket)  # again: a client may have written meanwhile
            while True:
                page = await self.ctx.backend.list_objects(bucket,
                                                           prefix=physical.HIDDEN_PREFIX)
                for entry in page.entries:
                    await self.ctx.backend.delete_object(bucket, entry.key)
                if not page.is_truncated:
                    break
            if await self.ctx.backend.get_bucket_versioning(bucket) is not None:
                await self._purge_hidden_versions(bucket)
            await self.ctx.backend.delete_bucket(bucket)

    async def _purge_hidden_versions(self, bucket: str) -> None:
        """In a bucket that was ever versioned, deleting a hidden record leaves its versions
        and a delete marker, and the backend deletes no bucket holding any: a client could
        then never delete a bucket it emptied. Every page listed is deleted, so listing
        from the start again ends."""
        while True:
            page = await self.ctx.backend.list_object_versions(
                bucket, prefix=physical.HIDDEN_PREFIX)
            if not page.entries:
                return
            for entry in page.entries:
                await self.ctx.backend.delete_object(bucket, entry.key,
                                                     version_id=entry.version_id,
                                                     bypass_governance=True)

    async def _no_client_keys(self, bucket: str) -> None:
        """BucketNotEmpty unless every key left in `bucket` is one of the gateway's own."""
        first = await self.ctx.backend.list_objects(bucket, max_keys=1)
        if first.entries and not physical.is_hidden(first.entries[0].key):
            raise S3Error("BucketNotEmpty", BucketName=bucket)
        if first.entries:  # the hidden range comes first; is anything listed after it?
            after = await self.ctx.backend.list_objects(bucket, start_after=physical.HIDDEN_END,
                                                        max_keys=1)
            if after.entries:
                raise S3Error("BucketNotEmpty", BucketName=bucket)


def _check_write_conditions(current: ObjectInfo, if_match: str | None,
                            if_none_match: str | None) -> None:
    """If-Match / If-None-Match of a write, against what the client sees at the key.

    If-None-Match holds `*` (create only) or entity tags: as HTTP defines it for a PUT, the
    write fails when any of them is the current object's ETag (an SSE-S3 object's is also
    its plaintext MD5, the one clients are shown: encryption.client_views)."""
    etags, _ = encryption.client_views(current)
    if if_none_match is not None and any(
            tag.strip().removeprefix("W/").strip('"') in ("*", *etags)
            for tag in if_none_match.split(",")):
        raise S3Error("PreconditionFailed", Condition="If-None-Match")
    if if_match is not None and if_match.strip('"') not in (*etags, "*"):
        raise S3Error("PreconditionFailed", Condition="If-Match")


def _then_before_end(body: AsyncIterable[bytes],
                     before_end: Callable[[], Awaitable[None]]) -> AsyncIterable[bytes]:
    """The client's body, then `before_end()` once its last byte has been read.

    Backends commit only when the body iterator ends without raising (backends/base.py),
    so what `before_end` does (take a lock, check conditions, restore a sidecar) happens
    before the commit, and an S3Error it raises aborts the write with nothing stored.
    A verified request body (HashedBody) stays one: its MD5 and checksums pass through.
    """
    if isinstance(body, HashedBody):
        return _HashedThenBeforeEnd(body, before_end)

    async def plain() -> AsyncIterator[bytes]:
        async for chunk in body:
            yield chunk
        await before_end()

    return plain()


class _HashedThenBeforeEnd(HashedBody):
    """`_then_before_end` for a body that hashes itself."""

    def __init__(self, body: HashedBody, before_end: Callable[[], Awaitable[None]]) -> None:
        self._body = body
        self._before_end = before_end

    async def __aiter__(self) -> AsyncIterator[bytes]:  # type: ignore[override]
        async for chunk in self._body:
            yield chunk
        await self._before_end()

    @property
    def md5_hex(self) -> str:
        return self._body.md5_hex

    @property
    def checksums(self) -> dict[str, str]:
        return self._body.checksums
