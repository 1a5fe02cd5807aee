"""Conversion of image + sidecar pairs into latent containers, in the background.

Both parts are durable plain objects before conversion starts. The worker reads
them, renders the latent (after the codec's round trip, so a lossy codec is
judged by what will really be served), checks the admission policy against
the upload and only then writes the container over the image, guarded by the
image's ETag so that a newer PUT wins. The sidecar is replaced by a stub last.

A crash between any two steps leaves either the plain pair (the sweeper
converts it again) or the container plus a still-real sidecar (the sweeper
writes the stub); never neither.

A refused pair is recorded durably (refusals.py) for exactly its two ETags, so
neither the sweeper nor a restarted gateway judges it again, and HEAD keeps
saying why; a newer PUT of either key makes the pair a new one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..backends.base import Backend, ObjectInfo, ObjectMeta
from ..config import Config, DecodeSettings
from ..errors import S3Error
from ..latent.container import ContainerError, unpack
from . import encryption, physical
from .bucket_gate import BucketGate
from .refusals import Refusal, RefusalStore, Refused, now_iso

if TYPE_CHECKING:
    from ..decode.services import DecodeServices
    from .admission import Admission

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_SIDECAR_BYTES = 64 * 1024 * 1024
IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG",
               "image/webp": "WEBP"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SIDECAR_ETAG = "scetag"  # in a container's mirror: the sidecar it was converted with
# Also in the mirror, for a pair admitted with `sidecar = "consume"`: that mode, and the
# admitted sidecar's Last-Modified (with its ETag, what a guarded delete of it checks: a
# newer PUT of the same bytes has the same ETag but a later Last-Modified).
SIDECAR_MODE, SIDECAR_MODIFIED = "scmode", "sclmod"
CONSUME = "consume"
PAIR_FIELDS = (SIDECAR_ETAG, SIDECAR_MODE, SIDECAR_MODIFIED)
# In the mirror, for people browsing the backend: the candidates' container bytes.
CANDIDATES = "cands"
# Rewrites of a key made again because a tagging of it landed meanwhile, before giving way.
TAGS_RETRIES = 3


@asynccontextmanager
async def _keyed(locks: dict[tuple[str, str], tuple[asyncio.Lock, list[int]]],
                 ident: tuple[str, str]) -> AsyncIterator[None]:
    """Hold the lock of `ident` in `locks`; the entry goes once nobody holds or awaits it."""
    lock, users = locks.setdefault(ident, (asyncio.Lock(), [0]))
    users[0] += 1
    try:
        async with lock:
            yield
    finally:
        users[0] -= 1
        if users[0] == 0:
            locks.pop(ident, None)


def _when(moment: datetime) -> str:
    """A Last-Modified as the mirror records it (UTC, ISO 8601) and compares it."""
    return moment.astimezone(UTC).isoformat()


def crash_point(name: str) -> None:
    """Die here if S3LATENT_CRASH_AT names this step: crash-safety tests kill us mid-way."""
    if os.environ.get("S3LATENT_CRASH_AT") == name:
        log.warning("crashing at %s as asked by S3LATENT_CRASH_AT", name)
        os._exit(137)


async def pause_point(name: str, bucket: str) -> None:
    """Race tests hold a conversion here: with S3LATENT_PAUSE_DIR set and a file
    `<bucket>.<name>` there, the file is renamed `<bucket>.<name>.reached` and the conversion
    waits (at most two minutes) until the test has done its racing request and removed it.
    Nothing happens, and nothing is read, without the environment variable."""
    folder = os.environ.get("S3LATENT_PAUSE_DIR")
    if not folder:
        return
    armed = os.path.join(folder, f"{bucket}.{name}")
    reached = armed + ".reached"
    try:
        await asyncio.to_thread(os.rename, armed, reached)
    except OSError:
        return  # not armed for this bucket and step
    log.warning("paused at %s in %s as asked by S3LATENT_PAUSE_DIR", name, bucket)
    for _ in range(2400):  # two minutes at most
        if not await asyncio.to_thread(os.path.exists, reached):
            return
        await asyncio.sleep(0.05)


async def step(name: str, bucket: str) -> None:
    """A named step of a stand-in conversion: crash-safety and race tests stop here."""
    crash_point(name)
    await pause_point(name, bucket)


def settings_fingerprint(settings: Any, models: dict[str, Any],
                         max_image_pixels: int | None = None) -> str:
    """What a pair is judged under: a refusal holds only while this stays the same.

    The pixel ceiling counts only when it differs from the default, so refusals recorded
    before it existed keep their fingerprint.
    """
    judged = {"codec": settings.codec, "policy": settings.policy,
              "min_psnr": settings.min_psnr, "suffix": settings.sidecar_suffix,
              "models": models}
    if max_image_pixels is not None and max_image_pixels != DecodeSettings.max_image_pixels:
        judged["max_image_pixels"] = max_image_pixels
    # Representation settings count only when not the defaults (older fingerprints stay).
    representation = getattr(settings, "representation", "smallest")
    if representation != "smallest":
        judged["representation"] = representation
    if getattr(settings, "convert_plain", False):
        judged["convert_plain"] = True
    if getattr(settings, "sidecar", "keep") != "keep":
        judged["sidecar"] = settings.sidecar
    text = json.dumps(judged, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_POLICY = re.compile(r"^admission policy failed")
_SIZE_MISMATCH = re.compile(r"^latent \d+x\d+ decodes to")
MAX_STATE_CHARS = 400


def reason_category(reason: str) -> str:
    """A refusal's kind, for a metric label (reasons carry per-object detail)."""
    if _POLICY.match(reason):
        return "admission policy failed"
    if _SIZE_MISMATCH.match(reason):
        return "latent/image size mismatch"
    if "conversion limit" in reason:
        return "too large to convert"
    if reason.startswith("the sidecar names no model"):
        return "no model named"
    return reason.split(":")[0].split(" (")[0].strip()[:60] or "?"


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def one_line(reason: str) -> str:
    """A reason fit for an HTTP header: one line of ASCII, bounded, no Python reprs."""
    reason = _OBJECT_REPR.sub("the data", reason)
    text = " ".join(reason.split()).encode("ascii", "replace").decode()
    return text if len(text) <= MAX_STATE_CHARS else text[:MAX_STATE_CHARS - 3] + "..."


def looks_like_image(key: str, content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() in IMAGE_TYPES or \
        key.lower().endswith(IMAGE_SUFFIXES)


async def read_all(backend: Backend, bucket: str, key: str, limit: int, *,
                   version_id: str | None = None) -> tuple[ObjectInfo, bytes]:
    if version_id is None:
        info, body = await backend.get_object(bucket, key)
    else:
        info, body = await backend.get_object(bucket, key, version_id=version_id)
    try:
        if info.size > limit:
            raise Refused(f"{key} is {info.size} bytes, over the {limit}-byte conversion limit")
        chunks = [chunk async for chunk in body]
    finally:
        await body.close()
    return info, b"".join(chunks)


def _locked(*infos: ObjectInfo) -> str | None:
    """Why a version of the pair may not be rewritten now (retention or legal hold)."""
    now = datetime.now(UTC)
    for info in infos:
        lock = info.lock
        if lock is None or not lock.locked(now):
            continue
        if lock.legal_hold:
            return f"object lock: legal hold on {info.key}"
        assert lock.retain_until is not None
        return f"object lock on {info.key} until {lock.retain_until.isoformat()}"
    return None


def physical_one_part_etag(data: bytes) -> str:
    """The ETag a one-part multipart upload of `data` gets (known before it is written)."""
    return hashlib.md5(hashlib.md5(data).digest()).hexdigest() + "-1"


def standin_bare(etag: str) -> str:
    """A physical ETag as alias records hold it (no quotes, no one-part "-1")."""
    etag = etag.strip('"')
    return etag[:-2] if etag.endswith("-1") else etag


class Converter:
    """Bounded background conversion with a queue, a state map and a sweeper."""

    def __init__(
        self,
        backend: Backend,
        config: Config,
        decoding: DecodeServices,
        *,
        registry: CollectorRegistry,
    ) -> None:
        self.backend = backend
        self.config = config
        self.decoding = decoding
        self._admitter: Any = None
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._queued: set[tuple[str, str]] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._sweeper: asyncio.Task[None] | None = None
        # (bucket, key) -> state for HEAD's x-s3latent-state; bounded.
        self.states: OrderedDict[tuple[str, str], str] = OrderedDict()
        # (bucket, image key) -> the refusal HEAD's state is about; bounded.
        self._refused: LRUCache[tuple[str, str], Refusal] = LRUCache(maxsize=100_000)
        self.refusals = RefusalStore(backend)
        # Told (bucket, key) after the converter rewrote a key (container or stub), so cached
        # reads of the plain object go, as for a client's write (the store sets it).
        self.on_written: Callable[[str, str], None] | None = None
        # One conversion of a key at a time (a PUT can re-queue a key being converted).
        self._key_locks: dict[tuple[str, str], tuple[asyncio.Lock, list[int]]] = {}
        # Conversions and sweeps write into buckets: DeleteBucket waits them out (gate.closed).
        self.gate = BucketGate()
        # (bucket, image key) -> lock held while a stub is written for the container at the
        # image key, and by client writes that replace or delete that key (pair_lock).
        self._pair_locks: dict[tuple[str, str], tuple[asyncio.Lock, list[int]]] = {}
        # (bucket, key) -> lock held by a tagging of the key and by a rewrite of it that
        # carries its tags over, from their last look at the tags to the commit (tags_lock).
        self._tags_locks: dict[tuple[str, str], tuple[asyncio.Lock, list[int]]] = {}
        self.results = Counter("s3latent_conversions", "Conversion outcomes",
                               ["result", "reason"], registry=registry)
        self.attempts = Counter("s3latent_conversion_attempts",
                                "Pairs read, decoded and judged (the costly part)",
                                registry=registry)
        self.skips = Counter("s3latent_conversion_skips",
                             "Pairs not judged again: a refusal of exactly this pair is recorded",
                             ["by"], registry=registry)
        self.sweeps = Counter("s3latent_sweeps", "Completed sweeps", registry=registry)
        self.refused_pairs = Gauge("s3latent_refused_pairs",
                                   "Refusal markers the last sweep found", registry=registry)
        self.marker_ops = Counter("s3latent_refusal_markers",
                                  "Refusal markers written and deleted", ["op"],
                                  registry=registry)
        self.seconds = Histogram("s3latent_conversion_seconds", "Time to convert one pair",
                                 registry=registry)
        # Set by the store: removes a versioned bucket's keep copies no stub reads any more.
        self.keep_sweeper: Callable[[str], Awaitable[int]] | None = None
        # Set by the store: the alias index (objects/standins.py) where the backend cannot
        # rewrite a version in place; versioned buckets are then converted by stand-ins.
        self.standins: Any = None
        # Set by the store: keep copy before a container version goes (keep_if_needed).
        self.keep_if_needed: Callable[..., Awaitable[None]] | None = None
        self._active = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def admitter(self) -> Any:
        """The admission code, imported on first use (it loads torch)."""
        if self._admitter is None:
            from .admission import Admitter

            self._admitter = Admitter(self.decoding)
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

    @asynccontextmanager
    async def pair_lock(self, bucket: str, image_key: str) -> AsyncIterator[None]:
        """Orders stub writes against client writes of the image key.

        A stub is only a pointer: written after the container at `image_key` was replaced
        or deleted, the sidecar's bytes are gone for good. `_finish_stub` checks that the
        container is still there and writes the stub inside this lock; a client write or
        delete of `image_key` holds it from the HEAD that decides whether the stub must
        become a real sidecar again until its own write has landed.
        """
        async with _keyed(self._pair_locks, (bucket, image_key)):
            yield

    @asynccontextmanager
    async def tags_lock(self, bucket: str, key: str) -> AsyncIterator[None]:
        """Orders a client's tagging of `key` against the layer's rewrites of `key`.

        A rewrite (a container over the image, a stub over the sidecar, a stub made a
        real sidecar again) carries the key's tags over; a PutObjectTagging committed
        between its read of the tags and its commit would be undone, after the client had
        its 200. The rewrite checks the tags again and commits inside this lock, and
        the tagging holds it from its HEAD to its own commit, so the later tagging wins.
        """
        async with _keyed(self._tags_locks, (bucket, key)):
            yield

    async def write_keeping_tags(self, bucket: str, key: str, data: bytes, meta: ObjectMeta,
                                 *, if_match: str,
                                 replace_version: str | None = None) -> ObjectInfo:
        """physical.write_single_part over `key` with the tags that are on it at the commit.

        `meta.tags` were read before; should a tagging have landed since, the write is
        made again with the new tags. PreconditionFailed (a write that gives way, like
        one superseded by a newer PUT) if the tags keep changing.
        """
        for _ in range(TAGS_RETRIES):
            try:
                return await physical.write_single_part(
                    self.backend, bucket, key, data, meta, if_match=if_match,
                    keep_tags=lambda: self.tags_lock(bucket, key),
                    replace_version=replace_version)
            except physical.TagsChanged as exc:
                meta = dataclasses.replace(meta, tags=exc.tags)
        raise S3Error("PreconditionFailed", Condition="tags")

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
            lock, users = self._key_locks.setdefault((bucket, key), (asyncio.Lock(), [0]))
            users[0] += 1
            try:
                async with self.gate.work(bucket), lock:
                    outcome = await self.convert(bucket, key)
                took = time.perf_counter() - started
                self.seconds.observe(took)
                log.info("conversion of %s/%s (%.1f s): %s", bucket, key, took, outcome)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("conversion of %s/%s failed; the sweeper will retry", bucket, key)
                self.results.labels("error", "exception").inc()
                self._set_state(bucket, key, "pending: conversion error, will retry")
            finally:
                users[0] -= 1
                if users[0] == 0:
                    self._key_locks.pop((bucket, key), None)
                self._active -= 1
                if self._queue.empty() and self._active == 0:
                    self.idle.set()

    # -- the conversion itself --------------------------------------------
    @property
    def in_place(self) -> bool:
        """Whether the backend can rewrite a version in place, keeping its ID
        (LocalBackend.REPLACES_VERSIONS): then versioned buckets are converted."""
        return bool(getattr(self.backend, "REPLACES_VERSIONS", False))

    async def status(self, bucket: str) -> str | None:
        """The bucket's versioning status (None: never versioned, or no such bucket).
        Asked of the backend each time, so a conversion never trusts an older status;
        it cannot change during a conversion (put_bucket_versioning waits on the gate)."""
        getter = getattr(self.backend, "get_bucket_versioning", None)
        if getter is None:
            return None
        try:
            result: str | None = await getter(bucket)
            return result
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return None
            raise

    @property
    def standins_enabled(self) -> bool:
        """Whether versioned buckets are converted by stand-ins: where the backend holds
        unversioned records and cannot rewrite a version in place (the S3 backend;
        docs/versioning.md, design §3b)."""
        return self.standins is not None and bool(self.standins.supported)

    async def versioned(self, bucket: str) -> bool:
        """Whether the bucket is left plain because it is versioned: its versioning was
        ever enabled and the backend can neither rewrite a version in place nor hold
        stand-ins (docs/versioning.md)."""
        return not self.in_place and not self.standins_enabled and \
            await self.status(bucket) is not None

    async def convert(self, bucket: str, key: str) -> str:
        """Convert K with its sidecar if both are there; returns what happened."""
        settings = self.config.bucket(bucket)
        if not settings.convert:
            self._set_state(bucket, key, None)
            return "conversion disabled for this bucket"
        status = await self.status(bucket)
        standin = status is not None and not self.in_place
        if standin and not self.standins_enabled:
            self._set_state(bucket, key, "not converted: versioned bucket")
            return "versioned bucket"
        if standin and status != "Enabled":
            self._set_state(bucket, key, "not converted: versioning suspended")
            return "versioning suspended"
        side_key = key + settings.sidecar_suffix
        try:
            image = await self.backend.head_object(bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                self._set_state(bucket, key, None)
                return "image gone"
            raise
        # Backend metadata is only a claim (it can be written around the gateway).
        image = await physical.verified(self.backend, bucket, image)
        if encryption.mode_of(image.meta.internal):
            # The gateway would need the key (SSE-C) to read it: it stays as stored.
            self._set_state(bucket, key, "not converted: encrypted")
            return "encrypted"
        try:
            claimed = await self.backend.head_object(bucket, side_key)
            side = await physical.verified(self.backend, bucket, claimed)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                if physical.representation(image) == "plain":
                    if settings.convert_plain and not standin and \
                            looks_like_image(key, image.meta.content_type):
                        held = _locked(image) if status is not None else None
                        if held is not None:  # never rewritten while locked
                            self._set_state(bucket, key, f"pending: {held}")
                            return f"deferred: {held}"
                        return await self._convert_plain(bucket, key, image, settings)
                    self._set_state(bucket, key, "pending: waiting for the sidecar")
                return "no sidecar"
            raise
        if encryption.mode_of(side.meta.internal):
            self._set_state(bucket, key, "not converted: the sidecar is encrypted")
            return "encrypted sidecar"
        rep_image, rep_side = physical.representation(image), physical.representation(side)
        if status is not None:
            if rep_side == "plain" and physical.representation(claimed) != "plain":
                # A stub whose container version is not the image's current one (it was
                # overwritten, or the stub reads a keep copy): never a sidecar to convert.
                self._set_state(bucket, key, None)
                return "sidecar key holds a stub of another version"
        if rep_image == physical.REP_LATENT:
            self._set_state(bucket, key, None)
            if standin:
                if rep_side != "plain" or image.meta.internal.get(SIDECAR_ETAG) is None or \
                        image.meta.internal.get(SIDECAR_MODE) == CONSUME:
                    return "already latent"
                client = await self.standins.shown(bucket, key, image)
                if client == image.version_id or side.version_id in (None, "null"):
                    return "already latent; not a stand-in"  # e.g. converted before versioning
                if client in (await self.standins.records(bucket, key, fresh=True)).intents:
                    # Its conversion has not ended (a crash, or in flight on another node):
                    # the sweeper finishes it after the to-do's lease, then the stub follows
                    # (the stub's own to-do would replace the image's and lose it).
                    return "already latent; its conversion is unfinished"
                outcome = await self._standin_stub(
                    bucket, key, image.etag, image.meta.internal[SIDECAR_ETAG], side_key,
                    side, None, client, image.version_id)
                return outcome
            if rep_side == "plain":
                expected = image.meta.internal.get(SIDECAR_ETAG)
                if expected is None:  # a latent-only upload or a copy: holds no sidecar
                    return "already latent; the sidecar key is not its sidecar"
                if image.meta.internal.get(SIDECAR_MODE) == CONSUME:
                    # Left by a crash between the container's commit and the delete (or a
                    # newer upload of the sidecar key, which the guard keeps).
                    return await self._consume_sidecar(
                        bucket, key, image.etag, expected,
                        image.meta.internal.get(SIDECAR_MODIFIED, ""), side_key, side)
                return await self._finish_stub(bucket, key, image.etag, expected, side_key,
                                               side, None, image_vid=image.version_id,
                                               versioned=status is not None)
            return "already latent"
        if rep_side != "plain":
            return "sidecar key holds a stub of another image"
        if standin:
            why = await self._standin_scope(bucket, key, image, side)
            if why is not None:
                self._set_state(bucket, key, f"not converted: {why}")
                return f"not converted: {why}"
        held = _locked(image, side) if status is not None else None
        if held is not None:  # never rewritten while locked; swept again, not decoded
            self._set_state(bucket, key, f"pending: {held}")
            return f"deferred: {held}"
        judged_under = self.fingerprint(bucket)
        refusal = self._refused.get((bucket, key))
        stored = None
        if refusal is None or not refusal.matches(image.etag, side.etag, judged_under):
            refusal = stored = await self.refusals.read(bucket, key)
        if refusal is not None and refusal.matches(image.etag, side.etag, judged_under):
            self.note_refused(bucket, key, refusal)
            self.skips.labels("worker").inc()
            return f"refused earlier: {refusal.reason}"
        marker_left = stored is not None  # about an older pair: goes if this one converts
        self.attempts.inc()
        if status is not None and settings.sidecar == CONSUME:
            # A versioned bucket keeps every sidecar version a client wrote: consuming one
            # there would only hide it behind a delete marker, and the container must then
            # hold its latent for the stub. Such pairs convert as under `keep`.
            settings = dataclasses.replace(settings, sidecar="keep")
        pins = (image.version_id, side.version_id) if standin else (None, None)
        try:
            image, image_bytes = await read_all(self.backend, bucket, key, MAX_IMAGE_BYTES,
                                                version_id=pins[0])
            side, side_bytes = await read_all(self.backend, bucket, side_key, MAX_SIDECAR_BYTES,
                                              version_id=pins[1])
            admission = await self.admitter().admit_pair(settings, key, image, image_bytes,
                                                         side, side_bytes)
        except Refused as exc:
            return await self._refuse(bucket, key, side_key, image.etag, side.etag, str(exc),
                                      durable=exc.durable)
        pair = {SIDECAR_ETAG: side.etag}
        consume = settings.sidecar == CONSUME
        if consume:
            pair |= {SIDECAR_MODE: CONSUME, SIDECAR_MODIFIED: _when(side.last_modified)}
        view, meta = await self._container_meta(bucket, key, image, admission, **pair)
        if standin:
            return await self._convert_standin(bucket, key, side_key, image, side, admission,
                                               side_bytes, view, meta, marker_left)
        crash_point("before-container")
        written = await self._commit(bucket, key, admission.container, meta, image,
                                     admission.header.codec, versioned=status is not None)
        if written is None:
            return "superseded by a newer write"
        crash_point("after-container")
        await self._index(bucket, key, written.etag, view, replaced=image)
        if marker_left:
            await self._drop_marker(bucket, key)
        if consume:
            outcome = await self._consume_sidecar(bucket, key, written.etag, side.etag,
                                                  _when(side.last_modified), side_key, side)
        else:
            outcome = await self._finish_stub(bucket, key, written.etag, side.etag, side_key,
                                              side, (admission, side_bytes),
                                              image_vid=written.version_id,
                                              versioned=status is not None)
        crash_point("after-stub")
        chosen = ", ".join(f"{k} {v} bytes" for k, v in admission.candidates.items())
        return (f"admitted: {admission.header.codec}, {len(admission.container)} bytes for a "
                f"{image.size}-byte image, psnr {admission.header.psnr} dB"
                + (f" (candidates: {chosen})" if chosen else "") + "; " + outcome)

    # -- stand-ins (versioned buckets on the S3 backend; objects/standins.py) ------------
    async def _standin_scope(self, bucket: str, key: str, image: ObjectInfo,
                             side: ObjectInfo) -> str | None:
        """Why this pair is outside what stand-ins convert (None: inside): current,
        non-`null` versions of image and sidecar, no `null` version of either key (a
        Suspended write meanwhile could make the container `null` and replace it, design
        §5.7), and record names that fit."""
        if image.version_id in (None, "null") or side.version_id in (None, "null"):
            return "a null version (written before versioning or while suspended)"
        lock_config = await self.backend.get_object_lock_configuration(bucket)
        if lock_config and lock_config.get("rule"):
            # The container and stub, new backend versions, would get a retention of their
            # own from the default rule: a client's version unlocked by then would be locked
            # again, and a stand-in that must be undone could not be deleted (design §7.4).
            return "the bucket's object lock has a default retention"
        if not self.standins.fits(key) or not self.standins.fits(side.key):
            return "key too long for the alias records"
        for name in (key, side.key):
            page = await self.backend.list_object_versions(bucket, prefix=name, max_keys=1000)
            if page.is_truncated:
                return "too many versions"
            if any(e.key == name and e.version_id == "null" for e in page.entries):
                return "a null version of the key exists"
        return None

    async def _convert_standin(self, bucket: str, key: str, side_key: str, image: ObjectInfo,
                               side: ObjectInfo, admission: Any, side_bytes: bytes,
                               view: physical.LogicalView, meta: ObjectMeta,
                               marker_left: bool) -> str:
        """Design §5.7 steps 2-7: intents, the container `C` (guarded by `P`'s ETag) with
        `lvid=P`, its alias, a look for a tombstone (a client's permanent delete of `P`
        meanwhile, R3), the delete of `P`; then the same for the sidecar's stub."""
        standins = self.standins
        client = image.version_id
        assert client is not None
        etag = physical_one_part_etag(admission.container)
        meta.internal[physical.L_LVID] = client
        await standins.put_todo(bucket, key, client, {"side": side_key,
                                                      "svid": side.version_id})
        await standins.put_intent(bucket, key, client, etag)
        await step("after-intent", bucket)
        written = await self._commit(bucket, key, admission.container, meta, image,
                                     admission.header.codec)
        ours = written is not None
        if written is None:
            # A Complete retried after it had committed answers 412: look before giving up.
            found = await standins.find_claimed(bucket, key, client, etag)
            if found is None:
                await self._standin_done(bucket, key, client, etag)
                return "superseded by a newer write"
            written = dataclasses.replace(image, version_id=found, etag=etag)
        backend_vid = written.version_id
        if backend_vid in (None, "null"):  # R5: suspended meanwhile; `P` stays plain
            await self.backend.delete_object(bucket, key, version_id="null")
            await self._standin_done(bucket, key, client, etag)
            self._set_state(bucket, key, "not converted: versioning suspended")
            return "versioning suspended meanwhile; the container was removed"
        if ours and not await self._right_above(bucket, key, backend_vid, client) and \
                (await standins.records(bucket, key, fresh=True)).backend_of(client) is None:
            # R1 with the same bytes: the guard (P's ETag) let `C` land on a re-upload of
            # P, so `C` standing in for P would hide that newer version below it. (Not
            # when an alias names it: another node took it over and deleted P.)
            await self.backend.delete_object(bucket, key, version_id=backend_vid)
            await self._standin_done(bucket, key, client, etag)
            return "superseded by a newer write (the same bytes)"
        await step("after-container", bucket)
        alias = standins.alias(client, backend_vid, standin_bare(written.etag), view)
        await standins.put_alias(bucket, key, alias)
        records = await standins.records(bucket, key, fresh=True)
        if client not in records.intents or client in records.tombstones:
            await self._standin_undo(bucket, key, alias)  # R3: `P` was deleted meanwhile
            await self._standin_done(bucket, key, client, etag)
            return "the version was deleted meanwhile; conversion undone"
        await step("after-alias", bucket)
        try:
            await self.backend.delete_object(bucket, key, version_id=client)
        except S3Error as exc:
            if exc.code != "AccessDenied":
                raise
            # R4: a lock landed on `P` meanwhile: it stays plain (and `C` goes, unless a
            # lock landed on it too: then it keeps standing in and `P` stays hidden).
            if await self._standin_undo(bucket, key, alias):
                await self._standin_done(bucket, key, client, etag)
            self._set_state(bucket, key, "pending: object lock")
            return "locked meanwhile; kept plain"
        await step("after-delete-image", bucket)
        # No listing index entry: in a versioned bucket it would be a versioned hidden key
        # (versions and markers piling up); ListObjects HEADs a stand-in instead.
        if marker_left:
            await self._drop_marker(bucket, key)
        outcome = await self._standin_stub(bucket, key, written.etag, side.etag, side_key,
                                           side, (admission, side_bytes), client,
                                           backend_vid)
        await self._standin_done(bucket, key, client, etag)
        return (f"admitted: {admission.header.codec}, {len(admission.container)} bytes for a "
                f"{image.size}-byte image (stand-in); {outcome}")

    async def _right_above(self, bucket: str, key: str, written: str, client: str) -> bool:
        """Whether backend version `written` lies right above client version `client` (no
        version or marker between them): only then may it stand in for it, keeping the
        order a listing shows. One listing of the key's versions (a few pages at most)."""
        key_marker: str | None = None
        vid_marker: str | None = None
        seen = False
        for _ in range(10):
            page = await self.backend.list_object_versions(
                bucket, prefix=key, key_marker=key_marker, version_id_marker=vid_marker,
                max_keys=1000)
            for entry in page.entries:
                if entry.key != key:
                    continue
                if seen:
                    return entry.version_id == client and not entry.delete_marker
                seen = entry.version_id == written
            if not page.is_truncated or page.next_key_marker is None or \
                    any(e.key > key for e in page.entries):
                return False
            key_marker, vid_marker = page.next_key_marker, page.next_version_id_marker
        return False

    async def _standin_undo(self, bucket: str, key: str, alias: Any) -> bool:
        """Remove stand-in `alias.backend` and its alias; False if the backend refused
        (locked): it then keeps standing in."""
        try:
            await self.backend.delete_object(bucket, key, version_id=alias.backend)
        except S3Error as exc:
            if exc.code != "AccessDenied":
                raise
            return False
        await self.standins.drop_alias(bucket, key, alias)
        self._written(bucket, key)
        return True

    async def _standin_done(self, bucket: str, key: str, client: str, etag: str) -> None:
        """The conversion of `key`'s version `client` ended: its intent, tombstone and
        to-do record go (in that order: the to-do is how the sweeper finds the others)."""
        standins = self.standins
        await standins.drop_intent(bucket, key, client, etag)
        records = await standins.records(bucket, key, fresh=True)
        if client in records.tombstones:
            await standins.drop_tombstone(bucket, key, client)
        await standins.drop_todo(bucket, key, client)

    async def _standin_stub(self, bucket: str, key: str, container_etag: str, expected: str,
                            side_key: str, side: ObjectInfo,
                            converted: tuple[Any, bytes] | None, image_client: str,
                            image_backend: str | None) -> str:
        """The sidecar's stub `T` standing in for its version `S` (design §5.7 step 6): it
        names the image's client version (`ivid`) and the container's backend version
        (`ibvid`); written under the pair lock while that container exists and its client
        version is not being deleted, then aliased, then `S` deleted."""
        standins = self.standins
        client = side.version_id
        if expected != side.etag or client in (None, "null") or image_backend is None:
            return "sidecar replaced since conversion; kept as it is"
        etag, why_not = await self._served_sidecar_etag(bucket, key, side_key, side,
                                                        converted, image_backend, client)
        if etag is None:
            return why_not
        body = physical.stub_body(key, container_etag)
        names = {physical.L_IMAGE: key, physical.S_SOURCE: side.etag,
                 physical.L_IVID: image_client, physical.L_IBVID: image_backend,
                 physical.L_LVID: client}
        meta = ObjectMeta(
            content_type=side.meta.content_type, metadata=dict(side.meta.metadata),
            headers=dict(side.meta.headers),
            tags=await self.backend.get_tags(bucket, side_key, version_id=client),
            internal=physical.mirror(physical.REP_STUB, side.size, etag, side.last_modified,
                                     **names, **physical.access_of(side.meta.internal)))
        stub_etag = physical_one_part_etag(body)
        await standins.put_todo(bucket, key, image_client,
                                {"side": side_key, "svid": client})
        await standins.put_intent(bucket, side_key, client, stub_etag)
        try:
            async with self.pair_lock(bucket, key):
                try:
                    current = await self.backend.head_object(bucket, key,
                                                             version_id=image_backend)
                except S3Error as exc:
                    if exc.code not in ("NoSuchKey", "NoSuchVersion", "MethodNotAllowed"):
                        raise
                    current = None
                image_records = await standins.records(bucket, key, fresh=True)
                if current is None or current.etag != container_etag or \
                        image_client in image_records.tombstones:
                    return "image replaced or deleted meanwhile; sidecar kept as it is"
                try:
                    written = await self.write_keeping_tags(bucket, side_key, body, meta,
                                                            if_match=side.etag)
                except S3Error as exc:
                    if exc.code in ("PreconditionFailed", "NoSuchKey", "NoSuchVersion"):
                        return "sidecar changed meanwhile; kept as it is"
                    raise
            await step("after-stub", bucket)
            stub_vid = written.version_id
            if stub_vid in (None, "null"):  # R5
                await self.backend.delete_object(bucket, side_key, version_id="null")
                return "versioning suspended meanwhile; sidecar kept as it is"
            if not await self._right_above(bucket, side_key, stub_vid, client) and \
                    (await standins.records(bucket, side_key, fresh=True)
                     ).backend_of(client) is None:
                await self.backend.delete_object(bucket, side_key, version_id=stub_vid)
                return "sidecar rewritten meanwhile (the same bytes); kept as it is"
            alias = standins.alias(client, stub_vid, standin_bare(written.etag),
                          physical.LogicalView(side.size, etag, side.last_modified))
            await standins.put_alias(bucket, side_key, alias)
            side_records = await standins.records(bucket, side_key, fresh=True)
            image_records = await standins.records(bucket, key, fresh=True)
            if client not in side_records.intents or client in side_records.tombstones or \
                    image_client in image_records.tombstones:
                await self._standin_undo(bucket, side_key, alias)
                return "a version was deleted meanwhile; sidecar kept as it is"
            try:
                await self.backend.delete_object(bucket, side_key, version_id=client)
            except S3Error as exc:
                if exc.code != "AccessDenied":
                    raise
                await self._standin_undo(bucket, side_key, alias)
                return "sidecar locked meanwhile; kept as it is"
            self._written(bucket, side_key)
            return "sidecar stubbed"
        finally:
            await self._standin_done(bucket, side_key, client, stub_etag)
            await standins.drop_todo(bucket, key, image_client)

    async def recover_standins(self, bucket: str) -> int:
        """Finish or undo the stand-in conversions a crash left (design §5.13 step 2, rows
        C2-C7 of §8); returns how many were looked at. Keys converting in this process
        are skipped (their worker holds them)."""
        standins = self.standins
        done = 0
        for image_key, client, body in await standins.todos(bucket):
            if (bucket, image_key) in self._key_locks:
                continue
            started = body.get("at")
            if isinstance(started, (int, float)) and time.time() - started < standins.LEASE_S:
                continue  # in flight, maybe on another node (design §12 q6)
            lock, users = self._key_locks.setdefault((bucket, image_key),
                                                     (asyncio.Lock(), [0]))
            users[0] += 1
            try:
                async with lock:
                    await self._recover_version(bucket, image_key, client)
                    side_key, side_client = body.get("side"), body.get("svid")
                    if isinstance(side_key, str) and isinstance(side_client, str):
                        await self._recover_version(bucket, side_key, side_client)
                    await standins.drop_todo(bucket, image_key, client)
            finally:
                users[0] -= 1
                if users[0] == 0:
                    self._key_locks.pop((bucket, image_key), None)
            self._written(bucket, image_key)
            self.schedule(bucket, image_key)  # a stub still to write, or a plain pair
            done += 1
        return done

    async def _recover_version(self, bucket: str, key: str, client: str) -> None:
        """One version's leftovers: with a stand-in, its alias is written and the plain
        version deleted; a deleted (tombstoned) version's stand-in goes; then its intent."""
        standins = self.standins
        records = await standins.records(bucket, key, fresh=True)
        etag = records.intents.get(client)
        alias = records.backend_of(client)
        backend_vid = alias.backend if alias is not None else None
        if backend_vid is None and etag is not None:
            backend_vid = await standins.find_claimed(bucket, key, client, etag)
        if client in records.tombstones:
            if backend_vid is not None:
                if self.keep_if_needed is not None:
                    async with self.pair_lock(bucket, key):
                        await self.keep_if_needed(bucket, key, client, backend_vid)
                        await self.backend.delete_object(bucket, key, version_id=backend_vid)
                if alias is not None:
                    await standins.drop_alias(bucket, key, alias)
            await standins.drop_tombstone(bucket, key, client)
        elif backend_vid is not None:
            if alias is None:
                info = await self.backend.head_object(bucket, key, version_id=backend_vid)
                view = physical.logical_view(info)
                if view is not None:
                    await standins.put_alias(bucket, key, standins.alias(
                        client, backend_vid, standin_bare(info.etag), view))
            try:
                await self.backend.delete_object(bucket, key, version_id=client)
            except S3Error as exc:
                if exc.code != "AccessDenied":
                    raise
                log.warning("%s/%s version %s is locked: kept hidden behind its stand-in",
                            bucket, key, client)
        for name_etag in [etag] if etag is not None else []:
            await standins.drop_intent(bucket, key, client, name_etag)

    async def _container_meta(self, bucket: str, key: str, image: ObjectInfo,
                              admission: Admission, **extra: str
                              ) -> tuple[physical.LogicalView, ObjectMeta]:
        """The logical view and backend metadata of the container that replaces `image`:
        the image's content type, user metadata, headers, tags, owner and ACL, so a client
        sees the same object."""
        header = admission.header
        view = physical.LogicalView(len(admission.rendition), header.etag, image.last_modified)
        if admission.candidates:
            extra[CANDIDATES] = " ".join(f"{k}={v}" for k, v in admission.candidates.items())
        meta = ObjectMeta(
            content_type=image.meta.content_type,
            metadata=dict(image.meta.metadata),
            headers=dict(image.meta.headers),
            tags=await self.backend.get_tags(bucket, key),
            internal=physical.mirror(physical.REP_LATENT, view.size, view.etag,
                                     view.last_modified, **extra,
                                     **physical.storage_mirror(header.codec, header.model,
                                                               header.psnr),
                                     **physical.access_of(image.meta.internal)),
        )
        return view, meta

    async def _commit(self, bucket: str, key: str, container: bytes, meta: ObjectMeta,
                      image: ObjectInfo, label: str, *, versioned: bool = False
                      ) -> ObjectInfo | None:
        """Write the container over the image it was made from, keeping tags written
        meanwhile; None when a newer write got there first (nothing is replaced then).

        Versioned (a backend that rewrites versions in place): the container takes the
        place of the image's version, keeping its ID; a lock set on it meanwhile (the
        backend refuses with AccessDenied) leaves it plain until the lock lifts."""
        try:
            written = await self.write_keeping_tags(
                bucket, key, container, meta, if_match=image.etag,
                replace_version=(image.version_id or "null") if versioned else None)
        except S3Error as exc:
            if exc.code in ("PreconditionFailed", "NoSuchKey", "NoSuchVersion"):
                self._set_state(bucket, key, None)
                self.results.labels("superseded", "newer write").inc()
                return None
            if versioned and exc.code == "AccessDenied":
                self._set_state(bucket, key, "pending: object lock")
                self.results.labels("deferred", "object lock").inc()
                return None
            raise
        self._written(bucket, key)
        self.results.labels("admitted", label).inc()
        self._set_state(bucket, key, None)
        self._refused.pop((bucket, key), None)
        return written

    async def _convert_plain(self, bucket: str, key: str, image: ObjectInfo,
                             settings: Any) -> str:
        """An image with no sidecar, in a bucket with `convert_plain`: stored as AVIF if that
        meets the policy and is smaller; else it stays as it is with the reason recorded
        (a refusal with an empty sidecar ETag), exactly as refused pairs do.

        An image younger than `convert_plain_after` waits (its sidecar may be on its way):
        it is looked at again once that much time has passed, or by the next sweep.
        """
        age = (datetime.now(UTC) - image.last_modified).total_seconds()
        wait = settings.convert_plain_after - age
        if wait > 0:
            self._set_state(bucket, key, "pending: waiting for the sidecar")
            asyncio.get_running_loop().call_later(wait + 0.05, self.schedule, bucket, key)
            return f"no sidecar yet; plain conversion in {wait:.1f}s"
        side_key = key + settings.sidecar_suffix
        judged_under = self.fingerprint(bucket)
        refusal = self._refused.get((bucket, key))
        stored = None
        if refusal is None or not refusal.matches(image.etag, "", judged_under):
            refusal = stored = await self.refusals.read(bucket, key)
        if refusal is not None and refusal.matches(image.etag, "", judged_under):
            self.note_refused(bucket, key, refusal)
            self.skips.labels("worker").inc()
            return f"refused earlier: {refusal.reason}"
        self.attempts.inc()
        try:
            image, image_bytes = await read_all(self.backend, bucket, key, MAX_IMAGE_BYTES)
            admission = await self.admitter().admit_plain(settings, image, image_bytes)
        except Refused as exc:
            return await self._refuse(bucket, key, side_key, image.etag, "", str(exc),
                                      durable=exc.durable)
        header = admission.header
        view, meta = await self._container_meta(bucket, key, image, admission)
        # As for pairs: the object keeps its owner and ACL (in `meta`), and a tagging that
        # lands meanwhile wins over the tags read above.
        written = await self._commit(bucket, key, admission.container, meta, image,
                                     "avif-plain",
                                     versioned=await self.status(bucket) is not None)
        if written is None:
            return "superseded by a newer write"
        await self._index(bucket, key, written.etag, view, replaced=image)
        if stored is not None:
            await self._drop_marker(bucket, key)
        return (f"admitted as AVIF: {len(admission.container)} bytes for a {image.size}-byte "
                f"image, psnr {header.psnr} dB")

    async def _served_sidecar_etag(self, bucket: str, key: str, side_key: str,
                                   side: ObjectInfo, converted: tuple[Any, bytes] | None,
                                   container_vid: str | None, side_vid: str | None
                                   ) -> tuple[str | None, str]:
        """(the ETag the sidecar key will serve once it is a stub, "") or (None, why no
        stub is written). The ETag is that of the bytes the container rebuilds
        (physical.served_etag), so HEAD, GET and listings agree after a lossy codec too.
        `converted` is (admission, sidecar bytes) when just converted; else both are read
        back (by these versions, when given)."""
        try:
            if converted is None:
                container = (await read_all(self.backend, bucket, key, 2 * MAX_IMAGE_BYTES,
                                            version_id=container_vid))[1]
                _, side_bytes = await read_all(self.backend, bucket, side_key,
                                               MAX_SIDECAR_BYTES, version_id=side_vid)
            else:
                container, side_bytes = converted[0].container, converted[1]
            header, payload = await asyncio.to_thread(unpack, container)
            served = await asyncio.to_thread(physical.sidecar_file, header, payload)
        except (Refused, ContainerError) as exc:
            log.error("sidecar %s/%s not stubbed: %s", bucket, side_key, exc)
            return None, "sidecar kept: its container could not be read back"
        if len(served) != side.size or header.sidecar is None or \
                header.sidecar.etag != side.etag:
            log.error("sidecar %s/%s not stubbed: the container does not rebuild it",
                      bucket, side_key)
            return None, "sidecar kept: the container does not rebuild it"
        return physical.served_etag(side.etag, side_bytes, served), ""

    async def _finish_stub(self, bucket: str, key: str, container_etag: str, expected: str,
                           side_key: str, side: ObjectInfo,
                           converted: tuple[Any, bytes] | None, *,
                           image_vid: str | None = None, versioned: bool = False) -> str:
        """Replace the real sidecar by a stub, if it is the one the container holds.

        The stub mirrors the sidecar key as it will be served: same size, and the ETag
        of the bytes rebuilt from the container (physical.served_etag), so HEAD, GET
        and listings agree after a lossy codec too. `converted` is (admission, sidecar
        bytes) when just converted; else both are read back.

        Versioned: the stub takes the place of the sidecar's version (keeping its ID) and
        names the container's version (`ivid`); that version must still exist when the
        stub is written, under the pair lock a permanent delete of it holds too (it makes
        a keep copy for every stub naming it first, VersionedObjects.keep_if_needed).
        """
        if expected != side.etag:
            return "sidecar replaced since conversion; kept as it is"
        etag, why_not = await self._served_sidecar_etag(
            bucket, key, side_key, side, converted, image_vid if versioned else None,
            side.version_id if versioned else None)
        if etag is None:
            return why_not
        names = {physical.L_IMAGE: key, physical.S_SOURCE: side.etag}
        if versioned:
            names[physical.L_IVID] = image_vid or "null"
        meta = ObjectMeta(
            content_type=side.meta.content_type,
            metadata=dict(side.meta.metadata),
            headers=dict(side.meta.headers),
            tags=await self.backend.get_tags(bucket, side_key),
            internal=physical.mirror(physical.REP_STUB, side.size, etag,
                                     side.last_modified, **names,
                                     **physical.access_of(side.meta.internal)),
        )
        async with self.pair_lock(bucket, key):
            try:  # the container is still at `key` (and stays while the lock is held)
                if versioned:  # its version, current or not
                    current = await self.backend.head_object(bucket, key,
                                                             version_id=image_vid or "null")
                else:
                    current = await self.backend.head_object(bucket, key)
            except S3Error as exc:
                if exc.code not in ("NoSuchKey", "NoSuchBucket", "NoSuchVersion",
                                    "MethodNotAllowed"):
                    raise
                current = None
            if current is None or current.etag != container_etag:
                return "image replaced or deleted meanwhile; sidecar kept as it is"
            try:
                written = await self.write_keeping_tags(
                    bucket, side_key, physical.stub_body(key, container_etag), meta,
                    if_match=side.etag,
                    replace_version=(side.version_id or "null") if versioned else None)
            except S3Error as exc:
                if exc.code in ("PreconditionFailed", "NoSuchKey", "NoSuchVersion"):
                    return "sidecar changed meanwhile; kept as it is"
                if versioned and exc.code == "AccessDenied":
                    return "sidecar locked meanwhile; kept as it is until the lock lifts"
                raise
        self._written(bucket, side_key)
        await self._index(bucket, side_key, written.etag,
                          physical.LogicalView(side.size, etag, side.last_modified),
                          replaced=side)
        return "sidecar stubbed"

    async def _consume_sidecar(self, bucket: str, key: str, container_etag: str,
                               expected: str, expected_modified: str, side_key: str,
                               side: ObjectInfo) -> str:
        """Delete the sidecar key a consuming admission was made from, and only that upload.

        Guarded: the container that consumed it must still be at `key` (a newer PUT of the
        image leaves the sidecar as a plain object, as a refused pair would), and the
        sidecar key must still hold the admitted upload (same ETag *and* Last-Modified: a
        newer PUT of the key, even of the same bytes, is kept). Client writes and deletes
        of either key hold that key's pair_lock until they have landed, so nothing is
        written between the check and the delete.
        """
        if expected != side.etag or expected_modified != _when(side.last_modified):
            return "sidecar key written since conversion; kept as it is"
        async with self.pair_lock(bucket, key), self.pair_lock(bucket, side_key):
            try:
                current = await self.backend.head_object(bucket, key)
            except S3Error as exc:
                if exc.code not in ("NoSuchKey", "NoSuchBucket"):
                    raise
                current = None
            if current is None or current.etag != container_etag:
                return "image replaced or deleted meanwhile; sidecar kept as it is"
            try:
                now = await self.backend.head_object(bucket, side_key)
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchBucket"):
                    return "sidecar already gone"
                raise
            if now.etag != expected or _when(now.last_modified) != expected_modified:
                return "sidecar key written since conversion; kept as it is"
            crash_point("before-consume")
            try:  # the storage checks the ETag too: a write through another node is kept
                await self.backend.delete_object(bucket, side_key, if_match=expected)
            except S3Error as exc:
                if exc.code != "PreconditionFailed":
                    raise
                return "sidecar key written since conversion; kept as it is"
        self._written(bucket, side_key)
        try:
            await physical.drop_view_index(self.backend, bucket, side)
        except S3Error as exc:
            log.info("stale listing index entry of %s/%s left: %s", bucket, side_key, exc)
        return "sidecar consumed"

    def _written(self, bucket: str, key: str) -> None:
        if self.on_written is not None:
            self.on_written(bucket, key)

    async def _index(self, bucket: str, key: str, physical_etag: str,
                     view: physical.LogicalView, *, replaced: ObjectInfo) -> None:
        """Record a new container/stub in the listing index (best effort: listings fall
        back to HEAD and repair the index themselves)."""
        try:
            await physical.write_view_index(self.backend, bucket, key, physical_etag, view)
            await physical.drop_view_index(self.backend, bucket, replaced)
        except S3Error as exc:
            log.warning("listing index of %s/%s not written: %s", bucket, key, exc)

    async def _refuse(self, bucket: str, key: str, side_key: str, image_etag: str,
                      side_etag: str, reason: str, *, durable: bool = True) -> str:
        """Keep the pair plain and record why, durably, for exactly these two ETags."""
        reason = one_line(reason)
        log.warning("not converting %s/%s: %s", bucket, key, reason)
        self.results.labels("rejected", reason_category(reason)).inc()
        refusal = Refusal(image_etag, side_etag, reason, self.fingerprint(bucket), now_iso())
        if durable and await self.refusals.write(bucket, key, side_key, refusal):
            self.marker_ops.labels("write").inc()
        self.note_refused(bucket, key, refusal)
        return f"refused: {reason}"

    def note_refused(self, bucket: str, key: str, refusal: Refusal) -> None:
        """Make HEAD say why this pair stays plain (unless a newer conversion is queued)."""
        self._refused[(bucket, key)] = refusal
        if (bucket, key) not in self._queued:
            self._set_state(bucket, key, f"refused: {refusal.reason}")

    def fingerprint(self, bucket: str) -> str:
        """The settings fingerprint refusals in `bucket` are judged under now."""
        return settings_fingerprint(self.config.bucket(bucket), self.config.models,
                                    self.config.decode.max_image_pixels)

    def refusal_for(self, bucket: str, key: str, image_etag: str) -> Refusal | None:
        """The refusal known in memory for this image version, if any."""
        refusal = self._refused.get((bucket, key))
        return refusal if refusal is not None and refusal.image_etag == image_etag else None

    def forget_refusal(self, bucket: str, key: str) -> None:
        """A write touched the pair: HEAD must not show an old refusal any more."""
        self._refused.pop((bucket, key), None)
        state = self.states.get((bucket, key))
        if state is not None and state.startswith("refused"):
            self._set_state(bucket, key, None)

    async def _drop_marker(self, bucket: str, key: str) -> None:
        try:
            await self.refusals.delete(bucket, key)
        except S3Error as exc:
            log.warning("refusal marker of %s/%s not deleted: %s", bucket, key, exc)
            return
        self.marker_ops.labels("delete").inc()

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
        """Schedule every image whose sidecar is still a real object; returns the count.

        Pairs with a refusal recorded for exactly their ETags are skipped (no
        backend call beyond the listing once their marker was read), and markers
        whose pair is gone or converted are deleted.
        """
        found = refused = 0
        for bucket in await self.backend.list_buckets():
            settings = self.config.bucket(bucket.name)
            if not settings.convert or await self.versioned(bucket.name):
                continue
            try:
                async with self.gate.work(bucket.name):
                    if self.standins_enabled and not self.in_place and \
                            await self.status(bucket.name) is not None:
                        await self.recover_standins(bucket.name)
                    f, r = await self._sweep_bucket(bucket.name, settings.sidecar_suffix,
                                                    plain=settings.convert_plain)
                    if self.keep_sweeper is not None and \
                            await self.status(bucket.name) is not None:
                        await self.keep_sweeper(bucket.name)
            except S3Error as exc:
                if exc.code != "NoSuchBucket":
                    raise
                self.refusals.forget_bucket(bucket.name)  # deleted while we swept
                continue
            found += f
            refused += r
        self.refused_pairs.set(refused)
        self.sweeps.inc()
        return found

    async def _sweep_bucket(self, bucket: str, suffix: str, *, plain: bool = False
                            ) -> tuple[int, int]:
        """Schedule the bucket's unconverted pairs (and, with `plain`, its plain images)."""
        markers = await self.refusals.scan(bucket)
        judged_under = self.fingerprint(bucket)
        found = 0
        paired: set[str] = set()  # image keys with a marker whose pair is still plain
        start: str | None = None
        previous: dict[str, str] = {}
        while True:
            page = await self.backend.list_objects(bucket, start_after=start, max_keys=1000)
            etags = {e.key: e.etag for e in page.entries if not physical.is_hidden(e.key)}
            for entry in page.entries:
                if plain and not entry.key.endswith(suffix) and \
                        not physical.may_be_latent(entry.etag) and \
                        not physical.is_hidden(entry.key) and looks_like_image(entry.key, None):
                    # convert_plain: a plain image may be stored alone (convert() checks
                    # whether a sidecar is there); one refused alone is not judged again.
                    marker = markers.get(entry.key)
                    if marker is not None:
                        refusal = marker[1] or await self.refusals.cached_or_read(
                            bucket, entry.key, marker[0])
                        if refusal is not None and refusal.matches(entry.etag, "",
                                                                   judged_under):
                            paired.add(entry.key)
                            self.skips.labels("sweeper").inc()
                            if (bucket, entry.key) not in self.states:
                                self.note_refused(bucket, entry.key, refusal)
                            continue
                    found += 1
                    self.schedule(bucket, entry.key)
                    continue
                if not entry.key.endswith(suffix) or physical.may_be_latent(entry.etag) or \
                        physical.is_hidden(entry.key):
                    continue
                image_key = entry.key[: -len(suffix)]
                image_etag = etags.get(image_key) or previous.get(image_key)
                if image_etag is None:
                    continue
                marker = markers.get(image_key)
                if marker is not None:
                    paired.add(image_key)
                    refusal = marker[1] or await self.refusals.cached_or_read(
                        bucket, image_key, marker[0])
                    if refusal is not None and refusal.matches(image_etag, entry.etag,
                                                               judged_under):
                        self.skips.labels("sweeper").inc()
                        if (bucket, image_key) not in self.states:
                            self.note_refused(bucket, image_key, refusal)
                        continue
                found += 1
                self.schedule(bucket, image_key)
            previous = etags
            if not page.is_truncated or page.next_start_after is None:
                break
            start = page.next_start_after
            if physical.is_hidden(start):
                start = max(start, physical.HIDDEN_END)
        for image_key in markers.keys() - paired:
            if (bucket, image_key) in self._queued:
                continue
            await self._drop_marker(bucket, image_key)  # its pair is gone or converted
        return found, len(paired)
