"""This node's view of the fleet: membership, owners, and what it asks of its peers.

Membership: every `health_interval_s` each peer's health endpoint is asked (with
`health_timeout_s`); a peer that fails `fail_after` checks in a row, or says it is leaving,
leaves the ring until it answers healthy again. The live set is this node plus its healthy
peers, and every key's owner is the rendezvous winner over it (cluster.ring). Nothing here is
ever the only copy of anything: a node holds caches, the backend holds the data.

What this node asks of peers, all signed with the cluster secret (cluster.peerauth):
forwarded reads (the front end streams them), invalidations after writes, leave notices on
shutdown, and renders when its decode queue is deep (spillover). Any failure of a peer falls
back to doing the work here: a client never sees an error because a peer is down.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, Counter, Gauge
from yarl import URL

from ..config import ClusterSettings, Config
from . import peerauth, ring

if TYPE_CHECKING:
    from ..decode.services import DecodeServices
    from ..objects.store import ForwardingStore

log = logging.getLogger("s3latent.cluster")

# How long a forwarded read may wait between body chunks (the wait for the owner's response
# headers is [cluster] forward_header_timeout_s).
FORWARD_READ_TIMEOUT_S = 30.0
RENDER_TIMEOUT_S = 30.0
INVALIDATE_TIMEOUT_S = 2.0
# Request headers a forwarded read does not pass on: hop-by-hop, the client's credentials
# (the receiving node checked them; the owner trusts the peer signature instead), framing.
_NOT_FORWARDED = frozenset({
    "host", "authorization", "content-length", "transfer-encoding", "connection",
    "keep-alive", "expect", "upgrade", "te", "trailer", "proxy-authorization",
    "proxy-connection",
})


class PeerUnavailable(Exception):
    """A peer could not be reached or did not answer in time: do the work here."""


def normalize(url: str) -> str:
    """scheme://host:port, lower case, no trailing slash: one spelling per node."""
    parts = urlsplit(url.strip())
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def object_path(bucket: str, key: str) -> str:
    """The peer path of a forwarded read; the key is one segment ('/' and '.' encoded too)."""
    return (f"{peerauth.PREFIX}object/{quote(bucket, safe='')}/"
            f"{quote(key, safe='').replace('.', '%2E')}")


@dataclass
class PeerState:
    """What the last health checks said about one peer."""

    url: str
    live: bool = False
    failures: int = 0
    depth: int = 0
    leaving: bool = False
    backoff_s: float = 0.0  # the last backoff after a failed forward/render (0: none)
    backoff_until: float = 0.0  # time.monotonic() before which the peer stays out of the ring

    def in_ring(self, now: float) -> bool:
        """Healthy, not leaving, and not backing off after a failed forward or render."""
        return self.live and not self.leaving and now >= self.backoff_until


class Cluster:
    """See the module docstring."""

    def __init__(self, config: Config, store: ForwardingStore,
                 decoding: DecodeServices | None, *, registry: CollectorRegistry) -> None:
        assert config.cluster is not None
        self.config = config
        self.settings: ClusterSettings = config.cluster
        self.self_url = normalize(self.settings.self)
        self.store = store
        self.decoding = decoding
        self.peers: dict[str, PeerState] = {}
        self.leaving = False
        # Health checks, leave notices and invalidations (`_control`) never wait behind
        # forwarded reads and renders (`_session`), which hold connections for whole bodies.
        self._control: aiohttp.ClientSession | None = None
        self._session: aiohttp.ClientSession | None = None
        self._forwarding = 0  # forwards holding a `_session` connection (see forward_done)
        self._self_aliases: set[str] = set()  # node URLs whose health answer named this node
        self._poller: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._resolved = asyncio.Event()
        self.forwarded = Counter(
            "s3latent_cluster_forwarded", "Reads forwarded to their owner (result=ok), or "
            "served here because the owner could not be reached (result=fallback)",
            ["result"], registry=registry)
        self.forwarded_in = Counter("s3latent_cluster_forwarded_received",
                                    "Reads a peer forwarded to this node (their owner)",
                                    registry=registry)
        self.spilled = Counter(
            "s3latent_cluster_spilled_decodes", "Decodes spilled to a peer (sent), done here "
            "for a peer (received), or sent and failed, then done here (failed)",
            ["direction"], registry=registry)
        self.invalidations = Counter(
            "s3latent_cluster_invalidations", "Owner invalidations after writes: sent, "
            "received, failed (to send)", ["result"], registry=registry)
        members = Gauge("s3latent_cluster_ring_members", "Live nodes in the ring, this one "
                        "included", registry=registry)
        members.set_function(lambda: len(self.live_nodes()))
        self.peer_live = Gauge("s3latent_cluster_peer_live", "1 while a peer is in the ring",
                               ["peer"], registry=registry)

    # -- life cycle --------------------------------------------------------------
    async def start(self) -> None:
        """Open the peer connection pools and start health checks."""
        self._control = aiohttp.ClientSession(auto_decompress=False)
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            connector=aiohttp.TCPConnector(limit=self.settings.max_peer_connections))
        self._poller = asyncio.create_task(self._poll())

    async def close(self) -> None:
        """Stop health checks, let invalidations in flight finish (briefly), close the pool."""
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        if self._background:
            await asyncio.wait(self._background, timeout=INVALIDATE_TIMEOUT_S)
        for session in (self._session, self._control):
            if session is not None:
                await session.close()

    async def leave(self) -> None:
        """Shutting down: health says leaving, and every live peer hears it now."""
        self.leaving = True
        peers = [p.url for p in self.peers.values() if p.live]
        await asyncio.gather(*(self._post(url, "leave", {}, limit_s=self.settings.
                                          health_timeout_s) for url in peers),
                             return_exceptions=True)

    # -- membership ----------------------------------------------------------------
    def live_nodes(self) -> list[str]:
        """This node (unless leaving) and the peers in the ring."""
        now = time.monotonic()
        nodes = [p.url for p in self.peers.values() if p.in_ring(now)]
        if not self.leaving or not nodes:
            nodes.append(self.self_url)
        return nodes

    def owner(self, bucket: str, key: str) -> str:
        """The live node that owns (bucket, key); a sidecar's owner is its image's."""
        suffix = self.config.bucket(bucket).sidecar_suffix
        return ring.owner(self.live_nodes(), bucket, ring.image_key(key, suffix))

    def forward_target(self, bucket: str, key: str) -> str | None:
        """The owner to forward a read of (bucket, key) to, or None to serve it here."""
        if not self.settings.forward or self.leaving:
            return None
        node = self.owner(bucket, key)
        return None if node == self.self_url else node

    def depth(self) -> int:
        """Decodes waiting or running on this node."""
        if self.decoding is None or not self.decoding.built:
            return 0
        return int(self.decoding.renderer.pipeline.depth)

    def health(self) -> dict[str, object]:
        """What peers learn from this node's health endpoint."""
        return {"node": self.self_url, "depth": self.depth(), "leaving": self.leaving}

    def peer_left(self, node: str) -> None:
        """A peer said it is leaving: out of the ring until its health says otherwise."""
        state = self.peers.get(normalize(node))
        if state is not None:
            state.leaving = True
            self._set_live(state, False)

    def peer_failed(self, node: str) -> None:
        """A forward or render to a peer failed: out of the ring for a backoff period.

        Health checks alone would put a peer that answers them but hangs on reads back
        within a second, and every read of its keys would wait again; the backoff (doubling
        per failure, capped, reset by a successful forward) keeps it out meanwhile.
        """
        state = self.peers.get(normalize(node))
        if state is None:
            return
        state.backoff_s = min(self.settings.peer_backoff_max_s,
                              state.backoff_s * 2 or self.settings.peer_backoff_s)
        state.backoff_until = time.monotonic() + state.backoff_s
        log.warning("peer %s failed a request: out of the ring for %.0f s", node,
                    state.backoff_s)

    def peer_ok(self, node: str) -> None:
        """A forward to a peer got its answer: any backoff is over."""
        state = self.peers.get(normalize(node))
        if state is not None and state.backoff_s:
            state.backoff_s = state.backoff_until = 0.0

    def _set_live(self, state: PeerState, live: bool) -> None:
        if state.live != live:
            log.info("peer %s %s the ring", state.url, "joins" if live else "leaves")
        state.live = live
        self.peer_live.labels(state.url).set(1 if live else 0)

    async def _resolve(self) -> set[str]:
        """Every node URL, dns+http://name:port entries resolved to one URL per address."""
        urls: set[str] = set()
        for entry in self.settings.nodes:
            if not entry.startswith("dns+"):
                urls.add(normalize(entry))
                continue
            parts = urlsplit(entry[len("dns+"):])
            host, port = parts.hostname or "", parts.port or 80
            try:
                # Bounded: a stalled resolver must not stall the health round.
                infos = await asyncio.wait_for(
                    asyncio.to_thread(socket.getaddrinfo, host, port,
                                      type=socket.SOCK_STREAM),
                    self.settings.health_timeout_s)
            except (OSError, TimeoutError) as exc:
                log.warning("cluster node name %s did not resolve: %s", host, exc)
                continue
            for info in infos:
                address = str(info[4][0])
                if ":" in address:
                    address = f"[{address}]"
                urls.add(f"{parts.scheme.lower()}://{address}:{port}")
        return urls

    async def _poll(self) -> None:
        while True:
            started = time.monotonic()
            try:
                urls = await self._resolve()
                urls.discard(self.self_url)
                urls -= self._self_aliases
                for url in list(self.peers):
                    if url not in urls:
                        self._set_live(self.peers.pop(url), False)
                for url in urls:
                    self.peers.setdefault(url, PeerState(url))
                await asyncio.gather(*(self._check(p) for p in list(self.peers.values())))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("cluster health round failed")
            self._resolved.set()
            await asyncio.sleep(max(0.0, self.settings.health_interval_s
                                    - (time.monotonic() - started)))

    async def _check(self, state: PeerState) -> None:
        try:
            body = await self._request(state.url, "GET", "health", b"",
                                       limit_s=self.settings.health_timeout_s)
            answer = json.loads(body)
            if normalize(str(answer.get("node", ""))) == self.self_url:
                # Another spelling of this node (e.g. an address a dns+ entry resolved to).
                log.info("cluster node %s is this node: not a peer", state.url)
                self._self_aliases.add(state.url)
                self._set_live(state, False)
                self.peers.pop(state.url, None)
                return
            state.depth = int(answer.get("depth", 0))
            state.leaving = bool(answer.get("leaving", False))
            state.failures = 0
            self._set_live(state, not state.leaving)
        except (PeerUnavailable, ValueError, TypeError, AttributeError) as exc:
            state.failures += 1
            if state.failures >= self.settings.fail_after and state.live:
                log.warning("peer %s failed %d health checks (%s)", state.url, state.failures,
                            exc)
                self._set_live(state, False)

    # -- requests to peers ---------------------------------------------------------
    async def _request(self, node: str, method: str, what: str, body: bytes, *,
                       query: Mapping[str, str] | None = None, limit_s: float,
                       answer_headers: dict[str, str] | None = None) -> bytes:
        """A signed request's 200 body (its headers into `answer_headers` when given);
        PeerUnavailable for anything else."""
        path_qs = peerauth.PREFIX + what + ("?" + urlencode(query) if query else "")
        headers = peerauth.sign(self.settings.secret, method, path_qs, self.self_url,
                                body=body)
        if self._control is None:
            raise PeerUnavailable("not started")
        session = self._session if what == "render" else self._control
        assert session is not None
        try:
            async with session.request(
                    method, URL(node + path_qs, encoded=True), data=body or None,
                    headers=headers, timeout=aiohttp.ClientTimeout(
                        total=limit_s, connect=self.settings.health_timeout_s)) as resp:
                data = await resp.read()
                if resp.status != 200:
                    raise PeerUnavailable(f"{node} answered {resp.status} to {what}")
                if answer_headers is not None:
                    answer_headers.update(resp.headers)
                return data
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PeerUnavailable(f"{node}: {exc!r}") from exc

    async def _post(self, node: str, what: str, query: Mapping[str, str], *,
                    limit_s: float) -> None:
        await self._request(node, "POST", what, b"", query=query, limit_s=limit_s)

    async def forward(self, node: str, method: str, bucket: str, key: str, raw_query: str,
                      headers: Mapping[str, str], *, access_key: str,
                      request_id: str) -> aiohttp.ClientResponse:
        """The owner's response to a client's read; the caller hands it to forward_done.

        PeerUnavailable (the read is then served here, counted as a fallback) when every
        peer connection is busy, or the owner cannot be reached or sends no response headers
        within forward_header_timeout_s; the last two also put the owner in backoff.
        Repeated headers are passed on, in order.
        """
        path_qs = object_path(bucket, key) + ("?" + raw_query if raw_query else "")
        out: CIMultiDict[str] = CIMultiDict(
            (k, v) for k, v in headers.items()
            if k.lower() not in _NOT_FORWARDED and not k.lower().startswith("x-s3latent-peer-"))
        for name, value in peerauth.sign(self.settings.secret, method, path_qs, self.self_url,
                                         access_key=access_key,
                                         request_id=request_id).items():
            out[name] = value
        if self._session is None:
            raise PeerUnavailable("not started")
        if self._forwarding >= self.settings.max_peer_connections:
            # Never queue behind slow streams: this node can serve the read itself.
            self.forwarded.labels("fallback").inc()
            raise PeerUnavailable("every peer connection is busy")
        self._forwarding += 1
        try:
            async with asyncio.timeout(self.settings.forward_header_timeout_s):
                response = await self._session.request(
                    method, URL(node + path_qs, encoded=True), headers=out,
                    allow_redirects=False, timeout=aiohttp.ClientTimeout(
                        connect=self.settings.health_timeout_s,
                        sock_read=FORWARD_READ_TIMEOUT_S))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._forwarding -= 1
            self.peer_failed(node)
            self.forwarded.labels("fallback").inc()
            raise PeerUnavailable(f"{node}: {exc!r}") from exc
        except BaseException:
            self._forwarding -= 1
            raise
        self.peer_ok(node)
        return response

    def forward_done(self, response: aiohttp.ClientResponse) -> None:
        """Release a forwarded read's connection (and its place under max_peer_connections)."""
        self._forwarding -= 1
        response.release()

    # -- invalidation --------------------------------------------------------------
    def on_write(self, bucket: str, key: str) -> None:
        """Write listener: the key's owner, if another node, drops its cached entry."""
        node = self.owner(bucket, key)
        if node == self.self_url:
            return
        task = asyncio.get_running_loop().create_task(self._invalidate(node, bucket, key))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _invalidate(self, node: str, bucket: str, key: str) -> None:
        try:
            await self._post(node, "invalidate", {"bucket": bucket, "key": key},
                             limit_s=INVALIDATE_TIMEOUT_S)
            self.invalidations.labels("sent").inc()
        except PeerUnavailable as exc:
            # The cache's revalidation bound ([cache] revalidate_after) covers a lost one.
            self.invalidations.labels("failed").inc()
            log.warning("invalidation of %s/%s at %s failed: %s", bucket, key, node, exc)

    def invalidated(self, bucket: str, key: str) -> None:
        """A peer wrote (bucket, key): drop what this node caches for it."""
        self.invalidations.labels("received").inc()
        self.store.invalidate(bucket, key)

    # -- spillover -------------------------------------------------------------------
    async def offload(self, bucket: str, key: str, etag: str, raw: bytes) -> bytes | None:
        """The rendition from a less-loaded peer when this node's queue is deep; None: here.

        Spills when this decode would make the local queue deeper than `spill_threshold` and
        a live peer reports a shorter queue than this node's (strictly: no ping-pong between
        equally loaded nodes).
        """
        if not self.settings.spill or self.leaving:
            return None
        depth = self.depth()
        if depth + 1 <= self.settings.spill_threshold:
            return None
        now = time.monotonic()
        candidates = [p for p in self.peers.values() if p.in_ring(now) and p.depth < depth]
        if not candidates:
            return None
        peer = min(candidates, key=lambda p: (p.depth, p.url))
        peer.depth += 1  # until it answers: spread a burst over the peers
        answer: dict[str, str] = {}
        try:
            data = await self._request(
                peer.url, "POST", "render", raw, query={"bucket": bucket, "key": key,
                                                         "etag": etag},
                limit_s=RENDER_TIMEOUT_S, answer_headers=answer)
        except PeerUnavailable as exc:
            self.peer_failed(peer.url)
            self.spilled.labels("failed").inc()
            log.warning("spilled decode of %s/%s to %s failed, decoding here: %s", bucket, key,
                        peer.url, exc)
            return None
        self.spilled.labels("sent").inc()
        # The peer's queue as it was when it answered: fresher than the last health round
        # (a second old at worst), so a hot owner's next spill goes where there is room now.
        reported = answer.get(DEPTH_HEADER, "")
        if reported.isdigit():
            peer.depth = int(reported)
        return data

    async def render_for_peer(self, bucket: str, key: str, etag: str, raw: bytes) -> bytes:
        """A peer's spilled decode, rendered here (never spilled again)."""
        if self.decoding is None:
            raise RuntimeError("this node has no decoder")
        renderer = (await self.decoding.ready()).renderer
        data, _ = await renderer.rendition(bucket, key, etag, raw)
        self.spilled.labels("received").inc()
        return data


# On a spilled decode's answer: the renderer's decode queue depth when it answered.
DEPTH_HEADER = "x-s3latent-queue-depth"


def md5_hex(data: bytes) -> str:
    """For the render endpoint's integrity header."""
    return hashlib.md5(data).hexdigest()
