"""DeleteBucket against the gateway's own background writes into the same bucket.

Conversions, the sweeper and listing-index repairs write hidden records
(refusal markers, index entries, containers, stubs) into a client's bucket
after the request that caused them has answered. DeleteBucket deletes those
records and then the bucket; a background write landing in between makes it
fail with BucketNotEmpty on a bucket the client emptied, and one landing after
it writes into a deleted bucket, which SeaweedFS answers by creating the bucket
again (holding only a hidden record: a deleted bucket comes back, empty-looking).

So background work on a bucket runs inside `work(bucket)` and DeleteBucket's
clean-up inside `closed(bucket)`: closing waits for the work under way to
finish and holds new work back until the deletion is over (that work then
finds the keys or the bucket gone, as it would after any delete). One process
only: several gateways over one backend are not ordered by this.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class BucketGate:
    """Per bucket: background work shares it, a bucket deletion has it alone."""

    def __init__(self) -> None:
        self._active: dict[str, int] = {}  # bucket -> background work under way
        self._closing: dict[str, int] = {}  # bucket -> deletions under way
        self._changed = asyncio.Event()  # set (and replaced) whenever a count drops

    @asynccontextmanager
    async def work(self, bucket: str) -> AsyncIterator[None]:
        """Background work that may write into `bucket`; waits while it is being deleted."""
        while self._closing.get(bucket):
            await self._changed.wait()
        _add(self._active, bucket, 1)
        try:
            yield
        finally:
            self._drop(self._active, bucket)

    @asynccontextmanager
    async def closed(self, bucket: str) -> AsyncIterator[None]:
        """No background work on `bucket` runs inside this (what was running is waited for)."""
        _add(self._closing, bucket, 1)
        try:
            while self._active.get(bucket):
                await self._changed.wait()
            yield
        finally:
            self._drop(self._closing, bucket)

    def _drop(self, counts: dict[str, int], bucket: str) -> None:
        # Synchronous (no await): a cancelled task still gives its place back.
        _add(counts, bucket, -1)
        self._changed.set()
        self._changed = asyncio.Event()

    def busy(self, bucket: str) -> int:
        """Background work under way on `bucket` (tests)."""
        return self._active.get(bucket, 0)


def _add(counts: dict[str, int], bucket: str, delta: int) -> None:
    left = counts.get(bucket, 0) + delta
    if left:
        counts[bucket] = left
    else:
        counts.pop(bucket, None)
