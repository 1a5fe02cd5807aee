"""Listings of latent objects: logical sizes and ETags at a bounded cost per page.

A page costs the backend listing itself (twice at most, to step over the hidden range) and
one listing of the view index (physical.view_index_key) for the page's "-1" entries not
already known in memory. Only entries the index lacks (containers written before it existed,
or by a conversion that crashed before indexing) cost a HEAD, once: what a HEAD learns is
written back to the index in the background. The gateway's hidden keys
(physical.HIDDEN_PREFIX) are never listed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from prometheus_client import CollectorRegistry, Counter

from ..backends.base import ListEntry, ListPage, VersionEntry
from ..errors import S3Error
from . import physical
from .context import LatentContext

log = logging.getLogger(__name__)

LIST_HEAD_CONCURRENCY = 16
# Index listings per page before the rest falls back to HEADs (stale index entries
# or odd key orders can need a second one; never more).
MAX_INDEX_CALLS = 2
INDEX_REPAIR_CONCURRENCY = 4
MAX_PENDING_REPAIRS = 10_000


class LatentListing:
    """See the module docstring."""

    def __init__(self, ctx: LatentContext, *, registry: CollectorRegistry) -> None:
        self.ctx = ctx
        self.list_backend_calls = Counter(
            "s3latent_list_backend_calls",
            "Backend calls made to answer listings (list: the page, index: the view index, "
            "head: entries the index lacked, index_write: index repairs, in the background)",
            ["kind"], registry=registry)
        self.list_pages = Counter("s3latent_list_pages", "Listing pages answered",
                                  registry=registry)
        self._repairs: set[tuple[str, str, str]] = set()
        self._repair_tasks: set[asyncio.Task[None]] = set()
        self._repair_limit = asyncio.Semaphore(INDEX_REPAIR_CONCURRENCY)
        # Whether a bucket ever held an encrypted object (its plaintext sizes are indexed):
        # set by the store; None: never look.
        self.sse_indexed: Callable[[str], Awaitable[bool]] | None = None

    async def close(self) -> None:
        """Stop index repairs under way (they are best effort)."""
        for task in list(self._repair_tasks):
            task.cancel()
        await asyncio.gather(*self._repair_tasks, return_exceptions=True)

    async def list_objects(self, bucket: str, *, prefix: str = "",
                           delimiter: str | None = None, start_after: str | None = None,
                           max_keys: int = 1000) -> ListPage:
        """A page of client keys with their logical sizes, ETags and dates."""
        page = await self._visible_page(bucket, prefix, delimiter, start_after, max_keys)
        self.list_pages.inc()
        need = {e.key: e for e in page.entries if physical.may_be_latent(e.etag)
                and (bucket, e.key, e.etag) not in self.ctx.views}
        if need:
            await self._views_from_index(bucket, prefix, delimiter,
                                         len(page.entries) + len(page.common_prefixes), need)
        if need:
            await self._views_by_head(bucket, need)
        for entry in page.entries:
            if physical.may_be_latent(entry.etag):
                view = self.ctx.views.get((bucket, entry.key, entry.etag))
                if view is not None:
                    entry.size, entry.etag, entry.last_modified = view.size, view.etag, \
                        view.last_modified
        if page.entries and self.sse_indexed is not None and await self.sse_indexed(bucket):
            await self.plaintext_sizes(bucket, prefix, delimiter, page.entries)
        return page

    async def plaintext_sizes(self, bucket: str, prefix: str, delimiter: str | None,
                              page: Sequence[ListEntry | VersionEntry]) -> None:
        """Encrypted objects (and versions) list their plaintext size and ETag
        (physical.sse_index_key, by key and stored ETag): one listing of that index range
        per page, in buckets that ever held an encrypted object."""
        entries: dict[tuple[str, str], list[ListEntry | VersionEntry]] = {}
        for entry in page:
            entries.setdefault((entry.key, entry.etag), []).append(entry)
        if not entries:
            return
        keys = [key for key, _ in entries]
        index_delimiter = delimiter
        if delimiter and set(delimiter) & physical.VIEW_KEY_CHARS:
            index_delimiter = None
        after: str | None = physical.SSE_INDEX_PREFIX + min(keys)
        end = f"{physical.SSE_INDEX_PREFIX}{max(keys)} \U0010ffff"
        for _ in range(MAX_INDEX_CALLS):
            self.list_backend_calls.labels("index").inc()
            try:
                found = await self.ctx.backend.list_objects(
                    bucket, prefix=physical.SSE_INDEX_PREFIX + prefix,
                    delimiter=index_delimiter, start_after=after, max_keys=1000)
            except S3Error as exc:
                log.warning("plaintext size index of %s not readable: %s", bucket, exc)
                return
            for index_entry in found.entries:
                parsed = physical.parse_sse_index_key(index_entry.key)
                if parsed is None:
                    continue
                for entry in entries.pop((parsed[0], parsed[1]), []):
                    entry.size, entry.etag = parsed[2], parsed[3]
            after = found.next_start_after
            if not found.is_truncated or after is None or after > end:
                return

    async def _backend_list(self, bucket: str, prefix: str, delimiter: str | None,
                            start_after: str | None, max_keys: int) -> ListPage:
        self.list_backend_calls.labels("list").inc()
        return await self.ctx.backend.list_objects(bucket, prefix=prefix, delimiter=delimiter,
                                               start_after=start_after, max_keys=max_keys)

    async def _visible_page(self, bucket: str, prefix: str, delimiter: str | None,
                            start_after: str | None, max_keys: int) -> ListPage:
        """A backend page without the hidden range: one call, two when the hidden range
        was in it (the second starts past the whole range and fills the page)."""
        if physical.is_hidden(prefix):
            return ListPage([], [], False, None)
        page = await self._backend_list(bucket, prefix, delimiter, start_after, max_keys)
        if not physical.HIDDEN_PREFIX.startswith(prefix):
            return page  # the prefix excludes every hidden key
        entries = [e for e in page.entries if not physical.is_hidden(e.key)]
        prefixes = [p for p in page.common_prefixes if not physical.is_hidden(p)]
        for common in [p for p in prefixes if physical.HIDDEN_PREFIX.startswith(p)]:
            if not await self._holds_visible(bucket, common):
                prefixes.remove(common)  # e.g. "." with delimiter ".": only hidden keys
        if len(entries) + len(prefixes) == len(page.entries) + len(page.common_prefixes):
            return page
        truncated, last = page.is_truncated, page.next_start_after
        room = max_keys - len(entries) - len(prefixes)
        if truncated and last is not None and room > 0:
            after = physical.HIDDEN_END if physical.is_hidden(last) else last
            more = await self._backend_list(bucket, prefix, delimiter, after, room)
            entries += [e for e in more.entries if not physical.is_hidden(e.key)]
            prefixes += [p for p in more.common_prefixes if not physical.is_hidden(p)]
            truncated, last = more.is_truncated, more.next_start_after or last
        if not truncated:
            last = max([e.key for e in entries[-1:]] + prefixes[-1:], default=None)
        return ListPage(entries, prefixes, truncated, last)

    async def _holds_visible(self, bucket: str, common: str) -> bool:
        """Whether a common prefix above the hidden range holds any client key."""
        first = await self._backend_list(bucket, common, None, None, 1)
        if first.entries and not physical.is_hidden(first.entries[0].key):
            return True
        rest = await self._backend_list(bucket, common, None, physical.HIDDEN_END, 1)
        return bool(rest.entries)

    async def _views_from_index(self, bucket: str, prefix: str, delimiter: str | None,
                                items: int, need: dict[str, ListEntry]) -> None:
        """Resolve `need` (key -> "-1" entry) from the view index; found ones leave `need`.

        The index keys of a page's entries lie in one range of the index, in the
        same order (rolled up the same way by a delimiter that cannot occur in
        the encoded view), so one listing covers the page.
        """
        index_delimiter = delimiter
        if delimiter and set(delimiter) & physical.VIEW_KEY_CHARS:
            index_delimiter = None  # would cut index keys apart: list without it
        index_prefix = physical.VIEWS_PREFIX + prefix
        after: str | None = physical.VIEWS_PREFIX + min(need)
        end = physical.view_index_prefix(max(need)) + "\U0010ffff"
        budget = min(1000, 2 * items + 16) if index_delimiter == delimiter else 1000
        for _ in range(MAX_INDEX_CALLS):
            self.list_backend_calls.labels("index").inc()
            try:
                found = await self.ctx.backend.list_objects(
                    bucket, prefix=index_prefix, delimiter=index_delimiter, start_after=after,
                    max_keys=budget)
            except S3Error as exc:
                log.warning("listing index of %s not readable: %s", bucket, exc)
                return
            for index_entry in found.entries:
                parsed = physical.parse_view_index_key(index_entry.key)
                if parsed is None:
                    continue
                key, physical_etag, view = parsed
                entry = need.get(key)
                if entry is not None and entry.etag == physical_etag:
                    self.ctx.views[(bucket, key, physical_etag)] = view
                    del need[key]
            after = found.next_start_after
            if not need or not found.is_truncated or after is None or after > end:
                return

    async def _views_by_head(self, bucket: str, need: dict[str, ListEntry]) -> None:
        """HEAD what the index lacked (bounded concurrency) and index it for next time."""
        limiter = asyncio.Semaphore(LIST_HEAD_CONCURRENCY)

        async def resolve(entry: ListEntry) -> None:
            async with limiter:
                try:
                    info = await self.ctx.backend.head_object(bucket, entry.key)
                except S3Error as exc:
                    if exc.code == "NoSuchKey":
                        return
                    raise
            self.list_backend_calls.labels("head").inc()
            view = physical.logical_view(await self.ctx.trusted(bucket, info))
            if info.etag == entry.etag:  # else replaced meanwhile: shown as listed
                self._repair_index(bucket, entry.key, info.etag, view)

        await asyncio.gather(*(resolve(e) for e in need.values()))

    def _repair_index(self, bucket: str, key: str, physical_etag: str,
                      view: physical.LogicalView | None) -> None:
        """Write a missing index entry in the background (the listing does not wait)."""
        ident = (bucket, key, physical_etag)
        if ident in self._repairs or len(self._repairs) >= MAX_PENDING_REPAIRS:
            return
        self._repairs.add(ident)

        async def repair() -> None:
            try:
                async with self.ctx.converter.gate.work(bucket), self._repair_limit:
                    if await physical.write_view_index(self.ctx.backend, bucket, key,
                                                       physical_etag, view):
                        self.list_backend_calls.labels("index_write").inc()
            except S3Error as exc:
                log.info("listing index of %s/%s not repaired: %s", bucket, key, exc)
            except Exception:  # a bug must not vanish with its background task
                log.exception("listing index repair of %s/%s failed", bucket, key)
            finally:
                self._repairs.discard(ident)

        task = asyncio.get_running_loop().create_task(repair())
        self._repair_tasks.add(task)
        task.add_done_callback(self._repair_tasks.discard)

    async def settle(self) -> None:
        """Wait for background index repairs (tests, benchmarks)."""
        while self._repair_tasks:
            await asyncio.gather(*list(self._repair_tasks), return_exceptions=True)
