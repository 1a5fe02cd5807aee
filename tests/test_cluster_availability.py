"""Availability of the peer side (cluster.node, s3api.peer): a slow or half-broken peer must
cost clients no more than a short wait, and the fleet must form whatever the Host header.

In process: one Cluster against a fake peer (an aiohttp app on 127.0.0.1) whose health,
object reads and headers each test controls; and one served gateway with a `domain`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry

from s3latent.cli import build_gateway
from s3latent.cluster import node as node_mod
from s3latent.cluster import peerauth
from s3latent.cluster.node import DEPTH_HEADER, Cluster, PeerUnavailable
from s3latent.config import ClusterSettings, Config, load_config
from s3latent.s3api.server import make_app
from tests.sigv4_client import ACCESS_KEY, SECRET_KEY

SELF = "http://127.0.0.1:1"
SECRET = "availability-secret-0123456789"


class FakePeer:
    """A peer whose health names `node`, whose object reads send headers then stall (or
    stall before headers when `hang_headers`), and which records the headers it got."""

    def __init__(self) -> None:
        self.node = "http://fake-peer:9000"
        self.hang_headers = False
        self.seen: list[CIMultiDict[str]] = []
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/health"):
            return web.json_response({"node": self.node, "depth": 0, "leaving": False})
        if request.path.endswith("/render"):
            return web.Response(body=b"rendition", headers={DEPTH_HEADER: "7"})
        self.seen.append(CIMultiDict(request.headers))
        if self.hang_headers:
            await asyncio.sleep(3600)
        resp = web.StreamResponse()
        resp.content_length = 10
        await resp.prepare(request)
        await resp.write(b"x")
        await asyncio.sleep(3600)  # a slow stream: the body never ends
        return resp

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"


@pytest.fixture
async def peer() -> AsyncIterator[FakePeer]:
    fake = FakePeer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    fake.server = TestServer(app, host="127.0.0.1")
    await fake.server.start_server()
    yield fake
    await fake.server.close()


Started = Callable[..., Awaitable[Cluster]]


@pytest.fixture
async def make_cluster(peer: FakePeer) -> AsyncIterator[Started]:
    clusters: list[Cluster] = []

    async def start(**settings: Any) -> Cluster:
        cfg = Config(cluster=ClusterSettings(
            self=SELF, nodes=[SELF, peer.url], secret=SECRET, health_interval_s=3600,
            health_timeout_s=0.5, **settings))
        cluster = Cluster(cfg, store=None, decoding=None,  # type: ignore[arg-type]
                          registry=CollectorRegistry())
        clusters.append(cluster)
        await cluster.start()
        await asyncio.wait_for(cluster._resolved.wait(), 5)  # one health round done
        return cluster

    yield start
    for cluster in clusters:
        await cluster.close()


async def _forward(cluster: Cluster, peer: FakePeer, key: str,
                   headers: Any = None) -> aiohttp.ClientResponse:
    return await cluster.forward(peer.url, "GET", "b", key, "", headers or {},
                                 access_key="a", request_id="R")


async def test_a_spilled_decode_learns_the_peers_queue_from_its_answer(
        peer: FakePeer, make_cluster: Started, monkeypatch: pytest.MonkeyPatch) -> None:
    """The render answer carries the peer's queue depth: the next spill decision uses it
    at once instead of a health answer up to a round old (or a guess)."""
    cluster = await make_cluster(spill_threshold=0)
    monkeypatch.setattr(cluster, "depth", lambda: 5)
    state = cluster.peers[peer.url]
    assert state.depth == 0
    assert await cluster.offload("b", "k", "e", b"latent") == b"rendition"
    assert state.depth == 7
    # Now the peer reports a deeper queue than this node's: decode here.
    assert await cluster.offload("b", "k", "e", b"latent") is None


async def test_busy_peer_pool_serves_here_and_health_still_answers(
        peer: FakePeer, make_cluster: Started) -> None:
    """Slow forwarded streams fill max_peer_connections: the next forward falls back at once
    (not queued forever), and health checks, on their own pool, still pass."""
    cluster = await make_cluster(max_peer_connections=2)
    assert peer.url in cluster.live_nodes()
    held = [await _forward(cluster, peer, f"k{i}") for i in range(2)]
    t = time.monotonic()
    with pytest.raises(PeerUnavailable, match="busy"):
        await asyncio.wait_for(_forward(cluster, peer, "k3"), 5)
    assert time.monotonic() - t < 0.5
    assert cluster.forwarded.labels("fallback")._value.get() == 1
    assert peer.url in cluster.live_nodes(), "a busy pool is not the peer's failure"
    assert json.loads(await cluster._request(peer.url, "GET", "health", b"", limit_s=1.0))
    for resp in held:
        cluster.forward_done(resp)
    cluster.forward_done(await _forward(cluster, peer, "k4"))  # room again


async def test_owner_hanging_on_reads_backs_off_despite_good_health(
        peer: FakePeer, make_cluster: Started) -> None:
    """No headers within forward_header_timeout_s: serve here, and the owner stays out of
    the ring for the backoff (doubling), even though its health checks pass."""
    cluster = await make_cluster(forward_header_timeout_s=0.3, peer_backoff_s=2.0,
                                 peer_backoff_max_s=3.0)
    peer.hang_headers = True
    t = time.monotonic()
    with pytest.raises(PeerUnavailable):
        await _forward(cluster, peer, "k")
    assert time.monotonic() - t < 1.5
    state = cluster.peers[peer.url]
    await cluster._check(state)  # the owner's health answers
    assert state.live and peer.url not in cluster.live_nodes()
    assert cluster.forward_target("b", "k") is None
    with pytest.raises(PeerUnavailable):
        await _forward(cluster, peer, "k")
    assert state.backoff_s == 3.0  # doubled, capped
    state.backoff_until = time.monotonic()  # the backoff ran out
    assert peer.url in cluster.live_nodes()
    peer.hang_headers = False
    cluster.forward_done(await _forward(cluster, peer, "k"))
    assert state.backoff_s == 0.0  # a good forward resets it


async def test_repeated_request_headers_are_forwarded_in_order(
        peer: FakePeer, make_cluster: Started) -> None:
    cluster = await make_cluster()
    headers = CIMultiDict([("X-Repeat", "first"), ("Range", "bytes=0-1"),
                           ("X-Repeat", "second"), ("Authorization", "client creds")])
    (await _forward(cluster, peer, "k", headers)).close()
    seen = peer.seen[-1]
    assert seen.getall("X-Repeat") == ["first", "second"]
    assert seen["Range"] == "bytes=0-1"
    assert "Authorization" not in seen
    assert "x-s3latent-peer-signature" in {k.lower() for k in seen}


async def test_a_peer_that_is_this_node_is_dropped(peer: FakePeer, make_cluster: Started
                                                   ) -> None:
    """`self` spelled differently from a node entry: the health answer names this node."""
    peer.node = SELF + "/"
    cluster = await make_cluster()
    assert cluster.live_nodes() == [SELF]
    assert peer.url not in cluster.peers
    assert peer.url in cluster._self_aliases  # later health rounds skip it


async def test_dns_resolution_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow_getaddrinfo(*args: Any, **kw: Any) -> Any:
        time.sleep(1.0)
        raise OSError("too late")

    monkeypatch.setattr(node_mod.socket, "getaddrinfo", slow_getaddrinfo)
    cfg = Config(cluster=ClusterSettings(self=SELF, nodes=[SELF, "dns+http://slow.test:9000"],
                                         secret=SECRET, health_timeout_s=0.2))
    cluster = Cluster(cfg, store=None, decoding=None,  # type: ignore[arg-type]
                      registry=CollectorRegistry())
    t = time.monotonic()
    assert await cluster._resolve() == {SELF}
    assert time.monotonic() - t < 0.8
    await asyncio.sleep(1.0)  # let the resolver thread finish before the test ends


async def test_peer_requests_under_a_domain_are_not_bucket_requests(tmp_path: Path) -> None:
    """With `domain`, a node named under it (node1.s3.test) still answers peer requests."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    me = f"http://127.0.0.1:{port}"
    cfg_file = tmp_path / "s3latent.toml"
    cfg_file.write_text(f'[cluster]\nself = "{me}"\nnodes = ["{me}"]\nspill = false\n'
                        'health_interval_s = 3600\n')
    cfg = load_config(cfg_file, env={"S3LATENT_ACCESS_KEY": ACCESS_KEY,
                                     "S3LATENT_SECRET_KEY": SECRET_KEY,
                                     "S3LATENT_CLUSTER_SECRET": SECRET},
                      backend=f"file://{tmp_path / 'data'}", listen=f"127.0.0.1:{port}",
                      domain="s3.test")
    server = TestServer(make_app(build_gateway(cfg)), host="127.0.0.1", port=port)
    await server.start_server()
    try:
        path = peerauth.PREFIX + "health"
        headers = peerauth.sign(SECRET, "GET", path, "http://127.0.0.2:9000")
        headers["Host"] = f"node1.s3.test:{port}"
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{port}{path}", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["node"] == me
    finally:
        await server.close()
