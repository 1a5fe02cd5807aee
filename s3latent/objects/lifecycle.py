"""Bucket lifecycle: what a stored configuration means, and the worker that applies it.

The front end validates a PutBucketLifecycleConfiguration body and stores its rules, in S3's
own XML shape, as the bucket's "lifecycle" record (generation-scoped like every bucket
record: a re-created bucket starts without one). This module reads that record:

- `Lifecycle.expiration(...)`: the `x-amz-expiration` header S3 sends on PUT, HEAD and GET
  of a current object that an enabled Expiration rule matches (by prefix, tags, size);
- `LifecycleWorker`: run periodically by the gateway beside the conversion sweeper, it
  expires what the rules say through the object layer (so a latent image's container goes
  with it and a pair's sidecar key follows its own key's rules), aborts old multipart
  uploads, and never deletes a locked version.

Several gateways may run the worker over one backend. Each delete is conditional on what
was judged: an unversioned key is deleted only if its ETag and Last-Modified are still the
listed ones (checked under the key's pair lock, right before the delete), a versioned key
gets its delete marker only while the judged version is still current, and a noncurrent
version is deleted by its version ID (which never names a newer write).

A "day" is `lifecycle_day_s` seconds (86400; tests shorten it, as RGW's
`rgw_lc_debug_interval` does). With real days, expiry dates are rounded up to the next
midnight UTC, as S3 computes them; shortened days are not rounded.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

from ..backends.base import ObjectInfo, VersionEntry
from ..errors import S3Error

log = logging.getLogger("s3latent.lifecycle")

RECORD = "lifecycle"
DAY_S = 86400.0


def new_rule_id() -> str:
    """S3 names a rule sent without an ID (a random string clients can use to tell them)."""
    return secrets.token_urlsafe(36)[:48]


@dataclass(frozen=True)
class Rule:
    """One stored rule, as the worker and the expiration header read it."""

    rule_id: str
    enabled: bool
    prefix: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    size_gt: int | None = None
    size_lt: int | None = None
    expire_days: int | None = None
    expire_date: datetime | None = None
    expired_marker: bool = False
    noncurrent_days: int | None = None
    newer_noncurrent: int | None = None
    abort_days: int | None = None

    @classmethod
    def from_xml(cls, rule: dict[str, Any]) -> Rule:
        """From the stored S3 XML shape (already validated by the front end)."""
        flt = rule.get("Filter")
        prefix, tags, gt, lt = str(rule.get("Prefix") or ""), {}, None, None
        if isinstance(flt, dict):
            parts = flt.get("And") if isinstance(flt.get("And"), dict) else flt
            prefix = str(parts.get("Prefix") or "")
            tag_list = parts.get("Tags", parts.get("Tag"))
            for tag in tag_list if isinstance(tag_list, list) else [tag_list] if tag_list else []:
                tags[str(tag["Key"])] = str(tag["Value"])
            if parts.get("ObjectSizeGreaterThan") is not None:
                gt = int(parts["ObjectSizeGreaterThan"])
            if parts.get("ObjectSizeLessThan") is not None:
                lt = int(parts["ObjectSizeLessThan"])
        exp = rule.get("Expiration") or {}
        nc = rule.get("NoncurrentVersionExpiration") or {}
        abort = rule.get("AbortIncompleteMultipartUpload") or {}
        date = exp.get("Date")
        return cls(
            rule_id=str(rule["ID"]), enabled=rule.get("Status") == "Enabled", prefix=prefix,
            tags=tags, size_gt=gt, size_lt=lt,
            expire_days=int(exp["Days"]) if "Days" in exp else None,
            expire_date=datetime.fromisoformat(date.replace("Z", "+00:00")) if date else None,
            expired_marker=str(exp.get("ExpiredObjectDeleteMarker", "")).lower() == "true",
            noncurrent_days=int(nc["NoncurrentDays"]) if "NoncurrentDays" in nc else None,
            newer_noncurrent=int(nc["NewerNoncurrentVersions"])
            if "NewerNoncurrentVersions" in nc else None,
            abort_days=int(abort["DaysAfterInitiation"])
            if "DaysAfterInitiation" in abort else None,
        )

    def matches(self, key: str, size: int | None, tags: dict[str, str] | None) -> bool:
        """Prefix, size bounds and tags (every rule tag present with its value)."""
        if not key.startswith(self.prefix):
            return False
        if size is not None:
            if self.size_gt is not None and not size > self.size_gt:
                return False
            if self.size_lt is not None and not size < self.size_lt:
                return False
        if self.tags:
            return tags is not None and all(tags.get(k) == v for k, v in self.tags.items())
        return True


@dataclass(frozen=True)
class Lifecycle:
    """A bucket's rules and the length of a day."""

    rules: tuple[Rule, ...]
    day_s: float = DAY_S

    @classmethod
    def from_record(cls, record: Any, day_s: float = DAY_S) -> Lifecycle | None:
        if not isinstance(record, dict) or not record.get("Rule"):
            return None
        return cls(tuple(Rule.from_xml(r) for r in record["Rule"]), day_s)

    @property
    def enabled(self) -> list[Rule]:
        return [r for r in self.rules if r.enabled]

    def needs_tags(self) -> bool:
        return any(r.tags for r in self.enabled)

    def after_days(self, start: datetime, days: int) -> datetime:
        """`days` after `start`: S3 rounds up to the next midnight UTC (not for short days)."""
        if self.day_s != DAY_S:
            return start + timedelta(seconds=days * self.day_s)
        end = start.astimezone(UTC) + timedelta(days=days)
        return datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1)

    def current_expiry(self, key: str, size: int, last_modified: datetime,
                       tags: dict[str, str] | None) -> tuple[datetime, str] | None:
        """(when, rule ID) of the earliest Expiration (Days or Date) matching an object."""
        best: tuple[datetime, str] | None = None
        for rule in self.enabled:
            if not rule.matches(key, size, tags):
                continue
            if rule.expire_days is not None:
                when = self.after_days(last_modified, rule.expire_days)
            elif rule.expire_date is not None:
                when = rule.expire_date
            else:
                continue
            if best is None or when < best[0]:
                best = (when, rule.rule_id)
        return best

    def expiration_header(self, info: ObjectInfo, tags: dict[str, str] | None
                          ) -> dict[str, str]:
        """`x-amz-expiration` for a current object, or nothing."""
        found = self.current_expiry(info.key, info.size, info.last_modified, tags)
        if found is None:
            return {}
        when, rule_id = found
        return {"x-amz-expiration": f'expiry-date="{format_datetime(when, usegmt=True)}", '
                                    f'rule-id="{rule_id}"'}


class LifecycleWorker:
    """Applies every bucket's lifecycle, one bucket after another, every `interval_s`.

    `store` is the LatentStore (the object layer as clients see it); `now` is injectable
    for tests.
    """

    def __init__(self, store: Any, *, interval_s: float, day_s: float,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store = store
        self.interval_s = interval_s
        self.day_s = day_s
        self.now = now
        self._task: asyncio.Task[None] | None = None
        # The record each bucket's pass applies (see _still_applies).
        self._applying: dict[str, Any] = {}
        self.expired = 0  # objects, versions and markers removed or marked (tests, metrics)
        self.aborted = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lifecycle pass failed")

    async def run_once(self) -> None:
        """One pass over every bucket with a lifecycle configuration."""
        for bucket in await self.store.list_buckets():
            try:
                record = await self.store.get_bucket_config(bucket.name, RECORD)
                config = Lifecycle.from_record(record, self.day_s)
                if config is None or not config.enabled:
                    continue
                self._applying[bucket.name] = record
                try:
                    await self.apply(bucket.name, config)
                finally:
                    self._applying.pop(bucket.name, None)
            except S3Error as exc:  # a bucket deleted meanwhile, a backend hiccup
                if exc.code != "NoSuchBucket":
                    log.warning("lifecycle of %s: %s", bucket.name, exc)
            except Exception:  # one bucket's failure does not hold back the others
                log.exception("lifecycle of %s failed", bucket.name)

    async def apply(self, bucket: str, config: Lifecycle) -> None:
        status = await self.store.get_bucket_versioning(bucket)
        if any(r.expire_days is not None or r.expire_date is not None for r in config.enabled):
            if status is None:
                await self._expire_plain(bucket, config)
        if status is not None:
            await self._expire_versions(bucket, config)
        if any(r.abort_days is not None for r in config.enabled):
            await self._abort_uploads(bucket, config)

    async def _still_applies(self, bucket: str) -> bool:
        """Whether the bucket still has the configuration this pass applies, checked for
        every page before it is judged: a bucket deleted and created again meanwhile (no
        configuration, or another) must not lose its new objects to the old rules (a past
        Date expires everything)."""
        if bucket not in self._applying:
            return True  # apply() called directly
        try:
            record = await self.store.get_bucket_config(bucket, RECORD)
        except S3Error:
            return False
        if record != self._applying[bucket]:
            log.info("lifecycle of %s changed during its pass: stopped", bucket)
            return False
        return True

    async def _tags(self, bucket: str, key: str, config: Lifecycle,
                    version_id: str | None = None) -> dict[str, str] | None:
        if not config.needs_tags():
            return None
        try:
            pin = {"version_id": version_id} if version_id else {}
            return dict(await self.store.get_tags(bucket, key, **pin))
        except S3Error:
            return None

    async def _expire_plain(self, bucket: str, config: Lifecycle) -> None:
        """A bucket never versioned: expired current objects are deleted."""
        start: str | None = None
        now = self.now()
        while True:
            page = await self.store.list_objects(bucket, start_after=start, max_keys=1000)
            if not await self._still_applies(bucket):
                return
            for entry in page.entries:
                tags = await self._tags(bucket, entry.key, config)
                found = config.current_expiry(entry.key, entry.size, entry.last_modified, tags)
                if found is None or found[0] > now:
                    continue
                try:
                    await self.store.delete_if_unchanged(bucket, entry.key, etag=entry.etag,
                                                         last_modified=entry.last_modified)
                    self.expired += 1
                except S3Error as exc:  # changed or gone since listed: judged again later
                    log.info("lifecycle: %s/%s not expired: %s", bucket, entry.key, exc.code)
            if not page.is_truncated or page.next_start_after is None:
                return
            start = page.next_start_after

    async def _expire_versions(self, bucket: str, config: Lifecycle) -> None:
        """Versioned (or suspended) bucket: current versions get a delete marker, noncurrent
        versions and lone delete markers are removed as the rules say."""
        async for key, versions in self._keys_with_versions(bucket):
            await self._expire_key(bucket, key, versions, config)

    async def _keys_with_versions(self, bucket: str
                                  ) -> AsyncIterator[tuple[str, list[VersionEntry]]]:
        key_marker: str | None = None
        vid_marker: str | None = None
        pending: list[VersionEntry] = []
        while True:
            page = await self.store.list_object_versions(
                bucket, key_marker=key_marker, version_id_marker=vid_marker, max_keys=1000)
            if not await self._still_applies(bucket):
                return
            for entry in page.entries:
                if pending and pending[0].key != entry.key:
                    yield pending[0].key, pending
                    pending = []
                pending.append(entry)
            if not page.is_truncated or page.next_key_marker is None:
                break
            key_marker, vid_marker = page.next_key_marker, page.next_version_id_marker
        if pending:
            yield pending[0].key, pending

    async def _expire_key(self, bucket: str, key: str, versions: list[VersionEntry],
                          config: Lifecycle) -> None:
        now = self.now()
        versions = sorted(versions, key=lambda v: (not v.is_latest,))  # current first
        current = versions[0] if versions and versions[0].is_latest else None
        if current is not None and not current.delete_marker:
            tags = await self._tags(bucket, key, config, current.version_id)
            found = config.current_expiry(key, current.size, current.last_modified, tags)
            if found is not None and found[0] <= now:
                try:
                    await self.store.delete_if_unchanged(bucket, key, etag=current.etag,
                                                         current_version=current.version_id)
                    self.expired += 1
                except S3Error as exc:
                    log.info("lifecycle: %s/%s not marked: %s", bucket, key, exc.code)
                return  # the rest is judged at the next pass, against the new history
        if current is not None and current.delete_marker and len(versions) == 1:
            if self._marker_expired(key, current, config, now):
                await self._remove_version(bucket, key, current.version_id)
            return
        # Noncurrent: each became noncurrent when the next newer entry was written.
        noncurrent_seen = 0
        for newer, version in itertools.pairwise(versions):
            since = newer.last_modified
            noncurrent_seen += 1
            for rule in config.enabled:
                if rule.noncurrent_days is None:
                    continue
                size = None if version.delete_marker else version.size
                if not rule.matches(key, size, None if not rule.tags else
                                    await self._tags(bucket, key, config, version.version_id)):
                    continue
                if rule.newer_noncurrent is not None and \
                        noncurrent_seen <= rule.newer_noncurrent:
                    continue  # among the newest N noncurrent versions: kept
                if config.after_days(since, rule.noncurrent_days) <= now:
                    await self._remove_version(bucket, key, version.version_id)
                    break

    def _marker_expired(self, key: str, marker: VersionEntry, config: Lifecycle,
                        now: datetime) -> bool:
        """A delete marker with no versions left under it: removed by a rule saying
        ExpiredObjectDeleteMarker, or by an age rule (Days/Date) it has outlived."""
        for rule in config.enabled:
            if rule.tags or not rule.matches(key, None, None):
                continue  # markers have no tags: a tag rule never matches them
            if rule.expired_marker:
                return True
            if rule.expire_days is not None and \
                    config.after_days(marker.last_modified, rule.expire_days) <= now:
                return True
            if rule.expire_date is not None and rule.expire_date <= now:
                return True
        return False

    async def _remove_version(self, bucket: str, key: str, version_id: str) -> None:
        """A version's permanent delete; a locked one (retention, legal hold) is refused by
        the store (AccessDenied) and stays."""
        try:
            await self.store.delete_object(bucket, key, version_id=version_id)
            self.expired += 1
        except S3Error as exc:
            log.info("lifecycle: %s/%s?versionId=%s kept: %s", bucket, key, version_id,
                     exc.code)

    async def _abort_uploads(self, bucket: str, config: Lifecycle) -> None:
        rules = [r for r in config.enabled if r.abort_days is not None]
        now = self.now()
        key_marker: str | None = None
        upload_marker: str | None = None
        while True:
            page = await self.store.list_multipart_uploads(
                bucket, key_marker=key_marker, upload_id_marker=upload_marker)
            if not await self._still_applies(bucket):
                return
            for upload in page.uploads:
                if any(upload.key.startswith(r.prefix) and r.abort_days is not None and
                       config.after_days(upload.initiated, r.abort_days) <= now
                       for r in rules):
                    try:
                        await self.store.abort_multipart_upload(bucket, upload.key,
                                                                upload.upload_id)
                        self.aborted += 1
                        # An encrypted upload's key record goes with it, as on AbortUpload.
                        if await self.store.get_upload_record(bucket, upload.upload_id):
                            await self.store.drop_upload_record(bucket, upload.upload_id)
                    except S3Error as exc:
                        log.info("lifecycle: upload %s of %s/%s: %s", upload.upload_id,
                                 bucket, upload.key, exc.code)
            if not page.is_truncated or page.next_key_marker is None:
                return
            key_marker, upload_marker = page.next_key_marker, page.next_upload_id_marker

