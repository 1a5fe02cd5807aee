"""A per-process cache of the gateway's per-bucket records (owner, ACL, policy, ...).

Every request is authorized against its bucket's owner, ACL, policy and public access
block; reading them from the backend each time would add backend calls to every request
(a meta-bucket GET on S3 backends). They change rarely, so each entry is served for up to
`ttl` seconds (`[cache] revalidate_after`, the bound the object caches keep too): a node of
a fleet sees another node's change within that bound, and its own changes at once, since a
local write or a bucket created or deleted here drops the bucket's entries before it returns.
Errors (NoSuchBucket, a backend failure) are never cached.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..singleflight import SingleFlight

# Marks "the owner" among the record names (no record is named with a leading '.').
OWNER = ".owner"
_MAX_ENTRIES = 100_000


class BucketRecords:
    """`get(bucket, name)` with a TTL; `put` writes through and forgets the bucket."""

    def __init__(self, read: Callable[[str, str], Awaitable[Any]],
                 write: Callable[[str, str, Any], Awaitable[None]],
                 owner: Callable[[str], Awaitable[str | None]], *, ttl: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read, self._write, self._owner = read, write, owner
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[tuple[str, str], tuple[float, Any]] = {}
        # Bumped when a bucket's records change here: a read that started before the change
        # must not store what it read afterwards.
        self._epoch: dict[str, int] = {}
        self._flight: SingleFlight[tuple[str, str, int], Any] = SingleFlight()

    async def get(self, bucket: str, name: str) -> Any | None:
        """The record `name` of `bucket` (None: there is none), at most `ttl` seconds old."""
        now = self._clock()
        hit = self._entries.get((bucket, name))
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        epoch = self._epoch.get(bucket, 0)

        async def load() -> Any:
            started = self._clock()
            value = await (self._owner(bucket) if name == OWNER else self._read(bucket, name))
            if self.ttl > 0 and self._epoch.get(bucket, 0) == epoch:
                if len(self._entries) >= _MAX_ENTRIES:
                    self._entries.clear()
                self._entries[(bucket, name)] = (started, value)
            return value

        # Keyed by the epoch too: a read started before a local change is not joined after it.
        return (await self._flight.run((bucket, name, epoch), load))[0]

    async def owner(self, bucket: str) -> str | None:
        """The access key recorded as the bucket's creator (None: none recorded)."""
        value = await self.get(bucket, OWNER)
        return value if isinstance(value, str) else None

    async def put(self, bucket: str, name: str, value: Any | None) -> None:
        """Write a record (None removes it); this process sees the change at once."""
        self.forget(bucket)
        try:
            await self._write(bucket, name, value)
        finally:
            self.forget(bucket)

    def forget(self, bucket: str) -> None:
        """Drop every cached record of `bucket` (created, deleted or changed here)."""
        self._epoch[bucket] = self._epoch.get(bucket, 0) + 1
        for entry in [k for k in self._entries if k[0] == bucket]:
            self._entries.pop(entry, None)


class ObjectRecords:
    """Per-object records (PutObjectAcl's), cached like the bucket records (same TTL)."""

    def __init__(self, read: Callable[[str, str], Awaitable[Any]], *,
                 ttl_of: BucketRecords, max_entries: int = 10_000) -> None:
        self._read = read
        self._ttl_of = ttl_of
        self._max = max_entries
        self._entries: dict[tuple[str, str], tuple[float, Any]] = {}
        self._epoch: dict[tuple[str, str], int] = {}
        self._flight: SingleFlight[tuple[str, str, int], Any] = SingleFlight()

    async def get(self, bucket: str, key: str) -> Any | None:
        ttl, clock = self._ttl_of.ttl, self._ttl_of._clock
        hit = self._entries.get((bucket, key))
        if hit is not None and clock() - hit[0] < ttl:
            return hit[1]
        epoch = self._epoch.get((bucket, key), 0)

        async def load() -> Any:
            started = clock()
            value = await self._read(bucket, key)
            if ttl > 0 and self._epoch.get((bucket, key), 0) == epoch:
                if len(self._entries) >= self._max:
                    self._entries.clear()
                self._entries[(bucket, key)] = (started, value)
            return value

        return (await self._flight.run((bucket, key, epoch), load))[0]

    def forget(self, bucket: str, key: str) -> None:
        if len(self._epoch) >= self._max:
            self._epoch.clear()
        self._epoch[(bucket, key)] = self._epoch.get((bucket, key), 0) + 1
        self._entries.pop((bucket, key), None)
