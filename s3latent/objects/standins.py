"""Stand-ins: converted versions on a backend that cannot rewrite a version in place.

On the S3 backend a container written over the image version `P` a client uploaded gets a
new backend version `C` (no S3 API chooses a version ID). `C` then *stands in* for `P`:
it carries `lvid=P` in its metadata, an alias record `(key, P) -> C` in the bucket's
unversioned record store (the meta bucket: never a client's to write) says so, and `P` is
deleted. Every request that names a version resolves it here; listings rename `C` to `P`
(docs/versioning-design.md §5.3-§5.10, as implemented: §3b there).

Records of a key share one range, `alias/<key> `, so one listing answers every question
about the key (the name is the record; no bodies are read):

- `<client vid>.a.<backend vid>.<physical etag>.<size hex>.<logical etag>.<mtime us hex>`:
  a live stand-in and the view a listing shows for it;
- `<client vid>.i.<physical etag>`: an intent, written before a conversion writes the
  stand-in (the ETag of a one-part upload is known before it is written); while it is
  there a backend version claiming `lvid=<client vid>` with that ETag is believed;
- `<client vid>.x`: a tombstone, written by a client's permanent delete of a version an
  intent names: the conversion in flight sees it and undoes itself, and meanwhile nothing
  standing in for that version is shown.

`todo/<image key> <client vid>` (body: the sidecar key and version) is the sweeper's list
of conversions in flight, written before the intents and deleted after them.

A claim (`lvid` in a backend object's metadata) is only believed when an alias or an
intent of the key names the same client version and physical ETag: an object written
around the gateway with a forged `lvid` is shown as the plain version it is.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

from cachetools import LRUCache, TTLCache

from ..backends.base import ObjectInfo, VersionEntry, VersionsPage
from ..errors import S3Error
from . import physical
from .context import LatentContext

log = logging.getLogger(__name__)

ALIAS = "alias/"
TODO = "todo/"
L_LVID = physical.L_LVID
# Record names longer than this are not written: such keys are not converted.
MAX_NAME = 900
# A to-do younger than this is a conversion still in flight (on this node or another one
# of a fleet): the sweeper leaves it alone. Its steps after the to-do are a few backend
# requests; a crash's leftovers wait this long for the sweep (the view is exact meanwhile).
LEASE_S = 30.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def bare(etag: str) -> str:
    """A physical ETag without quotes or the one-part "-1" (SeaweedFS lists multipart
    versions without it, HEAD answers with it)."""
    etag = etag.strip('"')
    return etag[:-2] if etag.endswith("-1") else etag


@dataclass(frozen=True)
class Alias:
    """A live stand-in: `backend` stands in for the client version `client`."""

    client: str
    backend: str
    etag: str  # physical, bare
    view: physical.LogicalView

    def name(self, key: str) -> str:
        micros = int((self.view.last_modified - _EPOCH) / timedelta(microseconds=1))
        return (f"{ALIAS}{key} {vid_field(self.client)}.a.{vid_field(self.backend)}.{self.etag}."
                f"{self.view.size:x}.{self.view.etag}.{micros:x}")


@dataclass
class KeyRecords:
    """What the record store says about one key."""

    aliases: dict[str, Alias] = field(default_factory=dict)  # by client vid
    intents: dict[str, str] = field(default_factory=dict)  # client vid -> physical etag
    tombstones: set[str] = field(default_factory=set)

    def backend_of(self, client: str) -> Alias | None:
        return self.aliases.get(client)

    def client_of(self, backend: str) -> Alias | None:
        for alias in self.aliases.values():
            if alias.backend == backend:
                return alias
        return None

    def believes(self, client: str, backend: str, etag: str) -> bool:
        """Whether backend version `backend` (physical ETag `etag`) claiming to stand in
        for `client` is believed."""
        if client in self.tombstones:
            return False
        alias = self.aliases.get(client)
        if alias is not None:
            return alias.backend == backend and alias.etag == bare(etag)
        return self.intents.get(client) == bare(etag)

    @property
    def empty(self) -> bool:
        return not (self.aliases or self.intents or self.tombstones)


def vid_field(vid: str) -> str:
    """A version ID as a field of a record name: "." separates the fields and AWS version
    IDs may hold one (SeaweedFS's are hex), so "%" and "." are escaped."""
    return vid.replace("%", "%25").replace(".", "%2E")


def alias_prefix(key: str) -> str:
    return f"{ALIAS}{key} "


def parse(name: str) -> tuple[str, str, str, list[str]] | None:
    """(key, client vid, kind, fields) of a record name in the alias range."""
    if not name.startswith(ALIAS):
        return None
    key, sep, rest = name[len(ALIAS):].rpartition(" ")
    if not sep:
        return None
    parts = rest.split(".")
    if len(parts) < 2 or not parts[0]:
        return None
    return key, unquote(parts[0]), parts[1], parts[2:]


def _add(records: KeyRecords, client: str, kind: str, fields: list[str]) -> None:
    if kind == "a" and len(fields) == 5:
        try:
            view = physical.LogicalView(
                int(fields[2], 16), fields[3],
                _EPOCH + timedelta(microseconds=int(fields[4], 16)))
        except ValueError:
            return
        records.aliases[client] = Alias(client, unquote(fields[0]), fields[1], view)
    elif kind == "i" and len(fields) == 1:
        records.intents[client] = fields[0]
    elif kind == "x":
        records.tombstones.add(client)


class StandIns:
    """The alias index of versioned buckets on a backend with unversioned records."""

    # For the converter, which cannot import this module (objects.context imports it).
    LEASE_S = LEASE_S
    alias = staticmethod(Alias)

    def __init__(self, ctx: LatentContext) -> None:
        self.ctx = ctx
        ttl = max(0.001, float(ctx.config.cache.revalidate_after))
        # (bucket, key) -> its records, for reads (at most revalidate_after old).
        self._cache: TTLCache[tuple[str, str], KeyRecords] = TTLCache(maxsize=50_000, ttl=ttl)
        # (bucket, key, backend vid, physical etag) -> client vid: verified claims of
        # current versions (a version's claim never changes; its alias may go).
        self._verified: LRUCache[tuple[str, str, str, str], str] = LRUCache(maxsize=100_000)

    @property
    def supported(self) -> bool:
        """Whether stand-ins are used: a backend with unversioned records that cannot
        rewrite a version in place (the S3 backend)."""
        backend = self.ctx.backend
        return bool(getattr(backend, "RECORDS", False)) and \
            not getattr(backend, "REPLACES_VERSIONS", False)

    # -- records -----------------------------------------------------------------
    async def records(self, bucket: str, key: str, *, fresh: bool = False) -> KeyRecords:
        """The key's records: one listing of its range (cached for reads)."""
        if not fresh:
            known = self._cache.get((bucket, key))
            if known is not None:
                return known
        found = KeyRecords()
        for name in await self.ctx.backend.list_records(bucket, alias_prefix(key)):
            parsed = parse(name)
            if parsed is not None and parsed[0] == key:
                _add(found, parsed[1], parsed[2], parsed[3])
        self._cache[(bucket, key)] = found
        return found

    async def page_records(self, bucket: str, first: str, last: str) -> dict[str, KeyRecords]:
        """The records of every key in [first, last] (one listing, a few pages at most)."""
        names = await self.ctx.backend.list_records(
            bucket, ALIAS, start_after=ALIAS + first, stop_after=alias_prefix(last) + "\uffff")
        found: dict[str, KeyRecords] = {}
        for name in names:
            parsed = parse(name)
            if parsed is not None and first <= parsed[0] <= last:
                _add(found.setdefault(parsed[0], KeyRecords()), *parsed[1:])
        return found

    def forget(self, bucket: str, key: str) -> None:
        self._cache.pop((bucket, key), None)

    async def _put(self, bucket: str, key: str, name: str,
                   value: dict[str, Any] | None = None) -> None:
        self.forget(bucket, key)
        await self.ctx.backend.put_record(bucket, name, value)
        self.forget(bucket, key)

    async def _delete(self, bucket: str, key: str, name: str) -> None:
        self.forget(bucket, key)
        await self.ctx.backend.delete_record(bucket, name)
        self.forget(bucket, key)

    @staticmethod
    def fits(key: str) -> bool:
        """Whether the key's record names fit the record store's key limit."""
        return len(alias_prefix(key).encode()) + 200 <= MAX_NAME

    async def put_todo(self, bucket: str, image_key: str, client: str,
                       body: dict[str, Any]) -> None:
        """The to-do of a conversion starting now: `at` (epoch seconds) is its lease, so
        another node's sweeper leaves it to its worker for LEASE_S (Converter)."""
        await self.ctx.backend.put_record(bucket, f"{TODO}{image_key} {client}",
                                          {**body, "at": time.time()})

    async def drop_todo(self, bucket: str, image_key: str, client: str) -> None:
        await self.ctx.backend.delete_record(bucket, f"{TODO}{image_key} {client}")

    async def todos(self, bucket: str) -> list[tuple[str, str, dict[str, Any]]]:
        """(image key, client vid, body) of the conversions in flight or left by a crash."""
        found = []
        for name in await self.ctx.backend.list_records(bucket, TODO):
            image_key, sep, client = name[len(TODO):].rpartition(" ")
            if not sep:
                continue
            body = await self.ctx.backend.get_record(bucket, name) or {}
            found.append((image_key, client, body))
        return found

    async def put_intent(self, bucket: str, key: str, client: str, etag: str) -> None:
        await self._put(bucket, key, f"{alias_prefix(key)}{vid_field(client)}.i.{bare(etag)}")

    async def drop_intent(self, bucket: str, key: str, client: str, etag: str) -> None:
        await self._delete(bucket, key, f"{alias_prefix(key)}{vid_field(client)}.i.{bare(etag)}")

    async def put_tombstone(self, bucket: str, key: str, client: str) -> None:
        await self._put(bucket, key, f"{alias_prefix(key)}{vid_field(client)}.x")

    async def drop_tombstone(self, bucket: str, key: str, client: str) -> None:
        await self._delete(bucket, key, f"{alias_prefix(key)}{vid_field(client)}.x")

    async def put_alias(self, bucket: str, key: str, alias: Alias) -> None:
        await self._put(bucket, key, alias.name(key))

    async def drop_alias(self, bucket: str, key: str, alias: Alias) -> None:
        await self._delete(bucket, key, alias.name(key))

    # -- resolution ----------------------------------------------------------------
    async def resolve(self, bucket: str, key: str, client: str, *,
                      fresh: bool = False) -> str:
        """The backend version serving client version `client` (design §5.4).

        NoSuchVersion for a version deleted while its conversion ran (a tombstone), and for
        the backend's own ID of a stand-in (a client can only have it by going around the
        gateway)."""
        records = await self.records(bucket, key, fresh=fresh)
        if records.empty:
            return client
        if client in records.tombstones:
            raise _no_such_version(key, client)
        alias = records.backend_of(client)
        if alias is not None:
            return alias.backend
        other = records.client_of(client)
        if other is not None and other.client != client:
            raise _no_such_version(key, client)
        etag = records.intents.get(client)
        if etag is not None:
            found = await self.find_claimed(bucket, key, client, etag)
            if found is not None:
                return found
        # An intent-believed stand-in of another version named by its backend ID.
        for other_client, other_etag in records.intents.items():
            if other_client != client and \
                    await self.find_claimed(bucket, key, other_client, other_etag) == client:
                raise _no_such_version(key, client)
        return client

    async def find_claimed(self, bucket: str, key: str, client: str, etag: str) -> str | None:
        """The backend version claiming to stand in for `client` with physical ETag `etag`
        (a conversion that wrote its container but not yet its alias): one version listing
        of the key, a HEAD per candidate."""
        backend = self.ctx.backend
        key_marker: str | None = None
        vid_marker: str | None = None
        for _ in range(10):
            page = await backend.list_object_versions(
                bucket, prefix=key, key_marker=key_marker, version_id_marker=vid_marker,
                max_keys=1000)
            for entry in page.entries:
                if entry.key != key or entry.delete_marker or entry.version_id == client or \
                        bare(entry.etag) != bare(etag):
                    continue
                try:
                    info = await backend.head_object(bucket, key, version_id=entry.version_id)
                except S3Error as exc:
                    if exc.code in ("NoSuchKey", "NoSuchVersion", "MethodNotAllowed"):
                        continue
                    raise
                if info.meta.internal.get(L_LVID) == client and info.version_id:
                    return info.version_id
            if not page.is_truncated or page.next_key_marker is None or \
                    any(e.key > key for e in page.entries):
                return None
            key_marker, vid_marker = page.next_key_marker, page.next_version_id_marker
        return None

    async def shown(self, bucket: str, key: str, info: ObjectInfo) -> str | None:
        """The version ID a client sees for backend object `info`: the client version it
        stands in for when the claim is believed, else its own."""
        claim = info.meta.internal.get(L_LVID)
        vid = info.version_id
        if claim is None or vid is None or not self.supported:
            return vid
        ident = (bucket, key, vid, bare(info.etag))
        if self._verified.get(ident) == claim:
            return claim
        records = await self.records(bucket, key)
        if not records.believes(claim, vid, info.etag):
            records = await self.records(bucket, key, fresh=True)
        if records.believes(claim, vid, info.etag):
            if claim in records.aliases:
                self._verified[ident] = claim
            return claim
        log.warning("%s/%s version %s claims to stand in for %s, which no record of the "
                    "gateway says: shown as itself", bucket, key, vid, claim)
        return vid

    def forget_verified(self, bucket: str, key: str, backend_vid: str) -> None:
        for ident in [i for i in self._verified if i[:3] == (bucket, key, backend_vid)]:
            self._verified.pop(ident, None)

    # -- listings ------------------------------------------------------------------
    async def translate_marker(self, bucket: str, key_marker: str | None,
                               version_id_marker: str | None) -> str | None:
        """A client's version-id-marker as the backend's (a stand-in's client vid)."""
        if key_marker is None or version_id_marker is None:
            return version_id_marker
        records = await self.records(bucket, key_marker)
        alias = records.backend_of(version_id_marker)
        return alias.backend if alias is not None else version_id_marker

    async def rename_page(self, bucket: str, page: VersionsPage) -> set[int]:
        """Rename the stand-ins on a backend page to their client versions with their
        logical views, and drop what must not be shown (the plain version a stand-in
        replaced, withdrawn stand-ins); returns the ids of the entries renamed.

        One listing of the alias range of the page's keys; a HEAD only for a one-part
        entry of a key with an intent (a conversion in flight or left by a crash)."""
        keys = [e.key for e in page.entries]
        if not keys:
            return set()
        found = await self.page_records(bucket, min(keys), max(keys))
        if not found:
            return set()
        renamed: set[int] = set()
        hidden: set[tuple[str, str]] = set()
        stands: dict[tuple[str, str], tuple[str, physical.LogicalView | None]] = {}
        for entry in page.entries:
            records = found.get(entry.key)
            if records is None or entry.delete_marker:
                continue
            alias = records.client_of(entry.version_id)
            if alias is not None and alias.client not in records.tombstones:
                stands[(entry.key, entry.version_id)] = (alias.client, alias.view)
                continue
            if alias is not None:  # withdrawn: its client version was deleted
                hidden.add((entry.key, entry.version_id))
                continue
            for client, etag in records.intents.items():
                if client == entry.version_id or bare(entry.etag) != etag or \
                        client in records.aliases:
                    continue
                try:
                    info = await self.ctx.backend.head_object(bucket, entry.key,
                                                              version_id=entry.version_id)
                except S3Error:
                    continue
                if info.meta.internal.get(L_LVID) != client:
                    continue
                if client in records.tombstones:
                    hidden.add((entry.key, entry.version_id))
                else:
                    stands[(entry.key, entry.version_id)] = (
                        client, physical.logical_view(info))
                break
        replaced = {(k, client) for (k, _), (client, _) in stands.items()}
        for entry in page.entries:
            records = found.get(entry.key)
            if records is not None and entry.version_id in records.tombstones:
                hidden.add((entry.key, entry.version_id))
            if (entry.key, entry.version_id) in replaced and \
                    (entry.key, entry.version_id) not in stands:
                hidden.add((entry.key, entry.version_id))
        kept: list[VersionEntry] = []
        for entry in page.entries:
            ident = (entry.key, entry.version_id)
            if ident in hidden:
                continue
            stand = stands.get(ident)
            if stand is not None:
                client, view = stand
                entry.version_id = client
                if view is not None:
                    entry.size, entry.etag = view.size, view.etag
                    entry.last_modified = view.last_modified
                renamed.add(id(entry))
            kept.append(entry)
        if page.next_key_marker is not None and page.next_version_id_marker is not None:
            records = found.get(page.next_key_marker)
            alias = records.client_of(page.next_version_id_marker) if records else None
            if alias is not None:
                page.next_version_id_marker = alias.client
        page.entries = kept
        return renamed


def _no_such_version(key: str, vid: str) -> S3Error:
    return S3Error("NoSuchVersion", "The specified version does not exist.", Key=key,
                   VersionId=vid[:100])
