"""Conversion of image + sidecar pairs into latent containers, in the background.

Both parts are durable plain objects before conversion starts. The worker reads
them, renders the latent (after the codec's round trip, so a lossy codec is
judged by what will really be served), checks the admission policy against
the upload and only then writes the container over the image, guarded by the
image's ETag so that a newer PUT wins. The sidecar is replaced by a stub last.

A crash between any two steps leaves either the plain pair (the sweeper
converts it again) or the container plus a still-real sidecar (the sweeper
writes the stub); never neither.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from ..backends.base import Backend, ObjectInfo, ObjectMeta
from ..config import Config
from ..s3.errors import S3Error
from . import physical

if TYPE_CHECKING:
    from ..decode.machinery import Machinery

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_SIDECAR_BYTES = 64 * 1024 * 1024
IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG",
               "image/webp": "WEBP"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MODEL_META = "s3latent-model"
SIDECAR_ETAG = "scetag"  # in a container's mirror: the sidecar it was converted with


def crash_point(name: str) -> None:
    """Die here if S3LATENT_CRASH_AT names this step: crash-safety tests kill us mid-way."""
    if os.environ.get("S3LATENT_CRASH_AT") == name:
        log.warning("crashing at %s as asked by S3LATENT_CRASH_AT", name)
        os._exit(137)


class Refused(Exception):
    """The pair stays plain; the message is the reason recorded for it."""


def looks_like_image(key: str, content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() in IMAGE_TYPES or \
        key.lower().endswith(IMAGE_SUFFIXES)


async def read_all(backend: Backend, bucket: str, key: str, limit: int
                   ) -> tuple[ObjectInfo, bytes]:
    info, body = await backend.get_object(bucket, key)
    try:
        if info.size > limit:
            raise Refused(f"{key} is {info.size} bytes, over the {limit}-byte conversion limit")
        chunks = [chunk async for chunk in body]
    finally:
        await body.close()
    return info, b"".join(chunks)


class Converter:
    """Bounded background conversion with a queue, a state map and a sweeper."""

    def __init__(
        self,
        backend: Backend,
        config: Config,
        machinery: Machinery,
        *,
        registry: CollectorRegistry,
    ) -> None:
        self.backend = backend
        self.config = config
        self.machinery = machinery
        self._admitter: Any = None
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._queued: set[tuple[str, str]] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._sweeper: asyncio.Task[None] | None = None
        # (bucket, key) -> state for HEAD's x-s3latent-state; bounded.
        self.states: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._refused: dict[tuple[str, str], str] = {}
        self.results = Counter("s3latent_conversions", "Conversion outcomes",
                               ["result", "reason"], registry=registry)
        self.seconds = Histogram("s3latent_conversion_seconds", "Time to convert one pair",
                                 registry=registry)
        self._active = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def admitter(self) -> Any:
        """The admission code, imported on first use (it loads torch)."""
        if self._admitter is None:
            from .admission import Admitter

            self._admitter = Admitter(self.machinery)
        return self._admitter

    # -- lifecycle -------------------------------------------------------
    async def start(self) -> None:
        for _ in range(max(1, self.config.conversion_workers)):
            self._workers.append(asyncio.create_task(self._work()))
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        tasks = [*self._workers, *([self._sweeper] if self._sweeper else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers.clear()
        self._sweeper = None

    def schedule(self, bucket: str, image_key: str) -> None:
        item = (bucket, image_key)
        if item in self._queued:
            return
        self._queued.add(item)
        self._set_state(bucket, image_key, "pending")
        self.idle.clear()
        self._queue.put_nowait(item)

    async def drain(self) -> None:
        """Wait until nothing is queued or running (tests, bulk convert)."""
        await self.idle.wait()

    def _set_state(self, bucket: str, key: str, state: str | None) -> None:
        item = (bucket, key)
        if state is None:
            self.states.pop(item, None)
            return
        self.states[item] = state
        self.states.move_to_end(item)
        while len(self.states) > 100_000:
            self.states.popitem(last=False)

    async def _work(self) -> None:
        while True:
            bucket, key = await self._queue.get()
            self._queued.discard((bucket, key))
            self._active += 1
            started = time.perf_counter()
            try:
                outcome = await self.convert(bucket, key)
                self.seconds.observe(time.perf_counter() - started)
                log.info("conversion of %s/%s: %s", bucket, key, outcome)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("conversion of %s/%s failed; the sweeper will retry", bucket, key)
                self.results.labels("error", "exception").inc()
                self._set_state(bucket, key, "pending: conversion error, will retry")
            finally:
                self._active -= 1
                if self._queue.empty() and self._active == 0:
                    self.idle.set()

    # -- the conversion itself --------------------------------------------
    async def convert(self, bucket: str, key: str) -> str:
        """Convert K with its sidecar if both are there; returns what happened."""
        settings = self.config.bucket(bucket)
        if not settings.convert:
            self._set_state(bucket, key, None)
            return "conversion disabled for this bucket"
        side_key = key + settings.sidecar_suffix
        try:
            image = await self.backend.head_object(bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                self._set_state(bucket, key, None)
                return "image gone"
            raise
        try:
            side = await self.backend.head_object(bucket, side_key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                if physical.representation(image) == "plain":
                    self._set_state(bucket, key, "pending: waiting for the sidecar")
                return "no sidecar"
            raise
        rep_image, rep_side = physical.representation(image), physical.representation(side)
        if rep_image == physical.REP_LATENT:
            self._set_state(bucket, key, None)
            if rep_side == "plain":
                expected = image.meta.internal.get(SIDECAR_ETAG)
                return await self._finish_stub(bucket, key, expected, side_key, side)
            return "already latent"
        if rep_side != "plain":
            return "sidecar key holds a stub of another image"
        pair = f"{image.etag}:{side.etag}"
        refused = self._refused.get((bucket, key)) or side.meta.internal.get(physical.REFUSED)
        if refused and refused.startswith(pair + ":"):
            reason = refused[len(pair) + 1:]
            self._set_state(bucket, key, f"refused: {reason}")
            return f"refused earlier: {reason}"
        try:
            image, image_bytes = await read_all(self.backend, bucket, key, MAX_IMAGE_BYTES)
            side, side_bytes = await read_all(self.backend, bucket, side_key, MAX_SIDECAR_BYTES)
            admission = await self.admitter().admit(settings, key, image, image_bytes, side,
                                                    side_bytes)
        except Refused as exc:
            return await self._refuse(bucket, key, side_key, f"{image.etag}:{side.etag}",
                                      str(exc))
        meta = ObjectMeta(
            content_type=image.meta.content_type,
            metadata=dict(image.meta.metadata),
            headers=dict(image.meta.headers),
            tags=await self.backend.get_tags(bucket, key),
            internal=physical.mirror(physical.REP_LATENT, len(admission.rendition),
                                     admission.header.etag, image.last_modified,
                                     **{SIDECAR_ETAG: side.etag}),
        )
        crash_point("before-container")
        try:
            await physical.write_single_part(self.backend, bucket, key, admission.container,
                                             meta, if_match=image.etag)
        except S3Error as exc:
            if exc.code in ("PreconditionFailed", "NoSuchKey"):
                self._set_state(bucket, key, None)
                self.results.labels("superseded", "newer write").inc()
                return "superseded by a newer write"
            raise
        self.results.labels("admitted", admission.header.codec).inc()
        self._set_state(bucket, key, None)
        crash_point("after-container")
        outcome = await self._finish_stub(bucket, key, side.etag, side_key, side)
        crash_point("after-stub")
        return (f"admitted: {admission.header.codec}, {len(admission.container)} bytes for a "
                f"{image.size}-byte image, psnr {admission.header.psnr} dB; "
                + outcome)

    async def _finish_stub(self, bucket: str, key: str, expected: str | None, side_key: str,
                           side: ObjectInfo) -> str:
        """Replace the real sidecar by a stub, if it is the one the container holds."""
        if expected is not None and expected != side.etag:
            return "sidecar replaced since conversion; kept as it is"
        meta = ObjectMeta(
            content_type=side.meta.content_type,
            metadata=dict(side.meta.metadata),
            headers=dict(side.meta.headers),
            tags=await self.backend.get_tags(bucket, side_key),
            internal=physical.mirror(physical.REP_STUB, side.size, side.etag,
                                     side.last_modified, **{physical.L_IMAGE: key}),
        )
        try:
            await physical.write_single_part(self.backend, bucket, side_key,
                                             physical.stub_body(key), meta, if_match=side.etag)
        except S3Error as exc:
            if exc.code in ("PreconditionFailed", "NoSuchKey"):
                return "sidecar changed meanwhile; kept as it is"
            raise
        return "sidecar stubbed"

    async def _refuse(self, bucket: str, key: str, side_key: str, pair: str,
                      reason: str) -> str:
        log.warning("not converting %s/%s: %s", bucket, key, reason)
        self.results.labels("rejected", reason.split(":")[0][:60]).inc()
        self._refused[(bucket, key)] = f"{pair}:{reason}"
        self._set_state(bucket, key, f"refused: {reason}")
        return f"refused: {reason}"

    # -- sweeper -----------------------------------------------------------
    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sweep failed")
            await asyncio.sleep(self.config.sweep_interval_s)

    async def sweep(self) -> int:
        """Schedule every image whose sidecar is still a real object; returns the count."""
        found = 0
        for bucket in await self.backend.list_buckets():
            settings = self.config.bucket(bucket.name)
            if not settings.convert:
                continue
            suffix = settings.sidecar_suffix
            start: str | None = None
            previous: dict[str, str] = {}
            while True:
                page = await self.backend.list_objects(bucket.name, start_after=start,
                                                       max_keys=1000)
                etags = {e.key: e.etag for e in page.entries}
                for entry in page.entries:
                    if not entry.key.endswith(suffix) or physical.may_be_latent(entry.etag):
                        continue
                    image_key = entry.key[: -len(suffix)]
                    if image_key in etags or image_key in previous:
                        found += 1
                        self.schedule(bucket.name, image_key)
                previous = etags
                if not page.is_truncated or page.next_start_after is None:
                    break
                start = page.next_start_after
        return found
